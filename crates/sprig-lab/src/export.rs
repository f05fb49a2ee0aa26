//! Export a fine-tuned sparse classifier (a `sprig ticket` checkpoint) as a directory that Hugging
//! Face `transformers` loads with sprig's numerics: the directory of
//! [`sprig_bert::hf::write_classifier_dir`] (`model.safetensors` with exact zeros at pruned
//! positions, `config.json` whose `auto_map` names the shipped `modeling_sprig_bert.py`,
//! `tokenizer.json`), plus sprig's `masks.safetensors` and `sprig.json` manifest, and
//! `sprig-logits.json` ([`reference_logits`]): test sentences with the token ids and logits sprig
//! computes from the written files, which `scripts/verify-hf-export` compares with `transformers`'.
use sprig_bert::hf::hf_name;
use sprig_bert::masked::{Base, TaskData};
use sprig_bert::model::{BertClassifier, BertEncoder, Init};
use sprig_bert::{BertTokenizer, Checkpoint};
use crate::transfer::Ticket;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use sprig_prune::checkpoint::{self, CheckpointMeta};
use sprig_prune::MaskSet;
use std::collections::HashMap;
use std::path::Path;

/// Writes the export of `ticket_dir` into `out` (which must not exist), with `n_examples` test
/// sentences for verification. The directory appears whole or not at all.
pub fn export(ticket_dir: &Path, out: &Path, n_examples: usize, home: &Path) -> Result<()> {
    if out.exists() {
        bail!("{} exists; export writes a new directory", out.display());
    }
    let t = Ticket::load(ticket_dir)?;
    let ck = checkpoint::load(ticket_dir, &Device::Cpu)?;
    let base = Base::for_recipe(&t.recipe)?;
    let mut tensors: HashMap<String, Tensor> = base.tensors.clone();
    for (n, v) in ck.tensors {
        tensors.insert(n, v);
    }
    if !tensors.contains_key("classifier.weight") {
        bail!("{} holds no trained classifier head", ticket_dir.display());
    }
    let origin = ticket_dir.join(checkpoint::WEIGHTS_FILE);
    let enc = BertEncoder::new(&base.config, Init::Pretrained { tensors: &tensors, origin: origin.clone() }, 0, &Device::Cpu)?;
    let data = TaskData::load(&t.recipe, &base, home)?;
    let model = BertClassifier::new(enc, data.classes.len(), t.recipe.pooling, Some((&tensors, origin)), 0)?;
    t.masks.check_pruned_zero(&model.named_params())?;

    let tmp = tempfile::Builder::new()
        .prefix(".export-")
        .tempdir_in(out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))
        .context("creating a temp directory beside the output")?;
    let stage = tmp.path().join("ckpt");
    // The HF checkpoint, config and tokenizer (model.safetensors is rewritten below with the masks).
    let meta: HashMap<String, String> = [
        ("task", t.task.clone()),
        ("ticket", ticket_dir.display().to_string()),
        ("seed", t.recipe.seed.to_string()),
        ("max_seq_len", t.recipe.max_seq_len.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let parent = checkpoint::weights_sha256(ticket_dir)?;
    let ckmeta = CheckpointMeta {
        method: "bert-tickets-export".into(),
        schedule: None,
        seed: ck.manifest.meta.seed,
        parent_sha256: Some(parent),
        extra: serde_json::json!({"task": t.task, "model": t.model, "ticket": ticket_dir, "classes": data.classes}),
    };
    write_sparse_classifier(&stage, &model, &data.classes, &base.tokenizer, &t.masks, meta, &ckmeta)?;
    // Verification sentences: sprig's logits computed from the files just written.
    let verify = reference_logits(&stage, n_examples, home)?;
    sprig_train::write_json(&stage.join("sprig-logits.json"), &verify)?;
    std::fs::rename(&stage, out).with_context(|| format!("moving the export into {}", out.display()))?;
    Ok(())
}

/// Writes a sparse classifier into directory `dir` (each file atomically): the Hugging Face
/// layout of [`sprig_bert::hf::write_classifier_dir`] (`metadata` under `config.json`'s
/// `"sprig"`), with `model.safetensors` written by sprig-prune's checkpoint writer (exact zeros at
/// pruned positions, HF names) beside `masks.safetensors` and the `sprig.json` manifest.
pub fn write_sparse_classifier(
    dir: &Path,
    model: &BertClassifier,
    classes: &[String],
    tokenizer: &Path,
    masks: &MaskSet,
    metadata: HashMap<String, String>,
    ckmeta: &CheckpointMeta,
) -> Result<()> {
    sprig_bert::checkpoint::save_classifier(model, classes, tokenizer, dir, metadata)?;
    let named: Vec<(String, Tensor)> = model.named_params().into_iter().map(|(n, v)| (hf_name(&n), v.as_tensor().clone())).collect();
    let mut hf_masks = MaskSet::new();
    for (n, m) in masks.iter() {
        hf_masks.insert(hf_name(n), m.clone());
    }
    let tmp = tempfile::Builder::new().prefix(".sparse-").tempdir_in(dir).context("creating a temp directory in the output")?;
    let sparse = tmp.path().join("ckpt");
    checkpoint::save(&sparse, &named, &hf_masks, ckmeta)?;
    for f in [checkpoint::WEIGHTS_FILE, checkpoint::MASKS_FILE, checkpoint::MANIFEST_FILE] {
        std::fs::rename(sparse.join(f), dir.join(f)).with_context(|| format!("moving {f}"))?;
    }
    Ok(())
}

/// sprig's logits for the first `n` test sentences of the task a classifier directory records
/// (`config.json` `"sprig"`: `task`, `seed` for the split [42], `max_seq_len` [128]), computed by
/// loading `dir` as `sprig eval` does. JSON: `{task, split, seed, max_seq_len, pooling, examples:
/// [{text, label, input_ids, logits}]}`, what `scripts/verify-hf-export` compares with Python.
pub fn reference_logits(dir: &Path, n: usize, home: &Path) -> Result<serde_json::Value> {
    let spec = dir.to_str().with_context(|| format!("{} is not a UTF-8 path", dir.display()))?;
    let ck = Checkpoint::load(spec, &Device::Cpu).with_context(|| format!("loading {}", dir.display()))?;
    if !ck.has_classifier() {
        bail!("{} has no classification head (classifier.weight)", dir.display());
    }
    let rec = ck.config.extra.get("sprig").cloned().unwrap_or_default();
    let field = |k: &str| rec.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let task = field("task").with_context(|| format!("{}/config.json records no task (\"sprig\": {{\"task\": ..}})", dir.display()))?;
    let seed: u64 = field("seed").and_then(|s| s.parse().ok()).unwrap_or(42);
    let max_len: usize = field("max_seq_len").and_then(|s| s.parse().ok()).unwrap_or(128).min(ck.config.max_position_embeddings);
    let data = sprig_data::load_text_task(&task, home, seed).with_context(|| format!("loading task {task}"))?;
    let tok = BertTokenizer::from_file(ck.files.tokenizer()?, max_len)?;
    let examples = &data.test[..n.min(data.test.len())];
    let enc = sprig_bert::finetune::tokenize(&tok, examples)?;
    let model = ck.classifier(seed, &Device::Cpu)?;
    let mut rows = Vec::with_capacity(examples.len());
    let idx: Vec<usize> = (0..examples.len()).collect();
    for chunk in idx.chunks(16) {
        let (ids, types, mask) = sprig_bert::finetune::batch_tensors(&enc, chunk, tok.pad_id(), &Device::Cpu)?;
        let logits = model.predict(&ids, &types, &mask)?.to_vec2::<f32>()?;
        for (&i, l) in chunk.iter().zip(logits) {
            rows.push(serde_json::json!({"text": examples[i].text, "label": examples[i].label, "input_ids": enc.encoded[i].ids, "logits": l}));
        }
    }
    Ok(serde_json::json!({"task": task, "split": "test", "seed": seed, "max_seq_len": max_len, "pooling": model.pooling, "examples": rows}))
}
