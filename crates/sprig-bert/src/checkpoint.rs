//! Loading a pretrained encoder or a fine-tuned classifier, and saving a classifier as a Hugging
//! Face model directory (`config.json`, `model.safetensors`, `modeling_sprig_bert.py`,
//! `tokenizer.json`; see [`crate::hf`]).
use crate::config::{BertConfig, Pooling};
use crate::error::{BertError, Result};
use crate::model::{BertClassifier, BertEncoder, Init};
use crate::source::ModelFiles;
use crate::weights::load_safetensors;
use candle_core::{Device, Tensor};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

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
        check_config_against_weights(&config, &tensors, &files.config, &files.weights)?;
        Ok(Self { files, config, tensors })
    }

    /// Resolve `spec` and keep its first `layers` encoder layers ([`keep_layers`]; 0 keeps all).
    pub fn load_layers(spec: &str, layers: usize, device: &Device) -> Result<Self> {
        let mut ck = Self::load(spec, device)?;
        keep_layers(&mut ck.config, &mut ck.tensors, layers).map_err(|msg| BertError::Config { path: ck.files.config.clone(), msg })?;
        Ok(ck)
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
    /// A MoE-fied classifier's routers (`moe.safetensors` beside `config.json`) are loaded with it.
    pub fn classifier(&self, dropout_seed: u64, device: &Device) -> Result<BertClassifier> {
        let mut encoder = self.encoder(dropout_seed, device)?;
        if let Some(routers) = self.files.config.parent().map(|d| d.join(crate::model::MOE_FILE)).filter(|p| p.exists()) {
            encoder.load_moe(&routers)?;
        }
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

/// Keeps the first `layers` encoder layers of a checkpoint (its embeddings, pooler and head
/// unchanged) and drops the rest: the shallower pre-trained model of "top-layer dropping", which
/// Sajjad et al. (2023, "On the effect of dropping layers of pre-trained transformer models")
/// found the best of their layer-dropping strategies, used here as a small dense net of a chosen
/// size. 0 keeps every layer; more layers than the model has is an error naming both numbers.
pub fn keep_layers(config: &mut BertConfig, tensors: &mut HashMap<String, Tensor>, layers: usize) -> std::result::Result<(), String> {
    let n = config.num_hidden_layers;
    if layers == 0 || layers == n {
        return Ok(());
    }
    if layers > n {
        return Err(format!("asked to keep {layers} encoder layers, but the model has {n}"));
    }
    tensors.retain(|name, _| match name.strip_prefix("encoder.layer.").and_then(|r| r.split('.').next()?.parse::<usize>().ok()) {
        Some(i) => i < layers,
        None => true,
    });
    config.num_hidden_layers = layers;
    if let Some(heads) = &mut config.sprig_attention_heads {
        heads.truncate(layers);
    }
    Ok(())
}

/// Check `config` against the tensors it will be built from, before the model allocates anything
/// by the config's numbers: the layer count (`encoder.layer.N` indices present, numbered from 0)
/// must equal `num_hidden_layers` exactly (more in the config would be missing tensors, fewer would
/// silently drop trained layers); the embedding and FFN shapes must match `vocab_size`,
/// `hidden_size`, `max_position_embeddings`, `type_vocab_size` and `intermediate_size`; a
/// classification head must have as many rows as the config declares labels. Errors name
/// `config.json`, the weights file, the tensor and both numbers.
pub fn check_config_against_weights(config: &BertConfig, tensors: &HashMap<String, Tensor>, config_path: &Path, weights: &[PathBuf]) -> Result<()> {
    let file = weights.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    let err = |msg: String| BertError::Config { path: config_path.into(), msg };
    let layers: BTreeSet<usize> = tensors
        .keys()
        .filter_map(|n| n.strip_prefix("encoder.layer.")?.split('.').next()?.parse().ok())
        .collect();
    let n = layers.len();
    if let Some(gap) = (0..n).find(|i| !layers.contains(i)) {
        let last = layers.last().copied().unwrap_or(0);
        return Err(err(format!(
            "{file} has tensors for {n} encoder layers numbered up to encoder.layer.{last}, but none for encoder.layer.{gap} (layers must be numbered 0..{n})"
        )));
    }
    if config.num_hidden_layers != n {
        let why = if config.num_hidden_layers > n { "the extra layers have no weights" } else { "the checkpoint's last layers would be ignored" };
        return Err(err(format!(
            "num_hidden_layers is {} but {file} has {n} encoder layers (encoder.layer.0..{}); it must be {n} ({why})",
            config.num_hidden_layers,
            n.saturating_sub(1)
        )));
    }
    let h = config.hidden_size;
    let mut expected: Vec<(String, [(&str, usize); 2])> = vec![
        ("embeddings.word_embeddings.weight".into(), [("vocab_size", config.vocab_size), ("hidden_size", h)]),
        ("embeddings.position_embeddings.weight".into(), [("max_position_embeddings", config.max_position_embeddings), ("hidden_size", h)]),
        ("embeddings.token_type_embeddings.weight".into(), [("type_vocab_size", config.type_vocab_size), ("hidden_size", h)]),
    ];
    expected.extend((0..n).map(|i| (format!("encoder.layer.{i}.intermediate.dense.weight"), [("intermediate_size", config.intermediate_size), ("hidden_size", h)])));
    for (name, fields) in &expected {
        // A missing tensor is reported by name when the model is built.
        let Some(t) = tensors.get(name) else { continue };
        let want = [fields[0].1, fields[1].1];
        if t.dims() != want {
            return Err(err(format!(
                "tensor {name} in {file} has shape {:?}, which does not match the config's {} {} and {} {} (shape {want:?})",
                t.dims(),
                fields[0].0,
                fields[0].1,
                fields[1].0,
                fields[1].1
            )));
        }
    }
    if let Some(w) = tensors.get("classifier.weight") {
        let dims = w.dims();
        if dims.len() != 2 || dims[0] == 0 || dims[1] != h {
            return Err(err(format!("tensor classifier.weight in {file} has shape {dims:?}, expected [number of labels >= 1, hidden_size {h}]")));
        }
        let rows = dims[0];
        if let Some(b) = tensors.get("classifier.bias") {
            if b.dims() != [rows] {
                return Err(err(format!("tensor classifier.bias in {file} has shape {:?} but classifier.weight has {rows} rows (expected [{rows}])", b.dims())));
            }
        }
        if let Some((labels, field)) = config.declared_num_labels() {
            if labels != rows {
                return Err(err(format!(
                    "tensor classifier.weight in {file} has shape {dims:?} ({rows} classes) but the config's {field} declares {labels} labels; they must agree"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_layers_drops_the_top_layers_only() {
        let mut config: BertConfig = serde_json::from_value(serde_json::json!({"vocab_size": 10, "hidden_size": 4, "num_hidden_layers": 3,
            "num_attention_heads": 2, "intermediate_size": 8, "max_position_embeddings": 16, "sprig_attention_heads": [2, 1, 2]}))
        .unwrap();
        let z = Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu).unwrap();
        let names = ["embeddings.word_embeddings.weight", "encoder.layer.0.output.dense.weight", "encoder.layer.1.output.dense.weight", "encoder.layer.2.output.dense.weight", "encoder.layer.10.output.dense.weight", "pooler.dense.weight", "classifier.weight"];
        let mut tensors: HashMap<String, Tensor> = names.iter().map(|n| (n.to_string(), z.clone())).collect();
        keep_layers(&mut config, &mut tensors, 2).unwrap();
        let mut kept: Vec<&str> = tensors.keys().map(String::as_str).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["classifier.weight", "embeddings.word_embeddings.weight", "encoder.layer.0.output.dense.weight", "encoder.layer.1.output.dense.weight", "pooler.dense.weight"]);
        assert_eq!(config.num_hidden_layers, 2);
        assert_eq!(config.sprig_attention_heads.as_deref(), Some(&[2, 1][..]));
        // 0 and the model's own count keep everything; more is an error naming both numbers.
        keep_layers(&mut config, &mut tensors, 0).unwrap();
        keep_layers(&mut config, &mut tensors, 2).unwrap();
        assert_eq!(tensors.len(), 5);
        let e = keep_layers(&mut config, &mut tensors, 3).unwrap_err();
        assert!(e.contains("keep 3") && e.contains("has 2"), "{e}");
    }
}
