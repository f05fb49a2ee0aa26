//! Sparse weight formats. All store a `rows x cols` weight matrix W (a linear layer's `[out, in]`).
//!
//! CSR and BSR share one internal structure, [`BlockPattern`]: block-compressed rows whose column
//! starts use `u16` when the matrix has at most 65 536 columns (halving index bytes, which is what
//! bounds batch-1 speed) and `u32` otherwise. CSR is the 1x1-block case.
pub mod bitmask;
pub mod bsr;
pub mod csr;
pub mod nm;

use rayon::prelude::*;
use crate::error::{KernelError, Result};

/// Column index storage type (`u16` or `u32`).
pub trait Idx: Copy + Send + Sync + 'static {
    /// Largest value this type holds.
    const MAX: usize;
    /// Widen to `usize`.
    fn get(self) -> usize;
    /// Narrow from `usize` (caller checked the range).
    fn from_usize(v: usize) -> Self;
}
impl Idx for u16 {
    const MAX: usize = u16::MAX as usize;
    #[inline(always)]
    fn get(self) -> usize {
        self as usize
    }
    #[inline(always)]
    fn from_usize(v: usize) -> Self {
        v as u16
    }
}
impl Idx for u32 {
    const MAX: usize = u32::MAX as usize;
    #[inline(always)]
    fn get(self) -> usize {
        self as usize
    }
    #[inline(always)]
    fn from_usize(v: usize) -> Self {
        v as u32
    }
}

/// Block-compressed rows: block row `br` owns blocks `row_ptr[br]..row_ptr[br+1]`; block `b`
/// starts at column `col[b]` (in elements, a multiple of `c`) and its `r*c` values are stored
/// row-major at `values[b*r*c..]`.
#[derive(Clone, Debug)]
pub struct BlockPattern<I> {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) r: usize,
    pub(crate) c: usize,
    pub(crate) row_ptr: Vec<usize>,
    pub(crate) col: Vec<I>,
}

/// A [`BlockPattern`] with either index width.
#[derive(Clone, Debug)]
pub enum AnyPattern {
    /// Column starts fit in 16 bits.
    U16(BlockPattern<u16>),
    /// Wide matrices.
    U32(BlockPattern<u32>),
}

/// Runs `$body` with `$p` bound to the concrete `BlockPattern<I>`.
macro_rules! with_pattern {
    ($any:expr, $p:ident => $body:expr) => {
        match $any {
            $crate::formats::AnyPattern::U16($p) => $body,
            $crate::formats::AnyPattern::U32($p) => $body,
        }
    };
}
pub(crate) use with_pattern;

impl<I: Idx> BlockPattern<I> {
    pub(crate) fn n_blocks(&self) -> usize {
        self.col.len()
    }

    /// Transposed pattern (blocks `c x r` over `W^T`) and, per transposed block, the original
    /// block id. Counting sort by block column: O(nnz).
    pub(crate) fn transpose(&self) -> (AnyPattern, Vec<u32>) {
        let nbr_t = self.cols / self.c;
        let mut counts = vec![0usize; nbr_t + 1];
        for &k in &self.col {
            counts[k.get() / self.c + 1] += 1;
        }
        for i in 0..nbr_t {
            counts[i + 1] += counts[i];
        }
        let row_ptr = counts.clone();
        let mut next = counts;
        let mut cols_t = vec![0usize; self.n_blocks()];
        let mut perm = vec![0u32; self.n_blocks()];
        for br in 0..self.rows / self.r {
            for b in self.row_ptr[br]..self.row_ptr[br + 1] {
                let t = &mut next[self.col[b].get() / self.c];
                cols_t[*t] = br * self.r;
                perm[*t] = b as u32;
                *t += 1;
            }
        }
        let pat = AnyPattern::build(self.cols, self.rows, self.c, self.r, row_ptr, cols_t);
        (pat, perm)
    }
}

impl AnyPattern {
    /// Builds without validation (internal callers construct valid data).
    pub(crate) fn build(
        rows: usize,
        cols: usize,
        r: usize,
        c: usize,
        row_ptr: Vec<usize>,
        col: Vec<usize>,
    ) -> AnyPattern {
        if cols <= u16::MAX as usize + 1 {
            AnyPattern::U16(BlockPattern {
                rows,
                cols,
                r,
                c,
                row_ptr,
                col: col.into_iter().map(|k| k as u16).collect(),
            })
        } else {
            AnyPattern::U32(BlockPattern {
                rows,
                cols,
                r,
                c,
                row_ptr,
                col: col.into_iter().map(|k| k as u32).collect(),
            })
        }
    }

    /// Validates untrusted parts: `col` holds element column starts (multiples of `c`).
    pub(crate) fn validated(
        rows: usize,
        cols: usize,
        r: usize,
        c: usize,
        row_ptr: Vec<usize>,
        col: Vec<usize>,
    ) -> Result<AnyPattern> {
        check_block_shape(rows, cols, r, c)?;
        let nbr = rows / r;
        if row_ptr.len() != nbr + 1 {
            return Err(KernelError::Length {
                what: "row_ptr",
                expected: nbr + 1,
                got: row_ptr.len(),
            });
        }
        if row_ptr[0] != 0 {
            return Err(KernelError::Index(format!(
                "row_ptr[0] must be 0, got {}",
                row_ptr[0]
            )));
        }
        if row_ptr[nbr] != col.len() {
            return Err(KernelError::Index(format!(
                "row_ptr ends at {} but there are {} column indices",
                row_ptr[nbr],
                col.len()
            )));
        }
        for br in 0..nbr {
            let (s, e) = (row_ptr[br], row_ptr[br + 1]);
            if s > e {
                return Err(KernelError::Index(format!(
                    "row_ptr decreases at row {br} ({s} > {e})"
                )));
            }
        }
        for br in 0..nbr {
            let (s, e) = (row_ptr[br], row_ptr[br + 1]);
            for b in s..e {
                let k = col[b];
                if !k.is_multiple_of(c) || k + c > cols {
                    return Err(KernelError::Index(format!(
                        "row {br}: column {k} out of range or not a multiple of block width {c} (cols {cols})"
                    )));
                }
                if b > s && col[b - 1] >= k {
                    return Err(KernelError::Index(format!(
                        "row {br}: column indices not strictly increasing ({} then {k})",
                        col[b - 1]
                    )));
                }
            }
        }
        Ok(Self::build(rows, cols, r, c, row_ptr, col))
    }

    pub(crate) fn n_blocks(&self) -> usize {
        with_pattern!(self, p => p.n_blocks())
    }
    pub(crate) fn block_shape(&self) -> (usize, usize) {
        with_pattern!(self, p => (p.r, p.c))
    }
    pub(crate) fn row_ptr(&self) -> &[usize] {
        with_pattern!(self, p => &p.row_ptr)
    }
    pub(crate) fn index_bytes(&self) -> usize {
        match self {
            AnyPattern::U16(p) => p.col.len() * 2 + p.row_ptr.len() * 4,
            AnyPattern::U32(p) => p.col.len() * 4 + p.row_ptr.len() * 4,
        }
    }
    pub(crate) fn transpose(&self) -> (AnyPattern, Vec<u32>) {
        with_pattern!(self, p => p.transpose())
    }

    /// Dense row-major `rows x cols` matrix from block values.
    pub(crate) fn to_dense(&self, values: &[f32]) -> Vec<f32> {
        with_pattern!(self, p => {
            let (r, c) = (p.r, p.c);
            let mut d = vec![0f32; p.rows * p.cols];
            if p.cols > 0 {
                // One block row per piece, in parallel (the dense input gradient densifies W on
                // every call).
                d.par_chunks_mut(r * p.cols).enumerate().for_each(|(br, rows)| {
                    for b in p.row_ptr[br]..p.row_ptr[br + 1] {
                        let k0 = p.col[b].get();
                        for i in 0..r {
                            for j in 0..c {
                                rows[i * p.cols + k0 + j] = values[b * r * c + i * c + j];
                            }
                        }
                    }
                });
            }
            d
        })
    }
}

pub(crate) fn check_block_shape(rows: usize, cols: usize, r: usize, c: usize) -> Result<()> {
    if r == 0 || c == 0 {
        return Err(KernelError::Shape(format!("block shape {r}x{c} has a zero side")));
    }
    if !rows.is_multiple_of(r) || !cols.is_multiple_of(c) {
        return Err(KernelError::Shape(format!(
            "block {r}x{c} does not divide the {rows}x{cols} matrix"
        )));
    }
    if cols > u32::MAX as usize || rows > u32::MAX as usize {
        return Err(KernelError::Shape(format!("{rows}x{cols} is too large")));
    }
    Ok(())
}

/// The kernel entry points of a format that uses the shared block kernels unchanged.
macro_rules! plain_kernels {
    ($t:ty) => {
        impl $t {
            fn extra_bytes(&self) -> usize {
                0
            }
            fn forward_impl(
                &self,
                values: &[f32],
                x: &[f32],
                m: usize,
                bias: Option<&[f32]>,
                y: &mut [f32],
            ) -> $crate::Result<()> {
                self.eng.forward(values, x, m, bias, y)
            }
            fn forward_gelu_impl(
                &self,
                values: &[f32],
                x: &[f32],
                m: usize,
                bias: Option<&[f32]>,
                pre: Option<&mut [f32]>,
                y: &mut [f32],
            ) -> $crate::Result<()> {
                self.eng.forward_gelu(values, x, m, bias, pre, y)
            }
            fn grad_impl(&self, dy: &[f32], x: &[f32], m: usize, out: &mut [f32]) -> $crate::Result<()> {
                self.eng.grad_values(dy, x, m, out)
            }
        }
    };
}
pub(crate) use plain_kernels;

/// Implements [`crate::SparseMatrix`] for a format holding `eng: Engine` and `values: Vec<f32>`.
macro_rules! impl_sparse_matrix {
    ($t:ty, $name:expr) => {
        impl $crate::SparseMatrix for $t {
            fn rows(&self) -> usize {
                self.eng.rows()
            }
            fn cols(&self) -> usize {
                self.eng.cols()
            }
            fn nnz(&self) -> usize {
                self.values.len()
            }
            fn values(&self) -> &[f32] {
                &self.values
            }
            fn values_mut(&mut self) -> &mut [f32] {
                &mut self.values
            }
            fn memory_bytes(&self) -> usize {
                self.values.len() * 4 + self.eng.pat.index_bytes() + self.extra_bytes()
            }
            fn format_name(&self) -> String {
                ($name)(self)
            }
            fn pattern_mask(&self) -> $crate::Bitmask {
                self.eng.pattern_mask()
            }
            fn to_dense_with(&self, values: &[f32]) -> $crate::Result<Vec<f32>> {
                self.eng.to_dense(values)
            }
            fn forward_with(
                &self,
                values: &[f32],
                x: &[f32],
                m: usize,
                bias: Option<&[f32]>,
                y: &mut [f32],
            ) -> $crate::Result<()> {
                self.forward_impl(values, x, m, bias, y)
            }
            fn forward_gelu_with(
                &self,
                values: &[f32],
                x: &[f32],
                m: usize,
                bias: Option<&[f32]>,
                pre: Option<&mut [f32]>,
                y: &mut [f32],
            ) -> $crate::Result<()> {
                self.forward_gelu_impl(values, x, m, bias, pre, y)
            }
            fn backward_input_with(
                &self,
                values: &[f32],
                dy: &[f32],
                m: usize,
                dx: &mut [f32],
            ) -> $crate::Result<()> {
                self.eng.backward_input(values, dy, m, dx)
            }
            fn grad_values(
                &self,
                dy: &[f32],
                x: &[f32],
                m: usize,
                out: &mut [f32],
            ) -> $crate::Result<()> {
                self.grad_impl(dy, x, m, out)
            }
        }
    };
}
pub(crate) use impl_sparse_matrix;
