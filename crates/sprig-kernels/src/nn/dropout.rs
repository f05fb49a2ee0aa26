//! Counter-based dropout masks (Srivastava et al. 2014, inverted scaling): element `i` of call
//! `seed` is kept iff `hash(seed, i) >= p·2³²`. No state, so forward and backward regenerate the
//! same mask in parallel, and a run is reproducible for a seed. The hash works on 32-bit lanes so
//! the mask loops vectorise (AVX2 has no 64-bit lane multiply: SplitMix64's finaliser cost ~3 ns
//! per element, on 75M attention probabilities per MiniLM training step).
use super::math::simd_dispatch;
use rayon::prelude::*;

/// A dropout draw: probability `p` of zeroing, and the stream `seed` (one per call).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutSpec {
    pub p: f32,
    pub seed: u64,
}

impl DropoutSpec {
    /// `1/(1-p)`, the scale of kept elements.
    #[inline]
    pub fn scale(&self) -> f32 {
        1.0 / (1.0 - self.p)
    }
    #[inline]
    fn threshold(&self) -> u32 {
        (self.p as f64 * 4_294_967_296.0).min(u32::MAX as f64) as u32
    }
    /// Whether element `i` is kept.
    #[inline(always)]
    pub fn keep(&self, i: u64) -> bool {
        hash(self.seed, i) >= self.threshold()
    }
    /// `v[j] = v[j]·scale` if element `offset + j` is kept, else 0.
    pub fn apply(&self, v: &mut [f32], offset: u64) {
        let (key, base) = stream(self.seed, offset);
        apply_slice(key, base, self.threshold(), self.scale(), v);
    }
    /// `dst = dropout(src)`: [`DropoutSpec::apply`] without a separate copy.
    pub fn apply_to(&self, src: &[f32], dst: &mut [f32], offset: u64) {
        let (key, base) = stream(self.seed, offset);
        apply_slice_to(key, base, self.threshold(), self.scale(), src, dst);
    }
    /// [`DropoutSpec::apply`] over a whole buffer, in parallel.
    pub fn apply_par(&self, v: &mut [f32]) {
        const CHUNK: usize = 1 << 14;
        v.par_chunks_mut(CHUNK).enumerate().for_each(|(c, v)| self.apply(v, (c * CHUNK) as u64));
    }
}

simd_dispatch! {
    /// `v[j] = v[j]·s` where `mix(key, base + j) >= t`, else 0.
    fn apply_slice(key: u32, base: u32, t: u32, s: f32, v: &mut [f32]) {
        for (j, v) in v.iter_mut().enumerate() {
            let keep = mix(key, base.wrapping_add(j as u32)) >= t;
            *v = if keep { *v * s } else { 0.0 };
        }
    }
}

simd_dispatch! {
    /// `dst[j] = src[j]·s` where `mix(key, base + j) >= t`, else 0.
    fn apply_slice_to(key: u32, base: u32, t: u32, s: f32, src: &[f32], dst: &mut [f32]) {
        for (j, (d, &v)) in dst.iter_mut().zip(src).enumerate() {
            let keep = mix(key, base.wrapping_add(j as u32)) >= t;
            *d = if keep { v * s } else { 0.0 };
        }
    }
}

/// The per-call key and the low 32 bits of the counter of element `i` (a slice's elements share
/// the key as long as it does not straddle a multiple of 2³², which no activation tensor reaches).
#[inline(always)]
fn stream(seed: u64, i: u64) -> (u32, u32) {
    let key = (seed as u32) ^ ((seed >> 32) as u32).wrapping_mul(0x85EB_CA6B) ^ ((i >> 32) as u32).wrapping_mul(0xC2B2_AE35);
    (key, i as u32)
}

/// Chris Wellons' `lowbias32` finaliser (a bijection on u32) of `key ^ counter·φ`.
#[inline(always)]
fn mix(key: u32, counter: u32) -> u32 {
    let mut x = key ^ counter.wrapping_mul(0x9E37_79B9);
    x ^= x >> 16;
    x = x.wrapping_mul(0x7FEB_352D);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846C_A68B);
    x ^ (x >> 16)
}

/// The 32-bit hash of `(seed, i)` that decides element `i`'s fate.
#[inline(always)]
pub fn hash(seed: u64, i: u64) -> u32 {
    let (key, c) = stream(seed, i);
    mix(key, c)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn rate_scale_and_determinism() {
        let d = DropoutSpec { p: 0.1, seed: 42 };
        let mut a = vec![1.0f32; 100_000];
        d.apply_par(&mut a);
        let mut b = vec![1.0f32; 100_000];
        for (c, ch) in b.chunks_mut(1000).enumerate() {
            d.apply(ch, c as u64 * 1000);
        }
        assert_eq!(a, b);
        let zeros = a.iter().filter(|&&v| v == 0.0).count() as f64 / 1e5;
        assert!((zeros - 0.1).abs() < 0.005, "{zeros}");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        let mut c = vec![1.0f32; 1000];
        DropoutSpec { p: 0.1, seed: 43 }.apply(&mut c, 0);
        assert_ne!(&a[..1000], &c[..]);
        // `apply` and `keep` agree element by element, also past 2^32.
        let off = (1u64 << 32) + 77;
        let mut e = vec![1.0f32; 4096];
        d.apply(&mut e, off);
        assert!(e.iter().enumerate().all(|(j, &v)| (v != 0.0) == d.keep(off + j as u64)));
        // Neighbouring seeds and counters are not correlated: the keep rate holds on a strided
        // subsample and for seeds differing in one bit.
        for seed in [0u64, 1, 2, 1 << 40] {
            let ds = DropoutSpec { p: 0.5, seed };
            let kept = (0..200_000u64).step_by(7).filter(|&i| ds.keep(i)).count() as f64 / (200_000f64 / 7.0);
            assert!((kept - 0.5).abs() < 0.01, "seed {seed}: {kept}");
        }
    }
}
