//! SGD with momentum (and optional Nesterov), with the same mask discipline as [`crate::AdamW`].
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Var};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

use crate::optim::{check_lr, check_unit_interval, check_weight_decay, check_remap, contiguous_f32, contiguous_f32_mut, find_param, install_mask, remap_state, Optimizer};

/// Hyper-parameters of SGD as PyTorch defines it (Sutskever et al. 2013 momentum; dampening 0):
/// g ← g + λw; b ← μb + g; g ← g + μb (Nesterov) or b; w ← w − ηg.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SgdConfig {
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self { lr: 0.1, momentum: 0.9, nesterov: false, weight_decay: 0.0 }
    }
}

struct SgdState {
    name: String,
    var: Var,
    buf: Vec<f32>,
    keep: Option<Vec<bool>>,
}

/// Mask-aware SGD: after every step pruned weights and their momentum are exactly 0.
pub struct Sgd {
    params: Vec<SgdState>,
    cfg: SgdConfig,
}

impl SgdConfig {
    /// Every hyper-parameter within its accepted range: lr finite and > 0, momentum in [0, 1),
    /// weight_decay finite and >= 0. The error names the value and the range.
    pub fn validate(&self) -> crate::error::Result<()> {
        check_lr("SGD", self.lr)?;
        check_unit_interval("SGD", "momentum", self.momentum)?;
        check_weight_decay("SGD", self.weight_decay)
    }
}

impl Sgd {
    /// SGD over `params`; refuses a config outside the accepted ranges ([`SgdConfig::validate`])
    /// and parameters that are not f32.
    pub fn new(params: Vec<(String, Var)>, cfg: SgdConfig) -> crate::error::Result<Self> {
        cfg.validate()?;
        let params = params
            .into_iter()
            .map(|(name, var)| {
                if var.dtype() != candle_core::DType::F32 {
                    candle_core::bail!("Sgd: parameter {name} is {:?}, only f32 is supported", var.dtype());
                }
                let n = var.elem_count();
                Ok(SgdState { name, var, buf: vec![0.0; n], keep: None })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { params, cfg })
    }
    pub fn config(&self) -> &SgdConfig {
        &self.cfg
    }
    /// Momentum buffer of a parameter (for tests and inspection).
    pub fn momentum_buffer(&self, name: &str) -> Option<&[f32]> {
        self.params.iter().find(|p| p.name == name).map(|p| p.buf.as_slice())
    }
}

struct SgdUpdate<'a> {
    buf: Mutex<&'a mut [f32]>,
    keep: Option<&'a [bool]>,
    lr: f32,
    mu: f32,
    wd: f32,
    nesterov: bool,
}

impl InplaceOp2 for SgdUpdate<'_> {
    fn name(&self) -> &'static str {
        "sgd-update"
    }
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let w = contiguous_f32_mut(s1, l1, "parameter")?;
        let g = contiguous_f32(s2, l2, "gradient")?;
        if g.len() != w.len() {
            candle_core::bail!("gradient has {} elements, parameter {}", g.len(), w.len());
        }
        let mut b = self.buf.lock().expect("sgd state poisoned");
        for i in 0..w.len() {
            if self.keep.is_some_and(|k| !k[i]) {
                w[i] = 0.0;
                b[i] = 0.0;
                continue;
            }
            let mut d = g[i] + self.wd * w[i];
            if self.mu != 0.0 {
                b[i] = self.mu * b[i] + d;
                d = if self.nesterov { d + self.mu * b[i] } else { b[i] };
            }
            w[i] -= self.lr * d;
        }
        Ok(())
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        for p in self.params.iter_mut() {
            let Some(g) = grads.get(&p.var) else { continue };
            let g = g.contiguous()?;
            let op = SgdUpdate {
                buf: Mutex::new(&mut p.buf),
                keep: p.keep.as_deref(),
                lr: self.cfg.lr as f32,
                mu: self.cfg.momentum as f32,
                wd: self.cfg.weight_decay as f32,
                nesterov: self.cfg.nesterov,
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
        install_mask(name, &p.var, &mut p.keep, &mut [&mut p.buf], keep)
    }
    fn reset_state(&mut self) {
        self.params.iter_mut().for_each(|p| p.buf.iter_mut().for_each(|b| *b = 0.0));
    }
    fn remap_param(&mut self, name: &str, var: Var, from: &[Option<usize>]) -> Result<()> {
        check_remap(name, &var, from)?;
        let p = find_param(&mut self.params, name, |p| &p.name)?;
        p.buf = remap_state(name, &p.buf, from)?;
        p.var = var;
        p.keep = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Result;
    use candle_core::{Device, Tensor};

    #[test]
    fn matches_pytorch_formula_and_keeps_mask() -> Result<()> {
        let dev = Device::Cpu;
        let w0: Vec<f32> = (0..12).map(|i| (i as f32 * 0.61).cos()).collect();
        for nesterov in [false, true] {
            let var = Var::from_tensor(&Tensor::from_vec(w0.clone(), (3, 4), &dev)?)?;
            let cfg = SgdConfig { lr: 0.05, momentum: 0.9, nesterov, weight_decay: 0.01 };
            let mut opt = Sgd::new(vec![("w".into(), var.clone())], cfg.clone())?;
            let keep: Vec<bool> = (0..12).map(|i| i % 4 != 1).collect();
            opt.set_mask("w", Some(&keep))?;
            let (mut w, mut b): (Vec<f64>, Vec<f64>) = (w0.iter().map(|&x| x as f64).collect(), vec![0.0; 12]);
            for i in 0..12 {
                if !keep[i] {
                    w[i] = 0.0;
                }
            }
            for _ in 0..4 {
                let grads = (var.as_tensor().sqr()?.sum_all()? + var.as_tensor().sum_all()?)?.backward()?;
                opt.step(&grads)?;
                for i in 0..12 {
                    if !keep[i] {
                        continue;
                    }
                    let g = 2.0 * w[i] + 1.0 + 0.01 * w[i];
                    b[i] = 0.9 * b[i] + g;
                    let d = if nesterov { g + 0.9 * b[i] } else { b[i] };
                    w[i] -= 0.05 * d;
                }
                let got = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
                for i in 0..12 {
                    assert!((got[i] as f64 - w[i]).abs() < 1e-5, "{i}: {} vs {}", got[i], w[i]);
                    if !keep[i] {
                        assert_eq!(got[i], 0.0);
                        assert_eq!(opt.momentum_buffer("w").unwrap()[i], 0.0);
                    }
                }
            }
            assert!(opt.set_mask("nope", Some(&keep)).is_err());
            assert!(opt.set_mask("w", Some(&keep[..3])).is_err());
        }
        Ok(())
    }

    #[test]
    fn new_refuses_configs_outside_their_ranges() {
        let ok = SgdConfig::default();
        assert!(Sgd::new(Vec::new(), ok.clone()).is_ok());
        assert!(Sgd::new(Vec::new(), SgdConfig { momentum: 0.0, ..ok.clone() }).is_ok());
        let bad = [
            (SgdConfig { lr: 0.0, ..ok.clone() }, "lr", "0"),
            (SgdConfig { lr: -0.1, ..ok.clone() }, "lr", "-0.1"),
            (SgdConfig { lr: f64::NAN, ..ok.clone() }, "lr", "NaN"),
            (SgdConfig { momentum: 1.0, ..ok.clone() }, "momentum", "[0, 1)"),
            (SgdConfig { momentum: -0.9, ..ok.clone() }, "momentum", "-0.9"),
            (SgdConfig { weight_decay: -1e-4, ..ok.clone() }, "weight_decay", "-0.0001"),
            (SgdConfig { weight_decay: f64::INFINITY, ..ok.clone() }, "weight_decay", "inf"),
        ];
        for (cfg, field, shown) in bad {
            let e = Sgd::new(Vec::new(), cfg.clone()).err().unwrap_or_else(|| panic!("{cfg:?} accepted")).to_string();
            assert!(e.contains("SGD") && e.contains(field) && e.contains(shown), "{e}");
        }
    }
}
