//! Errors of sprig-prune: every bad input names the value, tensor or file at fault.
use std::path::PathBuf;

/// Everything that can go wrong while pruning, scoring or (de)serialising masks.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("sparsity {0} is outside [0, 1)")]
    BadSparsity(f64),
    #[error("unknown {what} `{value}`: expected {expected}")]
    BadName { what: &'static str, value: String, expected: &'static str },
    #[error("{what} {value} is out of range: {why}")]
    BadValue { what: &'static str, value: f64, why: &'static str },
    #[error("N:M = {n}:{m} is invalid for tensor `{name}` with shape {shape:?}: {why}")]
    BadNm { name: String, n: usize, m: usize, shape: Vec<usize>, why: &'static str },
    #[error("blocks {r}x{c} do not tile tensor `{name}` with shape {shape:?}")]
    BlocksDoNotTile { name: String, r: usize, c: usize, shape: Vec<usize> },
    #[error("{num_heads} heads do not divide axis {axis} (size {size}) of tensor `{name}`")]
    HeadsDoNotDivide { name: String, num_heads: usize, axis: usize, size: usize },
    #[error("granularity {granularity} needs a 2-d tensor but `{name}` has shape {shape:?}")]
    NotMatrix { name: String, granularity: &'static str, shape: Vec<usize> },
    #[error("shape mismatch for `{name}`: expected {expected:?}, got {got:?}")]
    ShapeMismatch { name: String, expected: Vec<usize>, got: Vec<usize> },
    #[error("unknown parameter name `{0}`")]
    UnknownParam(String),
    #[error("no gradient for parameter `{0}` (is it used by the loss?)")]
    NoGradient(String),
    #[error("no parameter is selected as prunable")]
    NothingSelected,
    #[error("criterion {criterion} needs {needs}")]
    MissingInput { criterion: &'static str, needs: &'static str },
    #[error("the requested sparsity {target} is infeasible: {why}")]
    Infeasible { target: f64, why: String },
    #[error("corrupt sparse checkpoint {path}: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error("pruned weight `{name}`[{index}] is {value}, not exactly 0 (the mask invariant is broken)")]
    PrunedNonZero { name: String, index: usize, value: f64 },
    #[error("kept weight `{name}`[{index}] is {value}, not finite")]
    NonFinite { name: String, index: usize, value: f64 },
    #[error("OBS: the empirical Fisher of tensor `{name}`, block {block}, is not numerically positive definite (raise the dampening λ, ScoreOptions::fisher_damp)")]
    NotPositiveDefinite { name: String, block: usize },
    #[error("gradient of `{name}`[{index}] is {value}, not finite")]
    NonFiniteGradient { name: String, index: usize, value: f64 },
    #[error("{what} is not supported: {why}")]
    Unsupported { what: String, why: &'static str },
    #[error("i/o error on {path}")]
    Io { path: PathBuf, #[source] source: std::io::Error },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Kernel(#[from] sprig_kernels::KernelError),
}

/// Result alias of this crate.
pub type Result<T, E = PruneError> = std::result::Result<T, E>;

/// Checks a sparsity target is in [0, 1).
pub fn check_sparsity(s: f64) -> Result<f64> {
    if s.is_finite() && (0.0..1.0).contains(&s) {
        Ok(s)
    } else {
        Err(PruneError::BadSparsity(s))
    }
}
