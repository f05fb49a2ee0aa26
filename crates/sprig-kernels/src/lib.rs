//! # sprig-kernels
//!
//! Sparse weight formats and CPU kernels for a linear layer `Y = X·Wᵀ + b` with a sparse weight
//! `W [N, K]` and dense activations `X [M, K]`, forward and backward:
//!
//! * formats: [`Bitmask`], [`Csr`] (u16/u32 column indices), [`Bsr`] (any `r x c` block),
//!   [`NmSparse`] (N:M, e.g. 2:4, 4:8), each built from dense + mask or from validated parts;
//! * kernels ([`SparseMatrix`]): forward SpMM, input gradient `dX = dY·W` and the weight gradient
//!   at kept positions only (SDDMM, `dW_ij = Σ_m dY_mi X_mj`), multithreaded with rayon and
//!   vectorised (AVX-512 or AVX2+FMA picked at run time, portable fallback elsewhere;
//!   `SPRIG_SIMD` caps the path, [`simd_level`] names it);
//! * [`QuantLinear`]: int8 inference (per-channel weights, per-token activations, AVX-512 VNNI);
//! * [`dense_linear`]: the fastest dense Rust path measured here (faer), the baseline;
//! * `candle` (feature `candle`, on by default): a `SparseLinear` custom op with backward.
//!
//! Plain slices in, plain slices out; row-major everywhere.
pub mod bench;
pub mod dense;
pub mod error;
pub mod formats;
mod kernels;
pub mod nn;
pub mod quant;
pub mod reference;

#[cfg(feature = "candle")]
pub mod candle;

pub use dense::{dense_linear, DenseImpl};
pub use error::{KernelError, Result};
pub use formats::bitmask::Bitmask;
pub use formats::bsr::Bsr;
pub use formats::csr::Csr;
pub use formats::nm::NmSparse;
pub use quant::{int8_path, QuantLinear};
pub use kernels::{force_portable, force_simd, simd, simd_level, SimdLevel, SIMD_ENV};

/// A sparse weight matrix `W [rows, cols]` (= `[N, K]`) that can run a linear layer.
///
/// The `*_with` methods take the stored values from the caller (same order and length as
/// [`SparseMatrix::values`]), so a training framework can own the values while the pattern stays
/// fixed. All slices are row-major; `x`/`dx` are `[m, cols]`, `y`/`dy` are `[m, rows]`.
pub trait SparseMatrix: Send + Sync {
    /// Output features N.
    fn rows(&self) -> usize;
    /// Input features K.
    fn cols(&self) -> usize;
    /// Stored values (for BSR/N:M this includes explicit zeros inside kept blocks/groups).
    fn nnz(&self) -> usize;
    /// The stored values.
    fn values(&self) -> &[f32];
    /// The stored values, mutable (the pattern stays fixed).
    fn values_mut(&mut self) -> &mut [f32];
    /// Bytes held by values and indices.
    fn memory_bytes(&self) -> usize;
    /// A short name for reports, e.g. `csr-u16`, `bsr4x1`, `nm2:4`.
    fn format_name(&self) -> String;
    /// Which positions are stored (the trainable pattern).
    fn pattern_mask(&self) -> Bitmask;
    /// Dense row-major W built from `values`.
    fn to_dense_with(&self, values: &[f32]) -> Result<Vec<f32>>;
    /// `y = x·Wᵀ (+ bias)`, `y` fully overwritten.
    fn forward_with(
        &self,
        values: &[f32],
        x: &[f32],
        m: usize,
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) -> Result<()>;
    /// `y = gelu(x·Wᵀ + bias)` (GELU of Hendrycks & Gimpel 2016, erf form); if `pre` is given it
    /// also receives `x·Wᵀ + bias` (what GELU's backward needs). Formats with the shared block
    /// kernels apply GELU to each output tile right after writing it, while it is in cache; the
    /// default runs [`SparseMatrix::forward_with`], then GELU over the whole output.
    fn forward_gelu_with(
        &self,
        values: &[f32],
        x: &[f32],
        m: usize,
        bias: Option<&[f32]>,
        pre: Option<&mut [f32]>,
        y: &mut [f32],
    ) -> Result<()> {
        kernels::forward_then_gelu(|out| self.forward_with(values, x, m, bias, out), pre, y)
    }
    /// `dx = dy·W`, `dx` fully overwritten.
    fn backward_input_with(&self, values: &[f32], dy: &[f32], m: usize, dx: &mut [f32])
        -> Result<()>;
    /// SDDMM: `out[s] = Σ_m dy[m, i_s]·x[m, j_s]` for every stored position `s = (i_s, j_s)`,
    /// in [`SparseMatrix::values`] order. The dense `dW` is never formed.
    fn grad_values(&self, dy: &[f32], x: &[f32], m: usize, out: &mut [f32]) -> Result<()>;

    /// [`SparseMatrix::forward_with`] with the stored values.
    fn forward(&self, x: &[f32], m: usize, bias: Option<&[f32]>, y: &mut [f32]) -> Result<()> {
        self.forward_with(self.values(), x, m, bias, y)
    }
    /// [`SparseMatrix::backward_input_with`] with the stored values.
    fn backward_input(&self, dy: &[f32], m: usize, dx: &mut [f32]) -> Result<()> {
        self.backward_input_with(self.values(), dy, m, dx)
    }
    /// Dense row-major W.
    fn to_dense(&self) -> Vec<f32> {
        self.to_dense_with(self.values())
            .expect("stored values always have the stored length")
    }
}
