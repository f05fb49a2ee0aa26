//! Errors of sprig-train: every bad input names the value or file at fault.
use std::path::PathBuf;

/// Everything that can go wrong while training, evaluating or writing run files.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A configuration value outside its accepted range; the message gives the range.
    #[error("{0}")]
    Invalid(String),
    /// The loss (or a gradient norm) became NaN or infinite.
    #[error("non-finite {what} ({value}) at step {step}")]
    NonFinite { what: &'static str, value: f64, step: usize },
    #[error("i/o error on {path}: {source}")]
    Io { path: PathBuf, #[source] source: std::io::Error },
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    /// An error raised by caller-supplied code inside the training loop (a `fit` step closure or
    /// hook) from a crate whose error type this one cannot name (sprig-bert, sprig-lab, anyhow).
    #[error(transparent)]
    Callback(Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Prune(#[from] sprig_prune::PruneError),
    #[error(transparent)]
    Data(#[from] sprig_data::DataError),
    #[error(transparent)]
    Kernels(#[from] sprig_kernels::KernelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An I/O error whose file is named by the [`TrainError::Context`] around it.
    #[error(transparent)]
    StdIo(#[from] std::io::Error),
    /// An error with what was being done when it happened (`"writing {path}: {inner}"`).
    #[error("{msg}: {inner}")]
    Context { msg: String, inner: Box<TrainError> },
}

/// `anyhow::Context`-like helpers: wrap an error (or a `None`) with what was being done.
pub trait Context<T> {
    fn context<C: std::fmt::Display>(self, msg: C) -> Result<T>;
    fn with_context<C: std::fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T>;
}

impl<T, E: Into<TrainError>> Context<T> for std::result::Result<T, E> {
    fn context<C: std::fmt::Display>(self, msg: C) -> Result<T> {
        self.map_err(|e| TrainError::Context { msg: msg.to_string(), inner: Box::new(e.into()) })
    }
    fn with_context<C: std::fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.map_err(|e| TrainError::Context { msg: f().to_string(), inner: Box::new(e.into()) })
    }
}

impl<T> Context<T> for Option<T> {
    fn context<C: std::fmt::Display>(self, msg: C) -> Result<T> {
        self.ok_or_else(|| TrainError::Invalid(msg.to_string()))
    }
    fn with_context<C: std::fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.ok_or_else(|| TrainError::Invalid(f().to_string()))
    }
}

impl TrainError {
    /// Wraps any error for [`TrainError::Callback`]: `.map_err(TrainError::callback)`.
    pub fn callback(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Callback(e.into())
    }
}

/// Result alias of this crate.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// `bail!`-like shorthand: `Err(TrainError::Invalid(format!(...)))`.
#[macro_export]
macro_rules! invalid {
    ($($arg:tt)*) => { $crate::TrainError::Invalid(format!($($arg)*)) };
}

/// Maps an `std::io::Error` to [`TrainError::Io`] naming `path`.
pub fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { path, source }
}
