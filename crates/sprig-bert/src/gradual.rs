//! Pruning *during* fine-tuning, for comparison with tickets at the same sparsity: gradual
//! magnitude pruning (Zhu & Gupta 2017), global over the encoder linears like the tickets, and
//! movement pruning (Sanh et al. 2020), per matrix: every encoder linear is pruned to the scheduled
//! sparsity on its own, as the authors' TopK masked linears do. GMP is monotone (a pruned weight
//! stays pruned); movement re-ranks all weights at every event, pruned ones with the values the
//! pruner keeps aside, as the authors' masks do ([`sprig_prune::Pruner::revive`]). A single
//! global threshold on movement scores, whose scale differs between matrices, emptied whole
//! matrices and left rt-sentiment at chance (docs/results/bert-tickets.md).
//!
//! Both are configurations of [`sprig_prune::Pruner`] ([`PrunerConfig::gmp`],
//! [`PrunerConfig::movement`]): Zhu & Gupta's cubic schedule (eq. 1, with s_i = 0) from step
//! `t₀ = round(start · T)` to `t₁ = round(end · T)`, pruning at `t₀ + k·every` and at `t₁`;
//! movement scores `S = −Σ_t ∂L/∂W ⊙ W` (Sanh et al. §3) accumulate every step after gradient
//! clipping. [`GradualHooks`] drives the pruner from the training loop's hooks.
use crate::error::Result;
use candle_core::backprop::GradStore;
use candle_core::Var;
use sprig_prune::dst::UpdateSchedule;
use sprig_prune::{GrowRule, Inputs, MaskSet, Pruner, PrunerConfig, Regrow, Scores};
use sprig_train::fit::{Ctx, Hooks};
use sprig_train::TrainState;

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

    /// The [`Pruner`] configuration over a fine-tune of `total` steps: `t₀ = round(start · total)`,
    /// `t₁ = round(end · total)` (at least `t₀ + 1`).
    pub fn config(&self, total: usize) -> Result<PrunerConfig> {
        self.validate()?;
        let t0 = (self.start * total as f64).round() as usize;
        let t1 = ((self.end * total as f64).round() as usize).max(t0 + 1);
        Ok(match self.criterion {
            GradualCriterion::Magnitude => PrunerConfig::gmp(self.target, t0, t1, self.every),
            GradualCriterion::Movement => PrunerConfig::movement(self.target, t0, t1, self.every),
        })
    }
}

/// RigL during one fine-tune (Evci et al. 2020, Alg. 1): a random mask at `sparsity` over the
/// prunable weights (ERK allocation, RigL §3), then every ΔT steps before `end · T` the smallest
/// |w| of each tensor are dropped and as many inactive weights with the largest dense |gradient|
/// grown (at zero), the drop fraction decaying from `alpha` by RigL eq. 2. The sparsity is the
/// same at every step; only which weights are kept moves.
#[derive(Clone, Copy, Debug)]
pub struct Rigl {
    pub sparsity: f64,
    /// α, the drop fraction at step 0 (RigL: 0.3).
    pub alpha: f64,
    /// T_end as a fraction of the fine-tune's steps (RigL: 0.75).
    pub end: f64,
    /// Mask updates before T_end: ΔT = max(1, round(end · T / updates)).
    pub updates: usize,
    /// Seed of the random start mask.
    pub seed: u64,
}

impl Rigl {
    /// RigL's defaults (α = 0.3, T_end = 75% of training) with 16 mask updates: a fine-tune of a
    /// few hundred steps has far fewer than RigL's ImageNet runs, so ΔT follows the run's length.
    pub fn standard(sparsity: f64, seed: u64) -> Self {
        Self { sparsity, alpha: 0.3, end: 0.75, updates: 16, seed }
    }

    /// The [`UpdateSchedule`] over a fine-tune of `total` steps.
    pub fn update_schedule(&self, total: usize) -> Result<UpdateSchedule> {
        if !(0.0..1.0).contains(&self.sparsity) {
            bail!("RigL sparsity {} is outside [0, 1)", self.sparsity);
        }
        if !(self.end > 0.0 && self.end <= 1.0) || self.updates == 0 {
            bail!("RigL needs 0 < end <= 1 and at least one update (got {self:?})");
        }
        let t_end = (self.end * total as f64).round() as usize;
        let delta_t = ((t_end as f64 / self.updates as f64).round() as usize).max(1);
        Ok(UpdateSchedule { delta_t, t_end, alpha: self.alpha })
    }

    /// A pruner over `prunable` that already holds its random start.
    pub fn pruner(&self, total: usize, prunable: &[(String, Var)]) -> Result<Pruner> {
        let cfg = PrunerConfig::dst(self.sparsity, self.update_schedule(total)?, GrowRule::Gradient).seed(self.seed);
        let mut p = Pruner::for_params(cfg, prunable)?;
        p.start_random()?;
        Ok(p)
    }
}

/// What prunes during a fine-tune: a gradual schedule or RigL.
#[derive(Clone, Copy, Debug)]
pub enum Pruning {
    Gradual(Gradual),
    Rigl(Rigl),
}

impl Pruning {
    /// The pruner over a fine-tune of `total` steps; RigL's holds its random start mask.
    pub fn pruner(&self, total: usize, prunable: &[(String, Var)]) -> Result<Pruner> {
        if prunable.is_empty() {
            bail!("pruning during fine-tuning: no prunable parameters");
        }
        match self {
            Pruning::Gradual(g) => Ok(Pruner::for_params(g.config(total)?, prunable)?),
            Pruning::Rigl(r) => r.pruner(total, prunable),
        }
    }
}

/// A [`Gradual`] schedule as hooks of the training loop: gradients feed the pruner before each
/// optimizer step ([`Pruner::observe`]), and after it the pruner prunes when the schedule says so,
/// installing the new masks in the optimizer (pruned weights and their state become zero).
pub struct GradualHooks {
    pub pruner: Pruner,
    prunable: Vec<(String, Var)>,
    /// The dense gradients of the step before a RigL update (gradient growth reads them).
    dense_grads: Option<Scores>,
}

impl GradualHooks {
    /// `g` over `prunable` for a fine-tune of `total` steps.
    pub fn new(g: Gradual, prunable: Vec<(String, Var)>, total: usize) -> Result<Self> {
        Ok(Self::with_pruner(Pruning::Gradual(g).pruner(total, &prunable)?, prunable))
    }

    /// Drives an already configured `pruner` over `prunable` (any schedule; a one-shot pruner
    /// that has pruned does nothing more).
    pub fn with_pruner(pruner: Pruner, prunable: Vec<(String, Var)>) -> Self {
        Self { pruner, prunable, dense_grads: None }
    }

    /// Does the pruner grow by gradient after step `step` (RigL, GraNet)?
    fn grows_by_gradient_after(&self, step: usize) -> bool {
        matches!(self.pruner.config().regrow, Some(Regrow { update, grow: GrowRule::Gradient }) if update.is_update_step(step))
    }

    /// The current masks.
    pub fn masks(&self) -> &MaskSet {
        self.pruner.masks()
    }
}

impl<M: ?Sized> Hooks<M> for GradualHooks {
    fn before_step(&mut self, _model: &mut M, ctx: &mut Ctx, grads: &mut GradStore) -> sprig_train::error::Result<()> {
        // The weights are dense tensors with zeros off the mask, so their gradients are the dense
        // gradients RigL grows by (after clipping: a common scale, the same ranking).
        self.dense_grads = None;
        if self.grows_by_gradient_after(ctx.step + 1) {
            let mut g = Scores::new();
            for (n, v) in &self.prunable {
                let t = grads.get(v.as_tensor()).ok_or_else(|| sprig_prune::PruneError::NoGradient(n.clone()))?;
                g.insert(n.clone(), t.flatten_all()?.to_vec1::<f32>()?);
            }
            self.dense_grads = Some(g);
        }
        Ok(self.pruner.observe(&self.prunable, grads)?)
    }

    fn after_step(&mut self, _model: &mut M, ctx: &mut Ctx, _loss: f64) -> sprig_train::error::Result<()> {
        let grads = self.dense_grads.take();
        let mut inputs = match &grads {
            Some(g) => Inputs::none().with_dense_grads(g),
            None => Inputs::none(),
        };
        if self.pruner.step(ctx.step, &self.prunable, &mut inputs)?.is_some() {
            // Block OBS moves the kept weights to compensate; non-monotone movement puts pruned
            // values aside and revived ones back (each a no-op for other configurations).
            self.pruner.obs_update(&self.prunable)?;
            if let Some(r) = self.pruner.revive(&self.prunable)? {
                tracing::debug!(step = ctx.step, pruned = r.pruned, revived = r.revived, "movement mask update");
            }
            let m = self.pruner.masks();
            ctx.opt.set_masks(m)?;
            tracing::debug!(step = ctx.step, sparsity = m.sparsity(), "gradual prune");
        }
        Ok(())
    }

    /// The pruner's masks and gradient statistics, under `pruner/` ([`Pruner::state`]).
    fn save_state(&mut self, _model: &mut M, state: &mut TrainState) -> sprig_train::error::Result<()> {
        let (t, meta) = self.pruner.state()?;
        state.put_part("pruner", t, meta)
    }

    fn load_state(&mut self, _model: &mut M, state: &TrainState) -> sprig_train::error::Result<()> {
        let (t, meta) = state.part("pruner")?;
        Ok(self.pruner.restore(&t, &meta)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use sprig_train::fit::{BatchOrder, Fit, StepInfo, StepLoss};
    use sprig_train::{AdamW, AdamWConfig, Optimizer};

    #[test]
    fn standard_schedule_prunes_from_10_to_70_percent_and_reaches_the_target() {
        let g = Gradual::standard(GradualCriterion::Magnitude, 0.6);
        let p = Pruner::new(g.config(100).unwrap(), vec![("w".into(), vec![10, 10])]).unwrap();
        assert_eq!(p.target_at(8), None);
        assert_eq!(p.target_at(10), Some(0.0));
        assert!(p.target_at(11).is_none() && p.target_at(12).is_some());
        assert!((p.target_at(70).unwrap() - 0.6).abs() < 1e-12);
        assert_eq!(p.target_at(72), None);
        let mid = p.target_at(40).unwrap();
        assert!((mid - 0.6 * (1.0 - 0.5f64.powi(3))).abs() < 1e-12, "{mid}");
        // A tiny run still has t₁ > t₀.
        assert!(Gradual::standard(GradualCriterion::Movement, 0.5).config(1).is_ok());
        assert!(Gradual { target: 1.0, ..g }.validate().is_err());
        assert!(Gradual { every: 0, ..g }.validate().is_err());
    }

    /// Movement scores of a matrix with 1000x larger gradients would win every global comparison;
    /// per matrix, both matrices end at the target sparsity. Magnitude stays global. One step of
    /// the training loop drives the hooks (SGD with lr 0 keeps the weights).
    #[test]
    fn movement_prunes_each_matrix_to_the_target_magnitude_globally() {
        let d = Device::Cpu;
        let run = |criterion| {
            let a = Var::from_tensor(&Tensor::arange(1f32, 101., &d).unwrap().reshape((10, 10)).unwrap()).unwrap();
            let b = Var::from_tensor(&(Tensor::arange(1f32, 101., &d).unwrap().reshape((10, 10)).unwrap() * 1e-3).unwrap()).unwrap();
            let params = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
            // AdamW refuses lr 0 at construction; the rate is lowered to 0 afterwards.
            let mut opt = AdamW::new(params.clone(), AdamWConfig::default()).unwrap();
            opt.set_learning_rate(0.0);
            let mut hooks = GradualHooks::new(Gradual { criterion, target: 0.5, start: 0.0, end: 1.0, every: 1 }, params.clone(), 1).unwrap();
            // Loss −(a² + 1000·b²)/2: g = −w and −1000·w, so S = −g⊙w is 1000x larger on b.
            Fit::new(1, BatchOrder::Shuffled { n: 1, batch_size: 1, seed: 0 })
                .run(&mut (), &mut opt, params, |_: &mut (), _: &[usize], _: &StepInfo| {
                    let loss = ((a.as_tensor().sqr()?.sum_all()? + (b.as_tensor().sqr()?.sum_all()? * 1000.0)?)? * -0.5)?;
                    Ok(StepLoss { loss, examples: 1 })
                }, &mut hooks)
                .unwrap();
            let m = hooks.masks();
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

    /// RigL keeps the exact sparsity of its random start while the gradient moves which weights
    /// are kept: with loss Σ c ⊙ w the gradient is c, large on half the weights the start pruned,
    /// and only those grow.
    #[test]
    fn rigl_keeps_the_sparsity_and_grows_where_the_gradient_is_largest() {
        let d = Device::Cpu;
        let w = Var::from_tensor(&Tensor::ones((8, 8), candle_core::DType::F32, &d).unwrap()).unwrap();
        let params = vec![("w".to_string(), w.clone())];
        let rigl = Rigl { sparsity: 0.75, alpha: 0.5, end: 1.0, updates: 4, seed: 3 };
        let pruner = Pruning::Rigl(rigl).pruner(8, &params).unwrap();
        let start = pruner.masks().clone();
        assert!((start.sparsity() - 0.75).abs() < 1e-12);
        let pruned: Vec<bool> = start.get("w").unwrap().to_bools().iter().map(|k| !k).collect();
        // The largest gradients on every other weight the start pruned ("hot"), small elsewhere.
        let hot: Vec<bool> = pruned.iter().enumerate().map(|(i, &p)| p && i % 2 == 0).collect();
        let coef: Vec<f32> = hot.iter().map(|&h| if h { 100.0 } else { 0.01 }).collect();
        let c = Tensor::from_vec(coef, (8, 8), &d).unwrap();
        let mut opt = AdamW::new(params.clone(), AdamWConfig::default()).unwrap();
        opt.set_learning_rate(0.0);
        opt.set_masks(&start).unwrap();
        let mut hooks = GradualHooks::with_pruner(pruner, params.clone());
        Fit::new(8, BatchOrder::Shuffled { n: 1, batch_size: 1, seed: 0 })
            .run(&mut (), &mut opt, params, |_: &mut (), _: &[usize], _: &StepInfo| {
                Ok(StepLoss { loss: (w.as_tensor() * &c)?.sum_all()?, examples: 1 })
            }, &mut hooks)
            .unwrap();
        let end = hooks.masks().get("w").unwrap().clone();
        assert!((end.sparsity() - 0.75).abs() < 1e-12, "RigL changed the sparsity: {}", end.sparsity());
        let grown: Vec<usize> = (0..64).filter(|&i| end.to_bools()[i] && pruned[i]).collect();
        assert!(!grown.is_empty(), "no weight pruned at the start was grown");
        assert!(grown.iter().all(|&i| hot[i]), "grew weights with small gradients: {grown:?}");
        // Kept weights off the mask are exactly zero.
        let v = w.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().zip(end.to_bools()).all(|(x, k)| k || *x == 0.0));
    }
}
