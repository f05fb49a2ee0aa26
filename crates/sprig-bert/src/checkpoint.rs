//! Loading a pretrained encoder or a fine-tuned classifier, and saving a classifier as a Hugging
//! Face-style checkpoint directory (`config.json`, `model.safetensors`, `tokenizer.json`).
use crate::config::{BertConfig, Pooling};
use crate::error::{io_err, Result};
use crate::model::{BertClassifier, BertEncoder, Init};
use crate::source::ModelFiles;
use crate::weights::{load_safetensors, to_safetensors_bytes};
use candle_core::Device;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A resolved checkpoint: its files, config and tensors.
pub struct Checkpoint {
    pub files: ModelFiles,
    pub config: BertConfig,
    pub tensors: HashMap<String, candle_core::Tensor>,
}

impl Checkpoint {
    /// Resolve `spec` (directory or hub id) and read its config and weights.
    pub fn load(spec: &str, device: &Device) -> Result<Self> {
        let files = ModelFiles::resolve(spec)?;
        let config = BertConfig::from_file(&files.config)?;
        let tensors = load_safetensors(&files.weights, device)?;
        Ok(Self { files, config, tensors })
    }

    fn origin(&self) -> std::path::PathBuf {
        self.files.weights[0].clone()
    }

    pub fn encoder(&self, dropout_seed: u64, device: &Device) -> Result<BertEncoder> {
        BertEncoder::new(&self.config, Init::Pretrained { tensors: &self.tensors, origin: self.origin() }, dropout_seed, device)
    }

    /// True when the checkpoint carries a classification head (`classifier.weight`).
    pub fn has_classifier(&self) -> bool {
        self.tensors.contains_key("classifier.weight")
    }

    /// The fine-tuned classifier stored in this checkpoint.
    pub fn classifier(&self, dropout_seed: u64, device: &Device) -> Result<BertClassifier> {
        let encoder = self.encoder(dropout_seed, device)?;
        let n = self.tensors.get("classifier.weight").map(|t| t.dims()[0]).unwrap_or(0);
        let pooling = self.config.sprig_pooling.unwrap_or(Pooling::Cls);
        BertClassifier::new(encoder, n, pooling, Some((&self.tensors, self.origin())), dropout_seed)
    }
}

/// Write a classifier checkpoint to `dir` atomically file by file (each file is written to a
/// temporary name and renamed). Encoder tensors get the `bert.` prefix, as
/// `BertForSequenceClassification` stores them.
pub fn save_classifier(model: &BertClassifier, labels: &[String], tokenizer: &Path, dir: &Path, metadata: HashMap<String, String>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tensors: Vec<(String, candle_core::Tensor)> = model
        .named_params()
        .into_iter()
        .map(|(n, v)| (if n.starts_with("classifier.") { n } else { format!("bert.{n}") }, v.as_tensor().clone()))
        .collect();
    let bytes = to_safetensors_bytes(&tensors, Some(metadata.clone()))?;
    sprig_train::write_atomic(&dir.join("model.safetensors"), &bytes)?;
    let mut cfg = model.encoder.config.clone();
    cfg.id2label = Some(labels.iter().enumerate().map(|(i, l)| (i.to_string(), l.clone())).collect::<BTreeMap<_, _>>());
    cfg.sprig_pooling = Some(model.pooling);
    cfg.extra.insert("label2id".into(), serde_json::json!(labels.iter().enumerate().map(|(i, l)| (l.clone(), i)).collect::<BTreeMap<_, _>>()));
    cfg.extra.insert("architectures".into(), serde_json::json!(["BertForSequenceClassification"]));
    cfg.extra.entry("model_type").or_insert(serde_json::json!("bert"));
    // Where the head came from, so that `sprig eval` rebuilds the same split.
    cfg.extra.insert("sprig".into(), serde_json::json!(metadata));
    sprig_train::write_json(&dir.join("config.json"), &cfg)?;
    let tok = std::fs::read(tokenizer).map_err(io_err(tokenizer))?;
    sprig_train::write_atomic(&dir.join("tokenizer.json"), &tok)?;
    Ok(())
}
