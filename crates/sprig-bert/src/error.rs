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
}

pub type Result<T> = std::result::Result<T, BertError>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BertError {
    let path = path.into();
    move |source| BertError::Io { path, source }
}
