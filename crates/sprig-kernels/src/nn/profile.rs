//! Per-op wall-clock totals (forward and backward), for the training-step profile.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// The timed ops, in report order.
pub const OPS: [&str; 7] = ["linear (dense)", "linear (sparse)", "linear epilogue (bias/GELU/dropout)", "attention", "add+LayerNorm", "cross-entropy", "linear (int8, GELU included)"];
static ON: AtomicBool = AtomicBool::new(false);
static NANOS: [[AtomicU64; 2]; 7] = [const { [const { AtomicU64::new(0) }; 2] }; 7];

/// Start (or stop) accumulating; clears the totals when turned on.
pub fn enable(on: bool) {
    if on {
        NANOS.iter().flatten().for_each(|a| a.store(0, Ordering::Relaxed));
    }
    ON.store(on, Ordering::Relaxed);
}

/// `(op, forward ms, backward ms)` accumulated since [`enable`].
pub fn totals() -> Vec<(&'static str, f64, f64)> {
    OPS.iter()
        .zip(&NANOS)
        .map(|(n, t)| (*n, t[0].load(Ordering::Relaxed) as f64 / 1e6, t[1].load(Ordering::Relaxed) as f64 / 1e6))
        .collect()
}

pub(super) struct Timer(Option<(Instant, usize, usize)>);
/// Times until dropped: op index into [`OPS`], 0 = forward, 1 = backward.
pub(super) fn timer(op: usize, dir: usize) -> Timer {
    Timer(ON.load(Ordering::Relaxed).then(|| (Instant::now(), op, dir)))
}
impl Drop for Timer {
    fn drop(&mut self) {
        if let Some((t, op, dir)) = self.0 {
            NANOS[op][dir].fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
    }
}
