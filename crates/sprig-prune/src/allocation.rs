//! Allocation: how a global sparsity target is shared between layers, and turning scores into masks.
use std::collections::BTreeMap;

use crate::error::{check_sparsity, PruneError, Result};
use crate::granularity::Granularity;
use crate::mask::{Mask, MaskSet};

/// Scores by parameter name, one per weight (row-major); higher means more important.
pub type Scores = BTreeMap<String, Vec<f32>>;

/// How per-layer densities are chosen.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Allocation {
    pub kind: AllocationKind,
    /// Parameters kept fully dense; they count towards the sparsity target (as in RigL's ERK).
    #[serde(default)]
    pub keep_dense: Vec<String>,
}

/// The rule behind an [`Allocation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocationKind {
    /// One threshold over all groups of all tensors (LTH "global pruning", Frankle & Carbin 2019 §4).
    Global,
    /// The same sparsity in every tensor.
    Uniform,
    /// Erdős–Rényi: density ∝ (n_in + n_out) / (n_in · n_out) (SET, Mocanu et al. 2018, eq. 1).
    Er,
    /// ER-Kernel: density ∝ Σ dims / Π dims, conv kernel sizes included (RigL, Evci et al. 2020 §3).
    Erk,
}

impl Allocation {
    pub fn global() -> Self {
        Self { kind: AllocationKind::Global, keep_dense: vec![] }
    }
    pub fn uniform() -> Self {
        Self { kind: AllocationKind::Uniform, keep_dense: vec![] }
    }
    pub fn er() -> Self {
        Self { kind: AllocationKind::Er, keep_dense: vec![] }
    }
    pub fn erk() -> Self {
        Self { kind: AllocationKind::Erk, keep_dense: vec![] }
    }
    /// Keep these parameters dense.
    pub fn keeping_dense<I: IntoIterator<Item = S>, S: Into<String>>(mut self, names: I) -> Self {
        self.keep_dense.extend(names.into_iter().map(Into::into));
        self
    }

    /// Per-tensor densities (kept fractions) for a sparsity target over `shapes` (ER/ERK/uniform;
    /// for global the densities come out of the ranking and this returns the uniform split).
    ///
    /// ER/ERK follow RigL's procedure: solve ε in Σ_l min(1, ε·raw_l)·n_l = (1 - s)·N, capping layers at 1.
    pub fn densities(&self, shapes: &[(String, Vec<usize>)], sparsity: f64) -> Result<BTreeMap<String, f64>> {
        check_sparsity(sparsity)?;
        for k in &self.keep_dense {
            if !shapes.iter().any(|(n, _)| n == k) {
                return Err(PruneError::UnknownParam(k.clone()));
            }
        }
        let total: usize = shapes.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        let budget = (1.0 - sparsity) * total as f64;
        let numel = |s: &[usize]| s.iter().product::<usize>() as f64;
        let mut dense: Vec<bool> = shapes.iter().map(|(n, _)| self.keep_dense.contains(n)).collect();
        let dense_n: f64 = shapes.iter().zip(&dense).filter(|(_, d)| **d).map(|((_, s), _)| numel(s)).sum();
        if dense_n > budget + 1e-9 {
            return Err(PruneError::Infeasible {
                target: sparsity,
                why: format!("the dense-kept layers alone hold {dense_n} of {budget:.0} allowed weights"),
            });
        }
        let raw: Vec<f64> = shapes
            .iter()
            .map(|(_, s)| match self.kind {
                AllocationKind::Global | AllocationKind::Uniform => 1.0,
                AllocationKind::Er => match s.as_slice() {
                    [o, i, ..] => (o + i) as f64 / (o * i) as f64,
                    _ => 1.0,
                },
                AllocationKind::Erk => {
                    if s.len() >= 2 {
                        s.iter().sum::<usize>() as f64 / numel(s)
                    } else {
                        1.0
                    }
                }
            })
            .collect();
        let mut dens = vec![1.0; shapes.len()];
        loop {
            let fixed: f64 = shapes.iter().zip(&dense).filter(|(_, d)| **d).map(|((_, s), _)| numel(s)).sum();
            let denom: f64 = shapes.iter().zip(&dense).zip(&raw).filter(|((_, d), _)| !**d).map(|(((_, s), _), r)| r * numel(s)).sum();
            if denom == 0.0 {
                break;
            }
            let eps = (budget - fixed) / denom;
            let mut changed = false;
            for (i, d) in dense.iter_mut().enumerate() {
                if !*d {
                    if eps * raw[i] > 1.0 {
                        *d = true;
                        changed = true;
                    } else {
                        dens[i] = eps * raw[i];
                    }
                }
            }
            if !changed {
                break;
            }
        }
        for (i, d) in dense.iter().enumerate() {
            if *d {
                dens[i] = 1.0;
            }
        }
        Ok(shapes.iter().map(|(n, _)| n.clone()).zip(dens).collect())
    }
}

/// Turns scores into masks at `sparsity` (over the tensors in `shapes`) with a granularity and an
/// allocation. Weights already pruned in `current` stay pruned (their score becomes -inf). Ties break
/// by position, so equal inputs give bit-identical masks.
///
/// With [`Granularity::NM`], each tensor gets sparsity `1 - N/M` and `sparsity` must equal it.
pub fn prune(
    scores: &Scores,
    shapes: &[(String, Vec<usize>)],
    sparsity: f64,
    granularity: Granularity,
    allocation: &Allocation,
    current: Option<&MaskSet>,
) -> Result<MaskSet> {
    check_sparsity(sparsity)?;
    if shapes.is_empty() {
        return Err(PruneError::NothingSelected);
    }
    let mut eff: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::with_capacity(shapes.len());
    for (name, shape) in shapes {
        let s = scores.get(name).ok_or_else(|| PruneError::UnknownParam(name.clone()))?;
        let numel: usize = shape.iter().product();
        if s.len() != numel {
            return Err(PruneError::ShapeMismatch { name: name.clone(), expected: shape.clone(), got: vec![s.len()] });
        }
        granularity.check(name, shape)?;
        let mut s: Vec<f32> = s.iter().map(|x| if x.is_nan() { f32::NEG_INFINITY } else { *x }).collect();
        if let Some(cur) = current.and_then(|c| c.get(name)) {
            cur.check_shape(name, shape)?;
            for (i, x) in s.iter_mut().enumerate() {
                if !cur.get(i) {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
        eff.push((name.clone(), shape.clone(), s));
    }
    let mut out = MaskSet::new();
    if let Granularity::NM { n, m } = granularity {
        let target = 1.0 - n as f64 / m as f64;
        if (target - sparsity).abs() > 1e-6 {
            return Err(PruneError::BadValue { what: "sparsity for N:M", value: sparsity, why: "must equal 1 - N/M" });
        }
        for (name, shape, s) in &eff {
            if allocation.keep_dense.contains(name) {
                out.insert(name.clone(), Mask::ones(shape));
                continue;
            }
            let mut mask = Mask::zeros(shape);
            let mut idx: Vec<usize> = Vec::with_capacity(m);
            for start in (0..s.len()).step_by(m) {
                idx.clear();
                idx.extend(start..start + m);
                idx.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
                for &i in &idx[..n] {
                    mask.set(i, true);
                }
            }
            out.insert(name.clone(), mask);
        }
        return Ok(out);
    }
    // Group scores: mean of member scores (so groups of different sizes compare fairly).
    let mut all_groups: Vec<(usize, Vec<f32>, crate::granularity::Groups)> = Vec::new();
    for (ti, (_, shape, s)) in eff.iter().enumerate() {
        let g = granularity.groups(shape);
        let mut gs = vec![0f32; g.num_groups];
        for (i, &x) in s.iter().enumerate() {
            gs[g.group_of[i] as usize] += x;
        }
        for (k, v) in gs.iter_mut().enumerate() {
            *v /= g.sizes[k].max(1) as f32;
        }
        all_groups.push((ti, gs, g));
    }
    let shapes_only: Vec<(String, Vec<usize>)> = eff.iter().map(|(n, s, _)| (n.clone(), s.clone())).collect();
    let mut keep_group: Vec<Vec<bool>> = all_groups.iter().map(|(_, gs, _)| vec![false; gs.len()]).collect();
    match allocation.kind {
        AllocationKind::Global => {
            for k in &allocation.keep_dense {
                if !shapes_only.iter().any(|(n, _)| n == k) {
                    return Err(PruneError::UnknownParam(k.clone()));
                }
            }
            let total: usize = eff.iter().map(|(_, _, s)| s.len()).sum();
            let budget = ((1.0 - sparsity) * total as f64).round() as usize;
            let mut kept = 0usize;
            let mut cands: Vec<Candidate> = Vec::new();
            for (t, (_, gs, g)) in all_groups.iter().enumerate() {
                if allocation.keep_dense.contains(&eff[t].0) {
                    keep_group[t].iter_mut().for_each(|k| *k = true);
                    kept += g.sizes.iter().sum::<usize>();
                } else {
                    cands.extend(candidates(gs, t, &eff[t].0)?);
                }
            }
            if kept > budget {
                return Err(PruneError::Infeasible { target: sparsity, why: "the dense-kept layers exceed the budget".into() });
            }
            for c in best_first_prefix(&mut cands, |c| all_groups[c.t as usize].2.sizes[c.k as usize], kept, budget) {
                keep_group[c.t as usize][c.k as usize] = true;
            }
        }
        _ => {
            let dens = allocation.densities(&shapes_only, sparsity)?;
            for (t, (_, gs, _)) in all_groups.iter().enumerate() {
                let d = dens[&eff[t].0];
                let k = ((d * gs.len() as f64).round() as usize).min(gs.len());
                let mut cands = candidates(gs, 0, &eff[t].0)?;
                for c in best_k(&mut cands, k) {
                    keep_group[t][c.k as usize] = true;
                }
            }
        }
    }
    for (t, (_, _, g)) in all_groups.iter().enumerate() {
        let (name, shape, _) = &eff[t];
        let mut mask = Mask::zeros(shape);
        for (i, &gi) in g.group_of.iter().enumerate() {
            if keep_group[t][gi as usize] {
                mask.set(i, true);
            }
        }
        out.insert(name.clone(), mask);
    }
    Ok(out)
}

/// A group competing for a place among the kept ones: its score as a key whose ascending order
/// is the descending [`f32::total_cmp`] order, then its tensor and group index (the tie-break by
/// position), so sorting or selecting by `Ord` is one total order with no indirection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    key: u32,
    t: u32,
    k: u32,
}

impl Candidate {
    fn new(score: f32, t: usize, k: usize) -> Option<Self> {
        let b = score.to_bits();
        // total_cmp's order as unsigned integers (flip all bits of negatives, the sign of the
        // rest), then inverted for highest first.
        let ascending = if b >> 31 == 1 { !b } else { b | 0x8000_0000 };
        Some(Self { key: !ascending, t: u32::try_from(t).ok()?, k: u32::try_from(k).ok()? })
    }
}

/// The groups of tensor number `t` (named `name`) with scores `gs` as candidates.
fn candidates(gs: &[f32], t: usize, name: &str) -> Result<Vec<Candidate>> {
    gs.iter()
        .enumerate()
        .map(|(k, &s)| Candidate::new(s, t, k))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| PruneError::Unsupported { what: format!("{} groups in {name}", gs.len()), why: "more than 2^32 groups in one tensor" })
}

/// The `k` best candidates (in no order): one selection, O(n), the same set as the first `k` of
/// a full sort.
fn best_k(cands: &mut [Candidate], k: usize) -> &[Candidate] {
    let k = k.min(cands.len());
    if k > 0 && k < cands.len() {
        cands.select_nth_unstable(k - 1);
    }
    &cands[..k]
}

/// The groups the global walk keeps: in best-first order, add a group while the budget is not
/// reached, and stop at the first group that would overshoot the budget by more than leaving it
/// out undershoots it. The result is a prefix of the best-first order, found without sorting all
/// of `cands`: with groups of one size (unstructured weights, whole blocks) its length follows
/// from the sizes alone and one selection (O(n)) cuts it off; otherwise only the candidates the
/// walk can reach are selected and sorted. The same set as a full sort, bit for bit.
fn best_first_prefix(cands: &mut [Candidate], size: impl Fn(&Candidate) -> usize, mut kept: usize, budget: usize) -> &[Candidate] {
    let stops = |kept: usize, sz: usize| kept >= budget || (kept + sz > budget && kept + sz - budget > budget - kept);
    if cands.is_empty() {
        return cands;
    }
    let (smin, smax) = cands.iter().map(&size).fold((usize::MAX, 0), |(lo, hi), s| (lo.min(s), hi.max(s)));
    if smin == smax {
        let mut n = 0;
        while n < cands.len() && !stops(kept, smin) {
            kept += smin;
            n += 1;
        }
        return best_k(cands, n);
    }
    // Every kept group adds at least smin, so the walk looks at no more than this many.
    let reach = if smin == 0 { cands.len() } else { ((budget.saturating_sub(kept)).div_ceil(smin) + 1).min(cands.len()) };
    if reach < cands.len() {
        cands.select_nth_unstable(reach);
    }
    let head = &mut cands[..reach];
    head.sort_unstable();
    let mut n = 0;
    while n < head.len() && !stops(kept, size(&head[n])) {
        kept += size(&head[n]);
        n += 1;
    }
    &cands[..n]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The walk over a full sort: what [`best_first_prefix`] must reproduce.
    fn by_full_sort(scores: &[(f32, usize)], mut kept: usize, budget: usize) -> Vec<(usize, usize)> {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[b].0.total_cmp(&scores[a].0).then(a.cmp(&b)));
        let mut out = vec![];
        for i in order {
            let sz = scores[i].1;
            if kept >= budget || (kept + sz > budget && kept + sz - budget > budget - kept) {
                break;
            }
            out.push((i / 7, i % 7));
            kept += sz;
        }
        out.sort_unstable();
        out
    }

    fn by_selection(scores: &[(f32, usize)], kept: usize, budget: usize) -> Vec<(usize, usize)> {
        let mut cands: Vec<Candidate> = scores.iter().enumerate().map(|(i, &(s, _))| Candidate::new(s, i / 7, i % 7).unwrap()).collect();
        let size = |c: &Candidate| scores[c.t as usize * 7 + c.k as usize].1;
        let mut out: Vec<(usize, usize)> = best_first_prefix(&mut cands, size, kept, budget).iter().map(|c| (c.t as usize, c.k as usize)).collect();
        out.sort_unstable();
        out
    }

    #[test]
    fn candidate_keys_order_scores_as_total_cmp_descending() {
        let xs = [f32::INFINITY, 3.0, 1e-30, 0.0, -0.0, -1e-30, -2.0, f32::NEG_INFINITY];
        for w in xs.windows(2) {
            assert!(Candidate::new(w[0], 0, 0).unwrap() < Candidate::new(w[1], 0, 0).unwrap(), "{} before {}", w[0], w[1]);
        }
        assert!(Candidate::new(1.0, 0, 3).unwrap() < Candidate::new(1.0, 1, 0).unwrap(), "ties break by tensor, then group");
    }

    proptest! {
        /// Per-tensor allocations keep the first k of the best-first order.
        #[test]
        fn best_k_is_the_head_of_a_full_sort(raw in prop::collection::vec(0u8..5, 0..80), k in 0usize..90) {
            let mut cands: Vec<Candidate> = raw.iter().enumerate().map(|(i, &s)| Candidate::new(s as f32, 0, i).unwrap()).collect();
            let mut sorted = cands.clone();
            sorted.sort();
            let mut got = best_k(&mut cands, k).to_vec();
            got.sort();
            prop_assert_eq!(&got[..], &sorted[..k.min(sorted.len())]);
        }

        /// Equal scores (few distinct values), one group size or many, every budget: the same
        /// groups as sorting everything and walking.
        #[test]
        fn selection_keeps_what_a_full_sort_keeps(
            raw in prop::collection::vec((0u8..6, 1usize..5), 1..120),
            one_size in any::<bool>(),
            kept in 0usize..20,
            frac in 0.0f64..1.2,
        ) {
            let scores: Vec<(f32, usize)> = raw.iter().map(|&(s, z)| (s as f32 - 2.5, if one_size { 4 } else { z })).collect();
            let total: usize = scores.iter().map(|s| s.1).sum::<usize>() + kept;
            let budget = kept + (frac * (total - kept) as f64) as usize;
            prop_assert_eq!(by_selection(&scores, kept, budget), by_full_sort(&scores, kept, budget));
        }
    }
}
