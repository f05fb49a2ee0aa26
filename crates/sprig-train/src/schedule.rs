//! Learning-rate schedules.
use serde::{Deserialize, Serialize};

/// Linear warm-up from 0 to the base rate over `warmup` steps, then linear decay to 0 at `total`
/// (the BERT fine-tuning schedule, Devlin et al. 2019; `get_linear_schedule_with_warmup`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct LinearWarmupDecay {
    pub base_lr: f64,
    pub warmup: usize,
    pub total: usize,
}

impl LinearWarmupDecay {
    /// Rate for the update that follows `step` finished steps (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.base_lr * (step + 1) as f64 / self.warmup as f64;
        }
        let rest = self.total.saturating_sub(self.warmup).max(1);
        let done = (step - self.warmup) as f64;
        self.base_lr * (1.0 - done / rest as f64).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn warmup_then_decay() {
        let s = LinearWarmupDecay { base_lr: 1.0, warmup: 10, total: 110 };
        assert!((s.lr(0) - 0.1).abs() < 1e-12);
        assert!((s.lr(9) - 1.0).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(60) - 0.5).abs() < 1e-12);
        assert_eq!(s.lr(200), 0.0);
        assert!((0..110).all(|i| s.lr(i + 1) <= s.lr(i) || i < 10));
    }
}
