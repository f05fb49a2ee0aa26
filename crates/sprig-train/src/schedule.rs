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

/// Learning rate over training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LrSchedule {
    #[default]
    Constant,
    /// η_t = η/2·(1 + cos(πt/T)) over the T steps of training.
    Cosine,
}

impl LrSchedule {
    /// The learning rate after `step` of `total` steps.
    pub fn lr(&self, base: f64, step: usize, total: usize) -> f64 {
        match self {
            Self::Constant => base,
            Self::Cosine => base / 2.0 * (1.0 + (std::f64::consts::PI * step as f64 / total.max(1) as f64).cos()),
        }
    }
}

impl std::str::FromStr for LrSchedule {
    type Err = crate::TrainError;
    fn from_str(s: &str) -> crate::error::Result<Self> {
        match s {
            "constant" => Ok(Self::Constant),
            "cosine" => Ok(Self::Cosine),
            _ => bail!("unknown learning-rate schedule {s:?}: expected constant or cosine"),
        }
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

    #[test]
    fn cosine_lr_endpoints_and_parse() {
        let c: LrSchedule = "cosine".parse().unwrap();
        assert!((c.lr(0.1, 0, 100) - 0.1).abs() < 1e-15);
        assert!((c.lr(0.1, 50, 100) - 0.05).abs() < 1e-12);
        assert!(c.lr(0.1, 100, 100).abs() < 1e-12);
        assert_eq!(LrSchedule::Constant.lr(0.1, 77, 100), 0.1);
        assert!("linear".parse::<LrSchedule>().is_err());
    }
}
