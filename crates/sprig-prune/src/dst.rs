//! Dynamic sparse training: the mask-update rules, on plain slices and [`Mask`]s.
//!
//! * static sparse training: a fixed random mask at ERK densities ([`random_masks`]);
//! * SET (Mocanu et al. 2018, "Scalable training of artificial neural networks with adaptive sparse
//!   connectivity"): drop the smallest magnitudes, grow at random ([`Grow::Random`]);
//! * RigL (Evci et al. 2020, "Rigging the lottery", Alg. 1): drop the smallest magnitudes, grow where
//!   the dense gradient is largest ([`Grow::Gradient`]), every ΔT steps, drop fraction
//!   f(t) = α/2·(1 + cos(tπ/T_end)) ([`UpdateSchedule::drop_fraction`]), no updates after T_end;
//! * ITOP (Liu et al. 2021, "Do we actually need dense over-parameterization? In-time
//!   over-parameterization in sparse training"): R_s, the fraction of all weights that were ever
//!   active ([`ItopTracker`]);
//! * GraNet (Liu et al. 2021, "Sparse training via boosting pruning plasticity with
//!   neuroregeneration"): cubic gradual magnitude pruning (Zhu & Gupta 2017, eq. 1) from a denser
//!   start, each pruning step followed by zero-cost regrowth ([`granet_update`]).
//!
//! Conventions shared by every rule: exactly as many weights are grown as dropped (so the kept
//! count is exact), growth picks among the positions inactive after the drop (so, as in the RigL
//! reference code, a just-dropped weight with a large gradient may be grown back and simply stays),
//! ties break by position, and randomness comes from a
//! seeded ChaCha8 stream, so equal inputs give bit-identical masks. Grown weights start at zero:
//! that is the caller's job (the returned [`DropGrow::grown`] says where).
use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::allocation::Allocation;
use crate::error::{PruneError, Result};
use crate::mask::{Mask, MaskSet};

/// When masks change and how much: every `delta_t` steps, strictly before `t_end`, with drop
/// fraction `alpha` decayed by a cosine (RigL §3, "Update schedule").
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UpdateSchedule {
    /// ΔT: steps between mask updates.
    pub delta_t: usize,
    /// T_end: no update at or after this step (RigL: 75% of training).
    pub t_end: usize,
    /// α: drop fraction at step 0.
    pub alpha: f64,
}

impl UpdateSchedule {
    /// Checks ΔT ≥ 1 and α ∈ [0, 1].
    pub fn validate(&self) -> Result<()> {
        if self.delta_t == 0 {
            return Err(PruneError::BadValue { what: "update interval ΔT", value: 0.0, why: "must be >= 1" });
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(PruneError::BadValue { what: "drop fraction α", value: self.alpha, why: "must be in [0, 1]" });
        }
        Ok(())
    }
    /// True at steps t = ΔT, 2ΔT, … with t < T_end (step counts finished optimizer steps).
    pub fn is_update_step(&self, step: usize) -> bool {
        step > 0 && step < self.t_end && step % self.delta_t == 0
    }
    /// f(t) = α/2·(1 + cos(tπ/T_end)) (RigL eq. 2), 0 from T_end on.
    pub fn drop_fraction(&self, step: usize) -> f64 {
        cosine_drop_fraction(self.alpha, step, self.t_end)
    }
}

/// RigL's cosine decay f(t) = α/2·(1 + cos(tπ/T_end)); 0 for t ≥ T_end.
pub fn cosine_drop_fraction(alpha: f64, step: usize, t_end: usize) -> f64 {
    if step >= t_end {
        return 0.0;
    }
    alpha / 2.0 * (1.0 + (step as f64 * std::f64::consts::PI / t_end as f64).cos())
}

/// How the weights to grow are chosen.
#[derive(Clone, Copy, Debug)]
pub enum Grow<'a> {
    /// Uniformly at random among the eligible positions (SET), from ChaCha8 seeded with `seed`.
    Random { seed: u64 },
    /// Largest |g| among the eligible positions (RigL), `g` the dense gradient (row-major).
    Gradient(&'a [f32]),
}

/// Result of one drop-and-grow on one tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct DropGrow {
    /// The new mask (same kept count as before).
    pub mask: Mask,
    /// Positions dropped, ascending.
    pub dropped: Vec<usize>,
    /// Positions grown, ascending; their weights must start at zero with zero optimizer state.
    pub grown: Vec<usize>,
}

/// The `n` positions with the smallest |w| among `candidates` (ties: lower position first), ascending.
fn smallest_magnitudes(weights: &[f32], mut candidates: Vec<usize>, n: usize) -> Vec<usize> {
    let key = |i: &usize| (weights[*i].abs(), *i);
    let cmp = |a: &usize, b: &usize| {
        let (ka, kb) = (key(a), key(b));
        ka.0.total_cmp(&kb.0).then(ka.1.cmp(&kb.1))
    };
    if n < candidates.len() {
        candidates.select_nth_unstable_by(n, cmp);
        candidates.truncate(n);
    }
    candidates.sort_unstable();
    candidates
}

/// The `n` positions with the largest |g| among `candidates` (ties: lower position first), ascending.
fn largest_magnitudes(g: &[f32], mut candidates: Vec<usize>, n: usize) -> Vec<usize> {
    let cmp = |a: &usize, b: &usize| g[*b].abs().total_cmp(&g[*a].abs()).then(a.cmp(b));
    if n < candidates.len() {
        candidates.select_nth_unstable_by(n, cmp);
        candidates.truncate(n);
    }
    candidates.sort_unstable();
    candidates
}

/// `n` positions drawn uniformly without replacement from `candidates` (partial Fisher–Yates), ascending.
fn random_pick(mut candidates: Vec<usize>, n: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = n.min(candidates.len());
    for i in 0..n {
        let j = rng.random_range(i..candidates.len());
        candidates.swap(i, j);
    }
    candidates.truncate(n);
    candidates.sort_unstable();
    candidates
}

fn check_len(name: &str, what: &str, got: usize, mask: &Mask) -> Result<()> {
    if got != mask.len() {
        return Err(PruneError::ShapeMismatch { name: format!("{name} ({what})"), expected: mask.shape().to_vec(), got: vec![got] });
    }
    Ok(())
}

/// One drop-and-grow (SET / RigL Alg. 1 lines 8–11): drops the `n` active weights of smallest |w|,
/// then grows `n` positions chosen by `grow` among those inactive *after the drop* and not in
/// `forbid` (pass the mask from the start of the update when a pruning step ran before, as in
/// GraNet). As in the RigL reference code (`mask1` = mask after the drop, growth among its zeros),
/// a just-dropped weight may be grown back: it then counts as neither dropped nor grown and keeps
/// its value and optimizer state. `n` is clamped to the active count, so the kept count never
/// changes.
pub fn drop_and_grow(name: &str, weights: &[f32], mask: &Mask, n: usize, grow: Grow<'_>, forbid: Option<&Mask>) -> Result<DropGrow> {
    check_len(name, "weights", weights.len(), mask)?;
    if let Some(f) = forbid {
        f.check_shape(name, mask.shape())?;
    }
    let active: Vec<usize> = (0..mask.len()).filter(|&i| mask.get(i)).collect();
    let n = n.min(active.len());
    let dropped = smallest_magnitudes(weights, active, n);
    let mut after_drop = mask.clone();
    for &i in &dropped {
        after_drop.set(i, false);
    }
    let eligible: Vec<usize> = (0..mask.len()).filter(|&i| !after_drop.get(i) && !forbid.is_some_and(|f| f.get(i))).collect();
    // With `forbid`, fewer positions may be eligible than were dropped: give back the largest
    // dropped weights so the count stays exact.
    let n_grow = n.min(eligible.len());
    let grown = match grow {
        Grow::Random { seed } => random_pick(eligible, n_grow, seed),
        Grow::Gradient(g) => {
            check_len(name, "gradient", g.len(), mask)?;
            largest_magnitudes(g, eligible, n_grow)
        }
    };
    let mut new = after_drop;
    for &i in &grown {
        new.set(i, true);
    }
    let mut dropped = dropped;
    if n_grow < n {
        // Keep the (n - n_grow) largest of the dropped weights after all.
        let mut by_mag: Vec<usize> = dropped.iter().copied().filter(|&i| !new.get(i)).collect();
        by_mag.sort_by(|a, b| weights[*b].abs().total_cmp(&weights[*a].abs()).then(a.cmp(b)));
        for &i in &by_mag[..n - n_grow] {
            new.set(i, true);
        }
    }
    dropped.retain(|&i| !new.get(i));
    let grown: Vec<usize> = grown.into_iter().filter(|&i| !mask.get(i)).collect();
    debug_assert_eq!(new.count_kept(), mask.count_kept());
    Ok(DropGrow { mask: new, dropped, grown })
}

/// Magnitude pruning inside a mask: keeps the `n_keep` active weights of largest |w| (never revives
/// a pruned one). Errors if `n_keep` exceeds the active count.
pub fn magnitude_prune_to(name: &str, weights: &[f32], mask: &Mask, n_keep: usize) -> Result<Mask> {
    check_len(name, "weights", weights.len(), mask)?;
    let active: Vec<usize> = (0..mask.len()).filter(|&i| mask.get(i)).collect();
    if n_keep > active.len() {
        return Err(PruneError::Infeasible {
            target: 1.0 - n_keep as f64 / mask.len().max(1) as f64,
            why: format!("`{name}` has {} active weights, cannot keep {n_keep}", active.len()),
        });
    }
    let n_drop = active.len() - n_keep;
    let mut new = mask.clone();
    for i in smallest_magnitudes(weights, active, n_drop) {
        new.set(i, false);
    }
    Ok(new)
}

/// GraNet's update (Liu et al. 2021, Alg. 1): gradual magnitude pruning of the active weights down
/// to `n_keep`, then neuroregeneration: drop a further `regrow` smallest-magnitude weights and grow
/// as many where |g| is largest, never at a position that was active when the update began.
pub fn granet_update(name: &str, weights: &[f32], grad: &[f32], mask: &Mask, n_keep: usize, regrow: usize) -> Result<DropGrow> {
    let pruned = magnitude_prune_to(name, weights, mask, n_keep)?;
    let mut out = drop_and_grow(name, weights, &pruned, regrow, Grow::Gradient(grad), Some(mask))?;
    out.dropped = (0..mask.len()).filter(|&i| mask.get(i) && !out.mask.get(i)).collect();
    Ok(out)
}

/// Kept counts per tensor for a sparsity target under an allocation (ER/ERK/uniform; rounding to
/// the nearest count, at least 1 per tensor).
pub fn kept_counts(shapes: &[(String, Vec<usize>)], sparsity: f64, alloc: &Allocation) -> Result<BTreeMap<String, usize>> {
    let dens = alloc.densities(shapes, sparsity)?;
    Ok(shapes
        .iter()
        .map(|(n, s)| {
            let numel: usize = s.iter().product();
            let k = ((dens[n] * numel as f64).round() as usize).clamp(1.min(numel), numel);
            (n.clone(), k)
        })
        .collect())
}

/// Random masks with exactly [`kept_counts`] kept weights per tensor (static sparse training's
/// mask and every DST method's starting mask; RigL §3 uses ERK). Seeded, position-deterministic.
pub fn random_masks(shapes: &[(String, Vec<usize>)], sparsity: f64, alloc: &Allocation, seed: u64) -> Result<MaskSet> {
    let counts = kept_counts(shapes, sparsity, alloc)?;
    let mut set = MaskSet::new();
    for (li, (name, shape)) in shapes.iter().enumerate() {
        let numel: usize = shape.iter().product();
        let pick = random_pick((0..numel).collect(), counts[name], seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(li as u64));
        let mut m = Mask::zeros(shape);
        for i in pick {
            m.set(i, true);
        }
        set.insert(name.clone(), m);
    }
    Ok(set)
}

/// ITOP's in-time over-parameterization rate R_s = |∪_t active_t| / N: the fraction of all weights
/// of the tracked tensors that were active at any step so far (Liu et al. 2021, §4).
#[derive(Clone, Debug, Default)]
pub struct ItopTracker {
    ever: BTreeMap<String, Mask>,
}

impl ItopTracker {
    /// Starts from the initial masks.
    pub fn new(masks: &MaskSet) -> Self {
        let mut t = Self::default();
        for (n, m) in masks.iter() {
            t.ever.insert(n.clone(), m.clone());
        }
        t
    }
    /// Adds the positions active in `mask` to the ever-active set of `name`.
    pub fn observe(&mut self, name: &str, mask: &Mask) -> Result<()> {
        match self.ever.get_mut(name) {
            None => {
                self.ever.insert(name.to_string(), mask.clone());
            }
            Some(e) => {
                e.check_shape(name, mask.shape())?;
                for i in 0..mask.len() {
                    if mask.get(i) {
                        e.set(i, true);
                    }
                }
            }
        }
        Ok(())
    }
    /// R_s over all tracked tensors.
    pub fn rate(&self) -> f64 {
        let (kept, total) = self.ever.values().fold((0usize, 0usize), |(k, t), m| (k + m.count_kept(), t + m.len()));
        if total == 0 { 0.0 } else { kept as f64 / total as f64 }
    }
}

#[cfg(test)]
mod tests;
