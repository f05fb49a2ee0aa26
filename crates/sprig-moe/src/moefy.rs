//! Dense FFN → experts (MoEfication, Zhang et al. 2022, "MoEfication: Transformer feed-forward
//! layers are mixtures of experts", §3.1 parameter clustering split): the `F` neurons of
//! `W2 · gelu(W1 x + b1) + b2` are partitioned into `E` groups of `F / E` by balanced k-means on
//! the rows of `W1` (neurons with similar input weights fire together), and each group becomes an
//! expert. With unit gates and every expert chosen the layer computes the dense FFN exactly; a
//! router then picks the few experts whose neurons would be most active.
use crate::error::{MoeError, Result};
use crate::layer::{Expert, MoeConfig, MoeFfn};
use crate::router::{Capacity, RouterConfig};
use candle_core::{Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Squared Euclidean distance.
fn dist2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Partitions the rows of `w1` (`neurons x hidden`, row-major) into `experts` groups of exactly
/// `neurons / experts` rows by balanced k-means: k-means++ seeding, then `iters` rounds of
/// capacity-constrained assignment (all (row, centroid) pairs by increasing distance, each row
/// to the nearest centroid that still has room) and centroid updates. Groups are sorted lists of
/// row indices.
pub fn balanced_clusters(w1: &[f32], neurons: usize, hidden: usize, experts: usize, iters: usize, seed: u64) -> Result<Vec<Vec<usize>>> {
    if experts == 0 {
        return Err(MoeError::NoExperts);
    }
    if w1.len() != neurons * hidden {
        return Err(MoeError::Shape { what: "W1 (neurons x hidden)".into(), expected: vec![neurons, hidden], got: vec![w1.len()] });
    }
    if neurons % experts != 0 {
        return Err(MoeError::BadValue { what: "experts (must divide the FFN's neurons)", value: experts as f64, why: "the neurons cannot be split into equal groups" });
    }
    let row = |i: usize| &w1[i * hidden..(i + 1) * hidden];
    let size = neurons / experts;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // k-means++ seeding.
    let mut cent: Vec<Vec<f32>> = vec![row(rng.random_range(0..neurons)).to_vec()];
    let mut d: Vec<f32> = (0..neurons).map(|i| dist2(row(i), &cent[0])).collect();
    while cent.len() < experts {
        let total: f64 = d.iter().map(|&x| x as f64).sum();
        let mut pick = rng.random_range(0.0..total.max(f64::MIN_POSITIVE));
        let mut next = neurons - 1;
        for (i, &x) in d.iter().enumerate() {
            pick -= x as f64;
            if pick <= 0.0 {
                next = i;
                break;
            }
        }
        cent.push(row(next).to_vec());
        let c = cent.last().expect("just pushed");
        for (i, di) in d.iter_mut().enumerate() {
            *di = di.min(dist2(row(i), c));
        }
    }
    let mut groups = vec![Vec::new(); experts];
    for _ in 0..iters.max(1) {
        let mut pairs: Vec<(f32, usize, usize)> = Vec::with_capacity(neurons * experts);
        for i in 0..neurons {
            for (c, cv) in cent.iter().enumerate() {
                pairs.push((dist2(row(i), cv), i, c));
            }
        }
        pairs.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let mut taken = vec![false; neurons];
        groups = vec![Vec::with_capacity(size); experts];
        for (_, i, c) in pairs {
            if !taken[i] && groups[c].len() < size {
                taken[i] = true;
                groups[c].push(i);
            }
        }
        for (c, g) in groups.iter().enumerate() {
            let mut m = vec![0f32; hidden];
            for &i in g {
                m.iter_mut().zip(row(i)).for_each(|(a, b)| *a += b);
            }
            m.iter_mut().for_each(|a| *a /= g.len() as f32);
            cent[c] = m;
        }
    }
    groups.iter_mut().for_each(|g| g.sort_unstable());
    Ok(groups)
}

/// Mean squared distance of every row to its group's mean: what [`balanced_clusters`] lowers.
pub fn within_group_spread(w1: &[f32], hidden: usize, groups: &[Vec<usize>]) -> f64 {
    let mut total = 0f64;
    let mut n = 0usize;
    for g in groups {
        let mut m = vec![0f32; hidden];
        for &i in g {
            m.iter_mut().zip(&w1[i * hidden..(i + 1) * hidden]).for_each(|(a, b)| *a += b);
        }
        m.iter_mut().for_each(|a| *a /= g.len().max(1) as f32);
        for &i in g {
            total += dist2(&w1[i * hidden..(i + 1) * hidden], &m) as f64;
            n += 1;
        }
    }
    total / n.max(1) as f64
}

/// `(F, H)` of a dense FFN `w1 [F, H]`, `b1 [F]`, `w2 [H, F]`, `b2 [H]`; an error names the
/// tensor whose shape disagrees.
fn ffn_shapes(w1: &Tensor, b1: &Tensor, w2: &Tensor, b2: &Tensor) -> Result<(usize, usize)> {
    let (f, h) = w1.dims2()?;
    for (what, t, want) in [("b1", b1, vec![f]), ("w2", w2, vec![h, f]), ("b2", b2, vec![h])] {
        if t.dims() != want.as_slice() {
            return Err(MoeError::Shape { what: what.into(), expected: want, got: t.dims().to_vec() });
        }
    }
    Ok((f, h))
}

/// An MoE layer whose experts are the `groups` of a dense FFN (`w1 [F, H]`, `b1 [F]`,
/// `w2 [H, F]`, `b2 [H]`): unit gates, `b2` as the shared output bias, a zero router (to be
/// trained). `router` says how many experts a token gets.
pub fn split_ffn(w1: &Tensor, b1: &Tensor, w2: &Tensor, b2: &Tensor, groups: &[Vec<usize>], router: RouterConfig) -> Result<MoeFfn> {
    let (f, h) = ffn_shapes(w1, b1, w2, b2)?;
    if groups.len() != router.experts {
        return Err(MoeError::BadValue { what: "groups (one per expert)", value: groups.len() as f64, why: "must equal the router's number of experts" });
    }
    let size = groups.first().map_or(0, Vec::len);
    let mut seen = vec![false; f];
    for g in groups {
        if g.len() != size || g.iter().any(|&i| i >= f || std::mem::replace(&mut seen[i], true)) {
            return Err(MoeError::BadValue { what: "groups (a partition of the neurons into equal sizes)", value: g.len() as f64, why: "unequal, out of range or repeated neurons" });
        }
    }
    if seen.iter().any(|s| !s) {
        return Err(MoeError::BadValue { what: "groups", value: size as f64, why: "some neurons are in no group" });
    }
    let dev = w1.device();
    let experts = groups
        .iter()
        .map(|g| {
            let idx = Tensor::from_vec(g.iter().map(|&i| i as u32).collect::<Vec<_>>(), g.len(), dev)?;
            Ok(Expert::dense(
                Var::from_tensor(&w1.index_select(&idx, 0)?)?,
                Var::from_tensor(&b1.index_select(&idx, 0)?)?,
                Var::from_tensor(&w2.index_select(&idx, 1)?.contiguous()?)?,
                Var::from_tensor(&Tensor::zeros(h, w2.dtype(), dev)?)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut config = MoeConfig::new(h, size, router);
    config.unit_gates = true;
    Ok(MoeFfn {
        config,
        router: Var::from_tensor(&Tensor::zeros((groups.len(), h), w1.dtype(), dev)?)?,
        experts,
        out_bias: Some(Var::from_tensor(b2)?),
    })
}

/// Sparse upcycling (Komatsuzaki et al. 2023, "Sparse Upcycling: Training Mixture-of-Experts
/// from Dense Checkpoints", §2): every one of `router.experts` experts is a copy of the dense FFN
/// (`w1 [F, H]`, `b1 [F]`, `w2 [H, F]`, `b2 [H]` as the shared output bias), behind a new router
/// drawn N(0, 0.02²) from `seed`. The gates are renormalised over each token's chosen experts and
/// nothing is dropped, so at the start the layer is the dense FFN exactly, whichever experts the
/// router picks; training then lets the copies differ. The task loss reaches the router only
/// once they do (identical experts make every gate's gradient cancel), and with top-1 only the
/// balancing loss trains it (its one renormalised gate is 1).
pub fn upcycle_ffn(w1: &Tensor, b1: &Tensor, w2: &Tensor, b2: &Tensor, router: RouterConfig, seed: u64) -> Result<MoeFfn> {
    let (f, h) = ffn_shapes(w1, b1, w2, b2)?;
    let router = RouterConfig { capacity: Capacity::Dropless, normalize: true, ..router };
    // The fresh layer supplies the seeded router and checks the settings; its experts are replaced.
    let mut m = MoeFfn::new(MoeConfig::new(h, f, router), seed, w1.device())?;
    let copy = |t: &Tensor| -> Result<Var> { Ok(Var::from_tensor(&t.copy()?)?) };
    let zero = Tensor::zeros(h, w2.dtype(), w2.device())?;
    m.experts = (0..m.experts.len())
        .map(|_| Ok(Expert::dense(copy(w1)?, copy(b1)?, copy(&w2.contiguous()?)?, copy(&zero)?)))
        .collect::<Result<_>>()?;
    m.out_bias = Some(copy(b2)?);
    Ok(m)
}

/// MoEfication's router target (§3.2): for every token, each expert's sum of positive
/// pre-activations `Σ_{n ∈ e} max(0, w1_n · x + b1_n)` (`[T, E]`): the experts that would
/// contribute most if run.
pub fn expert_activation_scores(moe: &MoeFfn, x: &Tensor) -> Result<Tensor> {
    let cols = moe
        .experts
        .iter()
        .map(|e| Ok(x.matmul(&e.w1.t()?)?.broadcast_add(&e.b1)?.relu()?.sum_keepdim(1)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&cols, 1)?)
}

/// How well a router picks experts: the share of each token's true top-`k` experts (by
/// [`expert_activation_scores`]) that are among the router's top-`k`, averaged over tokens.
pub fn router_recall(moe: &MoeFfn, x: &Tensor, k: usize) -> Result<f64> {
    let truth: Vec<Vec<f32>> = expert_activation_scores(moe, x)?.to_vec2()?;
    let logits: Vec<Vec<f32>> = x.matmul(&moe.router.as_tensor().t()?)?.to_vec2()?;
    let top = |v: &[f32]| {
        let mut o: Vec<usize> = (0..v.len()).collect();
        o.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
        o.truncate(k);
        o
    };
    let hits: usize = truth.iter().zip(&logits).map(|(t, l)| {
        let (tt, ll) = (top(t), top(l));
        tt.iter().filter(|e| ll.contains(e)).count()
    }).sum();
    Ok(hits as f64 / (truth.len() * k).max(1) as f64)
}

/// Trains the router of a split FFN on calibration hidden states `x` (`[T, H]`, the inputs the
/// FFN sees): softmax cross-entropy against the distribution of each token's true top-`k`
/// experts (uniform over them), full-batch AdamW for `steps` steps at `lr`. Returns the router
/// recall ([`router_recall`]) on `x` after training.
pub fn train_router(moe: &mut MoeFfn, x: &Tensor, k: usize, steps: usize, lr: f64) -> Result<f64> {
    use candle_nn::Optimizer;
    let e = moe.experts.len();
    if k == 0 || k > e {
        return Err(MoeError::BadTopK { k, experts: e });
    }
    // Only the router learns: a graph behind `x` (say, the model that produced it) would be
    // walked by every backward step.
    let x = &x.detach();
    let scores: Vec<Vec<f32>> = expert_activation_scores(moe, x)?.to_vec2()?;
    let mut target = Vec::with_capacity(scores.len() * e);
    for s in &scores {
        let mut o: Vec<usize> = (0..e).collect();
        o.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
        let mut row = vec![0f32; e];
        o[..k].iter().for_each(|&i| row[i] = 1.0 / k as f32);
        target.extend(row);
    }
    let target = Tensor::from_vec(target, (scores.len(), e), x.device())?;
    let mut opt = candle_nn::AdamW::new(vec![moe.router.clone()], candle_nn::ParamsAdamW { lr, weight_decay: 0.0, ..Default::default() })?;
    for _ in 0..steps {
        let logits = x.matmul(&moe.router.as_tensor().t()?)?;
        let logp = candle_nn::ops::log_softmax(&logits, 1)?;
        let loss = (target.mul(&logp)?.sum_all()?.affine(-1.0 / scores.len() as f64, 0.0))?;
        opt.backward_step(&loss)?;
    }
    router_recall(moe, x, k)
}
