//! The Optimal BERT Surgeon (oBERT; Kurtic et al. 2022, "The Optimal BERT Surgeon: Scalable and
//! Accurate Second-Order Pruning for Large Language Models", arXiv 2203.07259): block-wise OBS
//! with an empirical Fisher.
//!
//! Each prunable tensor, flattened row-major, is cut into contiguous blocks of `B` weights (the last
//! one may be shorter; the paper uses B = 50). Inside a block the Hessian is the damped empirical
//! Fisher over the last m gradients (§3, eq. 2),
//! F = λI + (1/m) Σ_{j=1..m} g_j g_jᵀ, and blocks are independent (F is block-diagonal).
//!
//! * saliency of one weight (eq. 4 with Q = {i}): ρ_i = w_i² / (2 [F⁻¹]_ii) ([`scores`]);
//! * removing a set Q of a block (eq. 3 and 5): ρ_Q = ½ w_Qᵀ ([F⁻¹]_{Q,Q})⁻¹ w_Q and the optimal
//!   change of the other weights δw = −F⁻¹_{:,Q} ([F⁻¹]_{Q,Q})⁻¹ w_Q, after which w_Q = 0 ([`update`]).
//!
//! F⁻¹ is never formed at size B x B when m < B: with G the m x B matrix of gradients,
//! F⁻¹ = (1/λ)(I − Gᵀ (λmI + GGᵀ)⁻¹ G) (Woodbury, the closed form of the paper's m rank-1
//! Sherman–Morrison updates), so one m x m Cholesky factor L (LLᵀ = λmI + GGᵀ) and Y = L⁻¹G give
//! [F⁻¹]_ab = (δ_ab − y_aᵀ y_b)/λ. When the block has no more coordinates than gradients, the
//! small F itself is factorised and inverted. All of it is f64, blocks run in parallel (rayon),
//! each block's arithmetic in a fixed order, so results are bit-identical run to run and across
//! thread counts. Numerical safeguards (they do not change well-conditioned results): when the
//! small Cholesky fails (gradients nearly collinear and λ tiny against them), the factor comes from
//! a Householder QR of the stacked [G; √λ I], which does not square the condition number;
//! [F⁻¹]_ii is never taken below its bound 1/F_ii; a [F⁻¹]_QQ that is numerically not positive
//! definite gets a jitter of at most 1e-6 of its largest diagonal.
//!
//! **Cost.** Per block of k kept weights with m < k gradients, about m²k multiply-adds (GGᵀ and
//! L⁻¹G); MiniLM-L6's 10.6 M encoder weights with B = 50, m = 32 took 4.6 CPU-seconds for
//! [`scores`] and 6.0 for an [`update`] pruning half of them (~2.3 s and ~3 s on 2 cores;
//! `examples/obs_bench.rs`).
//!
//! **Tiles.** With a block granularity of `r x c` tiles ([`Blocks::tile`]), a block is
//! ⌊B/(rc)⌋ whole tiles (at least one) of the `[d0, rest]` matrix, taken row-major over the tile
//! grid, and [`scores`] gives each tile its joint saliency ρ_Q with Q = the tile's kept weights
//! (eq. 3; the paper's block pruning), written to each of its weights so that the group mean the
//! allocation ranks by is ρ_Q. With blocks of B consecutive weights of a row instead, the four
//! weights of a 4x1 tile (four rows of one column) fall in four different blocks and the tile is
//! ranked by the mean of four single-weight saliencies, as if they were independent.
//!
//! **Pruned coordinates.** Weights already pruned are zero and stay masked: F is restricted to the
//! block's currently kept coordinates S (equivalently, their gradients are masked to zero, which
//! makes F block-diagonal between S and the pruned ones). Scores of pruned weights are 0; an update
//! never moves them. The diagonal case B = 1 is [`crate::Criterion::Fisher`]
//! ([`crate::GradAccumulator::fisher`], there over every observed step, here over the window).
//!
//! **Memory.** The [`GradWindow`] holds m gradients of every prunable tensor as f32:
//! m x numel x 4 bytes (MiniLM-L6's encoder linears, 10.6 M weights, m = 32: 1.36 GB).
use std::collections::BTreeMap;

use candle_core::{backprop::GradStore, DType, Var};
use rayon::prelude::*;

use crate::allocation::Scores;
use crate::criteria::grad_of;
use crate::error::{PruneError, Result};
use crate::mask::{Mask, MaskSet};

/// The last `m` gradients of each prunable tensor (a ring buffer), for [`scores`] and [`update`].
#[derive(Debug, Clone)]
pub struct GradWindow {
    capacity: usize,
    steps: usize,
    slots: BTreeMap<String, Vec<Vec<f32>>>,
}

impl GradWindow {
    /// An empty window keeping the last `m` gradients; errors when `m` is 0.
    pub fn new(m: usize) -> Result<Self> {
        if m == 0 {
            return Err(PruneError::BadValue { what: "OBS gradient count m", value: 0.0, why: "must be >= 1" });
        }
        Ok(Self { capacity: m, steps: 0, slots: BTreeMap::new() })
    }
    /// m, the number of gradients kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Number of gradients held now, min(steps, m).
    pub fn len(&self) -> usize {
        self.steps.min(self.capacity)
    }
    pub fn is_empty(&self) -> bool {
        self.steps == 0
    }
    /// Number of steps observed since creation.
    pub fn steps(&self) -> usize {
        self.steps
    }
    /// Bytes held by the stored gradients.
    pub fn bytes(&self) -> usize {
        self.slots.values().flatten().map(|g| g.len() * 4).sum()
    }

    /// Adds one step's gradients of `params` (call after `backward`, before the optimizer step),
    /// matched by `Var` as [`crate::GradAccumulator::update`] does. Every step must bring the same tensors.
    pub fn update(&mut self, params: &[(String, Var)], grads: &GradStore) -> Result<()> {
        let flat: BTreeMap<String, Vec<f32>> = params
            .iter()
            .map(|(n, v)| Ok((n.clone(), grad_of(grads, n, v)?.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)))
            .collect::<Result<_>>()?;
        self.push(flat)
    }

    /// Adds one step's flat row-major gradients by name (the candle-free form of [`GradWindow::update`]).
    pub fn push(&mut self, grads: BTreeMap<String, Vec<f32>>) -> Result<()> {
        if self.steps > 0 {
            if let Some(n) = grads.keys().find(|n| !self.slots.contains_key(*n)) {
                return Err(PruneError::UnknownParam(n.clone()));
            }
            if let Some(n) = self.slots.keys().find(|n| !grads.contains_key(*n)) {
                return Err(PruneError::NoGradient(n.clone()));
            }
            for (n, g) in &grads {
                let want = self.slots[n][0].len();
                if g.len() != want {
                    return Err(PruneError::ShapeMismatch { name: n.clone(), expected: vec![want], got: vec![g.len()] });
                }
            }
        }
        for (n, g) in &grads {
            if let Some((index, x)) = g.iter().enumerate().find(|(_, x)| !x.is_finite()) {
                return Err(PruneError::NonFiniteGradient { name: n.clone(), index, value: *x as f64 });
            }
        }
        let slot = self.steps % self.capacity;
        for (n, g) in grads {
            let ring = self.slots.entry(n).or_default();
            if slot < ring.len() {
                ring[slot] = g;
            } else {
                ring.push(g);
            }
        }
        self.steps += 1;
        Ok(())
    }

    /// The ring buffers as `[held, n]` tensors by name (slot order) and the counters, for a
    /// resumable run ([`crate::Pruner::state`]).
    pub(crate) fn export(&self, out: &mut BTreeMap<String, candle_core::Tensor>) -> Result<serde_json::Value> {
        for (n, ring) in &self.slots {
            let cols = ring.first().map_or(0, Vec::len);
            let flat: Vec<f32> = ring.iter().flatten().copied().collect();
            out.insert(n.clone(), candle_core::Tensor::from_vec(flat, (ring.len(), cols), &candle_core::Device::Cpu)?);
        }
        Ok(serde_json::json!({"capacity": self.capacity, "steps": self.steps}))
    }
    /// Restores what [`GradWindow::export`] wrote.
    pub(crate) fn import(&mut self, tensors: &BTreeMap<String, candle_core::Tensor>, meta: &serde_json::Value) -> Result<()> {
        let capacity = meta["capacity"].as_u64().unwrap_or(0) as usize;
        if capacity != self.capacity {
            return Err(PruneError::BadValue { what: "saved OBS gradient window size", value: capacity as f64, why: "differs from this pruner's m" });
        }
        self.steps = meta["steps"].as_u64().unwrap_or(0) as usize;
        self.slots = tensors
            .iter()
            .map(|(n, t)| {
                let (rows, _) = t.dims2()?;
                Ok((n.clone(), (0..rows).map(|r| t.get(r)?.to_vec1::<f32>()).collect::<candle_core::Result<Vec<_>>>()?))
            })
            .collect::<Result<_>>()?;
        if self.slots.values().any(|r| r.len() != self.len()) {
            return Err(PruneError::BadValue { what: "saved OBS gradient window", value: self.steps as f64, why: "holds another number of gradients than its step count says" });
        }
        Ok(())
    }

    /// The held gradients of `name`, oldest first.
    fn ordered(&self, name: &str) -> Result<Vec<&[f32]>> {
        let ring = self.slots.get(name).ok_or_else(|| PruneError::NoGradient(name.into()))?;
        let start = if self.steps > self.capacity { self.steps % self.capacity } else { 0 };
        Ok((0..ring.len()).map(|k| ring[(start + k) % ring.len()].as_slice()).collect())
    }
}

/// What [`update`] did.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ObsUpdate {
    /// Weights newly set to zero.
    pub pruned: usize,
    /// Σ over blocks of ρ_Q, the predicted loss increase (eq. 3, under the quadratic model).
    pub saliency: f64,
}

/// How each tensor is cut into Fisher blocks (F is block-diagonal over them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocks {
    /// B, weights per block (a tiled layout rounds it down to whole tiles, at least one).
    pub size: usize,
    /// `Some((r, c))`: blocks of whole `r x c` tiles, one joint saliency per tile (see the module doc).
    pub tile: Option<(usize, usize)>,
}

impl Blocks {
    /// Blocks of B weights for pruning in `granularity`: whole tiles for `r x c` blocks when
    /// `tiles` is on ([`crate::ScoreOptions::obs_tiles`]), else B consecutive weights.
    pub fn for_granularity(size: usize, granularity: crate::Granularity, tiles: bool) -> Self {
        let tile = match granularity {
            crate::Granularity::Block { r, c } if tiles => Some((r, c)),
            _ => None,
        };
        Self { size, tile }
    }
}

impl From<usize> for Blocks {
    /// Blocks of `size` consecutive weights of the flattened tensor.
    fn from(size: usize) -> Self {
        Self { size, tile: None }
    }
}

/// The blocks of one tensor: which flat indices block `b` holds, in a fixed order.
struct Layout {
    numel: usize,
    size: usize,
    /// (r, c, columns of the matrix, tiles per row of the tile grid).
    tile: Option<(usize, usize, usize, usize)>,
}

impl Layout {
    fn new(blocks: Blocks, name: &str, shape: &[usize]) -> Result<Self> {
        let numel: usize = shape.iter().product();
        let Some((r, c)) = blocks.tile else { return Ok(Self { numel, size: blocks.size, tile: None }) };
        crate::Granularity::Block { r, c }.check(name, shape)?;
        let (_, rest) = crate::granularity::as_matrix(shape);
        let per_block = (blocks.size / (r * c)).max(1);
        Ok(Self { numel, size: per_block * r * c, tile: Some((r, c, rest, rest / c)) })
    }
    fn num_blocks(&self) -> usize {
        self.numel.div_ceil(self.size.max(1))
    }
    /// Weights per tile (1 without tiles): member k of a block lies in the block's tile k / this.
    fn tile_len(&self) -> usize {
        self.tile.map_or(1, |(r, c, ..)| r * c)
    }
    /// The flat indices of block `b`: consecutive ones, or tile by tile, each tile row-major.
    fn members(&self, b: usize, out: &mut Vec<usize>) {
        out.clear();
        let start = b * self.size;
        let end = (start + self.size).min(self.numel);
        match self.tile {
            None => out.extend(start..end),
            Some((r, c, rest, tiles_per_row)) => {
                for t in start / (r * c)..end / (r * c) {
                    let (row0, col0) = ((t / tiles_per_row) * r, (t % tiles_per_row) * c);
                    for i in 0..r {
                        out.extend((row0 + i) * rest + col0..(row0 + i) * rest + col0 + c);
                    }
                }
            }
        }
    }
}

fn check(block: usize, damp: f64) -> Result<()> {
    if block == 0 {
        return Err(PruneError::BadValue { what: "OBS block size B", value: 0.0, why: "must be >= 1" });
    }
    if !(damp.is_finite() && damp > 0.0) {
        return Err(PruneError::BadValue { what: "OBS dampening λ (ScoreOptions::fisher_damp)", value: damp, why: "must be finite and > 0 (oBERT uses 1e-7)" });
    }
    Ok(())
}

/// The gradients, weights and mask of one tensor, checked against each other.
fn tensor<'a>(window: &'a GradWindow, name: &str, var: &Var, mask: Option<&'a Mask>) -> Result<(Vec<&'a [f32]>, Vec<f32>)> {
    let grads = window.ordered(name)?;
    let w: Vec<f32> = var.as_tensor().flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    if let Some(g) = grads.first().filter(|g| g.len() != w.len()) {
        return Err(PruneError::ShapeMismatch { name: name.into(), expected: var.dims().to_vec(), got: vec![g.len()] });
    }
    if let Some(m) = mask {
        m.check_shape(name, var.dims())?;
    }
    Ok((grads, w))
}

/// Per-weight OBS saliencies ρ_i = w_i² / (2 [F⁻¹]_ii) (eq. 4) over the Fisher `blocks` of each
/// tensor (a `usize` B: blocks of B consecutive weights), F restricted to the weights kept in
/// `masks` (none = all kept); pruned weights score 0. With tiles ([`Blocks::tile`]) every kept
/// weight of a tile scores the tile's joint ρ_Q (eq. 3). `damp` is λ (> 0). Higher = more
/// important, as for every criterion.
pub fn scores(window: &GradWindow, params: &[(String, Var)], masks: Option<&MaskSet>, blocks: impl Into<Blocks>, damp: f64) -> Result<Scores> {
    let blocks = blocks.into();
    check(blocks.size, damp)?;
    if window.is_empty() {
        return Err(PruneError::MissingInput { criterion: "obs", needs: "at least one GradWindow::update (Pruner::observe)" });
    }
    let mut out = Scores::new();
    for (name, var) in params {
        let mask = masks.and_then(|m| m.get(name));
        let (grads, w) = tensor(window, name, var, mask)?;
        let layout = Layout::new(blocks, name, var.dims())?;
        let per_block: Vec<std::result::Result<Vec<(usize, f32)>, usize>> = (0..layout.num_blocks())
            .into_par_iter()
            .map_init(Scratch::default, |scr, b| {
                scr.select(&layout, b, |i| mask.is_none_or(|m| m.get(i)));
                if scr.kept.is_empty() {
                    return Ok(Vec::new());
                }
                if !scr.factor(&grads, damp) {
                    return Err(b);
                }
                scr.saliencies(&w).ok_or(b)
            })
            .collect();
        let mut s = vec![0f32; w.len()];
        for r in per_block {
            let r = r.map_err(|b| PruneError::NotPositiveDefinite { name: name.clone(), block: b })?;
            r.into_iter().for_each(|(i, v)| s[i] = v);
        }
        out.insert(name.clone(), s);
    }
    Ok(out)
}

/// The OBS weight update of a pruning event (eq. 3 and 5): in every Fisher block, Q = weights kept
/// in `before` and pruned in `after`; the block's other kept weights move by
/// δw = −F⁻¹_{:,Q} ([F⁻¹]_{Q,Q})⁻¹ w_Q (F restricted to the block's weights kept in `before`),
/// w_Q becomes exactly 0, and weights pruned in `before` stay untouched. `blocks` must be those
/// the scores used. Tensors of `params` without a mask in `before` count as dense. Writes the new
/// values into the `Var`s.
pub fn update(window: &GradWindow, params: &[(String, Var)], before: &MaskSet, after: &MaskSet, blocks: impl Into<Blocks>, damp: f64) -> Result<ObsUpdate> {
    let blocks = blocks.into();
    check(blocks.size, damp)?;
    let mut total = ObsUpdate::default();
    let mut new_values = Vec::new();
    for (name, var) in params {
        let Some(a) = after.get(name) else { continue };
        a.check_shape(name, var.dims())?;
        let b = before.get(name);
        if let Some(b) = b {
            b.check_shape(name, var.dims())?;
        }
        let kept_before = |i: usize| b.is_none_or(|b| b.get(i));
        let numel = a.len();
        if !(0..numel).any(|i| kept_before(i) && !a.get(i)) {
            continue;
        }
        if window.is_empty() {
            return Err(PruneError::MissingInput { criterion: "obs", needs: "at least one GradWindow::update (Pruner::observe)" });
        }
        let (grads, mut w) = tensor(window, name, var, b)?;
        let layout = Layout::new(blocks, name, var.dims())?;
        type Moved = (Vec<(usize, f32)>, usize, f64);
        let res: Vec<std::result::Result<Moved, usize>> = (0..layout.num_blocks())
            .into_par_iter()
            .map_init(Scratch::default, |scr, bi| {
                scr.select(&layout, bi, kept_before);
                scr.q.clear();
                scr.q.extend((0..scr.kept.len()).filter(|&t| !a.get(scr.kept[t])));
                if scr.q.is_empty() {
                    return Ok((Vec::new(), 0, 0.0));
                }
                if !scr.factor(&grads, damp) {
                    return Err(bi);
                }
                let rho = scr.solve_q(&w).ok_or(bi)?;
                Ok((scr.apply(&w), scr.q.len(), rho))
            })
            .collect();
        for r in res {
            let (moved, n, rho) = r.map_err(|b| PruneError::NotPositiveDefinite { name: name.clone(), block: b })?;
            moved.into_iter().for_each(|(i, v)| w[i] = v);
            total.pruned += n;
            total.saliency += rho;
        }
        new_values.push((var, candle_core::Tensor::from_vec(w, var.dims(), var.device())?.to_dtype(var.dtype())?));
    }
    for (var, t) in new_values {
        var.set(&t)?;
    }
    Ok(total)
}

/// Per-thread work space of one block: kept coordinates S (flat indices of the tensor), the
/// removed set Q (positions in S), and the factorisation of F restricted to S (k = |S|
/// coordinates, m gradients).
#[derive(Default)]
struct Scratch {
    members: Vec<usize>,
    kept: Vec<usize>,
    /// The block's tile of each position of S (without tiles, the position in the block).
    kept_tile: Vec<usize>,
    tiled: bool,
    q: Vec<usize>,
    /// Gradients at S, m x k row-major.
    g: Vec<f64>,
    /// F_ii = λ + mean g_i², per position of S.
    fdiag: Vec<f64>,
    /// Cholesky factor work matrix: m x m (Woodbury) or k x k (direct).
    l: Vec<f64>,
    /// Woodbury: Yᵀ = (L⁻¹G)ᵀ, k x m; direct: F⁻¹ restricted to S, k x k.
    f: Vec<f64>,
    m: usize,
    lam: f64,
    direct: bool,
    /// ([F⁻¹]_QQ)⁻¹ w_Q, and the |Q| x |Q| work matrix.
    z: Vec<f64>,
    qq: Vec<f64>,
    tmp: Vec<f64>,
}

impl Scratch {
    /// S = the members of block `b` that `kept` accepts, in the layout's order.
    fn select(&mut self, layout: &Layout, b: usize, kept: impl Fn(usize) -> bool) {
        layout.members(b, &mut self.members);
        let tile_len = layout.tile_len();
        self.tiled = layout.tile.is_some();
        self.kept.clear();
        self.kept_tile.clear();
        for (p, &i) in self.members.iter().enumerate() {
            if kept(i) {
                self.kept.push(i);
                self.kept_tile.push(p / tile_len);
            }
        }
    }

    /// Each kept weight's saliency (after [`Scratch::factor`]): eq. 4 alone, or with tiles its
    /// tile's joint ρ_Q over the tile's kept weights (eq. 3). `None` if a [F⁻¹]_QQ fails.
    fn saliencies(&mut self, w: &[f32]) -> Option<Vec<(usize, f32)>> {
        let k = self.kept.len();
        if !self.tiled {
            let one = |t: usize| {
                let wi = w[self.kept[t]] as f64;
                (self.kept[t], (wi * wi / (2.0 * self.finv_diag(t))) as f32)
            };
            return Some((0..k).map(one).collect());
        }
        let mut out = Vec::with_capacity(k);
        let mut start = 0;
        while start < k {
            let end = start + self.kept_tile[start..].iter().take_while(|&&t| t == self.kept_tile[start]).count();
            self.q.clear();
            self.q.extend(start..end);
            let rho = self.solve_q(w)? as f32;
            out.extend(self.kept[start..end].iter().map(|&i| (i, rho)));
            start = end;
        }
        Some(out)
    }

    /// Factorises F = λI + (1/m) Σ g gᵀ restricted to `self.kept`. The small SPD matrix is
    /// Cholesky-factorised; when that fails in floating point (gradients nearly collinear and λ
    /// tiny against them), its factor is taken from a Householder QR of the stacked
    /// [G; √λ I] instead, which does not square the condition number. False if both fail.
    fn factor(&mut self, grads: &[&[f32]], lam: f64) -> bool {
        let (m, k) = (grads.len(), self.kept.len());
        (self.m, self.lam, self.direct) = (m, lam, k <= m);
        self.g.clear();
        for g in grads {
            self.g.extend(self.kept.iter().map(|&i| g[i] as f64));
        }
        self.fdiag.clear();
        self.fdiag.resize(k, 0.0);
        for row in self.g.chunks_exact(k) {
            self.fdiag.iter_mut().zip(row).for_each(|(d, x)| *d += x * x);
        }
        self.fdiag.iter_mut().for_each(|d| *d = lam + *d / m as f64);
        if self.direct {
            let gt = transpose(&self.g, m, k);
            // A = λI + GᵀG/m (k x k) = LLᵀ, then F⁻¹ = A⁻¹ = L⁻ᵀL⁻¹.
            self.l.clear();
            self.l.resize(k * k, 0.0);
            for a in 0..k {
                for b in 0..=a {
                    self.l[a * k + b] = dot(&gt[a * m..(a + 1) * m], &gt[b * m..(b + 1) * m]) / m as f64;
                }
                self.l[a * k + a] += lam;
            }
            if !cholesky(&mut self.l, k) {
                let mut stacked = self.g.iter().map(|x| x / (m as f64).sqrt()).collect::<Vec<_>>();
                stacked.extend((0..k * k).map(|i| if i % (k + 1) == 0 { lam.sqrt() } else { 0.0 }));
                if !qr_lower(&mut stacked, m + k, k, &mut self.l) {
                    return false;
                }
            }
            // M = L⁻¹ (lower, stored transposed: row c of `mt` is column c of M), F⁻¹ = MᵀM.
            let mut mt = vec![0.0; k * k];
            for c in 0..k {
                for r in c..k {
                    let s = if r == c { 1.0 } else { 0.0 } - dot(&self.l[r * k + c..r * k + r], &mt[c * k + c..c * k + r]);
                    mt[c * k + r] = s / self.l[r * k + r];
                }
            }
            self.f.clear();
            self.f.resize(k * k, 0.0);
            for a in 0..k {
                for b in 0..=a {
                    let v = dot(&mt[a * k + a..(a + 1) * k], &mt[b * k + a..(b + 1) * k]);
                    self.f[a * k + b] = v;
                    self.f[b * k + a] = v;
                }
            }
        } else {
            // K = λmI + GGᵀ (m x m) = LLᵀ, Y = L⁻¹G row by row, kept as Yᵀ.
            self.l.clear();
            self.l.resize(m * m, 0.0);
            for a in 0..m {
                for b in 0..=a {
                    self.l[a * m + b] = dot(&self.g[a * k..(a + 1) * k], &self.g[b * k..(b + 1) * k]);
                }
                self.l[a * m + a] += lam * m as f64;
            }
            if !cholesky(&mut self.l, m) {
                let mut stacked = transpose(&self.g, m, k);
                stacked.extend((0..m * m).map(|i| if i % (m + 1) == 0 { (lam * m as f64).sqrt() } else { 0.0 }));
                if !qr_lower(&mut stacked, k + m, m, &mut self.l) {
                    return false;
                }
            }
            let y = &mut self.g;
            for a in 0..m {
                let (done, rest) = y.split_at_mut(a * k);
                let ya = &mut rest[..k];
                for b in 0..a {
                    let c = self.l[a * m + b];
                    ya.iter_mut().zip(&done[b * k..(b + 1) * k]).for_each(|(x, y)| *x -= c * y);
                }
                let d = self.l[a * m + a];
                ya.iter_mut().for_each(|x| *x /= d);
            }
            transpose_into(y, m, k, &mut self.f);
        }
        true
    }

    /// [F⁻¹]_ab for positions a, b in S.
    fn finv(&self, a: usize, b: usize) -> f64 {
        let (k, m) = (self.kept.len(), self.m);
        if self.direct {
            return self.f[a * k + b];
        }
        ((if a == b { 1.0 } else { 0.0 }) - dot(&self.f[a * m..(a + 1) * m], &self.f[b * m..(b + 1) * m])) / self.lam
    }

    /// [F⁻¹]_aa, never below its bound 1/F_aa (Cauchy–Schwarz for SPD F), which rounding in
    /// (1 − yᵀy)/λ could otherwise cross.
    fn finv_diag(&self, a: usize) -> f64 {
        self.finv(a, a).max(1.0 / self.fdiag[a])
    }

    /// z = ([F⁻¹]_QQ)⁻¹ w_Q by Cholesky; returns ρ_Q = ½ w_Qᵀ z. If [F⁻¹]_QQ is numerically not
    /// positive definite, a jitter of 1e-12, 1e-10, ... 1e-6 of its largest diagonal is added;
    /// `None` if that fails too.
    fn solve_q(&mut self, w: &[f32]) -> Option<f64> {
        let q = self.q.len();
        let mut qq = std::mem::take(&mut self.qq);
        qq.clear();
        qq.resize(q * q, 0.0);
        for a in 0..q {
            for b in 0..a {
                qq[a * q + b] = self.finv(self.q[a], self.q[b]);
            }
            qq[a * q + a] = self.finv_diag(self.q[a]);
        }
        self.tmp.clear();
        self.tmp.extend_from_slice(&qq);
        let top = (0..q).map(|a| qq[a * q + a]).fold(0.0, f64::max);
        let mut ok = cholesky(&mut qq, q);
        for jitter in [1e-12, 1e-10, 1e-8, 1e-6] {
            if ok {
                break;
            }
            qq.copy_from_slice(&self.tmp);
            (0..q).for_each(|a| qq[a * q + a] += jitter * top);
            ok = cholesky(&mut qq, q);
        }
        self.qq = qq;
        if !ok {
            return None;
        }
        let wq: Vec<f64> = self.q.iter().map(|&t| w[self.kept[t]] as f64).collect();
        let l = &self.qq;
        self.z.clear();
        for a in 0..q {
            let v = (wq[a] - dot(&l[a * q..a * q + a], &self.z[..a])) / l[a * q + a];
            self.z.push(v);
        }
        for a in (0..q).rev() {
            let s: f64 = (a + 1..q).map(|b| l[b * q + a] * self.z[b]).sum();
            self.z[a] = (self.z[a] - s) / l[a * q + a];
        }
        Some(0.5 * dot(&wq, &self.z))
    }

    /// The new values of S (after [`Scratch::solve_q`]): w_S + δw with δw = −F⁻¹_{S,Q} z, and
    /// exactly 0 on Q.
    fn apply(&mut self, w: &[f32]) -> Vec<(usize, f32)> {
        let (k, m) = (self.kept.len(), self.m);
        let mut in_q = vec![false; k];
        self.q.iter().for_each(|&t| in_q[t] = true);
        if !self.direct {
            // −F⁻¹_{r,Q} z = −(1/λ)(z_r[r ∈ Q] − y_rᵀ u), u = Σ_t y_t z_t; the z_r term only
            // touches Q, whose weights become 0.
            self.tmp.clear();
            self.tmp.resize(m, 0.0);
            for (&t, &z) in self.q.iter().zip(&self.z) {
                self.tmp.iter_mut().zip(&self.f[t * m..(t + 1) * m]).for_each(|(u, y)| *u += y * z);
            }
        }
        (0..k)
            .map(|r| {
                let i = self.kept[r];
                if in_q[r] {
                    return (i, 0.0);
                }
                let delta = if self.direct {
                    -self.q.iter().zip(&self.z).map(|(&t, z)| self.f[r * k + t] * z).sum::<f64>()
                } else {
                    dot(&self.f[r * m..(r + 1) * m], &self.tmp) / self.lam
                };
                (i, (w[i] as f64 + delta) as f32)
            })
            .collect()
    }
}

/// The c x r transpose of the r x c row-major `a`.
fn transpose(a: &[f64], r: usize, c: usize) -> Vec<f64> {
    let mut t = Vec::new();
    transpose_into(a, r, c, &mut t);
    t
}

fn transpose_into(a: &[f64], r: usize, c: usize, t: &mut Vec<f64>) {
    t.clear();
    t.resize(r * c, 0.0);
    for (i, row) in a.chunks_exact(c).enumerate() {
        for (j, x) in row.iter().enumerate() {
            t[j * r + i] = *x;
        }
    }
}

/// Σ a_i b_i with eight interleaved partial sums (a fixed order, so deterministic, and not bound
/// by the latency of one add chain).
#[inline]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a8, b8) = (a[..n].chunks_exact(8), b[..n].chunks_exact(8));
    let tail: f64 = a8.remainder().iter().zip(b8.remainder()).map(|(x, y)| x * y).sum();
    let mut acc = [0.0f64; 8];
    for (x, y) in a8.zip(b8) {
        let (x, y): (&[f64; 8], &[f64; 8]) = (x.try_into().unwrap_or(&[0.0; 8]), y.try_into().unwrap_or(&[0.0; 8]));
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail
}

/// In-place Cholesky of the lower triangle of the n x n row-major `a` (A = LLᵀ, L in the lower
/// triangle); false when A is not (numerically) positive definite.
fn cholesky(a: &mut [f64], n: usize) -> bool {
    for j in 0..n {
        let s = a[j * n + j] - dot(&a[j * n..j * n + j], &a[j * n..j * n + j]);
        if !(s > 0.0 && s.is_finite()) {
            return false;
        }
        let d = s.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let s = a[i * n + j] - dot(&a[i * n..i * n + j], &a[j * n..j * n + j]);
            a[i * n + j] = s / d;
        }
    }
    true
}

/// A lower-triangular n x n `l` with LLᵀ = MᵀM, from a Householder QR of the r x n row-major `m`
/// (r ≥ n; L = Rᵀ, rows of L scaled so its diagonal is positive). Backward stable: used when the
/// Cholesky factorisation of MᵀM fails. False if M has a zero column direction.
fn qr_lower(a: &mut [f64], r: usize, n: usize, l: &mut Vec<f64>) -> bool {
    l.clear();
    l.resize(n * n, 0.0);
    let mut v = vec![0.0; r];
    for c in 0..n {
        let norm = (c..r).map(|i| a[i * n + c] * a[i * n + c]).sum::<f64>().sqrt();
        if !(norm > 0.0 && norm.is_finite()) {
            return false;
        }
        let alpha = if a[c * n + c] > 0.0 { -norm } else { norm };
        v[c..r].iter_mut().enumerate().for_each(|(t, x)| *x = a[(c + t) * n + c]);
        v[c] -= alpha;
        let vv: f64 = v[c..r].iter().map(|x| x * x).sum();
        for j in c..n {
            let s: f64 = (c..r).map(|i| v[i] * a[i * n + j]).sum::<f64>() * 2.0 / vv;
            (c..r).for_each(|i| a[i * n + j] -= s * v[i]);
        }
        // Row c of R = a[c, c..n]; R_cc = alpha. L = Rᵀ with the sign of row c of R flipped to
        // make L_cc > 0 (RᵀR is unchanged).
        let sign = if alpha < 0.0 { -1.0 } else { 1.0 };
        for j in c..n {
            l[j * n + c] = sign * a[c * n + j];
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_factors_a_known_matrix() {
        // A = LLᵀ with L = [[2,0],[1,3]].
        let mut a = vec![4.0, 0.0, 2.0, 10.0];
        assert!(cholesky(&mut a, 2));
        assert_eq!((a[0], a[2], a[3]), (2.0, 1.0, 3.0));
        let mut neg = vec![1.0, 0.0, 2.0, 1.0];
        assert!(!cholesky(&mut neg, 2));
    }

    #[test]
    fn qr_factor_matches_cholesky() {
        // M = [[1,2],[3,4],[0,1]]: MᵀM = [[10,14],[14,21]].
        let mut m = vec![1.0, 2.0, 3.0, 4.0, 0.0, 1.0];
        let mut l = Vec::new();
        assert!(qr_lower(&mut m, 3, 2, &mut l));
        let mut c = vec![10.0, 0.0, 14.0, 21.0];
        assert!(cholesky(&mut c, 2));
        for (x, y) in [(l[0], c[0]), (l[2], c[2]), (l[3], c[3])] {
            assert!((x - y).abs() < 1e-12, "{x} vs {y}");
        }
        assert_eq!(l[1], 0.0);
    }

    /// Collinear gradients of size ~1e4 with λ = 1e-9: the small Fisher's Cholesky fails in
    /// f64 and the QR factor takes over (both paths), giving a usable F⁻¹.
    #[test]
    fn collinear_gradients_fall_back_to_qr() {
        let k = 20;
        for m in [8, 30] {
            let grads: Vec<Vec<f32>> = (0..m)
                .map(|j| (0..k).map(|i| 1e4 * (1.0 + j as f32 * 0.1) * ((i % 7) as f32 - 3.1)).collect())
                .collect();
            let refs: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
            let mut scr = Scratch { kept: (0..k).collect(), ..Default::default() };
            let lam = 1e-9;
            // The plain Cholesky of the matrix factor() builds first does fail here.
            let n = k.min(m);
            let g: Vec<f64> = grads.iter().flat_map(|g| g.iter().map(|&x| x as f64)).collect();
            let mut a = vec![0.0; n * n];
            for x in 0..n {
                for y in 0..=x {
                    a[x * n + y] = if m >= k {
                        (0..m).map(|j| g[j * k + x] * g[j * k + y]).sum::<f64>() / m as f64 + if x == y { lam } else { 0.0 }
                    } else {
                        dot(&g[x * k..(x + 1) * k], &g[y * k..(y + 1) * k]) + if x == y { lam * m as f64 } else { 0.0 }
                    };
                }
            }
            assert!(!cholesky(&mut a, n), "m {m}: the test needs a failing Cholesky");
            assert!(scr.factor(&refs, lam), "m {m}");
            for t in 0..k {
                let d = scr.finv_diag(t);
                assert!(d.is_finite() && d > 0.0, "m {m}, {t}: {d}");
            }
        }
    }

    #[test]
    fn ring_keeps_the_last_m_oldest_first() {
        let mut w = GradWindow::new(2).unwrap();
        for s in 0..5 {
            w.push(BTreeMap::from([("a".to_string(), vec![s as f32])])).unwrap();
        }
        let got: Vec<f32> = w.ordered("a").unwrap().iter().map(|g| g[0]).collect();
        assert_eq!(got, vec![3.0, 4.0]);
        assert_eq!((w.len(), w.steps(), w.bytes()), (2, 5, 8));
        assert!(matches!(w.push(BTreeMap::from([("a".to_string(), vec![0.0, 1.0])])), Err(PruneError::ShapeMismatch { .. })));
        assert!(matches!(w.push(BTreeMap::from([("b".to_string(), vec![0.0])])), Err(PruneError::UnknownParam(_))));
        assert!(matches!(w.push(BTreeMap::from([("a".to_string(), vec![f32::NAN])])), Err(PruneError::NonFiniteGradient { index: 0, .. })));
        assert_eq!(w.steps(), 5, "a rejected step is not stored");
    }
}
