//! Bad input gives a clear error naming the file or value, never a panic or a half-written file.
mod common;
use candle_core::Device;
use common::*;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use sprig_bert::{BertClassifier, Checkpoint, FinetuneConfig, ModelFiles, Pooling};
use std::collections::HashMap;
use std::path::Path;

/// A local copy of the real checkpoint (files symlinked) that a test may then damage.
fn local_copy(dir: &Path) {
    let files = ModelFiles::resolve(MINILM).expect("run scripts/fetch-assets");
    std::os::unix::fs::symlink(&files.weights[0], dir.join("model.safetensors")).unwrap();
    std::fs::copy(&files.config, dir.join("config.json")).unwrap();
    std::fs::copy(files.tokenizer().unwrap(), dir.join("tokenizer.json")).unwrap();
}

/// Rewrite `config.json` of `dir` through `edit`.
fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut c);
    std::fs::write(&path, c.to_string()).unwrap();
}

/// A tensor as `rewrite_weights` hands it to its callback: dtype, shape, raw bytes.
type Raw = (Dtype, Vec<usize>, Vec<u8>);

/// Rewrite `model.safetensors` of `dir` (replacing the symlink by a file): `edit` gets every tensor
/// by name and returns what to write in its place, or `None` to drop it.
fn rewrite_weights(dir: &Path, edit: impl Fn(&str, Raw) -> Option<Raw>) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let raws: Vec<(String, Raw)> = st
        .tensors()
        .into_iter()
        .filter_map(|(name, v)| {
            let raw = (v.dtype(), v.shape().to_vec(), v.data().to_vec());
            edit(&name, raw).map(|r| (name, r))
        })
        .collect();
    let views: Vec<(String, TensorView)> = raws.iter().map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, out).unwrap();
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
    // Sizes consistent with each other but not with the weights: refused when loading, before
    // the model is built.
    let mut c = cfg.clone();
    c["intermediate_size"] = 1024.into();
    std::fs::write(&cfg_path, c.to_string()).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("intermediate.dense.weight") && e.contains("1536") && e.contains("1024") && e.contains("model.safetensors"), "{e}");
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

#[test]
fn huge_layer_count_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    local_copy(dir.path());
    edit_config(dir.path(), |c| c["num_hidden_layers"] = 1_000_000_000.into());
    // Before the check this loaded, and building the encoder aborted on a ~1 TB allocation.
    let e = load_err(dir.path());
    assert!(e.contains("config.json") && e.contains("num_hidden_layers") && e.contains("1000000000"), "{e}");
    assert!(e.contains("model.safetensors") && e.contains("6 encoder layers") && e.contains("must be 6"), "{e}");
}

#[test]
fn config_with_fewer_layers_than_the_checkpoint_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    local_copy(dir.path());
    edit_config(dir.path(), |c| c["num_hidden_layers"] = 3.into());
    // Before the check, layers 3..5 of the checkpoint were silently left out.
    let e = load_err(dir.path());
    assert!(e.contains("config.json") && e.contains("num_hidden_layers is 3") && e.contains("6 encoder layers") && e.contains("model.safetensors"), "{e}");
}

#[test]
fn checkpoint_layers_must_be_numbered_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    local_copy(dir.path());
    rewrite_weights(dir.path(), |name, raw| (!name.starts_with("encoder.layer.2.")).then_some(raw));
    let e = load_err(dir.path());
    assert!(e.contains("model.safetensors") && e.contains("encoder.layer.2") && e.contains("5 encoder layers"), "{e}");
}

#[test]
fn config_sizes_must_match_the_weight_shapes() {
    let dir = tempfile::tempdir().unwrap();
    local_copy(dir.path());
    let cases: [(&str, serde_json::Value, &str, &str); 4] = [
        ("vocab_size", 30000.into(), "embeddings.word_embeddings.weight", "30522"),
        ("max_position_embeddings", 1_000_000_000.into(), "embeddings.position_embeddings.weight", "512"),
        ("type_vocab_size", 3.into(), "embeddings.token_type_embeddings.weight", "[2, 384]"),
        ("hidden_size", 768.into(), "embeddings.word_embeddings.weight", "384"),
    ];
    for (field, value, tensor, actual) in cases {
        local_copy_config(dir.path());
        edit_config(dir.path(), |c| c[field] = value.clone());
        let e = load_err(dir.path());
        assert!(e.contains("config.json") && e.contains("model.safetensors") && e.contains(tensor), "{field}: {e}");
        assert!(e.contains(&format!("{field} {value}")) && e.contains(actual), "{field}: {e}");
    }
}

/// Restore the pristine `config.json` of the real checkpoint into `dir`.
fn local_copy_config(dir: &Path) {
    let files = ModelFiles::resolve(MINILM).expect("run scripts/fetch-assets");
    std::fs::copy(&files.config, dir.join("config.json")).unwrap();
}

#[test]
fn layer_norm_eps_must_be_positive_and_finite() {
    let dir = tempfile::tempdir().unwrap();
    local_copy(dir.path());
    for eps in [serde_json::json!(-1e-12), serde_json::json!(0.0), serde_json::json!(2.0)] {
        edit_config(dir.path(), |c| c["layer_norm_eps"] = eps.clone());
        let e = load_err(dir.path());
        assert!(e.contains("config.json") && e.contains("layer_norm_eps") && e.contains("(0, 1)"), "{e}");
    }
    edit_config(dir.path(), |c| c["layer_norm_eps"] = serde_json::json!(1e-5));
    Checkpoint::load(dir.path().to_str().unwrap(), &Device::Cpu).unwrap();
}

#[test]
fn integer_weight_is_reported_with_its_dtype_not_as_missing() {
    let dir = tempfile::tempdir().unwrap();
    local_copy(dir.path());
    let target = "encoder.layer.0.attention.output.LayerNorm.weight";
    rewrite_weights(dir.path(), |name, (d, shape, bytes)| {
        Some(if name == target {
            let ints: Vec<u8> = bytes.chunks(4).flat_map(|b| (f32::from_le_bytes(b.try_into().unwrap()) as i32).to_le_bytes()).collect();
            (Dtype::I32, shape, ints)
        } else {
            (d, shape, bytes)
        })
    });
    let e = load_err(dir.path());
    assert!(e.contains(target) && e.contains("model.safetensors") && e.contains("I32") && e.contains("F32"), "{e}");
    assert!(!e.contains("missing"), "{e}");
}

/// A 2-class classifier checkpoint of the real encoder in `dir` (fresh seeded head).
fn classifier_copy(dir: &Path) {
    let ck = Checkpoint::load(MINILM, &Device::Cpu).expect("run scripts/fetch-assets");
    let model = BertClassifier::new(ck.encoder(0, &Device::Cpu).unwrap(), 2, Pooling::Mean, None, 7).unwrap();
    let labels = ["neg".to_string(), "pos".to_string()];
    sprig_bert::save_classifier(&model, &labels, ck.files.tokenizer().unwrap(), dir, HashMap::new()).unwrap();
}

#[test]
fn classifier_head_must_match_the_labels() {
    let dir = tempfile::tempdir().unwrap();
    classifier_copy(dir.path());
    let ck = Checkpoint::load(dir.path().to_str().unwrap(), &Device::Cpu).unwrap();
    let model = ck.classifier(0, &Device::Cpu).unwrap();
    assert_eq!(model.num_labels(), 2);
    // A task label the head has no row for is an error, not accuracy 0 with exit 0.
    let tok = sprig_bert::BertTokenizer::from_file(ck.files.tokenizer().unwrap(), 16).unwrap();
    let examples = ["fine", "awful"].map(|t| sprig_data::TextExample { text: t.into(), label: 0 });
    let mut data = sprig_bert::finetune::tokenize(&tok, &examples).unwrap();
    assert!(sprig_bert::finetune::evaluate(&model, &data, 2, tok.pad_id()).is_ok());
    data.labels[1] = 2;
    let e = sprig_bert::finetune::evaluate(&model, &data, 2, tok.pad_id()).unwrap_err().to_string();
    assert!(e.contains("label 2") && e.contains("2 classes"), "{e}");
    drop((ck, model));

    // id2label with 3 entries for a 2-row head.
    edit_config(dir.path(), |c| c["id2label"] = serde_json::json!({"0": "neg", "1": "mixed", "2": "pos"}));
    let e = load_err(dir.path());
    assert!(e.contains("config.json") && e.contains("classifier.weight") && e.contains("[2, 384]") && e.contains("id2label declares 3"), "{e}");
    // No id2label but num_labels 3.
    edit_config(dir.path(), |c| {
        let o = c.as_object_mut().unwrap();
        o.remove("id2label");
        o.remove("label2id");
        o.insert("num_labels".into(), 3.into());
    });
    let e = load_err(dir.path());
    assert!(e.contains("classifier.weight") && e.contains("[2, 384]") && e.contains("num_labels declares 3"), "{e}");
    // A bias of another length than the weight's rows.
    edit_config(dir.path(), |c| {
        c.as_object_mut().unwrap().remove("num_labels");
    });
    Checkpoint::load(dir.path().to_str().unwrap(), &Device::Cpu).unwrap();
    rewrite_weights(dir.path(), |name, (d, shape, mut bytes)| {
        Some(if name == "classifier.bias" {
            bytes.extend_from_slice(&0f32.to_le_bytes());
            (d, vec![shape[0] + 1], bytes)
        } else {
            (d, shape, bytes)
        })
    });
    let e = load_err(dir.path());
    assert!(e.contains("classifier.bias") && e.contains("[3]") && e.contains("2 rows") && e.contains("model.safetensors"), "{e}");
}

#[test]
fn finetune_config_rejects_bad_optimizer_values() {
    let ok = FinetuneConfig::default();
    assert!(FinetuneConfig { weight_decay: 0.0, max_grad_norm: 0.0, ..ok.clone() }.validate().is_ok());
    let bad = [
        (FinetuneConfig { weight_decay: -0.1, ..ok.clone() }, "weight_decay", "-0.1"),
        (FinetuneConfig { weight_decay: f64::NAN, ..ok.clone() }, "weight_decay", "NaN"),
        (FinetuneConfig { weight_decay: f64::INFINITY, ..ok.clone() }, "weight_decay", "inf"),
        (FinetuneConfig { max_grad_norm: -1.0, ..ok.clone() }, "max_grad_norm", "-1"),
        (FinetuneConfig { max_grad_norm: f64::NAN, ..ok.clone() }, "max_grad_norm", "NaN"),
        (FinetuneConfig { max_grad_norm: f64::INFINITY, ..ok.clone() }, "max_grad_norm", "inf"),
    ];
    for (cfg, field, shown) in bad {
        let e = cfg.validate().err().unwrap_or_else(|| panic!("{field} {shown} accepted")).to_string();
        assert!(e.contains(field) && e.contains(shown) && e.contains(">= 0"), "{e}");
    }
}
