//! Small batches (M < 4, e.g. one token at a time): the forward as dot products over the stored
//! weights (no packed panels), the input gradient as a scatter, the SDDMM weight gradient
//! directly, and a task runner whose fixed cost fits work of a few tens of microseconds.
//!
//! Measured on the 2-vCPU Zen 3 VM (2026-11-27, K=384 N=1536 M=1, 90%, medians of 150 x 50
//! calls): before these paths, BSR 4x1 took 77–105 µs and 2:4 90–120 µs, both slower than the
//! dense GEMV (~45 µs); the input gradient and SDDMM of a 90% CSR layer took 0.22–0.55 ms each.
use super::simd::Simd;
use crate::formats::{BlockPattern, Idx};
use rayon::prelude::*;

/// Runs `f(0..n)` on the pool, for work of a few tens of microseconds (the small-batch kernels).
///
/// From a thread outside the pool, a plain parallel iterator injects the job, and the calling
/// thread sleeps on a lock until a worker has run it: two thread wake-ups per call. On the 2-vCPU
/// VM that cost ~2–10 µs with one pool thread and ~8–10 µs with two (BSR 4x1 384x1536 at M = 1:
/// 20–22 µs through the parallel iterator, 10–14 µs here; docs/results/kernels.md, small batches).
/// Here the caller works too: it spawns `threads − 1` helpers, all claim tasks from one counter,
/// and the caller spins (no sleep) until every claimed task has finished. With one pool thread
/// the caller runs everything itself.
pub(super) fn for_each_task(n: usize, f: impl Fn(usize) + Sync + Send) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    if rayon::current_thread_index().is_some() {
        (0..n).into_par_iter().for_each(f);
        return;
    }
    let helpers = rayon::current_num_threads().min(n).saturating_sub(1);
    if helpers == 0 {
        (0..n).for_each(f);
        return;
    }
    /// Counts a task as finished even if it panics, so the caller's spin ends and the scope
    /// re-raises the panic instead of hanging.
    struct Finished<'a>(&'a AtomicUsize);
    impl Drop for Finished<'_> {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Release);
        }
    }
    let (next, done) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        let _finished = Finished(&done);
        f(i);
    };
    rayon::in_place_scope(|s| {
        for _ in 0..helpers {
            s.spawn(|_| work());
        }
        work();
        // Every task is claimed now; wait for the ones still running, without sleeping. (The
        // scope's end then waits for helpers that never started; they find no task left.)
        while done.load(Ordering::Acquire) < n {
            std::hint::spin_loop();
        }
    });
}

/// [`for_each_task`] over owned pieces of work (e.g. disjoint output slices).
pub(super) fn for_each_piece<T: Send>(pieces: Vec<T>, f: impl Fn(T) + Sync + Send) {
    let slots: Vec<std::sync::Mutex<Option<T>>> = pieces.into_iter().map(|t| Some(t).into()).collect();
    for_each_task(slots.len(), |i| {
        let piece = slots[i].lock().map(|mut g| g.take()).ok().flatten();
        if let Some(t) = piece {
            f(t);
        }
    });
}

/// `dX [m, cols] = dY [m, rows] · W` for small batches (M < 4), by scattering each stored weight
/// into `dX` (L1-resident at these sizes) instead of running the forward on the transposed
/// pattern: no transposed copy of the values per call. The block rows are split into
/// `PARTS` fixed ranges, each adding into its own partial `dX`; the partials are then summed in a
/// fixed order, so the result does not depend on the number of threads.
pub(super) fn small_m_input_grad<I: Idx>(p: &BlockPattern<I>, vals: &[f32], dy: &[f32], m: usize, dx: &mut [f32]) {
    const PARTS: usize = 4;
    let (n_out, k) = (p.rows, p.cols);
    let len = m * k;
    if len == 0 {
        return;
    }
    let nbr = n_out / p.r;
    let mut partial = vec![0f32; PARTS * len];
    let pieces: Vec<(usize, &mut [f32])> = partial.chunks_mut(len).enumerate().collect();
    for_each_piece(pieces, |(t, acc)| {
        small_m_scatter(p, vals, dy, m, t * nbr / PARTS, (t + 1) * nbr / PARTS, acc)
    });
    let (first, rest) = partial.split_at(len);
    dx.copy_from_slice(first);
    for part in rest.chunks(len) {
        for (d, v) in dx.iter_mut().zip(part) {
            *d += v;
        }
    }
}

/// Small batches (M < 4): for each output row and each activation row, a gathered dot product
/// over the stored weights (no packing). Blocks of `R x 1` (R = 2, 4, 8) accumulate their `R`
/// rows together: one index and one activation per block for `R` weights.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn small_m_task<S: Simd, I: Idx>(
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
            let cols = &p.col[s..e];
            let w = &vals[s * r * c..e * r * c];
            let yr = unsafe { y.add(mm * n_out + br * r) };
            let b = bias.map(|b| &b[br * r..br * r + r]);
            match (r, c) {
                (1, 1) => unsafe { *yr = csr_dot(cols, w, xrow) + b.map_or(0.0, |b| b[0]) },
                (2, 1) => unsafe { rows_rx1::<I, 2>(cols, w, xrow, b, yr) },
                (4, 1) => unsafe { rows_rx1::<I, 4>(cols, w, xrow, b, yr) },
                (8, 1) => unsafe { rows_rx1::<I, 8>(cols, w, xrow, b, yr) },
                _ => {
                    for i in 0..r {
                        let mut acc = 0f32;
                        for (bi, k0) in cols.iter().enumerate() {
                            let wb = &w[bi * r * c + i * c..bi * r * c + i * c + c];
                            for j in 0..c {
                                acc += wb[j] * xrow[k0.get() + j];
                            }
                        }
                        unsafe { *yr.add(i) = acc + b.map_or(0.0, |b| b[i]) };
                    }
                }
            }
        }
    }
}

/// `Σ_t w[t] · x[cols[t]]`: one CSR row against one activation row, in four independent scalar
/// chains. (AVX2 gathers, indices widened as vectors: 25% slower on Zen 3, whose `vgatherdps`
/// delivers about one element per cycle.) This is the CSR loop from before `small.rs`, kept as it
/// was so CSR results stay the same bit for bit; [`rows_rx1`] with `R = 1` adds the tail in a
/// different order and measured no faster.
#[inline(always)]
fn csr_dot<I: Idx>(cols: &[I], w: &[f32], x: &[f32]) -> f32 {
    let n = cols.len();
    let mut t = 0;
    let mut acc = 0f32;
    unsafe {
        let (mut s0, mut s1, mut s2, mut s3) = (0f32, 0f32, 0f32, 0f32);
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        while t + 4 <= n {
            s0 += *wp.add(t) * *xp.add(cols.get_unchecked(t).get());
            s1 += *wp.add(t + 1) * *xp.add(cols.get_unchecked(t + 1).get());
            s2 += *wp.add(t + 2) * *xp.add(cols.get_unchecked(t + 2).get());
            s3 += *wp.add(t + 3) * *xp.add(cols.get_unchecked(t + 3).get());
            t += 4;
        }
        acc += (s0 + s1) + (s2 + s3);
    }
    while t < n {
        acc += w[t] * x[cols[t].get()];
        t += 1;
    }
    acc
}

/// `y[0..R] = Σ_b w[b·R..b·R+R] · x[cols[b]] (+ bias)`: one block row of `R x 1` blocks against
/// one activation row, in four independent accumulator sets (one FMA chain would bound it).
#[inline(always)]
unsafe fn rows_rx1<I: Idx, const R: usize>(cols: &[I], w: &[f32], x: &[f32], bias: Option<&[f32]>, y: *mut f32) {
    let n = cols.len();
    let mut a = [[0f32; R]; 4];
    let mut t = 0;
    unsafe {
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        while t + 4 <= n {
            for (u, au) in a.iter_mut().enumerate() {
                let xv = *xp.add(cols.get_unchecked(t + u).get());
                for (i, ai) in au.iter_mut().enumerate() {
                    *ai += *wp.add((t + u) * R + i) * xv;
                }
            }
            t += 4;
        }
        while t < n {
            let xv = *xp.add(cols.get_unchecked(t).get());
            for (i, ai) in a[0].iter_mut().enumerate() {
                *ai += *wp.add(t * R + i) * xv;
            }
            t += 1;
        }
        for i in 0..R {
            let v = (a[0][i] + a[1][i]) + (a[2][i] + a[3][i]);
            *y.add(i) = v + bias.map_or(0.0, |b| b[i]);
        }
    }
}

/// SDDMM for small batches (M < 4): `o[b·rc + i·c + j] = Σ_m dy[m, br·r+i] · x[m, col_b + j]`
/// for the blocks of block rows `br0..br1` (`o` starts at block `row_ptr[br0]`). The `m` output
/// gradients of a row are read once per row.
pub(super) fn small_m_sddmm<I: Idx>(
    p: &BlockPattern<I>,
    dy: &[f32],
    x: &[f32],
    m: usize,
    br0: usize,
    br1: usize,
    o: &mut [f32],
) {
    let (r, c, k, n_out) = (p.r, p.c, p.cols, p.rows);
    let rc = r * c;
    let b0 = p.row_ptr[br0];
    for br in br0..br1 {
        for i in 0..r {
            let row = br * r + i;
            let d: [f32; 3] = std::array::from_fn(|mm| if mm < m { dy[mm * n_out + row] } else { 0.0 });
            let blocks = p.row_ptr[br]..p.row_ptr[br + 1];
            if c == 1 {
                // The common case (CSR, R x 1 blocks, N:M) without the inner loop.
                let o = &mut o[(blocks.start - b0) * r..(blocks.end - b0) * r];
                let cols = &p.col[blocks];
                match m {
                    1 => sddmm_c1::<I, 1>(cols, o, r, i, &d, x, k),
                    2 => sddmm_c1::<I, 2>(cols, o, r, i, &d, x, k),
                    _ => sddmm_c1::<I, 3>(cols, o, r, i, &d, x, k),
                }
                continue;
            }
            for b in blocks {
                let k0 = p.col[b].get();
                let ob = &mut o[(b - b0) * rc + i * c..(b - b0) * rc + i * c + c];
                for (j, out) in ob.iter_mut().enumerate() {
                    let mut acc = d[0] * x[k0 + j];
                    for (mm, dm) in d.iter().enumerate().take(m).skip(1) {
                        acc += dm * x[mm * k + k0 + j];
                    }
                    *out = acc;
                }
            }
        }
    }
}

/// One row `i` of a block row of `R x 1` blocks: `o[t·r + i] = Σ_{mm<M} d[mm] · x[mm·k + cols[t]]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn sddmm_c1<I: Idx, const M: usize>(cols: &[I], o: &mut [f32], r: usize, i: usize, d: &[f32; 3], x: &[f32], k: usize) {
    for (t, k0) in cols.iter().enumerate() {
        let k0 = k0.get();
        let mut acc = d[0] * x[k0];
        for mm in 1..M {
            acc += d[mm] * x[mm * k + k0];
        }
        o[t * r + i] = acc;
    }
}

/// `acc [m, cols] += dy [m, rows] · W` over block rows `br0..br1` (small batches): each stored
/// weight is scattered into its column of `acc`.
fn small_m_scatter<I: Idx>(
    p: &BlockPattern<I>,
    vals: &[f32],
    dy: &[f32],
    m: usize,
    br0: usize,
    br1: usize,
    acc: &mut [f32],
) {
    let (r, c, k, n_out) = (p.r, p.c, p.cols, p.rows);
    let rc = r * c;
    for br in br0..br1 {
        for i in 0..r {
            let row = br * r + i;
            for mm in 0..m {
                let d = dy[mm * n_out + row];
                let a = &mut acc[mm * k..(mm + 1) * k];
                let blocks = p.row_ptr[br]..p.row_ptr[br + 1];
                if c == 1 {
                    // The common case (CSR, R x 1 blocks, N:M) without the inner loop.
                    let w = &vals[blocks.start * r..blocks.end * r];
                    for (t, k0) in p.col[blocks].iter().enumerate() {
                        a[k0.get()] += d * w[t * r + i];
                    }
                    continue;
                }
                for b in blocks {
                    let k0 = p.col[b].get();
                    let w = &vals[b * rc + i * c..b * rc + i * c + c];
                    for (j, wj) in w.iter().enumerate() {
                        a[k0 + j] += d * wj;
                    }
                }
            }
        }
    }
}

/// 8 stored column indices as lane indices.
#[inline(always)]
unsafe fn idx8<S: Simd, I: Idx>(p: *const I) -> S::I {
    unsafe {
        if I::MAX == u16::MAX as usize {
            S::load_idx_u16(p as *const u16)
        } else {
            S::load_idx_u32(p as *const u32)
        }
    }
}

/// Small batches (M < 4) for N:M patterns with `G = 2N` (2:4, 4:8): rows `r0..r1`.
///
/// Eight consecutive slots of a row cover exactly 16 input columns `16j..16j+16` (slots 0–3 the
/// first 8, slots 4–7 the next 8), so their activations are two 8-float loads and one variable
/// permute each (`vpermps`, driven by the low 3 bits of the stored column indices), blended by
/// halves: a dense-like inner loop, vectorised along the row, with no gather.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn small_m_nm_task<S: Simd, I: Idx>(
    p: &BlockPattern<I>,
    vals: &[f32],
    x: &[f32],
    m: usize,
    r0: usize,
    r1: usize,
    bias: Option<&[f32]>,
    y: *mut f32,
) {
    let (k, n_out) = (p.cols, p.rows);
    let per = p.col.len().checked_div(p.rows).unwrap_or(0);
    let s8 = per / 8 * 8;
    for r in r0..r1 {
        let s = p.row_ptr[r];
        for mm in 0..m {
            unsafe {
                let xp = x.as_ptr().add(mm * k);
                let (cp, wp) = (p.col.as_ptr().add(s), vals.as_ptr().add(s));
                // Slots jj..jj+8 times their activations (columns 2·jj..2·jj+16).
                let slots8 = |jj: usize, acc: S::V| {
                    let (xa, i0) = (xp.add(2 * jj), idx8::<S, I>(cp.add(jj)));
                    let xs = S::halves(S::perm8(S::load(xa), i0), S::perm8(S::load(xa.add(8)), i0));
                    S::fma(S::load(wp.add(jj)), xs, acc)
                };
                // Four accumulators (two ran as fast: the two permutes per 8 slots bound the loop).
                let mut a = [S::zero(); 4];
                let mut j = 0;
                while j + 32 <= s8 {
                    for (u, au) in a.iter_mut().enumerate() {
                        *au = slots8(j + 8 * u, *au);
                    }
                    j += 32;
                }
                while j < s8 {
                    a[0] = slots8(j, a[0]);
                    j += 8;
                }
                let mut acc = S::hsum(S::add(S::add(a[0], a[1]), S::add(a[2], a[3])));
                while j < per {
                    acc += *wp.add(j) * *xp.add((*cp.add(j)).get());
                    j += 1;
                }
                *y.add(mm * n_out + r) = acc + bias.map_or(0.0, |b| b[r]);
            }
        }
    }
}

