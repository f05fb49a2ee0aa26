//! sprig-train: the training loop's parts — mask-aware optimizers (AdamW, SGD), learning-rate
//! schedules, gradient clipping, run files (atomic writes, JSONL metrics) and progress, the small
//! vision models (LeNet-300-100, LeNet-5) with their trainer, and dynamic sparse training models and
//! trainer (static, SET, RigL, GraNet, GMP) on sparse kernels. Errors are [`TrainError`]; no plots.
//! The experiments built on these parts (lottery tickets, pruning at init, DST grids) live in
//! `sprig-lab`.

/// `bail!`-like: `return Err(TrainError::Invalid(format!(...)))`.
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::invalid!($($arg)*)) };
}
/// `ensure!`-like: bail with the message unless the condition holds.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => { if $cond {} else { bail!($($arg)*) } };
}

pub mod error;
pub mod optim;
pub mod run;
pub mod schedule;
pub mod sgd;
pub mod vision;
pub mod dst;
pub mod fit;
pub mod state;

pub use error::{TrainError, io_err};
pub use fit::{AfterStep, BatchOrder, Best, Ctx, Fit, FitOutcome, Hooks, Lr, Resume, StepInfo, StepLoss};
pub use optim::{clip_grad_norm, grad_norm, AdamW, AdamWConfig, Optimizer};
pub use run::{progress_bar, write_atomic, write_json, MetricsLog};
pub use schedule::LinearWarmupDecay;
pub use state::TrainState;
