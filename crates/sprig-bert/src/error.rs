//! Errors that name the file or value at fault.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BertError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: invalid config: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("{path}: not a valid safetensors file: {msg}")]
    Safetensors { path: PathBuf, msg: String },
    #[error("{path}: tensor {name:?}: {msg}")]
    Tensor { path: PathBuf, name: String, msg: String },
    #[error("checkpoint is missing tensor {name:?} (looked in {path})")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tokenizer: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    #[error("model {model:?}: {msg}")]
    Resolve { model: String, msg: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A configuration value outside its accepted range; the message names it.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Train(#[from] sprig_train::TrainError),
    #[error(transparent)]
    Prune(#[from] sprig_prune::PruneError),
    #[error(transparent)]
    Moe(#[from] sprig_moe::MoeError),
    #[error(transparent)]
    Data(#[from] sprig_data::DataError),
    #[error(transparent)]
    Kernels(#[from] sprig_kernels::KernelError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// An I/O error whose file is named by the [`BertError::Context`] around it.
    #[error(transparent)]
    StdIo(#[from] std::io::Error),
    /// An error with what was being done when it happened (`"loading model {spec}: {inner}"`).
    #[error("{msg}: {inner}")]
    Context { msg: String, inner: Box<BertError> },
}

pub type Result<T, E = BertError> = std::result::Result<T, E>;

/// `anyhow::Context`-like helpers: wrap an error (or a `None`) with what was being done.
pub trait Context<T> {
    fn context<C: std::fmt::Display>(self, msg: C) -> Result<T>;
    fn with_context<C: std::fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T>;
}

impl<T, E: Into<BertError>> Context<T> for std::result::Result<T, E> {
    fn context<C: std::fmt::Display>(self, msg: C) -> Result<T> {
        self.map_err(|e| BertError::Context { msg: msg.to_string(), inner: Box::new(e.into()) })
    }
    fn with_context<C: std::fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.map_err(|e| BertError::Context { msg: f().to_string(), inner: Box::new(e.into()) })
    }
}

impl<T> Context<T> for Option<T> {
    fn context<C: std::fmt::Display>(self, msg: C) -> Result<T> {
        self.ok_or_else(|| BertError::Invalid(msg.to_string()))
    }
    fn with_context<C: std::fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.ok_or_else(|| BertError::Invalid(f().to_string()))
    }
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BertError {
    let path = path.into();
    move |source| BertError::Io { path, source }
}
