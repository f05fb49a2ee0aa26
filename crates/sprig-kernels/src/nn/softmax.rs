//! Softmax rows of attention scores, forward and backward. The portable and AVX2 forms are the
//! lane-array loops of [`super::math`] compiled per level; with AVX-512 the forward is written in
//! intrinsics: one pass for the scaled, biased scores and their maximum, one for `exp` and the
//! sum, four vectors at a time so the polynomial chains overlap (the lane-array loop was
//! latency-bound on one vector per iteration and took a third of attention's inference time).
//! Every level computes the same `exp` ([`super::math::exp`]: equal bits on every path).

use super::math::{dot8, exp, max8, simd_dispatch, sum8};

/// In place softmax of one row, with `v[i] = scale·v[i] + bias[i]` applied first.
pub fn scaled_softmax_row(v: &mut [f32], scale: f32, bias: &[f32]) {
    let inv = unnormalized_softmax_row(v, scale, bias);
    scale_row(v, inv);
}

/// [`scaled_softmax_row`] without the final division: leaves `exp(v[i] − max)` in `v` and
/// returns `1 / Σ`, for a caller that scales a smaller product instead (attention's inference
/// path scales each `d`-wide context row rather than each `S`-wide probability row).
pub fn unnormalized_softmax_row(v: &mut [f32], scale: f32, bias: &[f32]) -> f32 {
    assert!(bias.len() >= v.len(), "softmax: bias shorter than the row");
    #[cfg(target_arch = "x86_64")]
    if crate::simd() == crate::SimdLevel::Avx512 {
        // SAFETY: AVX-512 F detected at run time; `bias` covers `v` (checked above).
        return unsafe { avx512::exp_row(v, scale, bias) };
    }
    exp_row_lanes(v, scale, bias)
}

simd_dispatch! {
    /// `v[i] ← exp(scale·v[i] + bias[i] − max)`, returning `1 / Σ v[i]`.
    fn exp_row_lanes(v: &mut [f32], scale: f32, bias: &[f32]) -> f32 {
        for (v, &b) in v.iter_mut().zip(bias) {
            *v = v.mul_add(scale, b);
        }
        let max = max8(v);
        for v in v.iter_mut() {
            *v = exp(*v - max);
        }
        1.0 / sum8(v)
    }
}

simd_dispatch! {
    /// `v[i] *= s`.
    pub fn scale_row(v: &mut [f32], s: f32) {
        for v in v.iter_mut() {
            *v *= s;
        }
    }
}

simd_dispatch! {
    /// Backward through a softmax row in place: `g ← p ⊙ (g − ⟨g, p⟩)` (`g` = d loss / d p on
    /// entry, d loss / d logits on exit).
    pub fn softmax_backward_row(g: &mut [f32], p: &[f32]) {
        let dot = dot8(g, p);
        for (g, &p) in g.iter_mut().zip(p) {
            // Subnormal results are flushed to 0 (they would slow every later product; see `exp`).
            let r = p * (*g - dot);
            *g = if r.abs() < f32::MIN_POSITIVE { 0.0 } else { r };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// [`super::super::math::exp`] on 16 lanes, step for step (the same rounding in each
    /// operation, `vscalefps` for the exact `·2ⁿ`), so its bits equal the scalar function's.
    #[inline]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::excessive_precision)]
    fn exp16(x: __m512) -> __m512 {
        let tiny = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(-87.0));
        // max/min return their second operand when either is NaN: NaN stays NaN, like `clamp`.
        let x = _mm512_min_ps(_mm512_set1_ps(88.0), _mm512_max_ps(_mm512_set1_ps(-87.0), x));
        let t = _mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)), _mm512_set1_ps(0.5));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(t);
        let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-0.693_359_4), x);
        let r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.000_000_1e-1] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let e = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0));
        // n is an integer in [-126, 127] and e·2ⁿ a normal float: scalef is the exact product.
        _mm512_maskz_mov_ps(!tiny, _mm512_scalef_ps(e, n))
    }

    /// Row loads: 16 lanes at `i`, the last `len − i < 16` masked (`fill` in the masked lanes).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load(p: *const f32, i: usize, len: usize, fill: f32) -> (__m512, __mmask16) {
        let m = crate::kernels::first_lanes(len - i);
        // SAFETY: lanes outside the mask are not read; the caller keeps `i < len`.
        (unsafe { _mm512_mask_loadu_ps(_mm512_set1_ps(fill), m, p.add(i)) }, m)
    }

    /// Vectors of a row kept in registers by [`exp_row_short`].
    const SHORT: usize = 8;

    /// [`exp_row`] for rows of at most 128: the row is loaded once and stays in registers, so
    /// the eight `exp` chains run side by side and nothing is stored between the passes (the
    /// two-pass loop was bound by the latency of four chains and the reductions between them).
    ///
    /// # Safety
    /// As [`exp_row`], and `v.len() <= 128`.
    #[target_feature(enable = "avx512f")]
    unsafe fn exp_row_short(v: &mut [f32], scale: f32, bias: &[f32]) -> f32 {
        let n = v.len();
        let (vp, bp) = (v.as_mut_ptr(), bias.as_ptr());
        let (sc, ninf) = (_mm512_set1_ps(scale), _mm512_set1_ps(f32::NEG_INFINITY));
        let mut x = [ninf; SHORT];
        let mut masks = [0 as __mmask16; SHORT];
        // SAFETY (whole body): lanes outside `v[..n]` / `bias[..n]` are masked off.
        unsafe {
            for (i, (xi, mi)) in x.iter_mut().zip(masks.iter_mut()).enumerate() {
                if 16 * i < n {
                    let (a, m) = load(vp, 16 * i, n, 0.0);
                    let (b, _) = load(bp, 16 * i, n, 0.0);
                    *xi = _mm512_mask_mov_ps(ninf, m, _mm512_fmadd_ps(a, sc, b));
                    *mi = m;
                }
            }
            // A NaN score is ignored by the maximum (as by `max8`): max_ps returns its second
            // operand when either is NaN.
            let m4: [__m512; 4] = std::array::from_fn(|i| _mm512_max_ps(x[i + 4], x[i]));
            let m2 = [_mm512_max_ps(m4[2], m4[0]), _mm512_max_ps(m4[3], m4[1])];
            let max = _mm512_set1_ps(_mm512_reduce_max_ps(_mm512_max_ps(m2[1], m2[0])));
            // Lanes past the row hold -inf: exp gives 0 there.
            let e: [__m512; SHORT] = std::array::from_fn(|i| exp16(_mm512_sub_ps(x[i], max)));
            for (i, (ei, mi)) in e.iter().zip(masks).enumerate() {
                if mi != 0 {
                    _mm512_mask_storeu_ps(vp.add(16 * i), mi, *ei);
                }
            }
            let s4: [__m512; 4] = std::array::from_fn(|i| _mm512_add_ps(e[i], e[i + 4]));
            let s = _mm512_add_ps(_mm512_add_ps(s4[0], s4[2]), _mm512_add_ps(s4[1], s4[3]));
            1.0 / _mm512_reduce_add_ps(s)
        }
    }

    /// See [`super::unnormalized_softmax_row`].
    ///
    /// # Safety
    /// AVX-512 F must be available; `bias.len() >= v.len()`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_row(v: &mut [f32], scale: f32, bias: &[f32]) -> f32 {
        let n = v.len();
        if n <= 16 * SHORT {
            // SAFETY: as here.
            return unsafe { exp_row_short(v, scale, bias) };
        }
        let (vp, bp) = (v.as_mut_ptr(), bias.as_ptr());
        let sc = _mm512_set1_ps(scale);
        // SAFETY (whole body): every access is inside `v[..n]` / `bias[..n]`, masked at the tail.
        unsafe {
            let mut mx = _mm512_set1_ps(f32::NEG_INFINITY);
            let mut i = 0;
            while i < n {
                let (x, m) = load(vp, i, n, 0.0);
                let (b, _) = load(bp, i, n, 0.0);
                let y = _mm512_fmadd_ps(x, sc, b);
                _mm512_mask_storeu_ps(vp.add(i), m, y);
                // Lanes outside the mask keep -inf; a NaN score is ignored here as by `max8`.
                mx = _mm512_mask_max_ps(mx, m, y, mx);
                i += 16;
            }
            let max = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
            let mut sums = [_mm512_setzero_ps(); 4];
            let mut i = 0;
            while i + 64 <= n {
                for (j, s) in sums.iter_mut().enumerate() {
                    let p = vp.add(i + 16 * j);
                    let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(p), max));
                    _mm512_storeu_ps(p, e);
                    *s = _mm512_add_ps(*s, e);
                }
                i += 64;
            }
            while i < n {
                let (x, m) = load(vp, i, n, 0.0);
                let e = exp16(_mm512_sub_ps(x, max));
                _mm512_mask_storeu_ps(vp.add(i), m, e);
                sums[0] = _mm512_add_ps(sums[0], _mm512_maskz_mov_ps(m, e));
                i += 16;
            }
            let s = _mm512_add_ps(_mm512_add_ps(sums[0], sums[1]), _mm512_add_ps(sums[2], sums[3]));
            1.0 / _mm512_reduce_add_ps(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A padded key (bias -1e4) gets probability exactly 0 and no softmax gradient is subnormal.
    #[test]
    fn softmax_of_padded_keys_is_exactly_zero_and_never_subnormal() {
        let mut row = vec![0.5f32, -1.0, 2.0, 0.1, 0.0, 0.0, 0.0, 0.0, 0.3];
        let bias = [0.0, 0.0, 0.0, 0.0, -1e4, -1e4, -1e4, -1e4, 0.0];
        scaled_softmax_row(&mut row, 0.125, &bias);
        assert!(row[4..8].iter().all(|&p| p == 0.0), "{row:?}");
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let mut g: Vec<f32> = (0..9).map(|i| 1e-30 * i as f32).collect();
        softmax_backward_row(&mut g, &row);
        assert!(g.iter().all(|x| *x == 0.0 || x.abs() >= f32::MIN_POSITIVE), "{g:?}");
    }

    #[test]
    fn softmax_row_sums_to_one() {
        let mut v: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
        let bias: Vec<f32> = (0..37).map(|i| if i % 5 == 0 { -1e4 } else { 0.0 }).collect();
        let orig = v.clone();
        scaled_softmax_row(&mut v, 0.5, &bias);
        let s: f32 = v.iter().sum();
        assert!((s - 1.0).abs() < 1e-6);
        let m = orig.iter().zip(&bias).map(|(a, b)| a * 0.5 + b).fold(f32::MIN, f32::max);
        let z: f64 = orig.iter().zip(&bias).map(|(a, b)| ((a * 0.5 + b - m) as f64).exp()).sum();
        for i in 0..37 {
            let want = ((orig[i] * 0.5 + bias[i] - m) as f64).exp() / z;
            assert!((v[i] as f64 - want).abs() < 1e-6);
                }
    }

    /// The AVX-512 row (every length: whole 64-blocks, 16-blocks, masked tails) against the
    /// lane-array loop, bit for bit: the same `exp`, so only the sum's order may differ.
    #[test]
    fn every_path_matches_the_lane_loop() {
        for n in [1usize, 5, 16, 17, 63, 64, 65, 128, 130, 384] {
            let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.71).sin() * 9.0).collect();
            let bias: Vec<f32> = (0..n).map(|i| if i % 7 == 3 { -1e4 } else { (i % 3) as f32 * 0.1 }).collect();
            let mut want = x.clone();
            let inv_want = exp_row_lanes(&mut want, 0.3, &bias);
            let mut got = x.clone();
            let inv = unnormalized_softmax_row(&mut got, 0.3, &bias);
            assert_eq!(got, want, "n={n}");
            assert!((inv / inv_want - 1.0).abs() < 1e-6, "n={n}: {inv} vs {inv_want}");
        }
        let mut v = vec![1.0, f32::NAN, 2.0];
        scaled_softmax_row(&mut v, 1.0, &[0.0; 3]);
        assert!(v.iter().all(|x| x.is_nan()), "a NaN score makes the row NaN: {v:?}");
    }
}
