//! Export a fine-tuned sparse classifier (a `sprig ticket` checkpoint) as a directory that Hugging
//! Face `transformers` loads: `model.safetensors` (dense tensors with exact zeros at pruned
//! positions, `bert.`-prefixed names as `BertForSequenceClassification` stores them), `config.json`,
//! `tokenizer.json`, plus sprig's `masks.safetensors` and `sprig.json` manifest, and
//! `sprig-logits.json`: a few test sentences, their token ids and sprig's logits, which
//! `scripts/verify-hf-export` compares with `transformers`' (pooling per `config.json`'s
//! `sprig_pooling`, then the `classifier` linear).
use sprig_bert::masked::{Base, TaskData};
use sprig_bert::model::{BertClassifier, BertEncoder, Init};
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
    let base = Base::load(&t.model)?;
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
    let meta: HashMap<String, String> = [("task".to_string(), t.task.clone()), ("ticket".to_string(), ticket_dir.display().to_string())].into();
    sprig_bert::checkpoint::save_classifier(&model, &data.classes, &base.tokenizer, &stage, meta)?;
    // Weights + masks + manifest through sprig-prune's checkpoint writer, with HF names.
    let named: Vec<(String, Tensor)> = model
        .named_params()
        .into_iter()
        .map(|(n, v)| (if n.starts_with("classifier.") { n } else { format!("bert.{n}") }, v.as_tensor().clone()))
        .collect();
    let mut masks = MaskSet::new();
    for (n, m) in t.masks.iter() {
        masks.insert(format!("bert.{n}"), m.clone());
    }
    let parent = checkpoint::weights_sha256(ticket_dir)?;
    let ckmeta = CheckpointMeta {
        method: "bert-tickets-export".into(),
        schedule: None,
        seed: ck.manifest.meta.seed,
        parent_sha256: Some(parent),
        extra: serde_json::json!({"task": t.task, "model": t.model, "ticket": ticket_dir, "classes": data.classes}),
    };
    let sparse = tmp.path().join("sparse");
    checkpoint::save(&sparse, &named, &masks, &ckmeta)?;
    for f in [checkpoint::WEIGHTS_FILE, checkpoint::MASKS_FILE, checkpoint::MANIFEST_FILE] {
        std::fs::rename(sparse.join(f), stage.join(f)).with_context(|| format!("moving {f}"))?;
    }
    // Verification sentences: the first n test examples (sorted by the subsample), sprig's logits.
    let n = n_examples.min(data.test.labels.len()).max(1);
    let idx: Vec<usize> = (0..n).collect();
    let mut rows = Vec::new();
    for &i in &idx {
        let (ids, types, mask) = sprig_bert::finetune::batch_tensors(&data.test, &[i], data.pad_id, &Device::Cpu)?;
        let logits = model.forward(&ids, &types, &mask, false)?.squeeze(0)?.to_vec1::<f32>()?;
        rows.push(serde_json::json!({"input_ids": data.test.encoded[i].ids, "logits": logits, "label": data.test.labels[i]}));
    }
    let verify = serde_json::json!({"pooling": t.recipe.pooling, "max_seq_len": t.recipe.max_seq_len, "examples": rows});
    sprig_train::write_json(&stage.join("sprig-logits.json"), &verify)?;
    std::fs::rename(&stage, out).with_context(|| format!("moving the export into {}", out.display()))?;
    Ok(())
}
