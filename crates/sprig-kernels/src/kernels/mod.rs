//! Kernel drivers: argument checks, packing, the rayon task split and run-time ISA dispatch.
mod level;
mod simd;
mod small;
mod tasks;

use crate::error::{check_len, Result};
use crate::formats::{with_pattern, AnyPattern, BlockPattern, Idx};
use crate::Bitmask;
use rayon::prelude::*;
use simd::{Portable, Simd};
use std::sync::OnceLock;
use tasks::{PanelJob, Plan};

pub use level::{force_portable, force_simd, simd, simd_level, SimdLevel, SIMD_ENV};

/// Below this batch size the forward uses gathered dot products instead of packed panels.
const SMALL_M: usize = 4;

/// From this stored fraction up, `dX = dY·W` densifies W (`O(N·K)`) and runs faer's GEMM: the
/// sparse product on the transposed pattern took ~2x the dense GEMM's time at 50–60% sparsity and
/// about the same at 70% (K=384 N=1536 and transposed, M=512, 2 threads, 2026-11-27).
const DENSE_DX_DENSITY: f64 = 0.35;

/// Runs `$body` with `$S` bound to `$T`, compiled inside a `#[target_feature(enable = $feat)]`
/// function (the caller checked the features at run time).
macro_rules! run_target {
    ($feat:literal, $T:ty, $S:ident, $body:expr) => {{
        #[target_feature(enable = $feat)]
        unsafe fn run(f: impl FnOnce()) {
            f()
        }
        type $S = $T;
        // SAFETY: the dispatcher only takes this branch when `simd()` reports these features.
        #[allow(unused_unsafe)]
        unsafe {
            run(
                #[inline(always)]
                || $body,
            )
        };
    }};
}

/// Runs `$body` with `$S` bound to the vector type of [`simd`], compiling the body inside a
/// `#[target_feature]` function for AVX-512 and for AVX2.
macro_rules! dispatch {
    (|$S:ident| $body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            match simd() {
                SimdLevel::Avx512 => run_target!("avx512f,avx512vl,avx2,fma", simd::Avx512, $S, $body),
                SimdLevel::Avx2 => run_target!("avx2,fma", simd::Avx2, $S, $body),
                SimdLevel::Portable => {
                    type $S = Portable;
                    #[allow(unused_unsafe)]
                    unsafe {
                        $body
                    };
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            type $S = Portable;
            #[allow(unused_unsafe)]
            unsafe {
                $body
            };
        }
    }};
}

mod nm;
pub(crate) use nm::NmLayout;
pub(crate) use tasks::prefetch;

/// The mask of the first `n` of 16 lanes, all 16 when `n ≥ 16` (an AVX-512 `__mmask16` for a
/// row's tail or a partial tile).
#[inline(always)]
pub(crate) fn first_lanes(n: usize) -> u16 {
    if n >= 16 { u16::MAX } else { (1u16 << n) - 1 }
}

/// Raw pointer that rayon tasks share; each task writes disjoint elements.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}
impl SyncPtr {
    #[inline(always)]
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// A packing buffer on loan from a small process-wide pool. Fresh multi-megabyte `Vec`s come from
/// `mmap`, and every call then paid the page faults and zeroing of its panels (~40% of a
/// 384x384 M=4096 SDDMM's time went to the kernel); pooled buffers are reused without either.
struct PackBuf(Vec<f32>);

static PACK_POOL: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());
/// Buffers kept for reuse (a backward step holds up to three at once).
const PACK_POOL_KEEP: usize = 4;

impl PackBuf {
    /// A buffer of exactly `n` floats with unspecified contents (the packers write every element).
    fn take(n: usize) -> Self {
        let mut pool = PACK_POOL.lock().unwrap_or_else(|e| e.into_inner());
        // The smallest pooled buffer that is large enough, else the largest (it will grow).
        let pick = (0..pool.len())
            .filter(|&i| pool[i].capacity() >= n)
            .min_by_key(|&i| pool[i].capacity())
            .or_else(|| (0..pool.len()).max_by_key(|&i| pool[i].capacity()));
        let mut v = pick.map(|i| pool.swap_remove(i)).unwrap_or_default();
        drop(pool);
        v.resize(n, 0.0); // truncates, or zero-fills only the part never used before
        Self(v)
    }
}

impl std::ops::Deref for PackBuf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl Drop for PackBuf {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        let mut pool = PACK_POOL.lock().unwrap_or_else(|e| e.into_inner());
        pool.push(v);
        if pool.len() > PACK_POOL_KEEP {
            // Drop the smallest: large buffers are the expensive ones to fault in again.
            let i = (0..pool.len()).min_by_key(|&i| pool[i].capacity()).expect("non-empty");
            pool.swap_remove(i);
        }
    }
}

/// Packs row-major `src [m, k]` into `ceil(m/pw)` panels of `k x pw` (panel row `kk` holds
/// `src[m0..m0+pw, kk]`), zero-padded past `m`.
fn pack_panels(src: &[f32], m: usize, k: usize, pw: usize) -> PackBuf {
    let np = m.div_ceil(pw);
    let mut out = PackBuf::take(np * k * pw);
    if k == 0 {
        return out;
    }
    out.0.par_chunks_mut(k * pw).enumerate().for_each(|(pi, pan)| {
        let m0 = pi * pw;
        let lanes = pw.min(m - m0);
        dispatch!(|S| tasks::pack_panel::<S>(src, k, m0, lanes, pw, pan));
    });
    out
}

/// Vectors per panel (panel width `8·v`) for a CSR/BSR forward: keep a panel (`k·32·v` bytes)
/// within ~256 KiB of L2 and no wider than the batch.
fn choose_plan(r: usize, c: usize, k: usize, m: usize) -> Plan {
    let by_m = m.div_ceil(8).next_power_of_two().min(8);
    let by_k = if k <= 1024 {
        8
    } else if k <= 2048 {
        4
    } else {
        2
    };
    let rr = if r.is_multiple_of(4) {
        4
    } else if r.is_multiple_of(2) {
        2
    } else {
        1
    };
    let cap = 8 / rr;
    let v = by_m.min(by_k).min(cap).max(1);
    if r == 1 && c == 1 {
        Plan::Csr { v: by_m.min(by_k) }
    } else {
        Plan::Block { r: rr, v }
    }
}

/// Rows that hold exactly `per_group` weights in every group of `size` input columns (N:M).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Groups {
    pub size: usize,
    pub per_group: usize,
}

/// The K-blocked plan for N:M rows (`stored` weights in all): panel width `8·v` up to 64 lanes
/// (32 once the matrix holds over 2^20 weights: on 768x3072 and 3072x768, M=512 and 4096, 2:4,
/// 32 lanes were ~15% faster, on the 590k-weight shapes ~12% slower; measured, not modelled), and
/// K-blocks of whole groups holding ~16 KiB of panel, so that a block of panel rows stays in L1
/// while every row of a 64-row chunk takes its weights from it.
fn kblocked_plan(g: Groups, m: usize, stored: usize) -> Plan {
    let cap = if stored > 1 << 20 { 4 } else { 8 };
    let v = m.div_ceil(8).next_power_of_two().min(cap);
    let kb = ((16 << 10) / (32 * v) / g.size).max(1) * g.size;
    Plan::KBlocked { v, per_block: kb / g.size * g.per_group }
}

fn plan_width(plan: Plan) -> usize {
    match plan {
        Plan::Csr { v } | Plan::Block { v, .. } | Plan::KBlocked { v, .. } => 8 * v,
    }
}

/// `out = f(y)` for a forward output `y`, by [`crate::nn::math::gelu_slice`] (or in place when
/// `out` is `y`), split over rayon.
fn gelu_par(y: &mut [f32], out: Option<&mut [f32]>) {
    use crate::nn::math::{gelu_inplace, gelu_slice};
    const CH: usize = 1 << 14;
    match out {
        Some(o) => o.par_chunks_mut(CH).zip(y.par_chunks(CH)).for_each(|(o, z)| gelu_slice(z, o)),
        None => y.par_chunks_mut(CH).for_each(gelu_inplace),
    }
}

/// GELU after a forward that has no fused epilogue: `fwd` writes `x·Wᵀ + b` into `pre` (or `y`).
pub(crate) fn forward_then_gelu(
    fwd: impl FnOnce(&mut [f32]) -> Result<()>,
    pre: Option<&mut [f32]>,
    y: &mut [f32],
) -> Result<()> {
    match pre {
        Some(z) => {
            check_len("pre (m*rows)", z.len(), y.len())?;
            fwd(z)?;
            gelu_par(z, Some(y));
        }
        None => {
            fwd(y)?;
            gelu_par(y, None);
        }
    }
    Ok(())
}

/// Where a fused GELU writes: over Y itself, or into a second buffer of Y's length.
#[derive(Clone, Copy)]
enum GeluOut {
    InPlace,
    Into(*mut f32),
}

/// `y [m, rows] = x [m, cols] · Wᵀ (+ bias)`; with `gelu` (only for `m >= SMALL_M`), also GELU
/// of it (over `y` or into a second buffer), computed per output tile right after it is written.
#[allow(clippy::too_many_arguments)]
fn spmm<I: Idx>(
    p: &BlockPattern<I>,
    vals: &[f32],
    x: &[f32],
    m: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    gelu: Option<GeluOut>,
    groups: Option<Groups>,
) {
    let (n_out, k) = (p.rows, p.cols);
    if m == 0 || n_out == 0 {
        return;
    }
    let nbr = n_out / p.r;
    let yp = SyncPtr(y.as_mut_ptr());
    if m < SMALL_M {
        let chunk = (256 / p.r).max(1);
        let nm_halves = groups.is_some_and(|g| g.size == 2 * g.per_group);
        small::for_each_task(nbr.div_ceil(chunk), |ci| {
            let (br0, br1) = (ci * chunk, ((ci + 1) * chunk).min(nbr));
            if nm_halves {
                dispatch!(|S| small::small_m_nm_task::<S, I>(p, vals, x, m, br0, br1, bias, yp.get()));
            } else {
                dispatch!(|S| small::small_m_task::<S, I>(p, vals, x, m, br0, br1, bias, yp.get()));
            }
        });
        debug_assert!(gelu.is_none(), "small-M forwards take GELU afterwards (Engine::forward_gelu)");
        return;
    }
    let gp = gelu.map(|g| match g {
        GeluOut::InPlace => yp,
        GeluOut::Into(g) => SyncPtr(g),
    });
    let (plan, chunk) = match groups {
        Some(g) => (kblocked_plan(g, m, p.col.len()), 64),
        None => (choose_plan(p.r, p.c, k, m), (128 / p.r).max(1)),
    };
    let pw = plan_width(plan);
    let np = m.div_ceil(pw);
    let nch = nbr.div_ceil(chunk);
    // Each task packs its own panel of X into a per-thread buffer right before using it, so the
    // panel is read from L2. (Packing all of X first meant that, at M=4096, every panel had left
    // the caches again before its kernel ran: K=1536 N=384 at 99%, one thread, spent 40% of its
    // time packing at ~4 GB/s and most of the rest waiting for DRAM.) With fewer panels than
    // tasks wanted, the block rows are split into groups and each group packs the panel again.
    let want = 4 * rayon::current_num_threads();
    let per = nch.div_ceil(want.div_ceil(np).clamp(1, nch));
    let groups = nch.div_ceil(per);
    (0..np * groups).into_par_iter().for_each(|t| {
        let (pi, gi) = (t / groups, t % groups);
        let m0 = pi * pw;
        let job = PanelJob {
            p,
            vals,
            pw,
            lanes: pw.min(m - m0),
            m0,
            br0: gi * per * chunk,
            br1: ((gi + 1) * per * chunk).min(nbr),
            bias,
            y: yp.get(),
            gelu: gp.map(SyncPtr::get),
        };
        dispatch!(|S| tasks::panel_task::<S, I>(&job, x, chunk, plan));
    });
}

/// Vectors per SDDMM panel (`pw = 8·v` batch rows): 32 while a packed X panel (`k·pw·4` bytes)
/// stays within ~400 KiB, else 16. Wide panels amortise the per-(panel, row) work (the 8x8
/// transposes that reduce each group of 8 dot products, the reads and writes of the outputs); at
/// M=4096, 90%, one thread (Zen 3): pw 64 → 128 → 256 took 29 → 15 → 14 ms for 384x384, pw 256 was
/// 12% faster than 128 for 384x1536 but 12% slower for 768x3072, and for 1536x384 pw 128 took
/// 49 ms against 92 ms (pw 64) and 67 ms (pw 256).
fn sddmm_vectors(k: usize) -> usize {
    ((400 << 10) / (32 * k.max(1))).clamp(16, 32)
}

/// SDDMM: `out[s] = Σ_m dy[m, i_s]·x[m, j_s]` for every stored position.
fn sddmm<I: Idx>(p: &BlockPattern<I>, dy: &[f32], x: &[f32], m: usize, out: &mut [f32]) {
    let (n_out, k) = (p.rows, p.cols);
    if m == 0 {
        out.fill(0.0);
        return;
    }
    let rc = p.r * p.c;
    let nbr = n_out / p.r;
    // Split block rows into a few large chunks of roughly equal stored values: a task visits every
    // panel of X once, so the more rows it covers, the more often each panel row is reused while it
    // is in cache (with 64 chunks each X row was reused ~2x per visit at 90%: 1536x384, M=4096, one
    // thread took 249 ms, 100 ms with 2 chunks, both before `PackBuf`).
    let total = p.col.len().max(1);
    let chunks = 2 * rayon::current_num_threads();
    let want = (total / chunks).max(1);
    let mut bounds = vec![0usize];
    for br in 1..nbr {
        if p.row_ptr[br] - p.row_ptr[*bounds.last().unwrap()] >= want {
            bounds.push(br);
        }
    }
    bounds.push(nbr);
    let mut pieces = Vec::with_capacity(bounds.len());
    let mut rest = out;
    for w in bounds.windows(2) {
        let len = (p.row_ptr[w[1]] - p.row_ptr[w[0]]) * rc;
        let (a, b) = rest.split_at_mut(len);
        pieces.push((w[0], w[1], a));
        rest = b;
    }
    if m < SMALL_M {
        small::for_each_piece(pieces, |(br0, br1, o)| small::small_m_sddmm(p, dy, x, m, br0, br1, o));
        return;
    }
    let pw = m.div_ceil(8).min(sddmm_vectors(k)) * 8;
    let np = m.div_ceil(pw);
    let dyp = pack_panels(dy, m, n_out, pw);
    let xp = pack_panels(x, m, k, pw);
    pieces.into_par_iter().for_each(|(br0, br1, o)| {
        dispatch!(|S| tasks::sddmm_task::<S, I>(p, &dyp, &xp, pw, np, br0, br1, o));
    });
}

/// A validated pattern plus its lazily built transpose (for `dX = dY·W`).
#[derive(Debug)]
pub(crate) struct Engine {
    pub(crate) pat: AnyPattern,
    tpat: OnceLock<(AnyPattern, Vec<u32>)>,
    /// Set for N:M patterns: the forward then walks K in L1-sized blocks.
    groups: Option<Groups>,
}

impl Engine {
    pub(crate) fn new(pat: AnyPattern) -> Self {
        Self {
            pat,
            tpat: OnceLock::new(),
            groups: None,
        }
    }
    /// An N:M pattern (CSR, `r = c = 1`) whose every row keeps `per_group` of each `size` columns.
    pub(crate) fn with_groups(pat: AnyPattern, size: usize, per_group: usize) -> Self {
        Self {
            groups: Some(Groups { size, per_group }),
            ..Self::new(pat)
        }
    }
    pub(crate) fn rows(&self) -> usize {
        with_pattern!(&self.pat, p => p.rows)
    }
    pub(crate) fn cols(&self) -> usize {
        with_pattern!(&self.pat, p => p.cols)
    }
    fn n_values(&self) -> usize {
        let (r, c) = self.pat.block_shape();
        self.pat.n_blocks() * r * c
    }

    pub(crate) fn pattern_mask(&self) -> Bitmask {
        let ones = vec![1f32; self.n_values()];
        let d = self.pat.to_dense(&ones);
        Bitmask::from_nonzero(self.rows(), self.cols(), &d)
            .expect("to_dense returns rows*cols values")
    }

    pub(crate) fn to_dense(&self, values: &[f32]) -> Result<Vec<f32>> {
        check_len("values", values.len(), self.n_values())?;
        Ok(self.pat.to_dense(values))
    }

    pub(crate) fn forward(
        &self,
        values: &[f32],
        x: &[f32],
        m: usize,
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) -> Result<()> {
        self.forward_act(values, x, m, bias, y, None)
    }

    /// [`Engine::forward`] with GELU fused into the output tiles: `y = gelu(x·Wᵀ + b)`, and
    /// `pre = x·Wᵀ + b` when given.
    pub(crate) fn forward_gelu(
        &self,
        values: &[f32],
        x: &[f32],
        m: usize,
        bias: Option<&[f32]>,
        pre: Option<&mut [f32]>,
        y: &mut [f32],
    ) -> Result<()> {
        if m < SMALL_M {
            // No output tiles to fuse into: the dot-product path writes Y element by element.
            return forward_then_gelu(|out| self.forward(values, x, m, bias, out), pre, y);
        }
        match pre {
            Some(z) => {
                check_len("pre (m*rows)", z.len(), y.len())?;
                self.forward_act(values, x, m, bias, z, Some(GeluOut::Into(y.as_mut_ptr())))
            }
            None => self.forward_act(values, x, m, bias, y, Some(GeluOut::InPlace)),
        }
    }

    fn forward_act(
        &self,
        values: &[f32],
        x: &[f32],
        m: usize,
        bias: Option<&[f32]>,
        y: &mut [f32],
        gelu: Option<GeluOut>,
    ) -> Result<()> {
        let (n, k) = (self.rows(), self.cols());
        check_len("values", values.len(), self.n_values())?;
        check_len("x (m*cols)", x.len(), m * k)?;
        check_len("y (m*rows)", y.len(), m * n)?;
        if let Some(b) = bias {
            check_len("bias", b.len(), n)?;
        }
        with_pattern!(&self.pat, p => spmm(p, values, x, m, bias, y, gelu, self.groups));
        Ok(())
    }

    pub(crate) fn backward_input(
        &self,
        values: &[f32],
        dy: &[f32],
        m: usize,
        dx: &mut [f32],
    ) -> Result<()> {
        let (n, k) = (self.rows(), self.cols());
        check_len("values", values.len(), self.n_values())?;
        check_len("dy (m*rows)", dy.len(), m * n)?;
        check_len("dx (m*cols)", dx.len(), m * k)?;
        if m >= SMALL_M && self.n_values() as f64 >= DENSE_DX_DENSITY * (n * k) as f64 {
            let w = self.pat.to_dense(values);
            return crate::dense::dense_input_grad(&w, dy, m, n, k, dx);
        }
        if m < SMALL_M {
            with_pattern!(&self.pat, p => small::small_m_input_grad(p, values, dy, m, dx));
            return Ok(());
        }
        let (tp, perm) = self.tpat.get_or_init(|| self.pat.transpose());
        let (r, c) = self.pat.block_shape();
        let rc = r * c;
        // Transposed block t (c x r) is original block perm[t] (r x c), transposed.
        let mut vt = vec![0f32; values.len()];
        vt.par_chunks_mut(rc * 256)
            .enumerate()
            .for_each(|(ci, chunk)| {
                for (tt, dst) in chunk.chunks_mut(rc).enumerate() {
                    let b = perm[ci * 256 + tt] as usize;
                    let src = &values[b * rc..(b + 1) * rc];
                    for i in 0..r {
                        for j in 0..c {
                            dst[j * r + i] = src[i * c + j];
                        }
                    }
                }
            });
        with_pattern!(tp, p => spmm(p, &vt, dy, m, None, dx, None, None));
        Ok(())
    }

    pub(crate) fn grad_values(
        &self,
        dy: &[f32],
        x: &[f32],
        m: usize,
        out: &mut [f32],
    ) -> Result<()> {
        let (n, k) = (self.rows(), self.cols());
        check_len("dy (m*rows)", dy.len(), m * n)?;
        check_len("x (m*cols)", x.len(), m * k)?;
        check_len("grad values", out.len(), self.n_values())?;
        with_pattern!(&self.pat, p => sddmm(p, dy, x, m, out));
        Ok(())
    }
}

/// N:M weight gradient at the kept positions (SDDMM), in the natural value order.
pub(crate) fn nm_grad(
    lay: &NmLayout,
    eng: &Engine,
    dy: &[f32],
    x: &[f32],
    m: usize,
    out: &mut [f32],
) -> Result<()> {
    if !lay.vectorised() || m < SMALL_M {
        return eng.grad_values(dy, x, m, out);
    }
    let (n_out, k) = (lay.rows, lay.cols);
    check_len("dy (m*rows)", dy.len(), m * n_out)?;
    check_len("x (m*cols)", x.len(), m * k)?;
    check_len("grad values", out.len(), n_out * lay.slots())?;
    let s_per = lay.slots();
    let nb = n_out / 8;
    if s_per == 0 {
        return Ok(());
    }
    let mut gl = vec![0f32; nb * s_per * 8];
    let bchunk = (nb / 16).max(1);
    gl.par_chunks_mut(bchunk * s_per * 8).enumerate().for_each(|(ci, g)| {
        let b0 = ci * bchunk;
        let b1 = (b0 + bchunk).min(nb);
        dispatch!(|S| nm::sddmm_task::<S>(lay, dy, x, m, (b0, b1), g));
    });
    out[..nb * 8 * s_per]
        .par_chunks_mut(8 * s_per)
        .zip(gl.par_chunks_mut(8 * s_per))
        .for_each(|(o, g)| {
            dispatch!(|S| nm::interleave_block::<S>(o.as_mut_ptr(), g.as_mut_ptr(), s_per, true));
        });
    if nb * 8 < n_out {
        nm::sddmm_rows_scalar(lay, dy, x, m, nb * 8, out);
    }
    Ok(())
}

#[allow(dead_code)]
fn _assert_simd_impls() {
    fn is_simd<S: Simd>() {}
    is_simd::<Portable>();
}
