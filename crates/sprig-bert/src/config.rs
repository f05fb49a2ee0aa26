//! `config.json` of a Hugging Face BERT checkpoint, validated.
use crate::error::{io_err, BertError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Pooling of token states into one vector per sequence.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean over non-padding tokens (sentence-transformers).
    #[default]
    Mean,
    /// The first (`[CLS]`) token's state.
    Cls,
}

impl std::str::FromStr for Pooling {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "mean" => Ok(Pooling::Mean),
            "cls" => Ok(Pooling::Cls),
            _ => Err(format!("unknown pooling {s:?} (expected mean or cls)")),
        }
    }
}

fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_eps() -> f64 {
    1e-12
}
fn default_type_vocab() -> usize {
    2
}

/// The fields of a BERT `config.json` that the encoder needs; unknown fields are kept in `extra`
/// so that a re-written config loses nothing.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: usize,
    /// Labels of a classification head (`id2label`), when the checkpoint has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id2label: Option<BTreeMap<String, String>>,
    /// sprig's pooling for the classification head (absent in plain HF checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sprig_pooling: Option<Pooling>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl BertConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let cfg: BertConfig = serde_json::from_str(&text)
            .map_err(|e| BertError::Config { path: path.into(), msg: e.to_string() })?;
        cfg.validate().map_err(|msg| BertError::Config { path: path.into(), msg })?;
        Ok(cfg)
    }

    /// Check that the sizes are consistent; returns the first problem found.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if v == 0 {
                return Err(format!("{name} must be positive, got 0"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        for (name, p) in [("hidden_dropout_prob", self.hidden_dropout_prob), ("attention_probs_dropout_prob", self.attention_probs_dropout_prob)] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("{name} must be in [0, 1), got {p}"));
            }
        }
        if !matches!(self.hidden_act.as_str(), "gelu" | "gelu_new" | "gelu_pytorch_tanh" | "relu") {
            return Err(format!("unsupported hidden_act {:?} (gelu, gelu_new, gelu_pytorch_tanh, relu)", self.hidden_act));
        }
        if self.pad_token_id >= self.vocab_size {
            return Err(format!("pad_token_id {} >= vocab_size {}", self.pad_token_id, self.vocab_size));
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Class names of the classification head, in id order.
    pub fn labels(&self) -> Option<Vec<String>> {
        let m = self.id2label.as_ref()?;
        let mut v: Vec<(usize, String)> = m.iter().filter_map(|(k, l)| Some((k.parse().ok()?, l.clone()))).collect();
        v.sort();
        Some(v.into_iter().map(|(_, l)| l).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn minimal() -> serde_json::Value {
        serde_json::json!({"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 64,
            "model_type": "bert"})
    }
    #[test]
    fn parses_defaults_and_keeps_extra() {
        let c: BertConfig = serde_json::from_value(minimal()).unwrap();
        assert!(c.validate().is_ok());
        assert_eq!(c.layer_norm_eps, 1e-12);
        assert_eq!(c.extra["model_type"], "bert");
        let back = serde_json::to_value(&c).unwrap();
        assert_eq!(back["model_type"], "bert");
    }
    #[test]
    fn rejects_inconsistent_sizes_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = minimal();
        v["num_attention_heads"] = 5.into();
        let p = dir.path().join("config.json");
        std::fs::write(&p, v.to_string()).unwrap();
        let e = BertConfig::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("not divisible"), "{e}");
        let mut v = minimal();
        v.as_object_mut().unwrap().remove("hidden_size");
        std::fs::write(&p, v.to_string()).unwrap();
        let e = BertConfig::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("hidden_size"), "{e}");
    }
}
