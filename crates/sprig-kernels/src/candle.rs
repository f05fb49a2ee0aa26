//! candle bridge: a sparse linear layer whose forward and backward run this crate's kernels.
//!
//! The op's tensor inputs are the activations `x [.., K]` and the stored *values* `[nnz]`; the
//! pattern (a [`SparseMatrix`]) lives in the op behind an `Arc`. Gradients therefore reach only the
//! kept weights: `d values` by SDDMM, `dx` by the transposed product (`dX = dY·W`).
use crate::{Bitmask, Bsr, Csr, NmSparse, SparseMatrix};
use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor, Var,
};
use std::sync::Arc;

/// Which sparse format [`SparseLinear::from_dense`] compiles to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Unstructured CSR.
    Csr,
    /// Block sparse rows with `(r, c)` blocks.
    Bsr(usize, usize),
    /// N:M (`(n, m)`, e.g. `(2, 4)`).
    Nm(usize, usize),
}

fn kerr(e: crate::KernelError) -> candle_core::Error {
    candle_core::Error::Msg(format!("sprig-kernels: {e}"))
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let v = match s {
        CpuStorage::F32(v) => v.as_slice(),
        other => candle_core::bail!("sparse linear: {what} must be f32, got {:?}", other.dtype()),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("sparse linear: {what} must be contiguous"),
    }
}

/// Output shape: `x`'s shape with the last dimension replaced by `n`; also returns `m`.
fn out_shape(x: &Shape, k: usize, n: usize, what: &str) -> Result<(Shape, usize)> {
    let dims = x.dims();
    match dims.last() {
        Some(&last) if last == k => {
            let mut d = dims.to_vec();
            *d.last_mut().unwrap() = n;
            Ok((Shape::from(d), x.elem_count() / k.max(1)))
        }
        _ => candle_core::bail!("sparse linear: {what} has shape {x:?}, last dimension must be {k}"),
    }
}

/// `y = x·Wᵀ` with W's values as the second input.
struct SpmmOp(Arc<dyn SparseMatrix>);
/// `dx = dy·W` (inputs dy, values).
struct SpmmTOp(Arc<dyn SparseMatrix>);
/// `d values = SDDMM(dy, x)` (inputs dy, x).
struct SddmmOp(Arc<dyn SparseMatrix>);

impl CustomOp2 for SpmmOp {
    fn name(&self) -> &'static str {
        "sprig-sparse-linear"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = &self.0;
        let x = f32_slice(s1, l1, "x")?;
        let vals = f32_slice(s2, l2, "values")?;
        let (shape, m) = out_shape(l1.shape(), w.cols(), w.rows(), "x")?;
        let mut y = crate::nn::ops::output_buffer(m * w.rows());
        w.forward_with(vals, x, m, None, &mut y).map_err(kerr)?;
        Ok((CpuStorage::F32(y), shape))
    }
    fn bwd(&self, x: &Tensor, vals: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = grad.apply_op2_no_bwd(vals, &SpmmTOp(self.0.clone()))?;
        let dv = grad.apply_op2_no_bwd(x, &SddmmOp(self.0.clone()))?;
        Ok((Some(dx), Some(dv)))
    }
}

impl CustomOp2 for SpmmTOp {
    fn name(&self) -> &'static str {
        "sprig-sparse-linear-dx"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = &self.0;
        let dy = f32_slice(s1, l1, "dy")?;
        let vals = f32_slice(s2, l2, "values")?;
        let (shape, m) = out_shape(l1.shape(), w.rows(), w.cols(), "dy")?;
        let mut dx = crate::nn::ops::output_buffer(m * w.cols());
        w.backward_input_with(vals, dy, m, &mut dx).map_err(kerr)?;
        Ok((CpuStorage::F32(dx), shape))
    }
}

impl CustomOp2 for SddmmOp {
    fn name(&self) -> &'static str {
        "sprig-sparse-linear-dw"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = &self.0;
        let dy = f32_slice(s1, l1, "dy")?;
        let x = f32_slice(s2, l2, "x")?;
        let (_, m) = out_shape(l1.shape(), w.rows(), w.cols(), "dy")?;
        let mut out = vec![0f32; w.nnz()];
        w.grad_values(dy, x, m, &mut out).map_err(kerr)?;
        Ok((CpuStorage::F32(out), Shape::from(w.nnz())))
    }
}

/// `x [.., K] -> [.., N]` through pattern `w` with stored `values [nnz]` (differentiable in both).
pub fn sparse_matmul(x: &Tensor, values: &Tensor, w: &Arc<dyn SparseMatrix>) -> Result<Tensor> {
    let x = x.contiguous()?;
    let values = values.contiguous()?;
    x.apply_op2_arc(&values, Arc::new(Box::new(SpmmOp(w.clone()))))
}

/// The longest run of K that candle's CPU matmul (the `gemm` crate) sums in one block on every
/// CPU. `gemm` cuts K into blocks sized from the L1 cache (gemm-common 0.19, `kernel_params`: at
/// least 512, 1024 on a 48 KiB 12-way L1 such as recent Xeons', 512 on an 8-way one such as Zen
/// 4's), and each block's sum is added to the output, so for a longer K the rounding, and a trained
/// network, differ between CPUs.
pub const CPU_INVARIANT_K: usize = 512;

/// `a [m, k] · b [k, n]` with the same bits on every x86-64 CPU with FMA (`gemm`'s kernel there):
/// K is cut into `ceil(k / 512)` equal blocks (what `gemm` does on an 8-way L1), each multiplied
/// alone and the partial products added in order. Differentiable; `a.matmul(b)` itself when `k <= 512` or the inputs are not 2-D.
pub fn matmul_cpu_invariant(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let k = a.dim(candle_core::D::Minus1)?;
    if k <= CPU_INVARIANT_K || a.rank() != 2 || b.rank() != 2 {
        return a.matmul(b);
    }
    let len = k.div_ceil(k.div_ceil(CPU_INVARIANT_K));
    let mut sum = a.narrow(1, 0, len)?.matmul(&b.narrow(0, 0, len)?)?;
    let mut at = len;
    while at < k {
        let l = len.min(k - at);
        sum = (sum + a.narrow(1, at, l)?.matmul(&b.narrow(0, at, l)?)?)?;
        at += l;
    }
    Ok(sum)
}

/// A linear layer with a fixed sparse pattern: trainable values (a [`Var`]) and an optional bias.
pub struct SparseLinear {
    pattern: Arc<dyn SparseMatrix>,
    values: Var,
    bias: Option<Tensor>,
}

impl std::fmt::Debug for SparseLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SparseLinear({} {}x{}, nnz {})",
            self.pattern.format_name(),
            self.pattern.rows(),
            self.pattern.cols(),
            self.pattern.nnz()
        )
    }
}

impl SparseLinear {
    /// Wraps a compiled pattern; its stored values become the trainable [`Var`].
    pub fn new(pattern: Arc<dyn SparseMatrix>, bias: Option<Tensor>, device: &Device) -> Result<Self> {
        if let Some(b) = &bias {
            if b.dims() != [pattern.rows()] {
                candle_core::bail!("sparse linear: bias shape {:?}, expected [{}]", b.dims(), pattern.rows());
            }
        }
        let values = Var::from_slice(pattern.values(), pattern.nnz(), device)?;
        Ok(Self { pattern, values, bias })
    }

    /// Compiles a dense weight `[N, K]` and a keep mask (`&[bool]`, row-major) to `format`.
    pub fn from_dense(w: &Tensor, keep: &[bool], bias: Option<Tensor>, format: Format) -> Result<Self> {
        let (n, k) = w.dims2()?;
        let mask = Bitmask::from_bools(n, k, keep).map_err(kerr)?;
        Self::from_bitmask(w, &mask, bias, format)
    }

    /// Compiles a dense weight `[N, K]` and its keep [`Bitmask`] (the bit layout of
    /// `sprig_prune::Mask`, so a pruning mask reaches the kernels without a pass over booleans).
    pub fn from_bitmask(w: &Tensor, mask: &Bitmask, bias: Option<Tensor>, format: Format) -> Result<Self> {
        let (n, k) = w.dims2()?;
        if (mask.rows(), mask.cols()) != (n, k) {
            candle_core::bail!("sparse linear: mask is {}x{}, the weight is {n}x{k}", mask.rows(), mask.cols());
        }
        let dense = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let pattern: Arc<dyn SparseMatrix> = match format {
            Format::Csr => Arc::new(Csr::from_dense(&dense, n, k, mask).map_err(kerr)?),
            Format::Bsr(r, c) => Arc::new(Bsr::from_dense(&dense, n, k, (r, c), mask).map_err(kerr)?),
            Format::Nm(nn, mm) => Arc::new(NmSparse::from_dense(&dense, n, k, (nn, mm), mask).map_err(kerr)?),
        };
        Self::new(pattern, bias, w.device())
    }

    /// Like [`SparseLinear::from_dense`] with a 0/1 mask tensor of W's shape (non-zero = keep).
    pub fn from_dense_mask_tensor(w: &Tensor, mask: &Tensor, bias: Option<Tensor>, format: Format) -> Result<Self> {
        if mask.dims() != w.dims() {
            candle_core::bail!("sparse linear: mask shape {:?} differs from weight shape {:?}", mask.dims(), w.dims());
        }
        let keep: Vec<bool> = mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?.iter().map(|&v| v != 0.0).collect();
        Self::from_dense(w, &keep, bias, format)
    }

    /// `y = x·Wᵀ + b` for `x [.., K]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = sparse_matmul(x, self.values.as_tensor(), &self.pattern)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// The trainable stored values.
    pub fn values(&self) -> &Var {
        &self.values
    }
    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
    /// The fixed pattern.
    pub fn pattern(&self) -> &Arc<dyn SparseMatrix> {
        &self.pattern
    }

    /// The dense weight `[N, K]` with the current values (zeros off the pattern).
    pub fn dense_weight(&self) -> Result<Tensor> {
        dense_of(&self.pattern, &self.values)
    }
}

/// A compiled sparse weight without its bias: a fixed pattern (CSR, BSR or N:M) and its trainable
/// stored values, the part of a [`SparseLinear`] a model keeps per matrix.
#[derive(Clone)]
pub struct SparseWeight {
    pub pattern: Arc<dyn SparseMatrix>,
    pub values: Var,
}

impl std::fmt::Debug for SparseWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SparseWeight({} {}x{}, nnz {})", self.pattern.format_name(), self.pattern.rows(), self.pattern.cols(), self.pattern.nnz())
    }
}

impl SparseWeight {
    /// Compiles a dense weight `[N, K]` to `format`, keeping the positions where `keep` is set.
    pub fn from_bitmask(w: &Tensor, keep: &Bitmask, format: Format) -> Result<Self> {
        let sl = SparseLinear::from_bitmask(w, keep, None, format)?;
        Ok(Self { pattern: sl.pattern, values: sl.values })
    }

    /// The dense weight `[N, K]` with the current values (zeros off the pattern).
    pub fn to_dense(&self) -> Result<Tensor> {
        dense_of(&self.pattern, &self.values)
    }
}

/// `pattern` with `values` in place as a dense `[N, K]` tensor, zeros elsewhere.
fn dense_of(pattern: &Arc<dyn SparseMatrix>, values: &Var) -> Result<Tensor> {
    let vals = values.as_tensor().to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let d = pattern.to_dense_with(&vals).map_err(kerr)?;
    Tensor::from_vec(d, (pattern.rows(), pattern.cols()), values.device())
}
