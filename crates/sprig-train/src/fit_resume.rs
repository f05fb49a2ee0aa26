//! Saving and restoring the loop's state for [`super::Fit::resumable`].
use super::{Best, FitOutcome, Hooks, State};
use crate::error::Result;
use crate::invalid;
use crate::optim::Optimizer;
use crate::state::TrainState;

/// How far the current epoch got, as saved: batches of its order consumed (steps and skipped
/// short batches), the running loss, and its seconds so far. (serde_json's `float_roundtrip`
/// keeps the floats' bits.)
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct EpochProgress {
    pub(super) epoch: usize,
    pub(super) batches: usize,
    pub(super) loss_sum: f64,
    pub(super) n_steps: usize,
    pub(super) evaluated_at: Option<usize>,
    pub(super) seconds: f64,
}

/// Writes the loop's state at `at` (see [`super::Fit::resumable`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn save<M: ?Sized, H: Hooks<M> + ?Sized>(
    path: &std::path::Path,
    at: EpochProgress,
    total: usize,
    model: &mut M,
    opt: &mut dyn Optimizer,
    hooks: &mut H,
    st: &State,
    out: &FitOutcome,
) -> Result<()> {
    let mut state = TrainState::new();
    state.put("fit/total", &total)?;
    state.put("fit/step", &st.step)?;
    state.put("fit/at", &at)?;
    state.put("fit/examples", &out.examples)?;
    state.put_f64("fit/train_seconds", out.train_seconds);
    state.put_f64("fit/last_loss", out.last_loss);
    state.put("fit/epoch_loss", &out.epoch_loss)?;
    state.put("fit/epoch_seconds", &out.epoch_seconds)?;
    state.put("fit/best", &out.best.map(|b| (b.score, b.epoch, b.step)))?;
    state.put("fit/metrics_bytes", &st.metrics.as_ref().map(|m| m.len()))?;
    state.put("fit/params", &st.params.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>())?;
    for (n, v) in &st.params {
        state.put_tensor(format!("param/{n}"), v.as_tensor())?;
    }
    if let Some(snap) = &out.snapshot {
        for (n, t) in snap {
            state.put_tensor(format!("snapshot/{n}"), t)?;
        }
    }
    state.put("fit/snapshot", &out.snapshot.is_some())?;
    opt.save_state(&mut state)?;
    hooks.save_state(model, &mut state)?;
    state.save(path)?;
    tracing::debug!(step = st.step, path = %path.display(), "training state saved");
    Ok(())
}

/// Restores what [`save`] wrote; returns where the interrupted epoch stood.
pub(super) fn restore<M: ?Sized, H: Hooks<M> + ?Sized>(
    state: &TrainState,
    total: usize,
    model: &mut M,
    opt: &mut dyn Optimizer,
    hooks: &mut H,
    st: &mut State,
    out: &mut FitOutcome,
) -> Result<EpochProgress> {
    let saved_total: usize = state.get("fit/total")?;
    if saved_total != total {
        return Err(invalid!("the saved training state is of a run of {saved_total} steps; this run has {total}"));
    }
    let names: Vec<String> = state.get("fit/params")?;
    if names.iter().ne(st.params.iter().map(|(n, _)| n)) {
        return Err(invalid!("the saved training state is of other parameters ({} saved, {} here)", names.len(), st.params.len()));
    }
    for (n, v) in &st.params {
        let t = state.tensor(&format!("param/{n}"))?;
        if t.dims() != v.dims() || t.dtype() != v.dtype() {
            return Err(invalid!("the saved parameter {n} is {:?} {:?}; the model's is {:?} {:?}", t.dtype(), t.dims(), v.dtype(), v.dims()));
        }
        v.set(t)?;
    }
    if state.get::<bool>("fit/snapshot")? {
        out.snapshot = Some(st.params.iter().map(|(n, _)| Ok((n.clone(), state.tensor(&format!("snapshot/{n}"))?.clone()))).collect::<Result<_>>()?);
    }
    st.step = state.get("fit/step")?;
    out.examples = state.get("fit/examples")?;
    out.train_seconds = state.get_f64("fit/train_seconds")?;
    out.last_loss = state.get_f64("fit/last_loss")?;
    out.epoch_loss = state.get("fit/epoch_loss")?;
    out.epoch_seconds = state.get("fit/epoch_seconds")?;
    out.epochs_run = out.epoch_loss.len();
    out.best = state.get::<Option<(f64, usize, usize)>>("fit/best")?.map(|(score, epoch, step)| Best { score, epoch, step });
    match (state.get::<Option<u64>>("fit/metrics_bytes")?, st.metrics.as_deref_mut()) {
        (Some(len), Some(m)) => m.truncate(len)?,
        (None, None) => {}
        _ => return Err(invalid!("the saved training state and this run differ in whether metrics are logged")),
    }
    opt.load_state(state)?;
    hooks.load_state(model, state)?;
    state.get("fit/at")
}

