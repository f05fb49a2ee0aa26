//! sprig-train: the training loop's parts — mask-aware optimizers, learning-rate schedules,
//! gradient clipping, run directories (atomic writes, JSONL metrics) and progress.
pub mod error;
pub mod optim;
pub mod run;
pub mod schedule;
pub mod sgd;
pub mod vision;
pub mod lottery;
pub mod pai;
pub mod dst;
pub mod dst_run;
pub mod fit;

pub use error::{TrainError, io_err};
pub use fit::{AfterStep, BatchOrder, Best, Ctx, Fit, FitOutcome, Hooks, Lr, StepInfo, StepLoss};
pub use optim::{clip_grad_norm, grad_norm, AdamW, AdamWConfig, Optimizer};
pub use run::{progress_bar, write_atomic, write_json, MetricsLog};
pub use schedule::LinearWarmupDecay;
