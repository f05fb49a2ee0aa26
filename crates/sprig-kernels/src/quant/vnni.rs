//! The int8 kernel on AVX-512 VNNI: `vpdpbusd` over 16 tokens x 4 columns per instruction, up to 4
//! panel vectors (64 tokens) sharing each broadcast weight quad, the float epilogue in 16 lanes and
//! a 16x16 transpose to write row-major `y`.
#![allow(unsafe_op_in_unsafe_fn)]
use super::{row_stride, Job, Scratch, LANES, TILE_ROWS};
use std::arch::x86_64::*;

#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni,avx2,fma")]
pub(super) unsafe fn task(job: &Job, s: &mut Scratch) {
    pack(job, s);
    match job.v {
        1 => rows::<1>(job, s),
        2 => rows::<2>(job, s),
        3 => rows::<3>(job, s),
        _ => rows::<4>(job, s),
    }
}

#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni,avx2,fma")]
unsafe fn rows<const V: usize>(job: &Job, s: &mut Scratch) {
    let w = job.w;
    let pw = V * LANES;
    let pan = s.panel.as_ptr();
    let tile = s.tile.as_mut_ptr();
    let mut sx = [_mm512_setzero_ps(); V];
    for (i, v) in sx.iter_mut().enumerate() {
        *v = _mm512_loadu_ps(s.sx.as_ptr().add(LANES * i));
    }
    for n0 in (job.r0..job.r1).step_by(TILE_ROWS) {
        let n1 = (n0 + TILE_ROWS).min(job.r1);
        for n in n0..n1 {
            // Two accumulator sets (even and odd quads): `vpdpbusd`'s latency (~5 cycles) would
            // otherwise bound V chains to V instructions per 5 cycles.
            let mut acc = [_mm512_setzero_si512(); V];
            let mut acc2 = [_mm512_setzero_si512(); V];
            let (lo, hi) = (*w.row_ptr.get_unchecked(n) as usize, *w.row_ptr.get_unchecked(n + 1) as usize);
            let mut j = lo;
            while j + 1 < hi {
                let wq = _mm512_set1_epi32(*w.weights.get_unchecked(j));
                let wq2 = _mm512_set1_epi32(*w.weights.get_unchecked(j + 1));
                let base = pan.add(*w.quad.get_unchecked(j) as usize * V * 64);
                let base2 = pan.add(*w.quad.get_unchecked(j + 1) as usize * V * 64);
                for i in 0..V {
                    acc[i] = _mm512_dpbusd_epi32(acc[i], _mm512_loadu_si512(base.add(64 * i) as *const _), wq);
                    acc2[i] = _mm512_dpbusd_epi32(acc2[i], _mm512_loadu_si512(base2.add(64 * i) as *const _), wq2);
                }
                j += 2;
            }
            if j < hi {
                let wq = _mm512_set1_epi32(*w.weights.get_unchecked(j));
                let base = pan.add(*w.quad.get_unchecked(j) as usize * V * 64);
                for (i, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_dpbusd_epi32(*a, _mm512_loadu_si512(base.add(64 * i) as *const _), wq);
                }
            }
            for i in 0..V {
                acc[i] = _mm512_add_epi32(acc[i], acc2[i]);
            }
            let sc = _mm512_set1_ps(*w.scale.get_unchecked(n));
            let off = _mm512_set1_epi32(*w.offset.get_unchecked(n));
            let b = _mm512_set1_ps(job.bias.map_or(0.0, |b| *b.get_unchecked(n)));
            let out = tile.add((n - n0) * pw);
            for i in 0..V {
                let f = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[i], off));
                _mm512_storeu_ps(out.add(LANES * i), _mm512_fmadd_ps(f, _mm512_mul_ps(sx[i], sc), b));
            }
        }
        let nr = n1 - n0;
        if job.gelu {
            crate::nn::math::gelu_inplace(&mut s.tile[..nr * pw]);
        }
        let mask = crate::kernels::first_lanes(nr);
        for i in 0..V {
            let t0 = LANES * i;
            if t0 >= job.lanes {
                break;
            }
            let mut r = [_mm512_setzero_ps(); 16];
            for (k, rk) in r.iter_mut().enumerate() {
                *rk = _mm512_loadu_ps(tile.add(k * pw + t0));
            }
            let c = transpose16(r);
            for (t, ct) in c.iter().enumerate().take((job.lanes - t0).min(LANES)) {
                _mm512_mask_storeu_ps(job.y.add((job.m0 + t0 + t) * w.rows + n0), mask, *ct);
            }
        }
    }
}

/// The panel of [`super::pack_panel`], 16 tokens at a time: each token quantized into its own
/// scratch row, then every 16 quads of the 16 rows transposed (16x16 of 32-bit) into 16 panel
/// vectors, written as whole cache lines.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni,avx2,fma")]
unsafe fn pack(job: &Job, s: &mut Scratch) {
    let k = job.w.cols;
    let (nq, kp, v) = (k.div_ceil(4), row_stride(k), job.v);
    let rows = s.row.as_mut_ptr();
    let pan = s.panel.as_mut_ptr();
    for vv in 0..v {
        for lane in 0..LANES {
            let t = vv * LANES + lane;
            let row = std::slice::from_raw_parts_mut(rows.add(lane * kp), kp);
            s.sx[t] = if t < job.lanes {
                let m = job.m0 + t;
                quantize_token(&job.x[m * k..(m + 1) * k], row)
            } else {
                row.fill(128);
                0.0
            };
        }
        for qb in (0..nq).step_by(16) {
            let mut r = [_mm512_setzero_ps(); 16];
            for (l, rl) in r.iter_mut().enumerate() {
                *rl = _mm512_loadu_ps(rows.add(l * kp + qb * 4) as *const f32);
            }
            let c = transpose16(r);
            for (j, cj) in c.iter().enumerate().take(nq - qb) {
                _mm512_storeu_ps(pan.add(((qb + j) * v + vv) * 64) as *mut f32, *cj);
            }
        }
    }
}

/// [`super::quantize_token`] in 16 lanes (same rounding: the default MXCSR mode, ties to even).
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni,avx2,fma")]
unsafe fn quantize_token(x: &[f32], out: &mut [u8]) -> f32 {
    let k = x.len();
    let tail = |i: usize| crate::kernels::first_lanes(k - i);
    // Four max chains (latency, not throughput, bounds one); NaN and ±inf caught by an unordered
    // not-less-than compare against +inf.
    let inf = _mm512_set1_ps(f32::INFINITY);
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut bad: __mmask16 = 0;
    let mut i = 0;
    while i + 64 <= k {
        for (j, a) in acc.iter_mut().enumerate() {
            let v = _mm512_abs_ps(_mm512_loadu_ps(x.as_ptr().add(i + 16 * j)));
            *a = _mm512_max_ps(*a, v);
            bad |= _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(v, inf);
        }
        i += 64;
    }
    while i < k {
        let v = _mm512_abs_ps(_mm512_maskz_loadu_ps(tail(i), x.as_ptr().add(i)));
        acc[0] = _mm512_max_ps(acc[0], v);
        bad |= _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(v, inf);
        i += 16;
    }
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(acc[0], acc[1]), _mm512_max_ps(acc[2], acc[3])));
    if amax == 0.0 || bad != 0 {
        out.fill(128);
        return if bad != 0 { f32::NAN } else { 0.0 };
    }
    let inv = _mm512_set1_ps(127.0 / amax);
    let off = _mm512_set1_epi32(128);
    let mut i = 0;
    while i + 16 <= k {
        let q = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x.as_ptr().add(i)), inv)), off);
        _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut _, _mm512_cvtepi32_epi8(q));
        i += 16;
    }
    if i < k {
        let m = tail(i);
        let q = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x.as_ptr().add(i)), inv)), off);
        _mm512_mask_cvtepi32_storeu_epi8(out.as_mut_ptr().add(i) as *mut _, m, q);
    }
    out[k..].fill(128);
    amax / 127.0
}

/// Transposes 16 rows of 16 floats (`out[j]` holds element `j` of every row).
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    let mut t = [_mm512_setzero_ps(); 16];
    for p in 0..8 {
        t[2 * p] = _mm512_unpacklo_ps(r[2 * p], r[2 * p + 1]);
        t[2 * p + 1] = _mm512_unpackhi_ps(r[2 * p], r[2 * p + 1]);
    }
    // u[4g + c]: column 4L + c of rows 4g..4g+4 in each 128-bit lane L.
    let mut u = [_mm512_setzero_ps(); 16];
    let pd = _mm512_castps_pd;
    for g in 0..4 {
        let (a, b, c, d) = (t[4 * g], t[4 * g + 2], t[4 * g + 1], t[4 * g + 3]);
        u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(a), pd(b)));
        u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(a), pd(b)));
        u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(c), pd(d)));
        u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(c), pd(d)));
    }
    let mut out = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        let v0 = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
        let v1 = _mm512_shuffle_f32x4::<0xdd>(u[c], u[4 + c]);
        let w0 = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
        let w1 = _mm512_shuffle_f32x4::<0xdd>(u[8 + c], u[12 + c]);
        out[c] = _mm512_shuffle_f32x4::<0x88>(v0, w0);
        out[c + 8] = _mm512_shuffle_f32x4::<0xdd>(v0, w0);
        out[c + 4] = _mm512_shuffle_f32x4::<0x88>(v1, w1);
        out[c + 12] = _mm512_shuffle_f32x4::<0xdd>(v1, w1);
    }
    out
}
