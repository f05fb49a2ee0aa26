//! N:M semi-structured sparsity (e.g. 2:4, 4:8): in every group of `m` consecutive weights of a
//! row exactly `n` are stored. Values are stored group by group. For groups of 4 or 8 the forward
//! and the weight gradient use dedicated kernels (`kernels::nm`: one byte of in-group offset per
//! value, lanes over 8 output rows, a permute per FMA); the input gradient and other group sizes
//! go through a CSR index of the same pattern (u16 where it fits).
use super::{with_pattern, AnyPattern, Idx};
use crate::error::{check_len, KernelError, Result};
use crate::kernels::{Engine, NmLayout};
use crate::Bitmask;

/// N:M weight matrix `[rows, cols]` (`cols` a multiple of `m`).
#[derive(Debug)]
pub struct NmSparse {
    pub(crate) eng: Engine,
    pub(crate) values: Vec<f32>,
    n: usize,
    m: usize,
    lay: NmLayout,
}

fn check_nm(rows: usize, cols: usize, n: usize, m: usize) -> Result<()> {
    if n == 0 || m == 0 || n > m || m > 256 {
        return Err(KernelError::Shape(format!(
            "N:M must satisfy 1 <= N <= M <= 256, got {n}:{m}"
        )));
    }
    if !cols.is_multiple_of(m) {
        return Err(KernelError::Shape(format!(
            "M = {m} does not divide the {cols} columns"
        )));
    }
    super::check_block_shape(rows, cols, 1, 1)
}

impl NmSparse {
    /// From untrusted parts: `values` and `offsets` hold `n` entries per group of `m` columns,
    /// group by group, row by row; offsets are in-group positions, strictly increasing, `< m`.
    pub fn from_parts(
        rows: usize,
        cols: usize,
        (n, m): (usize, usize),
        values: Vec<f32>,
        offsets: Vec<u8>,
    ) -> Result<Self> {
        check_nm(rows, cols, n, m)?;
        let total = rows * cols / m * n;
        check_len("N:M values", values.len(), total)?;
        check_len("N:M offsets", offsets.len(), total)?;
        let mut col = Vec::with_capacity(total);
        let lay_off = offsets.clone();
        for (g, chunk) in offsets.chunks(n).enumerate() {
            let base = (g % (cols / m)) * m;
            for (t, &o) in chunk.iter().enumerate() {
                let o = o as usize;
                if o >= m || (t > 0 && chunk[t - 1] as usize >= o) {
                    return Err(KernelError::Index(format!(
                        "group {g}: offsets {chunk:?} must be strictly increasing and < {m}"
                    )));
                }
                col.push(base + o);
            }
        }
        let per_row = cols / m * n;
        let row_ptr = (0..=rows).map(|i| i * per_row).collect();
        Ok(Self {
            eng: Engine::with_groups(AnyPattern::build(rows, cols, 1, 1, row_ptr, col), m, n),
            values,
            n,
            m,
            lay: NmLayout::new(rows, cols, n, m, lay_off),
        })
    }

    /// From dense + mask; errors naming the group if a group keeps more than `n`. Groups keeping
    /// fewer are filled with the lowest removed positions, stored as 0 (and trainable).
    pub fn from_dense(
        dense: &[f32],
        rows: usize,
        cols: usize,
        (n, m): (usize, usize),
        mask: &Bitmask,
    ) -> Result<Self> {
        check_nm(rows, cols, n, m)?;
        check_len("dense matrix", dense.len(), rows * cols)?;
        if mask.rows() != rows || mask.cols() != cols {
            return Err(KernelError::Shape(format!(
                "mask is {}x{}, matrix is {rows}x{cols}",
                mask.rows(),
                mask.cols()
            )));
        }
        let mut values = Vec::with_capacity(rows * cols / m * n);
        let mut offsets = Vec::with_capacity(rows * cols / m * n);
        for i in 0..rows {
            for g in 0..cols / m {
                let kept: Vec<usize> = (0..m).filter(|&o| mask.get(i, g * m + o)).collect();
                if kept.len() > n {
                    return Err(KernelError::Mask(format!(
                        "row {i}, columns {}..{}: {} kept, at most {n} allowed for {n}:{m}",
                        g * m,
                        g * m + m,
                        kept.len()
                    )));
                }
                let mut chosen = kept.clone();
                for o in 0..m {
                    if chosen.len() == n {
                        break;
                    }
                    if !kept.contains(&o) {
                        chosen.push(o);
                    }
                }
                chosen.sort_unstable();
                for o in chosen {
                    let keep = kept.contains(&o);
                    values.push(if keep { dense[i * cols + g * m + o] } else { 0.0 });
                    offsets.push(o as u8);
                }
            }
        }
        Self::from_parts(rows, cols, (n, m), values, offsets)
    }

    /// `(n, m)`.
    pub fn nm(&self) -> (usize, usize) {
        (self.n, self.m)
    }

    /// In-group offsets of the stored values (the compact 2:4 / 4:8 metadata).
    pub fn offsets(&self) -> Vec<u8> {
        let m = self.m;
        with_pattern!(&self.eng.pat, p => p.col.iter().map(|c| (c.get() % m) as u8).collect())
    }
}

impl NmSparse {
    /// The kernels' in-group offsets (1 byte per value), on top of the CSR index of the pattern
    /// (which the input gradient uses).
    fn extra_bytes(&self) -> usize {
        self.lay.tail_off.len() + self.lay.ctrl.len()
    }
    fn forward_impl(
        &self,
        values: &[f32],
        x: &[f32],
        m: usize,
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) -> Result<()> {
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
    ) -> Result<()> {
        self.eng.forward_gelu(values, x, m, bias, pre, y)
    }
    fn grad_impl(&self, dy: &[f32], x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
        crate::kernels::nm_grad(&self.lay, &self.eng, dy, x, m, out)
    }
}

super::impl_sparse_matrix!(NmSparse, |s: &NmSparse| format!("nm{}:{}", s.n, s.m));
