//! Fused multi-head self-attention (Vaswani et al. 2017, eq. 1) on a packed `qkv [B, S, 3H]`
//! buffer (columns `0..H` = Q, `H..2H` = K, `2H..3H` = V; head `h` owns columns `h·d..(h+1)·d` of
//! each): scores, additive key mask, softmax, dropout on the probabilities and the context
//! `ctx [B, S, H]`, one (batch, head) pair per task. No transposes or copies of Q/K/V are made:
//! the small products run on strided views with the register-tiled kernel of [`super::small_gemm`]
//! (sequential inside a task; rayon across tasks).
//!
//! Backward (for `P = softmax(s·QKᵀ + mask)`, `P' = dropout(P)`, `C = P'V`):
//! `dV = P'ᵀdC`, `dP = dropout(dC·Vᵀ)`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))`, `dQ = s·dS·K`,
//! `dK = s·dSᵀ·Q`.
use super::dropout::DropoutSpec;
use super::softmax::{scale_row, scaled_softmax_row, softmax_backward_row, unnormalized_softmax_row};
use super::small_gemm::{gemm, pack, Strided};
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

/// Strided `[S, d]` view of head `h`'s block `part` (0 = Q, 1 = K, 2 = V) of batch row `b`
/// (`transposed`: its transpose `[d, S]`).
fn view<'a>(qkv: &'a [f32], a: &AttentionSpec, b: usize, h: usize, part: usize, transposed: bool) -> Strided<'a> {
    let h3 = 3 * a.hidden();
    let off = b * a.seq * h3 + part * a.hidden() + h * a.head_dim;
    let data = &qkv[off..off + (a.seq - 1) * h3 + a.head_dim];
    if transposed { Strided { data, rs: 1, cs: h3 } } else { Strided { data, rs: h3, cs: 1 } }
}

/// Asks for the Q, K and V rows of task `t`, the task a thread most likely runs next (rayon
/// hands each thread a contiguous range of tasks). Its 3·S rows of `d` floats lie 3H floats
/// apart (a new page every row at H = 384), which the hardware prefetcher does not follow.
pub(crate) fn prefetch_task(qkv: &[f32], a: &AttentionSpec, t: usize) {
    if t >= a.batch * a.heads {
        return;
    }
    let (b, h) = (t / a.heads, t % a.heads);
    for part in 0..3 {
        let v = view(qkv, a, b, h, part, false);
        for r in 0..a.seq {
            crate::kernels::prefetch(v.data[r * v.rs..].as_ptr() as *const u8, a.head_dim * std::mem::size_of::<f32>());
        }
    }
}

/// Per-thread packing buffers.
#[derive(Default)]
struct Panels {
    b: Vec<f32>,
    p: Vec<f32>,
    d: Vec<f32>,
    /// Row `1 / Σ` of unnormalized probabilities (inference).
    inv: Vec<f32>,
}

/// Softmax probabilities of task `(b, h)` into `p [S, S]`; `panel` is scratch. With `inv_sums`,
/// the rows are left unnormalized (`exp(s − max)`) and `inv_sums[r]` holds row `r`'s `1 / Σ`.
fn probs_into(qkv: &[f32], a: &AttentionSpec, b: usize, h: usize, p: &mut [f32], panel: &mut Vec<f32>, inv_sums: Option<&mut Vec<f32>>) {
    let (s, d) = (a.seq, a.head_dim);
    pack(view(qkv, a, b, h, 1, true), d, s, panel);
    // SAFETY: p is [S, S], row stride S; the views cover S x d.
    unsafe { gemm(s, s, d, 1.0, view(qkv, a, b, h, 0, false), panel, p.as_mut_ptr(), s, false) };
    let bias = &a.key_bias[b * s..(b + 1) * s];
    match inv_sums {
        Some(inv) => {
            inv.clear();
            inv.extend(p.chunks_mut(s).map(|row| unnormalized_softmax_row(row, a.scale, bias)));
        }
        None => p.chunks_mut(s).for_each(|row| scaled_softmax_row(row, a.scale, bias)),
    }
}

/// Forward: writes `ctx [B, S, H]`; if `probs` is given (`[B, heads, S, S]`) the softmax
/// probabilities (before dropout) are kept there for the backward.
pub fn forward(qkv: &[f32], a: &AttentionSpec, ctx: &mut [f32], probs: Option<&mut [f32]>) {
    let (s, d, hid) = (a.seq, a.head_dim, a.hidden());
    assert_eq!(qkv.len(), a.batch * s * 3 * hid, "attention: qkv length");
    assert_eq!(ctx.len(), a.batch * s * hid, "attention: ctx length");
    let out = SendPtr(ctx.as_mut_ptr());
    let keep = probs.is_some();
    let task = |t: usize, p: &mut [f32], w: &mut Panels| {
        let (b, h) = (t / a.heads, t % a.heads);
        prefetch_task(qkv, a, t + 1);
        // Probabilities not kept for a backward stay unnormalized: each context row is scaled
        // by its 1/Σ after the product (d multiplies per row instead of S; dropout is linear).
        probs_into(qkv, a, b, h, p, &mut w.b, (!keep).then_some(&mut w.inv));
        let pd: &[f32] = match &a.dropout {
            Some(dr) => {
                w.d.resize(s * s, 0.0);
                dr.apply_to(p, &mut w.d, (t * s * s) as u64);
                &w.d
            }
            None => p,
        };
        pack(view(qkv, a, b, h, 2, false), s, d, &mut w.b);
        // Capture the whole `Send` wrapper, not its raw-pointer field (edition 2021 closures
        // capture disjoint fields).
        #[allow(clippy::redundant_locals)]
        let out = out;
        // SAFETY: task t writes only rows of batch b, columns h·d..(h+1)·d of ctx (row stride H).
        unsafe {
            let o = out.0.add(b * s * hid + h * d);
            gemm(s, d, s, 1.0, Strided { data: pd, rs: s, cs: 1 }, &w.b, o, hid, false);
            if !keep {
                for (r, &inv) in w.inv.iter().enumerate() {
                    scale_row(std::slice::from_raw_parts_mut(o.add(r * hid), d), inv);
                }
            }
        }
    };
    match probs {
        Some(pr) => {
            assert_eq!(pr.len(), a.probs_len(), "attention: probs length");
            pr.par_chunks_mut(s * s).enumerate().for_each_init(Panels::default, |w, (t, p)| task(t, p, w));
        }
        None => (0..a.batch * a.heads).into_par_iter().for_each_init(Panels::default, |w, t| {
            let mut p = std::mem::take(&mut w.p);
            p.resize(s * s, 0.0);
            task(t, &mut p, w);
            w.p = p;
        }),
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
    (0..a.batch * a.heads).into_par_iter().for_each_init(Panels::default, |w, t| {
        // Capture the whole `Send` wrapper, not its raw-pointer field (edition 2021 closures
        // capture disjoint fields).
        #[allow(clippy::redundant_locals)]
        let out = out;
        let (b, h) = (t / a.heads, t % a.heads);
        let mut own = std::mem::take(&mut w.p);
        let p: &[f32] = match probs {
            Some(pr) => &pr[t * s * s..(t + 1) * s * s],
            None => {
                own.resize(s * s, 0.0);
                probs_into(qkv, a, b, h, &mut own, &mut w.b, None);
                &own
            }
        };
        let dc_off = b * s * hid + h * d;
        let dc = Strided { data: &dctx[dc_off..dc_off + (s - 1) * hid + d], rs: hid, cs: 1 };
        let base = b * s * h3 + h * d;
        // P' = dropout(P) (into the scratch that later holds dP)
        let pd = &mut w.d;
        pd.resize(s * s, 0.0);
        let pdrop: &[f32] = match &a.dropout {
            Some(dr) => {
                dr.apply_to(p, pd, (t * s * s) as u64);
                pd
            }
            None => p,
        };
        // SAFETY (all gemm calls below): task t writes only rows of batch b, columns h·d..(h+1)·d
        // of each of Q, K, V in dqkv (row stride 3H), and its own scratch buffers.
        // dV = P'ᵀ dC
        pack(dc, s, d, &mut w.b);
        unsafe { gemm(s, d, s, 1.0, Strided { data: pdrop, rs: 1, cs: s }, &w.b, out.0.add(base + 2 * hid), h3, false) };
        // dP = dropout(dC Vᵀ), in P''s buffer
        pack(view(qkv, a, b, h, 2, true), d, s, &mut w.b);
        unsafe { gemm(s, s, d, 1.0, dc, &w.b, pd.as_mut_ptr(), s, false) };
        if let Some(dr) = &a.dropout {
            dr.apply(pd, (t * s * s) as u64);
        }
        // dS = P ⊙ (dP − rowsum(dP ⊙ P))
        for (dr, pr) in pd.chunks_mut(s).zip(p.chunks(s)) {
            softmax_backward_row(dr, pr);
        }
        // dQ = s·dS K, dK = s·dSᵀ Q
        pack(view(qkv, a, b, h, 1, false), s, d, &mut w.b);
        unsafe { gemm(s, d, s, a.scale, Strided { data: pd, rs: s, cs: 1 }, &w.b, out.0.add(base), h3, false) };
        pack(view(qkv, a, b, h, 0, false), s, d, &mut w.b);
        unsafe { gemm(s, d, s, a.scale, Strided { data: pd, rs: 1, cs: s }, &w.b, out.0.add(base + hid), h3, false) };
        w.p = own;
    });
}
