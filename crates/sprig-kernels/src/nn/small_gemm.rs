//! Register-tiled products for the small matrices inside one attention task (`S x d`, `S x S`,
//! with `d` = 32 or 64 and `S` ≤ a few hundred), where a general GEMM spends its time packing and
//! dispatching. One shape covers all six products of attention forward and backward:
//!
//! `out(r, c) = alpha · Σ_k a(r, k) · b(k, c)` (or `+=`), with `a` any strided view (so `Pᵀ` and
//! `dSᵀ` need no copy) and `b` packed once into a row-major panel of width `n` rounded up to 16.
//!
//! The AVX2+FMA micro-kernel keeps a 6 x 16 tile of `out` in twelve `ymm` accumulators; per `k`
//! it loads two vectors of the `b` panel and broadcasts six elements of `a` (12 FMAs per 8 loads,
//! the classic Goto/BLIS 6x16 shape for 16 architectural registers). Columns are blocked outside
//! rows so a 16-wide strip of the panel stays in L1 while every row block streams past it.
//! With AVX-512 the tile is 8 x 32 (sixteen `zmm` accumulators, 2 panel loads and 8 broadcasts
//! per 16 FMAs) where the panel is 32 wide, and 12 x 16 on a last 16-wide strip; partial
//! columns use masked loads and stores.

/// Read-only strided view `a(r, c) = data[r·rs + c·cs]`.
#[derive(Clone, Copy)]
pub struct Strided<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

/// Micro-tile width (two 8-float vectors).
pub const NR: usize = 16;
/// Micro-tile height.
const MR: usize = 6;

/// `n` rounded up to a multiple of [`NR`]: the row length of a packed panel.
pub fn padded(n: usize) -> usize {
    n.div_ceil(NR) * NR
}

/// Packs `b(r, c)`, `r < rows`, `c < cols`, into `buf` as a row-major `[rows, padded(cols)]`
/// panel with zero padding.
pub fn pack(b: Strided, rows: usize, cols: usize, buf: &mut Vec<f32>) {
    let np = padded(cols);
    buf.clear();
    buf.resize(rows * np, 0.0);
    for (r, dst) in buf.chunks_exact_mut(np).enumerate() {
        if b.cs == 1 {
            dst[..cols].copy_from_slice(&b.data[r * b.rs..r * b.rs + cols]);
        } else {
            for (c, d) in dst[..cols].iter_mut().enumerate() {
                *d = b.data[r * b.rs + c * b.cs];
            }
        }
    }
}

/// `out[r·ldo + c] (+)= alpha · Σ_k a(r, k) · panel[k·padded(n) + c]` for `r < m`, `c < n`, `k < kd`.
///
/// # Safety
/// `out` must be valid for writes at every `r·ldo + c` above and not aliased by `a` or `panel`;
/// `a` must cover every `(r, k)` and `panel` every `k·padded(n) + c`, `c < padded(n)`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(m: usize, n: usize, kd: usize, alpha: f32, a: Strided, panel: &[f32], out: *mut f32, ldo: usize, accumulate: bool) {
    let np = padded(n);
    assert!(panel.len() >= kd * np, "small_gemm: panel too short");
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * a.rs + kd.saturating_sub(1) * a.cs < a.data.len(), "small_gemm: a too short");
    // SAFETY: bounds of `a` and `panel` are checked above, `out` is the caller's contract.
    unsafe { gemm_unchecked(m, n, kd, alpha, a, panel, np, out, ldo, accumulate) }
}

#[allow(clippy::too_many_arguments)]
unsafe fn gemm_unchecked(m: usize, n: usize, kd: usize, alpha: f32, a: Strided, panel: &[f32], np: usize, out: *mut f32, ldo: usize, accumulate: bool) {
    #[cfg(target_arch = "x86_64")]
    match crate::simd() {
        crate::SimdLevel::Avx512 => {
            // SAFETY: AVX-512 F detected; in bounds by `gemm`'s checks and contract.
            unsafe { avx512::tiles(m, n, kd, alpha, a, panel, np, out, ldo, accumulate) };
            return;
        }
        crate::SimdLevel::Avx2 => {
            // SAFETY: AVX2+FMA detected; in bounds by `gemm`'s checks and contract.
            unsafe { avx2::tiles(m, n, kd, alpha, a, panel, np, out, ldo, accumulate) };
            return;
        }
        crate::SimdLevel::Portable => {}
    }
    for r in 0..m {
        for c in 0..n {
            let mut s = 0f32;
            for k in 0..kd {
                s += a.data[r * a.rs + k * a.cs] * panel[k * np + c];
            }
            // SAFETY: `gemm`'s contract.
            unsafe {
                let o = out.add(r * ldo + c);
                *o = if accumulate { *o + alpha * s } else { alpha * s };
            }
        }
    }
}

/// One micro-tile's operands (raw, see [`gemm`]'s contract).
#[allow(dead_code)]
struct Tile {
    kd: usize,
    alpha: f32,
    ap: *const f32,
    ars: usize,
    acs: usize,
    bp: *const f32,
    np: usize,
    op: *mut f32,
    ldo: usize,
    /// Valid columns of this tile (≤ 16); the panel is padded, so loads are always full.
    nc: usize,
    accumulate: bool,
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Strided, Tile, MR, NR};
    use std::arch::x86_64::*;

    /// Every micro-tile of the product, in one `#[target_feature]` function so that [`tile`] is
    /// inlined into it (a call per 6 x 16 tile spent ~15% of the tile time in its prologue at
    /// `kd` = 32, attention's Q·Kᵀ).
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tiles(m: usize, n: usize, kd: usize, alpha: f32, a: Strided, panel: &[f32], np: usize, out: *mut f32, ldo: usize, accumulate: bool) {
        for c0 in (0..n).step_by(NR) {
            let nc = NR.min(n - c0);
            let mut r0 = 0;
            while r0 < m {
                let mr = MR.min(m - r0);
                // SAFETY: in bounds by `gemm`'s checks and contract.
                unsafe {
                    let ap = a.data.as_ptr().add(r0 * a.rs);
                    let bp = panel.as_ptr().add(c0);
                    let op = out.add(r0 * ldo + c0);
                    let t = Tile { kd, alpha, ap, ars: a.rs, acs: a.cs, bp, np, op, ldo, nc, accumulate };
                    match mr {
                        6 => tile::<6>(&t),
                        5 => tile::<5>(&t),
                        4 => tile::<4>(&t),
                        3 => tile::<3>(&t),
                        2 => tile::<2>(&t),
                        _ => tile::<1>(&t),
                    }
                }
                r0 += mr;
            }
        }
    }

    /// One micro-tile (inlined into [`tiles`], which enables AVX2+FMA).
    #[inline(always)]
    unsafe fn tile<const M: usize>(t: &Tile) {
        // SAFETY: AVX2+FMA and the pointers' ranges are `gemm`'s checks and contract.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; M];
            let (mut ak, mut bk) = (t.ap, t.bp);
            for _ in 0..t.kd {
                let b0 = _mm256_loadu_ps(bk);
                let b1 = _mm256_loadu_ps(bk.add(8));
                for (r, row) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*ak.add(r * t.ars));
                    row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                    row[1] = _mm256_fmadd_ps(av, b1, row[1]);
                }
                ak = ak.add(t.acs);
                bk = bk.add(t.np);
            }
            let al = _mm256_set1_ps(t.alpha);
            for (r, row) in acc.iter().enumerate() {
                let o = t.op.add(r * t.ldo);
                let (v0, v1) = (_mm256_mul_ps(row[0], al), _mm256_mul_ps(row[1], al));
                if t.nc == NR {
                    let (v0, v1) = if t.accumulate {
                        (_mm256_add_ps(v0, _mm256_loadu_ps(o)), _mm256_add_ps(v1, _mm256_loadu_ps(o.add(8))))
                    } else {
                        (v0, v1)
                    };
                    _mm256_storeu_ps(o, v0);
                    _mm256_storeu_ps(o.add(8), v1);
                } else {
                    let mut tmp = [0f32; NR];
                    _mm256_storeu_ps(tmp.as_mut_ptr(), v0);
                    _mm256_storeu_ps(tmp.as_mut_ptr().add(8), v1);
                    for (c, v) in tmp[..t.nc].iter().enumerate() {
                        let p = o.add(c);
                        *p = if t.accumulate { *p + v } else { *v };
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Strided, Tile};
    use std::arch::x86_64::*;

    /// Every micro-tile of the product (see [`super::avx2::tiles`]): 32-column strips while the
    /// padded panel has them, then a 16-column strip.
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tiles(m: usize, n: usize, kd: usize, alpha: f32, a: Strided, panel: &[f32], np: usize, out: *mut f32, ldo: usize, accumulate: bool) {
        let mut c0 = 0;
        while c0 < n {
            let wide = c0 + 32 <= np && n - c0 > 16;
            let (w, mr_max) = if wide { (32, 8) } else { (16, 12) };
            let nc = w.min(n - c0);
            let mut r0 = 0;
            while r0 < m {
                let mr = mr_max.min(m - r0);
                // SAFETY: in bounds by `gemm`'s checks and contract.
                unsafe {
                    let ap = a.data.as_ptr().add(r0 * a.rs);
                    let bp = panel.as_ptr().add(c0);
                    let op = out.add(r0 * ldo + c0);
                    let t = Tile { kd, alpha, ap, ars: a.rs, acs: a.cs, bp, np, op, ldo, nc, accumulate };
                    if wide {
                        match mr {
                            8 => tile::<8, 2>(&t),
                            7 => tile::<7, 2>(&t),
                            6 => tile::<6, 2>(&t),
                            5 => tile::<5, 2>(&t),
                            4 => tile::<4, 2>(&t),
                            3 => tile::<3, 2>(&t),
                            2 => tile::<2, 2>(&t),
                            _ => tile::<1, 2>(&t),
                        }
                    } else {
                        match mr {
                            12 => tile::<12, 1>(&t),
                            11 => tile::<11, 1>(&t),
                            10 => tile::<10, 1>(&t),
                            9 => tile::<9, 1>(&t),
                            8 => tile::<8, 1>(&t),
                            7 => tile::<7, 1>(&t),
                            6 => tile::<6, 1>(&t),
                            5 => tile::<5, 1>(&t),
                            4 => tile::<4, 1>(&t),
                            3 => tile::<3, 1>(&t),
                            2 => tile::<2, 1>(&t),
                            _ => tile::<1, 1>(&t),
                        }
                    }
                }
                r0 += mr;
            }
            c0 += w;
        }
    }

    /// One `M x 16·W` micro-tile (inlined into [`tiles`], which enables AVX-512).
    #[inline(always)]
    unsafe fn tile<const M: usize, const W: usize>(t: &Tile) {
        // SAFETY: AVX-512 and the pointers' ranges are `gemm`'s checks and contract (the panel is
        // padded, so its loads are always full; `out` is touched only in the valid columns).
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); W]; M];
            let (mut ak, mut bk) = (t.ap, t.bp);
            for _ in 0..t.kd {
                let mut b = [_mm512_setzero_ps(); W];
                for (j, bv) in b.iter_mut().enumerate() {
                    *bv = _mm512_loadu_ps(bk.add(16 * j));
                }
                for (r, row) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*ak.add(r * t.ars));
                    for j in 0..W {
                        row[j] = _mm512_fmadd_ps(av, b[j], row[j]);
                    }
                }
                ak = ak.add(t.acs);
                bk = bk.add(t.np);
            }
            let al = _mm512_set1_ps(t.alpha);
            let masks: [__mmask16; W] = std::array::from_fn(|j| crate::kernels::first_lanes(t.nc.saturating_sub(16 * j)));
            for (r, row) in acc.iter().enumerate() {
                let o = t.op.add(r * t.ldo);
                for j in 0..W {
                    let mut v = _mm512_mul_ps(row[j], al);
                    let p = o.add(16 * j);
                    if masks[j] == 0xFFFF {
                        if t.accumulate {
                            v = _mm512_add_ps(v, _mm512_loadu_ps(p));
                        }
                        _mm512_storeu_ps(p, v);
                    } else if masks[j] != 0 {
                        if t.accumulate {
                            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(masks[j], p));
                        }
                        _mm512_mask_storeu_ps(p, masks[j], v);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(m: usize, n: usize, kd: usize, ars: usize, acs: usize, accumulate: bool) {
        let alen = (m - 1) * ars + (kd - 1) * acs + 1;
        let a: Vec<f32> = (0..alen).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let b: Vec<f32> = (0..kd * n).map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0).collect();
        let mut panel = Vec::new();
        pack(Strided { data: &b, rs: n, cs: 1 }, kd, n, &mut panel);
        let ldo = n + 3;
        let mut out = vec![0.5f32; m * ldo];
        unsafe { gemm(m, n, kd, 0.7, Strided { data: &a, rs: ars, cs: acs }, &panel, out.as_mut_ptr(), ldo, accumulate) };
        for r in 0..m {
            for c in 0..ldo {
                let want = if c < n {
                    let s: f32 = (0..kd).map(|k| a[r * ars + k * acs] * b[k * n + c]).sum();
                    0.7 * s + if accumulate { 0.5 } else { 0.0 }
                } else {
                    0.5
                };
                let got = out[r * ldo + c];
                assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "m{m} n{n} k{kd} ({r},{c}): {got} vs {want}");
            }
        }
    }

    /// Every instruction-set path this CPU has, on shapes that take full and partial tiles of
    /// every width (AVX-512: 32-column strips, a last 16-column strip, masked edges).
    #[test]
    fn every_simd_path_matches_reference_on_odd_shapes_and_strides() {
        let best = crate::SimdLevel::detected();
        for level in [crate::SimdLevel::Portable, crate::SimdLevel::Avx2, crate::SimdLevel::Avx512] {
            if level > best {
                continue;
            }
            crate::force_simd(Some(level));
            for &(m, n, kd) in &[(1, 1, 1), (7, 33, 5), (128, 128, 32), (13, 16, 64), (6, 17, 3), (50, 32, 50), (20, 40, 7), (25, 20, 9)] {
                check(m, n, kd, kd, 1, false);
                check(m, n, kd, 1, m, true);
                check(m, n, kd, kd + 2, 1, true);
            }
        }
        crate::force_simd(None);
    }
}
