//! Pruning *during* fine-tuning, for comparison with tickets at the same sparsity: gradual
//! magnitude pruning (Zhu & Gupta 2017), global over the encoder linears like the tickets, and
//! movement pruning (Sanh et al. 2020), per matrix: every encoder linear is pruned to the scheduled
//! sparsity on its own, as the authors' TopK masked linears do. Both are monotone (a pruned weight
//! stays pruned). A single global threshold on movement scores, whose scale differs between
//! matrices, emptied whole matrices and left rt-sentiment at chance (docs/results/bert-tickets.md).
//!
//! Sparsity follows Zhu & Gupta's cubic schedule (eq. 1, with s_i = 0):
//! `s_t = s_f · (1 − (1 − (t − t₀)/(t₁ − t₀))³)` for `t₀ ≤ t < t₁`, `s_f` from `t₁` on. Movement
//! scores are the first-order ones of Sanh et al. (§3): `S = −Σ_t ∂L/∂W ⊙ W`, accumulated every step
//! after gradient clipping; the weights with the lowest `S` are pruned.
use crate::error::{Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use sprig_prune::{prune, Allocation, Granularity, MaskSet, Scores};
use sprig_train::Optimizer;
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradualCriterion {
    /// |w| of the current weights.
    Magnitude,
    /// `−Σ_t g ⊙ w` (movement pruning).
    Movement,
}

/// A gradual pruning schedule over one fine-tune.
#[derive(Clone, Copy, Debug)]
pub struct Gradual {
    pub criterion: GradualCriterion,
    /// Final sparsity `s_f` of the prunable weights, in [0, 1).
    pub target: f64,
    /// `t₀` and `t₁` as fractions of the fine-tune's steps.
    pub start: f64,
    pub end: f64,
    /// Steps between pruning events.
    pub every: usize,
}

impl Gradual {
    /// The schedule the ticket comparisons use: prune from 10% to 70% of training, every 2 steps
    /// (the last 30% fine-tune at the final mask, Sanh et al.'s "cool-down").
    pub fn standard(criterion: GradualCriterion, target: f64) -> Self {
        Self { criterion, target, start: 0.1, end: 0.7, every: 2 }
    }

    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.target) {
            bail!("gradual pruning target sparsity {} is outside [0, 1)", self.target);
        }
        if !(0.0 <= self.start && self.start < self.end && self.end <= 1.0) || self.every == 0 {
            bail!("gradual pruning schedule needs 0 <= start < end <= 1 and every >= 1 (got {self:?})");
        }
        Ok(())
    }

    /// Sparsity after `step` of `total` steps (Zhu & Gupta eq. 1).
    pub fn sparsity_at(&self, step: usize, total: usize) -> f64 {
        let (t0, t1) = (self.start * total as f64, self.end * total as f64);
        let t = step as f64;
        if t < t0 {
            0.0
        } else if t >= t1 {
            self.target
        } else {
            self.target * (1.0 - (1.0 - (t - t0) / (t1 - t0)).powi(3))
        }
    }
}

/// The running state of a [`Gradual`] schedule inside a fine-tune.
pub struct GradualState {
    g: Gradual,
    total: usize,
    prunable: Vec<(String, Var)>,
    shapes: Vec<(String, Vec<usize>)>,
    movement: HashMap<String, Vec<f32>>,
    pub mask: Option<MaskSet>,
    pub sparsity: f64,
}

impl GradualState {
    pub fn new(g: Gradual, prunable: Vec<(String, Var)>, total: usize) -> Result<Self> {
        g.validate()?;
        if prunable.is_empty() {
            bail!("gradual pruning: no prunable parameters");
        }
        let shapes = prunable.iter().map(|(n, v)| (n.clone(), v.dims().to_vec())).collect();
        let movement = match g.criterion {
            GradualCriterion::Movement => prunable.iter().map(|(n, v)| (n.clone(), vec![0f32; v.elem_count()])).collect(),
            GradualCriterion::Magnitude => HashMap::new(),
        };
        Ok(Self { g, total, prunable, shapes, movement, mask: None, sparsity: 0.0 })
    }

    /// Accumulates movement scores from this step's (clipped) gradients; a no-op for magnitude.
    pub fn observe(&mut self, grads: &GradStore) -> Result<()> {
        if self.g.criterion != GradualCriterion::Movement {
            return Ok(());
        }
        for (n, v) in &self.prunable {
            let Some(g) = grads.get(v.as_tensor()) else { continue };
            let gw = g.mul(v.as_tensor())?.flatten_all()?.to_vec1::<f32>()?;
            let s = self.movement.get_mut(n).context("movement scores")?;
            s.iter_mut().zip(gw).for_each(|(s, x)| *s -= x);
        }
        Ok(())
    }

    /// After optimizer step `step` (1-based): prunes to the scheduled sparsity when a pruning
    /// event falls here, installing the mask in `opt` (zeroing the weights and their state).
    pub fn after_step(&mut self, step: usize, opt: &mut dyn Optimizer) -> Result<()> {
        let s = self.g.sparsity_at(step, self.total);
        let last = step as f64 >= self.g.end * self.total as f64;
        if s <= self.sparsity + 1e-12 || (!step.is_multiple_of(self.g.every) && !last) {
            return Ok(());
        }
        let scores: Scores = match self.g.criterion {
            GradualCriterion::Magnitude => {
                let t: HashMap<String, Tensor> = self.prunable.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
                magnitude_scores(&t, &self.shapes)?
            }
            GradualCriterion::Movement => self.shapes.iter().map(|(n, _)| (n.clone(), self.movement[n].clone())).collect(),
        };
        let allocation = match self.g.criterion {
            GradualCriterion::Magnitude => Allocation::global(),
            GradualCriterion::Movement => Allocation::uniform(),
        };
        let m = prune(&scores, &self.shapes, s, Granularity::Unstructured, &allocation, self.mask.as_ref())?;
        for (n, mask) in m.iter() {
            opt.set_mask(n, Some(&mask.to_bools()))?;
        }
        self.sparsity = m.sparsity();
        self.mask = Some(m);
        tracing::debug!(step, sparsity = self.sparsity, "gradual prune");
        Ok(())
    }
}

/// |w| of the prunable tensors (Han et al. 2015).
pub fn magnitude_scores(tensors: &HashMap<String, Tensor>, shapes: &[(String, Vec<usize>)]) -> Result<Scores> {
    shapes
        .iter()
        .map(|(n, _)| {
            let t = tensors.get(n).with_context(|| format!("no tensor {n}"))?;
            Ok((n.clone(), t.abs()?.flatten_all()?.to_vec1::<f32>()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cubic_schedule_reaches_the_target_at_end_and_starts_at_zero() {
        let g = Gradual::standard(GradualCriterion::Magnitude, 0.6);
        assert_eq!(g.sparsity_at(0, 100), 0.0);
        assert_eq!(g.sparsity_at(9, 100), 0.0);
        assert!((g.sparsity_at(70, 100) - 0.6).abs() < 1e-12);
        assert!((g.sparsity_at(100, 100) - 0.6).abs() < 1e-12);
        let mid = g.sparsity_at(40, 100);
        assert!((mid - 0.6 * (1.0 - 0.5f64.powi(3))).abs() < 1e-12, "{mid}");
        let v: Vec<f64> = (0..=100).map(|t| g.sparsity_at(t, 100)).collect();
        assert!(v.windows(2).all(|w| w[1] >= w[0]), "not monotone");
        assert!(Gradual { target: 1.0, ..g }.validate().is_err());
        assert!(Gradual { every: 0, ..g }.validate().is_err());
    }

    /// Movement scores of a matrix with 1000x larger gradients would win every global comparison;
    /// per matrix, both matrices end at the target sparsity. Magnitude stays global.
    #[test]
    fn movement_prunes_each_matrix_to_the_target_magnitude_globally() {
        use candle_core::Device;
        use sprig_train::{AdamW, AdamWConfig};
        let d = Device::Cpu;
        let run = |criterion| {
            let a = Var::from_tensor(&Tensor::arange(1f32, 101., &d).unwrap().reshape((10, 10)).unwrap()).unwrap();
            let b = Var::from_tensor(&(Tensor::arange(1f32, 101., &d).unwrap().reshape((10, 10)).unwrap() * 1e-3).unwrap()).unwrap();
            let params = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
            let mut opt = AdamW::new(params.clone(), AdamWConfig::default()).unwrap();
            let mut st = GradualState::new(Gradual { criterion, target: 0.5, start: 0.0, end: 1.0, every: 1 }, params, 10).unwrap();
            // Loss −(a² + 1000·b²)/2: g = −w and −1000·w, so S = −g⊙w is 1000x larger on b.
            let loss = ((a.as_tensor().sqr().unwrap().sum_all().unwrap() + (b.as_tensor().sqr().unwrap().sum_all().unwrap() * 1000.0).unwrap()).unwrap() * -0.5).unwrap();
            st.observe(&loss.backward().unwrap()).unwrap();
            st.after_step(10, &mut opt).unwrap();
            let m = st.mask.unwrap();
            (m.get("a").unwrap().sparsity(), m.get("b").unwrap().sparsity(), m.sparsity())
        };
        let (sa, sb, all) = run(GradualCriterion::Movement);
        assert!((sa - 0.5).abs() < 1e-9 && (sb - 0.5).abs() < 1e-9, "movement per matrix: {sa} {sb}");
        assert!((all - 0.5).abs() < 1e-9);
        // Global magnitude prunes the small-weight matrix b first.
        let (sa, sb, all) = run(GradualCriterion::Magnitude);
        assert!((all - 0.5).abs() < 1e-9);
        assert!(sa == 0.0 && sb == 1.0, "magnitude global: {sa} {sb}");
    }
}
