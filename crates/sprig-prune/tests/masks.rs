//! Mask, MaskSet, granularity, allocation and schedule tests (unit + proptest invariants).
use candle_core::{Device, Tensor, Var};
use proptest::prelude::*;
use sprig_prune::{criteria, prune, Allocation, Granularity, Mask, MaskSet, PruneError, RoundRate, Rewind, Schedule, Scores, Selector};

fn shapes(v: &[(&str, &[usize])]) -> Vec<(String, Vec<usize>)> {
    v.iter().map(|(n, s)| (n.to_string(), s.to_vec())).collect()
}

fn ramp_scores(sh: &[(String, Vec<usize>)]) -> Scores {
    let mut k = 0f32;
    sh.iter()
        .map(|(n, s)| {
            let v = (0..s.iter().product::<usize>()).map(|_| { k += 1.0; (k * 7.31).sin().abs() }).collect();
            (n.clone(), v)
        })
        .collect()
}

#[test]
fn mask_bits_roundtrip_and_padding() {
    let keep: Vec<bool> = (0..77).map(|i| i % 3 == 0).collect();
    let m = Mask::from_bools(&[7, 11], &keep).unwrap();
    assert_eq!(m.to_bools(), keep);
    assert_eq!(m.count_kept(), 26);
    let b = m.to_bytes();
    assert_eq!(b.len(), 10);
    assert_eq!(Mask::from_bytes(&[7, 11], &b).unwrap(), m);
    let mut bad = b.clone();
    *bad.last_mut().unwrap() |= 0x80; // a padding bit
    assert!(Mask::from_bytes(&[7, 11], &bad).is_err());
    assert!(Mask::from_bytes(&[7, 11], &b[..9]).is_err());
    assert!(Mask::from_bools(&[7, 11], &keep[..76]).is_err());
    assert_eq!(Mask::ones(&[3, 70]).count_kept(), 210);
    assert_eq!(Mask::ones(&[3, 70]).sparsity(), 0.0);
}

#[test]
fn apply_zeroes_and_checks_shape() {
    let dev = Device::Cpu;
    let v = Var::from_tensor(&Tensor::ones((2, 3), candle_core::DType::F32, &dev).unwrap()).unwrap();
    let m = Mask::from_bools(&[2, 3], &[true, false, true, false, true, false]).unwrap();
    m.apply("w", &v).unwrap();
    assert_eq!(v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![1., 0., 1., 0., 1., 0.]);
    let m2 = Mask::ones(&[3, 2]);
    assert!(matches!(m2.apply("w", &v), Err(PruneError::ShapeMismatch { .. })));
}

#[test]
fn report_counts_prunable_and_model() {
    let mut ms = MaskSet::new();
    ms.insert("a", Mask::from_bools(&[2, 2], &[true, false, false, false]).unwrap());
    let r = ms.report(&shapes(&[("a", &[2, 2]), ("b", &[4])])).unwrap();
    assert_eq!(r.prunable_sparsity, 0.75);
    assert_eq!(r.model_sparsity, 3.0 / 8.0);
    assert!(r.table().contains("75.00%"));
    assert!(matches!(ms.report(&shapes(&[("b", &[4])])), Err(PruneError::UnknownParam(n)) if n == "a"));
}

#[test]
fn bad_inputs_are_errors() {
    let sh = shapes(&[("w", &[4, 6])]);
    let sc = ramp_scores(&sh);
    let g = Allocation::global();
    for s in [-0.1, 1.0, 1.5, f64::NAN] {
        assert!(matches!(prune(&sc, &sh, s, Granularity::Unstructured, &g, None), Err(PruneError::BadSparsity(_))));
    }
    assert!(matches!(prune(&sc, &sh, 0.75, Granularity::NM { n: 1, m: 4 }, &g, None), Err(PruneError::BadNm { .. })));
    assert!(matches!(prune(&sc, &sh, 0.5, Granularity::Block { r: 3, c: 2 }, &g, None), Err(PruneError::BlocksDoNotTile { .. })));
    assert!(matches!(prune(&sc, &sh, 0.5, Granularity::Heads { num_heads: 5, axis: 1 }, &g, None), Err(PruneError::HeadsDoNotDivide { .. })));
    let other = shapes(&[("v", &[4, 6])]);
    assert!(matches!(prune(&sc, &other, 0.5, Granularity::Unstructured, &g, None), Err(PruneError::UnknownParam(_))));
    let wrong = shapes(&[("w", &[5, 6])]);
    assert!(matches!(prune(&sc, &wrong, 0.5, Granularity::Unstructured, &g, None), Err(PruneError::ShapeMismatch { .. })));
    let kd = Allocation::erk().keeping_dense(["nope"]);
    assert!(matches!(prune(&sc, &sh, 0.5, Granularity::Unstructured, &kd, None), Err(PruneError::UnknownParam(_))));
    assert!("step:x".parse::<Rewind>().is_err());
    assert_eq!("step:500".parse::<Rewind>().unwrap(), Rewind::Step(500));
    assert!(Schedule::Imp { rounds: 11, rate: RoundRate::LinearOfOriginal(0.1), rewind: Rewind::Init }.validate().is_err());
}

#[test]
fn nm_keeps_best_n_of_every_m() {
    let sh = shapes(&[("w", &[2, 8])]);
    let sc: Scores = [("w".to_string(), vec![1., 5., 3., 2., 9., 0., 0.5, 8., 4., 4., 1., 7., 6., 2., 3., 1.])].into();
    let m = prune(&sc, &sh, 0.5, Granularity::NM { n: 2, m: 4 }, &Allocation::uniform(), None).unwrap();
    let bits: Vec<u8> = m.get("w").unwrap().to_bools().iter().map(|&b| b as u8).collect();
    assert_eq!(bits, vec![0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 1, 0]);
}

#[test]
fn blocks_rows_heads_are_whole() {
    let sh = shapes(&[("w", &[4, 6])]);
    let sc = ramp_scores(&sh);
    let m = prune(&sc, &sh, 0.5, Granularity::Block { r: 2, c: 3 }, &Allocation::uniform(), None).unwrap();
    let b = m.get("w").unwrap().to_bools();
    for br in 0..2 {
        for bc in 0..2 {
            let v: Vec<bool> = (0..2).flat_map(|r| (0..3).map(move |c| (br * 2 + r) * 6 + bc * 3 + c)).map(|i| b[i]).collect();
            assert!(v.iter().all(|x| *x == v[0]), "block {br},{bc} not uniform");
        }
    }
    assert_eq!(m.get("w").unwrap().count_kept(), 12);
    let m = prune(&sc, &sh, 0.5, Granularity::Rows, &Allocation::uniform(), None).unwrap();
    let b = m.get("w").unwrap().to_bools();
    for r in 0..4 {
        assert!(b[r * 6..r * 6 + 6].iter().all(|x| *x == b[r * 6]));
    }
    let m = prune(&sc, &sh, 0.5, Granularity::Heads { num_heads: 3, axis: 1 }, &Allocation::uniform(), None).unwrap();
    let b = m.get("w").unwrap().to_bools();
    for h in 0..3 {
        let v: Vec<bool> = (0..4).flat_map(|r| (0..2).map(move |c| r * 6 + h * 2 + c)).map(|i| b[i]).collect();
        assert!(v.iter().all(|x| *x == v[0]));
    }
}

#[test]
fn erk_densities_follow_the_formula_and_budget() {
    let sh = shapes(&[("a", &[300, 784]), ("b", &[100, 300]), ("c", &[10, 100])]);
    let a = Allocation::erk();
    let d = a.densities(&sh, 0.9).unwrap();
    let n = |s: &[usize]| s.iter().product::<usize>() as f64;
    let kept: f64 = sh.iter().map(|(k, s)| d[k] * n(s)).sum();
    let total: f64 = sh.iter().map(|(_, s)| n(s)).sum();
    assert!((kept / total - 0.1).abs() < 1e-9);
    // Uncapped layers: density ratio equals the raw ratio.
    let raw = |s: &[usize]| (s[0] + s[1]) as f64 / n(s);
    assert!((d["a"] / d["b"] - raw(&sh[0].1) / raw(&sh[1].1)).abs() < 1e-9 || d["b"] == 1.0);
    assert!(d["c"] <= 1.0);
    // keep dense: counted in the budget
    let d2 = Allocation::er().keeping_dense(["c"]).densities(&sh, 0.9).unwrap();
    assert_eq!(d2["c"], 1.0);
    let kept2: f64 = sh.iter().map(|(k, s)| d2[k] * n(s)).sum();
    assert!((kept2 / total - 0.1).abs() < 1e-9);
    assert!(matches!(Allocation::uniform().keeping_dense(["a"]).densities(&sh, 0.5), Err(PruneError::Infeasible { .. })));
}

#[test]
fn global_is_one_threshold() {
    let sh = shapes(&[("a", &[10, 10]), ("b", &[5, 4])]);
    let sc = ramp_scores(&sh);
    let m = prune(&sc, &sh, 0.7, Granularity::Unstructured, &Allocation::global(), None).unwrap();
    assert_eq!(m.count_kept(), 36);
    let mut min_kept = f32::INFINITY;
    let mut max_pruned = f32::NEG_INFINITY;
    for (n, _) in &sh {
        let mk = m.get(n).unwrap();
        for (i, s) in sc[n].iter().enumerate() {
            if mk.get(i) { min_kept = min_kept.min(*s) } else { max_pruned = max_pruned.max(*s) }
        }
    }
    assert!(min_kept >= max_pruned);
}

#[test]
fn schedules() {
    let g = Schedule::Gradual { initial: 0.0, final_sparsity: 0.9, start: 100, end: 1100, frequency: 100 };
    g.validate().unwrap();
    assert_eq!(g.sparsity_at(0), 0.0);
    assert_eq!(g.sparsity_at(100), 0.0);
    assert!((g.sparsity_at(600) - 0.9 * (1.0 - 0.125)).abs() < 1e-12);
    assert_eq!(g.sparsity_at(650), g.sparsity_at(600));
    assert!((g.sparsity_at(5000) - 0.9).abs() < 1e-12);
    assert!(g.is_update_step(300) && !g.is_update_step(350));
    let imp = Schedule::Imp { rounds: 10, rate: RoundRate::FractionOfRemaining(0.2), rewind: Rewind::Init };
    assert!((1.0 - imp.round_sparsity(10).unwrap() - 0.107374).abs() < 1e-6);
    let bt = Schedule::Imp { rounds: 9, rate: RoundRate::LinearOfOriginal(0.1), rewind: Rewind::Step(1000) };
    assert!((bt.round_sparsity(3).unwrap() - 0.3).abs() < 1e-12);
    let one = Schedule::OneShot { sparsity: 0.5, step: 10 };
    assert_eq!((one.sparsity_at(9), one.sparsity_at(10)), (0.0, 0.5));
}

#[test]
fn same_seed_same_masks_bit_for_bit() {
    let dev = Device::Cpu;
    let params: Vec<(String, Var)> = [("l1.weight", (300usize, 784usize)), ("l2.weight", (100, 300)), ("l3.weight", (10, 100))]
        .iter()
        .map(|(n, s)| (n.to_string(), Var::zeros(*s, candle_core::DType::F32, &dev).unwrap()))
        .collect();
    let sh: Vec<(String, Vec<usize>)> = params.iter().map(|(n, v)| (n.clone(), v.dims().to_vec())).collect();
    let mk = |seed| prune(&criteria::random(&params, seed), &sh, 0.9, Granularity::Unstructured, &Allocation::erk(), None).unwrap();
    let (a, b, c) = (mk(7), mk(7), mk(8));
    assert_eq!(a.sha256(), b.sha256());
    assert_ne!(a.sha256(), c.sha256());
    assert_eq!(a, b);
    // the selector picks weights only
    let all = vec![params[0].clone(), ("l1.bias".to_string(), Var::zeros(300, candle_core::DType::F32, &dev).unwrap())];
    assert_eq!(Selector::weights().select(&all).len(), 1);
    assert_eq!(Selector::all().excluding(["l1.w"]).select(&all).len(), 1);
    assert_eq!(MaskSet::ones_for(&params).sparsity(), 0.0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn realised_sparsity_matches_target(rows in 1usize..20, cols in 1usize..40, s in 0.0f64..0.99, seed in 0u64..1000, global in any::<bool>()) {
        let sh = vec![("w".to_string(), vec![rows, cols]), ("v".to_string(), vec![cols])];
        let mut rng = seed;
        let sc: Scores = sh.iter().map(|(n, s)| (n.clone(), (0..s.iter().product::<usize>()).map(|_| { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (rng >> 40) as f32 }).collect())).collect();
        let alloc = if global { Allocation::global() } else { Allocation::uniform() };
        let m = prune(&sc, &sh, s, Granularity::Unstructured, &alloc, None).unwrap();
        let total = rows * cols + cols;
        let want = (1.0 - s) * total as f64;
        // global: exact to rounding; uniform: rounding per tensor
        prop_assert!((m.count_kept() as f64 - want).abs() <= 2.0);
        // pruning again with the mask as current never revives a weight
        let s2 = (s + 0.5 * (1.0 - s)).min(0.99);
        let m2 = prune(&sc, &sh, s2, Granularity::Unstructured, &alloc, Some(&m)).unwrap();
        for (n, mk) in m2.iter() {
            let old = m.get(n).unwrap();
            for i in 0..mk.len() { prop_assert!(!mk.get(i) || old.get(i)); }
        }
    }

    #[test]
    fn nm_every_group_has_n(rows in 1usize..8, groups in 1usize..8, n in 1usize..4) {
        let m_ = 4usize;
        let sh = vec![("w".to_string(), vec![rows, groups * m_])];
        let sc: Scores = [("w".to_string(), (0..rows * groups * m_).map(|i| ((i * 37) % 11) as f32).collect())].into();
        let s = 1.0 - n as f64 / m_ as f64;
        let mask = prune(&sc, &sh, s, Granularity::NM { n, m: m_ }, &Allocation::global(), None).unwrap();
        let b = mask.get("w").unwrap().to_bools();
        for chunk in b.chunks(m_) { prop_assert_eq!(chunk.iter().filter(|x| **x).count(), n); }
    }

    #[test]
    fn mask_bytes_roundtrip(bits in proptest::collection::vec(any::<bool>(), 0..300)) {
        let m = Mask::from_bools(&[bits.len()], &bits).unwrap();
        prop_assert_eq!(Mask::from_bytes(&[bits.len()], &m.to_bytes()).unwrap().to_bools(), bits.clone());
        prop_assert_eq!(m.count_kept(), bits.iter().filter(|b| **b).count());
    }
}

#[test]
fn exact_zero_check_names_the_tensor_and_the_first_offender() {
    let dev = Device::Cpu;
    let m = Mask::from_bools(&[2, 3], &[true, false, true, false, true, false]).unwrap();
    let mut ms = MaskSet::new();
    ms.insert("w", m.clone());
    let var = |v: Vec<f32>| Var::from_vec(v, (2, 3), &dev).unwrap();
    assert!(ms.check_pruned_zero(&[("w".into(), var(vec![1., 0., -2., 0., 3., 0.]))]).is_ok());
    let e = ms.check_pruned_zero(&[("w".into(), var(vec![1., 0., 2., 1e-30, 3., 7.]))]).unwrap_err();
    assert!(matches!(&e, PruneError::PrunedNonZero { name, index: 3, value } if name == "w" && *value == 1e-30f32 as f64), "{e}");
    assert!(e.to_string().contains("`w`[3]"), "{e}");
    // NaN at a pruned position is non-zero; NaN or inf at a kept one is non-finite.
    assert!(matches!(ms.check_pruned_zero(&[("w".into(), var(vec![1., f32::NAN, 2., 0., 3., 0.]))]), Err(PruneError::PrunedNonZero { index: 1, .. })));
    assert!(matches!(ms.check_pruned_zero(&[("w".into(), var(vec![1., 0., f32::INFINITY, 0., 3., 0.]))]), Err(PruneError::NonFinite { index: 2, .. })));
    assert!(matches!(ms.check_pruned_zero(&[("v".into(), var(vec![0.; 6]))]), Err(PruneError::UnknownParam(n)) if n == "w"));
    assert!(matches!(m.check_pruned_zero("w", &Tensor::zeros((3, 2), candle_core::DType::F32, &dev).unwrap()), Err(PruneError::ShapeMismatch { .. })));
}

#[test]
fn masks_are_kernel_bitmasks_without_a_bool_pass() {
    let keep: Vec<bool> = (0..4 * 2 * 9).map(|i| (i * 7) % 5 < 2).collect();
    let m = Mask::from_bools(&[4, 2, 9], &keep).unwrap();
    let b = m.to_bitmask().unwrap();
    assert_eq!((b.rows(), b.cols()), (4, 18));
    assert_eq!(b.to_bools(), keep);
    assert_eq!(b.words(), m.words());
    assert_eq!(Mask::from_bitmask(&[4, 2, 9], &b).unwrap(), m);
    assert!(Mask::from_bitmask(&[5, 18], &b).is_err());
    assert_eq!(m.clone().into_bitmask().unwrap(), b);
    let v = Mask::from_bools(&[3], &[true, false, true]).unwrap().to_bitmask().unwrap();
    assert_eq!((v.rows(), v.cols(), v.count_ones()), (1, 3, 2));
    let mut ms = MaskSet::new();
    ms.insert("a", m);
    assert_eq!(ms.to_bitmasks().unwrap()["a"], b);
}

#[test]
fn granularity_follows_the_kernel_format() {
    use sprig_kernels::candle::Format;
    assert_eq!(Granularity::from_format_name("csr").unwrap(), Granularity::Unstructured);
    assert_eq!(Granularity::from_format_name("bsr4x1").unwrap(), Granularity::Block { r: 4, c: 1 });
    assert_eq!(Granularity::from_format_name("2:4").unwrap(), Granularity::NM { n: 2, m: 4 });
    assert_eq!(Granularity::from(Format::Bsr(1, 4)), Granularity::Block { r: 1, c: 4 });
    for bad in ["coo", "bsr4", "bsrx4", "2:", "a:b", ""] {
        assert!(matches!(Granularity::from_format_name(bad), Err(PruneError::BadName { .. })), "{bad}");
    }
}
