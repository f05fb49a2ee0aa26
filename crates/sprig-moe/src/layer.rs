//! The MoE FFN layer: a router and `E` two-layer GELU experts, as candle tensors with backward
//! through the router (via the gate weights) and the experts.
//!
//! `y_t = Σ_{e ∈ experts(t)} g_te · FFN_e(x_t)` (`+ b` with a shared output bias); a token no
//! expert takes (dropped by capacity) gets `y_t = 0` (or `b`), so in a residual block `x + moe(x)` it passes through unchanged (Switch
//! Transformer §2.2). Tokens are grouped per expert and each group runs as one GEMM pair
//! (`index_select`, two matmuls, `index_add` back), the CPU form of MegaBlocks' dropless grouping.
use crate::error::{MoeError, Result};
use crate::loss::{load_balancing_loss, z_loss};
use crate::router::{assign, Assignment, RouterConfig, Routing};
use crate::stats::MoeStats;
use candle_core::{DType, Device, Tensor, Var, D};
pub use sprig_kernels::candle::{Format, SparseWeight};
use sprig_kernels::nn::{
    ops::{linear, sparse_linear},
    Act,
};
use sprig_kernels::Bitmask;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// An MoE layer's settings: the router and the weights of its auxiliary losses.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MoeConfig {
    pub hidden: usize,
    /// Neurons per expert.
    pub expert_ffn: usize,
    pub router: RouterConfig,
    /// Weight of [`load_balancing_loss`] in [`MoeOutput::aux_loss`] (Switch: 0.01).
    pub balance_weight: f64,
    /// Weight of [`z_loss`] (ST-MoE: 0.001).
    pub z_weight: f64,
    /// Sum the chosen experts' outputs without gate weights (MoEfication: the experts partition a
    /// dense FFN, so choosing all of them gives it back exactly; the router is then trained on its
    /// own, as the task loss does not reach it through the gates).
    #[serde(default)]
    pub unit_gates: bool,
}

impl MoeConfig {
    /// Switch's loss weights (balance 0.01, z 0.001) around `router`.
    pub fn new(hidden: usize, expert_ffn: usize, router: RouterConfig) -> Self {
        Self { hidden, expert_ffn, router, balance_weight: 0.01, z_weight: 0.001, unit_gates: false }
    }
}

/// One expert: `w2 · gelu(w1 · x + b1) + b2` (weights `[out, in]` as in `nn.Linear`), run by
/// sprig-kernels' fused linear (one GEMM with the bias and GELU in its epilogue, with backward),
/// or, once [`Expert::sparsify`]d, by its sparse linear on the kept weights.
#[derive(Clone, Debug)]
pub struct Expert {
    pub w1: Var,
    pub b1: Var,
    pub w2: Var,
    pub b2: Var,
    /// `w1` and `w2` in a sparse format, when the expert is sparse: these values are what the
    /// forward uses and an optimizer trains (`w1`/`w2` then hold them only after
    /// [`Expert::sync_dense`]).
    pub sparse: Option<[SparseWeight; 2]>,
}

/// `w` with its `sparsity` share of smallest-magnitude weights removed (ties broken by position),
/// compiled to `format`.
pub fn magnitude_sparse(w: &Tensor, sparsity: f64, format: Format) -> Result<SparseWeight> {
    if !(0.0..1.0).contains(&sparsity) {
        return Err(MoeError::BadValue { what: "expert sparsity", value: sparsity, why: "must be in [0, 1)" });
    }
    let (n, k) = w.dims2()?;
    let v: Vec<f32> = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].abs().total_cmp(&v[b].abs()).then(a.cmp(&b)));
    let mut keep = vec![true; v.len()];
    let drop = (sparsity * v.len() as f64).round() as usize;
    order[..drop].iter().for_each(|&i| keep[i] = false);
    let mask = Bitmask::from_bools(n, k, &keep).map_err(candle_core::Error::wrap)?;
    Ok(SparseWeight::from_bitmask(w, &mask, format)?)
}

impl Expert {
    /// A dense expert.
    pub fn dense(w1: Var, b1: Var, w2: Var, b2: Var) -> Self {
        Self { w1, b1, w2, b2, sparse: None }
    }

    /// `[n, hidden] -> [n, hidden]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, false)
    }

    /// Keeps the largest-magnitude `1 − sparsity` of each of `w1` and `w2` (per matrix) and runs
    /// them as `format` from now on (sprig-kernels' sparse linear, forward and backward); the
    /// dense `w1`/`w2` get the pruned weights zeroed. A sparse expert is re-sparsified from its
    /// current values.
    pub fn sparsify(&mut self, sparsity: f64, format: Format) -> Result<()> {
        self.sync_dense()?;
        let s1 = magnitude_sparse(self.w1.as_tensor(), sparsity, format)?;
        let s2 = magnitude_sparse(self.w2.as_tensor(), sparsity, format)?;
        self.w1.set(&s1.to_dense()?)?;
        self.w2.set(&s2.to_dense()?)?;
        self.sparse = Some([s1, s2]);
        Ok(())
    }

    /// Writes a sparse expert's trained values back into its dense `w1` and `w2` (zeros off the
    /// pattern); nothing for a dense expert.
    pub fn sync_dense(&self) -> Result<()> {
        if let Some([s1, s2]) = &self.sparse {
            self.w1.set(&s1.to_dense()?)?;
            self.w2.set(&s2.to_dense()?)?;
        }
        Ok(())
    }

    /// The share of `w1` and `w2` not stored (0 for a dense expert).
    pub fn sparsity(&self) -> f64 {
        match &self.sparse {
            Some([s1, s2]) => {
                let total = (s1.pattern.rows() * s1.pattern.cols() + s2.pattern.rows() * s2.pattern.cols()) as f64;
                1.0 - (s1.pattern.nnz() + s2.pattern.nnz()) as f64 / total
            }
            None => 0.0,
        }
    }

    /// `detach`: parameters without autograd tracking (inference: nothing kept for a backward).
    fn run(&self, x: &Tensor, detach: bool) -> Result<Tensor> {
        let p = |v: &Var| if detach { v.as_detached_tensor() } else { v.as_tensor().clone() };
        Ok(match &self.sparse {
            Some([s1, s2]) => {
                let h = sparse_linear(x, &p(&s1.values), &s1.pattern, &p(&self.b1), Act::Gelu, None)?;
                sparse_linear(&h, &p(&s2.values), &s2.pattern, &p(&self.b2), Act::Identity, None)?
            }
            None => {
                let h = linear(x, &p(&self.w1), &p(&self.b1), Act::Gelu, None)?;
                linear(&h, &p(&self.w2), &p(&self.b2), Act::Identity, None)?
            }
        })
    }
}

/// What one forward returns.
#[derive(Debug)]
pub struct MoeOutput {
    /// `[T, hidden]`; zero rows for tokens no expert took.
    pub y: Tensor,
    /// `balance_weight · load-balancing loss + z_weight · z-loss` (a scalar to add to the task loss).
    pub aux_loss: Tensor,
    pub stats: MoeStats,
    pub assignment: Assignment,
}

/// A mixture-of-experts FFN: router `[E, hidden]` and `E` experts.
#[derive(Clone, Debug)]
pub struct MoeFfn {
    pub config: MoeConfig,
    /// Router weight `[E, hidden]` (no bias).
    pub router: Var,
    pub experts: Vec<Expert>,
    /// An output bias added to every token after the experts (a split dense FFN's `b2`).
    pub out_bias: Option<Var>,
}

impl MoeFfn {
    /// New parameters drawn from ChaCha8 with `seed` (the same layer on every machine): router
    /// weights N(0, 0.02²) (small logits, near-uniform routing at the start), experts as
    /// `nn.Linear`'s default, U(−1/√fan_in, 1/√fan_in).
    pub fn new(config: MoeConfig, seed: u64, device: &Device) -> Result<Self> {
        config.router.validate()?;
        let (h, f, e) = (config.hidden, config.expert_ffn, config.router.experts);
        if h == 0 || f == 0 {
            return Err(MoeError::BadValue { what: "MoE layer width (hidden, expert_ffn)", value: h.min(f) as f64, why: "must be > 0" });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let normal = normal_sampler(0.02);
        let router: Vec<f32> = (0..e * h).map(|_| normal(&mut rng)).collect();
        let router = Var::from_tensor(&Tensor::from_vec(router, (e, h), device)?)?;
        let mut uniform = |shape: &[usize], fan_in: usize| -> Result<Var> {
            let bound = 1.0 / (fan_in as f32).sqrt();
            let v: Vec<f32> = (0..shape.iter().product()).map(|_| rng.random_range(-bound..bound)).collect();
            Ok(Var::from_tensor(&Tensor::from_vec(v, shape, device)?)?)
        };
        let experts = (0..e)
            .map(|_| Ok(Expert::dense(uniform(&[f, h], h)?, uniform(&[f], h)?, uniform(&[h, f], f)?, uniform(&[h], f)?)))
            .collect::<Result<_>>()?;
        Ok(Self { config, router, experts, out_bias: None })
    }

    /// The named parameters (`router.weight`, `experts.{i}.w1|b1|w2|b2`, with `w1.values` and
    /// `w2.values` for sparse experts), for an optimizer or a checkpoint.
    pub fn params(&self) -> Vec<(String, Var)> {
        let mut p = vec![("router.weight".to_string(), self.router.clone())];
        for (i, x) in self.experts.iter().enumerate() {
            // A sparse expert trains its stored values (`w1.values`), not the dense matrices.
            let (w1, w2) = match &x.sparse {
                Some([s1, s2]) => (("w1.values", &s1.values), ("w2.values", &s2.values)),
                None => (("w1", &x.w1), ("w2", &x.w2)),
            };
            for (n, v) in [w1, ("b1", &x.b1), w2, ("b2", &x.b2)] {
                p.push((format!("experts.{i}.{n}"), v.clone()));
            }
        }
        if let Some(b) = &self.out_bias {
            p.push(("out_bias".to_string(), b.clone()));
        }
        p
    }

    /// Makes every expert sparse ([`Expert::sparsify`]: magnitude per matrix, `sparsity` in
    /// `[0, 1)`, run as `format`).
    pub fn sparsify_experts(&mut self, sparsity: f64, format: Format) -> Result<()> {
        self.experts.iter_mut().try_for_each(|x| x.sparsify(sparsity, format))
    }

    /// Evaluation forward: no jitter or noise. `x` is `[T, hidden]`; `token_ids` only for hash
    /// routing.
    pub fn forward(&self, x: &Tensor, token_ids: Option<&[u32]>) -> Result<MoeOutput> {
        self.run(x, token_ids, None, false)
    }

    /// Training forward: the router's jitter and noise (if configured) drawn from `rng`.
    pub fn forward_train(&self, x: &Tensor, token_ids: Option<&[u32]>, rng: &mut ChaCha8Rng) -> Result<MoeOutput> {
        self.run(x, token_ids, Some(rng), false)
    }

    /// Inference forward: [`MoeFfn::forward`] with the parameters detached (no graph, nothing kept
    /// for a backward) and the expert outputs scattered back into one buffer. Same values.
    pub fn infer(&self, x: &Tensor, token_ids: Option<&[u32]>) -> Result<MoeOutput> {
        self.run(&x.detach(), token_ids, None, true)
    }

    fn run(&self, x: &Tensor, token_ids: Option<&[u32]>, mut rng: Option<&mut ChaCha8Rng>, detach: bool) -> Result<MoeOutput> {
        let cfg = &self.config;
        let (t, h) = x.dims2()?;
        if h != cfg.hidden {
            return Err(MoeError::Shape { what: "MoE input".into(), expected: vec![t, cfg.hidden], got: vec![t, h] });
        }
        let dev = x.device();
        let xr = match rng.as_deref_mut() {
            Some(r) if cfg.router.jitter > 0.0 => {
                let eps = cfg.router.jitter as f32;
                let u: Vec<f32> = (0..t * h).map(|_| r.random_range(1.0 - eps..1.0 + eps)).collect();
                (x * Tensor::from_vec(u, (t, h), dev)?.to_dtype(x.dtype())?)?
            }
            _ => x.clone(),
        };
        let router = if detach { self.router.as_detached_tensor() } else { self.router.as_tensor().clone() };
        let logits = xr.matmul(&router.t()?)?;
        // The composed softmax: candle-nn's fused `softmax_last_dim` has no backward.
        let probs = candle_nn::ops::softmax(&logits, D::Minus1)?;
        let pv: Vec<f32> = probs.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let choice = match rng {
            Some(r) if cfg.router.noise > 0.0 => {
                let lv: Vec<f32> = logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                let normal = normal_sampler(cfg.router.noise);
                lv.iter().map(|&l| l + normal(r)).collect()
            }
            _ => pv.clone(),
        };
        let a = assign(&cfg.router, &pv, &choice, t, token_ids)?;
        let y = if detach { self.combine_detached(x, &pv, &a)? } else { self.combine(x, &probs, &a, dev)? };
        let aux = (load_balancing_loss(&probs, &a)?.affine(cfg.balance_weight, 0.0)? + z_loss(&logits)?.affine(cfg.z_weight, 0.0)?)?;
        let stats = MoeStats::new(&a, &pv);
        Ok(MoeOutput { y, aux_loss: aux, stats, assignment: a })
    }

    /// `Σ_e g · FFN_e(x)` over the assignment, gates from `probs` (differentiable).
    fn combine(&self, x: &Tensor, probs: &Tensor, a: &Assignment, dev: &Device) -> Result<Tensor> {
        let (t, h) = x.dims2()?;
        let e = a.experts;
        // Every kept pair, grouped by expert: its token and its flat index into probs.
        let tok: Vec<u32> = a.per_expert.iter().flatten().map(|&t| t as u32).collect();
        let flat: Vec<u32> = a.per_expert.iter().enumerate().flat_map(|(x, ts)| ts.iter().map(move |&t| (t * e + x) as u32)).collect();
        let mut y = match &self.out_bias {
            Some(b) => b.as_tensor().unsqueeze(0)?.broadcast_as((t, h))?.contiguous()?,
            None => Tensor::zeros((t, h), x.dtype(), dev)?,
        };
        if tok.is_empty() {
            return Ok(y);
        }
        let tok_t = Tensor::from_vec(tok.clone(), tok.len(), dev)?;
        // Unit gates (a split dense FFN) and hash routing weigh every expert output by 1.
        let unit = self.config.unit_gates || self.config.router.routing == Routing::Hash;
        let mut gates = if unit { Tensor::ones(tok.len(), probs.dtype(), dev)? } else { probs.flatten_all()?.index_select(&Tensor::from_vec(flat, tok.len(), dev)?, 0)? };
        if self.config.router.normalize && !unit {
            // Divide by the sum of the gates each token kept.
            let denom = Tensor::zeros(t, gates.dtype(), dev)?.index_add(&tok_t, &gates, 0)?;
            gates = (&gates / denom.index_select(&tok_t, 0)?)?;
        }
        let mut start = 0;
        for (x_i, ts) in a.per_expert.iter().enumerate() {
            if ts.is_empty() {
                continue;
            }
            let idx = tok_t.narrow(0, start, ts.len())?;
            let mut out = self.experts[x_i].forward(&x.index_select(&idx, 0)?)?;
            if !unit {
                out = out.broadcast_mul(&gates.narrow(0, start, ts.len())?.unsqueeze(D::Minus1)?)?;
            }
            y = y.index_add(&idx, &out, 0)?;
            start += ts.len();
        }
        Ok(y)
    }
}

impl MoeFfn {
    /// [`MoeFfn::combine`] without autograd: each expert's output rows, times their gate, added
    /// into one `[T, hidden]` buffer in place (no `[T, hidden]` copy per expert).
    fn combine_detached(&self, x: &Tensor, probs: &[f32], a: &Assignment) -> Result<Tensor> {
        let (t, h) = x.dims2()?;
        let e = a.experts;
        let mut y = match &self.out_bias {
            Some(b) => b.as_detached_tensor().to_dtype(DType::F32)?.to_vec1::<f32>()?.repeat(t),
            None => vec![0f32; t * h],
        };
        let unit = self.config.unit_gates || self.config.router.routing == Routing::Hash;
        let mut kept_sum = vec![0f32; t];
        if self.config.router.normalize && !unit {
            for (x_i, ts) in a.per_expert.iter().enumerate() {
                ts.iter().for_each(|&tok| kept_sum[tok] += probs[tok * e + x_i]);
            }
        }
        // The experts run concurrently (each one's GEMMs are small: on two threads, eight of them
        // one after the other scaled 1.15x with the second thread, against 1.5x for one dense GEMM);
        // then each token sums its experts' rows, tokens split over threads.
        let outs: Vec<Option<Vec<f32>>> = a
            .per_expert
            .par_iter()
            .enumerate()
            .map(|(x_i, ts)| -> Result<Option<Vec<f32>>> {
                if ts.is_empty() {
                    return Ok(None);
                }
                let idx = Tensor::from_vec(ts.iter().map(|&t| t as u32).collect::<Vec<_>>(), ts.len(), x.device())?;
                Ok(Some(self.experts[x_i].run(&x.index_select(&idx, 0)?, true)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?))
            })
            .collect::<Result<_>>()?;
        // For each token, its (expert, row) pairs.
        let mut rows: Vec<Vec<(usize, usize)>> = vec![Vec::new(); t];
        for (x_i, ts) in a.per_expert.iter().enumerate() {
            ts.iter().enumerate().for_each(|(r, &tok)| rows[tok].push((x_i, r)));
        }
        y.par_chunks_mut(h).zip(rows.par_iter()).enumerate().for_each(|(tok, (yr, pairs))| {
            for &(x_i, r) in pairs {
                let g = if unit {
                    1.0
                } else if self.config.router.normalize {
                    probs[tok * e + x_i] / kept_sum[tok]
                } else {
                    probs[tok * e + x_i]
                };
                let out = outs[x_i].as_deref().expect("an expert with tokens has an output");
                yr.iter_mut().zip(&out[r * h..(r + 1) * h]).for_each(|(o, &v)| *o += g * v);
            }
        });
        Ok(Tensor::from_vec(y, (t, h), x.device())?.to_dtype(x.dtype())?)
    }
}

/// A sampler of N(0, σ²) by Box–Muller (two uniforms per draw; enough for router noise).
fn normal_sampler(sigma: f64) -> impl Fn(&mut ChaCha8Rng) -> f32 {
    move |r: &mut ChaCha8Rng| {
        let u1: f64 = r.random_range(f64::MIN_POSITIVE..1.0);
        let u2: f64 = r.random();
        (sigma * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}
