//! Pruned FFN neurons and attention heads removed physically. A classifier directory whose
//! `intermediate.dense` rows were pruned whole (`sprig prune --granularity ffn-neurons`) or whose
//! heads' `attention.self.value` rows were (`--granularity attention-heads`) is rewritten as a
//! smaller dense BERT: a narrower `intermediate_size`, which any BERT loader runs as it is, and
//! fewer heads per layer (`config.json`'s `sprig_attention_heads`, each head as wide as before),
//! which sprig and the shipped `modeling_sprig_bert.py` run.
//!
//! A pruned neuron `i` has zero input weights, so its activation is the constant `gelu(b1_i)`
//! whatever the input, and its only effect is `W2[:, i] · gelu(b1_i)` added to every output: that
//! term moves into the FFN's output bias. A pruned head's values are all its value bias `b_v`, and
//! its attention weights sum to one, so it outputs `b_v` whatever its queries and keys: its query,
//! key and value rows go, and `W_o[:, head] · b_v[head]` moves into the output projection's bias.
//! The narrow model computes the same function.
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

/// What the narrow model keeps.
#[derive(Clone, Debug, PartialEq)]
pub struct Narrowed {
    /// FFN neurons per layer (the new `intermediate_size`).
    pub intermediate_size: usize,
    /// Attention heads per layer.
    pub heads: Vec<usize>,
}

type Tensors = HashMap<String, Tensor>;

fn get(t: &Tensors, n: &str, file: &Path) -> Result<Tensor> {
    t.get(n).cloned().with_context(|| format!("{} has no tensor {n}", file.display()))
}

/// Indices of `rows` (a `[n, in]` weight viewed as `n / width` slices of `width` rows) whose slice
/// holds a non-zero, and of the others.
fn kept_slices(w: &Tensor, width: usize) -> Result<(Vec<u32>, Vec<u32>)> {
    let rows = w.to_vec2::<f32>()?;
    Ok((0..(rows.len() / width) as u32).partition(|&s| rows[s as usize * width..(s as usize + 1) * width].iter().any(|r| r.iter().any(|x| *x != 0.0))))
}

/// The row indices of slices `slices` of `width` rows each.
fn rows_of(slices: &[u32], width: usize) -> Result<Tensor> {
    let idx: Vec<u32> = slices.iter().flat_map(|&s| s * width as u32..(s + 1) * width as u32).collect();
    Ok(Tensor::new(idx.as_slice(), &Device::Cpu)?)
}

/// Removes the pruned neurons of the FFN under `prefix` (`encoder.layer.i.`); returns how many it keeps.
fn narrow_ffn(t: &mut Tensors, prefix: &str, file: &Path) -> Result<usize> {
    let names = ["intermediate.dense.weight", "intermediate.dense.bias", "output.dense.weight", "output.dense.bias"].map(|n| format!("{prefix}{n}"));
    let (w1, b1, w2, b2) = (get(t, &names[0], file)?, get(t, &names[1], file)?, get(t, &names[2], file)?, get(t, &names[3], file)?);
    let (f, h) = w1.dims2()?;
    if w2.dims2()? != (h, f) {
        bail!("{} has shape {:?}, expected [{h}, {f}]", names[2], w2.dims());
    }
    let (kept, gone) = kept_slices(&w1, 1)?;
    if kept.is_empty() {
        bail!("{} keeps no neuron", names[0]);
    }
    if gone.is_empty() {
        return Ok(f);
    }
    let (ki, gi) = (rows_of(&kept, 1)?, rows_of(&gone, 1)?);
    let folded = w2.index_select(&gi, 1)?.matmul(&b1.index_select(&gi, 0)?.gelu_erf()?.unsqueeze(1)?)?.squeeze(1)?;
    t.insert(names[0].clone(), w1.index_select(&ki, 0)?.contiguous()?);
    t.insert(names[1].clone(), b1.index_select(&ki, 0)?);
    t.insert(names[2].clone(), w2.index_select(&ki, 1)?.contiguous()?);
    t.insert(names[3].clone(), (b2 + folded)?);
    Ok(kept.len())
}

/// Removes the pruned heads (all-zero value rows) of the attention under `prefix`; returns how
/// many it keeps.
fn narrow_heads(t: &mut Tensors, prefix: &str, head_dim: usize, file: &Path) -> Result<usize> {
    let p = |n: &str| format!("{prefix}attention.{n}");
    let (wv, bv, wo, bo) = (get(t, &p("self.value.weight"), file)?, get(t, &p("self.value.bias"), file)?, get(t, &p("output.dense.weight"), file)?, get(t, &p("output.dense.bias"), file)?);
    let (a, _) = wv.dims2()?;
    if a % head_dim != 0 || wo.dim(1)? != a {
        bail!("{} has shape {:?} and {} {:?}: not heads of width {head_dim}", p("self.value.weight"), wv.dims(), p("output.dense.weight"), wo.dims());
    }
    let (kept, gone) = kept_slices(&wv, head_dim)?;
    if kept.is_empty() {
        bail!("{} keeps no head", p("self.value.weight"));
    }
    if gone.is_empty() {
        return Ok(kept.len());
    }
    let (ki, gi) = (rows_of(&kept, head_dim)?, rows_of(&gone, head_dim)?);
    let folded = wo.index_select(&gi, 1)?.matmul(&bv.index_select(&gi, 0)?.unsqueeze(1)?)?.squeeze(1)?;
    for n in ["query", "key", "value"] {
        let (w, b) = (p(&format!("self.{n}.weight")), p(&format!("self.{n}.bias")));
        let (wt, bt) = (get(t, &w, file)?, get(t, &b, file)?);
        t.insert(w, wt.index_select(&ki, 0)?.contiguous()?);
        t.insert(b, bt.index_select(&ki, 0)?);
    }
    t.insert(p("output.dense.weight"), wo.index_select(&ki, 1)?.contiguous()?);
    t.insert(p("output.dense.bias"), (bo + folded)?);
    Ok(kept.len())
}

/// Writes the narrow model of the classifier directory `src` into `dst` (created; HF layout:
/// `config.json` with the new `intermediate_size` and, when heads went, `sprig_attention_heads`;
/// `model.safetensors`; the tokenizer files). Refused when the layers keep different numbers of
/// neurons (one `intermediate_size` must fit all), when a layer keeps no head, or when the
/// activation is not BERT's erf GELU.
pub fn write_narrow(src: &Path, dst: &Path) -> Result<Narrowed> {
    let cfg_path = src.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?)
        .with_context(|| format!("parsing {}", cfg_path.display()))?;
    let bert = sprig_bert::BertConfig::from_file(&cfg_path)?;
    if bert.hidden_act != "gelu" {
        bail!("{}: hidden_act {:?}; folding pruned neurons into the bias is implemented for BERT's erf \"gelu\"", cfg_path.display(), bert.hidden_act);
    }
    let weights = src.join("model.safetensors");
    let mut tensors: Tensors = candle_core::safetensors::load(&weights, &Device::Cpu).with_context(|| format!("reading {}", weights.display()))?;
    // Hugging Face names (`bert.encoder...`, as sprig writes classifiers) or the encoder's own.
    let root = if tensors.contains_key("bert.encoder.layer.0.intermediate.dense.weight") { "bert." } else { "" };
    let mut narrowed = Narrowed { intermediate_size: 0, heads: Vec::with_capacity(bert.num_hidden_layers) };
    for i in 0..bert.num_hidden_layers {
        let prefix = format!("{root}encoder.layer.{i}.");
        let k = narrow_ffn(&mut tensors, &prefix, &weights)?;
        if i > 0 && k != narrowed.intermediate_size {
            bail!("encoder.layer.0 keeps {} FFN neurons, encoder.layer.{i} {k}: one intermediate_size cannot hold both (prune with a uniform allocation)", narrowed.intermediate_size);
        }
        narrowed.intermediate_size = k;
        narrowed.heads.push(narrow_heads(&mut tensors, &prefix, bert.head_dim(), &weights)?);
    }
    config["intermediate_size"] = serde_json::json!(narrowed.intermediate_size);
    if narrowed.heads.iter().any(|&k| k != bert.num_attention_heads) {
        config["sprig_attention_heads"] = serde_json::json!(narrowed.heads);
    }
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
    Ok(narrowed)
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
