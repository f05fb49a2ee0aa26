//! The [`Pruner`]: one [`MaskSet`] and a [`PrunerConfig`] composing criterion × granularity ×
//! allocation × schedule, plus a grow rule for dynamic sparse training. Methods of the literature
//! are configurations of it:
//!
//! | method | configuration |
//! |---|---|
//! | one-shot magnitude / SNIP / GraSP / SynFlow / Wanda | [`PrunerConfig::one_shot`] with the criterion ([`PrunerConfig::iterations`] for SynFlow's Alg. 1) |
//! | GMP (Zhu & Gupta 2017) | [`PrunerConfig::gmp`]: magnitude, global, cubic schedule |
//! | movement pruning (Sanh et al. 2020) | [`PrunerConfig::movement`]: movement scores, each matrix on its own, non-monotone ([`Pruner::revive`] after each event) |
//! | IMP (Frankle & Carbin 2019; BERT-Tickets, Chen et al. 2020) | [`PrunerConfig::imp`] and [`Pruner::round`] |
//! | the lottery's output-layer rule | [`PrunerConfig::imp`] + a [`LayerGroup`] with its own [`GroupRate::Round`] |
//! | SET (Mocanu et al. 2018) / RigL (Evci et al. 2020) | [`PrunerConfig::dst`] with [`GrowRule::Random`] / [`GrowRule::Gradient`] |
//! | GraNet (Liu et al. 2021) | [`PrunerConfig::granet`]: cubic schedule + gradient regrowth |
//! | oBERT block OBS (Kurtic et al. 2022) | [`PrunerConfig::obert`]: [`Criterion::Obs`], global, cubic schedule; [`Pruner::observe`] every step, [`Pruner::obs_update`] after each pruning event |
//!
//! Invariants: masks only shrink (a pruned weight is never revived) except under a grow rule or
//! [`PrunerConfig::revive`]; the same configuration, seed and inputs give the same masks bit for bit.
use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::Var;

use crate::allocation::{prune, Allocation, Scores};
use crate::criteria::{Criterion, GradAccumulator};
use crate::dst::{self, Grow, ItopTracker, UpdateSchedule};
use crate::error::{check_sparsity, PruneError, Result};
use crate::granularity::Granularity;
use crate::mask::{Mask, MaskSet};
use crate::obs::{self, GradWindow, ObsUpdate};
use crate::schedule::{Rewind, RoundRate, Schedule};
use crate::score::{Held, Inputs, ScoreOptions};

#[path = "pruner_state.rs"]
mod state;
#[path = "pruner_revive.rs"]
mod revive;
pub use revive::Revived;

/// How fast a [`LayerGroup`] is pruned relative to the schedule.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum GroupRate {
    /// IMP only: the group's own per-round rate (Frankle & Carbin 2019, §2 and App. G: the output
    /// layer of the fully-connected nets is pruned at half the rate of the hidden layers).
    Round(RoundRate),
    /// Any schedule: the group's sparsity is this factor times the schedule's.
    Scale(f64),
}

/// Tensors pruned apart from the rest, at their own rate (the allocation applies inside the group).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerGroup {
    pub tensors: Vec<String>,
    pub rate: GroupRate,
}

/// How dynamic sparse training picks the weights to grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrowRule {
    /// Uniformly at random among inactive weights (SET, Mocanu et al. 2018).
    Random,
    /// Largest dense |gradient| among inactive weights (RigL, Evci et al. 2020, Alg. 1; GraNet).
    Gradient,
}

/// Dynamic sparse training: on the [`UpdateSchedule`] clock (every ΔT steps before T_end, drop
/// fraction α/2·(1 + cos(tπ/T_end)), RigL eq. 2), drop the smallest |w| and grow as many by `grow`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Regrow {
    pub update: UpdateSchedule,
    pub grow: GrowRule,
}

/// What a [`Pruner`] does: criterion × granularity × allocation × schedule (+ grow rule).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PrunerConfig {
    pub criterion: Criterion,
    pub granularity: Granularity,
    pub allocation: Allocation,
    pub schedule: Schedule,
    /// Tensors pruned at their own rate; every other tensor follows the schedule.
    #[serde(default)]
    pub groups: Vec<LayerGroup>,
    /// Prune-and-grow (dynamic sparse training); `None` = weights once pruned stay pruned.
    #[serde(default)]
    pub regrow: Option<Regrow>,
    /// Scoring rounds of one pruning event, s_k = 1 − (1 − s)^{k/n}, rescoring under the current
    /// mask each round (SynFlow, Tanaka et al. 2020, Alg. 1: n = 100). 1 = score once.
    #[serde(default = "one")]
    pub iterations: usize,
    #[serde(default)]
    pub options: ScoreOptions,
    /// Non-monotone masks, as movement pruning trains them (Sanh et al. 2020, §3): every pruning
    /// event ranks all weights, pruned ones included, and a pruned weight whose score rose comes
    /// back with the value it had ([`Pruner::revive`] keeps pruned values aside; their scores keep
    /// accumulating). Only for scores that keep moving for pruned weights (movement). `false` =
    /// a pruned weight stays pruned.
    #[serde(default)]
    pub revive: bool,
}

fn one() -> usize {
    1
}

impl PrunerConfig {
    /// `criterion`, unstructured, global, no groups, no regrowth, seed 0, under `schedule`.
    pub fn new(criterion: Criterion, schedule: Schedule) -> Self {
        Self {
            criterion,
            granularity: Granularity::Unstructured,
            allocation: Allocation::global(),
            schedule,
            groups: vec![],
            regrow: None,
            iterations: 1,
            options: ScoreOptions::default(),
            revive: false,
        }
    }
    /// Prune once to `sparsity` at step 0 (magnitude, SNIP, GraSP, SynFlow, Wanda, random...).
    pub fn one_shot(criterion: Criterion, sparsity: f64) -> Self {
        Self::new(criterion, Schedule::OneShot { sparsity, step: 0 })
    }
    /// Gradual magnitude pruning (Zhu & Gupta 2017, eq. 1), one global threshold: from 0 at step
    /// `start` to `final_sparsity` at `end`, every `frequency` steps.
    pub fn gmp(final_sparsity: f64, start: usize, end: usize, frequency: usize) -> Self {
        Self::new(Criterion::Magnitude, Schedule::Gradual { initial: 0.0, final_sparsity, start, end, frequency })
    }
    /// Movement pruning (Sanh et al. 2020, §3, hard top-k on S = −Σ_t ∂L/∂W ⊙ W) on the cubic
    /// schedule, every matrix to the scheduled sparsity on its own (uniform allocation), as the
    /// authors' TopK masked linears do. Feed gradients with [`Pruner::observe`].
    /// Masks are non-monotone ([`PrunerConfig::revive`]): call [`Pruner::revive`] after each
    /// pruning event.
    pub fn movement(final_sparsity: f64, start: usize, end: usize, frequency: usize) -> Self {
        let mut c = Self::new(Criterion::Movement, Schedule::Gradual { initial: 0.0, final_sparsity, start, end, frequency }).allocation(Allocation::uniform());
        c.revive = true;
        c
    }
    /// oBERT (Kurtic et al. 2022): block OBS ([`Criterion::Obs`], B = 50, m = 32, λ = 1e-7), one
    /// global ranking, on the cubic schedule. Feed gradients with [`Pruner::observe`] and, after
    /// each pruning event, move the kept weights with [`Pruner::obs_update`].
    pub fn obert(final_sparsity: f64, start: usize, end: usize, frequency: usize) -> Self {
        let mut c = Self::new(
            Criterion::Obs { block: Criterion::OBERT_BLOCK, grads: Criterion::OBERT_GRADS },
            Schedule::Gradual { initial: 0.0, final_sparsity, start, end, frequency },
        );
        c.options.fisher_damp = 1e-7;
        c
    }
    /// Iterative magnitude pruning (Frankle & Carbin 2019, Alg. 1), global: drive it with
    /// [`Pruner::round`]. Add [`PrunerConfig::group`] for per-layer rates.
    pub fn imp(rounds: usize, rate: RoundRate, rewind: Rewind) -> Self {
        Self::new(Criterion::Magnitude, Schedule::Imp { rounds, rate, rewind })
    }
    /// SET (`GrowRule::Random`) or RigL (`GrowRule::Gradient`) at a constant `sparsity`, ERK
    /// allocation (RigL §3): start with [`Pruner::start_random`], then call [`Pruner::step`].
    pub fn dst(sparsity: f64, update: UpdateSchedule, grow: GrowRule) -> Self {
        Self::new(Criterion::Magnitude, Schedule::OneShot { sparsity, step: 0 }).allocation(Allocation::erk()).regrow(update, grow)
    }
    /// GraNet (Liu et al. 2021, Alg. 1): from a random ERK mask at `initial`, magnitude pruning on
    /// the cubic schedule up to the last update before T_end, each step followed by gradient regrowth.
    pub fn granet(initial: f64, final_sparsity: f64, update: UpdateSchedule) -> Self {
        let last = update.t_end.saturating_sub(1).checked_div(update.delta_t).map_or(0, |q| q * update.delta_t);
        let schedule = Schedule::Gradual { initial, final_sparsity, start: 0, end: last.max(1), frequency: update.delta_t.max(1) };
        Self::new(Criterion::Magnitude, schedule).allocation(Allocation::erk()).regrow(update, GrowRule::Gradient)
    }
    /// With this granularity.
    pub fn granularity(mut self, g: Granularity) -> Self {
        self.granularity = g;
        self
    }
    /// With this allocation.
    pub fn allocation(mut self, a: Allocation) -> Self {
        self.allocation = a;
        self
    }
    /// Also prune `tensors` apart from the rest, at `rate`.
    pub fn group<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tensors: I, rate: GroupRate) -> Self {
        self.groups.push(LayerGroup { tensors: tensors.into_iter().map(Into::into).collect(), rate });
        self
    }
    /// With prune-and-grow on the `update` clock.
    pub fn regrow(mut self, update: UpdateSchedule, grow: GrowRule) -> Self {
        self.regrow = Some(Regrow { update, grow });
        self
    }
    /// With this seed (random criterion, random starts, SET growth).
    pub fn seed(mut self, seed: u64) -> Self {
        self.options.seed = seed;
        self
    }
    /// With `n` scoring rounds per pruning event (SynFlow: 100).
    pub fn iterations(mut self, n: usize) -> Self {
        self.iterations = n;
        self
    }

    /// The largest sparsity the schedule asks for (before group rates).
    fn max_sparsity(&self) -> Result<f64> {
        Ok(match self.schedule {
            Schedule::OneShot { sparsity, .. } => sparsity,
            Schedule::Gradual { initial, final_sparsity, .. } => initial.max(final_sparsity),
            Schedule::Imp { rounds, .. } => self.schedule.round_sparsity(rounds)?,
        })
    }

    /// Checks the configuration against the prunable tensors' `shapes`.
    pub fn validate(&self, shapes: &[(String, Vec<usize>)]) -> Result<()> {
        self.schedule.validate()?;
        if shapes.is_empty() {
            return Err(PruneError::NothingSelected);
        }
        for (i, (n, s)) in shapes.iter().enumerate() {
            if shapes[..i].iter().any(|(m, _)| m == n) {
                return Err(PruneError::BadName { what: "prunable tensor (listed twice)", value: n.clone(), expected: "distinct names" });
            }
            self.granularity.check(n, s)?;
        }
        if self.iterations == 0 {
            return Err(PruneError::BadValue { what: "pruner iterations", value: 0.0, why: "must be >= 1" });
        }
        if let Criterion::Obs { block, grads } = self.criterion {
            if block == 0 {
                return Err(PruneError::BadValue { what: "OBS block size B", value: 0.0, why: "must be >= 1" });
            }
            GradWindow::new(grads)?;
            let damp = self.options.fisher_damp;
            if !(damp.is_finite() && damp > 0.0) {
                return Err(PruneError::BadValue { what: "OBS dampening λ (options.fisher_damp)", value: damp, why: "must be finite and > 0 (oBERT uses 1e-7)" });
            }
        }
        let max = self.max_sparsity()?;
        let imp = matches!(self.schedule, Schedule::Imp { .. });
        for (gi, g) in self.groups.iter().enumerate() {
            for t in &g.tensors {
                if !shapes.iter().any(|(n, _)| n == t) {
                    return Err(PruneError::UnknownParam(t.clone()));
                }
                if self.groups[..gi].iter().any(|h| h.tensors.contains(t)) {
                    return Err(PruneError::BadName { what: "layer group member (in two groups)", value: t.clone(), expected: "each tensor in one group" });
                }
            }
            match (g.rate, self.schedule) {
                (GroupRate::Round(rate), Schedule::Imp { rounds, rewind, .. }) => Schedule::Imp { rounds, rate, rewind }.validate()?,
                (GroupRate::Round(_), _) => {
                    return Err(PruneError::Unsupported { what: "a per-round group rate".into(), why: "it needs an IMP schedule" });
                }
                (GroupRate::Scale(f), _) => {
                    if !(f.is_finite() && f >= 0.0) {
                        return Err(PruneError::BadValue { what: "group scale", value: f, why: "must be finite and >= 0" });
                    }
                    check_sparsity(f * max)?;
                }
            }
        }
        if let Granularity::NM { n, m } = self.granularity {
            let fixed = 1.0 - n as f64 / m as f64;
            let ok = !imp && self.regrow.is_none() && self.groups.is_empty() && matches!(self.schedule, Schedule::OneShot { sparsity, .. } if (sparsity - fixed).abs() <= 1e-6);
            if !ok {
                return Err(PruneError::Unsupported { what: format!("N:M {n}:{m} here"), why: "N:M fixes sparsity at 1 - N/M: use a one-shot schedule at exactly that sparsity, without groups" });
            }
        }
        if self.revive && (self.criterion != Criterion::Movement || self.regrow.is_some() || !matches!(self.schedule, Schedule::Gradual { .. })) {
            return Err(PruneError::Unsupported {
                what: format!("reviving pruned weights with {} on this schedule", self.criterion.name()),
                why: "non-monotone masks need scores that keep moving for pruned weights (movement), a gradual schedule and no grow rule",
            });
        }
        if let Some(r) = &self.regrow {
            r.update.validate()?;
            if self.criterion != Criterion::Magnitude {
                return Err(PruneError::BadName { what: "criterion for prune-and-grow", value: self.criterion.name(), expected: "magnitude (DST drops the smallest |w|)" });
            }
            if self.granularity != Granularity::Unstructured || !self.groups.is_empty() || imp {
                return Err(PruneError::Unsupported {
                    what: "prune-and-grow with this configuration".into(),
                    why: "DST is unstructured, without groups, on a one-shot (SET/RigL) or gradual (GraNet) schedule",
                });
            }
        }
        Ok(())
    }
}

/// One [`MaskSet`] over a model's prunable tensors, changed only as its [`PrunerConfig`] says.
#[derive(Debug)]
pub struct Pruner {
    config: PrunerConfig,
    shapes: Vec<(String, Vec<usize>)>,
    /// Index 0: tensors in no group; index i + 1: `config.groups[i]`.
    parts: Vec<Vec<(String, Vec<usize>)>>,
    masks: MaskSet,
    acc: Option<GradAccumulator>,
    /// The last m gradients ([`Criterion::Obs`]).
    window: Option<GradWindow>,
    /// [`Criterion::Obs`] and [`PrunerConfig::revive`]: the masks before the pruning events not yet
    /// followed by [`Pruner::obs_update`] / [`Pruner::revive`].
    pending_before: Option<MaskSet>,
    /// [`PrunerConfig::revive`]: the values of pruned weights, kept aside (0 where kept).
    aside: BTreeMap<String, Vec<f32>>,
    itop: Option<ItopTracker>,
    one_shot_done: bool,
    /// A gradual schedule's last event (its `end` step) has passed.
    schedule_ended: bool,
}

impl Pruner {
    /// A dense start (all weights kept) over the prunable tensors `shapes`, in this order (the
    /// order fixes random scores and global tie-breaking).
    pub fn new(config: PrunerConfig, shapes: Vec<(String, Vec<usize>)>) -> Result<Self> {
        config.validate(&shapes)?;
        let mut parts = vec![Vec::new(); config.groups.len() + 1];
        for (n, s) in &shapes {
            let k = config.groups.iter().position(|g| g.tensors.contains(n)).map_or(0, |i| i + 1);
            parts[k].push((n.clone(), s.clone()));
        }
        let mut masks = MaskSet::new();
        for (n, s) in &shapes {
            masks.insert(n.clone(), Mask::ones(s));
        }
        let acc = if config.criterion.needs_grad_statistics() {
            let acc = GradAccumulator::for_criterion(config.criterion)?;
            Some(if config.options.movement_adam && config.criterion == Criterion::Movement { acc.with_adam_movement() } else { acc })
        } else {
            None
        };
        let window = match config.criterion {
            Criterion::Obs { grads, .. } => Some(GradWindow::new(grads)?),
            _ => None,
        };
        let itop = config.regrow.map(|_| ItopTracker::new(&masks));
        Ok(Self { config, shapes, parts, masks, acc, window, pending_before: None, aside: BTreeMap::new(), itop, one_shot_done: false, schedule_ended: false })
    }
    /// [`Pruner::new`] over the given `(name, Var)` pairs (all of them prunable).
    pub fn for_params(config: PrunerConfig, prunable: &[(String, Var)]) -> Result<Self> {
        Self::new(config, prunable.iter().map(|(n, v)| (n.clone(), v.dims().to_vec())).collect())
    }
    /// Resume from `masks` (e.g. the previous IMP round's checkpoint); tensors it does not name
    /// stay dense. Errors on an unknown name or a shape mismatch.
    pub fn with_masks(mut self, masks: MaskSet) -> Result<Self> {
        for (n, m) in masks.iter() {
            let (_, s) = self.shapes.iter().find(|(k, _)| k == n).ok_or_else(|| PruneError::UnknownParam(n.clone()))?;
            m.check_shape(n, s)?;
        }
        for (n, m) in masks.iter() {
            self.masks.insert(n.clone(), m.clone());
        }
        self.pending_before = None;
        if let Some(t) = self.itop.as_mut() {
            *t = ItopTracker::new(&self.masks);
        }
        Ok(self)
    }

    pub fn config(&self) -> &PrunerConfig {
        &self.config
    }
    /// The prunable tensors, in order.
    pub fn shapes(&self) -> &[(String, Vec<usize>)] {
        &self.shapes
    }
    /// The current masks (one per prunable tensor).
    pub fn masks(&self) -> &MaskSet {
        &self.masks
    }
    pub fn into_masks(self) -> MaskSet {
        self.masks
    }
    /// Pruned fraction over the prunable tensors.
    pub fn sparsity(&self) -> f64 {
        self.masks.sparsity()
    }
    /// ITOP's R_s, the fraction of weights ever active (Liu et al. 2021, §4); `None` without regrowth.
    pub fn itop_rate(&self) -> Option<f64> {
        self.itop.as_ref().map(ItopTracker::rate)
    }
    /// The pruner's own gradient statistics (criteria that need them).
    pub fn accumulator(&self) -> Option<&GradAccumulator> {
        self.acc.as_ref()
    }
    /// The pruner's last m gradients ([`Criterion::Obs`]); `None` once the last pruning event's
    /// OBS update is done.
    pub fn grad_window(&self) -> Option<&GradWindow> {
        self.window.as_ref()
    }

    /// The prunable `(name, Var)` pairs of `params`, in the pruner's order; errors when one is
    /// missing or has another shape. Other entries of `params` are ignored.
    pub fn select(&self, params: &[(String, Var)]) -> Result<Vec<(String, Var)>> {
        self.shapes
            .iter()
            .map(|(n, s)| {
                let (_, v) = params.iter().find(|(k, _)| k == n).ok_or_else(|| PruneError::UnknownParam(n.clone()))?;
                if v.dims() != s.as_slice() {
                    return Err(PruneError::ShapeMismatch { name: n.clone(), expected: s.clone(), got: v.dims().to_vec() });
                }
                Ok((n.clone(), v.clone()))
            })
            .collect()
    }

    /// Adds one step's gradients to the pruner's statistics (movement, Taylor, Fisher; the window of
    /// the last m gradients for block OBS): call after `backward` (and clipping), before the
    /// optimizer step. A no-op for other criteria.
    pub fn observe(&mut self, params: &[(String, Var)], grads: &GradStore) -> Result<()> {
        if self.acc.is_none() && self.window.is_none() {
            return Ok(());
        }
        let sel = self.select(params)?;
        if let Some(w) = self.window.as_mut() {
            w.update(&sel, grads)?;
        }
        self.acc.as_mut().map_or(Ok(()), |a| a.update_with_aside(&sel, grads, &self.aside))
    }

    /// Block OBS (oBERT eq. 3 and 5): after a pruning event ([`Pruner::step`], [`Pruner::prune_to`],
    /// ...), moves the kept weights of `params` by δw = −F⁻¹_{:,Q} ([F⁻¹]_{Q,Q})⁻¹ w_Q for the
    /// weights Q pruned since the last call, and sets w_Q to exactly 0 ([`obs::update`]). Call it
    /// before installing the new masks in the optimizer. `None` when nothing is pending, and
    /// always for other criteria.
    pub fn obs_update(&mut self, params: &[(String, Var)]) -> Result<Option<ObsUpdate>> {
        let (Criterion::Obs { block, .. }, Some(window)) = (self.config.criterion, self.window.as_ref()) else {
            return Ok(None);
        };
        let Some(before) = self.pending_before.as_ref() else { return Ok(None) };
        let sel = self.select(params)?;
        let blocks = obs::Blocks::for_granularity(block, self.config.granularity, self.config.options.obs_tiles);
        let out = obs::update(window, &sel, before, &self.masks, blocks, self.config.options.fisher_damp)?;
        self.pending_before = None;
        self.release_window();
        Ok(Some(out))
    }

    /// The criterion's scores of the prunable tensors of `params` (see [`Criterion::scores`]).
    pub fn scores(&self, params: &[(String, Var)], inputs: &mut Inputs<'_>) -> Result<Scores> {
        let sel = self.select(params)?;
        let acc = inputs.accumulator.or(self.acc.as_ref());
        let held = Held { acc, window: self.window.as_ref(), granularity: self.config.granularity };
        self.config.criterion.scores_with(&sel, self.current(), inputs, held, &self.config.options)
    }

    /// The masks to pass as "current" (`None` while nothing is pruned, as callers of [`prune`] do).
    fn current(&self) -> Option<&MaskSet> {
        (self.masks.count_kept() < self.masks.numel()).then_some(&self.masks)
    }

    /// Per-part sparsity targets for a schedule sparsity `s` (round `r` for IMP's per-round groups).
    fn targets(&self, s: f64, round: Option<usize>) -> Result<Vec<f64>> {
        let mut t = vec![s];
        for g in &self.config.groups {
            t.push(match (g.rate, self.config.schedule, round) {
                (GroupRate::Scale(f), _, _) => check_sparsity(f * s)?,
                (GroupRate::Round(rate), Schedule::Imp { rounds, rewind, .. }, Some(r)) => Schedule::Imp { rounds, rate, rewind }.round_sparsity(r)?,
                (GroupRate::Round(_), _, _) => {
                    return Err(PruneError::Unsupported { what: "a per-round group rate".into(), why: "it needs an IMP round" });
                }
            });
        }
        Ok(t)
    }

    /// One pruning event from `scores`: every part to its target with the granularity and the
    /// allocation (restricted to the part), never reviving a pruned weight. With `skip_reached`,
    /// parts already at or above their target are left alone. Returns whether any part was pruned.
    fn apply(&mut self, targets: &[f64], scores: &Scores, skip_reached: bool) -> Result<bool> {
        let mut changed = false;
        let mut out = self.masks.clone();
        for (part, &target) in self.parts.iter().zip(targets) {
            if part.is_empty() {
                continue;
            }
            check_sparsity(target)?;
            let (numel, kept) = part.iter().fold((0, 0), |(n, k), (name, s)| {
                (n + s.iter().product::<usize>(), k + self.masks.get(name).map_or(0, Mask::count_kept))
            });
            let current = if numel == 0 { 0.0 } else { 1.0 - kept as f64 / numel as f64 };
            if skip_reached && target <= current + 1e-12 {
                continue;
            }
            let mut alloc = self.config.allocation.clone();
            alloc.keep_dense.retain(|k| part.iter().any(|(n, _)| n == k));
            let revive = self.config.revive;
            let m = prune(scores, part, target, self.config.granularity, &alloc, if revive { None } else { self.current() })?;
            for (n, mk) in m.iter() {
                out.insert(n.clone(), if revive { mk.clone() } else { mk.and(self.masks.require(n)?)? });
            }
            changed = true;
        }
        if changed && (self.window.is_some() || self.config.revive) && self.pending_before.is_none() {
            self.pending_before = Some(std::mem::replace(&mut self.masks, out));
        } else {
            self.masks = out;
        }
        Ok(changed)
    }

    /// Prunes now to `sparsity` (group rates applied), scoring `params` with the criterion in
    /// [`PrunerConfig::iterations`] rounds s_k = 1 − (1 − s)^{k/n} (SynFlow's Alg. 1; one round = one-shot).
    pub fn prune_to(&mut self, sparsity: f64, params: &[(String, Var)], inputs: &mut Inputs<'_>) -> Result<&MaskSet> {
        check_sparsity(sparsity)?;
        let n = self.config.iterations;
        for k in 1..=n {
            let s_k = if n == 1 { sparsity } else { 1.0 - (1.0 - sparsity).powf(k as f64 / n as f64) };
            let scores = self.scores(params, inputs)?;
            let targets = self.targets(s_k, None)?;
            self.apply(&targets, &scores, false)?;
        }
        Ok(&self.masks)
    }

    /// Prunes now to `sparsity` from given `scores` (one round; e.g. OBS scores computed elsewhere).
    pub fn prune_scores(&mut self, sparsity: f64, scores: &Scores) -> Result<&MaskSet> {
        let targets = self.targets(check_sparsity(sparsity)?, None)?;
        self.apply(&targets, scores, false)?;
        Ok(&self.masks)
    }

    /// The one-shot prune of a one-shot schedule, now, whatever the step.
    pub fn one_shot(&mut self, params: &[(String, Var)], inputs: &mut Inputs<'_>) -> Result<&MaskSet> {
        let Schedule::OneShot { sparsity, .. } = self.config.schedule else {
            return Err(PruneError::Unsupported { what: "Pruner::one_shot".into(), why: "the schedule is not one-shot" });
        };
        self.prune_to(sparsity, params, inputs)?;
        self.one_shot_done = true;
        Ok(&self.masks)
    }

    /// Sparsity and masks of IMP round `r` (Frankle & Carbin 2019, Alg. 1 step 3): scores of the
    /// trained `params`, every part to its round sparsity (s_r = 1 − (1 − p)^r or r·p, per
    /// [`RoundRate`]), never reviving what earlier rounds pruned. Round 0 is dense.
    pub fn round(&mut self, r: usize, params: &[(String, Var)], inputs: &mut Inputs<'_>) -> Result<&MaskSet> {
        let targets = self.round_targets(r)?;
        if r > 0 {
            let scores = self.scores(params, inputs)?;
            self.apply(&targets, &scores, false)?;
        }
        Ok(&self.masks)
    }

    /// [`Pruner::round`] from given `scores`.
    pub fn round_scores(&mut self, r: usize, scores: &Scores) -> Result<&MaskSet> {
        let targets = self.round_targets(r)?;
        if r > 0 {
            self.apply(&targets, scores, false)?;
        }
        Ok(&self.masks)
    }

    fn round_targets(&self, r: usize) -> Result<Vec<f64>> {
        let Schedule::Imp { rounds, .. } = self.config.schedule else {
            return Err(PruneError::Unsupported { what: "Pruner::round".into(), why: "the schedule is not IMP" });
        };
        if r > rounds {
            return Err(PruneError::BadValue { what: "IMP round", value: r as f64, why: "past the configured number of rounds" });
        }
        self.targets(self.config.schedule.round_sparsity(r)?, Some(r))
    }

    /// The schedule's target sparsity if `step` is a pruning event (before group rates): one-shot
    /// at its step; gradual (Zhu & Gupta 2017, eq. 1) at t₀ + kΔt ≤ t_end and at t_end itself, so
    /// the final sparsity is reached even when t_end is off the Δt grid; IMP never (use [`Pruner::round`]).
    pub fn target_at(&self, step: usize) -> Option<f64> {
        match self.config.schedule {
            Schedule::OneShot { sparsity, step: s } => (step == s).then_some(sparsity),
            Schedule::Gradual { final_sparsity, end, .. } => {
                if step == end {
                    Some(final_sparsity)
                } else {
                    self.config.schedule.is_update_step(step).then(|| self.config.schedule.sparsity_at(step))
                }
            }
            Schedule::Imp { .. } => None,
        }
    }

    /// After training step `step`: prunes when the schedule says so and returns the new masks
    /// (install them with the optimizer), else `None`. Without regrowth, parts already at their
    /// target are skipped and nothing is revived. With regrowth this is one DST update
    /// ([`Pruner::dst_update`]) on the [`UpdateSchedule`] clock.
    pub fn step(&mut self, step: usize, params: &[(String, Var)], inputs: &mut Inputs<'_>) -> Result<Option<&MaskSet>> {
        if self.config.regrow.is_some() {
            return Ok(self.dst_update(step, params, inputs)?.then_some(&self.masks));
        }
        let Some(s) = self.target_at(step) else { return Ok(None) };
        if matches!(self.config.schedule, Schedule::OneShot { .. }) {
            if self.one_shot_done {
                return Ok(None);
            }
            return self.one_shot(params, inputs).map(Some);
        }
        let targets = self.targets(s, None)?;
        // Non-monotone masks are ranked again at every event, also once the target is reached.
        let revive = self.config.revive;
        let changed = if self.reached(&targets) && !revive {
            false
        } else {
            let scores = self.scores(params, inputs)?;
            self.apply(&targets, &scores, !revive)?
        };
        if matches!(self.config.schedule, Schedule::Gradual { end, .. } if step >= end) {
            self.schedule_ended = true;
            self.release_window();
        }
        Ok(changed.then_some(&self.masks))
    }

    /// Whether every part is at or above its sparsity target.
    fn reached(&self, targets: &[f64]) -> bool {
        self.parts.iter().zip(targets).all(|(p, &t)| {
            let (n, k) = p.iter().fold((0, 0), |(n, k), (name, s)| (n + s.iter().product::<usize>(), k + self.masks.get(name).map_or(0, Mask::count_kept)));
            p.is_empty() || n == 0 || t <= 1.0 - k as f64 / n as f64 + 1e-12
        })
    }

    /// Whether no pruning event can come any more: a pruner without regrowth and nothing pending
    /// whose one-shot prune is done or whose gradual schedule has had its last event.
    pub(crate) fn pruning_done(&self) -> bool {
        if self.config.regrow.is_some() || self.pending_before.is_some() {
            return false;
        }
        match self.config.schedule {
            Schedule::OneShot { .. } => self.one_shot_done,
            Schedule::Gradual { .. } => self.schedule_ended,
            Schedule::Imp { .. } => false,
        }
    }

    /// Drops the OBS gradient window (m gradients of every prunable weight) once no event can
    /// need it: it would only be filled, and saved with a resumable run's state, for nothing.
    fn release_window(&mut self) {
        if self.pruning_done() {
            self.window = None;
        }
    }

    /// A random start at exact per-tensor counts under the allocation ([`dst::random_masks`]): the
    /// schedule's one-shot sparsity (SET, RigL, static sparse training) or gradual initial sparsity
    /// (GraNet). Replaces the current masks; a one-shot schedule counts as done.
    pub fn start_random(&mut self) -> Result<&MaskSet> {
        let s = match self.config.schedule {
            Schedule::OneShot { sparsity, .. } => sparsity,
            Schedule::Gradual { initial, .. } => initial,
            Schedule::Imp { .. } => return Err(PruneError::Unsupported { what: "a random start".into(), why: "IMP starts dense" }),
        };
        self.masks = dst::random_masks(&self.shapes, s, &self.config.allocation, self.config.options.seed)?;
        self.pending_before = None;
        self.one_shot_done = true;
        if let Some(t) = self.itop.as_mut() {
            *t = ItopTracker::new(&self.masks);
        }
        Ok(&self.masks)
    }

    /// One DST mask update after `step` finished steps (false off the clock). Per tensor `l` with
    /// `k` active weights and drop fraction f = α/2·(1 + cos(tπ/T_end)):
    /// * one-shot schedule (SET / RigL Alg. 1): drop round(f·k) smallest |w|, grow as many by the
    ///   rule ([`dst::drop_and_grow`]; SET's stream is seeded with seed·1000003 + 64·step + l);
    /// * gradual schedule (GraNet Alg. 1): keep n = min(k, ERK count at the cubic sparsity) largest
    ///   |w|, then drop round(f·n) more and regrow as many, never where a weight was active when
    ///   the update began ([`dst::granet_update`]); α = 0 is plain GMP on the DST clock.
    ///
    /// `Gradient` growth reads `inputs.dense_grads`.
    pub fn dst_update(&mut self, step: usize, params: &[(String, Var)], inputs: &mut Inputs<'_>) -> Result<bool> {
        let Some(Regrow { update, grow }) = self.config.regrow else {
            return Err(PruneError::Unsupported { what: "Pruner::dst_update".into(), why: "the configuration has no grow rule" });
        };
        if !update.is_update_step(step) {
            return Ok(false);
        }
        let frac = update.drop_fraction(step);
        let targets = match self.config.schedule {
            Schedule::Gradual { .. } => Some(dst::kept_counts(&self.shapes, self.config.schedule.sparsity_at(step), &self.config.allocation)?),
            _ => None,
        };
        let sel = self.select(params)?;
        let seed = self.config.options.seed;
        let grad = |name: &str| -> Result<&[f32]> {
            let g = inputs.dense_grads.ok_or(PruneError::MissingInput { criterion: "gradient growth", needs: "dense gradients (Inputs::with_dense_grads)" })?;
            g.get(name).map(Vec::as_slice).ok_or_else(|| PruneError::NoGradient(name.into()))
        };
        let mut out = MaskSet::new();
        for (li, (name, var)) in sel.iter().enumerate() {
            let w: Vec<f32> = var.as_tensor().flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?;
            let mask = self.masks.require(name)?;
            let kept = mask.count_kept();
            let random = Grow::Random { seed: seed.wrapping_mul(1_000_003).wrapping_add((step * 64 + li) as u64) };
            let new = match &targets {
                None => {
                    let n = (frac * kept as f64).round() as usize;
                    let rule = match grow {
                        GrowRule::Gradient => Grow::Gradient(grad(name)?),
                        GrowRule::Random => random,
                    };
                    dst::drop_and_grow(name, &w, mask, n, rule, None)?.mask
                }
                Some(t) => {
                    let n_keep = t[name].min(kept);
                    let regrow = (frac * n_keep as f64).round() as usize;
                    match grow {
                        _ if regrow == 0 => dst::magnitude_prune_to(name, &w, mask, n_keep)?,
                        GrowRule::Gradient => dst::granet_update(name, &w, grad(name)?, mask, n_keep, regrow)?.mask,
                        GrowRule::Random => {
                            let pruned = dst::magnitude_prune_to(name, &w, mask, n_keep)?;
                            dst::drop_and_grow(name, &w, &pruned, regrow, random, Some(mask))?.mask
                        }
                    }
                }
            };
            if let Some(t) = self.itop.as_mut() {
                t.observe(name, &new)?;
            }
            out.insert(name.clone(), new);
        }
        self.masks = out;
        Ok(true)
    }
}
