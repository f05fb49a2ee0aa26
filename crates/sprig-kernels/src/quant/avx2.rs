//! The int8 kernel on plain AVX2 (CPUs without VNNI, e.g. AMD Zen 3): each quad's u8 activations
//! widened to i16 (`vpmovzxbw`) and multiplied with the quad's weights by `vpmaddwd`, exact in
//! int32 (no `vpmaddubsw` saturation); the float epilogue and the transpose are the portable ones.
#![allow(unsafe_op_in_unsafe_fn)]
use super::{epilogue_row, pack_panel, quantize_token, store_tile, Job, Scratch, LANES, TILE_ROWS};
use std::arch::x86_64::*;

#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn task(job: &Job, s: &mut Scratch) {
    pack_panel(job, s, quantize_token);
    match job.v {
        1 => rows::<1>(job, s),
        _ => rows::<2>(job, s),
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn rows<const V: usize>(job: &Job, s: &mut Scratch) {
    let w = job.w;
    let pw = V * LANES;
    let pan = s.panel.as_ptr();
    let mut dots = [0i32; 2 * LANES];
    for n0 in (job.r0..job.r1).step_by(TILE_ROWS) {
        let n1 = (n0 + TILE_ROWS).min(job.r1);
        for n in n0..n1 {
            // acc[4i + j]: tokens 16i + 4j .. +4 of panel vector i, two partial sums per token.
            let mut acc = [_mm256_setzero_si256(); 8];
            for j in w.row_ptr[n] as usize..w.row_ptr[n + 1] as usize {
                // The quad's 4 weights sign-extended to i16, repeated 4 times.
                let wq = _mm256_cvtepi8_epi16(_mm_set1_epi32(*w.weights.get_unchecked(j)));
                let base = pan.add(w.quad[j] as usize * V * 64);
                for i in 0..V {
                    for q in 0..4 {
                        let xb = _mm256_cvtepu8_epi16(_mm_loadu_si128(base.add(64 * i + 16 * q) as *const _));
                        acc[4 * i + q] = _mm256_add_epi32(acc[4 * i + q], _mm256_madd_epi16(xb, wq));
                    }
                }
            }
            for i in 0..V {
                for q in 0..4 {
                    let mut pairs = [0i32; 8];
                    _mm256_storeu_si256(pairs.as_mut_ptr() as *mut _, acc[4 * i + q]);
                    for t in 0..4 {
                        dots[16 * i + 4 * q + t] = pairs[2 * t] + pairs[2 * t + 1];
                    }
                }
            }
            epilogue_row(job, n, n0, &dots[..pw], s);
        }
        store_tile(job, n0, n1, s);
    }
}
