//! Bad input gives a clear error naming the file or value, never a panic or a half-written file.
mod common;
use candle_core::Device;
use common::*;
use sprig_bert::{Checkpoint, FinetuneConfig, ModelFiles};
use std::path::Path;

/// A local copy of the real checkpoint (files symlinked) that a test may then damage.
fn local_copy(dir: &Path) {
    let files = ModelFiles::resolve(MINILM).expect("run scripts/fetch-assets");
    std::os::unix::fs::symlink(&files.weights[0], dir.join("model.safetensors")).unwrap();
    std::fs::copy(&files.config, dir.join("config.json")).unwrap();
    std::fs::copy(files.tokenizer().unwrap(), dir.join("tokenizer.json")).unwrap();
}

fn load_err(dir: &Path) -> String {
    match Checkpoint::load(dir.to_str().unwrap(), &Device::Cpu) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn local_directory_loads_like_the_hub_id() {
    let dir = tempfile::tempdir().unwrap();
    local_copy(dir.path());
    let ckpt = Checkpoint::load(dir.path().to_str().unwrap(), &Device::Cpu).unwrap();
    assert_eq!(ckpt.config.num_hidden_layers, 6);
    assert!(!ckpt.tensors.contains_key("embeddings.position_ids"), "integer buffers are skipped");
}

#[test]
fn truncated_and_corrupt_safetensors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    local_copy(dir.path());
    let st = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::remove_file(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("model.safetensors") && e.contains("safetensors"), "{e}");
    std::fs::write(&st, b"this is not a safetensors file at all").unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("model.safetensors"), "{e}");
    std::fs::write(&st, []).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn config_problems_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    local_copy(dir.path());
    let cfg_path = dir.path().join("config.json");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    // Missing field.
    let mut c = cfg.clone();
    c.as_object_mut().unwrap().remove("num_attention_heads");
    std::fs::write(&cfg_path, c.to_string()).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("config.json") && e.contains("num_attention_heads"), "{e}");
    // Sizes consistent with each other but not with the weights.
    let mut c = cfg.clone();
    c["intermediate_size"] = 1024.into();
    std::fs::write(&cfg_path, c.to_string()).unwrap();
    let e = Checkpoint::load(dir.path().to_str().unwrap(), &Device::Cpu).unwrap().encoder(0, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("intermediate.dense.weight") && e.contains("1536") && e.contains("model.safetensors"), "{e}");
    // Not JSON at all.
    std::fs::write(&cfg_path, "{ not json").unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    local_copy(dir.path());
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let files = ModelFiles::resolve(dir.path().to_str().unwrap()).unwrap();
    let e = files.tokenizer().unwrap_err().to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("model.safetensors"), "{e}");
    let e = Checkpoint::load("/no/such/dir", &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("/no/such/dir"), "{e}");
}

#[test]
fn unknown_task_lists_the_known_ones() {
    let e = sprig_data::load_text_task("imdb", &sprig_data::sprig_home(), 1).unwrap_err().to_string();
    assert!(e.contains("imdb") && e.contains("rt-sentiment"), "{e}");
}

#[test]
fn nan_loss_stops_training_and_keeps_the_last_good_checkpoint() {
    let data = sprig_data::load_text_task("rt-sentiment", &sprig_data::sprig_home(), 7).expect("run scripts/fetch-assets");
    let out = tempfile::tempdir().unwrap();
    let cfg = FinetuneConfig {
        epochs: 3,
        batch_size: 16,
        max_train: 32,
        max_dev: 32,
        max_test: 32,
        debug_nan_at_step: Some(3),
        ..FinetuneConfig::default()
    };
    let e = sprig_bert::finetune(&cfg, &data, out.path()).unwrap_err().to_string();
    assert!(e.contains("NaN") && e.contains("step 3") && e.contains("epoch 0"), "{e}");
    // The epoch-0 checkpoint is complete and loads; nothing half-written is left behind.
    let ckpt = Checkpoint::load(out.path().to_str().unwrap(), &Device::Cpu).unwrap();
    assert!(ckpt.has_classifier());
    let names: Vec<String> = std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    // The Hugging Face layout of the checkpoint (with sprig's modeling file and the tokenizer's
    // side files) plus the metrics log; no temporary file, no summary.
    let allowed = [
        "config.json", "model.safetensors", "modeling_sprig_bert.py", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "vocab.txt", "metrics.jsonl",
    ];
    assert!(names.iter().all(|n| allowed.contains(&n.as_str())), "{names:?}");
    assert!(names.iter().any(|n| n == "model.safetensors") && names.iter().any(|n| n == "modeling_sprig_bert.py"), "{names:?}");
    assert!(!out.path().join("summary.json").exists());
}
