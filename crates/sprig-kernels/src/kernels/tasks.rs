//! Kernel bodies, generic over the vector type. Each `*_task` is one rayon task's work.
//!
//! Layout (forward, weight-stationary): activations are packed into panels of `pw = 8·V`
//! consecutive rows of X, transposed so that panel row `k` (`pw` floats, contiguous) holds
//! `X[m0..m0+pw, k]`. A stored weight `w = W[n, k]` then contributes `w · panel[k]` to the `pw`
//! outputs `Y[m0.., n]`: one broadcast and `V` FMAs, accumulated in registers across the whole
//! sparse row. Blocks of `R` output rows (BSR 4x1, 8x1, ...) reuse each panel load `R` times.
//! Each forward task packs its own panel into a per-thread buffer just before using it
//! ([`panel_task`]), so the panel is still in L2 when the sparse rows read it.
//!
//! Why this layout and how Y is written: the kernel naturally produces a tile of Yᵀ (output row
//! `n` x `pw` batch rows); Y is `[M, N]` row-major. Writing the tile element by element (stride
//! `N`) was ~55% of the forward at M=512. Now each 8x8 square of the tile is transposed in
//! registers and stored as 8 contiguous 8-float pieces of Y rows, lane blocks outer so every Y row
//! is written front to back ([`flush`]); packing X uses the same 8x8 transposes ([`pack_panel`]).
//! Alternatives measured and rejected on this Zen 3 (single-thread CPU time, K=384 N=1536
//! M=512, 90%): K-blocking the panel into 16 KiB L1 pieces (10-20% slower: ~6 weights per row per
//! block do not amortise the tile reload and the loop-exit mispredict); panel widths 16/32/64
//! (within noise of each other). The activation-stationary alternative (lanes over output rows,
//! Y written directly) needs a gather per FMA for unstructured rows; it is used for N:M instead,
//! where the gather becomes an in-register permute ([`super::nm`]).
use super::simd::{Lanes, Simd};
use crate::formats::{BlockPattern, Idx};

/// One sparse row (CSR) against one panel of width `pw = 8·V`:
/// `tile[0..pw] = Σ_t vals[t] · panel[cols[t]]` (`+=` unless `first`). The panel row offset is
/// a shift by the constant `pw` (an `imul` by a run-time width before). Runs in the widest
/// vectors that divide the panel ([`Simd::Wide`]: on AVX-512 a weight of a 64-lane panel costs
/// 4 loads and 4 FMAs instead of 8 and 8).
/// `U` independent accumulator sets (for 8-lane vectors; scaled for wider ones) keep 8 FMA
/// chains in flight when the panel has few vectors.
#[inline(always)]
pub(crate) unsafe fn csr_row<S: Simd, I: Idx, const V: usize, const U: usize>(
    cols: &[I],
    vals: &[f32],
    xp: *const f32,
    tile: *mut f32,
    first: bool,
) {
    unsafe {
        if (8 * V).is_multiple_of(<S::Wide as Lanes>::N) {
            csr_row_in::<S::Wide, I, V, U>(cols, vals, xp, tile, first)
        } else {
            csr_row_in::<S, I, V, U>(cols, vals, xp, tile, first)
        }
    }
}

/// [`csr_row`] in vectors of `L::N` lanes (`L::N` divides `8·V`).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // indexes several fixed-size register arrays in step
unsafe fn csr_row_in<L: Lanes, I: Idx, const V: usize, const U: usize>(
    cols: &[I],
    vals: &[f32],
    xp: *const f32,
    tile: *mut f32,
    first: bool,
) {
    // Vectors per panel row and accumulator sets: both compile-time constants.
    let nv = 8 * V / L::N;
    let u = (U * L::N / 8).clamp(1, 8);
    unsafe {
        let z = L::zero();
        let mut acc = [[z; 8]; 8];
        if !first {
            for v in 0..nv {
                acc[0][v] = L::load(tile.add(L::N * v));
            }
        }
        let n = cols.len();
        let mut t = 0;
        while t + u <= n {
            for j in 0..u {
                let k = cols.get_unchecked(t + j).get();
                let w = L::splat(*vals.get_unchecked(t + j));
                let xr = xp.add(k * (8 * V));
                for v in 0..nv {
                    acc[j][v] = L::fma(w, L::load(xr.add(L::N * v)), acc[j][v]);
                }
            }
            t += u;
        }
        while t < n {
            let k = cols.get_unchecked(t).get();
            let w = L::splat(*vals.get_unchecked(t));
            let xr = xp.add(k * (8 * V));
            for v in 0..nv {
                acc[0][v] = L::fma(w, L::load(xr.add(L::N * v)), acc[0][v]);
            }
            t += 1;
        }
        for v in 0..nv {
            let mut s = acc[0][v];
            for a in acc.iter().take(u).skip(1) {
                s = L::add(s, a[v]);
            }
            L::store(tile.add(L::N * v), s);
        }
    }
}

/// Rows `i0..i0+R` of one block row (blocks `r x c`) against one panel;
/// `tile[i*pw..]` receives row `i0+i`. In the widest vectors that divide the panel.
#[inline(always)]
pub(crate) unsafe fn block_rows<S: Simd, I: Idx, const R: usize, const V: usize>(
    cols: &[I],
    vals: &[f32],
    rc: (usize, usize),
    i0: usize,
    xp: *const f32,
    pw: usize,
    tile: *mut f32,
) {
    unsafe {
        if (8 * V).is_multiple_of(<S::Wide as Lanes>::N) {
            block_rows_in::<S::Wide, I, R, V>(cols, vals, rc, i0, xp, pw, tile)
        } else {
            block_rows_in::<S, I, R, V>(cols, vals, rc, i0, xp, pw, tile)
        }
    }
}

/// [`block_rows`] in vectors of `L::N` lanes (`L::N` divides `8·V`).
#[inline(always)]
#[allow(clippy::needless_range_loop)]
unsafe fn block_rows_in<L: Lanes, I: Idx, const R: usize, const V: usize>(
    cols: &[I],
    vals: &[f32],
    (r, c): (usize, usize),
    i0: usize,
    xp: *const f32,
    pw: usize,
    tile: *mut f32,
) {
    let nv = 8 * V / L::N;
    unsafe {
        let z = L::zero();
        let mut acc = [[z; 8]; R];
        let rc = r * c;
        for (bi, k) in cols.iter().enumerate() {
            let k0 = k.get();
            let wb = vals.as_ptr().add(bi * rc + i0 * c);
            for j in 0..c {
                let xr = xp.add((k0 + j) * pw);
                let mut xv = [z; 8];
                for v in 0..nv {
                    xv[v] = L::load(xr.add(L::N * v));
                }
                for i in 0..R {
                    let w = L::splat(*wb.add(i * c + j));
                    for v in 0..nv {
                        acc[i][v] = L::fma(w, xv[v], acc[i][v]);
                    }
                }
            }
        }
        for i in 0..R {
            for v in 0..nv {
                L::store(tile.add(i * pw + L::N * v), acc[i][v]);
            }
        }
    }
}

/// What one forward panel task computes.
pub(crate) struct PanelJob<'a, I> {
    pub p: &'a BlockPattern<I>,
    pub vals: &'a [f32],
    pub pw: usize,
    /// Valid lanes of this panel (`<= pw`) and the first row of X it holds.
    pub lanes: usize,
    pub m0: usize,
    pub br0: usize,
    pub br1: usize,
    pub bias: Option<&'a [f32]>,
    /// Y, `[m, n_out]` row-major.
    pub y: *mut f32,
    /// Where `gelu(Y)` goes, if anywhere (may be `y`: in place).
    pub gelu: Option<*mut f32>,
}

/// Which kernel instantiation a forward call uses.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Plan {
    Csr { v: usize },
    Block { r: usize, v: usize },
    /// CSR rows that all hold exactly `per_block` stored weights in every block of `kb` input
    /// columns (N:M): the panel is walked one K-block at a time, so the panel rows come from L1.
    KBlocked { v: usize, per_block: usize },
}

/// Writes the chunk buffer (`rows x pw`, row `i` = output row `row0 + i`, i.e. a tile of Yᵀ)
/// into Y (`[m, n_out]`), adding the bias. Each 8 rows x 8 lanes square is transposed in registers
/// ([`Simd::transpose8`]) and written as 8 contiguous 8-float stores, so every Y element is written
/// once, by a vector store. (Before: element-by-element copies, ~55% of the forward at M=512.)
#[inline(always)]
unsafe fn flush<S: Simd>(job: &PanelJob<'_, impl Idx>, buf: &[f32], row0: usize, rows: usize) {
    let n_out = job.p.rows;
    let (pw, lanes) = (job.pw, job.lanes);
    let bias = |i: usize| job.bias.map_or(0.0, |b| b[i]);
    let rows8 = rows / 8 * 8;
    let lanes8 = lanes / 8 * 8;
    unsafe {
        // Lane blocks outer, row groups inner: 8 Y rows are each written front to back, so the
        // stores form 8 sequential streams the prefetcher follows (row groups outer made 64
        // interleaved half-line streams whose read-for-ownership misses dominated the flush).
        for l0 in (0..lanes8).step_by(8) {
            for i0 in (0..rows8).step_by(8) {
                let bv = match job.bias {
                    Some(b) => S::load(b.as_ptr().add(row0 + i0)),
                    None => S::zero(),
                };
                let mut r = [S::zero(); 8];
                for (i, rv) in r.iter_mut().enumerate() {
                    *rv = S::load(buf.as_ptr().add((i0 + i) * pw + l0));
                }
                S::transpose8(&mut r);
                for (j, rv) in r.iter().enumerate() {
                    S::store(job.y.add((job.m0 + l0 + j) * n_out + row0 + i0), S::add(*rv, bv));
                }
            }
        }
        // Ragged edges: the last lanes of a partial panel, the last rows of a chunk.
        for l in 0..lanes {
            let (i_from, i_to) = if l < lanes8 { (rows8, rows) } else { (0, rows) };
            let dst = job.y.add((job.m0 + l) * n_out + row0);
            for i in i_from..i_to {
                *dst.add(i) = buf[i * pw + l] + bias(row0 + i);
            }
        }
        // Fused GELU on the piece of Y just written (lanes x rows, still in L1/L2): saves the
        // separate pass over the whole [M, N] output.
        if let Some(g) = job.gelu {
            for l in 0..lanes {
                let off = (job.m0 + l) * n_out + row0;
                let src = std::slice::from_raw_parts_mut(job.y.add(off), rows);
                if g == job.y {
                    crate::nn::math::gelu_inplace(src);
                } else {
                    crate::nn::math::gelu_slice(src, std::slice::from_raw_parts_mut(g.add(off), rows));
                }
            }
        }
    }
}

/// Packs rows `m0..m0+lanes` of row-major `src [m, k]` into one panel `pan [k, pw]`
/// (`pan[kk*pw + l] = src[(m0+l)*k + kk]`), zero-padded past `lanes`, with 8x8 register transposes.
#[inline(always)]
pub(crate) unsafe fn pack_panel<S: Simd>(src: &[f32], k: usize, m0: usize, lanes: usize, pw: usize, pan: &mut [f32]) {
    let lanes8 = lanes / 8 * 8;
    let k8 = k / 8 * 8;
    unsafe {
        for l0 in (0..lanes8).step_by(8) {
            for kk0 in (0..k8).step_by(8) {
                let mut r = [S::zero(); 8];
                for (j, rv) in r.iter_mut().enumerate() {
                    *rv = S::load(src.as_ptr().add((m0 + l0 + j) * k + kk0));
                }
                S::transpose8(&mut r);
                for (i, rv) in r.iter().enumerate() {
                    S::store(pan.as_mut_ptr().add((kk0 + i) * pw + l0), *rv);
                }
            }
        }
    }
    for kk in 0..k {
        let (l_from, l_to) = if kk < k8 { (lanes8, lanes) } else { (0, lanes) };
        for l in l_from..l_to {
            pan[kk * pw + l] = src[(m0 + l) * k + kk];
        }
        pan[kk * pw + lanes..kk * pw + pw].fill(0.0);
    }
}

/// Stored weights `s..e` of sparse row `br` against the panel, into the row's tile slot (`+=`
/// unless `first`): the one call behind [`csr_v`] and [`kblocked_v`].
#[inline(always)]
unsafe fn row_piece<S: Simd, I: Idx, const V: usize, const U: usize>(
    job: &PanelJob<'_, I>,
    xp: *const f32,
    tile: &mut [f32],
    br: usize,
    (s, e): (usize, usize),
    first: bool,
) {
    debug_assert_eq!(job.pw, 8 * V, "csr_row addresses panel rows by the constant 8·V");
    unsafe { csr_row::<S, I, V, U>(&job.p.col[s..e], &job.vals[s..e], xp, tile.as_mut_ptr().add((br - job.br0) * job.pw), first) }
}

/// CSR rows `br0..br1` against one panel. (Tried: K blocks of 16 KiB of panel so the X rows
/// come from L1 with partial sums in the tile; 10-20% slower at 90% sparsity, K=384, because a
/// row then has only ~6 weights per block and each block costs a tile load/store and a
/// mispredicted loop exit.)
macro_rules! csr_v {
    ($S:ty, $job:expr, $xp:expr, $tile:expr, $V:literal, $U:literal) => {{
        let job = $job;
        let p = job.p;
        for br in job.br0..job.br1 {
            unsafe { row_piece::<$S, _, $V, $U>(job, $xp, $tile, br, (p.row_ptr[br], p.row_ptr[br + 1]), true) };
        }
    }};
}

/// N:M rows against one panel, one K-block of the panel at a time: every row of the chunk takes
/// its `per_block` weights of block `kb` (partial sums kept in the tile), then the next block.
/// The block of panel rows stays in L1 across the chunk's rows, and every row has the same trip
/// count, so the loop exits are predicted.
macro_rules! kblocked_v {
    ($S:ty, $job:expr, $xp:expr, $tile:expr, $V:literal, $U:literal, $per:expr) => {{
        let job = $job;
        let p = job.p;
        let per: usize = $per;
        let row_len = p.row_ptr[job.br0 + 1] - p.row_ptr[job.br0];
        // At least one block, so rows with no weights (zero columns) still clear their tile.
        let blocks = row_len.div_ceil(per.max(1)).max(1);
        for kb in 0..blocks {
            for br in job.br0..job.br1 {
                let (s0, e0) = (p.row_ptr[br], p.row_ptr[br + 1]);
                debug_assert_eq!(e0 - s0, row_len, "K-blocked rows hold equal counts");
                let s = s0 + kb * per;
                let e = (s + per).min(e0);
                // The rows' values and indices are read in strides (one row's block, then the
                // next row's): ask for row br+2's block ahead of time (768x3072 2:4, M=512, one
                // thread: ~20% faster; the samples sat on the loads of values and indices).
                if br + 2 < job.br1 {
                    let sn = p.row_ptr[br + 2] + kb * per;
                    prefetch(job.vals.as_ptr().wrapping_add(sn) as *const u8, per * std::mem::size_of::<f32>());
                    prefetch(p.col.as_ptr().wrapping_add(sn) as *const u8, per * std::mem::size_of::<I>());
                }
                unsafe { row_piece::<$S, _, $V, $U>(job, $xp, $tile, br, (s, e), kb == 0) };
            }
        }
    }};
}

/// Asks for the cache lines of `[p, p + bytes)` (a hint; no-op off x86-64).
#[inline(always)]
pub(crate) fn prefetch(p: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut off = 0;
        while off < bytes {
            // SAFETY: prefetch is a hint and never faults.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.wrapping_add(off) as *const i8) };
            off += 64;
        }
    }
}

macro_rules! block_rv {
    ($S:ty, $job:expr, $xp:expr, $tile:expr, $R:literal, $V:literal) => {{
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
                        $xp,
                        job.pw,
                        $tile.as_mut_ptr().add(((br - job.br0) * r + i0) * job.pw),
                    );
                }
            }
        }
    }};
}

thread_local! {
    /// Per-thread tile and panel buffers of the forward (reused across calls; every element read
    /// is written by the kernel or the packer first).
    static TILE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    static PANEL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One forward task: packs rows `m0..m0+lanes` of `x` into a panel, then computes block rows
/// `br0..br1` against it, `chunk` block rows per tile.
#[inline(always)]
pub(crate) unsafe fn panel_task<S: Simd, I: Idx>(job: &PanelJob<'_, I>, x: &[f32], chunk: usize, plan: Plan) {
    let k = job.p.cols;
    // Taken out of the thread-locals (not used inside a closure, which would not inherit the
    // caller's `#[target_feature]`s and would leave the intrinsics un-inlined).
    let mut pan = PANEL.take();
    // 64-byte aligned, so no 32-byte panel load straddles two cache lines (a temporary 16-byte
    // offset looked ~10-15% slower, K=384 N=1536 M=512 90%, one thread, 3 alternated runs).
    pan.resize(k * job.pw + 16, 0.0);
    let off = pan.as_ptr().align_offset(64);
    let panel = &mut pan[off..off + k * job.pw];
    unsafe { pack_panel::<S>(x, k, job.m0, job.lanes, job.pw, panel) };
    let mut tile = TILE.take();
    let mut br0 = job.br0;
    while br0 < job.br1 {
        let br1 = (br0 + chunk).min(job.br1);
        let sub = PanelJob { br0, br1, ..*job };
        unsafe { panel_rows::<S, I>(&sub, panel.as_ptr(), plan, &mut tile) };
        br0 = br1;
    }
    TILE.set(tile);
    PANEL.set(pan);
}

/// Block rows `br0..br1` of `job` against the packed panel `xp` (`k * pw` floats), through `tile`.
#[inline(always)]
unsafe fn panel_rows<S: Simd, I: Idx>(job: &PanelJob<'_, I>, xp: *const f32, plan: Plan, tile: &mut Vec<f32>) {
    let rows = (job.br1 - job.br0) * job.p.r;
    tile.resize(rows * job.pw, 0.0);
    match plan {
        Plan::Csr { v: 8 } => csr_v!(S, job, xp, tile, 8, 1),
        Plan::Csr { v: 4 } => csr_v!(S, job, xp, tile, 4, 2),
        Plan::Csr { v: 2 } => csr_v!(S, job, xp, tile, 2, 4),
        Plan::Csr { .. } => csr_v!(S, job, xp, tile, 1, 8),
        Plan::KBlocked { v: 8, per_block } => kblocked_v!(S, job, xp, tile, 8, 1, per_block),
        Plan::KBlocked { v: 4, per_block } => kblocked_v!(S, job, xp, tile, 4, 2, per_block),
        Plan::KBlocked { v: 2, per_block } => kblocked_v!(S, job, xp, tile, 2, 4, per_block),
        Plan::KBlocked { per_block, .. } => kblocked_v!(S, job, xp, tile, 1, 8, per_block),
        Plan::Block { r: 4, v: 2 } => block_rv!(S, job, xp, tile, 4, 2),
        Plan::Block { r: 4, .. } => block_rv!(S, job, xp, tile, 4, 1),
        Plan::Block { r: 2, v: 4 } => block_rv!(S, job, xp, tile, 2, 4),
        Plan::Block { r: 2, v: 2 } => block_rv!(S, job, xp, tile, 2, 2),
        Plan::Block { r: 2, .. } => block_rv!(S, job, xp, tile, 2, 1),
        Plan::Block { v: 8, .. } => block_rv!(S, job, xp, tile, 1, 8),
        Plan::Block { v: 4, .. } => block_rv!(S, job, xp, tile, 1, 4),
        Plan::Block { v: 2, .. } => block_rv!(S, job, xp, tile, 1, 2),
        Plan::Block { .. } => block_rv!(S, job, xp, tile, 1, 1),
    }
    unsafe { flush::<S>(job, tile, job.br0 * job.p.r, rows) };
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

/// Eight SDDMM dot products sharing one row of dY: `acc[q] = Σ_l dr[l]·X_panel[cols[q]][l]`,
/// reduced with one 8x8 transpose; the 8 sums are added to `out[oi[q]]`. One dY load serves 8
/// FMAs, so the loop issues 9 loads per 8 FMAs instead of 2 per FMA. In 8-lane vectors on every
/// path: 16-lane ones ([`Simd::Wide`], folded before the transpose) made the whole CSR backward
/// at K=384 N=1536 M=512 1.5x (90%) to 1.9x (50%) slower on an AVX-512 Xeon (2 threads, two
/// alternated passes of `sprig bench kernels --quick`, 2026-12-06).
#[inline(always)]
unsafe fn dot8<S: Simd>(dr: *const f32, xpan: *const f32, pw: usize, cols: &[usize; 8], oi: &[usize; 8], out: &mut [f32]) {
    unsafe {
        let xr: [*const f32; 8] = std::array::from_fn(|q| xpan.add(cols[q] * pw));
        let mut acc = dot8_in::<S>(dr, &xr, pw);
        S::transpose8(&mut acc);
        let s = S::add(
            S::add(S::add(acc[0], acc[1]), S::add(acc[2], acc[3])),
            S::add(S::add(acc[4], acc[5]), S::add(acc[6], acc[7])),
        );
        let mut t = [0f32; 8];
        S::store(t.as_mut_ptr(), s);
        for q in 0..8 {
            *out.get_unchecked_mut(oi[q]) += t[q];
        }
    }
}

/// The 8 lane-wise partial dot products of [`dot8`] in vectors of `L::N` lanes (`L::N | len`).
#[inline(always)]
unsafe fn dot8_in<L: Lanes>(dr: *const f32, xr: &[*const f32; 8], len: usize) -> [L::V; 8] {
    unsafe {
        let mut acc = [L::zero(); 8];
        for v in (0..len).step_by(L::N) {
            let d = L::load(dr.add(v));
            for q in 0..8 {
                acc[q] = L::fma(d, L::load(xr[q].add(v)), acc[q]);
            }
        }
        acc
    }
}

/// SDDMM for block rows `br0..br1` over all panels: `out` holds the values of blocks
/// `row_ptr[br0]..row_ptr[br1]`. `dyp` / `xp` are dY / X packed into `np` panels of width `pw`.
/// Stored positions of one weight row are taken 8 at a time ([`dot8`]).
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
    let mut cols = [0usize; 8];
    let mut oi = [0usize; 8];
    for pi in 0..np {
        let dpan = unsafe { dyp.as_ptr().add(pi * n_out * pw) };
        let xpan = unsafe { xp.as_ptr().add(pi * k * pw) };
        for br in br0..br1 {
            for i in 0..r {
                let dr = unsafe { dpan.add((br * r + i) * pw) };
                let mut q = 0;
                for b in p.row_ptr[br]..p.row_ptr[br + 1] {
                    let k0 = p.col[b].get();
                    for j in 0..c {
                        cols[q] = k0 + j;
                        oi[q] = (b - b0) * rc + i * c + j;
                        q += 1;
                        if q == 8 {
                            unsafe { dot8::<S>(dr, xpan, pw, &cols, &oi, out) };
                            q = 0;
                        }
                    }
                }
                for t in 0..q {
                    let xr = unsafe { xpan.add(cols[t] * pw) };
                    out[oi[t]] += unsafe { dot::<S>(dr, xr, pw) };
                }
            }
        }
    }
}
