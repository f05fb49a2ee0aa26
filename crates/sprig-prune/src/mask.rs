//! Masks: one keep-bit per weight of one tensor (bit-packed), and sets of them by parameter name.
use std::collections::BTreeMap;

use candle_core::{Device, Tensor, Var};
use sha2::{Digest, Sha256};

use sprig_kernels::Bitmask;

use crate::error::{PruneError, Result};

/// A keep-mask for one tensor: bit `i` (row-major) is 1 when weight `i` is kept.
///
/// Stored as little-endian 64-bit words; padding bits after `len` are always zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    shape: Vec<usize>,
    len: usize,
    words: Vec<u64>,
}

impl Mask {
    /// All weights kept.
    pub fn ones(shape: &[usize]) -> Self {
        let len: usize = shape.iter().product();
        let mut words = vec![u64::MAX; len.div_ceil(64)];
        if len % 64 != 0 {
            if let Some(last) = words.last_mut() {
                *last = (1u64 << (len % 64)) - 1;
            }
        }
        Self { shape: shape.to_vec(), len, words }
    }

    /// All weights pruned.
    pub fn zeros(shape: &[usize]) -> Self {
        let len: usize = shape.iter().product();
        Self { shape: shape.to_vec(), len, words: vec![0; len.div_ceil(64)] }
    }

    /// From one bool per weight (row-major, `true` = kept); errors when the length does not match.
    pub fn from_bools(shape: &[usize], keep: &[bool]) -> Result<Self> {
        let mut m = Self::zeros(shape);
        if keep.len() != m.len {
            return Err(PruneError::ShapeMismatch {
                name: "mask".into(),
                expected: shape.to_vec(),
                got: vec![keep.len()],
            });
        }
        for (i, &k) in keep.iter().enumerate() {
            if k {
                m.words[i / 64] |= 1 << (i % 64);
            }
        }
        Ok(m)
    }

    /// From packed bytes (bit `i` is bit `i % 8` of byte `i / 8`); rejects wrong lengths or set padding bits.
    pub fn from_bytes(shape: &[usize], bytes: &[u8]) -> Result<Self> {
        let len = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or(PruneError::BadValue {
            what: "mask shape",
            value: f64::INFINITY,
            why: "the product of the dimensions overflows usize",
        })?;
        if bytes.len() != len.div_ceil(8) {
            return Err(PruneError::ShapeMismatch {
                name: "mask bytes".into(),
                expected: vec![len.div_ceil(8)],
                got: vec![bytes.len()],
            });
        }
        let mut words = vec![0u64; len.div_ceil(64)];
        for (i, &b) in bytes.iter().enumerate() {
            words[i / 8] |= (b as u64) << (8 * (i % 8));
        }
        let m = Self { shape: shape.to_vec(), len, words };
        if len % 64 != 0 && m.words.last().is_some_and(|w| w >> (len % 64) != 0) {
            return Err(PruneError::BadValue {
                what: "mask padding bits",
                value: 1.0,
                why: "bits past the end of the tensor must be zero",
            });
        }
        Ok(m)
    }

    /// Packed bytes, `ceil(len / 8)` of them (see [`Mask::from_bytes`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len.div_ceil(8));
        for i in 0..self.len.div_ceil(8) {
            out.push((self.words[i / 8] >> (8 * (i % 8))) as u8);
        }
        out
    }

    /// The shape of the tensor this mask belongs to.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Number of weights.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True for a mask of an empty tensor.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Is weight `i` (row-major) kept?
    pub fn get(&self, i: usize) -> bool {
        self.words[i / 64] >> (i % 64) & 1 == 1
    }
    /// Keep (`true`) or prune weight `i`.
    pub fn set(&mut self, i: usize, keep: bool) {
        if keep {
            self.words[i / 64] |= 1 << (i % 64);
        } else {
            self.words[i / 64] &= !(1 << (i % 64));
        }
    }
    /// Number of kept weights.
    pub fn count_kept(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }
    /// Fraction of pruned weights (0 for an empty tensor).
    pub fn sparsity(&self) -> f64 {
        if self.len == 0 {
            0.0
        } else {
            1.0 - self.count_kept() as f64 / self.len as f64
        }
    }
    /// One bool per weight, row-major.
    pub fn to_bools(&self) -> Vec<bool> {
        (0..self.len).map(|i| self.get(i)).collect()
    }
    /// Keep only weights kept by both masks.
    pub fn and(&self, other: &Mask) -> Result<Mask> {
        self.check_shape("mask", &other.shape)?;
        let words = self.words.iter().zip(&other.words).map(|(a, b)| a & b).collect();
        Ok(Mask { shape: self.shape.clone(), len: self.len, words })
    }
    /// Errors unless `shape` equals this mask's shape.
    pub fn check_shape(&self, name: &str, shape: &[usize]) -> Result<()> {
        if shape != self.shape.as_slice() {
            return Err(PruneError::ShapeMismatch {
                name: name.into(),
                expected: self.shape.clone(),
                got: shape.to_vec(),
            });
        }
        Ok(())
    }
    /// The mask as an f32 tensor of 0/1 with the mask's shape.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        let v: Vec<f32> = (0..self.len).map(|i| if self.get(i) { 1.0 } else { 0.0 }).collect();
        Ok(Tensor::from_vec(v, self.shape.as_slice(), device)?)
    }
    /// The packed words: bit `i % 64` of word `i / 64` is weight `i`; padding bits are zero.
    /// This is exactly [`sprig_kernels::Bitmask`]'s layout.
    pub fn words(&self) -> &[u64] {
        &self.words
    }
    /// The `[d0, d1·…]` matrix a kernel sees (a vector is one row).
    pub fn matrix_dims(&self) -> (usize, usize) {
        crate::granularity::as_matrix(&self.shape)
    }
    /// The same bits as a kernel [`Bitmask`] of [`Mask::matrix_dims`] (one copy of the words, no
    /// per-weight pass: both types share the layout).
    pub fn to_bitmask(&self) -> Result<Bitmask> {
        let (r, c) = self.matrix_dims();
        Ok(Bitmask::from_words(r, c, self.words.clone())?)
    }
    /// As [`Mask::to_bitmask`], moving the words (no copy at all).
    pub fn into_bitmask(self) -> Result<Bitmask> {
        let (r, c) = self.matrix_dims();
        Ok(Bitmask::from_words(r, c, self.words)?)
    }
    /// A mask of shape `shape` with the bits of a kernel [`Bitmask`] (their counts must agree).
    pub fn from_bitmask(shape: &[usize], b: &Bitmask) -> Result<Self> {
        let len: usize = shape.iter().product();
        if len != b.rows() * b.cols() {
            return Err(PruneError::ShapeMismatch { name: "bitmask".into(), expected: shape.to_vec(), got: vec![b.rows(), b.cols()] });
        }
        Ok(Self { shape: shape.to_vec(), len, words: b.words().to_vec() })
    }
    /// The one exact-zero check: errors on the first position (row-major) where a pruned weight of
    /// `t` is not exactly 0 ([`PruneError::PrunedNonZero`]) or a kept weight is NaN or infinite
    /// ([`PruneError::NonFinite`]). `name` names the tensor in the error.
    pub fn check_pruned_zero(&self, name: &str, t: &Tensor) -> Result<()> {
        self.check_shape(name, t.dims())?;
        let w = t.flatten_all()?.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
        for (i, &x) in w.iter().enumerate() {
            if self.get(i) {
                if !x.is_finite() {
                    return Err(PruneError::NonFinite { name: name.into(), index: i, value: x });
                }
            } else if x != 0.0 {
                return Err(PruneError::PrunedNonZero { name: name.into(), index: i, value: x });
            }
        }
        Ok(())
    }
    /// Zero the pruned weights of `var` in place (shape-checked).
    pub fn apply(&self, name: &str, var: &Var) -> Result<()> {
        self.check_shape(name, var.dims())?;
        let m = self.to_tensor(var.device())?.to_dtype(var.dtype())?;
        var.set(&var.as_tensor().mul(&m)?)?;
        Ok(())
    }
}

/// Masks by parameter name (a model's prunable parameters).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaskSet {
    masks: BTreeMap<String, Mask>,
}

/// One line of a sparsity report.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TensorSparsity {
    pub name: String,
    pub shape: Vec<usize>,
    pub numel: usize,
    pub kept: usize,
    pub sparsity: f64,
}

/// Sparsity per tensor, over the masked (prunable) tensors and over the whole model.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SparsityReport {
    pub tensors: Vec<TensorSparsity>,
    /// Pruned fraction over masked tensors only.
    pub prunable_sparsity: f64,
    /// Pruned fraction over every parameter given (unmasked ones count as dense).
    pub model_sparsity: f64,
    pub prunable_numel: usize,
    pub model_numel: usize,
}

impl MaskSet {
    /// Empty set.
    pub fn new() -> Self {
        Self::default()
    }
    /// All-ones masks for the given parameters.
    pub fn ones_for(params: &[(String, Var)]) -> Self {
        let masks = params.iter().map(|(n, v)| (n.clone(), Mask::ones(v.dims()))).collect();
        Self { masks }
    }
    /// Add or replace the mask of `name`.
    pub fn insert(&mut self, name: impl Into<String>, mask: Mask) {
        self.masks.insert(name.into(), mask);
    }
    /// The mask of `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Mask> {
        self.masks.get(name)
    }
    /// The mask of `name`, or an error naming it.
    pub fn require(&self, name: &str) -> Result<&Mask> {
        self.masks.get(name).ok_or_else(|| PruneError::UnknownParam(name.into()))
    }
    /// Masks in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Mask)> {
        self.masks.iter()
    }
    /// Number of masks.
    pub fn len(&self) -> usize {
        self.masks.len()
    }
    /// True when the set has no mask.
    pub fn is_empty(&self) -> bool {
        self.masks.is_empty()
    }
    /// Parameter names, in order.
    pub fn names(&self) -> Vec<String> {
        self.masks.keys().cloned().collect()
    }
    /// Element-wise AND with another set with the same names and shapes.
    pub fn and(&self, other: &MaskSet) -> Result<MaskSet> {
        let mut out = MaskSet::new();
        for (n, m) in &self.masks {
            out.insert(n.clone(), m.and(other.require(n)?)?);
        }
        Ok(out)
    }
    /// Kept weights over all masks.
    pub fn count_kept(&self) -> usize {
        self.masks.values().map(Mask::count_kept).sum()
    }
    /// Weights over all masks.
    pub fn numel(&self) -> usize {
        self.masks.values().map(Mask::len).sum()
    }
    /// Pruned fraction over all masks.
    pub fn sparsity(&self) -> f64 {
        let n = self.numel();
        if n == 0 { 0.0 } else { 1.0 - self.count_kept() as f64 / n as f64 }
    }
    /// Checks every mask names a parameter of the model with the same shape.
    pub fn check_against(&self, params: &[(String, Var)]) -> Result<()> {
        for (n, m) in &self.masks {
            let (_, v) = params.iter().find(|(pn, _)| pn == n).ok_or_else(|| PruneError::UnknownParam(n.clone()))?;
            m.check_shape(n, v.dims())?;
        }
        Ok(())
    }
    /// Zero every pruned weight of the model in place.
    pub fn apply(&self, params: &[(String, Var)]) -> Result<()> {
        self.check_against(params)?;
        for (n, v) in params {
            if let Some(m) = self.masks.get(n) {
                m.apply(n, v)?;
            }
        }
        Ok(())
    }
    /// Errors unless every pruned weight of every masked parameter is exactly 0 and every kept one
    /// is finite (see [`Mask::check_pruned_zero`]); a mask naming no parameter is an error too.
    pub fn check_pruned_zero(&self, params: &[(String, Var)]) -> Result<()> {
        for (n, m) in &self.masks {
            let (_, v) = params.iter().find(|(pn, _)| pn == n).ok_or_else(|| PruneError::UnknownParam(n.clone()))?;
            m.check_pruned_zero(n, v.as_tensor())?;
        }
        Ok(())
    }
    /// Every mask as a kernel [`Bitmask`] (see [`Mask::to_bitmask`]), by name.
    pub fn to_bitmasks(&self) -> Result<BTreeMap<String, Bitmask>> {
        self.masks.iter().map(|(n, m)| Ok((n.clone(), m.to_bitmask()?))).collect()
    }
    /// Masks in name order, mutable.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut Mask)> {
        self.masks.iter_mut()
    }
    /// Sparsity per tensor, over masked tensors and over all of `params` (every name in the set must be there).
    pub fn report(&self, params: &[(String, Vec<usize>)]) -> Result<SparsityReport> {
        for n in self.masks.keys() {
            if !params.iter().any(|(pn, _)| pn == n) {
                return Err(PruneError::UnknownParam(n.clone()));
            }
        }
        let mut tensors = Vec::new();
        let (mut pn, mut pk, mut mn, mut mk) = (0usize, 0usize, 0usize, 0usize);
        for (name, shape) in params {
            let numel: usize = shape.iter().product();
            let kept = match self.masks.get(name) {
                Some(m) => {
                    m.check_shape(name, shape)?;
                    pn += numel;
                    pk += m.count_kept();
                    m.count_kept()
                }
                None => numel,
            };
            mn += numel;
            mk += kept;
            let sparsity = if numel == 0 { 0.0 } else { 1.0 - kept as f64 / numel as f64 };
            tensors.push(TensorSparsity { name: name.clone(), shape: shape.clone(), numel, kept, sparsity });
        }
        let frac = |n: usize, k: usize| if n == 0 { 0.0 } else { 1.0 - k as f64 / n as f64 };
        Ok(SparsityReport {
            tensors,
            prunable_sparsity: frac(pn, pk),
            model_sparsity: frac(mn, mk),
            prunable_numel: pn,
            model_numel: mn,
        })
    }
    /// SHA-256 over names, shapes and bits (for "same seed, same masks" checks).
    pub fn sha256(&self) -> String {
        let mut h = Sha256::new();
        for (n, m) in &self.masks {
            h.update((n.len() as u64).to_le_bytes());
            h.update(n.as_bytes());
            for d in &m.shape {
                h.update((*d as u64).to_le_bytes());
            }
            h.update(m.to_bytes());
        }
        hex(&h.finalize())
    }
}

/// Lower-case hex of bytes.
pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl SparsityReport {
    /// A fixed-width text table: name, shape, numel, kept, sparsity.
    pub fn table(&self) -> String {
        let w = self.tensors.iter().map(|t| t.name.len()).max().unwrap_or(4).max(6);
        let mut s = format!("{:<w$}  {:>16}  {:>10}  {:>10}  {:>8}\n", "tensor", "shape", "numel", "kept", "sparsity");
        for t in &self.tensors {
            s += &format!(
                "{:<w$}  {:>16}  {:>10}  {:>10}  {:>7.2}%\n",
                t.name,
                format!("{:?}", t.shape),
                t.numel,
                t.kept,
                100.0 * t.sparsity
            );
        }
        s += &format!("{:<w$}  {:>16}  {:>10}  {:>10}  {:>7.2}%\n", "prunable", "", self.prunable_numel, "", 100.0 * self.prunable_sparsity);
        s += &format!("{:<w$}  {:>16}  {:>10}  {:>10}  {:>7.2}%\n", "model", "", self.model_numel, "", 100.0 * self.model_sparsity);
        s
    }
}
