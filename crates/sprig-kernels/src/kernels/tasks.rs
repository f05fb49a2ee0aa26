//! Kernel bodies, generic over the vector type. Each `*_task` is one rayon task's work.
//!
//! Layout (forward, weight-stationary): activations are packed into panels of `pw = 8·V`
//! consecutive rows of X, transposed so that panel row `k` (`pw` floats, contiguous) holds
//! `X[m0..m0+pw, k]`. A stored weight `w = W[n, k]` then contributes `w · panel[k]` to the `pw`
//! outputs `Y[m0.., n]`: one broadcast and `V` FMAs, accumulated in registers across the whole
//! sparse row. Blocks of `R` output rows (BSR 4x1, 8x1, ...) reuse each panel load `R` times.
use super::simd::Simd;
use crate::formats::{BlockPattern, Idx};

/// One sparse row (CSR) against one panel: `tile[0..pw] = Σ_t vals[t] · panel[cols[t]]`.
/// `U` independent accumulator sets hide FMA latency when `V` is small.
#[inline(always)]
pub(crate) unsafe fn csr_row<S: Simd, I: Idx, const V: usize, const U: usize>(
    cols: &[I],
    vals: &[f32],
    xp: *const f32,
    pw: usize,
    tile: *mut f32,
) {
    unsafe {
        let z = S::zero();
        let mut acc = [[z; V]; U];
        let n = cols.len();
        let mut t = 0;
        while t + U <= n {
            for u in 0..U {
                let k = cols.get_unchecked(t + u).get();
                let w = S::splat(*vals.get_unchecked(t + u));
                let xr = xp.add(k * pw);
                for v in 0..V {
                    acc[u][v] = S::fma(w, S::load(xr.add(8 * v)), acc[u][v]);
                }
            }
            t += U;
        }
        while t < n {
            let k = cols.get_unchecked(t).get();
            let w = S::splat(*vals.get_unchecked(t));
            let xr = xp.add(k * pw);
            for v in 0..V {
                acc[0][v] = S::fma(w, S::load(xr.add(8 * v)), acc[0][v]);
            }
            t += 1;
        }
        for v in 0..V {
            let mut s = acc[0][v];
            for a in acc.iter().skip(1) {
                s = S::add(s, a[v]);
            }
            S::store(tile.add(8 * v), s);
        }
    }
}

/// Rows `i0..i0+R` of one block row (blocks `r x c`) against one panel;
/// `tile[i*pw..]` receives row `i0+i`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn block_rows<S: Simd, I: Idx, const R: usize, const V: usize>(
    cols: &[I],
    vals: &[f32],
    (r, c): (usize, usize),
    i0: usize,
    xp: *const f32,
    pw: usize,
    tile: *mut f32,
) {
    unsafe {
        let z = S::zero();
        let mut acc = [[z; V]; R];
        let rc = r * c;
        for (bi, k) in cols.iter().enumerate() {
            let k0 = k.get();
            let wb = vals.as_ptr().add(bi * rc + i0 * c);
            for j in 0..c {
                let xr = xp.add((k0 + j) * pw);
                let mut xv = [z; V];
                for v in 0..V {
                    xv[v] = S::load(xr.add(8 * v));
                }
                for i in 0..R {
                    let w = S::splat(*wb.add(i * c + j));
                    for v in 0..V {
                        acc[i][v] = S::fma(w, xv[v], acc[i][v]);
                    }
                }
            }
        }
        for i in 0..R {
            for v in 0..V {
                S::store(tile.add(i * pw + 8 * v), acc[i][v]);
            }
        }
    }
}

/// What one forward panel task computes.
pub(crate) struct PanelJob<'a, I> {
    pub p: &'a BlockPattern<I>,
    pub vals: &'a [f32],
    /// Base of this task's panel (`k * pw` floats).
    pub xp: *const f32,
    pub pw: usize,
    /// Valid lanes of this panel (`<= pw`) and the first row of X it holds.
    pub lanes: usize,
    pub m0: usize,
    pub br0: usize,
    pub br1: usize,
    pub bias: Option<&'a [f32]>,
    /// Y, `[m, n_out]` row-major.
    pub y: *mut f32,
}

/// Which kernel instantiation a forward call uses.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Plan {
    Csr { v: usize },
    Block { r: usize, v: usize },
}

/// Writes the chunk buffer (`rows x pw`, row `i` = output row `row0 + i`) into Y, adding the
/// bias. Stores run along Y's rows (contiguous), not down its columns: a strided scatter of single
/// floats (stride N) was a third of the forward's time.
#[inline(always)]
unsafe fn flush(job: &PanelJob<'_, impl Idx>, buf: &[f32], row0: usize, rows: usize) {
    let n_out = job.p.rows;
    for l in 0..job.lanes {
        let dst = unsafe { std::slice::from_raw_parts_mut(job.y.add((job.m0 + l) * n_out + row0), rows) };
        match job.bias {
            Some(b) => {
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = buf[i * job.pw + l] + b[row0 + i];
                }
            }
            None => {
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = buf[i * job.pw + l];
                }
            }
        }
    }
}

macro_rules! csr_v {
    ($S:ty, $job:expr, $tile:expr, $V:literal, $U:literal) => {{
        let job = $job;
        let p = job.p;
        for br in job.br0..job.br1 {
            let (s, e) = (p.row_ptr[br], p.row_ptr[br + 1]);
            unsafe {
                csr_row::<$S, _, $V, $U>(
                    &p.col[s..e],
                    &job.vals[s..e],
                    job.xp,
                    job.pw,
                    $tile.as_mut_ptr().add((br - job.br0) * job.pw),
                );
            }
        }
    }};
}

macro_rules! block_rv {
    ($S:ty, $job:expr, $tile:expr, $R:literal, $V:literal) => {{
        let job = $job;
        let p = job.p;
        let (r, c) = (p.r, p.c);
        for br in job.br0..job.br1 {
            let (s, e) = (p.row_ptr[br], p.row_ptr[br + 1]);
            let vals = &job.vals[s * r * c..e * r * c];
            for i0 in (0..r).step_by($R) {
                unsafe {
                    block_rows::<$S, _, $R, $V>(
                        &p.col[s..e],
                        vals,
                        (r, c),
                        i0,
                        job.xp,
                        job.pw,
                        $tile.as_mut_ptr().add(((br - job.br0) * r + i0) * job.pw),
                    );
                }
            }
        }
    }};
}

/// One forward task: block rows `br0..br1` against one panel.
#[inline(always)]
pub(crate) unsafe fn panel_task<S: Simd, I: Idx>(job: &PanelJob<'_, I>, plan: Plan) {
    let rows = (job.br1 - job.br0) * job.p.r;
    let mut tile = vec![0f32; rows * job.pw];
    match plan {
        Plan::Csr { v: 8 } => csr_v!(S, job, tile, 8, 1),
        Plan::Csr { v: 4 } => csr_v!(S, job, tile, 4, 2),
        Plan::Csr { v: 2 } => csr_v!(S, job, tile, 2, 4),
        Plan::Csr { .. } => csr_v!(S, job, tile, 1, 8),
        Plan::Block { r: 4, v: 2 } => block_rv!(S, job, tile, 4, 2),
        Plan::Block { r: 4, .. } => block_rv!(S, job, tile, 4, 1),
        Plan::Block { r: 2, v: 4 } => block_rv!(S, job, tile, 2, 4),
        Plan::Block { r: 2, v: 2 } => block_rv!(S, job, tile, 2, 2),
        Plan::Block { r: 2, .. } => block_rv!(S, job, tile, 2, 1),
        Plan::Block { v: 8, .. } => block_rv!(S, job, tile, 1, 8),
        Plan::Block { v: 4, .. } => block_rv!(S, job, tile, 1, 4),
        Plan::Block { v: 2, .. } => block_rv!(S, job, tile, 1, 2),
        Plan::Block { .. } => block_rv!(S, job, tile, 1, 1),
    }
    unsafe { flush(job, &tile, job.br0 * job.p.r, rows) };
}

/// Small batches (M < 4): for each output row and each activation row, a gathered dot product
/// over the stored weights (no packing).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn small_m_task<S: Simd, I: Idx>(
    p: &BlockPattern<I>,
    vals: &[f32],
    x: &[f32],
    m: usize,
    br0: usize,
    br1: usize,
    bias: Option<&[f32]>,
    y: *mut f32,
) {
    let (r, c, k, n_out) = (p.r, p.c, p.cols, p.rows);
    for br in br0..br1 {
        let (s, e) = (p.row_ptr[br], p.row_ptr[br + 1]);
        for mm in 0..m {
            let xrow = &x[mm * k..(mm + 1) * k];
            if r == 1 && c == 1 {
                let cols = &p.col[s..e];
                let w = &vals[s..e];
                let n = cols.len();
                let mut t = 0;
                let mut acc = 0f32;
                unsafe {
                    let (mut a0, mut a1) = (S::zero(), S::zero());
                    let mut idx = [[0i32; 8]; 2];
                    while t + 16 <= n {
                        for h in 0..2 {
                            for l in 0..8 {
                                idx[h][l] = cols.get_unchecked(t + 8 * h + l).get() as i32;
                            }
                        }
                        let g0 = S::gather(xrow.as_ptr(), &idx[0]);
                        let g1 = S::gather(xrow.as_ptr(), &idx[1]);
                        a0 = S::fma(S::load(w.as_ptr().add(t)), g0, a0);
                        a1 = S::fma(S::load(w.as_ptr().add(t + 8)), g1, a1);
                        t += 16;
                    }
                    acc += S::hsum(S::add(a0, a1));
                }
                while t < n {
                    acc += w[t] * xrow[cols[t].get()];
                    t += 1;
                }
                let b = bias.map_or(0.0, |b| b[br]);
                unsafe { *y.add(mm * n_out + br) = acc + b };
            } else {
                for i in 0..r {
                    let mut acc = 0f32;
                    for b in s..e {
                        let k0 = p.col[b].get();
                        let wb = &vals[b * r * c + i * c..b * r * c + i * c + c];
                        for j in 0..c {
                            acc += wb[j] * xrow[k0 + j];
                        }
                    }
                    let row = br * r + i;
                    let b = bias.map_or(0.0, |b| b[row]);
                    unsafe { *y.add(mm * n_out + row) = acc + b };
                }
            }
        }
    }
}

/// `Σ_l a[l]·b[l]` over `len` (a multiple of 8) floats.
#[inline(always)]
unsafe fn dot<S: Simd>(a: *const f32, b: *const f32, len: usize) -> f32 {
    unsafe {
        let (mut s0, mut s1, mut s2, mut s3) = (S::zero(), S::zero(), S::zero(), S::zero());
        let mut l = 0;
        while l + 32 <= len {
            s0 = S::fma(S::load(a.add(l)), S::load(b.add(l)), s0);
            s1 = S::fma(S::load(a.add(l + 8)), S::load(b.add(l + 8)), s1);
            s2 = S::fma(S::load(a.add(l + 16)), S::load(b.add(l + 16)), s2);
            s3 = S::fma(S::load(a.add(l + 24)), S::load(b.add(l + 24)), s3);
            l += 32;
        }
        while l < len {
            s0 = S::fma(S::load(a.add(l)), S::load(b.add(l)), s0);
            l += 8;
        }
        S::hsum(S::add(S::add(s0, s1), S::add(s2, s3)))
    }
}

/// SDDMM for block rows `br0..br1` over all panels: `out` holds the values of blocks
/// `row_ptr[br0]..row_ptr[br1]`. `dyp` / `xp` are dY / X packed into `np` panels of width `pw`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sddmm_task<S: Simd, I: Idx>(
    p: &BlockPattern<I>,
    dyp: &[f32],
    xp: &[f32],
    pw: usize,
    np: usize,
    br0: usize,
    br1: usize,
    out: &mut [f32],
) {
    let (r, c, k, n_out) = (p.r, p.c, p.cols, p.rows);
    let rc = r * c;
    let b0 = p.row_ptr[br0];
    out.fill(0.0);
    for pi in 0..np {
        let dpan = unsafe { dyp.as_ptr().add(pi * n_out * pw) };
        let xpan = unsafe { xp.as_ptr().add(pi * k * pw) };
        for br in br0..br1 {
            for b in p.row_ptr[br]..p.row_ptr[br + 1] {
                let k0 = p.col[b].get();
                for i in 0..r {
                    let dr = unsafe { dpan.add((br * r + i) * pw) };
                    for j in 0..c {
                        let xr = unsafe { xpan.add((k0 + j) * pw) };
                        out[(b - b0) * rc + i * c + j] += unsafe { dot::<S>(dr, xr, pw) };
                    }
                }
            }
        }
    }
}
