//! Granularity: which weights are pruned together (a "group").
//!
//! Every granularity views a tensor of shape `[d0, d1, ...]` as a matrix `[d0, rest]` (rows are
//! output neurons / channels for candle's `[out, in]` linears and `[out, in, kh, kw]` convs).
use sprig_kernels::candle::Format;

use crate::error::{PruneError, Result};

/// How weights are grouped before ranking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Granularity {
    /// Each weight on its own (Han et al. 2015).
    Unstructured,
    /// In every run of `m` consecutive weights along the last axis keep the best `n` (NVIDIA 2:4
    /// sparsity, Mishra et al. 2021). Fixes each tensor's sparsity at `1 - n/m`.
    NM { n: usize, m: usize },
    /// Tiles of `r x c` weights of the `[d0, rest]` matrix (block sparsity, Gray et al. 2017).
    Block { r: usize, c: usize },
    /// Whole rows: output neurons / channels (structured pruning, Li et al. 2017).
    Rows,
    /// Attention heads: `num_heads` equal slices along `axis` (0 for Q/K/V `[out, in]` weights, 1 for the
    /// output projection), as in Michel et al. 2019.
    Heads { num_heads: usize, axis: usize },
}

/// A tensor's groups: `group_of(i)` for every element, `num_groups`, and group sizes.
pub(crate) struct Groups {
    pub num_groups: usize,
    pub group_of: Vec<u32>,
    pub sizes: Vec<usize>,
}

impl Granularity {
    /// Short name for reports.
    pub fn label(&self) -> String {
        match self {
            Self::Unstructured => "unstructured".into(),
            Self::NM { n, m } => format!("{n}:{m}"),
            Self::Block { r, c } => format!("block{r}x{c}"),
            Self::Rows => "rows".into(),
            Self::Heads { num_heads, axis } => format!("heads{num_heads}@{axis}"),
        }
    }

    /// The granularity whose masks a sparse kernel format stores without fill-in: CSR takes any
    /// mask, BSR `r x c` takes `r x c` blocks, N:M takes N:M (an unstructured mask stored as 4x1
    /// blocks keeps every block that holds any weight).
    pub fn for_format(format: Format) -> Self {
        match format {
            Format::Csr => Self::Unstructured,
            Format::Bsr(r, c) => Self::Block { r, c },
            Format::Nm(n, m) => Self::NM { n, m },
        }
    }

    /// [`Granularity::for_format`] of a format name: `csr`, `bsrRxC` (e.g. `bsr4x1`) or `N:M` (e.g. `2:4`).
    pub fn from_format_name(name: &str) -> Result<Self> {
        let bad = || PruneError::BadName { what: "sparse format", value: name.into(), expected: "csr, bsrRxC (e.g. bsr4x1) or N:M (e.g. 2:4)" };
        let pair = |s: &str, sep: char| -> Result<(usize, usize)> {
            let (a, b) = s.split_once(sep).ok_or_else(bad)?;
            Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?))
        };
        let f = if name == "csr" {
            Format::Csr
        } else if let Some(rc) = name.strip_prefix("bsr") {
            let (r, c) = pair(rc, 'x')?;
            Format::Bsr(r, c)
        } else {
            let (n, m) = pair(name, ':')?;
            Format::Nm(n, m)
        };
        Ok(Self::for_format(f))
    }

    /// Checks this granularity fits a tensor named `name` with `shape`.
    pub fn check(&self, name: &str, shape: &[usize]) -> Result<()> {
        let numel: usize = shape.iter().product();
        let (d0, rest) = as_matrix(shape);
        match *self {
            Self::Unstructured | Self::Rows => Ok(()),
            Self::NM { n, m } => {
                let bad = |why| Err(PruneError::BadNm { name: name.into(), n, m, shape: shape.to_vec(), why });
                if m == 0 || n == 0 || n > m {
                    return bad("need 0 < N <= M");
                }
                match shape.last() {
                    Some(&last) if last % m == 0 => Ok(()),
                    _ => bad("M does not divide the last dimension"),
                }
            }
            Self::Block { r, c } => {
                if shape.len() < 2 {
                    return Err(PruneError::NotMatrix { name: name.into(), granularity: "block", shape: shape.to_vec() });
                }
                if r == 0 || c == 0 || d0 % r != 0 || rest % c != 0 || numel == 0 {
                    return Err(PruneError::BlocksDoNotTile { name: name.into(), r, c, shape: shape.to_vec() });
                }
                Ok(())
            }
            Self::Heads { num_heads, axis } => {
                if shape.len() != 2 {
                    return Err(PruneError::NotMatrix { name: name.into(), granularity: "heads", shape: shape.to_vec() });
                }
                let size = *shape.get(axis).ok_or(PruneError::BadValue {
                    what: "head axis",
                    value: axis as f64,
                    why: "must be 0 or 1",
                })?;
                if num_heads == 0 || size % num_heads != 0 {
                    return Err(PruneError::HeadsDoNotDivide { name: name.into(), num_heads, axis, size });
                }
                Ok(())
            }
        }
    }

    /// The groups of a tensor (after [`Granularity::check`]). For N:M every run of `m` is one group
    /// (the n-of-m choice is made inside it).
    pub(crate) fn groups(&self, shape: &[usize]) -> Groups {
        let numel: usize = shape.iter().product();
        let (d0, rest) = as_matrix(shape);
        let mut group_of = vec![0u32; numel];
        let num_groups = match *self {
            Self::Unstructured => {
                group_of.iter_mut().enumerate().for_each(|(i, g)| *g = i as u32);
                numel
            }
            Self::NM { m, .. } => {
                group_of.iter_mut().enumerate().for_each(|(i, g)| *g = (i / m) as u32);
                numel / m
            }
            Self::Rows => {
                group_of.iter_mut().enumerate().for_each(|(i, g)| *g = (i / rest.max(1)) as u32);
                d0
            }
            Self::Block { r, c } => {
                let bc = rest / c;
                for (i, g) in group_of.iter_mut().enumerate() {
                    let (row, col) = (i / rest, i % rest);
                    *g = ((row / r) * bc + col / c) as u32;
                }
                (d0 / r) * bc
            }
            Self::Heads { num_heads, axis } => {
                let hs = shape[axis] / num_heads;
                for (i, g) in group_of.iter_mut().enumerate() {
                    let idx = if axis == 0 { i / shape[1] } else { i % shape[1] };
                    *g = (idx / hs) as u32;
                }
                num_heads
            }
        };
        let mut sizes = vec![0usize; num_groups];
        for &g in &group_of {
            sizes[g as usize] += 1;
        }
        Groups { num_groups, group_of, sizes }
    }
}

/// `[d0, d1, ...]` as `(d0, d1 * ...)`; a vector is one row.
pub(crate) fn as_matrix(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [n] => (1, *n),
        [d0, rest @ ..] => (*d0, rest.iter().product()),
    }
}

impl From<Format> for Granularity {
    fn from(f: Format) -> Self {
        Self::for_format(f)
    }
}
