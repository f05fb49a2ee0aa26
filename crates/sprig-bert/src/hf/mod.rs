//! Writing a classifier as a Hugging Face model directory that `transformers` runs with sprig's
//! own numerics. sprig's head is pooling ([`Pooling`]: masked mean or the raw `[CLS]` state, no
//! tanh pooler) + dropout + one linear; `BertForSequenceClassification` would classify from a
//! pooler that sprig never trained. So the directory ships [`MODELING_PY`]
//! (`SprigBertForSequenceClassification`, a `BertPreTrainedModel`) and `config.json` points
//! `auto_map` at it: `AutoModelForSequenceClassification.from_pretrained(dir,
//! trust_remote_code=True)` then predicts what sprig predicts.
use crate::config::Pooling;
use crate::error::{io_err, Result};
use crate::model::BertClassifier;
use crate::weights::to_safetensors_bytes;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The model class file written beside the weights (`modeling_sprig_bert.py`).
pub const MODELING_PY: &str = include_str!("modeling_sprig_bert.py");
/// Its file name in the output directory.
pub const MODELING_FILE: &str = "modeling_sprig_bert.py";
/// The class `config.json`'s `architectures` and `auto_map` name.
pub const ARCHITECTURE: &str = "SprigBertForSequenceClassification";
/// Tokenizer side files copied from beside `tokenizer.json` when the source has them.
const TOKENIZER_EXTRAS: [&str; 3] = ["tokenizer_config.json", "special_tokens_map.json", "vocab.txt"];

/// The checkpoint name of a classifier parameter: encoder tensors get the `bert.` prefix (the
/// `bert` attribute of the model class), the head keeps `classifier.weight` / `classifier.bias`.
pub fn hf_name(name: &str) -> String {
    if name.starts_with("classifier.") {
        name.to_string()
    } else {
        format!("bert.{name}")
    }
}

/// The inverse of [`hf_name`]: the model's own parameter name of a checkpoint name (`bert.` dropped).
pub fn from_hf_name(name: &str) -> &str {
    name.strip_prefix("bert.").unwrap_or(name)
}

/// The `config.json` entries that make `transformers` load the right class: `architectures`,
/// `auto_map` (AutoModelForSequenceClassification -> the shipped file) and `sprig_pooling`.
pub fn loader_entries(pooling: Pooling) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    m.insert("architectures".into(), serde_json::json!([ARCHITECTURE]));
    m.insert(
        "auto_map".into(),
        serde_json::json!({ "AutoModelForSequenceClassification": format!("{}.{ARCHITECTURE}", MODELING_FILE.trim_end_matches(".py")) }),
    );
    m.insert("sprig_pooling".into(), serde_json::to_value(pooling).unwrap_or_default());
    m
}

/// Writes `model` as a Hugging Face directory in `dir`, file by file atomically (temp + rename):
/// `model.safetensors` ([`hf_name`]s, `metadata` in its header), `config.json` (labels,
/// [`loader_entries`], `metadata` under `"sprig"`), [`MODELING_FILE`], `tokenizer.json` (a copy of
/// `tokenizer`) and the tokenizer side files found beside it.
pub fn write_classifier_dir(model: &BertClassifier, labels: &[String], tokenizer: &Path, dir: &Path, metadata: HashMap<String, String>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tensors: Vec<(String, candle_core::Tensor)> = model.named_params().into_iter().map(|(n, v)| (hf_name(&n), v.as_tensor().clone())).collect();
    let bytes = to_safetensors_bytes(&tensors, Some(metadata.clone()))?;
    sprig_train::write_atomic(&dir.join("model.safetensors"), &bytes)?;
    let mut cfg = model.encoder.config.clone();
    cfg.id2label = Some(labels.iter().enumerate().map(|(i, l)| (i.to_string(), l.clone())).collect::<BTreeMap<_, _>>());
    cfg.sprig_pooling = Some(model.pooling);
    cfg.extra.insert("label2id".into(), serde_json::json!(labels.iter().enumerate().map(|(i, l)| (l.clone(), i)).collect::<BTreeMap<_, _>>()));
    for (k, v) in loader_entries(model.pooling) {
        if k != "sprig_pooling" {
            cfg.extra.insert(k, v);
        }
    }
    cfg.extra.insert("model_type".into(), serde_json::json!("bert"));
    // Where the head came from, so that `sprig eval` rebuilds the same split.
    cfg.extra.insert("sprig".into(), serde_json::json!(metadata));
    sprig_train::write_json(&dir.join("config.json"), &cfg)?;
    sprig_train::write_atomic(&dir.join(MODELING_FILE), MODELING_PY.as_bytes())?;
    let tok = std::fs::read(tokenizer).map_err(io_err(tokenizer))?;
    sprig_train::write_atomic(&dir.join("tokenizer.json"), &tok)?;
    if let Some(src) = tokenizer.parent() {
        for f in TOKENIZER_EXTRAS {
            let p = src.join(f);
            if p.is_file() {
                let b = std::fs::read(&p).map_err(io_err(&p))?;
                sprig_train::write_atomic(&dir.join(f), &b)?;
            }
        }
    }
    Ok(())
}
