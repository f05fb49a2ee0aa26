//! FFN neurons removed physically. A classifier directory whose `intermediate.dense` rows were
//! pruned whole (`sprig prune --granularity ffn-neurons`) is rewritten as a smaller dense BERT with
//! a narrower `intermediate_size`, which any BERT loader (sprig, transformers) runs as it is.
//!
//! A pruned neuron `i` has zero input weights, so its activation is the constant `gelu(b1_i)`
//! whatever the input, and its only effect is `W2[:, i] · gelu(b1_i)` added to every output: that
//! term moves into the FFN's output bias, and the narrow model computes the same function.
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Files of a pruned run directory that do not describe the narrow model.
const NOT_COPIED: &[&str] = &[
    "model.safetensors",
    "masks.safetensors",
    "sprig.json",
    "sprig-formats.json",
    "sprig-logits.json",
    "metrics.jsonl",
    "summary.json",
    "config.toml",
    "config.json",
];

/// Writes the narrow model of the classifier directory `src` into `dst` (created; HF layout:
/// `config.json` with the new `intermediate_size`, `model.safetensors`, the tokenizer files).
/// Returns the neurons kept per layer. Refused when the layers keep different numbers of neurons
/// (one `intermediate_size` must fit all) or when the activation is not BERT's erf GELU.
pub fn write_narrow(src: &Path, dst: &Path) -> Result<usize> {
    let cfg_path = src.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?)
        .with_context(|| format!("parsing {}", cfg_path.display()))?;
    let act = config.get("hidden_act").and_then(|a| a.as_str()).unwrap_or("gelu");
    if act != "gelu" {
        bail!("{}: hidden_act {act:?}; folding pruned neurons into the bias is implemented for BERT's erf \"gelu\"", cfg_path.display());
    }
    let weights = src.join("model.safetensors");
    let mut tensors: HashMap<String, Tensor> = candle_core::safetensors::load(&weights, &Device::Cpu).with_context(|| format!("reading {}", weights.display()))?;
    let mut w1_names: Vec<String> = tensors.keys().filter(|n| n.ends_with(".intermediate.dense.weight")).cloned().collect();
    w1_names.sort();
    if w1_names.is_empty() {
        bail!("{} holds no intermediate.dense weights", weights.display());
    }
    let get = |t: &HashMap<String, Tensor>, n: &str| t.get(n).cloned().with_context(|| format!("{} has no tensor {n}", weights.display()));
    let mut width: Option<(usize, String)> = None;
    for w1_name in &w1_names {
        let prefix = w1_name.trim_end_matches("intermediate.dense.weight");
        let (b1_name, w2_name, b2_name) =
            (format!("{prefix}intermediate.dense.bias"), format!("{prefix}output.dense.weight"), format!("{prefix}output.dense.bias"));
        let (w1, b1, w2, b2) = (get(&tensors, w1_name)?, get(&tensors, &b1_name)?, get(&tensors, &w2_name)?, get(&tensors, &b2_name)?);
        let (f, h) = w1.dims2()?;
        let rows = w1.to_vec2::<f32>()?;
        let (kept, gone): (Vec<u32>, Vec<u32>) = (0..f as u32).partition(|&i| rows[i as usize].iter().any(|x| *x != 0.0));
        match &width {
            Some((k, first)) if *k != kept.len() => {
                bail!("{first} keeps {k} neurons, {w1_name} {}: one intermediate_size cannot hold both (prune with a uniform allocation)", kept.len())
            }
            None => width = Some((kept.len(), w1_name.clone())),
            _ => {}
        }
        if kept.is_empty() {
            bail!("{w1_name} keeps no neuron");
        }
        if w2.dims2()? != (h, f) {
            bail!("{w2_name} has shape {:?}, expected [{h}, {f}]", w2.dims());
        }
        let (ki, gi) = (Tensor::new(kept.as_slice(), &Device::Cpu)?, Tensor::new(gone.as_slice(), &Device::Cpu)?);
        let b2_new = if gone.is_empty() {
            b2
        } else {
            let folded = w2.index_select(&gi, 1)?.matmul(&b1.index_select(&gi, 0)?.gelu_erf()?.unsqueeze(1)?)?.squeeze(1)?;
            (b2 + folded)?
        };
        tensors.insert(w1_name.clone(), w1.index_select(&ki, 0)?.contiguous()?);
        tensors.insert(b1_name, b1.index_select(&ki, 0)?);
        tensors.insert(w2_name, w2.index_select(&ki, 1)?.contiguous()?);
        tensors.insert(b2_name, b2_new);
    }
    let (k, _) = width.expect("at least one layer");
    config["intermediate_size"] = serde_json::json!(k);
    std::fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
    for e in std::fs::read_dir(src).with_context(|| format!("listing {}", src.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type()?.is_file() && !NOT_COPIED.contains(&name.as_str()) && !name.starts_with('.') {
            std::fs::copy(e.path(), dst.join(&name)).with_context(|| format!("copying {name}"))?;
        }
    }
    let sorted: std::collections::BTreeMap<&String, &Tensor> = tensors.iter().collect();
    let bytes = safetensors::serialize(sorted.into_iter().map(|(n, t)| (n.as_str(), t)), None)?;
    sprig_train::write_atomic(&dst.join("model.safetensors"), &bytes)?;
    sprig_train::write_atomic(&dst.join("config.json"), serde_json::to_string_pretty(&config)?.as_bytes())?;
    Ok(k)
}

/// The largest |difference| between the logits of two [`crate::export::reference_logits`] records.
pub fn max_logit_diff(a: &serde_json::Value, b: &serde_json::Value) -> Result<f64> {
    let rows = |v: &serde_json::Value| -> Result<Vec<Vec<f64>>> {
        v["examples"]
            .as_array()
            .context("no examples")?
            .iter()
            .map(|e| e["logits"].as_array().context("no logits").map(|l| l.iter().filter_map(|x| x.as_f64()).collect()))
            .collect()
    };
    let (ra, rb) = (rows(a)?, rows(b)?);
    if ra.len() != rb.len() {
        bail!("{} vs {} examples", ra.len(), rb.len());
    }
    Ok(ra.iter().zip(&rb).flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs())).fold(0.0, f64::max))
}
