//! Counter-based dropout masks (Srivastava et al. 2014, inverted scaling): element `i` of call
//! `seed` is kept iff `hash(seed, i) >= p·2³²`. No state, so forward and backward regenerate the
//! same mask in parallel, and a run is reproducible for a seed.
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
        let (t, s) = (self.threshold(), self.scale());
        for (j, v) in v.iter_mut().enumerate() {
            *v = if hash(self.seed, offset + j as u64) >= t { *v * s } else { 0.0 };
        }
    }
    /// `dst = dropout(src)`: [`DropoutSpec::apply`] without a separate copy.
    pub fn apply_to(&self, src: &[f32], dst: &mut [f32], offset: u64) {
        let (t, s) = (self.threshold(), self.scale());
        for (j, (d, &v)) in dst.iter_mut().zip(src).enumerate() {
            *d = if hash(self.seed, offset + j as u64) >= t { v * s } else { 0.0 };
        }
    }
    /// [`DropoutSpec::apply`] over a whole buffer, in parallel.
    pub fn apply_par(&self, v: &mut [f32]) {
        const CHUNK: usize = 1 << 14;
        v.par_chunks_mut(CHUNK).enumerate().for_each(|(c, v)| self.apply(v, (c * CHUNK) as u64));
    }
}

/// A 32-bit hash of `(seed, i)`: SplitMix64's finaliser (Steele et al. 2014).
#[inline(always)]
pub fn hash(seed: u64, i: u64) -> u32 {
    let mut z = seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as u32
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
    }
}
