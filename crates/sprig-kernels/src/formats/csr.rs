//! Compressed sparse rows (CSR): the unstructured format.
use super::{with_pattern, AnyPattern, Idx};
use crate::error::{check_len, KernelError, Result};
use crate::kernels::Engine;
use crate::Bitmask;

/// CSR weight matrix `[rows, cols]`; column indices are `u16` when `cols <= 65536`, else `u32`.
#[derive(Debug)]
pub struct Csr {
    pub(crate) eng: Engine,
    pub(crate) values: Vec<f32>,
}

impl Csr {
    /// From untrusted parts (scipy's `indptr`, `indices`, `data`): validates lengths, bounds and
    /// strictly increasing columns within each row.
    pub fn from_parts(
        rows: usize,
        cols: usize,
        row_ptr: Vec<usize>,
        col_idx: Vec<u32>,
        values: Vec<f32>,
    ) -> Result<Self> {
        check_len("CSR values", values.len(), col_idx.len())?;
        let col = col_idx.into_iter().map(|c| c as usize).collect();
        let pat = AnyPattern::validated(rows, cols, 1, 1, row_ptr, col)?;
        Ok(Self {
            eng: Engine::new(pat),
            values,
        })
    }

    /// Keeps the positions set in `mask` (even where the dense value is 0: they stay trainable).
    pub fn from_dense(dense: &[f32], rows: usize, cols: usize, mask: &Bitmask) -> Result<Self> {
        check_len("dense matrix", dense.len(), rows * cols)?;
        if mask.rows() != rows || mask.cols() != cols {
            return Err(KernelError::Shape(format!(
                "mask is {}x{}, matrix is {rows}x{cols}",
                mask.rows(),
                mask.cols()
            )));
        }
        super::check_block_shape(rows, cols, 1, 1)?;
        let mut row_ptr = Vec::with_capacity(rows + 1);
        let mut col = Vec::new();
        let mut values = Vec::new();
        row_ptr.push(0);
        for i in 0..rows {
            for j in 0..cols {
                if mask.get(i, j) {
                    col.push(j);
                    values.push(dense[i * cols + j]);
                }
            }
            row_ptr.push(col.len());
        }
        let pat = AnyPattern::build(rows, cols, 1, 1, row_ptr, col);
        Ok(Self {
            eng: Engine::new(pat),
            values,
        })
    }

    /// Keeps the non-zero entries.
    pub fn from_dense_nonzero(dense: &[f32], rows: usize, cols: usize) -> Result<Self> {
        let mask = Bitmask::from_nonzero(rows, cols, dense)?;
        Self::from_dense(dense, rows, cols, &mask)
    }

    /// Row pointer (`rows + 1` entries).
    pub fn row_ptr(&self) -> &[usize] {
        self.eng.pat.row_ptr()
    }

    /// Column indices, widened to `u32`.
    pub fn col_indices(&self) -> Vec<u32> {
        with_pattern!(&self.eng.pat, p => p.col.iter().map(|c| c.get() as u32).collect())
    }

    /// Bytes per stored column index (2 or 4).
    pub fn index_width(&self) -> usize {
        match self.eng.pat {
            AnyPattern::U16(_) => 2,
            AnyPattern::U32(_) => 4,
        }
    }
}

super::plain_kernels!(Csr);
super::impl_sparse_matrix!(Csr, |s: &Csr| format!("csr-u{}", s.index_width() * 8));
