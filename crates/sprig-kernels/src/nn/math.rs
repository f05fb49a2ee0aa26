//! Branch-free `exp`, `erf` and GELU for slices, written so that LLVM vectorises them; compiled
//! three times (AVX-512 or AVX2+FMA picked at run time, portable otherwise) by [`simd_dispatch!`].

/// Compile a slice function three times, with AVX-512, with AVX2+FMA and without, and pick at
/// run time ([`crate::simd`]).
macro_rules! simd_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                match crate::simd() {
                    // SAFETY: the CPU supports AVX-512 F/VL, AVX2 and FMA (detected at run time).
                    crate::SimdLevel::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: the CPU supports AVX2 and FMA (detected at run time).
                    crate::SimdLevel::Avx2 => return unsafe { avx2($($arg),*) },
                    crate::SimdLevel::Portable => {}
                }
            }
            body($($arg),*)
        }
    };
}
#[allow(unused_imports)]
pub(crate) use simd_dispatch;

/// `e^x` for f32, Cephes `expf` polynomial after Cody–Waite range reduction; relative error
/// below 2e-7 on [-87, 88]; inputs are clamped to that range (so `exp(-1e4)` ≈ 1.6e-38, not 0).
#[inline(always)]
#[allow(clippy::excessive_precision)]
pub fn exp(x: f32) -> f32 {
    // Below -87 the result is 0, not the 1.6e-38 of the clamped input: a softmax over padded keys
    // (bias -1e4) otherwise keeps ~1e-38 probabilities whose products in the attention backward
    // are subnormal, and x86 FMAs on subnormals take microcode assists (a padded sms-spam batch
    // took 43 s instead of 0.5 s).
    let tiny = x < -87.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = n.mul_add(-0.693_359_4, x);
    let r = n.mul_add(2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_2e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 5.000_000_1e-1);
    let e = (p * r).mul_add(r, r) + 1.0;
    // 2^n from the bits: n is an integer in [-126, 127], so n + 1.5·2^23 holds n + 0x4B40_0000 in
    // its bit pattern. (`n as i32` is a saturating, NaN-checking cast that LLVM does lane by lane
    // with scalar converts and compares: it made every vectorised exp/erf/GELU loop ~4x slower.)
    let ni = (n + 12_582_912.0).to_bits().wrapping_sub(0x4B40_0000);
    let scale = f32::from_bits(ni.wrapping_add(127) << 23);
    if tiny {
        0.0
    } else {
        e * scale
    }
}

/// `erf(x)` via the Chebyshev fit of `erfc` in Numerical Recipes (§6.2, fractional error
/// < 1.2e-7), branch-free.
#[inline(always)]
#[allow(clippy::excessive_precision)]
pub fn erf(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / 0.5f32.mul_add(z, 1.0);
    let mut p = 0.170_872_77f32;
    p = p.mul_add(t, -0.822_152_23);
    p = p.mul_add(t, 1.488_515_9);
    p = p.mul_add(t, -1.135_203_98);
    p = p.mul_add(t, 0.278_868_07);
    p = p.mul_add(t, -0.186_288_06);
    p = p.mul_add(t, 0.096_784_18);
    p = p.mul_add(t, 0.374_091_96);
    p = p.mul_add(t, 1.000_023_7);
    p = p.mul_add(t, -1.265_512_2);
    let erfc = t * exp(p - z * z);
    (1.0 - erfc).copysign(x)
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π).
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// `erf(z)` from `e = exp(-z²)` by Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7): GELU and its
/// derivative share the one `exp` (with [`erf`] the derivative needed two).
#[inline(always)]
fn erf_given_exp(z: f32, e: f32) -> f32 {
    let t = 1.0 / 0.327_591_1f32.mul_add(z.abs(), 1.0);
    let mut p = 1.061_405_4f32;
    p = p.mul_add(t, -1.453_152);
    p = p.mul_add(t, 1.421_413_7);
    p = p.mul_add(t, -0.284_496_74);
    p = p.mul_add(t, 0.254_829_6);
    (1.0 - p * t * e).copysign(z)
}

/// GELU `x·Φ(x)` (Hendrycks & Gimpel 2016), with `Φ(x) = (1 + erf(x/√2))/2` (the exact, erf form;
/// absolute error ≤ 1e-7·|x|).
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    let z = x * FRAC_1_SQRT_2;
    0.5 * x * (1.0 + erf_given_exp(z, exp(-z * z)))
}

/// `d gelu / dx = Φ(x) + x·φ(x)`, with `φ(x) = exp(-x²/2)/√(2π)`.
#[inline(always)]
pub fn gelu_grad(x: f32) -> f32 {
    let z = x * FRAC_1_SQRT_2;
    let e = exp(-z * z);
    0.5 * (1.0 + erf_given_exp(z, e)) + x * INV_SQRT_2PI * e
}

/// Elements per loop iteration of the GELU loops: LLVM vectorises each block into independent
/// vectors whose long polynomial chains then overlap (one vector per iteration was latency-bound).
const UNROLL: usize = 32;

simd_dispatch! {
    /// `y[i] = gelu(x[i])`.
    pub fn gelu_slice(x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        let (x, y) = (&x[..n], &mut y[..n]);
        let mut yc = y.chunks_exact_mut(UNROLL);
        let mut xc = x.chunks_exact(UNROLL);
        for (yb, xb) in (&mut yc).zip(&mut xc) {
            for l in 0..UNROLL {
                yb[l] = gelu(xb[l]);
            }
        }
        for (y, &x) in yc.into_remainder().iter_mut().zip(xc.remainder()) {
            *y = gelu(x);
        }
    }
}

simd_dispatch! {
    /// In place `v[i] = gelu(v[i])`.
    pub fn gelu_inplace(v: &mut [f32]) {
        let mut vc = v.chunks_exact_mut(UNROLL);
        for vb in &mut vc {
            // Indexing with a constant trip count lets LLVM unroll the block into whole vectors.
            #[allow(clippy::needless_range_loop)]
            for l in 0..UNROLL {
                vb[l] = gelu(vb[l]);
            }
        }
        for v in vc.into_remainder() {
            *v = gelu(*v);
        }
    }
}

simd_dispatch! {
    /// `g[i] *= gelu'(z[i])` (backward through GELU at pre-activation `z`).
    pub fn gelu_backward_inplace(z: &[f32], g: &mut [f32]) {
        let n = z.len().min(g.len());
        let (z, g) = (&z[..n], &mut g[..n]);
        let mut gc = g.chunks_exact_mut(UNROLL);
        let mut zc = z.chunks_exact(UNROLL);
        for (gb, zb) in (&mut gc).zip(&mut zc) {
            for l in 0..UNROLL {
                gb[l] *= gelu_grad(zb[l]);
            }
        }
        for (g, &z) in gc.into_remainder().iter_mut().zip(zc.remainder()) {
            *g *= gelu_grad(z);
        }
    }
}

/// Lanes of the partial reductions below: one AVX2 vector, so LLVM keeps them in a register.
const LANES: usize = 8;

/// Sum with [`LANES`] partial sums (the order differs from a sequential sum, so LLVM may
/// vectorise it).
#[inline(always)]
pub fn sum8(v: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut it = v.chunks_exact(LANES);
    for c in &mut it {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + it.remainder().iter().sum::<f32>()
}

/// Dot product with [`LANES`] partial sums.
#[inline(always)]
pub fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [0f32; LANES];
    let (mut ia, mut ib) = (a[..n].chunks_exact(LANES), b[..n].chunks_exact(LANES));
    for (x, y) in (&mut ia).zip(&mut ib) {
        for l in 0..LANES {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    acc.iter().sum::<f32>() + ia.remainder().iter().zip(ib.remainder()).map(|(x, y)| x * y).sum::<f32>()
}

/// Maximum (NaN-ignoring like `f32::max`) with [`LANES`] partial maxima.
#[inline(always)]
pub fn max8(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut it = v.chunks_exact(LANES);
    for c in &mut it {
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    acc.iter().chain(it.remainder()).copied().fold(f32::NEG_INFINITY, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_reductions_match_sequential() {
        for n in [0usize, 1, 7, 8, 9, 33, 384] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 31 % 17) as f32 - 8.0) / 3.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 7 % 11) as f32 - 5.0) / 2.0).collect();
            let (s, d) = (a.iter().sum::<f32>(), a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>());
            assert!((sum8(&a) - s).abs() < 1e-4 * (1.0 + s.abs()), "sum n={n}");
            assert!((dot8(&a, &b) - d).abs() < 1e-4 * (1.0 + d.abs()), "dot n={n}");
            assert_eq!(max8(&a), a.iter().copied().fold(f32::NEG_INFINITY, f32::max), "max n={n}");
        }
    }

    #[test]
    fn exp_matches_std() {
        let mut worst = 0.0f64;
        for i in -8700..8800 {
            let x = i as f32 * 0.01;
            let (a, b) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((a - b) / b).abs());
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        // NaN propagates (a NaN loss must stay visible), out-of-range inputs clamp.
        assert!(exp(f32::NAN).is_nan() && gelu(f32::NAN).is_nan() && gelu_grad(f32::NAN).is_nan());
        assert!(exp(1e4).is_finite() && exp(-1e4) >= 0.0);
        // No subnormal results: below -87, exactly 0.
        assert!(exp(-87.5) == 0.0 && exp(-1e4) == 0.0 && exp(-87.0) >= f32::MIN_POSITIVE);
    }

    #[test]
    fn erf_and_gelu_match_reference() {
        for i in -600..600 {
            let x = i as f32 * 0.01;
            let want = libm_erf(x as f64);
            assert!((erf(x) as f64 - want).abs() < 5e-7, "erf({x}): {} vs {want}", erf(x));
            let g = 0.5 * x as f64 * (1.0 + libm_erf(x as f64 / 2f64.sqrt()));
            assert!((gelu(x) as f64 - g).abs() < 1e-6 * (1.0 + x.abs() as f64), "gelu({x})");
            let h = 1e-3;
            let fd = (gelu(x + h) as f64 - gelu(x - h) as f64) / (2.0 * h as f64);
            assert!((gelu_grad(x) as f64 - fd).abs() < 2e-3, "gelu'({x})");
        }
    }

    /// erf by its Taylor series / continued fraction in f64 (reference only).
    fn libm_erf(x: f64) -> f64 {
        if x.abs() < 3.0 {
            let mut sum = 0.0;
            let mut term = x;
            let mut n = 0.0;
            while term.abs() > 1e-17 {
                sum += term / (2.0 * n + 1.0);
                n += 1.0;
                term *= -x * x / n;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc asymptotic with enough terms for |x| >= 3
            let s = x.signum();
            let x = x.abs();
            let mut term = 1.0;
            let mut sum = 1.0;
            for k in 1..8 {
                term *= -((2 * k - 1) as f64) / (2.0 * x * x);
                sum += term;
            }
            s * (1.0 - (-x * x).exp() / (x * std::f64::consts::PI.sqrt()) * sum)
        }
    }
}
