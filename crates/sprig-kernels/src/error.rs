//! Errors for malformed formats and mismatched buffers.

/// Everything that can go wrong when building a sparse format or calling a kernel.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum KernelError {
    /// A buffer has the wrong number of elements.
    #[error("{what}: expected {expected} elements, got {got}")]
    Length {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// A matrix or block shape is not allowed (zero, not dividing the matrix, too large).
    #[error("invalid shape: {0}")]
    Shape(String),
    /// A row pointer or column index is out of range, unsorted or duplicated.
    #[error("invalid index: {0}")]
    Index(String),
    /// A mask does not fit the requested structure (e.g. more than N kept in a group of M).
    #[error("mask does not fit the format: {0}")]
    Mask(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, KernelError>;

/// Checks a buffer length, naming it in the error.
pub(crate) fn check_len(what: &'static str, got: usize, expected: usize) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(KernelError::Length {
            what,
            expected,
            got,
        })
    }
}
