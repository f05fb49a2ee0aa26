//! Criteria: scores per weight, higher = more important. Each cites the paper and equation it implements.
//!
//! Data-dependent criteria see the model only through closures: `loss(b)` returns the scalar loss of
//! calibration batch `b` computed from the current values of the `Var`s, and `forward_ones()` runs the
//! model on an all-ones input (SynFlow). The model's type is never needed.
use std::collections::BTreeMap;

use candle_core::{backprop::GradStore, DType, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::allocation::{prune, Allocation, Scores};
use crate::error::{check_sparsity, PruneError, Result};
use crate::granularity::Granularity;
use crate::mask::MaskSet;

/// The named criteria (for configs, manifests and the CLI).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Criterion {
    Magnitude,
    Random,
    Snip,
    Grasp,
    Synflow,
    Movement,
    Taylor,
    Wanda,
    Fisher,
    /// Block-wise OBS with an empirical Fisher over the last `grads` gradients and blocks of
    /// `block` weights (oBERT, Kurtic et al. 2022; see [`crate::obs`]). λ is [`ScoreOptions::fisher_damp`](crate::ScoreOptions).
    Obs {
        #[serde(default = "obs_block")]
        block: usize,
        #[serde(default = "obs_grads")]
        grads: usize,
    },
}

fn obs_block() -> usize {
    Criterion::OBERT_BLOCK
}
fn obs_grads() -> usize {
    Criterion::OBERT_GRADS
}

impl std::str::FromStr for Criterion {
    type Err = PruneError;
    /// A name as [`Criterion::name`] gives, any case; `obs`, `obs:B` and `obs:B:m` for [`Criterion::Obs`]
    /// (defaults: the paper's B = 50, and m = 32).
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.to_ascii_lowercase();
        if let Some(rest) = lower.strip_prefix("obs").filter(|r| r.is_empty() || r.starts_with(':')) {
            let bad = || PruneError::BadName { what: "OBS criterion", value: s.into(), expected: "obs, obs:<block> or obs:<block>:<grads>" };
            let nums: Vec<usize> = rest.split(':').skip(1).map(|x| x.parse().map_err(|_| bad())).collect::<Result<_>>()?;
            return match nums.as_slice() {
                [] => Ok(Criterion::Obs { block: Self::OBERT_BLOCK, grads: Self::OBERT_GRADS }),
                [b] => Ok(Criterion::Obs { block: *b, grads: Self::OBERT_GRADS }),
                [b, m] => Ok(Criterion::Obs { block: *b, grads: *m }),
                _ => Err(bad()),
            };
        }
        serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase())).map_err(|_| PruneError::BadName {
            what: "criterion",
            value: s.into(),
            expected: "magnitude|random|snip|grasp|synflow|movement|taylor|wanda|fisher|obs[:block[:grads]]",
        })
    }
}

impl Criterion {
    /// oBERT's block size B (Kurtic et al. 2022, §3).
    pub const OBERT_BLOCK: usize = 50;
    /// Gradients kept for the empirical Fisher (oBERT uses m = 1024 on GPUs; 32 fits CPU memory).
    pub const OBERT_GRADS: usize = 32;

    /// The snake_case name (`obs:B:m` for [`Criterion::Obs`], which parses back).
    pub fn name(&self) -> String {
        if let Criterion::Obs { block, grads } = self {
            return format!("obs:{block}:{grads}");
        }
        serde_json::to_value(self).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
    }
}

fn flat(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

pub(crate) fn grad_of<'a>(grads: &'a GradStore, name: &str, v: &Var) -> Result<&'a Tensor> {
    grads.get(v.as_tensor()).ok_or_else(|| PruneError::NoGradient(name.into()))
}

/// Magnitude |w| (Han et al. 2015; LTH, Frankle & Carbin 2019 §2).
pub fn magnitude(params: &[(String, Var)]) -> Result<Scores> {
    params.iter().map(|(n, v)| Ok((n.clone(), flat(&v.as_tensor().abs()?)?))).collect()
}

/// Uniform random scores from a seeded ChaCha8 stream over `params` in order (the random-pruning control;
/// Liu et al. 2022). Same seed, same scores, bit for bit.
pub fn random(params: &[(String, Var)], seed: u64) -> Scores {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    params
        .iter()
        .map(|(n, v)| (n.clone(), (0..v.elem_count()).map(|_| rng.random::<f32>()).collect()))
        .collect()
}

/// Mean gradients over `batches` calibration batches.
fn mean_grads(
    params: &[(String, Var)],
    loss: &mut dyn FnMut(usize) -> candle_core::Result<Tensor>,
    batches: usize,
) -> Result<BTreeMap<String, Vec<f32>>> {
    if batches == 0 {
        return Err(PruneError::MissingInput { criterion: "gradient-based", needs: "at least one calibration batch" });
    }
    let mut acc: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for b in 0..batches {
        let g = loss(b)?.backward()?;
        for (n, v) in params {
            let gv = flat(grad_of(&g, n, v)?)?;
            let e = acc.entry(n.clone()).or_insert_with(|| vec![0.0; gv.len()]);
            e.iter_mut().zip(&gv).for_each(|(a, x)| *a += x / batches as f32);
        }
    }
    Ok(acc)
}

/// SNIP connection sensitivity |g ⊙ w| (Lee et al. 2019, eq. 6; the normalisation does not change the ranking).
pub fn snip(
    params: &[(String, Var)],
    loss: &mut dyn FnMut(usize) -> candle_core::Result<Tensor>,
    batches: usize,
) -> Result<Scores> {
    let g = mean_grads(params, loss, batches)?;
    params
        .iter()
        .map(|(n, v)| Ok((n.clone(), flat(v.as_tensor())?.iter().zip(&g[n]).map(|(w, g)| (w * g).abs()).collect())))
        .collect()
}

/// GraSP (Wang et al. 2020, eq. 8): S(−θ) = −θ ⊙ Hg, pruning the *largest* S; returned as importance
/// θ ⊙ Hg. The Hessian-gradient product is a central finite difference of gradients,
/// Hg ≈ (∇L(θ + δg) − ∇L(θ − δg)) / 2δ with δ = `rel_step` / ‖g‖ (instead of double backprop).
pub fn grasp(
    params: &[(String, Var)],
    loss: &mut dyn FnMut(usize) -> candle_core::Result<Tensor>,
    batches: usize,
    rel_step: f64,
) -> Result<Scores> {
    let g = mean_grads(params, loss, batches)?;
    let norm = g.values().flatten().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    if norm == 0.0 {
        return Err(PruneError::BadValue { what: "gradient norm", value: 0.0, why: "GraSP needs a non-zero gradient" });
    }
    let delta = rel_step / norm;
    let orig: Vec<Tensor> = params.iter().map(|(_, v)| v.as_tensor().copy()).collect::<candle_core::Result<_>>()?;
    let shift = |sign: f64| -> Result<()> {
        for ((n, v), o) in params.iter().zip(&orig) {
            let gt = Tensor::from_slice(&g[n], v.dims(), v.device())?.to_dtype(v.dtype())?;
            v.set(&(o + (gt * (sign * delta))?)?)?;
        }
        Ok(())
    };
    let run = (|| {
        shift(1.0)?;
        let gp = mean_grads(params, loss, batches)?;
        shift(-1.0)?;
        let gm = mean_grads(params, loss, batches)?;
        Ok::<_, PruneError>((gp, gm))
    })();
    for ((_, v), o) in params.iter().zip(&orig) {
        v.set(o)?;
    }
    let (gp, gm) = run?;
    params
        .iter()
        .map(|(n, v)| {
            let w = flat(v.as_tensor())?;
            let s = (0..w.len()).map(|i| w[i] * ((gp[n][i] - gm[n][i]) as f64 / (2.0 * delta)) as f32).collect();
            Ok((n.clone(), s))
        })
        .collect()
}

/// SynFlow scores for one iteration (Tanaka et al. 2020, eq. 2): R = 1ᵀ(Π_l |θ_l|)1, S = (∂R/∂θ) ⊙ θ.
///
/// Every `Var` in `all` is temporarily replaced by |θ| (masked by `masks`), `forward_ones` runs the model
/// on an all-ones input, and the originals are restored; scores are returned for `prunable` names.
pub fn synflow_scores(
    all: &[(String, Var)],
    prunable: &[String],
    masks: Option<&MaskSet>,
    forward_ones: &mut dyn FnMut() -> candle_core::Result<Tensor>,
) -> Result<Scores> {
    let orig: Vec<Tensor> = all.iter().map(|(_, v)| v.as_tensor().copy()).collect::<candle_core::Result<_>>()?;
    let run = (|| {
        for (n, v) in all {
            let mut a = v.as_tensor().abs()?;
            if let Some(m) = masks.and_then(|m| m.get(n)) {
                m.check_shape(n, v.dims())?;
                a = a.mul(&m.to_tensor(v.device())?.to_dtype(v.dtype())?)?;
            }
            v.set(&a)?;
        }
        let r = forward_ones()?.sum_all()?;
        let g = r.backward()?;
        let mut out = Scores::new();
        for p in prunable {
            let (_, v) = all.iter().find(|(n, _)| n == p).ok_or_else(|| PruneError::UnknownParam(p.clone()))?;
            let gt = grad_of(&g, p, v)?;
            out.insert(p.clone(), flat(&(gt * v.as_tensor())?)?);
        }
        Ok::<_, PruneError>(out)
    })();
    for ((_, v), o) in all.iter().zip(&orig) {
        v.set(o)?;
    }
    run
}

/// Iterative SynFlow pruning (Tanaka et al. 2020, Alg. 1): `iterations` rounds with the exponential
/// schedule s_k = 1 − (1 − s)^{k/n}, rescoring with the current mask each round. Data-free.
pub fn synflow_prune(
    all: &[(String, Var)],
    prunable: &[String],
    sparsity: f64,
    iterations: usize,
    granularity: Granularity,
    allocation: &Allocation,
    forward_ones: &mut dyn FnMut() -> candle_core::Result<Tensor>,
) -> Result<MaskSet> {
    check_sparsity(sparsity)?;
    let shapes: Vec<(String, Vec<usize>)> = prunable
        .iter()
        .map(|p| {
            all.iter().find(|(n, _)| n == p).map(|(_, v)| (p.clone(), v.dims().to_vec())).ok_or_else(|| PruneError::UnknownParam(p.clone()))
        })
        .collect::<Result<_>>()?;
    let mut masks: Option<MaskSet> = None;
    for k in 1..=iterations.max(1) {
        let s_k = 1.0 - (1.0 - sparsity).powf(k as f64 / iterations.max(1) as f64);
        let scores = synflow_scores(all, prunable, masks.as_ref(), forward_ones)?;
        masks = Some(prune(&scores, &shapes, s_k, granularity, allocation, masks.as_ref())?);
    }
    masks.ok_or(PruneError::NothingSelected)
}

/// Running gradient statistics over training or calibration steps, for movement, Taylor and Fisher/OBS.
#[derive(Debug)]
pub struct GradAccumulator {
    steps: usize,
    /// Which sums are kept: Σ g⊙w (movement), Σ (g⊙w)² (Taylor), Σ g² (Fisher).
    track: [bool; 3],
    sum_gw: BTreeMap<String, Tensor>,
    sum_gw2: BTreeMap<String, Tensor>,
    sum_g2: BTreeMap<String, Tensor>,
    /// Adam's moments of g ⊙ w when movement scores accumulate Adam steps
    /// ([`GradAccumulator::with_adam_movement`]); `None` for the plain sum.
    adam: Option<AdamMoments>,
}

/// First and second moments of g ⊙ w (Kingma & Ba 2015, Alg. 1; β₁ = 0.9, β₂ = 0.999, ε = 1e-8).
#[derive(Debug, Default)]
struct AdamMoments {
    m: BTreeMap<String, Tensor>,
    v: BTreeMap<String, Tensor>,
}

impl AdamMoments {
    const B1: f64 = 0.9;
    const B2: f64 = 0.999;
    const EPS: f64 = 1e-8;

    /// Updates the moments of `n` with `gw` at step `t` (1-based); returns Adam's step m̂/(√v̂ + ε).
    fn step(&mut self, n: &str, gw: &Tensor, t: usize) -> Result<Tensor> {
        let m = match self.m.remove(n) {
            Some(m) => ((m * Self::B1)? + (gw * (1.0 - Self::B1))?)?,
            None => (gw * (1.0 - Self::B1))?,
        };
        let v = match self.v.remove(n) {
            Some(v) => ((v * Self::B2)? + (gw.sqr()? * (1.0 - Self::B2))?)?,
            None => (gw.sqr()? * (1.0 - Self::B2))?,
        };
        let m_hat = (&m / (1.0 - Self::B1.powi(t as i32)))?;
        let v_hat = (&v / (1.0 - Self::B2.powi(t as i32)))?;
        let step = (m_hat / (v_hat.sqrt()? + Self::EPS)?)?;
        self.m.insert(n.to_string(), m);
        self.v.insert(n.to_string(), v);
        Ok(step)
    }
}

impl Default for GradAccumulator {
    fn default() -> Self {
        Self::new()
    }
}

impl GradAccumulator {
    /// Keeps every statistic (movement, Taylor and Fisher scores all available).
    pub fn new() -> Self {
        Self { steps: 0, track: [true; 3], sum_gw: BTreeMap::new(), sum_gw2: BTreeMap::new(), sum_g2: BTreeMap::new(), adam: None }
    }
    /// Movement scores from Adam's normalised steps of g ⊙ w instead of the plain sum
    /// ([`crate::ScoreOptions::movement_adam`]).
    pub fn with_adam_movement(mut self) -> Self {
        self.adam = Some(AdamMoments::default());
        self
    }
    /// Keeps only the statistic `criterion` needs (a third of [`GradAccumulator::new`]'s work);
    /// errors for a criterion that needs no gradient statistics.
    pub fn for_criterion(criterion: Criterion) -> Result<Self> {
        let track = match criterion {
            Criterion::Movement => [true, false, false],
            Criterion::Taylor => [false, true, false],
            Criterion::Fisher => [false, false, true],
            other => {
                return Err(PruneError::BadName { what: "criterion with gradient statistics", value: other.name(), expected: "movement|taylor|fisher" });
            }
        };
        Ok(Self { track, ..Self::new() })
    }
    /// Adds one step's gradients (call after `backward`, before the optimizer moves the weights).
    pub fn update(&mut self, params: &[(String, Var)], grads: &GradStore) -> Result<()> {
        self.update_with_aside(params, grads, &BTreeMap::new())
    }
    /// [`GradAccumulator::update`] where the weights are `w + aside[name]`: the values a
    /// non-monotone pruner keeps aside for its pruned weights ([`crate::Pruner::revive`]), so that
    /// their scores keep moving with the straight-through gradient (Sanh et al. 2020, eq. 7).
    pub fn update_with_aside(&mut self, params: &[(String, Var)], grads: &GradStore, aside: &BTreeMap<String, Vec<f32>>) -> Result<()> {
        for (n, v) in params {
            // Detached: a product with the variable would record the op, and each running sum
            // would then keep every earlier step's gradients alive (memory grew by a model's
            // worth of gradients per step until the process was killed).
            let g = grad_of(grads, n, v)?.detach().to_dtype(DType::F32)?;
            let mut w = v.as_tensor().detach().to_dtype(DType::F32)?;
            if let Some(a) = aside.get(n) {
                w = (w + Tensor::from_slice(a, v.dims(), v.device())?)?;
            }
            let gw = (&g * &w)?;
            let add = |m: &mut BTreeMap<String, Tensor>, t: Tensor| -> Result<()> {
                let nt = match m.remove(n) {
                    Some(old) => (old + t)?,
                    None => t,
                };
                m.insert(n.clone(), nt);
                Ok(())
            };
            if self.track[1] {
                add(&mut self.sum_gw2, gw.sqr()?)?;
            }
            if self.track[2] {
                add(&mut self.sum_g2, g.sqr()?)?;
            }
            if self.track[0] {
                let step = match self.adam.as_mut() {
                    Some(a) => a.step(n, &gw, self.steps + 1)?,
                    None => gw,
                };
                add(&mut self.sum_gw, step)?;
            }
        }
        self.steps += 1;
        Ok(())
    }
    /// Number of steps seen.
    pub fn steps(&self) -> usize {
        self.steps
    }
    /// The sums as named tensors (`gw/NAME`, `gw2/NAME`, `g2/NAME`) and the step count, for a
    /// resumable run ([`crate::Pruner::state`]).
    pub(crate) fn export(&self, out: &mut BTreeMap<String, Tensor>) -> serde_json::Value {
        let (am, av) = self.adam.as_ref().map_or((None, None), |a| (Some(&a.m), Some(&a.v)));
        for (key, m) in [("gw", Some(&self.sum_gw)), ("gw2", Some(&self.sum_gw2)), ("g2", Some(&self.sum_g2)), ("adam_m", am), ("adam_v", av)] {
            for (n, t) in m.into_iter().flatten() {
                out.insert(format!("{key}/{n}"), t.clone());
            }
        }
        serde_json::json!({"steps": self.steps, "track": self.track, "adam": self.adam.is_some()})
    }
    /// Restores what [`GradAccumulator::export`] wrote (tensors without the caller's prefix).
    pub(crate) fn import(&mut self, tensors: &BTreeMap<String, Tensor>, meta: &serde_json::Value) -> Result<()> {
        let bad = |why: String| PruneError::BadName { what: "saved gradient statistics", value: why, expected: "a state saved by the same pruner" };
        let track: [bool; 3] = serde_json::from_value(meta["track"].clone()).map_err(|e| bad(e.to_string()))?;
        if track != self.track {
            return Err(bad(format!("tracked sums {track:?}, this pruner's {:?}", self.track)));
        }
        let (saved, ours) = (meta["adam"].as_bool().unwrap_or(false), self.adam.is_some());
        if saved != ours {
            let mode = |adam: bool| if adam { "as Adam steps" } else { "summed" };
            return Err(bad(format!("movement scores {}, this pruner's {}", mode(saved), mode(ours))));
        }
        self.steps = meta["steps"].as_u64().ok_or_else(|| bad("no step count".into()))? as usize;
        let part = |key: &str| -> BTreeMap<String, Tensor> {
            let p = format!("{key}/");
            tensors.iter().filter_map(|(n, t)| n.strip_prefix(&p).map(|k| (k.to_string(), t.clone()))).collect()
        };
        self.sum_gw = part("gw");
        self.sum_gw2 = part("gw2");
        self.sum_g2 = part("g2");
        if let Some(a) = self.adam.as_mut() {
            a.m = part("adam_m");
            a.v = part("adam_v");
        }
        Ok(())
    }
    fn get(&self, m: &BTreeMap<String, Tensor>, crit: &'static str) -> Result<BTreeMap<String, Vec<f32>>> {
        if self.steps == 0 {
            return Err(PruneError::MissingInput { criterion: crit, needs: "at least one GradAccumulator::update" });
        }
        let tracked = match crit {
            "movement" => self.track[0],
            "taylor" => self.track[1],
            _ => self.track[2],
        };
        if !tracked {
            return Err(PruneError::MissingInput { criterion: crit, needs: "a GradAccumulator that tracks its statistic" });
        }
        m.iter().map(|(n, t)| Ok((n.clone(), flat(t)?))).collect()
    }
    /// Movement scores S = −Σ_t (∂L/∂W)_t ⊙ W_t (Sanh et al. 2020, eq. 7 and §3); use with top-k for
    /// hard movement or a threshold on S for soft movement. With
    /// [`GradAccumulator::with_adam_movement`] the sum is of Adam's steps of (∂L/∂W)_t ⊙ W_t, as the
    /// scores move when Adam trains them (the authors' setting).
    pub fn movement(&self) -> Result<Scores> {
        Ok(self.get(&self.sum_gw, "movement")?.into_iter().map(|(n, v)| (n, v.into_iter().map(|x| -x).collect())).collect())
    }
    /// First-order Taylor importance, the batch mean of (g ⊙ w)² (Molchanov et al. 2019, eq. 8, per weight).
    pub fn taylor(&self) -> Result<Scores> {
        let s = self.steps as f32;
        Ok(self.get(&self.sum_gw2, "taylor")?.into_iter().map(|(n, v)| (n, v.into_iter().map(|x| x / s).collect())).collect())
    }
    /// OBS saliency with a diagonal empirical Fisher, ρ_i = w_i² / (2 [F⁻¹]_ii) = w_i² (F_ii + λ) / 2 with
    /// F_ii = mean g_i² (OBS, Hassibi & Stork 1993, eq. 5; WoodFisher, Singh & Alistarh 2020, eq. 4;
    /// oBERT, Kurtic et al. 2022, eq. 2, diagonal blocks of size 1). `damp` is λ. Blocks of B > 1
    /// weights, with the OBS weight update, are [`crate::obs`] ([`Criterion::Obs`]).
    pub fn fisher(&self, params: &[(String, Var)], damp: f64) -> Result<Scores> {
        let f = self.get(&self.sum_g2, "fisher")?;
        let s = self.steps as f32;
        params
            .iter()
            .map(|(n, v)| {
                let fi = f.get(n).ok_or_else(|| PruneError::UnknownParam(n.clone()))?;
                let w = flat(v.as_tensor())?;
                Ok((n.clone(), w.iter().zip(fi).map(|(w, f)| w * w * (f / s + damp as f32) / 2.0).collect()))
            })
            .collect()
    }
}

/// Per-input-feature activation norms ‖X_j‖₂ of each linear, from calibration data (for Wanda).
#[derive(Debug, Default)]
pub struct ActivationNorms {
    sumsq: BTreeMap<String, Vec<f64>>,
}

impl ActivationNorms {
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds the inputs `x` (shape `[..., in]`) seen by the linear whose weight is `name`.
    pub fn observe(&mut self, name: &str, x: &Tensor) -> Result<()> {
        let d = *x.dims().last().ok_or(PruneError::BadValue { what: "activation rank", value: 0.0, why: "need >= 1" })?;
        let s = flat(&x.to_dtype(DType::F32)?.reshape(((), d))?.sqr()?.sum(0)?)?;
        let e = self.sumsq.entry(name.into()).or_insert_with(|| vec![0.0; d]);
        if e.len() != d {
            return Err(PruneError::ShapeMismatch { name: name.into(), expected: vec![e.len()], got: vec![d] });
        }
        e.iter_mut().zip(s).for_each(|(a, b)| *a += b as f64);
        Ok(())
    }
    /// Wanda scores S_ij = |W_ij| · ‖X_j‖₂ (Sun et al. 2024, eq. 1) for `[out, in]` weights. The paper ranks
    /// within each output row; here ranking follows the chosen [`Allocation`].
    pub fn wanda(&self, params: &[(String, Var)]) -> Result<Scores> {
        params
            .iter()
            .map(|(n, v)| {
                let ss = self.sumsq.get(n).ok_or(PruneError::MissingInput { criterion: "wanda", needs: "activations for every scored weight" })?;
                let (o, i) = v.dims2().map_err(|_| PruneError::NotMatrix { name: n.clone(), granularity: "wanda", shape: v.dims().to_vec() })?;
                if ss.len() != i {
                    return Err(PruneError::ShapeMismatch { name: n.clone(), expected: vec![o, i], got: vec![o, ss.len()] });
                }
                let w = flat(v.as_tensor())?;
                Ok((n.clone(), w.iter().enumerate().map(|(k, w)| w.abs() * ss[k % i].sqrt() as f32).collect()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The running sums hold values, not autograd graphs: a sum that recorded its ops would keep
    /// every earlier step's gradients alive (a movement run grew to 23 GB in 173 steps).
    #[test]
    fn grad_accumulator_sums_record_no_ops() {
        let w = Var::from_vec(vec![0.5f32, -1.0, 2.0, 0.25], (2, 2), &Device::Cpu).unwrap();
        let params = vec![("w".to_string(), w.clone())];
        let mut acc = GradAccumulator::new();
        for step in 0..3 {
            let x = Tensor::new(&[[1.0f32 + step as f32, 2.0], [3.0, -1.0]], &Device::Cpu).unwrap();
            let grads = (w.as_tensor() * &x).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap();
            acc.update(&params, &grads).unwrap();
        }
        for m in [&acc.sum_gw, &acc.sum_gw2, &acc.sum_g2] {
            assert!(m.values().all(|t| !t.track_op()), "a running sum records its ops");
        }
        assert_eq!(acc.movement().unwrap()["w"].len(), 4);
    }

    /// Adam-normalised movement ranks a weight that moves consistently above one whose gradient
    /// is a thousand times larger but changes sign every step; the plain sum ranks them the other
    /// way round. Loss Σ c_t ⊙ w makes the gradient c_t.
    #[test]
    fn adam_movement_ranks_consistency_above_gradient_size() {
        let run = |acc: GradAccumulator| {
            let mut acc = acc;
            let w = Var::from_vec(vec![1.0f32, 1.0], 2, &Device::Cpu).unwrap();
            let params = vec![("w".to_string(), w.clone())];
            for c in [[-1000.0f32, -1e-3], [1000.0, -1e-3], [-1000.0, -1e-3]] {
                let grads = (w.as_tensor() * Tensor::new(&c, &Device::Cpu).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
                acc.update(&params, &grads).unwrap();
            }
            let s = acc.movement().unwrap()["w"].clone();
            (s[0], s[1])
        };
        let (noisy, steady) = run(GradAccumulator::for_criterion(Criterion::Movement).unwrap());
        assert!(noisy > steady, "plain sums: {noisy} {steady}");
        let (noisy, steady) = run(GradAccumulator::for_criterion(Criterion::Movement).unwrap().with_adam_movement());
        assert!(steady > noisy, "Adam steps: {noisy} {steady}");
        // Three steps of a constant gradient: each Adam step is 1 in size, so S = 3.
        assert!((steady - 3.0).abs() < 1e-3, "{steady}");
    }
}
