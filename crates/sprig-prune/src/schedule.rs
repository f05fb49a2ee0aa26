//! Schedules: when and how much to prune.
use crate::error::{check_sparsity, PruneError, Result};

/// Where IMP goes back to after each pruning round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "step", rename_all = "snake_case")]
pub enum Rewind {
    /// Weights back to their initial values θ₀ (Frankle & Carbin 2019, Alg. 1 step 4).
    Init,
    /// Weights back to their values at training step k (Frankle et al. 2020, "Linear mode connectivity", §5).
    Step(usize),
    /// Keep the trained weights, replay the learning-rate schedule from the start (Renda et al. 2020, §2).
    LearningRate,
}

impl std::str::FromStr for Rewind {
    type Err = PruneError;
    /// `init`, `step:K` or `lr`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "init" => Ok(Self::Init),
            "lr" | "learning-rate" => Ok(Self::LearningRate),
            _ => s
                .strip_prefix("step:")
                .and_then(|k| k.parse().ok())
                .map(Self::Step)
                .ok_or_else(|| PruneError::BadName { what: "rewind", value: s.into(), expected: "init, step:K or lr" }),
        }
    }
}

/// How much each IMP round prunes.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "rate", rename_all = "snake_case")]
pub enum RoundRate {
    /// Prune this fraction of the *remaining* weights each round: s_r = 1 − (1 − p)^r (LTH, p = 0.2).
    FractionOfRemaining(f64),
    /// Prune this fraction of the *original* weights each round: s_r = r·p (BERT-Tickets, Chen et al. 2020, p = 0.1).
    LinearOfOriginal(f64),
}

/// A pruning schedule.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// Prune once, to `sparsity`, at `step`.
    OneShot { sparsity: f64, step: usize },
    /// Cubic gradual pruning (Zhu & Gupta 2017, eq. 1):
    /// s_t = s_f + (s_i − s_f)(1 − (t − t₀)/(nΔt))³ for t₀ ≤ t ≤ t₀ + nΔt, updated every Δt = `frequency` steps.
    Gradual { initial: f64, final_sparsity: f64, start: usize, end: usize, frequency: usize },
    /// Iterative magnitude pruning: `rounds` rounds of train → prune → rewind.
    Imp { rounds: usize, rate: RoundRate, rewind: Rewind },
}

impl Schedule {
    /// Checks every value is legal.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Self::OneShot { sparsity, .. } => check_sparsity(sparsity).map(|_| ()),
            Self::Gradual { initial, final_sparsity, start, end, frequency } => {
                check_sparsity(initial)?;
                check_sparsity(final_sparsity)?;
                if end <= start {
                    return Err(PruneError::BadValue { what: "gradual end step", value: end as f64, why: "must be after start" });
                }
                if frequency == 0 {
                    return Err(PruneError::BadValue { what: "gradual frequency", value: 0.0, why: "must be >= 1" });
                }
                Ok(())
            }
            Self::Imp { rounds, rate, .. } => {
                match rate {
                    RoundRate::FractionOfRemaining(p) => {
                        check_sparsity(p)?;
                    }
                    RoundRate::LinearOfOriginal(p) => {
                        check_sparsity(p)?;
                        check_sparsity(p * rounds as f64)?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Target sparsity at training step `step` (one-shot and gradual). For IMP use [`Schedule::round_sparsity`].
    pub fn sparsity_at(&self, step: usize) -> f64 {
        match *self {
            Self::OneShot { sparsity, step: s } => {
                if step >= s { sparsity } else { 0.0 }
            }
            Self::Gradual { initial, final_sparsity, start, end, frequency } => {
                if step < start {
                    return 0.0;
                }
                let t = step.min(end);
                let t = start + (t - start) / frequency * frequency; // hold between updates
                let frac = (t - start) as f64 / (end - start) as f64;
                final_sparsity + (initial - final_sparsity) * (1.0 - frac.min(1.0)).powi(3)
            }
            Self::Imp { .. } => 0.0,
        }
    }

    /// Should the mask be recomputed at `step`? (one-shot: at its step; gradual: every `frequency` steps in range.)
    pub fn is_update_step(&self, step: usize) -> bool {
        match *self {
            Self::OneShot { step: s, .. } => step == s,
            Self::Gradual { start, end, frequency, .. } => step >= start && step <= end && (step - start) % frequency == 0,
            Self::Imp { .. } => false,
        }
    }

    /// Sparsity after IMP round `round` (round 0 = dense).
    pub fn round_sparsity(&self, round: usize) -> Result<f64> {
        match *self {
            Self::Imp { rate: RoundRate::FractionOfRemaining(p), .. } => Ok(1.0 - (1.0 - p).powi(round as i32)),
            Self::Imp { rate: RoundRate::LinearOfOriginal(p), .. } => check_sparsity(p * round as f64),
            _ => Err(PruneError::BadValue { what: "round", value: round as f64, why: "round_sparsity is for IMP schedules" }),
        }
    }
}
