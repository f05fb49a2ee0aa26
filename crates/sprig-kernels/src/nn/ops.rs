//! candle custom ops with backward for a transformer layer, on the kernels of [`crate::nn`]:
//!
//! * [`linear`]: `y = dropout(act(x·Wᵀ + b))` with faer GEMMs (forward, `dX = dY·W`,
//!   `dW = dYᵀ·X`, `db = Σ dY`), bias, GELU and dropout fused into the epilogue;
//! * [`attention`]: fused multi-head attention on a packed QKV tensor;
//! * [`add_layer_norm`]: `dropout(LN(a + r)·γ + β)`, the residual sum fused in;
//! * [`softmax_cross_entropy`]: mean cross-entropy of logits against class labels;
//! * [`conv2d`]: a stride-1 convolution with bias (im2col + GEMM), and [`relu_max_pool2x2`],
//!   for LeNet-style models.
//!
//! Each op keeps what its backward needs (GELU pre-activations, attention probabilities) only
//! when an input is tracked by autograd.
use super::attention::{self, AttentionSpec};
use super::conv::{self, conv2d_backward, conv2d_forward, relu_max_pool2x2_backward, Conv2dSpec};
use super::dropout::DropoutSpec;
use super::layer_norm;
use super::math::{gelu_backward_inplace, gelu_inplace, gelu_slice};
use super::Act;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Device, Layout, Result, Shape, Storage, Tensor};
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;
use crate::SparseMatrix;
use std::sync::{Arc, Mutex};

pub use super::profile;
use profile::timer;

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let v = match s {
        CpuStorage::F32(v) => v.as_slice(),
        other => candle_core::bail!("sprig nn op: {what} must be f32, got {:?}", other.dtype()),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("sprig nn op: {what} must be contiguous"),
    }
}

/// Runs `f` on the contiguous f32 data of `t` (copying only if `t` is not contiguous).
fn with_data<R>(t: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (st, l) = t.storage_and_layout();
    match &*st {
        Storage::Cpu(c) => f(slice(c, l, what)?),
        _ => candle_core::bail!("sprig nn op: {what} must be on the CPU"),
    }
}

fn cpu_tensor(v: Vec<f32>, shape: impl Into<Shape>) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// A buffer for an output its writer fully overwrites, without `vec![0; len]`'s memset (~450 MB
/// of writes per 90%-sparse MiniLM forward at batch 32 x 128; dropping them made that forward 12%
/// faster in an alternated A/B, see docs/results/training-step.md, 2026-11-27). Only for
/// writers whose contract is "every element written before any is read": the sparse kernels
/// (`forward_with`, `backward_input_with`, `grad_values`), faer with `Accum::Replace`, attention
/// and LayerNorm; their tests start from NaN-filled buffers to check that every element is written.
// The same allocation candle's CPU backend uses for its outputs (`alloc_uninit_vec`).
#[allow(clippy::uninit_vec)]
pub(crate) fn output_buffer(len: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: the capacity is `len`; f32 has no invalid bit patterns, and every caller's writer
    // overwrites all `len` elements before anything reads them (see above).
    unsafe { v.set_len(len) };
    v
}

fn gemm(c: MatMut<f32>, a: MatRef<f32>, b: MatRef<f32>) {
    faer::linalg::matmul::matmul(c, Accum::Replace, a, b, 1.0f32, Par::rayon(0));
}

/// The linear's backward epilogue in one pass over `dY [m, n]`: `g = gelu'(z) ⊙ dropout(dY)`
/// (each factor only if present) and `db = Σ_rows g`. Row groups of 256 run in parallel, each
/// in L2-sized pieces; the groups' column sums are added in group order, so `db` is the same
/// bits whatever the thread schedule (rayon's `fold` made it depend on the work split, and a
/// killed-and-resumed ticket run no longer matched the uninterrupted one).
/// (Before: a copy of dY, then dropout, GELU's derivative and the column sums as three more
/// passes over the whole [M, N] buffer; now the copy and one pass.)
fn grad_epilogue(dy: &[f32], n: usize, dropout: Option<&DropoutSpec>, z: Option<&[f32]>) -> (Vec<f32>, Vec<f32>) {
    const GROUP_ROWS: usize = 256;
    // A copy, then in place: a zeroed buffer written by `apply_to` cost one more pass (memset).
    let mut g = dy.to_vec();
    if n == 0 {
        return (g, Vec::new());
    }
    let piece = (16384 / n).max(1) * n;
    let partials: Vec<Vec<f32>> = g
        .par_chunks_mut(GROUP_ROWS * n)
        .enumerate()
        .map(|(c, gc)| {
            let mut s = vec![0f32; n];
            let base = c * GROUP_ROWS * n;
            for (p, gp) in gc.chunks_mut(piece).enumerate() {
                let off = base + p * piece;
                if let Some(d) = dropout {
                    d.apply(gp, off as u64);
                }
                if let Some(z) = z {
                    gelu_backward_inplace(&z[off..off + gp.len()], gp);
                }
                for r in gp.chunks(n) {
                    s.iter_mut().zip(r).for_each(|(a, b)| *a += b);
                }
            }
            s
        })
        .collect();
    let mut db = vec![0f32; n];
    for p in &partials {
        db.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    (g, db)
}

/// The weight of a [`LinearOp`]: a dense `[N, K]` tensor, or the stored values `[nnz]` of a fixed
/// sparse pattern (sprig-kernels' SpMM forward, `dX` by the transposed SpMM, and `d values` by
/// SDDMM at the kept positions only).
enum Weight {
    Dense,
    Sparse(Arc<dyn SparseMatrix>),
}

/// Rows (tokens) per call of a sparse kernel: blocking over M keeps a block of activations in
/// cache while the whole pattern streams over it (measured: 1.6x faster forward and 1.5-3x faster
/// backward at M = 4096 than one call, 90% CSR, MiniLM shapes).
const ROW_BLOCK: usize = 512;

struct LinearOp {
    weight: Weight,
    act: Act,
    dropout: Option<DropoutSpec>,
    keep: bool,
    /// GELU pre-activations `x·Wᵀ + b`, kept for the backward.
    pre: Mutex<Option<Vec<f32>>>,
}

fn kerr(e: crate::KernelError) -> candle_core::Error {
    candle_core::Error::Msg(format!("sprig-kernels: {e}"))
}

impl LinearOp {
    fn kind_index(&self) -> usize {
        match self.weight {
            Weight::Dense => 0,
            Weight::Sparse(_) => 1,
        }
    }

    /// `(N, K)` of the weight whose data (dense weight or sparse values) has `len` elements.
    fn nk(&self, w: &Layout) -> Result<(usize, usize)> {
        match &self.weight {
            Weight::Dense => match w.shape().dims() {
                [n, k] => Ok((*n, *k)),
                d => candle_core::bail!("linear: weight must be [out, in], got {d:?}"),
            },
            Weight::Sparse(p) => {
                if w.shape().dims() != [p.nnz()] {
                    candle_core::bail!("sparse linear: values shape {:?}, expected [{}]", w.shape().dims(), p.nnz());
                }
                Ok((p.rows(), p.cols()))
            }
        }
    }

    /// `x·Wᵀ + b`.
    #[allow(clippy::too_many_arguments)]
    fn pre_activation(&self, x: &[f32], w: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Result<Vec<f32>> {
        let mut z = output_buffer(m * n);
        match &self.weight {
            Weight::Dense => {
                gemm(
                    MatMut::from_row_major_slice_mut(&mut z, m, n),
                    MatRef::from_row_major_slice(x, m, k),
                    MatRef::from_row_major_slice(w, n, k).transpose(),
                );
                z.par_chunks_mut(n * 64).for_each(|c| {
                    for r in c.chunks_mut(n) {
                        r.iter_mut().zip(b).for_each(|(y, b)| *y += b);
                    }
                });
            }
            Weight::Sparse(p) => {
                for (r0, zc) in (0..m).step_by(ROW_BLOCK).zip(z.chunks_mut(ROW_BLOCK * n)) {
                    let mb = zc.len() / n;
                    p.forward_with(w, &x[r0 * k..(r0 + mb) * k], mb, Some(b), zc).map_err(kerr)?;
                }
            }
        }
        Ok(z)
    }
}

fn linear_dims(x: &Layout, b: &Layout, n: usize, k: usize) -> Result<(usize, Shape)> {
    if b.shape().dims() != [n] {
        candle_core::bail!("linear: bias shape {:?}, expected [{n}]", b.shape().dims());
    }
    let xd = x.shape().dims();
    if xd.last() != Some(&k) {
        candle_core::bail!("linear: input shape {xd:?}, last dimension must be {k}");
    }
    let mut od = xd.to_vec();
    *od.last_mut().expect("rank >= 1") = n;
    Ok((x.shape().elem_count() / k.max(1), Shape::from(od)))
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "sprig-linear"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, k) = self.nk(l2)?;
        let (m, shape) = linear_dims(l1, l3, n, k)?;
        let (x, w, b) = (slice(s1, l1, "x")?, slice(s2, l2, "weight")?, slice(s3, l3, "bias")?);
        if let (Weight::Sparse(p), Act::Gelu) = (&self.weight, self.act) {
            // GELU fused into the sparse kernel's output tiles (no separate pass over [M, N]);
            // its time counts as the sparse linear's.
            let t = timer(self.kind_index(), 0);
            let mut y = output_buffer(m * n);
            let mut z = if self.keep { output_buffer(m * n) } else { Vec::new() };
            for (r0, yc) in (0..m).step_by(ROW_BLOCK).zip(y.chunks_mut(ROW_BLOCK * n)) {
                let mb = yc.len() / n;
                let pre = self.keep.then(|| &mut z[r0 * n..(r0 + mb) * n]);
                p.forward_gelu_with(w, &x[r0 * k..(r0 + mb) * k], mb, Some(b), pre, yc).map_err(kerr)?;
            }
            if self.keep {
                *self.pre.lock().expect("linear cache") = Some(z);
            }
            drop(t);
            let _t = timer(2, 0);
            if let Some(d) = &self.dropout {
                d.apply_par(&mut y);
            }
            return Ok((CpuStorage::F32(y), shape));
        }
        let t = timer(self.kind_index(), 0);
        let z = self.pre_activation(x, w, b, m, n, k)?;
        drop(t);
        let _t = timer(2, 0);
        let mut y = match self.act {
            Act::Identity => z,
            // Inference (nothing tracked): GELU in place, no second [M, N] buffer.
            Act::Gelu if !self.keep => {
                let mut z = z;
                z.par_chunks_mut(1 << 14).for_each(gelu_inplace);
                z
            }
            Act::Gelu => {
                let mut y = output_buffer(m * n);
                y.par_chunks_mut(1 << 14).zip(z.par_chunks(1 << 14)).for_each(|(y, z)| gelu_slice(z, y));
                *self.pre.lock().expect("linear cache") = Some(z);
                y
            }
        };
        if let Some(d) = &self.dropout {
            d.apply_par(&mut y);
        }
        Ok((CpuStorage::F32(y), shape))
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, k) = self.nk(w.layout())?;
        let m = x.elem_count() / k.max(1);
        with_data(x, "x", |xs| {
            with_data(w, "weight", |ws| {
                let z = match self.act {
                    Act::Gelu => Some(match self.pre.lock().expect("linear cache").take() {
                        Some(z) => z,
                        None => with_data(b, "bias", |bs| self.pre_activation(xs, ws, bs, m, n, k))?,
                    }),
                    Act::Identity => None,
                };
                let t = timer(2, 1);
                let (g, db) = with_data(grad, "grad", |dy| {
                    if dy.len() != m * n {
                        candle_core::bail!("linear backward: grad has {} elements, expected {}", dy.len(), m * n);
                    }
                    Ok(grad_epilogue(dy, n, self.dropout.as_ref(), z.as_deref()))
                })?;
                drop(t);
                let _t = timer(self.kind_index(), 1);
                let mut dx = output_buffer(m * k);
                let dw = match &self.weight {
                    Weight::Dense => {
                        let mut dw = vec![0f32; n * k];
                        crate::dense::dense_linear_backward(xs, ws, &g, m, n, k, &mut dx, &mut dw).map_err(kerr)?;
                        cpu_tensor(dw, (n, k))?
                    }
                    Weight::Sparse(p) => {
                        // Written by the first row block's SDDMM (zeros when there are no rows).
                        let mut dv = if m == 0 { vec![0f32; p.nnz()] } else { output_buffer(p.nnz()) };
                        let mut part = vec![0f32; if m > ROW_BLOCK { p.nnz() } else { 0 }];
                        for (r0, dxc) in (0..m).step_by(ROW_BLOCK).zip(dx.chunks_mut(ROW_BLOCK * k)) {
                            let mb = dxc.len() / k;
                            let gc = &g[r0 * n..(r0 + mb) * n];
                            p.backward_input_with(ws, gc, mb, dxc).map_err(kerr)?;
                            if r0 == 0 {
                                p.grad_values(gc, &xs[..mb * k], mb, &mut dv).map_err(kerr)?;
                            } else {
                                p.grad_values(gc, &xs[r0 * k..(r0 + mb) * k], mb, &mut part).map_err(kerr)?;
                                dv.par_iter_mut().zip(&part).for_each(|(a, b)| *a += b);
                            }
                        }
                        cpu_tensor(dv, p.nnz())?
                    }
                };
                Ok((Some(cpu_tensor(dx, x.shape())?), Some(dw), Some(cpu_tensor(db, n)?)))
            })
        })
    }
}

fn tracked(ts: &[&Tensor]) -> bool {
    ts.iter().any(|t| t.track_op())
}

fn apply_linear(x: &Tensor, w: &Tensor, b: &Tensor, weight: Weight, act: Act, dropout: Option<DropoutSpec>) -> Result<Tensor> {
    let keep = tracked(&[x, w, b]);
    let op = LinearOp { weight, act, dropout, keep, pre: Mutex::new(None) };
    x.contiguous()?.apply_op3_arc(&w.contiguous()?, &b.contiguous()?, Arc::new(Box::new(op)))
}

/// `y = dropout(act(x·Wᵀ + b))` for `x [.., K]`, `w [N, K]`, `b [N]`, differentiable in all three.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor, act: Act, dropout: Option<DropoutSpec>) -> Result<Tensor> {
    apply_linear(x, w, b, Weight::Dense, act, dropout)
}

/// [`linear`] with a sparse weight: the fixed `pattern` and its trainable stored `values [nnz]`
/// (gradients reach only the kept weights).
pub fn sparse_linear(x: &Tensor, values: &Tensor, pattern: &Arc<dyn SparseMatrix>, b: &Tensor, act: Act, dropout: Option<DropoutSpec>) -> Result<Tensor> {
    apply_linear(x, values, b, Weight::Sparse(pattern.clone()), act, dropout)
}

struct AttentionOp {
    spec: AttentionSpec,
    keep: bool,
    /// Inference in int8 ([`crate::quant::attention`]); no backward.
    int8: bool,
    probs: Mutex<Option<Vec<f32>>>,
}

impl CustomOp1 for AttentionOp {
    fn name(&self) -> &'static str {
        "sprig-attention"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let a = &self.spec;
        let want = [a.batch, a.seq, 3 * a.hidden()];
        if l.shape().dims() != want {
            candle_core::bail!("attention: qkv shape {:?}, expected {want:?}", l.shape().dims());
        }
        let qkv = slice(s, l, "qkv")?;
        let _t = timer(3, 0);
        let mut ctx = output_buffer(a.batch * a.seq * a.hidden());
        if self.int8 {
            crate::quant::attention::forward(qkv, a, &mut ctx);
        } else if self.keep {
            let mut p = output_buffer(a.probs_len());
            attention::forward(qkv, a, &mut ctx, Some(&mut p));
            *self.probs.lock().expect("attention cache") = Some(p);
        } else {
            attention::forward(qkv, a, &mut ctx, None);
        }
        Ok((CpuStorage::F32(ctx), Shape::from((a.batch, a.seq, a.hidden()))))
    }
    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if self.int8 {
            candle_core::bail!("attention: the int8 attention is for inference only (no backward)");
        }
        let _t = timer(3, 1);
        let probs = self.probs.lock().expect("attention cache").take();
        let mut dqkv = output_buffer(qkv.elem_count());
        with_data(qkv, "qkv", |q| {
            with_data(grad, "grad", |g| {
                attention::backward(q, &self.spec, probs.as_deref(), g, &mut dqkv);
                Ok(())
            })
        })?;
        Ok(Some(cpu_tensor(dqkv, qkv.shape())?))
    }
}

/// Multi-head attention on `qkv [B, S, 3H]` (see [`crate::nn::attention`]), returning `[B, S, H]`.
pub fn attention(qkv: &Tensor, spec: AttentionSpec) -> Result<Tensor> {
    if spec.key_bias.len() != spec.batch * spec.seq {
        candle_core::bail!("attention: key bias has {} entries, expected {}", spec.key_bias.len(), spec.batch * spec.seq);
    }
    let keep = qkv.track_op();
    let op = AttentionOp { spec, keep, int8: false, probs: Mutex::new(None) };
    qkv.contiguous()?.apply_op1_arc(Arc::new(Box::new(op)))
}

/// [`attention`] for inference with int8 products where the CPU has AVX-512 VNNI
/// ([`crate::quant::attention`]; f32 elsewhere). Refuses dropout; has no backward.
pub fn attention_int8(qkv: &Tensor, spec: AttentionSpec) -> Result<Tensor> {
    if spec.key_bias.len() != spec.batch * spec.seq {
        candle_core::bail!("attention: key bias has {} entries, expected {}", spec.key_bias.len(), spec.batch * spec.seq);
    }
    if spec.dropout.is_some() {
        candle_core::bail!("attention: the int8 attention is for inference only (dropout given)");
    }
    let op = AttentionOp { spec, keep: false, int8: true, probs: Mutex::new(None) };
    qkv.detach().contiguous()?.apply_op1_arc(Arc::new(Box::new(op)))
}

struct AddLayerNormOp {
    eps: f32,
    dropout: Option<DropoutSpec>,
}

impl CustomOp3 for AddLayerNormOp {
    fn name(&self) -> &'static str {
        "sprig-add-layer-norm"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("add_layer_norm: shapes {:?} and {:?} differ", l1.shape(), l2.shape());
        }
        let gb = slice(s3, l3, "gamma_beta")?;
        let h = gb.len() / 2;
        if l1.shape().dims().last() != Some(&h) || gb.len() != 2 * h {
            candle_core::bail!("add_layer_norm: gamma/beta [{}] do not fit input {:?}", gb.len(), l1.shape());
        }
        let _t = timer(4, 0);
        let mut y = output_buffer(l1.shape().elem_count());
        layer_norm::forward(slice(s1, l1, "a")?, Some(slice(s2, l2, "r")?), &gb[..h], &gb[h..], self.eps, &mut y);
        if let Some(d) = &self.dropout {
            d.apply_par(&mut y);
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    fn bwd(&self, a: &Tensor, r: &Tensor, gb: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let _t = timer(4, 1);
        let mut dy = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        if let Some(d) = &self.dropout {
            d.apply_par(&mut dy);
        }
        let mut dz = vec![0f32; a.elem_count()];
        let h = gb.elem_count() / 2;
        let mut dgb = vec![0f32; 2 * h];
        with_data(a, "a", |av| {
            with_data(r, "r", |rv| {
                with_data(gb, "gamma_beta", |g| {
                    let (dg, db) = dgb.split_at_mut(h);
                    layer_norm::backward(av, Some(rv), &g[..h], self.eps, &dy, &mut dz, dg, db);
                    Ok(())
                })
            })
        })?;
        let dz = cpu_tensor(dz, a.shape())?;
        Ok((Some(dz.clone()), Some(dz), Some(cpu_tensor(dgb, 2 * h)?)))
    }
}

/// `dropout(LayerNorm(a + r)·γ + β)` over the last dimension; `gamma_beta = [γ; β]` (length `2H`).
pub fn add_layer_norm(a: &Tensor, r: &Tensor, gamma_beta: &Tensor, eps: f64, dropout: Option<DropoutSpec>) -> Result<Tensor> {
    let op = AddLayerNormOp { eps: eps as f32, dropout };
    a.contiguous()?.apply_op3_arc(&r.contiguous()?, &gamma_beta.contiguous()?, Arc::new(Box::new(op)))
}

struct SoftmaxXentOp {
    labels: Vec<u32>,
}

impl SoftmaxXentOp {
    /// Row softmax of `[B, C]` logits.
    fn softmax(z: &[f32], c: usize) -> Vec<f32> {
        let mut p = z.to_vec();
        for row in p.chunks_mut(c) {
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let s: f32 = row.iter_mut().map(|v| {
                *v = (*v - m).exp();
                *v
            }).sum();
            row.iter_mut().for_each(|v| *v /= s);
        }
        p
    }
}

impl CustomOp1 for SoftmaxXentOp {
    fn name(&self) -> &'static str {
        "sprig-softmax-cross-entropy"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c) = l.shape().dims2()?;
        let z = slice(s, l, "logits")?;
        let _t = timer(5, 0);
        let mut loss = 0f64;
        for (row, &y) in z.chunks(c).zip(&self.labels) {
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = m as f64 + row.iter().map(|v| ((v - m) as f64).exp()).sum::<f64>().ln();
            loss += lse - row[y as usize] as f64;
        }
        Ok((CpuStorage::F32(vec![(loss / b as f64) as f32]), Shape::from(())))
    }
    fn bwd(&self, logits: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (b, c) = logits.dims2()?;
        let _t = timer(5, 1);
        let g = grad.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()? / b as f32;
        let mut p = with_data(logits, "logits", |z| Ok(Self::softmax(z, c)))?;
        for (row, &y) in p.chunks_mut(c).zip(&self.labels) {
            row[y as usize] -= 1.0;
            row.iter_mut().for_each(|v| *v *= g);
        }
        Ok(Some(cpu_tensor(p, (b, c))?))
    }
}

/// Mean softmax cross-entropy of `logits [B, C]` against `labels` (`B` class indices `< C`).
pub fn softmax_cross_entropy(logits: &Tensor, labels: &[u32]) -> Result<Tensor> {
    let (b, c) = logits.dims2()?;
    if labels.len() != b {
        candle_core::bail!("cross-entropy: {} labels for {b} rows", labels.len());
    }
    if let Some(bad) = labels.iter().find(|&&y| y as usize >= c) {
        candle_core::bail!("cross-entropy: label {bad} out of range for {c} classes");
    }
    logits.contiguous()?.apply_op1_arc(Arc::new(Box::new(SoftmaxXentOp { labels: labels.to_vec() })))
}

struct Conv2dOp {
    pad: usize,
}

impl Conv2dOp {
    /// `(batch, spec)` from the input `[B, Cin, H, W]` and weight `[Cout, Cin, kh, kw]` shapes.
    fn spec(&self, x: &Shape, w: &Shape) -> Result<(usize, Conv2dSpec)> {
        let (&[b, cin, h, wd], &[cout, wcin, kh, kw]) = (x.dims(), w.dims()) else {
            candle_core::bail!("conv2d: input must be [B, Cin, H, W] and weight [Cout, Cin, kh, kw], got {:?} and {:?}", x.dims(), w.dims());
        };
        if wcin != cin {
            candle_core::bail!("conv2d: input has {cin} channels, weight expects {wcin}");
        }
        let s = Conv2dSpec { cin, cout, h, w: wd, kh, kw, pad: self.pad };
        s.out_hw().map_err(candle_core::Error::Msg)?;
        Ok((b, s))
    }
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "sprig-conv2d"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, s) = self.spec(l1.shape(), l2.shape())?;
        let (ho, wo) = s.out_hw().map_err(candle_core::Error::Msg)?;
        let mut y = output_buffer(b * s.cout * ho * wo);
        conv2d_forward(&s, b, slice(s1, l1, "input")?, slice(s2, l2, "weight")?, slice(s3, l3, "bias")?, &mut y).map_err(candle_core::Error::Msg)?;
        Ok((CpuStorage::F32(y), Shape::from((b, s.cout, ho, wo))))
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (batch, s) = self.spec(x.shape(), w.shape())?;
        let mut dw = vec![0f32; w.elem_count()];
        let mut db = vec![0f32; s.cout];
        // No input gradient for an untracked input (the image batch of a first layer).
        let mut dx = x.track_op().then(|| output_buffer(x.elem_count()));
        with_data(x, "input", |xs| {
            with_data(w, "weight", |ws| {
                with_data(grad, "grad", |dy| conv2d_backward(&s, batch, xs, ws, dy, dx.as_deref_mut(), &mut dw, &mut db).map_err(candle_core::Error::Msg))
            })
        })?;
        let dx = dx.map(|v| cpu_tensor(v, x.shape())).transpose()?;
        Ok((dx, Some(cpu_tensor(dw, w.shape())?), Some(cpu_tensor(db, b.shape())?)))
    }
}

/// `conv2d(x, w) + b` with stride 1 and zero padding `pad`: `x [B, Cin, H, W]`, `w [Cout, Cin, kh, kw]`,
/// `b [Cout]`, differentiable in all three (im2col + GEMM, see [`super::conv`]).
pub fn conv2d(x: &Tensor, w: &Tensor, b: &Tensor, pad: usize) -> Result<Tensor> {
    x.contiguous()?.apply_op3_arc(&w.contiguous()?, &b.contiguous()?, Arc::new(Box::new(Conv2dOp { pad })))
}

struct ReluMaxPoolOp {
    /// Each output's window-maximum position, from the forward.
    arg: Mutex<Option<Vec<u8>>>,
}

impl CustomOp1 for ReluMaxPoolOp {
    fn name(&self) -> &'static str {
        "sprig-relu-max-pool2x2"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let &[b, c, h, w] = l.shape().dims() else {
            candle_core::bail!("relu_max_pool2x2: input must be [B, C, H, W], got {:?}", l.shape().dims());
        };
        let n = b * c * (h / 2) * (w / 2);
        let (mut y, mut arg) = (output_buffer(n), vec![0u8; n]);
        conv::relu_max_pool2x2(slice(s, l, "input")?, b * c, h, w, &mut y, &mut arg);
        *self.arg.lock().expect("pool cache") = Some(arg);
        Ok((CpuStorage::F32(y), Shape::from((b, c, h / 2, w / 2))))
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = x.dims4()?;
        let arg = self.arg.lock().expect("pool cache");
        let Some(arg) = arg.as_deref() else { candle_core::bail!("relu_max_pool2x2: backward before forward") };
        let mut dx = output_buffer(x.elem_count());
        with_data(grad, "grad", |dy| {
            relu_max_pool2x2_backward(dy, arg, h, w, &mut dx);
            Ok(())
        })?;
        Ok(Some(cpu_tensor(dx, x.shape())?))
    }
}

/// `relu(x).max_pool2d(2)` in one pass for `x [B, C, H, W]`: each 2x2 window's maximum clamped at
/// 0, the gradient routed to that maximum (LeNet-style conv blocks).
pub fn relu_max_pool2x2(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1_arc(Arc::new(Box::new(ReluMaxPoolOp { arg: Mutex::new(None) })))
}

struct QuantLinearOp {
    w: Arc<crate::QuantLinear>,
    bias: Option<Arc<Vec<f32>>>,
    gelu: bool,
}

impl CustomOp1 for QuantLinearOp {
    fn name(&self) -> &'static str {
        "sprig-int8-linear"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (k, n) = (self.w.cols(), self.w.rows());
        let dims = l.shape().dims();
        if dims.last() != Some(&k) {
            candle_core::bail!("int8 linear: x has shape {dims:?}, last dimension must be {k}");
        }
        let x = slice(s, l, "x")?;
        let _t = timer(6, 0);
        let m = x.len() / k;
        let mut y = output_buffer(m * n);
        self.w
            .forward(x, m, self.bias.as_deref().map(|b| b.as_slice()), self.gelu, &mut y)
            .map_err(|e| candle_core::Error::Msg(format!("int8 linear: {e}")))?;
        let mut out = dims.to_vec();
        *out.last_mut().expect("rank >= 1") = n;
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }
}

/// Inference only: `act(x·Wᵀ + b)` with an int8 weight ([`crate::QuantLinear`]; activations
/// quantized per token inside). No backward: training through it is an error.
pub fn quant_linear(x: &Tensor, w: &Arc<crate::QuantLinear>, bias: Option<Arc<Vec<f32>>>, act: Act) -> Result<Tensor> {
    let x = x.contiguous()?;
    x.apply_op1_no_bwd(&QuantLinearOp { w: w.clone(), bias, gelu: act == Act::Gelu })
}
