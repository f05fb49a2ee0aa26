//! A minimal f32 vector abstraction so each kernel is written once and compiled three times:
//! with AVX-512 and AVX2+FMA intrinsics (entered through `#[target_feature]` functions after
//! run-time detection) and as portable arrays the compiler vectorises for the baseline target
//! (SSE2 on x86-64, NEON on aarch64). All helpers are `#[inline(always)]` so they are inlined into
//! the feature-enabled entry points and compiled with those features.
//!
//! [`Simd`] is the 8-lane vocabulary every kernel uses (transposes, permutes, index loads).
//! [`Lanes`] is the arithmetic alone, for vectors of any width: the hot loops over packed panels
//! ([`super::tasks::csr_row`], [`super::tasks::block_rows`]) take [`Simd::Wide`], 16 lanes on AVX-512,
//! where every weight then costs half the loads and FMAs of the 8-lane loop.

/// `N` f32 lanes: the arithmetic the panel loops need.
pub(crate) trait Lanes {
    type V: Copy;
    /// Floats per vector.
    const N: usize;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    /// Unaligned load of 8 floats.
    unsafe fn load(p: *const f32) -> Self::V;
    /// Unaligned store of 8 floats.
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `a * b + c`.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
}

/// 8 f32 lanes, and the widest vectors of the same instruction set ([`Simd::Wide`]).
pub(crate) trait Simd: Lanes {
    /// The widest vectors (a multiple of 8 lanes); `Self` where that is 8.
    type Wide: Lanes;
    unsafe fn hsum(v: Self::V) -> f32;
    /// In-place 8x8 transpose: afterwards `r[j][i]` is the old `r[i][j]`.
    unsafe fn transpose8(r: &mut [Self::V; 8]);
    /// 8 lane indices (`i32`), the control of [`Simd::perm4`] / [`Simd::perm8`].
    type I: Copy;
    /// Widens 8 bytes at `p` to 8 lane indices.
    unsafe fn load_idx_u8(p: *const u8) -> Self::I;
    /// The 4 floats at `p` repeated in both halves (`vbroadcastf128`).
    unsafe fn bcast4(p: *const f32) -> Self::V;
    /// Lane `l` = `v[(l & !3) + (idx[l] & 3)]` (`vpermilps`, within 128-bit halves).
    unsafe fn perm4(v: Self::V, idx: Self::I) -> Self::V;
    /// Lane `l` = `v[idx[l] & 7]` (`vpermps`).
    unsafe fn perm8(v: Self::V, idx: Self::I) -> Self::V;
    /// Widens 8 `u16` at `p` to 8 lane indices.
    unsafe fn load_idx_u16(p: *const u16) -> Self::I;
    /// 8 `u32` at `p` as lane indices (only their low bits are used by the permutes).
    unsafe fn load_idx_u32(p: *const u32) -> Self::I;
    /// Lanes 0–3 of `a`, lanes 4–7 of `b` (`vblendps` with a constant).
    unsafe fn halves(a: Self::V, b: Self::V) -> Self::V;
}

/// Plain arrays; the compiler vectorises them.
pub(crate) struct Portable;

impl Lanes for Portable {
    type V = [f32; 8];
    const N: usize = 8;
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
}

impl Simd for Portable {
    type Wide = Self;
    #[inline(always)]
    unsafe fn hsum(v: Self::V) -> f32 {
        ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]))
    }
    #[inline(always)]
    unsafe fn transpose8(r: &mut [Self::V; 8]) {
        let o = *r;
        for i in 0..8 {
            for j in 0..8 {
                r[j][i] = o[i][j];
            }
        }
    }
    type I = [i32; 8];
    #[inline(always)]
    unsafe fn load_idx_u8(p: *const u8) -> Self::I {
        let b = unsafe { (p as *const [u8; 8]).read_unaligned() };
        b.map(|x| x as i32)
    }
    #[inline(always)]
    unsafe fn bcast4(p: *const f32) -> Self::V {
        let a = unsafe { (p as *const [f32; 4]).read_unaligned() };
        [a[0], a[1], a[2], a[3], a[0], a[1], a[2], a[3]]
    }
    #[inline(always)]
    unsafe fn perm4(v: Self::V, idx: Self::I) -> Self::V {
        let mut r = [0.0; 8];
        for l in 0..8 {
            r[l] = v[(l & !3) + (idx[l] & 3) as usize];
        }
        r
    }
    #[inline(always)]
    unsafe fn perm8(v: Self::V, idx: Self::I) -> Self::V {
        let mut r = [0.0; 8];
        for l in 0..8 {
            r[l] = v[(idx[l] & 7) as usize];
        }
        r
    }
    #[inline(always)]
    unsafe fn load_idx_u16(p: *const u16) -> Self::I {
        let b = unsafe { (p as *const [u16; 8]).read_unaligned() };
        b.map(|x| x as i32)
    }
    #[inline(always)]
    unsafe fn load_idx_u32(p: *const u32) -> Self::I {
        let b = unsafe { (p as *const [u32; 8]).read_unaligned() };
        b.map(|x| x as i32)
    }
    #[inline(always)]
    unsafe fn halves(a: Self::V, b: Self::V) -> Self::V {
        [a[0], a[1], a[2], a[3], b[4], b[5], b[6], b[7]]
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Lanes, Simd};
    use std::arch::x86_64::*;

    /// AVX2 + FMA (256-bit). Only used inside `#[target_feature(enable = "avx2,fma")]` functions
    /// reached after `is_x86_feature_detected!` said yes.
    pub(crate) struct Avx2;

    impl Lanes for Avx2 {
        type V = __m256;
        const N: usize = 8;
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
    }

    impl Simd for Avx2 {
        type Wide = Self;
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
        unsafe fn transpose8(r: &mut [Self::V; 8]) {
            unsafe {
                let t0 = _mm256_unpacklo_ps(r[0], r[1]);
                let t1 = _mm256_unpackhi_ps(r[0], r[1]);
                let t2 = _mm256_unpacklo_ps(r[2], r[3]);
                let t3 = _mm256_unpackhi_ps(r[2], r[3]);
                let t4 = _mm256_unpacklo_ps(r[4], r[5]);
                let t5 = _mm256_unpackhi_ps(r[4], r[5]);
                let t6 = _mm256_unpacklo_ps(r[6], r[7]);
                let t7 = _mm256_unpackhi_ps(r[6], r[7]);
                let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                r[0] = _mm256_permute2f128_ps::<0x20>(u0, u4);
                r[1] = _mm256_permute2f128_ps::<0x20>(u1, u5);
                r[2] = _mm256_permute2f128_ps::<0x20>(u2, u6);
                r[3] = _mm256_permute2f128_ps::<0x20>(u3, u7);
                r[4] = _mm256_permute2f128_ps::<0x31>(u0, u4);
                r[5] = _mm256_permute2f128_ps::<0x31>(u1, u5);
                r[6] = _mm256_permute2f128_ps::<0x31>(u2, u6);
                r[7] = _mm256_permute2f128_ps::<0x31>(u3, u7);
            }
        }
        type I = __m256i;
        #[inline(always)]
        unsafe fn load_idx_u8(p: *const u8) -> Self::I {
            unsafe { _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i)) }
        }
        #[inline(always)]
        unsafe fn bcast4(p: *const f32) -> Self::V {
            unsafe { _mm256_broadcast_ps(&*(p as *const __m128)) }
        }
        #[inline(always)]
        unsafe fn perm4(v: Self::V, idx: Self::I) -> Self::V {
            unsafe { _mm256_permutevar_ps(v, idx) }
        }
        #[inline(always)]
        unsafe fn perm8(v: Self::V, idx: Self::I) -> Self::V {
            unsafe { _mm256_permutevar8x32_ps(v, idx) }
        }
        #[inline(always)]
        unsafe fn load_idx_u16(p: *const u16) -> Self::I {
            unsafe { _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)) }
        }
        #[inline(always)]
        unsafe fn load_idx_u32(p: *const u32) -> Self::I {
            unsafe { _mm256_loadu_si256(p as *const __m256i) }
        }
        #[inline(always)]
        unsafe fn halves(a: Self::V, b: Self::V) -> Self::V {
            unsafe { _mm256_blend_ps::<0xF0>(a, b) }
        }
    }

    /// AVX-512 (F + VL): the 8-lane operations are [`Avx2`]'s, compiled with AVX-512 enabled
    /// (EVEX encodings, 32 vector registers); [`Simd::Wide`] is 16 lanes ([`Zmm`]). Only used
    /// inside `#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]` functions reached after
    /// run-time detection.
    pub(crate) struct Avx512;

    /// 16 lanes (`__m512`).
    pub(crate) struct Zmm;

    impl Lanes for Zmm {
        type V = __m512;
        const N: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self::V {
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self::V {
            unsafe { _mm512_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self::V {
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: Self::V) {
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
            unsafe { _mm512_add_ps(a, b) }
        }
    }

    /// Forwards the listed methods of `$trait` to [`Avx2`]'s (the 8-lane operations of [`Avx512`]).
    macro_rules! as_avx2 {
        ($trait:ident: $($f:ident($($a:ident: $t:ty),*) -> $r:ty;)*) => {$(
            #[inline(always)]
            unsafe fn $f($($a: $t),*) -> $r {
                unsafe { <Avx2 as $trait>::$f($($a),*) }
            }
        )*};
    }

    impl Lanes for Avx512 {
        type V = __m256;
        const N: usize = 8;
        as_avx2! { Lanes:
            zero() -> __m256;
            splat(x: f32) -> __m256;
            load(p: *const f32) -> __m256;
            store(p: *mut f32, v: __m256) -> ();
            fma(a: __m256, b: __m256, c: __m256) -> __m256;
            add(a: __m256, b: __m256) -> __m256;
        }
    }

    impl Simd for Avx512 {
        type Wide = Zmm;
        type I = __m256i;
        as_avx2! { Simd:
            hsum(v: __m256) -> f32;
            transpose8(r: &mut [__m256; 8]) -> ();
            load_idx_u8(p: *const u8) -> __m256i;
            bcast4(p: *const f32) -> __m256;
            perm4(v: __m256, idx: __m256i) -> __m256;
            perm8(v: __m256, idx: __m256i) -> __m256;
            load_idx_u16(p: *const u16) -> __m256i;
            load_idx_u32(p: *const u32) -> __m256i;
            halves(a: __m256, b: __m256) -> __m256;
        }
    }
}
