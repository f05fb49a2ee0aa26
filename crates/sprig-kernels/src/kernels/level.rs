//! Which vector instruction set the kernels run: detected once, capped by `SPRIG_SIMD` or by
//! [`force_simd`] (tests and comparisons).
use std::sync::OnceLock;

/// A vector instruction set the kernels are compiled for, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    /// Plain arrays the compiler vectorises for the baseline target (SSE2, NEON).
    Portable,
    /// AVX2 + FMA, 8 lanes.
    Avx2,
    /// AVX-512 F + VL (with AVX2 + FMA): 16-lane panel loops, 32 vector registers.
    Avx512,
}

impl SimdLevel {
    /// `"portable"`, `"avx2+fma"` or `"avx512"`: what benchmarks record.
    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Avx2 => "avx2+fma",
            Self::Avx512 => "avx512",
        }
    }

    /// Parses the value of `SPRIG_SIMD` (`portable`, `avx2`, `avx512`; case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "portable" | "scalar" | "none" => Some(Self::Portable),
            "avx2" | "avx2+fma" => Some(Self::Avx2),
            "avx512" | "avx-512" => Some(Self::Avx512),
            _ => None,
        }
    }

    /// The best level this CPU supports.
    pub fn detected() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            if avx2 && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl") {
                return Self::Avx512;
            }
            if avx2 {
                return Self::Avx2;
            }
        }
        Self::Portable
    }
}

/// The environment variable that caps the kernels' instruction set (`portable`, `avx2`,
/// `avx512`): on an AVX-512 machine `SPRIG_SIMD=avx2` runs the AVX2 path, for tests and
/// comparisons. A level above what the CPU has is ignored (the CPU's best is used).
pub const SIMD_ENV: &str = "SPRIG_SIMD";

/// The level in use: [`SimdLevel::detected`], capped by `SPRIG_SIMD` (read once) and by
/// [`force_simd`].
pub fn simd() -> SimdLevel {
    static BASE: OnceLock<SimdLevel> = OnceLock::new();
    let base = *BASE.get_or_init(|| {
        let hw = SimdLevel::detected();
        match std::env::var(SIMD_ENV) {
            Ok(v) => match SimdLevel::parse(&v) {
                Some(cap) => hw.min(cap),
                None => {
                    eprintln!("warning: {SIMD_ENV}={v:?} is not one of portable, avx2, avx512; using {}", hw.name());
                    hw
                }
            },
            Err(_) => hw,
        }
    });
    match FORCED.load(std::sync::atomic::Ordering::Relaxed) {
        0 => base.min(SimdLevel::Portable),
        1 => base.min(SimdLevel::Avx2),
        _ => base,
    }
}

/// The vector instruction set the kernels use on this machine: `"avx512"`, `"avx2+fma"` or
/// `"portable"` ([`SimdLevel::name`] of [`simd`]).
pub fn simd_level() -> &'static str {
    simd().name()
}

/// A cap set by [`force_simd`]: 0 portable, 1 AVX2, anything else none.
static FORCED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(u8::MAX);

/// Caps the kernels at `level` (`None`: no cap beyond `SPRIG_SIMD`); for tests and comparisons.
#[doc(hidden)]
pub fn force_simd(level: Option<SimdLevel>) {
    let v = match level {
        Some(SimdLevel::Portable) => 0,
        Some(SimdLevel::Avx2) => 1,
        Some(SimdLevel::Avx512) | None => u8::MAX,
    };
    FORCED.store(v, std::sync::atomic::Ordering::Relaxed);
}

/// Forces the portable (non-intrinsics) kernels; for tests and comparisons.
#[doc(hidden)]
pub fn force_portable(on: bool) {
    force_simd(on.then_some(SimdLevel::Portable));
}
