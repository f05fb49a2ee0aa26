//! N:M (2:4, 4:8, any N with groups of 4 or 8) weight gradient (SDDMM), *activation-stationary*
//! with vector lanes over 8 output rows. (The N:M forward is the K-blocked panel kernel of
//! [`super::tasks`]: every row keeps the same number of weights in each block of input columns.)
//!
//! In a group of `G` (4 or 8) input columns, row `n` keeps `N` weights at in-group offsets
//! `o[n, g, t]`. For 8 consecutive output rows `n0..n0+8`:
//!
//! `dW[n0+l, g, t] = Σ_m dY[m, n0+l] · X[m, G·g + o[n0+l, g, t]]`
//!
//! The `G` activations `X[m, G·g..G·g+G]` are broadcast to a vector once per `(m, g)`
//! (`vbroadcastf128` for G=4, a plain load for G=8); each lane then picks its own activation with
//! one variable permute (`vpermilps` / `vpermps`) driven by the stored offsets, and one FMA with
//! the 8 output gradients `dY[m, n0..n0+8]` adds it in. This is the CPU analogue of the
//! compressed-operand + metadata layout of NVIDIA's 2:4 sparse tensor cores (Mishra et al. 2021,
//! "Accelerating Sparse Deep Neural Networks", arXiv:2104.08378, Sec. 3): values + 2-bit (here
//! 1-byte) in-group indices.
//!
//! Layout: the offsets are kept once, at construction, "lane-interleaved" (`ctrl[(b·S + s)·8 + l]`
//! for row block `b`, slot `s = g·N + t`, row `8b+l`, `S = K/G·N` slots per row); the gradient is
//! produced in that order and de-interleaved into the natural row-major slot order (the public
//! [`crate::NmSparse`] order) with 8x8 register transposes. Rows past the last full block of 8 use
//! a scalar loop.
use super::simd::Simd;

/// Pattern-side data of an N:M matrix for these kernels.
#[derive(Debug, Clone)]
pub(crate) struct NmLayout {
    pub rows: usize,
    pub cols: usize,
    /// Kept per group (N) and group size (G).
    pub n: usize,
    pub g: usize,
    /// Natural in-group offsets of the rows past the last full 8-row block.
    pub tail_off: Vec<u8>,
    /// Lane-interleaved offsets of the full 8-row blocks.
    pub ctrl: Vec<u8>,
}

impl NmLayout {
    pub(crate) fn new(rows: usize, cols: usize, n: usize, g: usize, off: Vec<u8>) -> Self {
        let s = cols / g * n;
        let nb = rows / 8;
        let mut ctrl = vec![0u8; nb * s * 8];
        for b in 0..nb {
            for l in 0..8 {
                for si in 0..s {
                    ctrl[(b * s + si) * 8 + l] = off[(8 * b + l) * s + si];
                }
            }
        }
        let tail_off = off[nb * 8 * s..].to_vec();
        Self { rows, cols, n, g, tail_off, ctrl }
    }
    pub(crate) fn slots(&self) -> usize {
        self.cols / self.g * self.n
    }
    /// Whether the vector kernels apply (groups of 4 or 8).
    pub(crate) fn vectorised(&self) -> bool {
        self.g == 4 || self.g == 8
    }
    /// Column of slot `s` of row `r` (a row past the last full 8-row block).
    #[inline(always)]
    pub(crate) fn col(&self, r: usize, s: usize) -> usize {
        let r0 = self.rows / 8 * 8;
        (s / self.n) * self.g + self.tail_off[(r - r0) * self.slots() + s] as usize
    }
}

/// Interleaves (or, with `back`, de-interleaves) the values of row block `b`: natural
/// `nat[(8b+l)·S + s]` <-> `lan[s·8 + l]` (the block's part of the lane-interleaved buffer).
#[inline(always)]
pub(crate) unsafe fn interleave_block<S: Simd>(nat: *mut f32, lan: *mut f32, s_per: usize, back: bool) {
    let s8 = s_per / 8 * 8;
    unsafe {
        for s0 in (0..s8).step_by(8) {
            let mut r = [S::zero(); 8];
            if back {
                for (j, rv) in r.iter_mut().enumerate() {
                    *rv = S::load(lan.add((s0 + j) * 8));
                }
                S::transpose8(&mut r);
                for (l, rv) in r.iter().enumerate() {
                    S::store(nat.add(l * s_per + s0), *rv);
                }
            } else {
                for (l, rv) in r.iter_mut().enumerate() {
                    *rv = S::load(nat.add(l * s_per + s0));
                }
                S::transpose8(&mut r);
                for (j, rv) in r.iter().enumerate() {
                    S::store(lan.add((s0 + j) * 8), *rv);
                }
            }
        }
        for s in s8..s_per {
            for l in 0..8 {
                if back {
                    *nat.add(l * s_per + s) = *lan.add(s * 8 + l);
                } else {
                    *lan.add(s * 8 + l) = *nat.add(l * s_per + s);
                }
            }
        }
    }
}

/// SDDMM for row block `b` and batch rows `m0..m0+MR`: adds their contribution to every slot of
/// the block's lane-interleaved gradient `gl` (`S·8` floats, L1-resident). The `MR` rows of dY
/// (8 lanes each) and, per group, the `MR` broadcast activations stay in registers.
#[inline(always)]
unsafe fn sddmm_tile<S: Simd, const MR: usize, const G: usize>(
    lay: &NmLayout,
    dy: *const f32,
    x: *const f32,
    m0: usize,
    b: usize,
    gl: *mut f32,
) {
    let (k, n_out, n) = (lay.cols, lay.rows, lay.n);
    let s_per = lay.slots();
    unsafe {
        let cb = lay.ctrl.as_ptr().add(b * s_per * 8);
        let d: [S::V; MR] = std::array::from_fn(|i| S::load(dy.add((m0 + i) * n_out + 8 * b)));
        for gi in 0..k / G {
            let mut xg = [S::zero(); MR];
            for (i, xv) in xg.iter_mut().enumerate() {
                let p = x.add((m0 + i) * k + gi * G);
                *xv = if G == 4 { S::bcast4(p) } else { S::load(p) };
            }
            for t in 0..n {
                let s = gi * n + t;
                let c = S::load_idx_u8(cb.add(s * 8));
                let mut acc = S::load(gl.add(s * 8));
                for i in 0..MR {
                    let xs = if G == 4 { S::perm4(xg[i], c) } else { S::perm8(xg[i], c) };
                    acc = S::fma(d[i], xs, acc);
                }
                S::store(gl.add(s * 8), acc);
            }
        }
    }
}

/// One SDDMM task: row blocks `b0..b1` (their interleaved gradient `gl`, `(b1-b0)·S·8` floats,
/// zeroed by the caller), batch rows in chunks of 64 so the X chunk stays in L2 while each
/// block's gradient stays in L1.
#[inline(always)]
pub(crate) unsafe fn sddmm_task<S: Simd>(
    lay: &NmLayout,
    dy: &[f32],
    x: &[f32],
    m: usize,
    (b0, b1): (usize, usize),
    gl: &mut [f32],
) {
    let s_per = lay.slots();
    let mc = 64;
    macro_rules! go {
        ($G:literal) => {{
            for mm0 in (0..m).step_by(mc) {
                let mm1 = (mm0 + mc).min(m);
                for b in b0..b1 {
                    let g = unsafe { gl.as_mut_ptr().add((b - b0) * s_per * 8) };
                    let mut mm = mm0;
                    while mm + 4 <= mm1 {
                        unsafe { sddmm_tile::<S, 4, $G>(lay, dy.as_ptr(), x.as_ptr(), mm, b, g) };
                        mm += 4;
                    }
                    while mm < mm1 {
                        unsafe { sddmm_tile::<S, 1, $G>(lay, dy.as_ptr(), x.as_ptr(), mm, b, g) };
                        mm += 1;
                    }
                }
            }
        }};
    }
    if lay.g == 4 {
        go!(4)
    } else {
        go!(8)
    }
}

/// Scalar SDDMM for rows `r0..` (natural order output).
pub(crate) fn sddmm_rows_scalar(lay: &NmLayout, dy: &[f32], x: &[f32], m: usize, r0: usize, out: &mut [f32]) {
    let (k, n_out, s_per) = (lay.cols, lay.rows, lay.slots());
    for r in r0..n_out {
        for s in 0..s_per {
            let c = lay.col(r, s);
            out[r * s_per + s] = (0..m).map(|mm| dy[mm * n_out + r] * x[mm * k + c]).sum();
        }
    }
}
