//! Loading a pretrained encoder or a fine-tuned classifier, and saving a classifier as a Hugging
//! Face model directory (`config.json`, `model.safetensors`, `modeling_sprig_bert.py`,
//! `tokenizer.json`; see [`crate::hf`]).
use crate::config::{BertConfig, Pooling};
use crate::error::Result;
use crate::model::{BertClassifier, BertEncoder, Init};
use crate::source::ModelFiles;
use crate::weights::load_safetensors;
use candle_core::Device;
use std::collections::HashMap;
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

/// Write a classifier checkpoint to `dir` as a Hugging Face directory that `transformers` runs
/// with sprig's pooling and head (see [`crate::hf::write_classifier_dir`], the one writer).
pub fn save_classifier(model: &BertClassifier, labels: &[String], tokenizer: &Path, dir: &Path, metadata: HashMap<String, String>) -> Result<()> {
    crate::hf::write_classifier_dir(model, labels, tokenizer, dir, metadata)
}
