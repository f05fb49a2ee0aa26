//! The Pruner against the formulas and the code it replaces: the cubic schedule, the lottery's
//! per-layer IMP (two `prune` calls), BERT-Tickets' global magnitude IMP, movement scores, DST
//! (constant density, the SET/RigL update as the DST trainer writes it), determinism, bad inputs.
use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sprig_prune::dst::{drop_and_grow, Grow, UpdateSchedule};
use sprig_prune::{
    criteria, prune, Allocation, Criterion, GradAccumulator, Granularity, GroupRate, GrowRule, Inputs, Mask, MaskSet, PruneError, Pruner,
    PrunerConfig, Rewind, RoundRate, Schedule, Scores,
};

type Params = Vec<(String, Var)>;

fn randn(shape: &[usize], rng: &mut ChaCha8Rng) -> Var {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    Var::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn model(seed: u64, sh: &[(&str, &[usize])]) -> Params {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    sh.iter().map(|(n, s)| (n.to_string(), randn(s, &mut rng))).collect()
}

fn shapes_of(p: &[(String, Var)]) -> Vec<(String, Vec<usize>)> {
    p.iter().map(|(n, v)| (n.clone(), v.dims().to_vec())).collect()
}

/// "Training": every weight moves by a seeded random factor, then the mask is applied (as the
/// mask-aware optimizer does), so rankings change between pruning events.
fn perturb(p: &[(String, Var)], masks: &MaskSet, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (n, v) in p {
        let w: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let w: Vec<f32> = w.iter().map(|x| x * (0.5 + rng.random::<f32>()) + 0.01 * (rng.random::<f32>() - 0.5)).collect();
        v.set(&Tensor::from_vec(w, v.dims(), &Device::Cpu).unwrap()).unwrap();
        if let Some(m) = masks.get(n) {
            m.apply(n, v).unwrap();
        }
    }
}

/// No weight pruned in `old` is kept in `new`.
fn never_revived(old: &MaskSet, new: &MaskSet) -> bool {
    old.iter().all(|(n, m)| (0..m.len()).all(|i| m.get(i) || !new.get(n).unwrap().get(i)))
}

const NET: &[(&str, &[usize])] = &[("fc1.weight", &[24, 30]), ("fc2.weight", &[16, 24]), ("out.weight", &[5, 16])];

#[test]
fn gradual_sparsity_at_every_event_is_the_cubic_formula() {
    for (alloc, start, end, freq) in [(Allocation::global(), 10, 50, 5), (Allocation::uniform(), 0, 12, 5)] {
        let p = model(1, NET);
        let (s_i, s_f) = (0.0, 0.8);
        let cfg = PrunerConfig::gmp(s_f, start, end, freq).allocation(alloc.clone());
        let mut pr = Pruner::for_params(cfg, &p).unwrap();
        let mut events = vec![];
        for t in 0..=end + 10 {
            perturb(&p, pr.masks(), t as u64);
            let before = pr.masks().clone();
            let got = pr.step(t, &p, &mut Inputs::none()).unwrap().cloned();
            let on_grid = t >= start && t <= end && (t - start) % freq == 0;
            // Zhu & Gupta 2017, eq. 1, evaluated here independently of the library.
            let cubic = |t: usize| s_f + (s_i - s_f) * (1.0 - (t - start) as f64 / (end - start) as f64).powi(3);
            match got {
                Some(m) => {
                    assert!(on_grid || t == end, "pruned off the schedule at step {t}");
                    events.push(t);
                    assert!(never_revived(&before, &m), "revived a weight at step {t}");
                    let s = cubic(t);
                    if alloc == Allocation::global() {
                        let n = m.numel();
                        let want = 1.0 - ((1.0 - s) * n as f64).round() / n as f64;
                        assert!((m.sparsity() - want).abs() < 1e-12, "step {t}: {} vs {want}", m.sparsity());
                    } else {
                        for (name, mk) in m.iter() {
                            let want = 1.0 - ((1.0 - s) * mk.len() as f64).round() / mk.len() as f64;
                            assert!((mk.sparsity() - want).abs() < 1e-12, "step {t} {name}: {} vs {want}", mk.sparsity());
                        }
                    }
                }
                None => assert_eq!(pr.masks(), &before),
            }
        }
        // Every grid step after the start prunes (the target grows), and so does the end.
        let mut want: Vec<usize> = (start + freq..=end).step_by(freq).collect();
        if *want.last().unwrap() != end {
            want.push(end);
        }
        assert_eq!(events, want);
        assert!((pr.sparsity() - s_f).abs() < 0.01);
    }
}

/// The lottery's per-layer rule as written in sprig-train's lottery runner (the reference).
/// `rates` = (rate, output rate, rounds).
fn layerwise_reference(shapes: &[(String, Vec<usize>)], out: &str, rates: (f64, f64, usize), scores: &Scores, r: usize, current: Option<&MaskSet>) -> MaskSet {
    let (rate, output_rate, rounds) = rates;
    let (hidden, output): (Vec<_>, Vec<_>) = shapes.iter().cloned().partition(|(n, _)| n != out);
    let s = |p: f64| Schedule::Imp { rounds, rate: RoundRate::FractionOfRemaining(p), rewind: Rewind::Init }.round_sparsity(r).unwrap();
    let mut m = prune(scores, &hidden, s(rate), Granularity::Unstructured, &Allocation::uniform(), current).unwrap();
    if !output.is_empty() {
        for (n, mk) in prune(scores, &output, s(output_rate), Granularity::Unstructured, &Allocation::uniform(), current).unwrap().iter() {
            m.insert(n.clone(), mk.clone());
        }
    }
    m
}

/// BERT-Tickets' IMP step as written in sprig-bert (the reference): global magnitude pruning of
/// the trained tensors, never reviving what `current` pruned.
fn global_magnitude_reference(tensors: &HashMap<String, Tensor>, shapes: &[(String, Vec<usize>)], s: f64, current: Option<&MaskSet>) -> MaskSet {
    let scores: Scores = shapes.iter().map(|(n, _)| (n.clone(), tensors[n].abs().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect();
    prune(&scores, shapes, s, Granularity::Unstructured, &Allocation::global(), current).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    #[test]
    fn imp_with_an_output_rate_equals_the_lottery_two_prune_calls(seed in 0u64..1000, rate in 0.05f64..0.5, output_rate in 0.05f64..0.5) {
        let rounds = 6;
        let p = model(seed, NET);
        let shapes = shapes_of(&p);
        let cfg = PrunerConfig::imp(rounds, RoundRate::FractionOfRemaining(rate), Rewind::Init)
            .allocation(Allocation::uniform())
            .group(["out.weight"], GroupRate::Round(RoundRate::FractionOfRemaining(output_rate)));
        let mut pr = Pruner::new(cfg, shapes.clone()).unwrap();
        let mut reference = MaskSet::ones_for(&p);
        for r in 1..=rounds {
            perturb(&p, &reference, seed ^ r as u64);
            let scores = criteria::magnitude(&p).unwrap();
            reference = layerwise_reference(&shapes, "out.weight", (rate, output_rate, rounds), &scores, r, Some(&reference));
            let before = pr.masks().clone();
            let got = pr.round(r, &p, &mut Inputs::none()).unwrap();
            prop_assert_eq!(got, &reference, "round {}", r);
            prop_assert_eq!(got.sha256(), reference.sha256());
            prop_assert!(never_revived(&before, got));
        }
        // The random-mask control: a second pruner from dense at round r with seeded random scores.
        let r = 3;
        let rs = criteria::random(&p, seed.wrapping_mul(31).wrapping_add(r as u64));
        let want = layerwise_reference(&shapes, "out.weight", (rate, output_rate, rounds), &rs, r, None);
        let cfg = PrunerConfig::imp(rounds, RoundRate::FractionOfRemaining(rate), Rewind::Init)
            .allocation(Allocation::uniform())
            .group(["out.weight"], GroupRate::Round(RoundRate::FractionOfRemaining(output_rate)));
        let mut random = Pruner::new(PrunerConfig { criterion: Criterion::Random, ..cfg }.seed(seed.wrapping_mul(31).wrapping_add(r as u64)), shapes).unwrap();
        prop_assert_eq!(random.round(r, &p, &mut Inputs::none()).unwrap(), &want);
    }

    #[test]
    fn global_imp_equals_global_magnitude_mask_and_never_revives(seed in 0u64..1000, rate in 0.05f64..0.15) {
        let rounds = 6;
        let p = model(seed, NET);
        let shapes = shapes_of(&p);
        let mut pr = Pruner::new(PrunerConfig::imp(rounds, RoundRate::LinearOfOriginal(rate), Rewind::Step(3)), shapes.clone()).unwrap();
        let mut reference: Option<MaskSet> = None;
        for r in 1..=rounds {
            perturb(&p, pr.masks(), seed.wrapping_add(r as u64));
            let tensors: HashMap<String, Tensor> = p.iter().map(|(n, v)| (n.clone(), v.as_tensor().copy().unwrap())).collect();
            let s = (rate * r as f64).min(0.99);
            let want = global_magnitude_reference(&tensors, &shapes, s, reference.as_ref());
            // Resume from the previous round's masks, as the ticket runner does from a checkpoint.
            let prev = pr.masks().clone();
            let mut resumed = Pruner::new(PrunerConfig::imp(rounds, RoundRate::LinearOfOriginal(rate), Rewind::Step(3)), shapes.clone()).unwrap().with_masks(prev.clone()).unwrap();
            let got = pr.round(r, &p, &mut Inputs::none()).unwrap().clone();
            prop_assert_eq!(&got, &want, "round {}", r);
            prop_assert_eq!(resumed.round(r, &p, &mut Inputs::none()).unwrap(), &want);
            prop_assert!(never_revived(&prev, &got));
            prop_assert_eq!(got.count_kept(), ((1.0 - s) * got.numel() as f64).round() as usize);
            reference = Some(want);
        }
    }
}

#[test]
fn movement_scores_come_from_the_gradient_statistics() {
    let d = Device::Cpu;
    let a = Var::from_tensor(&Tensor::arange(1f32, 101., &d).unwrap().reshape((10, 10)).unwrap()).unwrap();
    let b = Var::from_tensor(&(Tensor::arange(1f32, 101., &d).unwrap().reshape((10, 10)).unwrap() * 1e-3).unwrap()).unwrap();
    let p: Params = vec![("a".into(), a.clone()), ("b".into(), b.clone())];
    let mut pr = Pruner::for_params(PrunerConfig::movement(0.5, 0, 4, 2), &p).unwrap();
    let mut reference = GradAccumulator::new();
    for t in 1..=4usize {
        // Loss −(a² + 1000·b²)/2 + t·Σa: g = −w + t and −1000·w, so S = −Σ g⊙w is 1000x larger on b.
        let loss = ((a.as_tensor().sqr().unwrap().sum_all().unwrap() + (b.as_tensor().sqr().unwrap().sum_all().unwrap() * 1000.0).unwrap()).unwrap() * -0.5)
            .unwrap()
            .add(&(a.as_tensor().sum_all().unwrap() * t as f64).unwrap())
            .unwrap();
        let grads = loss.backward().unwrap();
        pr.observe(&p, &grads).unwrap();
        reference.update(&p, &grads).unwrap();
        pr.step(t, &p, &mut Inputs::none()).unwrap();
    }
    // The pruner's statistics are movement scores, and its mask is top-k on them per matrix.
    let s = pr.accumulator().unwrap().movement().unwrap();
    assert_eq!(s, reference.movement().unwrap());
    let w: Vec<f32> = a.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    let by_hand: Vec<f32> = w.iter().map(|w| -(1..=4).map(|t| (-w + t as f32) * w).sum::<f32>()).collect();
    for (x, y) in s["a"].iter().zip(&by_hand) {
        assert!((x - y).abs() <= 1e-3 * y.abs().max(1.0), "{x} vs {y}");
    }
    let want = prune(&s, &shapes_of(&p), 0.5, Granularity::Unstructured, &Allocation::uniform(), None).unwrap();
    assert_eq!(pr.masks(), &want);
    assert_eq!(pr.masks().get("a").unwrap().sparsity(), 0.5);
    assert_eq!(pr.masks().get("b").unwrap().sparsity(), 0.5);
    // Movement needs statistics: without observe there is nothing to rank.
    let mut fresh = Pruner::for_params(PrunerConfig::one_shot(Criterion::Movement, 0.5), &p).unwrap();
    assert!(matches!(fresh.step(0, &p, &mut Inputs::none()), Err(PruneError::MissingInput { .. })));
    // Statistics given through the inputs work as well.
    assert_eq!(fresh.one_shot(&p, &mut Inputs::none().with_accumulator(&reference)).unwrap().sparsity(), 0.5);
}

fn dst_run(grow: GrowRule, seed: u64, gradual: bool) -> (MaskSet, Vec<f64>) {
    let p = model(seed, NET);
    let update = UpdateSchedule { delta_t: 3, t_end: 40, alpha: 0.3 };
    let cfg = if gradual { PrunerConfig::granet(0.5, 0.85, update) } else { PrunerConfig::dst(0.85, update, grow) };
    let mut pr = Pruner::for_params(cfg.seed(seed), &p).unwrap();
    let start = pr.start_random().unwrap().clone();
    let counts: Vec<usize> = start.iter().map(|(_, m)| m.count_kept()).collect();
    let mut rates = vec![pr.itop_rate().unwrap()];
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 99);
    for t in 1..=45 {
        perturb(&p, pr.masks(), seed * 1000 + t as u64);
        let grads: Scores = p.iter().map(|(n, v)| (n.clone(), (0..v.elem_count()).map(|_| rng.random::<f32>() - 0.5).collect())).collect();
        let before = pr.masks().clone();
        let updated = pr.step(t, &p, &mut Inputs::none().with_dense_grads(&grads)).unwrap().cloned();
        assert_eq!(updated.is_some(), t % 3 == 0 && t < 40, "step {t}");
        if let Some(m) = updated {
            if gradual {
                assert!(never_revived(&before, &m) || m.count_kept() <= before.count_kept());
            } else {
                let now: Vec<usize> = m.iter().map(|(_, m)| m.count_kept()).collect();
                assert_eq!(now, counts, "density changed at step {t}");
            }
        }
        rates.push(pr.itop_rate().unwrap());
    }
    (pr.into_masks(), rates)
}

#[test]
fn dst_keeps_density_and_explores() {
    for grow in [GrowRule::Random, GrowRule::Gradient] {
        let (m, rates) = dst_run(grow, 5, false);
        assert!(rates.windows(2).all(|w| w[1] >= w[0]), "R_s must not decrease");
        assert!(rates.last().unwrap() > &(rates[0] + 0.01), "{grow:?} explored nothing: {rates:?}");
        assert!((m.sparsity() - 0.85).abs() < 0.01);
        // Same seed, same masks bit for bit; another seed, other masks.
        assert_eq!(dst_run(grow, 5, false).0.sha256(), m.sha256());
        assert_ne!(dst_run(grow, 6, false).0.sha256(), m.sha256());
    }
    // GraNet: from 50% to 85% on the cubic schedule, regrowing as it goes.
    let (m, _) = dst_run(GrowRule::Gradient, 5, true);
    assert!((m.sparsity() - 0.85).abs() < 0.01, "{}", m.sparsity());
}

/// One SET/RigL update equals the DST trainer's loop over its layers.
#[test]
fn dst_update_matches_the_trainers_loop() {
    let update = UpdateSchedule { delta_t: 10, t_end: 100, alpha: 0.3 };
    for grow in [GrowRule::Random, GrowRule::Gradient] {
        let seed = 11;
        let p = model(seed, NET);
        let mut pr = Pruner::for_params(PrunerConfig::dst(0.9, update, grow).seed(seed), &p).unwrap();
        let start = pr.start_random().unwrap().clone();
        start.apply(&p).unwrap();
        let grads: Scores = p.iter().map(|(n, v)| (n.clone(), (0..v.elem_count()).map(|i| ((i * 7919) % 101) as f32 - 50.0).collect())).collect();
        let step = 20;
        let got = pr.step(step, &p, &mut Inputs::none().with_dense_grads(&grads)).unwrap().unwrap().clone();
        let frac = update.drop_fraction(step);
        for (li, (name, v)) in p.iter().enumerate() {
            let w: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let mask = start.get(name).unwrap();
            let n = (frac * mask.count_kept() as f64).round() as usize;
            let rule = match grow {
                GrowRule::Gradient => Grow::Gradient(&grads[name]),
                GrowRule::Random => Grow::Random { seed: seed.wrapping_mul(1_000_003).wrapping_add((step * 64 + li) as u64) },
            };
            assert_eq!(got.get(name).unwrap(), &drop_and_grow(name, &w, mask, n, rule, None).unwrap().mask, "{grow:?} {name}");
        }
        // Gradient growth without gradients is an error naming what is missing.
        assert!(matches!(pr.step(30, &p, &mut Inputs::none()), Err(PruneError::MissingInput { .. }) if grow == GrowRule::Gradient) || grow == GrowRule::Random);
    }
}

#[test]
fn one_shot_criteria_match_the_direct_calls() {
    let p = model(3, &[("w1", &[8, 6]), ("w2", &[3, 8])]);
    let shapes = shapes_of(&p);
    // Random: seeded, bit for bit.
    let mk = |seed| Pruner::new(PrunerConfig::one_shot(Criterion::Random, 0.7).seed(seed), shapes.clone()).unwrap();
    let (mut a, mut b, mut c) = (mk(7), mk(7), mk(8));
    let ma = a.step(0, &p, &mut Inputs::none()).unwrap().unwrap().clone();
    assert_eq!(ma, prune(&criteria::random(&p, 7), &shapes, 0.7, Granularity::Unstructured, &Allocation::global(), None).unwrap());
    assert_eq!(b.one_shot(&p, &mut Inputs::none()).unwrap().sha256(), ma.sha256());
    assert_ne!(c.one_shot(&p, &mut Inputs::none()).unwrap().sha256(), ma.sha256());
    assert!(a.step(0, &p, &mut Inputs::none()).unwrap().is_none(), "a one-shot schedule prunes once");
    // SynFlow with iterations = the iterative SynFlow of criteria.
    let all = p.clone();
    let fwd = |p: &Params| {
        let x = Tensor::ones((1, 6), candle_core::DType::F32, &Device::Cpu)?;
        x.matmul(&p[0].1.as_tensor().t()?)?.matmul(&p[1].1.as_tensor().t()?)
    };
    let want = criteria::synflow_prune(&all, &["w1".into(), "w2".into()], 0.8, 5, Granularity::Unstructured, &Allocation::global(), &mut || fwd(&all)).unwrap();
    let mut f = || fwd(&all);
    let mut pr = Pruner::new(PrunerConfig::one_shot(Criterion::Synflow, 0.8).iterations(5), shapes.clone()).unwrap();
    assert_eq!(pr.one_shot(&p, &mut Inputs::none().with_forward_ones(&all, &mut f)).unwrap(), &want);
    // SNIP through a calibration loss.
    let mut loss = |_b: usize| fwd(&all)?.sqr()?.sum_all();
    let want = prune(&criteria::snip(&p, &mut loss, 2).unwrap(), &shapes, 0.5, Granularity::Unstructured, &Allocation::global(), None).unwrap();
    let mut loss = |_b: usize| fwd(&all)?.sqr()?.sum_all();
    let mut pr = Pruner::new(PrunerConfig::one_shot(Criterion::Snip, 0.5), shapes.clone()).unwrap();
    assert_eq!(pr.one_shot(&p, &mut Inputs::none().with_loss(&mut loss, 2)).unwrap(), &want);
    // Wanda, per tensor, N:M in the kernels' 2:4.
    let mut norms = sprig_prune::ActivationNorms::new();
    norms.observe("w1", &Tensor::arange(0f32, 12., &Device::Cpu).unwrap().reshape((2, 6)).unwrap()).unwrap();
    norms.observe("w2", &Tensor::arange(0f32, 16., &Device::Cpu).unwrap().reshape((2, 8)).unwrap()).unwrap();
    let nm = Granularity::from_format_name("2:4").unwrap();
    let cfg = PrunerConfig::one_shot(Criterion::Wanda, 0.5).granularity(nm).allocation(Allocation::uniform());
    let want = prune(&norms.wanda(&p[1..]).unwrap(), &shapes[1..], 0.5, nm, &Allocation::uniform(), None).unwrap();
    let mut pr = Pruner::new(cfg, vec![("w1".into(), vec![8, 6]), ("w2".into(), vec![3, 8])]);
    assert!(matches!(pr, Err(PruneError::BadNm { .. })), "2:4 does not tile 6 columns");
    pr = Pruner::new(PrunerConfig::one_shot(Criterion::Wanda, 0.5).granularity(nm).allocation(Allocation::uniform()), vec![("w2".into(), vec![3, 8])]);
    let got = pr.unwrap().one_shot(&p, &mut Inputs::none().with_activations(&norms)).unwrap().clone();
    assert_eq!(got.get("w2"), want.get("w2"));
}

#[test]
fn bad_inputs_are_errors_naming_the_value() {
    let p = model(0, NET);
    let sh = shapes_of(&p);
    let new = |cfg: PrunerConfig| Pruner::new(cfg, sh.clone());
    for s in [1.0, -0.1, f64::NAN, 1.5] {
        assert!(matches!(new(PrunerConfig::one_shot(Criterion::Magnitude, s)), Err(PruneError::BadSparsity(_))), "{s}");
        assert!(matches!(new(PrunerConfig::gmp(s, 0, 10, 1)), Err(PruneError::BadSparsity(_))), "{s}");
    }
    let mut ok = new(PrunerConfig::one_shot(Criterion::Magnitude, 0.5)).unwrap();
    assert!(matches!(ok.prune_to(1.0, &p, &mut Inputs::none()), Err(PruneError::BadSparsity(_))));
    assert!(matches!(ok.round(1, &p, &mut Inputs::none()), Err(PruneError::Unsupported { .. })));
    // Unknown tensors: in a group, in the params, in resumed masks.
    assert!(matches!(new(PrunerConfig::gmp(0.5, 0, 10, 1).group(["nope"], GroupRate::Scale(0.5))), Err(PruneError::UnknownParam(n)) if n == "nope"));
    assert!(matches!(ok.step(0, &p[..2], &mut Inputs::none()), Err(PruneError::UnknownParam(n)) if n == "out.weight"));
    let mut stray = MaskSet::new();
    stray.insert("ghost", Mask::ones(&[2]));
    assert!(matches!(new(PrunerConfig::one_shot(Criterion::Magnitude, 0.5)).unwrap().with_masks(stray), Err(PruneError::UnknownParam(n)) if n == "ghost"));
    let wrong: Params = vec![("fc1.weight".into(), p[1].1.clone()), p[1].clone(), p[2].clone()];
    assert!(matches!(ok.step(0, &wrong, &mut Inputs::none()), Err(PruneError::ShapeMismatch { .. })));
    // Shapes a granularity cannot take.
    let g = |gr: Granularity| new(PrunerConfig::one_shot(Criterion::Magnitude, 0.5).granularity(gr));
    assert!(matches!(g(Granularity::Block { r: 7, c: 4 }), Err(PruneError::BlocksDoNotTile { .. })));
    assert!(matches!(g(Granularity::NM { n: 2, m: 7 }), Err(PruneError::BadNm { .. })));
    assert!(matches!(g(Granularity::Heads { num_heads: 7, axis: 0 }), Err(PruneError::HeadsDoNotDivide { .. })));
    let nm = |cfg: PrunerConfig| Pruner::new(cfg.granularity(Granularity::NM { n: 2, m: 4 }), vec![("w".into(), vec![4, 8])]);
    assert!(nm(PrunerConfig::one_shot(Criterion::Magnitude, 0.5)).is_ok());
    assert!(matches!(nm(PrunerConfig::one_shot(Criterion::Magnitude, 0.6)), Err(PruneError::Unsupported { .. })));
    assert!(matches!(nm(PrunerConfig::gmp(0.5, 0, 10, 1)), Err(PruneError::Unsupported { .. })));
    // Rules that do not compose.
    assert!(matches!(new(PrunerConfig::gmp(0.5, 0, 10, 1).group(["out.weight"], GroupRate::Round(RoundRate::FractionOfRemaining(0.1)))), Err(PruneError::Unsupported { .. })));
    assert!(matches!(new(PrunerConfig::gmp(0.9, 0, 10, 1).group(["out.weight"], GroupRate::Scale(1.2))), Err(PruneError::BadSparsity(_))));
    let upd = UpdateSchedule { delta_t: 0, t_end: 10, alpha: 0.3 };
    assert!(matches!(new(PrunerConfig::dst(0.5, upd, GrowRule::Random)), Err(PruneError::BadValue { .. })));
    let upd = UpdateSchedule { delta_t: 2, t_end: 10, alpha: 0.3 };
    assert!(matches!(new(PrunerConfig { criterion: Criterion::Movement, ..PrunerConfig::dst(0.5, upd, GrowRule::Random) }), Err(PruneError::BadName { .. })));
    assert!(matches!(new(PrunerConfig::imp(3, RoundRate::LinearOfOriginal(0.4), Rewind::Init)), Err(PruneError::BadSparsity(_))));
    assert!(matches!(Pruner::new(PrunerConfig::one_shot(Criterion::Magnitude, 0.5), vec![]), Err(PruneError::NothingSelected)));
    assert!(matches!(new(PrunerConfig::one_shot(Criterion::Snip, 0.5)).unwrap().one_shot(&p, &mut Inputs::none()), Err(PruneError::MissingInput { .. })));
    let mut imp = new(PrunerConfig::imp(3, RoundRate::LinearOfOriginal(0.2), Rewind::Init)).unwrap();
    assert!(matches!(imp.round(4, &p, &mut Inputs::none()), Err(PruneError::BadValue { .. })));
    assert!(imp.step(5, &p, &mut Inputs::none()).unwrap().is_none(), "IMP never prunes mid-training");
}

#[test]
fn config_round_trips_through_json() {
    let cfg = PrunerConfig::imp(5, RoundRate::FractionOfRemaining(0.2), Rewind::Step(3))
        .allocation(Allocation::uniform())
        .group(["out.weight"], GroupRate::Round(RoundRate::FractionOfRemaining(0.1)))
        .seed(9);
    let back: PrunerConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
    let rigl = PrunerConfig::dst(0.9, UpdateSchedule { delta_t: 100, t_end: 750, alpha: 0.3 }, GrowRule::Gradient);
    assert_eq!(serde_json::from_value::<PrunerConfig>(serde_json::to_value(&rigl).unwrap()).unwrap(), rigl);
}
