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
    /// Attention heads kept in each layer of a model whose pruned heads were removed physically
    /// (`sprig prune --granularity attention-heads`); each head keeps its width
    /// `hidden_size / num_attention_heads`. Absent: every layer has `num_attention_heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sprig_attention_heads: Option<Vec<usize>>,
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
        if let Some(heads) = &self.sprig_attention_heads {
            if heads.len() != self.num_hidden_layers {
                return Err(format!("sprig_attention_heads has {} entries for {} layers", heads.len(), self.num_hidden_layers));
            }
            if let Some((i, k)) = heads.iter().enumerate().find(|(_, k)| !(1..=self.num_attention_heads).contains(*k)) {
                return Err(format!("sprig_attention_heads[{i}] is {k}; a layer keeps 1 to num_attention_heads = {} heads", self.num_attention_heads));
            }
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
        // LayerNorm divides by sqrt(var + eps): eps <= 0 gives NaN on constant rows.
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0 && self.layer_norm_eps < 1.0) {
            return Err(format!("layer_norm_eps must be a finite number in (0, 1), got {}", self.layer_norm_eps));
        }
        self.validate_labels()
    }

    /// `id2label` keys are exactly `"0"`..`"n-1"`, and a `num_labels` field, when present, is `n`.
    fn validate_labels(&self) -> std::result::Result<(), String> {
        if let Some(m) = &self.id2label {
            let mut ids = Vec::with_capacity(m.len());
            for k in m.keys() {
                ids.push(k.parse::<usize>().map_err(|_| format!("id2label key {k:?} is not a class index (expected 0..{})", m.len()))?);
            }
            ids.sort_unstable();
            if let Some((i, _)) = ids.iter().enumerate().find(|(i, id)| i != *id) {
                return Err(format!("id2label has {} entries but no key \"{i}\" (keys must be 0..{})", m.len(), m.len()));
            }
        }
        if let Some(v) = self.extra.get("num_labels") {
            let n = v.as_u64().ok_or_else(|| format!("num_labels must be a non-negative integer, got {v}"))?;
            if let Some(m) = &self.id2label {
                if n != m.len() as u64 {
                    return Err(format!("num_labels is {n} but id2label has {} entries", m.len()));
                }
            }
        }
        Ok(())
    }

    /// The number of classes the config declares: `id2label`'s size, else `num_labels`; `None`
    /// when it declares neither. The source field is returned for error messages.
    pub fn declared_num_labels(&self) -> Option<(usize, &'static str)> {
        if let Some(m) = &self.id2label {
            return Some((m.len(), "id2label"));
        }
        let n = self.extra.get("num_labels")?.as_u64()?;
        Some((usize::try_from(n).ok()?, "num_labels"))
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The heads every layer has, when they all have the same number (`None` when a removal left
    /// different counts).
    pub fn uniform_heads(&self) -> Option<usize> {
        let first = self.layer_heads(0);
        (0..self.num_hidden_layers).all(|l| self.layer_heads(l) == first).then_some(first)
    }

    /// The attention heads of layer `layer` (all of them unless some were removed).
    pub fn layer_heads(&self, layer: usize) -> usize {
        self.sprig_attention_heads.as_ref().and_then(|h| h.get(layer).copied()).unwrap_or(self.num_attention_heads)
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

    #[test]
    fn removed_heads_are_per_layer_and_in_range() {
        let mut v = minimal();
        v["sprig_attention_heads"] = serde_json::json!([1, 4]);
        let c: BertConfig = serde_json::from_value(v.clone()).unwrap();
        assert!(c.validate().is_ok());
        assert_eq!((c.layer_heads(0), c.layer_heads(1), c.head_dim()), (1, 4, 8));
        for (bad, want) in [(serde_json::json!([1]), "1 entries for 2 layers"), (serde_json::json!([0, 4]), "[0] is 0"), (serde_json::json!([2, 5]), "[1] is 5")] {
            v["sprig_attention_heads"] = bad;
            let e = serde_json::from_value::<BertConfig>(v.clone()).unwrap().validate().unwrap_err();
            assert!(e.contains("sprig_attention_heads") && e.contains(want), "{e}");
        }
        let plain: BertConfig = serde_json::from_value(minimal()).unwrap();
        assert_eq!(plain.layer_heads(1), 4);
        assert!(serde_json::to_value(&plain).unwrap().get("sprig_attention_heads").is_none());
    }

    #[test]
    fn layer_norm_eps_must_be_finite_and_in_0_1() {
        let c: BertConfig = serde_json::from_value(minimal()).unwrap();
        for eps in [-1e-12, 0.0, 1.0, 5.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let e = BertConfig { layer_norm_eps: eps, ..c.clone() }.validate().unwrap_err();
            assert!(e.contains("layer_norm_eps") && e.contains(&eps.to_string()) && e.contains("(0, 1)"), "{e}");
        }
        for eps in [1e-12, 1e-5, 0.1] {
            assert!(BertConfig { layer_norm_eps: eps, ..c.clone() }.validate().is_ok());
        }
    }
    #[test]
    fn labels_must_be_numbered_0_to_n_and_agree_with_num_labels() {
        let mut v = minimal();
        v["id2label"] = serde_json::json!({"0": "neg", "1": "pos"});
        let c: BertConfig = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(c.declared_num_labels(), Some((2, "id2label")));
        assert!(c.validate().is_ok());
        v["num_labels"] = 3.into();
        let e = serde_json::from_value::<BertConfig>(v.clone()).unwrap().validate().unwrap_err();
        assert!(e.contains("num_labels is 3") && e.contains("id2label has 2"), "{e}");
        v["id2label"] = serde_json::json!({"0": "neg", "x": "pos"});
        v.as_object_mut().unwrap().remove("num_labels");
        let e = serde_json::from_value::<BertConfig>(v.clone()).unwrap().validate().unwrap_err();
        assert!(e.contains("\"x\""), "{e}");
        v["id2label"] = serde_json::json!({"0": "neg", "2": "pos"});
        let e = serde_json::from_value::<BertConfig>(v.clone()).unwrap().validate().unwrap_err();
        assert!(e.contains("no key \"1\""), "{e}");
        v.as_object_mut().unwrap().remove("id2label");
        v["num_labels"] = (-2).into();
        let e = serde_json::from_value::<BertConfig>(v.clone()).unwrap().validate().unwrap_err();
        assert!(e.contains("num_labels") && e.contains("-2"), "{e}");
        v["num_labels"] = 4.into();
        assert_eq!(serde_json::from_value::<BertConfig>(v).unwrap().declared_num_labels(), Some((4, "num_labels")));
    }
}
