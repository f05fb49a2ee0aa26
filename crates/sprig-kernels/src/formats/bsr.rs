//! Block sparse rows (BSR) with any `r x c` block: 4x1 / 8x1 (blocks along the output
//! dimension) make the kernel reuse each activation load `r` times.
use super::{with_pattern, AnyPattern, Idx};
use crate::error::{check_len, KernelError, Result};
use crate::kernels::Engine;
use crate::Bitmask;

/// BSR weight matrix `[rows, cols]` with `r x c` blocks; each kept block stores `r*c` values
/// row-major (explicit zeros included).
#[derive(Debug)]
pub struct Bsr {
    pub(crate) eng: Engine,
    pub(crate) values: Vec<f32>,
}

impl Bsr {
    /// From untrusted parts in scipy's `bsr_matrix` layout: `block_cols` are block-column indices
    /// (element column / `c`), `values` holds `r*c` values per block, row-major within a block.
    pub fn from_parts(
        rows: usize,
        cols: usize,
        block: (usize, usize),
        row_ptr: Vec<usize>,
        block_cols: Vec<u32>,
        values: Vec<f32>,
    ) -> Result<Self> {
        let (r, c) = block;
        super::check_block_shape(rows, cols, r, c)?;
        check_len("BSR values", values.len(), block_cols.len() * r * c)?;
        let col = block_cols.into_iter().map(|b| b as usize * c).collect();
        let pat = AnyPattern::validated(rows, cols, r, c, row_ptr, col)?;
        Ok(Self {
            eng: Engine::new(pat),
            values,
        })
    }

    /// Keeps every block holding at least one kept position; positions of a kept block that the
    /// mask removes are stored as 0 (and are trainable).
    pub fn from_dense(
        dense: &[f32],
        rows: usize,
        cols: usize,
        block: (usize, usize),
        mask: &Bitmask,
    ) -> Result<Self> {
        let (r, c) = block;
        super::check_block_shape(rows, cols, r, c)?;
        check_len("dense matrix", dense.len(), rows * cols)?;
        if mask.rows() != rows || mask.cols() != cols {
            return Err(KernelError::Shape(format!(
                "mask is {}x{}, matrix is {rows}x{cols}",
                mask.rows(),
                mask.cols()
            )));
        }
        let mut row_ptr = vec![0];
        let mut col = Vec::new();
        let mut values = Vec::new();
        for br in 0..rows / r {
            for bc in 0..cols / c {
                let any = (0..r).any(|i| (0..c).any(|j| mask.get(br * r + i, bc * c + j)));
                if any {
                    col.push(bc * c);
                    for i in 0..r {
                        for j in 0..c {
                            let (ii, jj) = (br * r + i, bc * c + j);
                            let keep = mask.get(ii, jj);
                            values.push(if keep { dense[ii * cols + jj] } else { 0.0 });
                        }
                    }
                }
            }
            row_ptr.push(col.len());
        }
        let pat = AnyPattern::build(rows, cols, r, c, row_ptr, col);
        Ok(Self {
            eng: Engine::new(pat),
            values,
        })
    }

    /// Block shape `(r, c)`.
    pub fn block_shape(&self) -> (usize, usize) {
        self.eng.pat.block_shape()
    }

    /// Number of stored blocks.
    pub fn n_blocks(&self) -> usize {
        self.eng.pat.n_blocks()
    }

    /// Block row pointer (`rows / r + 1` entries).
    pub fn row_ptr(&self) -> &[usize] {
        self.eng.pat.row_ptr()
    }

    /// Block-column indices (element column / `c`).
    pub fn block_cols(&self) -> Vec<u32> {
        with_pattern!(&self.eng.pat, p => p.col.iter().map(|k| (k.get() / p.c) as u32).collect())
    }
}

super::plain_kernels!(Bsr);
super::impl_sparse_matrix!(Bsr, |s: &Bsr| {
    let (r, c) = s.block_shape();
    format!("bsr{r}x{c}")
});
