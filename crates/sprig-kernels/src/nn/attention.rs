//! Fused multi-head self-attention (Vaswani et al. 2017, eq. 1) on a packed `qkv [B, S, 3H]`
//! buffer (columns `0..H` = Q, `H..2H` = K, `2H..3H` = V; head `h` owns columns `h·d..(h+1)·d` of
//! each): scores, additive key mask, softmax, dropout on the probabilities and the context
//! `ctx [B, S, H]`, one (batch, head) pair per task. No transposes or copies of Q/K/V are made:
//! the small products run on strided views (faer, sequential inside a task; rayon across tasks).
//!
//! Backward (for `P = softmax(s·QKᵀ + mask)`, `P' = dropout(P)`, `C = P'V`):
//! `dV = P'ᵀdC`, `dP = dropout(dC·Vᵀ)`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))`, `dQ = s·dS·K`,
//! `dK = s·dSᵀ·Q`.
use super::dropout::DropoutSpec;
use super::math::scaled_softmax_row;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// Shapes and options of one attention call.
#[derive(Clone, Debug)]
pub struct AttentionSpec {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Multiplies `QKᵀ` (usually `1/√head_dim`).
    pub scale: f32,
    /// Additive key bias `[B, S]` (0 for tokens, a large negative number for padding).
    pub key_bias: Vec<f32>,
    pub dropout: Option<DropoutSpec>,
}

impl AttentionSpec {
    pub fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }
    /// Length of the probability buffer `[B, heads, S, S]`.
    pub fn probs_len(&self) -> usize {
        self.batch * self.heads * self.seq * self.seq
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint column blocks of the output (one (batch, head) pair each).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Strided `[S, d]` view of head `h`'s block `part` (0 = Q, 1 = K, 2 = V) of batch row `b`.
fn view<'a>(qkv: &'a [f32], a: &AttentionSpec, b: usize, h: usize, part: usize) -> MatRef<'a, f32> {
    let h3 = 3 * a.hidden();
    let off = b * a.seq * h3 + part * a.hidden() + h * a.head_dim;
    MatRef::from_row_major_slice_with_stride(&qkv[off..], a.seq, a.head_dim, h3)
}

/// Strided mutable `[S, d]` view at `off` with row stride `stride` inside a shared buffer.
///
/// # Safety
/// The caller guarantees that concurrent views are disjoint and inside the buffer.
unsafe fn view_mut<'a>(p: SendPtr, off: usize, rows: usize, cols: usize, stride: usize) -> MatMut<'a, f32> {
    // SAFETY: forwarded to the caller.
    unsafe { MatMut::from_raw_parts_mut(p.0.add(off), rows, cols, stride as isize, 1) }
}

/// Softmax probabilities of task `(b, h)` into `p [S, S]`.
fn probs_into(qkv: &[f32], a: &AttentionSpec, b: usize, h: usize, p: &mut [f32]) {
    let s = a.seq;
    let pm = MatMut::from_row_major_slice_mut(p, s, s);
    faer::linalg::matmul::matmul(pm, Accum::Replace, view(qkv, a, b, h, 0), view(qkv, a, b, h, 1).transpose(), 1.0f32, Par::Seq);
    let bias = &a.key_bias[b * s..(b + 1) * s];
    for row in p.chunks_mut(s) {
        scaled_softmax_row(row, a.scale, bias);
    }
}

/// Forward: writes `ctx [B, S, H]`; if `probs` is given (`[B, heads, S, S]`) the softmax
/// probabilities (before dropout) are kept there for the backward.
pub fn forward(qkv: &[f32], a: &AttentionSpec, ctx: &mut [f32], probs: Option<&mut [f32]>) {
    let (s, d, hid) = (a.seq, a.head_dim, a.hidden());
    assert_eq!(qkv.len(), a.batch * s * 3 * hid, "attention: qkv length");
    assert_eq!(ctx.len(), a.batch * s * hid, "attention: ctx length");
    let out = SendPtr(ctx.as_mut_ptr());
    let task = |t: usize, p: &mut [f32]| {
        let (b, h) = (t / a.heads, t % a.heads);
        probs_into(qkv, a, b, h, p);
        let mut dropped;
        let pd: &[f32] = match &a.dropout {
            Some(dr) => {
                dropped = p.to_vec();
                dr.apply(&mut dropped, (t * s * s) as u64);
                &dropped
            }
            None => p,
        };
        // SAFETY: task t writes only rows of batch b, columns h·d..(h+1)·d of ctx.
        let c = unsafe { view_mut(out, b * s * hid + h * d, s, d, hid) };
        faer::linalg::matmul::matmul(c, Accum::Replace, MatRef::from_row_major_slice(pd, s, s), view(qkv, a, b, h, 2), 1.0f32, Par::Seq);
    };
    match probs {
        Some(pr) => {
            assert_eq!(pr.len(), a.probs_len(), "attention: probs length");
            pr.par_chunks_mut(s * s).enumerate().for_each(|(t, p)| task(t, p));
        }
        None => (0..a.batch * a.heads).into_par_iter().for_each(|t| task(t, &mut vec![0f32; s * s])),
    }
}

/// Backward: `dqkv [B, S, 3H]` from `dctx [B, S, H]`; `probs` from [`forward`] or `None` to
/// recompute them.
pub fn backward(qkv: &[f32], a: &AttentionSpec, probs: Option<&[f32]>, dctx: &[f32], dqkv: &mut [f32]) {
    let (s, d, hid) = (a.seq, a.head_dim, a.hidden());
    assert_eq!(dqkv.len(), qkv.len(), "attention: dqkv length");
    assert_eq!(dctx.len(), a.batch * s * hid, "attention: dctx length");
    let out = SendPtr(dqkv.as_mut_ptr());
    let h3 = 3 * hid;
    (0..a.batch * a.heads).into_par_iter().for_each(|t| {
        let (b, h) = (t / a.heads, t % a.heads);
        let mut own;
        let p: &[f32] = match probs {
            Some(pr) => &pr[t * s * s..(t + 1) * s * s],
            None => {
                own = vec![0f32; s * s];
                probs_into(qkv, a, b, h, &mut own);
                &own
            }
        };
        let dc = MatRef::from_row_major_slice_with_stride(&dctx[b * s * hid + h * d..], s, d, hid);
        let base = b * s * h3 + h * d;
        // dV = P'ᵀ dC
        let mut pd = p.to_vec();
        if let Some(dr) = &a.dropout {
            dr.apply(&mut pd, (t * s * s) as u64);
        }
        // SAFETY: task t writes only rows of batch b, columns h·d..(h+1)·d of each of Q, K, V.
        let dv = unsafe { view_mut(out, base + 2 * hid, s, d, h3) };
        faer::linalg::matmul::matmul(dv, Accum::Replace, MatRef::from_row_major_slice(&pd, s, s).transpose(), dc, 1.0f32, Par::Seq);
        // dP = dropout(dC Vᵀ), reusing pd's buffer
        let dp = &mut pd;
        faer::linalg::matmul::matmul(MatMut::from_row_major_slice_mut(dp, s, s), Accum::Replace, dc, view(qkv, a, b, h, 2).transpose(), 1.0f32, Par::Seq);
        if let Some(dr) = &a.dropout {
            dr.apply(dp, (t * s * s) as u64);
        }
        // dS = P ⊙ (dP − rowsum(dP ⊙ P))
        for (dr, pr) in dp.chunks_mut(s).zip(p.chunks(s)) {
            let dot: f32 = dr.iter().zip(pr).map(|(x, y)| x * y).sum();
            dr.iter_mut().zip(pr).for_each(|(x, y)| *x = y * (*x - dot));
        }
        let ds = MatRef::from_row_major_slice(dp, s, s);
        let dq = unsafe { view_mut(out, base, s, d, h3) };
        faer::linalg::matmul::matmul(dq, Accum::Replace, ds, view(qkv, a, b, h, 1), a.scale, Par::Seq);
        let dk = unsafe { view_mut(out, base + hid, s, d, h3) };
        faer::linalg::matmul::matmul(dk, Accum::Replace, ds.transpose(), view(qkv, a, b, h, 0), a.scale, Par::Seq);
    });
}
