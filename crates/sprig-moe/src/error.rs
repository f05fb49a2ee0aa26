//! Errors of sprig-moe: every bad input names the value at fault.

/// Everything that can go wrong while routing or running an MoE layer.
#[derive(Debug, thiserror::Error)]
pub enum MoeError {
    #[error("an MoE layer needs at least one expert (got 0)")]
    NoExperts,
    #[error("top-k {k} is outside 1..={experts} (the number of experts)")]
    BadTopK { k: usize, experts: usize },
    #[error("unknown routing `{0}`: expected top1, top2, topK, switch, expert-choice or hash")]
    UnknownRouting(String),
    #[error("capacity factor {0} must be a finite number > 0")]
    BadCapacity(f64),
    #[error("{what} {value} is out of range: {why}")]
    BadValue { what: &'static str, value: f64, why: &'static str },
    #[error("router logits hold a non-finite value ({value}) at token {token}, expert {expert}")]
    NonFiniteLogits { token: usize, expert: usize, value: f32 },
    #[error("hash routing needs the token ids of the batch ({tokens} tokens, {ids} ids given)")]
    MissingTokenIds { tokens: usize, ids: usize },
    #[error("shape mismatch for {what}: expected {expected:?}, got {got:?}")]
    Shape { what: String, expected: Vec<usize>, got: Vec<usize> },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result with [`MoeError`].
pub type Result<T> = std::result::Result<T, MoeError>;
