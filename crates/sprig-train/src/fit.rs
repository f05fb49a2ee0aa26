//! One training loop with hooks: epochs × batches, a caller-supplied step that builds the loss,
//! backward, optional gradient clipping (Pascanu et al. 2013), the learning-rate schedule, the
//! mask-aware optimizer step, and [`Hooks`] where pruning, dynamic sparse training, evaluation and
//! checkpointing plug in. Modelled on burn-train's `Learner` (checkpointer, early stopping,
//! event processor with metrics), at a fraction of its size.
//!
//! The order of operations, which a seeded run reproduces bit for bit:
//!
//! ```text
//! snapshot if snapshot_step == 0
//! for epoch in 0..epochs:
//!     for batch in order.batches(epoch):                 (batches shorter than batch_size skipped
//!                                                         when drop_last; they are not steps)
//!         opt.set_learning_rate(lr(step))                (unless Lr::Fixed)
//!         loss = step(model, batch, info)                (forward + loss; `step` = steps done)
//!         loss NaN/inf -> "error" metrics record, Err(TrainError::NonFinite { step, .. })
//!         grads = loss.backward(); clip_grad_norm(grads, params, max) if clipping
//!         hooks.before_step(model, ctx, grads)           (ctx.step = steps done, this one not)
//!         opt.step(grads); step += 1
//!         snapshot if step == snapshot_step
//!         hooks.after_step(model, ctx, loss)             (ctx.step = steps done, this one too)
//!         "train" metrics record, progress
//!         every eval_every steps: hooks.evaluate -> new best? hooks.checkpoint
//!         stop when step == total_steps or a hook called ctx.stop()
//!     at epoch end (also of an epoch cut short): hooks.evaluate -> new best? hooks.checkpoint
//!         (if eval_each_epoch and not already evaluated at this step), then hooks.epoch_end
//! ```
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::Serialize;

use crate::error::Result;
use crate::optim::{clip_grad_norm, Optimizer};
use crate::run::{progress_bar, MetricsLog};
use crate::schedule::{LinearWarmupDecay, LrSchedule};
use crate::state::TrainState;
use crate::{invalid, TrainError};

#[path = "fit_resume.rs"]
mod resume;
use resume::{restore, save, EpochProgress};

/// Where the batches of each epoch come from: lists of example indices.
pub enum BatchOrder<'a> {
    /// [`sprig_data::batch::batch_indices`]`(n, batch_size, true, seed, epoch)`: a ChaCha8
    /// shuffle per (seed, epoch) (the vision and DST loops).
    Shuffled { n: usize, batch_size: usize, seed: u64 },
    /// [`sprig_data::batch::bucketed_batch_indices`]`(lengths, batch_size, seed, epoch)`:
    /// length-bucketed batches (the BERT loops).
    Bucketed { lengths: &'a [usize], batch_size: usize, seed: u64 },
    /// Any other order: `order(epoch)` gives the epoch's batches, of which `steps_per_epoch`
    /// are expected (it sizes the schedule and the progress bar).
    Custom { steps_per_epoch: usize, order: Box<dyn FnMut(usize) -> Vec<Vec<usize>> + 'a> },
}

impl BatchOrder<'_> {
    fn batch_size(&self) -> Option<usize> {
        match self {
            Self::Shuffled { batch_size, .. } | Self::Bucketed { batch_size, .. } => Some(*batch_size),
            Self::Custom { .. } => None,
        }
    }

    /// Optimizer steps per epoch (full batches only with `drop_last`).
    fn steps_per_epoch(&self, drop_last: bool) -> Result<usize> {
        let n = match self {
            Self::Shuffled { n, .. } => *n,
            Self::Bucketed { lengths, .. } => lengths.len(),
            Self::Custom { steps_per_epoch, .. } => return Ok(*steps_per_epoch),
        };
        let bs = self.batch_size().unwrap_or(0);
        if n == 0 || bs == 0 {
            return Err(invalid!("training needs examples and a batch size >= 1 (got {n} examples, batch size {bs})"));
        }
        Ok(if drop_last { n / bs } else { n.div_ceil(bs) })
    }

    fn batches(&mut self, epoch: usize) -> Vec<Vec<usize>> {
        match self {
            Self::Shuffled { n, batch_size, seed } => sprig_data::batch::batch_indices(*n, *batch_size, true, *seed, epoch as u64),
            Self::Bucketed { lengths, batch_size, seed } => {
                sprig_data::batch::bucketed_batch_indices(lengths, *batch_size, *seed, epoch as u64)
            }
            Self::Custom { order, .. } => order(epoch),
        }
    }
}

/// The learning rate before each optimizer step.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Lr {
    /// Leave the optimizer's rate alone (it is never set).
    #[default]
    Fixed,
    /// [`LinearWarmupDecay::lr`]`(step)` (BERT fine-tuning, Devlin et al. 2019).
    WarmupDecay(LinearWarmupDecay),
    /// [`LrSchedule::lr`]`(base, step, total)` (constant or cosine; the DST runs).
    Schedule { schedule: LrSchedule, base: f64, total: usize },
}

impl Lr {
    /// The rate for the update that follows `step` finished steps; `None` for [`Lr::Fixed`].
    pub fn at(&self, step: usize) -> Option<f64> {
        match self {
            Self::Fixed => None,
            Self::WarmupDecay(s) => Some(s.lr(step)),
            Self::Schedule { schedule, base, total } => Some(schedule.lr(*base, step, *total)),
        }
    }
}

/// Where the step closure is: `step` optimizer steps are done, this batch makes the next.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepInfo {
    pub epoch: usize,
    pub step: usize,
    pub total_steps: usize,
    /// The optimizer's learning rate for this step.
    pub lr: f64,
}

/// What the step closure returns: the batch's loss (a scalar with its autograd graph) and how many
/// examples it covered (for examples/s).
pub struct StepLoss {
    pub loss: Tensor,
    pub examples: usize,
}

/// What a hook sees. `step` counts finished optimizer steps (see the module doc for when).
pub struct Ctx<'a> {
    pub epoch: usize,
    pub step: usize,
    pub total_steps: usize,
    /// The current batch's example indices (empty at evaluation and epoch end).
    pub batch: &'a [usize],
    /// The trained parameters; a hook that replaces one (a DST remap) updates this list too, as
    /// it is what gradients are clipped over and snapshots copy.
    pub params: &'a mut Vec<(String, Var)>,
    /// The optimizer: install masks here ([`Optimizer::set_mask`]).
    pub opt: &'a mut dyn Optimizer,
    metrics: Option<&'a mut MetricsLog>,
    stop: &'a mut bool,
}

impl Ctx<'_> {
    /// Appends `record` to the run's metrics log (a no-op without one).
    pub fn log<T: Serialize>(&mut self, record: &T) -> Result<()> {
        log_to(&mut self.metrics, record)
    }
    /// Asks the loop to stop (early stopping, interruption) after this step's or this
    /// evaluation's hooks; the epoch-end evaluation and [`Hooks::epoch_end`] still run.
    pub fn stop(&mut self) {
        *self.stop = true;
    }
}

fn log_to<T: Serialize>(metrics: &mut Option<&mut MetricsLog>, record: &T) -> Result<()> {
    match metrics {
        Some(m) => m.log(record),
        None => Ok(()),
    }
}

/// Callbacks of the loop, all no-ops by default. `M` is the caller's model (or any state the
/// step closure and the hooks share).
pub trait Hooks<M: ?Sized> {
    /// After backward (and clipping), before the optimizer step: accumulate scores from the
    /// gradients (movement pruning), or edit them.
    fn before_step(&mut self, _model: &mut M, _ctx: &mut Ctx, _grads: &mut GradStore) -> Result<()> {
        Ok(())
    }
    /// After the optimizer step (`ctx.step` includes it): a pruner or DST prune-and-grow installs
    /// new masks through `ctx.opt`. `loss` is this step's loss.
    fn after_step(&mut self, _model: &mut M, _ctx: &mut Ctx, _loss: f64) -> Result<()> {
        Ok(())
    }
    /// Evaluates the model; `Some(score)` (higher is better, e.g. dev accuracy) takes part in
    /// best-on-dev tracking.
    fn evaluate(&mut self, _model: &mut M, _ctx: &mut Ctx) -> Result<Option<f64>> {
        Ok(None)
    }
    /// Called right after [`Hooks::evaluate`] returned a new best score (strictly above every
    /// earlier one; the first score always is): save the best checkpoint here.
    fn checkpoint(&mut self, _model: &mut M, _ctx: &mut Ctx, _score: f64) -> Result<()> {
        Ok(())
    }
    /// At the end of every epoch that ran, after its evaluation; `mean_loss` over its steps.
    fn epoch_end(&mut self, _model: &mut M, _ctx: &mut Ctx, _mean_loss: f64) -> Result<()> {
        Ok(())
    }
    /// A resumable run ([`Fit::resumable`]) is saving: add the hook's own state (a pruner's
    /// masks and scores, the best checkpoint kept so far, the model's random generators) under a
    /// prefix of its own. Hooks without state keep the default.
    fn save_state(&mut self, _model: &mut M, _state: &mut TrainState) -> Result<()> {
        Ok(())
    }
    /// A resumed run starts: restore what [`Hooks::save_state`] saved.
    fn load_state(&mut self, _model: &mut M, _state: &TrainState) -> Result<()> {
        Ok(())
    }
}

/// No hooks.
impl<M: ?Sized> Hooks<M> for () {}

/// A closure as an [`Hooks::after_step`] hook: `AfterStep(|model, ctx| ...)`.
pub struct AfterStep<F>(pub F);

impl<M: ?Sized, F: FnMut(&mut M, &mut Ctx) -> Result<()>> Hooks<M> for AfterStep<F> {
    fn after_step(&mut self, model: &mut M, ctx: &mut Ctx, _loss: f64) -> Result<()> {
        (self.0)(model, ctx)
    }
}

/// Two hooks in sequence (a pruner and an evaluator): `A`'s method runs first; `evaluate` returns
/// `A`'s score, or `B`'s when `A` has none.
impl<M: ?Sized, A: Hooks<M>, B: Hooks<M>> Hooks<M> for (A, B) {
    fn before_step(&mut self, m: &mut M, ctx: &mut Ctx, grads: &mut GradStore) -> Result<()> {
        self.0.before_step(m, ctx, grads)?;
        self.1.before_step(m, ctx, grads)
    }
    fn after_step(&mut self, m: &mut M, ctx: &mut Ctx, loss: f64) -> Result<()> {
        self.0.after_step(m, ctx, loss)?;
        self.1.after_step(m, ctx, loss)
    }
    fn evaluate(&mut self, m: &mut M, ctx: &mut Ctx) -> Result<Option<f64>> {
        let a = self.0.evaluate(m, ctx)?;
        Ok(a.or(self.1.evaluate(m, ctx)?))
    }
    fn checkpoint(&mut self, m: &mut M, ctx: &mut Ctx, score: f64) -> Result<()> {
        self.0.checkpoint(m, ctx, score)?;
        self.1.checkpoint(m, ctx, score)
    }
    fn epoch_end(&mut self, m: &mut M, ctx: &mut Ctx, mean_loss: f64) -> Result<()> {
        self.0.epoch_end(m, ctx, mean_loss)?;
        self.1.epoch_end(m, ctx, mean_loss)
    }
    fn save_state(&mut self, m: &mut M, state: &mut TrainState) -> Result<()> {
        self.0.save_state(m, state)?;
        self.1.save_state(m, state)
    }
    fn load_state(&mut self, m: &mut M, state: &TrainState) -> Result<()> {
        self.0.load_state(m, state)?;
        self.1.load_state(m, state)
    }
}

/// The best evaluation so far.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Best {
    pub score: f64,
    pub epoch: usize,
    pub step: usize,
}

/// What a run returns.
#[derive(Debug)]
pub struct FitOutcome {
    /// Optimizer steps taken.
    pub steps: usize,
    /// Epochs that ran (the last one possibly cut short by `max_steps` or a stop).
    pub epochs_run: usize,
    /// The last step's loss.
    pub last_loss: f64,
    /// Mean loss of each epoch that ran, over its steps.
    pub epoch_loss: Vec<f64>,
    /// Wall seconds of each epoch (steps and hooks, evaluation included).
    pub epoch_seconds: Vec<f64>,
    /// Wall seconds of the steps alone (from setting the rate to the end of `after_step`).
    pub train_seconds: f64,
    /// Examples seen (sum of [`StepLoss::examples`]).
    pub examples: usize,
    pub best: Option<Best>,
    /// The trained parameters' values after `snapshot_step` steps (for rewinding, Frankle et al.
    /// 2020), in `params` order.
    pub snapshot: Option<Vec<(String, Tensor)>>,
}

#[derive(Serialize)]
struct TrainRecord {
    kind: &'static str,
    epoch: usize,
    step: usize,
    loss: f64,
    lr: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    grad_norm: Option<f64>,
    examples_per_second: f64,
}

/// The loop, configured by a builder. `vision::train` is, for example:
///
/// ```text
/// Fit::new(cfg.epochs, BatchOrder::Shuffled { n: split.len(), batch_size: cfg.batch_size, seed: cfg.data_seed })
///     .snapshot_at(cfg.snapshot_step)
///     .run(&mut model, opt.as_mut(), model_params, |m, idx, _| {
///         let (x, y) = batch_tensor(split, idx, hw, &dev)?;
///         Ok(StepLoss { loss: cross_entropy(&m.forward(&x)?, &y)?, examples: idx.len() })
///     }, &mut AfterStep(|m, ctx| after_step(ctx.step, m)))
/// ```
pub struct Fit<'a> {
    epochs: usize,
    order: BatchOrder<'a>,
    drop_last: bool,
    max_steps: Option<usize>,
    lr: Lr,
    clip: Option<f64>,
    eval_every: Option<usize>,
    eval_each_epoch: bool,
    snapshot_step: Option<usize>,
    progress: Option<String>,
    metrics: Option<&'a mut MetricsLog>,
    resume: Option<Resume>,
}

/// Where and how often a resumable run saves its state ([`Fit::resumable`]).
pub struct Resume {
    /// The state file ([`TrainState`], replaced atomically at each save).
    pub path: std::path::PathBuf,
    /// Save after every `every` steps (0: only at epoch ends) and at the end of every epoch.
    pub every: usize,
    /// A saved state to continue from (the caller loads it, e.g. from `path`).
    pub from: Option<TrainState>,
}

impl<'a> Fit<'a> {
    /// `epochs` passes over `order`; no schedule, clipping, evaluation, snapshot or logging.
    pub fn new(epochs: usize, order: BatchOrder<'a>) -> Self {
        Self {
            epochs,
            order,
            drop_last: false,
            max_steps: None,
            lr: Lr::Fixed,
            clip: None,
            eval_every: None,
            eval_each_epoch: false,
            snapshot_step: None,
            progress: None,
            metrics: None,
            resume: None,
        }
    }
    /// Skip batches shorter than the batch size (in-batch negatives need full batches); they do
    /// not count as steps. Not for [`BatchOrder::Custom`].
    pub fn drop_last(mut self, on: bool) -> Self {
        self.drop_last = on;
        self
    }
    /// Stop after `n` optimizer steps (the current epoch still ends with its evaluation).
    pub fn max_steps(mut self, n: Option<usize>) -> Self {
        self.max_steps = n;
        self
    }
    pub fn lr(mut self, lr: Lr) -> Self {
        self.lr = lr;
        self
    }
    /// Clip the global gradient norm to `max_norm` ([`clip_grad_norm`]; the norm is computed,
    /// and logged, even when `max_norm <= 0` disables the clipping itself).
    pub fn clip(mut self, max_norm: Option<f64>) -> Self {
        self.clip = max_norm;
        self
    }
    /// Evaluate after every `n` steps.
    pub fn eval_every(mut self, n: Option<usize>) -> Self {
        self.eval_every = n;
        self
    }
    /// Evaluate at the end of every epoch.
    pub fn eval_each_epoch(mut self, on: bool) -> Self {
        self.eval_each_epoch = on;
        self
    }
    /// Copy the parameters after `k` steps (`0`: before training) into [`FitOutcome::snapshot`].
    pub fn snapshot_at(mut self, k: Option<usize>) -> Self {
        self.snapshot_step = k;
        self
    }
    /// Show a progress bar with this prefix (hidden without a terminal; then `tracing` logs about
    /// 20 progress lines per run at info level instead of debug).
    pub fn progress(mut self, prefix: impl Into<String>) -> Self {
        self.progress = Some(prefix.into());
        self
    }
    /// Append a `"train"` record per step (and an `"error"` record on a non-finite loss) to
    /// `log`; hooks append theirs through [`Ctx::log`].
    pub fn metrics(mut self, log: &'a mut MetricsLog) -> Self {
        self.metrics = Some(log);
        self
    }

    /// Save the run's state to `r.path` as [`Resume`] says, and continue from `r.from` when given:
    /// the loop's counters, the trained parameters, the optimizer's state
    /// ([`Optimizer::save_state`]) and every hook's ([`Hooks::save_state`]); the metrics log is cut
    /// back to what it held at the save. A resumed run continues bit for bit as the uninterrupted
    /// one would have (the batch order is a function of the seed and the epoch).
    pub fn resumable(mut self, r: Resume) -> Self {
        self.resume = Some(r);
        self
    }

    /// Optimizer steps the run will take: `epochs × steps per epoch`, capped by `max_steps`.
    pub fn total_steps(&self) -> Result<usize> {
        if self.epochs == 0 {
            return Err(invalid!("epochs must be >= 1"));
        }
        if self.max_steps == Some(0) || self.eval_every == Some(0) {
            return Err(invalid!("max_steps and eval_every must be >= 1 where set"));
        }
        if self.drop_last && self.order.batch_size().is_none() {
            return Err(invalid!("drop_last needs a batch order with a batch size (not Custom)"));
        }
        let total = self.epochs * self.order.steps_per_epoch(self.drop_last)?;
        let total = self.max_steps.map_or(total, |m| total.min(m));
        if total == 0 {
            return Err(invalid!("no training step: fewer examples than one full batch"));
        }
        Ok(total)
    }

    /// Trains. `params` are the trained parameters (what the optimizer holds): gradients are
    /// clipped over them and snapshots copy them. `step(model, batch, info)` runs the forward
    /// pass and returns the loss; `hooks` are called as the module doc shows.
    pub fn run<M: ?Sized, H: Hooks<M> + ?Sized>(
        mut self,
        model: &mut M,
        opt: &mut dyn Optimizer,
        params: Vec<(String, Var)>,
        mut step_fn: impl FnMut(&mut M, &[usize], &StepInfo) -> Result<StepLoss>,
        hooks: &mut H,
    ) -> Result<FitOutcome> {
        let total = self.total_steps()?;
        if let Some(k) = self.snapshot_step.filter(|&k| k > total) {
            return Err(invalid!("snapshot step {k} is past the end of training ({total} steps)"));
        }
        let bs = self.order.batch_size().unwrap_or(0);
        let pb = match &self.progress {
            Some(prefix) => progress_bar(total as u64, prefix),
            None => indicatif::ProgressBar::hidden(),
        };
        let log_every = (total / 20).max(1);
        let mut st = State { epoch: 0, step: 0, total, params, metrics: self.metrics.take(), stop: false };
        let mut out = FitOutcome {
            steps: 0,
            epochs_run: 0,
            last_loss: f64::NAN,
            epoch_loss: Vec::new(),
            epoch_seconds: Vec::new(),
            train_seconds: 0.0,
            examples: 0,
            best: None,
            snapshot: None,
        };
        if self.snapshot_step == Some(0) {
            out.snapshot = Some(snapshot(&st.params)?);
        }
        let mut at = EpochProgress::default();
        if let Some(state) = self.resume.as_mut().and_then(|r| r.from.take()) {
            at = restore(&state, total, model, opt, hooks, &mut st, &mut out)?;
            pb.set_position(st.step as u64);
            tracing::info!(step = st.step, total, epoch = at.epoch, "resumed from the saved training state");
        }
        // The pace of this process (steps since the start or the resume, wall clock with the
        // evaluations and saves) for the estimated time left in the log lines.
        let (t_run, step_run) = (Instant::now(), st.step);
        for epoch in at.epoch..self.epochs {
            st.epoch = epoch;
            let t_epoch = Instant::now();
            let resumed = std::mem::take(&mut at);
            let (mut loss_sum, mut n_steps, mut evaluated_at) = (resumed.loss_sum, resumed.n_steps, resumed.evaluated_at);
            let seconds_before = resumed.seconds;
            let batches = self.order.batches(epoch);
            let n_batches = batches.len();
            for (b, batch) in batches.into_iter().enumerate().skip(resumed.batches) {
                if self.drop_last && batch.len() < bs {
                    continue;
                }
                let t = Instant::now();
                if let Some(lr) = self.lr.at(st.step) {
                    opt.set_learning_rate(lr);
                }
                let info = StepInfo { epoch, step: st.step, total_steps: total, lr: opt.learning_rate() };
                let StepLoss { loss, examples } = step_fn(model, &batch, &info)?;
                let lv = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                if !lv.is_finite() {
                    pb.abandon();
                    tracing::error!(step = st.step, epoch, lr = info.lr, "loss became {lv}; training stopped");
                    let rec = serde_json::json!({"kind": "error", "epoch": epoch, "step": st.step, "loss": lv.to_string()});
                    log_to(&mut st.metrics, &rec)?;
                    return Err(TrainError::NonFinite { what: "loss", value: lv, step: st.step });
                }
                let mut grads = loss.backward()?;
                let grad_norm = match self.clip {
                    Some(max) => Some(clip_grad_norm(&mut grads, &st.vars(), max)?),
                    None => None,
                };
                hooks.before_step(model, &mut st.ctx(&batch, opt), &mut grads)?;
                opt.step(&grads)?;
                drop(grads);
                st.step += 1;
                if self.snapshot_step == Some(st.step) {
                    out.snapshot = Some(snapshot(&st.params)?);
                }
                hooks.after_step(model, &mut st.ctx(&batch, opt), lv)?;
                let dt = t.elapsed().as_secs_f64();
                out.train_seconds += dt;
                out.examples += examples;
                out.last_loss = lv;
                (loss_sum, n_steps) = (loss_sum + lv, n_steps + 1);
                let eps = examples as f64 / dt.max(1e-9);
                let rec = TrainRecord { kind: "train", epoch, step: st.step, loss: lv, lr: info.lr, grad_norm, examples_per_second: eps };
                log_to(&mut st.metrics, &rec)?;
                let mean = loss_sum / n_steps as f64;
                let rate = out.examples as f64 / out.train_seconds.max(1e-9);
                pb.set_message(format!("loss {mean:.4} {rate:.1} ex/s"));
                pb.inc(1);
                if pb.is_hidden() && (st.step.is_multiple_of(log_every) || st.step == total) {
                    if self.progress.is_some() {
                        let per_step = t_run.elapsed().as_secs_f64() / (st.step - step_run).max(1) as f64;
                        let minutes_left = ((total - st.step) as f64 * per_step / 6.0).round() / 10.0;
                        tracing::info!(step = st.step, total, epoch, loss = mean, examples_per_second = rate, minutes_left, "training");
                    } else {
                        tracing::debug!(step = st.step, total, epoch, loss = mean, "training");
                    }
                }
                if self.eval_every.is_some_and(|n| st.step.is_multiple_of(n)) {
                    evaluate(model, opt, hooks, &mut st, &mut out.best)?;
                    evaluated_at = Some(st.step);
                }
                if st.step >= total || st.stop {
                    break;
                }
                // The epoch's last batch is saved by the epoch-end save just below, not twice.
                if let Some(r) = self.resume.as_ref().filter(|r| r.every > 0 && st.step.is_multiple_of(r.every) && b + 1 < n_batches) {
                    let seconds = seconds_before + t_epoch.elapsed().as_secs_f64();
                    let at = EpochProgress { epoch, batches: b + 1, loss_sum, n_steps, evaluated_at, seconds };
                    save(&r.path, at, total, model, opt, hooks, &st, &out)?;
                }
            }
            let mean = loss_sum / n_steps.max(1) as f64;
            out.epochs_run = epoch + 1;
            out.epoch_loss.push(mean);
            if self.eval_each_epoch && evaluated_at != Some(st.step) {
                evaluate(model, opt, hooks, &mut st, &mut out.best)?;
            }
            hooks.epoch_end(model, &mut st.ctx(&[], opt), mean)?;
            let seconds = seconds_before + t_epoch.elapsed().as_secs_f64();
            out.epoch_seconds.push(seconds);
            tracing::debug!(epoch, step = st.step, loss = mean, seconds, "epoch done");
            if st.step >= total || st.stop {
                break;
            }
            if let Some(r) = &self.resume {
                let next = EpochProgress { epoch: epoch + 1, ..EpochProgress::default() };
                save(&r.path, next, total, model, opt, hooks, &st, &out)?;
            }
        }
        pb.finish_and_clear();
        out.steps = st.step;
        Ok(out)
    }
}

/// The loop's mutable state, lent to hooks as a [`Ctx`].
struct State<'a> {
    epoch: usize,
    step: usize,
    total: usize,
    params: Vec<(String, Var)>,
    metrics: Option<&'a mut MetricsLog>,
    stop: bool,
}

impl State<'_> {
    fn ctx<'b>(&'b mut self, batch: &'b [usize], opt: &'b mut dyn Optimizer) -> Ctx<'b> {
        Ctx {
            epoch: self.epoch,
            step: self.step,
            total_steps: self.total,
            batch,
            params: &mut self.params,
            opt,
            metrics: self.metrics.as_deref_mut(),
            stop: &mut self.stop,
        }
    }
    fn vars(&self) -> Vec<Var> {
        self.params.iter().map(|(_, v)| v.clone()).collect()
    }
}

/// Runs [`Hooks::evaluate`] and, on a new best score, [`Hooks::checkpoint`].
fn evaluate<M: ?Sized, H: Hooks<M> + ?Sized>(model: &mut M, opt: &mut dyn Optimizer, hooks: &mut H, st: &mut State, best: &mut Option<Best>) -> Result<()> {
    let Some(score) = hooks.evaluate(model, &mut st.ctx(&[], opt))? else { return Ok(()) };
    if best.is_none_or(|b| score > b.score) {
        hooks.checkpoint(model, &mut st.ctx(&[], opt), score)?;
        *best = Some(Best { score, epoch: st.epoch, step: st.step });
    }
    Ok(())
}

/// A copy of every parameter's current value, by name.
pub fn snapshot(params: &[(String, Var)]) -> Result<Vec<(String, Tensor)>> {
    Ok(params.iter().map(|(n, v)| Ok((n.clone(), v.as_tensor().copy()?))).collect::<candle_core::Result<_>>()?)
}
