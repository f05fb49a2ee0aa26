//! Fused CPU kernels for transformer training, on plain slices: GELU, softmax, LayerNorm of a
//! residual sum, multi-head attention, counter-based dropout; and (feature `candle`) candle custom
//! ops with backward built on them ([`ops`]).
//!
//! Thread policy: every kernel here runs on the global rayon pool (size it with
//! `RAYON_NUM_THREADS`; faer and candle's `gemm` use the same pool), parallel over rows or over
//! (batch, head) pairs, never nested: inside a task the small matrix products run sequentially.
pub mod attention;
pub mod conv;
pub mod dropout;
pub mod layer_norm;
pub mod math;
pub mod small_gemm;
pub mod softmax;
#[cfg(feature = "candle")]
pub mod ops;
#[cfg(feature = "candle")]
pub mod profile;

pub use attention::AttentionSpec;
pub use dropout::DropoutSpec;

/// Activation applied in a linear layer's epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    Identity,
    /// Exact (erf) GELU.
    Gelu,
}
