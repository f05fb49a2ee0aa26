//! Non-monotone masks ([`PrunerConfig::revive`](super::PrunerConfig::revive)): movement pruning as
//! Sanh et al. (2020, §3) train it. Their masked linear computes with W ⊙ M where M is the top-k
//! of the scores S at every step; W itself is kept whole, so a weight that leaves the top-k and
//! comes back has its old value, and S keeps moving for pruned weights through the
//! straight-through gradient ∂L/∂S = (∂L/∂(W ⊙ M)) ⊙ W (eq. 7). Here pruned weights are exactly
//! zero in the model (the mask invariant), so the pruner keeps their values aside: scores use
//! w + aside ([`Pruner::observe`]), and after each pruning event [`Pruner::revive`] moves the
//! values of newly pruned weights aside and puts those of revived weights back.
use candle_core::{DType, Tensor, Var};

use super::Pruner;
use crate::error::Result;

/// What one [`Pruner::revive`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Revived {
    /// Weights pruned by the event (their values are now kept aside).
    pub pruned: usize,
    /// Pruned weights back in the mask, with their kept-aside values.
    pub revived: usize,
}

impl Pruner {
    /// After a pruning event of a non-monotone pruner: the values of weights the event pruned go
    /// aside (and become 0 in `params`), weights it brought back get their kept-aside values.
    /// Install the masks in the optimizer afterwards: pruned and revived weights start with
    /// fresh optimizer state. `None` when nothing is pending or the masks are monotone.
    pub fn revive(&mut self, params: &[(String, Var)]) -> Result<Option<Revived>> {
        if !self.config.revive {
            return Ok(None);
        }
        let Some(before) = self.pending_before.take() else { return Ok(None) };
        let sel = self.select(params)?;
        let mut out = Revived::default();
        for (name, var) in &sel {
            let (old, new) = (before.require(name)?, self.masks.require(name)?);
            let n = var.elem_count();
            let aside = self.aside.entry(name.clone()).or_insert_with(|| vec![0.0; n]);
            let mut w: Vec<f32> = var.as_tensor().flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
            let mut changed = false;
            for (i, (w, a)) in w.iter_mut().zip(aside.iter_mut()).enumerate() {
                match (old.get(i), new.get(i)) {
                    (true, false) => {
                        (*a, *w) = (*w, 0.0);
                        out.pruned += 1;
                        changed = true;
                    }
                    (false, true) => {
                        (*w, *a) = (*a, 0.0);
                        out.revived += 1;
                        changed = true;
                    }
                    _ => {}
                }
            }
            if changed {
                let t = Tensor::from_vec(w, var.dims(), var.device())?.to_dtype(var.dtype())?;
                var.set(&t)?;
            }
        }
        Ok(Some(out))
    }

    /// The values kept aside for the pruned weights of `name` (non-monotone masks; `None` before
    /// the first event prunes it).
    pub fn aside(&self, name: &str) -> Option<&[f32]> {
        self.aside.get(name).map(Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Inputs, Pruner, PrunerConfig};
    use candle_core::{Device, Tensor, Var};

    /// A weight pruned early whose movement turns comes back with its old value; the mask is
    /// top-k of the scores at every event, pruned weights included, and every event leaves the
    /// scheduled sparsity and exact zeros at pruned positions.
    #[test]
    fn a_pruned_weight_whose_score_rises_comes_back_with_its_value() {
        let d = Device::Cpu;
        let w0: Vec<f32> = vec![0.5, -0.4, 0.3, -0.2, 0.6, 0.1, -0.7, 0.25];
        let v = Var::from_tensor(&Tensor::from_vec(w0.clone(), (2, 4), &d).unwrap()).unwrap();
        let params = vec![("w".to_string(), v.clone())];
        let mut p = Pruner::for_params(PrunerConfig::movement(0.5, 0, 6, 1), &params).unwrap();
        let mut revived_total = 0;
        for step in 1..=6usize {
            // Loss Σ c_i w_i, so g = c: for two steps weight 0 is pushed toward 0 (pruned first),
            // then strongly outward while weight 4 is pulled in.
            let c: Vec<f32> = if step <= 2 { vec![5.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0] } else { vec![-40.0, 0.0, 0.0, 0.0, 40.0, 0.0, 0.0, 0.0] };
            let c = Tensor::from_vec(c, (2, 4), &d).unwrap();
            let loss = (v.as_tensor() * &c).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            p.observe(&params, &grads).unwrap();
            if p.step(step, &params, &mut Inputs::none()).unwrap().is_some() {
                let before: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
                let r = p.revive(&params).unwrap().expect("a pending event");
                revived_total += r.revived;
                let m = p.masks().get("w").unwrap();
                let now: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
                let aside = p.aside("w").unwrap();
                for i in 0..8 {
                    if m.get(i) {
                        assert_eq!(aside[i], 0.0);
                        // Kept weights are untouched or hold their original value back.
                        assert!(now[i] == before[i] || now[i] == w0[i], "step {step} weight {i}");
                    } else {
                        assert_eq!(now[i], 0.0, "step {step}: pruned weight {i} is exactly 0");
                        assert!(aside[i] == w0[i] || before[i] == 0.0);
                    }
                }
                assert!((m.sparsity() - p.target_at(step).unwrap()).abs() < 0.13, "step {step}");
            }
        }
        // Weight 0 was pruned (its movement was toward 0: S = −Σ g·w = −5·0.5·2 < 0) and came
        // back once its score rose (S += 40·0.5 per step, computed with the kept-aside value).
        let m = p.masks().get("w").unwrap();
        assert!(m.get(0), "weight 0 revived");
        assert!(!m.get(4), "weight 4 pruned: its movement is toward 0");
        assert_eq!(v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()[0], 0.5, "revived with its value");
        assert!(revived_total >= 1);
        assert!((m.sparsity() - 0.5).abs() < 1e-9);
        // Monotone pruners do nothing here.
        let mut mono = Pruner::for_params(PrunerConfig::gmp(0.5, 0, 6, 1), &params).unwrap();
        assert_eq!(mono.revive(&params).unwrap(), None);
        // Reviving needs moving scores and a gradual schedule.
        let mut bad = PrunerConfig::gmp(0.5, 0, 6, 1);
        bad.revive = true;
        assert!(Pruner::for_params(bad, &params).is_err());
    }
}
