//! A minimal 8-lane f32 vector abstraction so each kernel is written once and compiled twice:
//! with AVX2+FMA intrinsics (entered through `#[target_feature]` functions after run-time
//! detection) and as portable arrays the compiler vectorises for the baseline target (SSE2 on
//! x86-64, NEON on aarch64). All helpers are `#[inline(always)]` so they are inlined into the
//! feature-enabled entry points and compiled with those features.

/// 8 f32 lanes.
pub(crate) trait Simd {
    type V: Copy;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    /// Unaligned load of 8 floats.
    unsafe fn load(p: *const f32) -> Self::V;
    /// Unaligned store of 8 floats.
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `a * b + c`.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn hsum(v: Self::V) -> f32;
    /// `base[idx[l]]` for the 8 lanes.
    unsafe fn gather(base: *const f32, idx: &[i32; 8]) -> Self::V;
}

/// Plain arrays; the compiler vectorises them.
pub(crate) struct Portable;

impl Simd for Portable {
    type V = [f32; 8];
    #[inline(always)]
    unsafe fn zero() -> Self::V {
        [0.0; 8]
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self::V {
        [x; 8]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        unsafe { (p as *const [f32; 8]).read_unaligned() }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        unsafe { (p as *mut [f32; 8]).write_unaligned(v) }
    }
    #[inline(always)]
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        let mut r = c;
        for l in 0..8 {
            r[l] += a[l] * b[l];
        }
        r
    }
    #[inline(always)]
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
        let mut r = a;
        for l in 0..8 {
            r[l] += b[l];
        }
        r
    }
    #[inline(always)]
    unsafe fn hsum(v: Self::V) -> f32 {
        ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]))
    }
    #[inline(always)]
    unsafe fn gather(base: *const f32, idx: &[i32; 8]) -> Self::V {
        let mut r = [0.0; 8];
        for l in 0..8 {
            r[l] = unsafe { *base.add(idx[l] as usize) };
        }
        r
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::Avx2;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Simd;
    use std::arch::x86_64::*;

    /// AVX2 + FMA (256-bit). Only used inside `#[target_feature(enable = "avx2,fma")]` functions
    /// reached after `is_x86_feature_detected!` said yes.
    pub(crate) struct Avx2;

    impl Simd for Avx2 {
        type V = __m256;
        #[inline(always)]
        unsafe fn zero() -> Self::V {
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self::V {
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self::V {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: Self::V) {
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn hsum(v: Self::V) -> f32 {
            unsafe {
                let lo = _mm256_castps256_ps128(v);
                let hi = _mm256_extractf128_ps(v, 1);
                let s = _mm_add_ps(lo, hi);
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
                _mm_cvtss_f32(s)
            }
        }
        #[inline(always)]
        unsafe fn gather(base: *const f32, idx: &[i32; 8]) -> Self::V {
            unsafe {
                let i = _mm256_loadu_si256(idx.as_ptr() as *const __m256i);
                _mm256_i32gather_ps::<4>(base, i)
            }
        }
    }
}
