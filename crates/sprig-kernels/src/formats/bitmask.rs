//! A dense bit-per-weight keep mask, row-major, 64 weights per `u64` word.
use crate::error::{check_len, KernelError, Result};

/// One bit per weight of a `rows x cols` matrix (row-major); `true` = kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitmask {
    rows: usize,
    cols: usize,
    words: Vec<u64>,
}

impl Bitmask {
    fn n_words(rows: usize, cols: usize) -> usize {
        (rows * cols).div_ceil(64)
    }

    /// A mask keeping nothing.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            words: vec![0; Self::n_words(rows, cols)],
        }
    }

    /// A mask keeping everything.
    pub fn ones(rows: usize, cols: usize) -> Self {
        let mut m = Self::zeros(rows, cols);
        for i in 0..rows * cols {
            m.words[i / 64] |= 1 << (i % 64);
        }
        m
    }

    /// From one `bool` per weight (row-major).
    pub fn from_bools(rows: usize, cols: usize, keep: &[bool]) -> Result<Self> {
        check_len("mask", keep.len(), rows * cols)?;
        let mut m = Self::zeros(rows, cols);
        for (i, &k) in keep.iter().enumerate() {
            if k {
                m.words[i / 64] |= 1 << (i % 64);
            }
        }
        Ok(m)
    }

    /// Keeps exactly the non-zero entries of a dense matrix.
    pub fn from_nonzero(rows: usize, cols: usize, dense: &[f32]) -> Result<Self> {
        check_len("dense matrix", dense.len(), rows * cols)?;
        let keep: Vec<bool> = dense.iter().map(|&v| v != 0.0).collect();
        Self::from_bools(rows, cols, &keep)
    }

    /// From raw words (bit `i % 64` of word `i / 64` is weight `i`); unused high bits must be 0.
    pub fn from_words(rows: usize, cols: usize, words: Vec<u64>) -> Result<Self> {
        check_len("mask words", words.len(), Self::n_words(rows, cols))?;
        let n = rows * cols;
        if !n.is_multiple_of(64) {
            if let Some(&last) = words.last() {
                if last >> (n % 64) != 0 {
                    return Err(KernelError::Mask(format!(
                        "bits set past the end of a {rows}x{cols} mask"
                    )));
                }
            }
        }
        Ok(Self { rows, cols, words })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// The raw words.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Whether weight `(r, c)` is kept; out-of-range positions are `false`.
    pub fn get(&self, r: usize, c: usize) -> bool {
        if r >= self.rows || c >= self.cols {
            return false;
        }
        let i = r * self.cols + c;
        self.words[i / 64] >> (i % 64) & 1 == 1
    }

    /// Sets weight `(r, c)`; errors when out of range.
    pub fn set(&mut self, r: usize, c: usize, keep: bool) -> Result<()> {
        if r >= self.rows || c >= self.cols {
            return Err(KernelError::Index(format!(
                "({r}, {c}) outside a {}x{} mask",
                self.rows, self.cols
            )));
        }
        let i = r * self.cols + c;
        if keep {
            self.words[i / 64] |= 1 << (i % 64);
        } else {
            self.words[i / 64] &= !(1 << (i % 64));
        }
        Ok(())
    }

    /// Number of kept weights.
    pub fn count_ones(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Fraction of weights removed (0 = dense).
    pub fn sparsity(&self) -> f64 {
        let n = self.rows * self.cols;
        if n == 0 {
            0.0
        } else {
            1.0 - self.count_ones() as f64 / n as f64
        }
    }

    /// One `bool` per weight, row-major.
    pub fn to_bools(&self) -> Vec<bool> {
        (0..self.rows * self.cols)
            .map(|i| self.words[i / 64] >> (i % 64) & 1 == 1)
            .collect()
    }

    /// Zeroes the removed weights of `dense` in place.
    pub fn apply(&self, dense: &mut [f32]) -> Result<()> {
        check_len("dense matrix", dense.len(), self.rows * self.cols)?;
        for (i, v) in dense.iter_mut().enumerate() {
            if self.words[i / 64] >> (i % 64) & 1 == 0 {
                *v = 0.0;
            }
        }
        Ok(())
    }
}
