//! Each encoder linear in its fastest format on this CPU. Which sparse format wins depends on the
//! sparsity, the mask's structure, the shape, the number of rows and the CPU (at 90% unstructured
//! CSR beats dense at small M but not always at large M; BSR 4x1 pays fill-in on an unstructured
//! mask; 2:4 exists only for 2:4 masks), so [`measure_formats`] times each candidate on the
//! linear's own weights and a representative input and keeps the fastest. The choice is a
//! [`FormatPlan`]; [`FormatCache`] keeps plans beside a model (`sprig-formats.json`), valid for
//! one CPU, SIMD path, sprig version and weights file.
use crate::error::{io_err, BertError, Result};
use crate::model::{is_encoder_linear_weight, BertEncoder};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sprig_kernels::candle::{Format, SparseLinear};
use sprig_kernels::nn::{ops, Act};
use sprig_kernels::Bitmask;
use sprig_prune::MaskSet;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

/// The cache file written beside a model directory.
pub const FORMATS_FILE: &str = "sprig-formats.json";

/// How one encoder linear runs: its dense weight (with exact zeros) or a compiled sparse format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearFormat {
    Dense,
    Sparse(Format),
}

impl std::fmt::Display for LinearFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dense => write!(f, "dense"),
            Self::Sparse(Format::Csr) => write!(f, "csr"),
            Self::Sparse(Format::Bsr(r, c)) => write!(f, "bsr{r}x{c}"),
            Self::Sparse(Format::Nm(n, m)) => write!(f, "{n}:{m}"),
        }
    }
}

impl std::str::FromStr for LinearFormat {
    type Err = BertError;
    /// `dense`, `csr`, `bsrRxC` (e.g. `bsr4x1`), `N:M` (e.g. `2:4`, also written `nm2:4`).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || BertError::Invalid(format!("unknown format {s:?} (dense, csr, bsr4x1, bsr1x4, bsr4x4, 2:4)"));
        let num = |v: &str| v.parse::<usize>().ok().filter(|&x| x > 0).ok_or_else(bad);
        if s == "dense" {
            return Ok(Self::Dense);
        }
        if s == "csr" {
            return Ok(Self::Sparse(Format::Csr));
        }
        if let Some((r, c)) = s.strip_prefix("bsr").and_then(|b| b.split_once('x')) {
            return Ok(Self::Sparse(Format::Bsr(num(r)?, num(c)?)));
        }
        if let Some((n, m)) = s.strip_prefix("nm").unwrap_or(s).split_once(':') {
            let (n, m) = (num(n)?, num(m)?);
            if n >= m {
                return Err(bad());
            }
            return Ok(Self::Sparse(Format::Nm(n, m)));
        }
        Err(bad())
    }
}

impl Serialize for LinearFormat {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LinearFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// True when every group of `m` consecutive positions along a row keeps at most `n` (an N:M mask).
pub fn is_nm(mask: &Bitmask, n: usize, m: usize) -> bool {
    mask.cols().is_multiple_of(m)
        && (0..mask.rows()).all(|i| (0..mask.cols() / m).all(|g| (0..m).filter(|&o| mask.get(i, g * m + o)).count() <= n))
}

/// The formats worth timing for a `[N, K]` weight with `mask`: dense, CSR, BSR 4x1 (N % 4 == 0),
/// BSR 1x4 (K % 4 == 0) and 2:4 when the mask is 2:4.
pub fn candidates(mask: &Bitmask) -> Vec<LinearFormat> {
    let mut v = vec![LinearFormat::Dense, LinearFormat::Sparse(Format::Csr)];
    if mask.rows().is_multiple_of(4) {
        v.push(LinearFormat::Sparse(Format::Bsr(4, 1)));
    }
    if mask.cols().is_multiple_of(4) {
        v.push(LinearFormat::Sparse(Format::Bsr(1, 4)));
        if is_nm(mask, 2, 4) {
            v.push(LinearFormat::Sparse(Format::Nm(2, 4)));
        }
    }
    v
}

/// The choice for one linear and what it was based on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearChoice {
    pub format: LinearFormat,
    /// Fraction of the weight's entries pruned.
    pub sparsity: f64,
    /// Best-of-runs milliseconds of each candidate (empty when nothing was pruned: dense).
    pub ms: BTreeMap<String, f64>,
}

/// Every encoder linear's format for inputs of `rows` rows on `threads` threads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FormatPlan {
    pub rows: usize,
    pub threads: usize,
    /// Wall time the measurement took.
    pub seconds: f64,
    /// By weight name (`encoder.layer.{i}.….weight`).
    pub choices: BTreeMap<String, LinearChoice>,
}

impl FormatPlan {
    /// The sparse choices, what [`BertEncoder::compile_sparse_each`] takes.
    pub fn sparse_formats(&self) -> BTreeMap<String, Format> {
        self.choices
            .iter()
            .filter_map(|(n, c)| match c.format {
                LinearFormat::Sparse(f) => Some((n.clone(), f)),
                LinearFormat::Dense => None,
            })
            .collect()
    }

    /// How many linears run in each format, e.g. `{"csr": 30, "dense": 6}`.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for c in self.choices.values() {
            *m.entry(c.format.to_string()).or_insert(0) += 1;
        }
        m
    }
}

/// How [`measure_formats`] times.
#[derive(Clone, Debug)]
pub struct MeasureOptions {
    /// Rows of the representative input (batch x sequence length of a typical call).
    pub rows: usize,
    /// Timed runs per candidate after one warm-up; the best is kept.
    pub runs: usize,
    /// Seed of the random input.
    pub seed: u64,
}

impl Default for MeasureOptions {
    fn default() -> Self {
        Self { rows: 32 * 128, runs: 3, seed: 0 }
    }
}

/// The masks of the encoder linears from their exact zeros (a pruned checkpoint written without
/// masks stores pruned weights as 0.0). Linears without a zero are left out.
pub fn masks_from_zeros(encoder: &BertEncoder) -> Result<MaskSet> {
    let all = crate::prune::masks_of_zeros(encoder.named_params())?;
    let mut set = MaskSet::new();
    for (name, m) in all.iter().filter(|(_, m)| m.count_kept() < m.len()) {
        set.insert(name.clone(), m.clone());
    }
    Ok(set)
}

/// Best of `runs` wall times (ms) of `f` after one warm-up; stops after the warm-up when that alone
/// took over `give_up_ms` (a candidate far slower than the best so far needs no precise time).
fn best_ms(runs: usize, give_up_ms: f64, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    let mut best = t.elapsed().as_secs_f64() * 1e3;
    if best > give_up_ms {
        return Ok(best);
    }
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(best)
}

/// Times every candidate format ([`candidates`]) of each masked encoder linear on `rows x K` random
/// activations with the linear's own weights, bias and activation (the fused op the encoder runs),
/// and keeps the fastest. Q, K and V of a layer get one format, the one with the least summed
/// time, so that they run as one stacked product. Unmasked linears stay dense without timing;
/// dense times are measured once per shape (they do not depend on the values).
pub fn measure_formats(encoder: &BertEncoder, masks: &MaskSet, opts: &MeasureOptions) -> Result<FormatPlan> {
    if opts.rows == 0 {
        bail!("format measurement needs at least one row");
    }
    let start = Instant::now();
    let params: HashMap<&str, Tensor> = encoder.named_params().iter().map(|(n, v)| (n.as_str(), v.as_detached_tensor())).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
    let mut inputs: HashMap<usize, Tensor> = HashMap::new();
    let mut dense_ms: HashMap<(usize, usize, bool), f64> = HashMap::new();
    let mut choices = BTreeMap::new();
    for (name, _) in encoder.named_params().iter().filter(|(n, _)| is_encoder_linear_weight(n)) {
        let w = &params[name.as_str()];
        let (n, k) = w.dims2()?;
        let Some(mask) = masks.get(name) else {
            choices.insert(name.clone(), LinearChoice { format: LinearFormat::Dense, sparsity: 0.0, ms: BTreeMap::new() });
            continue;
        };
        let bias = match params.get(name.replace(".weight", ".bias").as_str()) {
            Some(b) => b.clone(),
            None => Tensor::zeros(n, candle_core::DType::F32, &Device::Cpu)?,
        };
        let act = if name.contains(".intermediate.dense.") { Act::Gelu } else { Act::Identity };
        let x = match inputs.get(&k) {
            Some(x) => x.clone(),
            None => {
                let v: Vec<f32> = (0..opts.rows * k).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
                let x = Tensor::from_vec(v, (opts.rows, k), &Device::Cpu)?;
                inputs.insert(k, x.clone());
                x
            }
        };
        let bits = mask.to_bitmask()?;
        let mut ms = BTreeMap::new();
        let key = (n, k, act == Act::Gelu);
        let dense = match dense_ms.get(&key) {
            Some(&t) => t,
            None => {
                let t = best_ms(opts.runs, f64::INFINITY, || Ok(ops::linear(&x, w, &bias, act, None).map(drop)?))?;
                dense_ms.insert(key, t);
                t
            }
        };
        ms.insert(LinearFormat::Dense.to_string(), dense);
        let mut best = dense;
        for f in candidates(&bits) {
            let LinearFormat::Sparse(format) = f else { continue };
            let sl = SparseLinear::from_bitmask(w, &bits, None, format)?;
            let vals = sl.values().as_detached_tensor();
            let t = best_ms(opts.runs, 3.0 * best, || Ok(ops::sparse_linear(&x, &vals, sl.pattern(), &bias, act, None).map(drop)?))?;
            best = best.min(t);
            ms.insert(f.to_string(), t);
        }
        let format = fastest(&ms, &[]);
        choices.insert(name.clone(), LinearChoice { format, sparsity: mask.sparsity(), ms });
    }
    share_qkv_format(&mut choices);
    Ok(FormatPlan { rows: opts.rows, threads: sprig_kernels::bench::threads(), seconds: start.elapsed().as_secs_f64(), choices })
}

/// The format with the least time in `ms` among those every map in `also` measured too.
fn fastest(ms: &BTreeMap<String, f64>, also: &[&BTreeMap<String, f64>]) -> LinearFormat {
    ms.iter()
        .filter(|(f, _)| also.iter().all(|o| o.contains_key(*f)))
        .map(|(f, &t)| (f, t + also.iter().map(|o| o[f]).sum::<f64>()))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .and_then(|(f, _)| f.parse().ok())
        .unwrap_or(LinearFormat::Dense)
}

/// Gives Q, K and V of each layer the format with the least summed time when all three were timed.
fn share_qkv_format(choices: &mut BTreeMap<String, LinearChoice>) {
    let layers: Vec<String> = choices
        .keys()
        .filter_map(|n| n.strip_suffix(".attention.self.query.weight").map(str::to_string))
        .collect();
    for p in layers {
        let names = ["query", "key", "value"].map(|s| format!("{p}.attention.self.{s}.weight"));
        let [Some(q), Some(k), Some(v)] = names.each_ref().map(|n| choices.get(n)) else { continue };
        if q.ms.is_empty() || k.ms.is_empty() || v.ms.is_empty() {
            continue;
        }
        let f = fastest(&q.ms, &[&k.ms, &v.ms]);
        for n in &names {
            if let Some(c) = choices.get_mut(n) {
                c.format = f;
            }
        }
    }
}

/// `sprig-formats.json`: the plans measured for one model on one machine. A plan is reused only
/// when every key matches (CPU model, SIMD path, sprig version, sha256 of the weights and masks
/// files) and it was measured for the same rows and threads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FormatCache {
    pub cpu: String,
    pub simd: String,
    pub sprig_version: String,
    pub weights_sha256: String,
    /// sha256 of `masks.safetensors` when the masks came from it; `None` when they were derived
    /// from the weights' zeros.
    pub masks_sha256: Option<String>,
    pub plans: Vec<FormatPlan>,
}

impl FormatCache {
    /// An empty cache for this machine and build.
    pub fn for_this_machine(weights_sha256: String, masks_sha256: Option<String>) -> Self {
        let m = sprig_kernels::bench::Machine::detect();
        Self {
            cpu: m.cpu,
            simd: m.simd.to_string(),
            sprig_version: env!("CARGO_PKG_VERSION").to_string(),
            weights_sha256,
            masks_sha256,
            plans: vec![],
        }
    }

    /// True when `self` was made on the same machine, build and files as `other`.
    pub fn same_keys(&self, other: &FormatCache) -> bool {
        (&self.cpu, &self.simd, &self.sprig_version, &self.weights_sha256, &self.masks_sha256)
            == (&other.cpu, &other.simd, &other.sprig_version, &other.weights_sha256, &other.masks_sha256)
    }

    /// The plan measured for `rows` and `threads`, if any.
    pub fn plan(&self, rows: usize, threads: usize) -> Option<&FormatPlan> {
        self.plans.iter().find(|p| p.rows == rows && p.threads == threads)
    }

    /// Adds `plan`, replacing one for the same rows and threads.
    pub fn insert(&mut self, plan: FormatPlan) {
        self.plans.retain(|p| (p.rows, p.threads) != (plan.rows, plan.threads));
        self.plans.push(plan);
    }

    /// Reads `path`; `Ok(None)` when it does not exist, an error naming it when it is not a cache.
    pub fn read(path: &Path) -> Result<Option<Self>> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| BertError::Invalid(format!("{}: not a format cache: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(path)(e)),
        }
    }

    /// Writes `path` atomically (temp file + rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        Ok(sprig_train::write_json(path, self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names_round_trip_and_bad_ones_are_named() {
        for s in ["dense", "csr", "bsr4x1", "bsr1x4", "bsr4x4", "2:4", "4:8"] {
            assert_eq!(s.parse::<LinearFormat>().unwrap().to_string(), s);
        }
        assert_eq!("nm2:4".parse::<LinearFormat>().unwrap(), LinearFormat::Sparse(Format::Nm(2, 4)));
        for s in ["", "coo", "bsr4", "bsr0x1", "4:2", "2:x"] {
            let e = s.parse::<LinearFormat>().unwrap_err().to_string();
            assert!(e.contains(&format!("{s:?}")), "{e}");
        }
    }

    #[test]
    fn nm_detection_and_candidates() {
        let mut keep = vec![false; 4 * 8];
        for r in 0..4 {
            for g in 0..2 {
                keep[r * 8 + g * 4 + (r % 4)] = true;
                keep[r * 8 + g * 4 + ((r + 1) % 4)] = true;
            }
        }
        let two_four = Bitmask::from_bools(4, 8, &keep).unwrap();
        assert!(is_nm(&two_four, 2, 4));
        assert!(candidates(&two_four).contains(&LinearFormat::Sparse(Format::Nm(2, 4))));
        keep[2] = true; // row 0, group 0 now keeps three
        let not = Bitmask::from_bools(4, 8, &keep).unwrap();
        assert!(!is_nm(&not, 2, 4));
        assert!(!candidates(&not).contains(&LinearFormat::Sparse(Format::Nm(2, 4))));
        assert!(candidates(&not).contains(&LinearFormat::Sparse(Format::Bsr(4, 1))));
    }

    #[test]
    fn qkv_share_the_format_with_least_summed_time() {
        let ms = |d: f64, c: f64| BTreeMap::from([("dense".to_string(), d), ("csr".to_string(), c)]);
        let mut choices = BTreeMap::new();
        for (s, (d, c)) in [("query", (10.0, 1.0)), ("key", (10.0, 1.0)), ("value", (10.0, 30.0))] {
            let m = ms(d, c);
            choices.insert(format!("encoder.layer.0.attention.self.{s}.weight"), LinearChoice { format: fastest(&m, &[]), sparsity: 0.9, ms: m });
        }
        assert_eq!(choices["encoder.layer.0.attention.self.value.weight"].format, LinearFormat::Dense);
        share_qkv_format(&mut choices);
        // csr sums to 32 ms, dense to 30 ms.
        assert!(choices.values().all(|c| c.format == LinearFormat::Dense));
    }
}
