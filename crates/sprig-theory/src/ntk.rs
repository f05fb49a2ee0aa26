//! Empirical neural tangent kernel (NTK) of ReLU MLPs, dense and randomly pruned.
//!
//! The empirical NTK of a scalar network `f(x; θ)` on inputs `x_1..x_n` is the Gram matrix of its
//! parameter gradients, `Θ(x_i, x_j) = <∂f(x_i)/∂θ, ∂f(x_j)/∂θ>` (Jacot, Gabriel & Hongler 2018,
//! "Neural Tangent Kernel", eq. (2) with a scalar output).
//!
//! **Network.** Widths `[d_in, w, .., w, 1]`, no biases, ReLU, *NTK parameterisation* (Jacot et al.
//! 2018, §2): raw weights `W^l_ab ~ N(0, 1)` and
//! `h^l = (σ_l / √n_{l-1}) · (c · M^l ∘ W^l) x^{l-1}`, `x^l = relu(h^l)`, `f = h^L`, with
//! `σ_l² = 2` for hidden layers (He gain, keeps the activation scale) and `σ_L² = 1` for the output.
//!
//! **Pruning.** Following Yang & Wang 2022 ("On the Neural Tangent Kernel Analysis of Randomly
//! Pruned Neural Networks", AISTATS 2023): every weight of every layer is kept independently with
//! probability `p = 1 − s` (a Bernoulli mask `M^l`, seeded, drawn at init), and the pruned network is
//! the dense network with the mask applied (same `W`). Their result: as the width grows the pruned
//! NTK converges to the dense limit *up to a scaling*, and with the kept weights rescaled by
//! `c = 1/√p` it converges to the dense NTK itself. We assume exactly this `1/√p` rescaling of each
//! layer's kept weights (the scaling that keeps `E[(c M ∘ W) x]`'s variance equal to the dense one);
//! without rescaling `c = 1`. The pruned weights are not parameters: the gradient runs over kept
//! weights only, and the rescaling factor is part of the architecture (it appears in the gradient).
//!
//! Because ReLU is positively homogeneous and there are no biases, the unscaled pruned net is exactly
//! `p^{L/2}` times the rescaled one, so `Θ_unscaled = p^L · Θ_rescaled` (tested).
//!
//! **Computation.** For a layer `∂f/∂W^l_ab = k_l · δ^l_a · x^{l-1}_b` with `δ^l = ∂f/∂h^l` and
//! `k_l = c σ_l / √n_{l-1}`: per-example gradients are outer products, obtained by one batched
//! forward and one backward of a scalar per example (no autograd). Dense:
//! `Θ = Σ_l k_l² (D_l D_lᵀ) ∘ (A_{l-1} A_{l-1}ᵀ)`. Pruned: the kept entries of the per-example
//! Jacobian are built in column chunks `J` (`n × C`, never the whole `n × P`) and `Θ += Jᵀ`-products
//! accumulate in f64.
use candle_core::{DType, Device, Tensor};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sprig_kernels::candle::matmul_cpu_invariant;

use crate::error::{check_memory, check_sparsity, invalid, Result, TheoryError};

/// Default memory limit for one NTK computation or sweep: 4 GiB.
pub const DEFAULT_MEMORY_LIMIT: u64 = 4 << 30;

/// A bias-free ReLU MLP with scalar output in NTK parameterisation (see the module docs).
#[derive(Clone, Debug)]
pub struct NtkMlp {
    dims: Vec<usize>,
    /// `weights[l]` is `dims[l+1] x dims[l]`, row-major, raw `N(0, 1)` values.
    weights: Vec<Vec<f32>>,
}

/// Validates widths and returns the parameter count, refusing overflow.
fn param_count(dims: &[usize]) -> Result<usize> {
    if dims.len() < 2 {
        return invalid("layer count", dims.len(), "an MLP needs at least an input and an output width");
    }
    if let Some((i, _)) = dims.iter().enumerate().find(|(_, &d)| d == 0) {
        return invalid("width", 0, format!("layer {i} of {dims:?} has width 0; every width must be >= 1"));
    }
    let mut p: usize = 0;
    for w in dims.windows(2) {
        let l = w[0].checked_mul(w[1]).and_then(|l| p.checked_add(l));
        p = match l {
            Some(v) => v,
            None => return invalid("widths", format!("{dims:?}"), "parameter count overflows"),
        };
    }
    Ok(p)
}

/// `n` standard normals (Box–Muller on ChaCha8 draws).
fn normals(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n + 1);
    let unit = |r: &mut ChaCha8Rng| ((r.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    while v.len() < n {
        let (u1, u2) = (unit(rng), unit(rng));
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        v.push((r * t.cos()) as f32);
        v.push((r * t.sin()) as f32);
    }
    v.truncate(n);
    v
}

impl NtkMlp {
    /// Widths `[d_in, width × hidden_layers, 1]`, weights `N(0, 1)` from `ChaCha8Rng(seed)`.
    /// Refuses a zero width or depth and nets whose weights alone exceed [`DEFAULT_MEMORY_LIMIT`].
    pub fn new(d_in: usize, width: usize, hidden_layers: usize, seed: u64) -> Result<Self> {
        if hidden_layers == 0 {
            return invalid("hidden_layers", 0, "need at least one hidden layer");
        }
        let mut dims = vec![d_in];
        dims.extend(std::iter::repeat_n(width, hidden_layers));
        dims.push(1);
        let p = param_count(&dims)?;
        check_memory(format!("MLP {dims:?} weights ({p} parameters)"), p as u64 * 4, DEFAULT_MEMORY_LIMIT)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let weights = dims.windows(2).map(|w| normals(&mut rng, w[0] * w[1])).collect();
        Ok(Self { dims, weights })
    }

    /// A net from explicit widths and raw weights (`weights[l]`: `dims[l+1] x dims[l]` row-major).
    pub fn from_weights(dims: Vec<usize>, weights: Vec<Vec<f32>>) -> Result<Self> {
        param_count(&dims)?;
        if *dims.last().unwrap_or(&0) != 1 {
            return invalid("output width", dims.last().copied().unwrap_or(0), "the NTK is defined here for a scalar output (1)");
        }
        if weights.len() != dims.len() - 1 {
            return Err(TheoryError::Shape { what: "weight tensors", expected: dims.len() - 1, got: weights.len() });
        }
        for (w, d) in weights.iter().zip(dims.windows(2)) {
            if w.len() != d[0] * d[1] {
                return Err(TheoryError::Shape { what: "weight values of a layer", expected: d[0] * d[1], got: w.len() });
            }
        }
        Ok(Self { dims, weights })
    }

    /// Widths `[d_in, .., 1]`.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }
    /// Raw weights per layer (row-major `out x in`).
    pub fn weights(&self) -> &[Vec<f32>] {
        &self.weights
    }
    /// Mutable raw weights (finite-difference tests).
    pub fn weights_mut(&mut self) -> &mut [Vec<f32>] {
        &mut self.weights
    }
    /// Number of weights `P`.
    pub fn num_params(&self) -> usize {
        self.weights.iter().map(Vec::len).sum()
    }
    fn layers(&self) -> usize {
        self.weights.len()
    }
    /// `σ_l / √n_{l-1}` of layer `l` (module docs).
    fn layer_scale(&self, l: usize) -> f32 {
        let sigma2 = if l + 1 == self.layers() { 1.0 } else { 2.0 };
        (sigma2 / self.dims[l] as f32).sqrt()
    }

    /// Effective weights `k_l · M ∘ W` of every layer as `out x in` tensors.
    fn effective(&self, mask: Option<&PruneMask>) -> Result<Vec<Tensor>> {
        let c = mask.map_or(1.0, PruneMask::scale);
        (0..self.layers())
            .map(|l| {
                let k = self.layer_scale(l) * c;
                let w = &self.weights[l];
                let v: Vec<f32> = match mask {
                    None => w.iter().map(|&x| k * x).collect(),
                    Some(m) => w.iter().zip(&m.keep[l]).map(|(&x, &keep)| if keep { k * x } else { 0.0 }).collect(),
                };
                Ok(Tensor::from_vec(v, (self.dims[l + 1], self.dims[l]), &Device::Cpu)?)
            })
            .collect()
    }

    fn check_batch(&self, x: &[f32], n: usize, mask: Option<&PruneMask>) -> Result<()> {
        if n == 0 {
            return Err(TheoryError::EmptyBatch { what: "the NTK" });
        }
        if x.len() != n * self.dims[0] {
            return Err(TheoryError::Shape { what: "input batch (n x d_in)", expected: n * self.dims[0], got: x.len() });
        }
        if let Some(m) = mask {
            m.check(self)?;
        }
        Ok(())
    }

    /// Outputs `f(x_i)` of the (masked) net for a batch `x` of `n x d_in` values.
    pub fn forward(&self, x: &[f32], n: usize, mask: Option<&PruneMask>) -> Result<Vec<f32>> {
        self.check_batch(x, n, mask)?;
        let pass = self.pass(x, n, mask)?;
        Ok(pass.out)
    }

    /// One batched forward and backward: activations `A_l` (input of layer l) and `δ_l`.
    fn pass(&self, x: &[f32], n: usize, mask: Option<&PruneMask>) -> Result<Pass> {
        let weff = self.effective(mask)?;
        let mut acts = vec![Tensor::from_slice(x, (n, self.dims[0]), &Device::Cpu)?];
        let mut pre = Vec::with_capacity(self.layers());
        for (l, w) in weff.iter().enumerate() {
            let h = matmul_cpu_invariant(&acts[l], &w.t()?)?;
            if l + 1 < self.layers() {
                acts.push(h.relu()?);
            }
            pre.push(h);
        }
        let out = pre[self.layers() - 1].flatten_all()?.to_vec1::<f32>()?;
        let mut deltas = vec![Tensor::ones((n, 1), DType::F32, &Device::Cpu)?];
        for l in (0..self.layers() - 1).rev() {
            let up = matmul_cpu_invariant(deltas.last().expect("non-empty"), &weff[l + 1])?;
            let gate = pre[l].gt(0f32)?.to_dtype(DType::F32)?;
            deltas.push((up * gate)?);
        }
        deltas.reverse();
        Ok(Pass { acts, deltas, out })
    }

    /// Bytes [`empirical_ntk_with`] allocates for `n` inputs with column chunks of `chunk_bytes`.
    pub fn ntk_bytes(&self, n: usize, chunk_bytes: u64) -> u64 {
        let p = self.num_params() as u64;
        let units: u64 = self.dims.iter().map(|&d| d as u64).sum();
        p * 4 + 4 * n as u64 * units * 4 + 2 * chunk_bytes + (n * n) as u64 * 8
    }
}

struct Pass {
    acts: Vec<Tensor>,
    deltas: Vec<Tensor>,
    out: Vec<f32>,
}

/// A random pruning mask: one keep-bit per weight of every layer (row-major like the weights).
#[derive(Clone, Debug)]
pub struct PruneMask {
    /// `keep[l][a * in + b]`: weight `(a, b)` of layer `l` is kept.
    pub keep: Vec<Vec<bool>>,
    /// The requested sparsity `s` (Bernoulli: each weight removed with probability `s`).
    pub sparsity: f64,
    /// Rescale kept weights by `1/√(1 − s)` (Yang & Wang 2022).
    pub rescale: bool,
}

impl PruneMask {
    /// Bernoulli mask for `mlp` (module docs): each weight kept with probability `1 − sparsity`,
    /// drawn from `ChaCha8Rng(seed)`. Refuses a sparsity outside `[0, 1)`.
    pub fn random(mlp: &NtkMlp, sparsity: f64, rescale: bool, seed: u64) -> Result<Self> {
        check_sparsity(sparsity)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let threshold = ((1.0 - sparsity) * 4294967296.0).min(4294967295.0) as u64;
        let keep = mlp
            .weights
            .iter()
            .map(|w| (0..w.len()).map(|_| (rng.next_u32() as u64) < threshold || sparsity == 0.0).collect())
            .collect();
        Ok(Self { keep, sparsity, rescale })
    }
    /// Fraction of weights kept over all layers.
    pub fn kept_fraction(&self) -> f64 {
        let (k, t) = self.keep.iter().fold((0usize, 0usize), |(k, t), m| (k + m.iter().filter(|&&b| b).count(), t + m.len()));
        k as f64 / t.max(1) as f64
    }
    /// The factor `c` applied to kept weights: `1/√(1 − s)` when rescaling, else 1.
    pub fn scale(&self) -> f32 {
        if self.rescale {
            (1.0 / (1.0 - self.sparsity)).sqrt() as f32
        } else {
            1.0
        }
    }
    fn check(&self, mlp: &NtkMlp) -> Result<()> {
        check_sparsity(self.sparsity)?;
        if self.keep.len() != mlp.weights.len() {
            return Err(TheoryError::Shape { what: "mask layers", expected: mlp.weights.len(), got: self.keep.len() });
        }
        for (m, w) in self.keep.iter().zip(&mlp.weights) {
            if m.len() != w.len() {
                return Err(TheoryError::Shape { what: "mask bits of a layer", expected: w.len(), got: m.len() });
            }
        }
        Ok(())
    }
}

/// Knobs of [`empirical_ntk_with`].
#[derive(Clone, Copy, Debug)]
pub struct NtkOptions {
    /// Refuse requests whose estimate ([`NtkMlp::ntk_bytes`]) is above this many bytes.
    pub memory_limit: u64,
    /// Size of one Jacobian column chunk in bytes (pruned path).
    pub chunk_bytes: u64,
}

impl Default for NtkOptions {
    fn default() -> Self {
        Self { memory_limit: DEFAULT_MEMORY_LIMIT, chunk_bytes: 32 << 20 }
    }
}

/// Empirical NTK `Θ` (`n x n`, row-major, f64) of `mlp` (with `mask` applied when given) on the
/// batch `x` (`n x d_in` values), with [`NtkOptions::default`].
pub fn empirical_ntk(mlp: &NtkMlp, x: &[f32], n: usize, mask: Option<&PruneMask>) -> Result<Vec<f64>> {
    empirical_ntk_with(mlp, x, n, mask, NtkOptions::default())
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.t()?.contiguous()?.flatten_all()?.to_vec1::<f32>()?)
}

/// [`empirical_ntk`] with explicit options. Errors (never panics) on an empty batch, a shape
/// mismatch, a mask for another net or an estimate above `opts.memory_limit` (checked before
/// allocating anything large).
pub fn empirical_ntk_with(mlp: &NtkMlp, x: &[f32], n: usize, mask: Option<&PruneMask>, opts: NtkOptions) -> Result<Vec<f64>> {
    mlp.check_batch(x, n, mask)?;
    let chunk_bytes = opts.chunk_bytes.max(4 * n as u64);
    check_memory(format!("empirical NTK of {n} inputs on MLP {:?}", mlp.dims), mlp.ntk_bytes(n, chunk_bytes), opts.memory_limit)?;
    let pass = mlp.pass(x, n, mask)?;
    let mut theta = vec![0f64; n * n];
    let c = mask.map_or(1.0, PruneMask::scale);
    for l in 0..mlp.layers() {
        let k2 = (mlp.layer_scale(l) * c) as f64;
        let k2 = k2 * k2;
        let (d, a) = (&pass.deltas[l], &pass.acts[l]);
        let g = match mask {
            None => {
                let dd = d.matmul(&d.t()?)?;
                let aa = a.matmul(&a.t()?)?;
                (dd * aa)?.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f64::from).collect::<Vec<_>>()
            }
            Some(m) => masked_gram(&host(d)?, &host(a)?, &m.keep[l], n, mlp.dims[l], chunk_bytes)?,
        };
        for (t, v) in theta.iter_mut().zip(g) {
            *t += k2 * v;
        }
    }
    Ok(theta)
}

/// `Σ_{(a,b) kept} (δ_a x_b)(δ_a x_b)ᵀ` from column-major `dt` (`out` columns of `n`) and `at`
/// (`inp` columns of `n`), building kept Jacobian columns in chunks.
fn masked_gram(dt: &[f32], at: &[f32], keep: &[bool], n: usize, inp: usize, chunk_bytes: u64) -> Result<Vec<f64>> {
    let cols = ((chunk_bytes / (4 * n as u64)) as usize).max(1);
    let mut jt = vec![0f32; cols * n];
    let mut used = 0usize;
    let mut g = vec![0f64; n * n];
    let flush = |jt: &[f32], used: usize, g: &mut [f64]| -> Result<()> {
        if used == 0 {
            return Ok(());
        }
        let t = Tensor::from_slice(&jt[..used * n], (used, n), &Device::Cpu)?;
        let p = t.t()?.matmul(&t)?.flatten_all()?.to_vec1::<f32>()?;
        for (a, b) in g.iter_mut().zip(p) {
            *a += b as f64;
        }
        Ok(())
    };
    for (a, row) in keep.chunks(inp).enumerate() {
        let da = &dt[a * n..(a + 1) * n];
        if da.iter().all(|&v| v == 0.0) {
            continue; // a dead unit contributes nothing for any input
        }
        for (b, _) in row.iter().enumerate().filter(|(_, &k)| k) {
            let xb = &at[b * n..(b + 1) * n];
            let dst = &mut jt[used * n..(used + 1) * n];
            for ((o, &d), &x) in dst.iter_mut().zip(da).zip(xb) {
                *o = d * x;
            }
            used += 1;
            if used == cols {
                flush(&jt, used, &mut g)?;
                used = 0;
            }
        }
    }
    flush(&jt, used, &mut g)?;
    Ok(g)
}

/// The explicit per-example Jacobian `∂f(x_i)/∂θ` (`n x P`, row-major, layers in order, pruned
/// entries 0): for tests and small nets. Refuses `n · P · 4` bytes above `memory_limit`.
pub fn jacobian(mlp: &NtkMlp, x: &[f32], n: usize, mask: Option<&PruneMask>, memory_limit: u64) -> Result<Vec<f32>> {
    mlp.check_batch(x, n, mask)?;
    let p = mlp.num_params();
    let bytes = (n as u64).saturating_mul(p as u64).saturating_mul(4);
    check_memory(format!("explicit Jacobian of {n} inputs x {p} parameters"), bytes, memory_limit)?;
    let pass = mlp.pass(x, n, mask)?;
    let c = mask.map_or(1.0, PruneMask::scale);
    let mut j = vec![0f32; n * p];
    let mut off = 0;
    for l in 0..mlp.layers() {
        let (out, inp) = (mlp.dims[l + 1], mlp.dims[l]);
        let k = mlp.layer_scale(l) * c;
        let d = pass.deltas[l].flatten_all()?.to_vec1::<f32>()?;
        let a = pass.acts[l].flatten_all()?.to_vec1::<f32>()?;
        for i in 0..n {
            for r in 0..out {
                for b in 0..inp {
                    let kept = mask.is_none_or(|m| m.keep[l][r * inp + b]);
                    if kept {
                        j[i * p + off + r * inp + b] = k * d[i * out + r] * a[i * inp + b];
                    }
                }
            }
        }
        off += out * inp;
    }
    Ok(j)
}

/// `‖a − b‖_F / ‖b‖_F` (the relative Frobenius distance of `a` from the reference `b`).
pub fn relative_frobenius(a: &[f64], b: &[f64]) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let norm: f64 = b.iter().map(|y| y * y).sum();
    (diff / norm).sqrt()
}

/// `n` Fashion-MNIST test images (seeded pick), standardised with the picked pixels' mean and std,
/// then each scaled to mean square 1 (`‖x‖² = d_in`). Returns `(x, d_in)`.
pub fn fashion_inputs(home: &std::path::Path, n: usize, seed: u64) -> Result<(Vec<f32>, usize)> {
    if n == 0 {
        return Err(TheoryError::EmptyBatch { what: "the NTK input batch" });
    }
    let data = sprig_data::load_image_task("fashion-mnist", home, seed)?;
    let d = data.height * data.width;
    let split = &data.test;
    if n > split.len() {
        return invalid("n_inputs", n, format!("the test split has {} images", split.len()));
    }
    let idx = crate::pick_indices(split.len(), n, seed);
    let mut x: Vec<f32> = idx.iter().flat_map(|&i| split.images[i * d..(i + 1) * d].iter().copied()).collect();
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / x.len() as f64;
    let std = var.sqrt().max(1e-12);
    for v in x.iter_mut() {
        *v = ((*v as f64 - mean) / std) as f32;
    }
    for row in x.chunks_mut(d) {
        let ms = (row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / d as f64).sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v = (*v as f64 / ms) as f32);
    }
    Ok((x, d))
}

/// A width x sparsity sweep of the relative NTK distance between pruned and dense nets.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NtkSweepConfig {
    pub widths: Vec<usize>,
    pub sparsities: Vec<f64>,
    /// Init seeds (one net and one mask per seed; distances averaged over them).
    pub seeds: Vec<u64>,
    pub hidden_layers: usize,
    pub memory_limit: u64,
}

/// One row: distance at one width, sparsity and rescaling, over the seeds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NtkSweepRow {
    pub width: usize,
    pub sparsity: f64,
    pub rescaled: bool,
    pub mean: f64,
    /// Sample standard deviation over seeds (0 for one seed).
    pub std: f64,
    pub per_seed: Vec<f64>,
    /// Realised kept fraction of the masks, mean over seeds.
    pub kept_fraction: f64,
}

/// Mean and sample standard deviation.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len().max(1) as f64;
    if v.len() < 2 {
        return (m, 0.0);
    }
    (m, (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt())
}

/// Runs the sweep on `x` (`n x d_in`). Everything is validated — widths, sparsities, seeds, the
/// largest width's memory (weights + mask + NTK workspace) — before the first net is drawn.
/// `progress(row)` is called after each finished row.
pub fn ntk_sweep(cfg: &NtkSweepConfig, x: &[f32], n: usize, d_in: usize, progress: &mut dyn FnMut(&NtkSweepRow)) -> Result<Vec<NtkSweepRow>> {
    if cfg.widths.is_empty() || cfg.sparsities.is_empty() || cfg.seeds.is_empty() {
        return invalid("sweep", format!("{} widths, {} sparsities, {} seeds", cfg.widths.len(), cfg.sparsities.len(), cfg.seeds.len()), "each list needs at least one value");
    }
    if n == 0 {
        return Err(TheoryError::EmptyBatch { what: "the NTK sweep" });
    }
    if x.len() != n * d_in {
        return Err(TheoryError::Shape { what: "input batch (n x d_in)", expected: n * d_in, got: x.len() });
    }
    for &s in &cfg.sparsities {
        check_sparsity(s)?;
    }
    if cfg.hidden_layers == 0 {
        return invalid("hidden_layers", 0, "need at least one hidden layer");
    }
    let opts = NtkOptions { memory_limit: cfg.memory_limit, ..Default::default() };
    for &w in &cfg.widths {
        let mut dims = vec![d_in];
        dims.extend(std::iter::repeat_n(w, cfg.hidden_layers));
        dims.push(1);
        let p = param_count(&dims)? as u64;
        let units: u64 = dims.iter().map(|&d| d as u64).sum();
        // raw weights + mask bits (1 byte each) + effective weights + activations/deltas + chunks
        let bytes = p * 4 + p + p * 4 + 4 * n as u64 * units * 4 + 2 * opts.chunk_bytes + (n * n) as u64 * 8;
        check_memory(format!("NTK sweep at width {w} ({p} parameters, {n} inputs)"), bytes, cfg.memory_limit)?;
    }
    let mut rows = Vec::new();
    for &w in &cfg.widths {
        let mut dist = vec![[Vec::new(), Vec::new()]; cfg.sparsities.len()];
        let mut kept = vec![0f64; cfg.sparsities.len()];
        for &seed in &cfg.seeds {
            let mlp = NtkMlp::new(d_in, w, cfg.hidden_layers, seed)?;
            let dense = empirical_ntk_with(&mlp, x, n, None, opts)?;
            for (si, &s) in cfg.sparsities.iter().enumerate() {
                let mut mask = PruneMask::random(&mlp, s, false, seed ^ 0x9E37_79B9_7F4A_7C15)?;
                kept[si] += mask.kept_fraction() / cfg.seeds.len() as f64;
                for (ri, rescale) in [false, true].into_iter().enumerate() {
                    mask.rescale = rescale;
                    let th = empirical_ntk_with(&mlp, x, n, Some(&mask), opts)?;
                    dist[si][ri].push(relative_frobenius(&th, &dense));
                }
            }
        }
        for (si, &s) in cfg.sparsities.iter().enumerate() {
            for (ri, rescaled) in [false, true].into_iter().enumerate() {
                let (mean, std) = mean_std(&dist[si][ri]);
                let row = NtkSweepRow { width: w, sparsity: s, rescaled, mean, std, per_seed: dist[si][ri].clone(), kept_fraction: kept[si] };
                progress(&row);
                rows.push(row);
            }
        }
    }
    Ok(rows)
}
