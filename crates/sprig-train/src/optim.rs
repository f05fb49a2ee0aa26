//! Mask-aware optimizers.
//!
//! Mask discipline lives here, in one place: after every step the pruned weights of a masked
//! parameter are exactly zero and their optimizer state is zero, so a weight that is later grown
//! back (dynamic sparse training) starts from zero with fresh state.
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// An optimizer over named parameters that honours keep-masks.
pub trait Optimizer {
    /// One update from the gradients; afterwards pruned weights are exactly 0 and their state is 0.
    fn step(&mut self, grads: &GradStore) -> Result<()>;
    fn learning_rate(&self) -> f64;
    fn set_learning_rate(&mut self, lr: f64);
    /// Install (`Some`) or remove (`None`) the keep-mask of a parameter by name (row-major,
    /// `true` = kept). Installing zeroes the pruned weights and their optimizer state at once.
    fn set_mask(&mut self, name: &str, keep: Option<&[bool]>) -> Result<()>;
    /// Install every mask of `masks` at once ([`Optimizer::set_mask`] for each): pruned weights
    /// and their optimizer state become exactly zero. Every name must be a parameter here.
    fn set_masks(&mut self, masks: &sprig_prune::MaskSet) -> Result<()> {
        for (name, mask) in masks.iter() {
            self.set_mask(name, Some(&mask.to_bools()))?;
        }
        Ok(())
    }
    /// Forget all optimizer state (moments), e.g. after rewinding.
    fn reset_state(&mut self);
    /// Replace parameter `name` by `var`, which may have another length (a sparse layer's stored
    /// values after a dynamic-sparse-training mask update), carrying the state over by position:
    /// new entry `i` takes old entry `from[i]`, or fresh zero state where `None` (grown weights).
    /// The parameter's keep-mask is removed (every stored value is active).
    fn remap_param(&mut self, name: &str, var: Var, from: &[Option<usize>]) -> Result<()>;
    /// Adds everything a resumed run needs (moments, step counter, rate, keep-masks) to `state`
    /// under `opt/` ([`crate::Fit::resumable`]). Optimizers that cannot say so refuse.
    fn save_state(&self, _state: &mut crate::state::TrainState) -> crate::error::Result<()> {
        Err(crate::invalid!("this optimizer cannot save its state; a resumable run needs AdamW"))
    }
    /// Restores what [`Optimizer::save_state`] saved, for the same parameters (names and sizes).
    fn load_state(&mut self, _state: &crate::state::TrainState) -> crate::error::Result<()> {
        Err(crate::invalid!("this optimizer cannot restore a saved state; a resumable run needs AdamW"))
    }
}

/// `old` carried to a new length by position (see [`Optimizer::remap_param`]).
pub(crate) fn remap_state(name: &str, old: &[f32], from: &[Option<usize>]) -> Result<Vec<f32>> {
    from.iter()
        .map(|f| match f {
            None => Ok(0.0),
            Some(j) => old.get(*j).copied().ok_or_else(|| {
                candle_core::Error::Msg(format!("remap of {name:?}: source position {j} is past its {} entries", old.len()))
            }),
        })
        .collect()
}

pub(crate) fn check_remap(name: &str, var: &Var, from: &[Option<usize>]) -> Result<()> {
    if var.elem_count() != from.len() {
        candle_core::bail!("remap of {name:?}: {} positions for a parameter of {} entries", from.len(), var.elem_count());
    }
    if var.dtype() != candle_core::DType::F32 {
        candle_core::bail!("remap of {name:?}: parameter is {:?}, only f32 is supported", var.dtype());
    }
    Ok(())
}

/// Hyper-parameters of AdamW (Loshchilov & Hutter 2019, Algorithm 2: decoupled weight decay).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Do not decay 1-D parameters (biases, LayerNorm), as in BERT's recipe.
    pub no_decay_1d: bool,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, no_decay_1d: true }
    }
}

impl AdamWConfig {
    /// Every hyper-parameter within its accepted range: lr finite and > 0, betas in [0, 1), eps
    /// finite and > 0, weight_decay finite and >= 0. The error names the value and the range.
    pub fn validate(&self) -> crate::error::Result<()> {
        check_lr("AdamW", self.lr)?;
        check_unit_interval("AdamW", "beta1", self.beta1)?;
        check_unit_interval("AdamW", "beta2", self.beta2)?;
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(crate::invalid!("AdamW: eps must be a finite number > 0, got {}", self.eps));
        }
        check_weight_decay("AdamW", self.weight_decay)
    }
}

/// `lr` finite and > 0 (the rate an optimizer is built with; a schedule may later lower it).
pub(crate) fn check_lr(opt: &str, lr: f64) -> crate::error::Result<()> {
    if lr.is_finite() && lr > 0.0 {
        Ok(())
    } else {
        Err(crate::invalid!("{opt}: lr must be a finite number > 0, got {lr}"))
    }
}

/// `weight_decay` finite and >= 0 (a negative decay grows the weights).
pub(crate) fn check_weight_decay(opt: &str, wd: f64) -> crate::error::Result<()> {
    if wd.is_finite() && wd >= 0.0 {
        Ok(())
    } else {
        Err(crate::invalid!("{opt}: weight_decay must be a finite number >= 0, got {wd}"))
    }
}

/// A decay rate (Adam's betas, SGD's momentum) in [0, 1).
pub(crate) fn check_unit_interval(opt: &str, name: &str, v: f64) -> crate::error::Result<()> {
    if (0.0..1.0).contains(&v) {
        Ok(())
    } else {
        Err(crate::invalid!("{opt}: {name} must be in [0, 1), got {v}"))
    }
}

struct AdamState {
    name: String,
    var: Var,
    m: Vec<f32>,
    v: Vec<f32>,
    keep: Option<Vec<bool>>,
    decay: bool,
}

/// AdamW that updates each parameter in place, in parallel, in one pass over its memory
/// (PyTorch's `foreach`/fused style) instead of ~10 allocating tensor ops per parameter.
pub struct AdamW {
    params: Vec<AdamState>,
    cfg: AdamWConfig,
    t: u64,
}

impl AdamW {
    /// AdamW over `params`; refuses a config outside the accepted ranges ([`AdamWConfig::validate`])
    /// and parameters that are not f32.
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> crate::error::Result<Self> {
        cfg.validate()?;
        let params = params
            .into_iter()
            .map(|(name, var)| {
                if var.dtype() != candle_core::DType::F32 {
                    candle_core::bail!("AdamW: parameter {name} is {:?}, only f32 is supported", var.dtype());
                }
                let n = var.elem_count();
                let decay = !(cfg.no_decay_1d && var.rank() <= 1);
                Ok(AdamState { name, var, m: vec![0.0; n], v: vec![0.0; n], keep: None, decay })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { params, cfg, t: 0 })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// Steps taken so far (the bias-correction counter).
    pub fn steps(&self) -> u64 {
        self.t
    }

}

/// The parameter called `name`, or an error naming it.
pub(crate) fn find_param<'a, T>(params: &'a mut [T], name: &str, name_of: impl Fn(&T) -> &str) -> Result<&'a mut T> {
    params
        .iter_mut()
        .find(|p| name_of(p) == name)
        .ok_or_else(|| candle_core::Error::Msg(format!("optimizer has no parameter named {name:?}")))
}

/// Install (`Some`) or remove (`None`) a parameter's keep-mask: installing zeroes the pruned
/// weights and the pruned entries of every optimizer-state buffer at once.
pub(crate) fn install_mask(
    name: &str,
    var: &Var,
    slot: &mut Option<Vec<bool>>,
    state: &mut [&mut Vec<f32>],
    keep: Option<&[bool]>,
) -> Result<()> {
    match keep {
        None => *slot = None,
        Some(k) => {
            check_mask_len(name, var, k)?;
            apply_keep_mask(var, k)?;
            for buf in state.iter_mut() {
                buf.iter_mut().zip(k).for_each(|(x, &kept)| {
                    if !kept {
                        *x = 0.0
                    }
                });
            }
            *slot = Some(k.to_vec());
        }
    }
    Ok(())
}

/// Zero the pruned positions of a parameter's weights in place.
pub(crate) fn apply_keep_mask(var: &Var, keep: &[bool]) -> Result<()> {
    struct ZeroPruned<'a>(&'a [bool]);
    impl candle_core::InplaceOp1 for ZeroPruned<'_> {
        fn name(&self) -> &'static str {
            "zero-pruned"
        }
        fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
            let w = contiguous_f32_mut(s, l, "weight")?;
            w.par_iter_mut().zip(self.0.par_iter()).for_each(|(w, &k)| {
                if !k {
                    *w = 0.0
                }
            });
            Ok(())
        }
    }
    var.inplace_op1(&ZeroPruned(keep))
}

pub(crate) fn check_mask_len(name: &str, var: &Var, keep: &[bool]) -> Result<()> {
    if keep.len() != var.elem_count() {
        candle_core::bail!(
            "mask for {name:?} has {} entries but the parameter has {} ({:?})",
            keep.len(),
            var.elem_count(),
            var.shape()
        );
    }
    Ok(())
}

pub(crate) fn contiguous_f32_mut<'a>(s: &'a mut CpuStorage, l: &Layout, what: &str) -> Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        (CpuStorage::F32(_), None) => candle_core::bail!("{what} must be contiguous"),
        _ => candle_core::bail!("{what} must be f32"),
    }
}

pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        (CpuStorage::F32(_), None) => candle_core::bail!("{what} must be contiguous"),
        _ => candle_core::bail!("{what} must be f32"),
    }
}

struct AdamWUpdate<'a> {
    state: Mutex<(&'a mut [f32], &'a mut [f32])>,
    keep: Option<&'a [bool]>,
    lr: f32,
    wd: f32,
    b1: f32,
    b2: f32,
    eps: f32,
    bc1: f32,
    bc2: f32,
}

const CHUNK: usize = 1 << 14;

impl InplaceOp2 for AdamWUpdate<'_> {
    fn name(&self) -> &'static str {
        "adamw-update"
    }
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let w = contiguous_f32_mut(s1, l1, "parameter")?;
        let g = contiguous_f32(s2, l2, "gradient")?;
        if g.len() != w.len() {
            candle_core::bail!("gradient has {} elements, parameter {}", g.len(), w.len());
        }
        let mut guard = self.state.lock().expect("adamw state poisoned");
        let (m, v) = &mut *guard;
        let (lr, wd, b1, b2, eps, bc1, bc2) = (self.lr, self.wd, self.b1, self.b2, self.eps, self.bc1, self.bc2);
        let update = |w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], keep: Option<&[bool]>| {
            for i in 0..w.len() {
                if let Some(k) = keep {
                    if !k[i] {
                        w[i] = 0.0;
                        m[i] = 0.0;
                        v[i] = 0.0;
                        continue;
                    }
                }
                let gi = g[i];
                let mi = b1 * m[i] + (1.0 - b1) * gi;
                let vi = b2 * v[i] + (1.0 - b2) * gi * gi;
                m[i] = mi;
                v[i] = vi;
                let wi = w[i] * (1.0 - lr * wd);
                w[i] = wi - lr * (mi / bc1) / ((vi / bc2).sqrt() + eps);
            }
        };
        w.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(c, (((w, g), m), v))| {
                let keep = self.keep.map(|k| &k[c * CHUNK..c * CHUNK + w.len()]);
                update(w, g, m, v, keep)
            });
        Ok(())
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.t += 1;
        let c = &self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        for p in self.params.iter_mut() {
            let Some(g) = grads.get(&p.var) else { continue };
            let g = g.contiguous()?;
            let op = AdamWUpdate {
                state: Mutex::new((&mut p.m, &mut p.v)),
                keep: p.keep.as_deref(),
                lr: c.lr as f32,
                wd: if p.decay { c.weight_decay as f32 } else { 0.0 },
                b1: c.beta1 as f32,
                b2: c.beta2 as f32,
                eps: c.eps as f32,
                bc1: bc1 as f32,
                bc2: bc2 as f32,
            };
            p.var.inplace_op2(&g, &op)?;
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.cfg.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    fn set_mask(&mut self, name: &str, keep: Option<&[bool]>) -> Result<()> {
        let p = find_param(&mut self.params, name, |p| &p.name)?;
        install_mask(name, &p.var, &mut p.keep, &mut [&mut p.m, &mut p.v], keep)
    }

    fn remap_param(&mut self, name: &str, var: Var, from: &[Option<usize>]) -> Result<()> {
        check_remap(name, &var, from)?;
        let p = find_param(&mut self.params, name, |p| &p.name)?;
        p.m = remap_state(name, &p.m, from)?;
        p.v = remap_state(name, &p.v, from)?;
        p.var = var;
        p.keep = None;
        Ok(())
    }

    fn reset_state(&mut self) {
        self.t = 0;
        for p in self.params.iter_mut() {
            p.m.iter_mut().for_each(|x| *x = 0.0);
            p.v.iter_mut().for_each(|x| *x = 0.0);
        }
    }

    fn save_state(&self, state: &mut crate::state::TrainState) -> crate::error::Result<()> {
        state.put("opt/t", &self.t)?;
        state.put_f64("opt/lr", self.cfg.lr);
        state.put("opt/names", &self.params.iter().map(|p| p.name.clone()).collect::<Vec<_>>())?;
        for p in &self.params {
            state.put_f32s(format!("opt/m/{}", p.name), &p.m)?;
            state.put_f32s(format!("opt/v/{}", p.name), &p.v)?;
            if let Some(k) = &p.keep {
                state.put_bools(format!("opt/keep/{}", p.name), k)?;
            }
        }
        Ok(())
    }

    fn load_state(&mut self, state: &crate::state::TrainState) -> crate::error::Result<()> {
        let names: Vec<String> = state.get("opt/names")?;
        let ours: Vec<String> = self.params.iter().map(|p| p.name.clone()).collect();
        if names != ours {
            return Err(crate::invalid!("the saved optimizer state is for other parameters ({} saved, {} here)", names.len(), ours.len()));
        }
        for p in self.params.iter_mut() {
            let n = p.m.len();
            p.m = state.f32s(&format!("opt/m/{}", p.name), n)?;
            p.v = state.f32s(&format!("opt/v/{}", p.name), n)?;
            let key = format!("opt/keep/{}", p.name);
            p.keep = if state.tensors.contains_key(&key) { Some(state.bools(&key, n)?) } else { None };
        }
        self.t = state.get("opt/t")?;
        self.cfg.lr = state.get_f64("opt/lr")?;
        Ok(())
    }
}

/// Global L2 norm of the gradients of `vars` (missing gradients count as zero).
pub fn grad_norm(grads: &GradStore, vars: &[Var]) -> Result<f64> {
    let mut total = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v) {
            total += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        }
    }
    Ok(total.sqrt())
}

/// Clip gradients to a global L2 norm of at most `max_norm` (Pascanu et al. 2013), as PyTorch's
/// `clip_grad_norm_`; returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    let norm = grad_norm(grads, vars)?;
    if norm.is_finite() && norm > max_norm && max_norm > 0.0 {
        let scale = max_norm / (norm + 1e-6);
        for v in vars {
            if let Some(g) = grads.remove(v) {
                grads.insert(v, (g * scale)?);
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Result;
    use candle_core::{Device, Tensor};

    /// Reference AdamW with candle tensor ops (PyTorch's formula).
    #[test]
    fn matches_reference_formula() -> Result<()> {
        let dev = Device::Cpu;
        let w0: Vec<f32> = (0..40).map(|i| (i as f32 * 0.37).sin()).collect();
        let var = Var::from_tensor(&Tensor::from_vec(w0.clone(), (5, 8), &dev)?)?;
        let cfg = AdamWConfig { lr: 0.05, weight_decay: 0.1, ..Default::default() };
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], cfg.clone())?;
        let (mut m, mut v, mut w) = (vec![0f64; 40], vec![0f64; 40], w0.iter().map(|&x| x as f64).collect::<Vec<_>>());
        for t in 1..=3 {
            let loss = (var.as_tensor().sqr()?.sum_all()? + var.as_tensor().sum_all()?)?;
            let grads = loss.backward()?;
            opt.step(&grads)?;
            for i in 0..40 {
                let g = 2.0 * w[i] + 1.0;
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                w[i] *= 1.0 - cfg.lr * cfg.weight_decay;
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.999f64.powi(t));
                w[i] -= cfg.lr * mh / (vh.sqrt() + cfg.eps);
            }
        }
        let got = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        for i in 0..40 {
            assert!((got[i] as f64 - w[i]).abs() < 1e-5, "{i}: {} vs {}", got[i], w[i]);
        }
        Ok(())
    }

    #[test]
    fn masked_weights_stay_zero_and_state_resets() -> Result<()> {
        let dev = Device::Cpu;
        let var = Var::from_tensor(&Tensor::ones((3, 4), candle_core::DType::F32, &dev)?)?;
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], AdamWConfig::default())?;
        // A few unmasked steps build up state everywhere.
        for _ in 0..2 {
            let grads = var.as_tensor().sqr()?.sum_all()?.backward()?;
            opt.step(&grads)?;
        }
        let keep: Vec<bool> = (0..12).map(|i| i % 3 != 0).collect();
        opt.set_mask("w", Some(&keep))?;
        for _ in 0..3 {
            let grads = (var.as_tensor() - 5.0)?.sqr()?.sum_all()?.backward()?;
            opt.step(&grads)?;
            let w = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            for (i, &k) in keep.iter().enumerate() {
                if !k {
                    assert_eq!(w[i], 0.0);
                } else {
                    assert!(w[i] != 0.0);
                }
            }
        }
        assert!(opt.params[0].m.iter().zip(&keep).all(|(m, &k)| k || *m == 0.0));
        assert!(opt.set_mask("nope", Some(&keep)).is_err());
        assert!(opt.set_mask("w", Some(&keep[..5])).is_err());
        Ok(())
    }

    #[test]
    fn set_masks_installs_every_mask_of_a_set() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::from_tensor(&Tensor::ones((2, 3), candle_core::DType::F32, &dev)?)?;
        let b = Var::from_tensor(&Tensor::ones(4, candle_core::DType::F32, &dev)?)?;
        let mut opt = AdamW::new(vec![("a".into(), a.clone()), ("b".into(), b.clone())], AdamWConfig::default())?;
        opt.step(&(a.as_tensor().sum_all()? + b.as_tensor().sum_all()?)?.backward()?)?;
        let mut ms = sprig_prune::MaskSet::new();
        ms.insert("a", sprig_prune::Mask::from_bools(&[2, 3], &[true, false, true, false, true, false]).expect("mask"));
        ms.insert("b", sprig_prune::Mask::from_bools(&[4], &[false, true, true, true]).expect("mask"));
        opt.set_masks(&ms)?;
        assert_eq!(a.as_tensor().flatten_all()?.to_vec1::<f32>()?.iter().map(|&x| x != 0.0).collect::<Vec<_>>(), ms.get("a").expect("a").to_bools());
        assert_eq!(b.as_tensor().to_vec1::<f32>()?[0], 0.0);
        assert!(opt.params.iter().all(|p| p.keep.as_ref().is_some_and(|k| p.m.iter().zip(k).all(|(m, &k)| k || *m == 0.0))));
        ms.insert("c", sprig_prune::Mask::ones(&[1]));
        assert!(opt.set_masks(&ms).is_err());
        Ok(())
    }

    #[test]
    fn remap_carries_state_by_position_and_zeroes_new_entries() -> Result<()> {
        let dev = Device::Cpu;
        let var = Var::from_tensor(&Tensor::new(&[1f32, 2.0, 3.0], &dev)?)?;
        let mut opt = AdamW::new(vec![("v".into(), var.clone())], AdamWConfig::default())?;
        let grads = var.as_tensor().sqr()?.sum_all()?.backward()?;
        opt.step(&grads)?;
        let (m0, v0) = (opt.params[0].m.clone(), opt.params[0].v.clone());
        assert!(m0.iter().all(|&x| x != 0.0));
        // New layout: old entry 2, a grown entry, old entry 0, another grown one.
        let new = Var::from_tensor(&Tensor::new(&[3f32, 0.0, 1.0, 0.0], &dev)?)?;
        opt.remap_param("v", new.clone(), &[Some(2), None, Some(0), None])?;
        assert_eq!(opt.params[0].m, vec![m0[2], 0.0, m0[0], 0.0]);
        assert_eq!(opt.params[0].v, vec![v0[2], 0.0, v0[0], 0.0]);
        // The optimizer now updates the new Var.
        let g = new.as_tensor().sum_all()?.backward()?;
        opt.step(&g)?;
        assert!(new.as_tensor().to_vec1::<f32>()?[1] != 0.0);
        assert!(opt.remap_param("v", new.clone(), &[Some(9), None, None, None]).is_err());
        assert!(opt.remap_param("v", new, &[None]).is_err());
        Ok(())
    }

    #[test]
    fn clipping_bounds_the_norm() -> Result<()> {
        let dev = Device::Cpu;
        let var = Var::from_tensor(&Tensor::new(&[3f32, 4.0], &dev)?)?;
        let mut grads = var.as_tensor().sqr()?.sum_all()?.backward()?; // grad = (6, 8), norm 10
        let n = clip_grad_norm(&mut grads, std::slice::from_ref(&var), 1.0)?;
        assert!((n - 10.0).abs() < 1e-5);
        let after = grad_norm(&grads, &[var])?;
        assert!((after - 1.0).abs() < 1e-4, "{after}");
        Ok(())
    }

    #[test]
    fn new_refuses_configs_outside_their_ranges() {
        let var = || vec![("w".to_string(), Var::from_tensor(&Tensor::ones(3, candle_core::DType::F32, &Device::Cpu).unwrap()).unwrap())];
        let ok = AdamWConfig::default();
        assert!(AdamW::new(var(), ok.clone()).is_ok());
        assert!(AdamW::new(var(), AdamWConfig { weight_decay: 0.0, beta1: 0.0, ..ok.clone() }).is_ok());
        let bad = [
            (AdamWConfig { lr: 0.0, ..ok.clone() }, "lr", "0"),
            (AdamWConfig { lr: -1e-3, ..ok.clone() }, "lr", "-0.001"),
            (AdamWConfig { lr: f64::NAN, ..ok.clone() }, "lr", "NaN"),
            (AdamWConfig { lr: f64::INFINITY, ..ok.clone() }, "lr", "inf"),
            (AdamWConfig { weight_decay: -0.1, ..ok.clone() }, "weight_decay", "-0.1"),
            (AdamWConfig { weight_decay: f64::NAN, ..ok.clone() }, "weight_decay", "NaN"),
            (AdamWConfig { beta1: 1.0, ..ok.clone() }, "beta1", "[0, 1)"),
            (AdamWConfig { beta2: -0.5, ..ok.clone() }, "beta2", "-0.5"),
            (AdamWConfig { beta2: f64::NAN, ..ok.clone() }, "beta2", "NaN"),
            (AdamWConfig { eps: 0.0, ..ok.clone() }, "eps", "> 0"),
            (AdamWConfig { eps: f64::INFINITY, ..ok.clone() }, "eps", "inf"),
        ];
        for (cfg, field, shown) in bad {
            let e = AdamW::new(var(), cfg.clone()).err().unwrap_or_else(|| panic!("{cfg:?} accepted")).to_string();
            assert!(e.contains("AdamW") && e.contains(field) && e.contains(shown), "{e}");
        }
    }
}
