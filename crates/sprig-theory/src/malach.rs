//! The pruning constructions behind the strong lottery ticket hypothesis, checked numerically.
//!
//! Target: one weight `w* ∈ [-1, 1]`, i.e. the map `x ↦ w* x` on `x ∈ [-1, 1]`, and one neuron
//! `x ↦ relu(w*·x)` with `d` inputs. Random net: for each input a hidden ReLU layer of `width`
//! units with in-weights `u_i ~ U[-1, 1]` and out-weights `v_i ~ U[-1, 1]`,
//! `g(x) = Σ_{i ∈ S} v_i relu(u_i x)`; pruning chooses the kept set `S` and never changes a weight.
//! For `x > 0` only units with `u_i > 0` fire, so `g(x) = x Σ_{S, u>0} u_i v_i`; for `x < 0`,
//! `g(x) = x Σ_{S, u<0} u_i v_i`. Hence the exact sup-error on `[-1, 1]` is
//! `max(|Σ_{S,u>0} u_i v_i − w*|, |Σ_{S,u<0} u_i v_i − w*|)` (this is the `relu(x) − relu(−x)`
//! decomposition of Malach et al. 2020, Lemma A.1 / Pensia et al. 2020, §3).
//!
//! - [`Construction::Malach`]: Malach, Yehudai, Shalev-Shwartz & Shamir 2020 ("Proving the Lottery
//!   Ticket Hypothesis: Pruning is All You Need", Lemma A.1 in spirit): keep, for each sign of `u`,
//!   the single unit whose product `u_i v_i` is closest to `w*`. The error falls like `1/width`.
//! - [`Construction::SubsetSum`]: Pensia, Rajput, Nagle, Vishwakarma & Papailiopoulos 2020
//!   ("Optimal Lottery Tickets via SubsetSum", Lemma 1 after Lueker 1998): keep the subset of units
//!   of each sign whose products sum closest to `w*`, found exactly by meet-in-the-middle. The
//!   error falls exponentially in the width.
//!
//! The neuron target prunes one block per input: `relu(Σ_j g_j(x_j))`, whose error on
//! `‖x‖_∞ ≤ 1` is at most `Σ_j err_j` (relu is 1-Lipschitz); we measure it on random points.
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{invalid, Result};

/// Largest number of same-sign units the exact subset-sum search accepts (2^(m/2) sums per half).
pub const MAX_SUBSET_UNITS: usize = 44;

/// How the kept units are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Construction {
    /// One unit per sign, product closest to the target (Malach et al. 2020).
    Malach,
    /// Best subset per sign, exact (Pensia et al. 2020).
    SubsetSum,
}

impl std::str::FromStr for Construction {
    type Err = crate::TheoryError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "malach" => Ok(Self::Malach),
            "subset-sum" | "subset_sum" => Ok(Self::SubsetSum),
            _ => invalid("construction", s, "expected malach or subset-sum"),
        }
    }
}

/// The pruned approximation of one weight.
#[derive(Clone, Debug)]
pub struct WeightApprox {
    /// Kept unit indices.
    pub kept: Vec<usize>,
    /// `Σ u_i v_i` over kept units with `u_i > 0` (the slope for `x > 0`) and `u_i < 0`.
    pub slope_pos: f64,
    pub slope_neg: f64,
    /// Exact sup-error on `[-1, 1]`: `max(|slope_pos − w*|, |slope_neg − w*|)`.
    pub error: f64,
}

/// Evaluates the pruned block `Σ_{i ∈ kept} v_i relu(u_i x)`.
pub fn eval_block(u: &[f64], v: &[f64], kept: &[usize], x: f64) -> f64 {
    kept.iter().map(|&i| v[i] * (u[i] * x).max(0.0)).sum()
}

/// Subset of `items` (`(unit, value)`) whose value sum is closest to `target` (empty allowed).
fn best_subset(items: &[(usize, f64)], target: f64) -> Result<(Vec<usize>, f64)> {
    if items.len() > MAX_SUBSET_UNITS {
        return invalid("same-sign units for exact subset-sum", items.len(), format!("at most {MAX_SUBSET_UNITS} (use a smaller width)"));
    }
    let (a, b) = items.split_at(items.len() / 2);
    let sums = |part: &[(usize, f64)]| -> Vec<(f64, u64)> {
        (0u64..1 << part.len())
            .map(|m| ((0..part.len()).filter(|&k| m >> k & 1 == 1).map(|k| part[k].1).sum(), m))
            .collect()
    };
    let sa = sums(a);
    let mut sb = sums(b);
    sb.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut best = (f64::INFINITY, 0u64, 0u64, 0.0);
    for &(s, ma) in &sa {
        let want = target - s;
        let pos = sb.partition_point(|e| e.0 < want);
        for &j in &[pos.wrapping_sub(1), pos] {
            if let Some(&(t, mb)) = sb.get(j) {
                let err = (s + t - target).abs();
                if err < best.0 {
                    best = (err, ma, mb, s + t);
                }
            }
        }
    }
    let mut kept: Vec<usize> = (0..a.len()).filter(|&k| best.1 >> k & 1 == 1).map(|k| a[k].0).collect();
    kept.extend((0..b.len()).filter(|&k| best.2 >> k & 1 == 1).map(|k| b[k].0));
    Ok((kept, best.3))
}

/// Prunes the random block `(u, v)` to approximate `target · x` on `[-1, 1]`.
pub fn approximate_weight(target: f64, u: &[f64], v: &[f64], construction: Construction) -> Result<WeightApprox> {
    if u.is_empty() || u.len() != v.len() {
        return invalid("block width", format!("{} in / {} out weights", u.len(), v.len()), "need equal, non-zero counts");
    }
    if !target.is_finite() {
        return invalid("target weight", target, "must be finite");
    }
    let side = |positive: bool| -> Vec<(usize, f64)> {
        (0..u.len()).filter(|&i| (u[i] > 0.0) == positive && u[i] != 0.0).map(|i| (i, u[i] * v[i])).collect()
    };
    let pick = |items: Vec<(usize, f64)>| -> Result<(Vec<usize>, f64)> {
        match construction {
            Construction::Malach => Ok(items
                .iter()
                .min_by(|x, y| (x.1 - target).abs().total_cmp(&(y.1 - target).abs()))
                .map_or((Vec::new(), 0.0), |&(i, p)| (vec![i], p))),
            Construction::SubsetSum => best_subset(&items, target),
        }
    };
    let (mut kept, slope_pos) = pick(side(true))?;
    let (kn, slope_neg) = pick(side(false))?;
    kept.extend(kn);
    let error = (slope_pos - target).abs().max((slope_neg - target).abs());
    Ok(WeightApprox { kept, slope_pos, slope_neg, error })
}

/// A width sweep of one construction.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MalachConfig {
    pub construction: Construction,
    /// Hidden units per target weight.
    pub widths: Vec<usize>,
    /// Random targets (and fresh random blocks) per width.
    pub trials: usize,
    /// Inputs of the target neuron.
    pub neuron_inputs: usize,
    /// Random points `x ∈ [-1, 1]^d` on which the neuron error is measured.
    pub neuron_points: usize,
    pub seed: u64,
}

/// One width's result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MalachRow {
    pub construction: Construction,
    pub width: usize,
    /// Exact sup-error of a single weight, mean / max over trials.
    pub weight_err_mean: f64,
    pub weight_err_max: f64,
    /// Same error measured on a 201-point grid of `[-1, 1]` by evaluating the pruned block (checks the
    /// closed form), max over trials.
    pub weight_err_grid_max: f64,
    /// Neuron `relu(w*·x)`: max error over the random points, mean over trials.
    pub neuron_err_mean: f64,
    /// Fraction of the random units kept, mean over trials.
    pub kept_fraction: f64,
}

/// Runs the sweep. Refuses zero widths, trials or neuron inputs.
pub fn malach_sweep(cfg: &MalachConfig) -> Result<Vec<MalachRow>> {
    if cfg.widths.is_empty() || cfg.widths.contains(&0) {
        return invalid("widths", format!("{:?}", cfg.widths), "need at least one width, each >= 1");
    }
    if cfg.trials == 0 || cfg.neuron_inputs == 0 || cfg.neuron_points == 0 {
        return invalid("trials / neuron_inputs / neuron_points", format!("{} / {} / {}", cfg.trials, cfg.neuron_inputs, cfg.neuron_points), "each must be >= 1");
    }
    let mut rows = Vec::new();
    for &w in &cfg.widths {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ (w as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let (mut errs, mut grid_max, mut neuron, mut kept) = (Vec::new(), 0f64, 0f64, 0f64);
        for _ in 0..cfg.trials {
            // one neuron: d weights, each with its own random block; the first weight is the
            // single-weight sample
            let d = cfg.neuron_inputs;
            let target: Vec<f64> = (0..d).map(|_| rng.random_range(-1.0..=1.0)).collect();
            let mut blocks = Vec::with_capacity(d);
            for &t in &target {
                let u: Vec<f64> = (0..w).map(|_| rng.random_range(-1.0..=1.0)).collect();
                let v: Vec<f64> = (0..w).map(|_| rng.random_range(-1.0..=1.0)).collect();
                let a = approximate_weight(t, &u, &v, cfg.construction)?;
                blocks.push((u, v, a));
            }
            let (u, v, a) = &blocks[0];
            errs.push(a.error);
            kept += a.kept.len() as f64 / w as f64 / cfg.trials as f64;
            let g = (0..=200)
                .map(|k| -1.0 + k as f64 / 100.0)
                .map(|x| (eval_block(u, v, &a.kept, x) - target[0] * x).abs())
                .fold(0.0, f64::max);
            grid_max = grid_max.max(g);
            let mut worst = 0f64;
            for _ in 0..cfg.neuron_points {
                let x: Vec<f64> = (0..d).map(|_| rng.random_range(-1.0..=1.0)).collect();
                let exact = target.iter().zip(&x).map(|(t, x)| t * x).sum::<f64>().max(0.0);
                let approx = blocks.iter().zip(&x).map(|((u, v, a), &xj)| eval_block(u, v, &a.kept, xj)).sum::<f64>().max(0.0);
                worst = worst.max((approx - exact).abs());
            }
            neuron += worst / cfg.trials as f64;
        }
        rows.push(MalachRow {
            construction: cfg.construction,
            width: w,
            weight_err_mean: errs.iter().sum::<f64>() / errs.len() as f64,
            weight_err_max: errs.iter().copied().fold(0.0, f64::max),
            weight_err_grid_max: grid_max,
            neuron_err_mean: neuron,
            kept_fraction: kept,
        });
    }
    Ok(rows)
}
