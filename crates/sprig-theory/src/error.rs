//! The typed error of sprig-theory: every variant names the offending value.

/// Everything that can go wrong in sprig-theory.
#[derive(Debug, thiserror::Error)]
pub enum TheoryError {
    /// A parameter outside its accepted range (width 0, sparsity outside [0, 1), ...).
    #[error("invalid {what} = {value}: {why}")]
    Invalid { what: &'static str, value: String, why: String },
    /// An input batch with no example.
    #[error("empty batch: {what} needs at least one input")]
    EmptyBatch { what: &'static str },
    /// An input whose length does not match the declared shape.
    #[error("shape mismatch: {what}: expected {expected} values, got {got}")]
    Shape { what: &'static str, expected: usize, got: usize },
    /// A request whose estimated memory is above the limit; nothing was allocated.
    #[error(
        "{what} too large: needs about {bytes} bytes ({gib:.2} GiB), above the limit of {limit} bytes \
         ({limit_gib:.2} GiB); use fewer inputs or a smaller width, or raise the memory limit"
    )]
    TooLarge { what: String, bytes: u64, gib: f64, limit: u64, limit_gib: f64 },
    /// A candle tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Loading a dataset failed.
    #[error(transparent)]
    Data(#[from] sprig_data::DataError),
    /// The training loop or an optimizer failed.
    #[error(transparent)]
    Train(#[from] sprig_train::TrainError),
}

/// Result with [`TheoryError`].
pub type Result<T, E = TheoryError> = std::result::Result<T, E>;

/// `Err(TheoryError::Invalid)` with the value formatted.
pub(crate) fn invalid<T>(what: &'static str, value: impl std::fmt::Display, why: impl Into<String>) -> Result<T> {
    Err(TheoryError::Invalid { what, value: value.to_string(), why: why.into() })
}

/// Refuses `bytes` above `limit`, naming both.
pub(crate) fn check_memory(what: impl Into<String>, bytes: u64, limit: u64) -> Result<()> {
    if bytes > limit {
        const GIB: f64 = (1u64 << 30) as f64;
        return Err(TheoryError::TooLarge {
            what: what.into(),
            bytes,
            gib: bytes as f64 / GIB,
            limit,
            limit_gib: limit as f64 / GIB,
        });
    }
    Ok(())
}

/// Refuses a sparsity outside [0, 1) (NaN included).
pub(crate) fn check_sparsity(s: f64) -> Result<()> {
    if !(0.0..1.0).contains(&s) {
        return invalid("sparsity", s, "must be in [0, 1) (fraction of weights removed)");
    }
    Ok(())
}
