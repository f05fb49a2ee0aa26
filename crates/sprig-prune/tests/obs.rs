//! Block OBS (oBERT, Kurtic et al. 2022) against brute-force solves of the quadratic model
//! L(w) = ½ (w − w*)ᵀ F (w − w*), F = λI + GᵀG/m; B = 1 against the diagonal Fisher; determinism;
//! the Pruner's gradual oBERT; bad configurations.
use std::collections::BTreeMap;

use candle_core::{Device, Tensor, Var};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sprig_prune::obs::{self, GradWindow};
use sprig_prune::{Criterion, GradAccumulator, Inputs, Mask, MaskSet, PruneError, Pruner, PrunerConfig, Schedule};

fn rand_vec(n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
}

fn var(v: Vec<f32>, shape: &[usize]) -> Var {
    Var::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn one(name: &str, m: Mask) -> MaskSet {
    let mut s = MaskSet::new();
    s.insert(name, m);
    s
}

fn values(v: &Var) -> Vec<f32> {
    v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
}

/// A window of `m` seeded random gradients for one tensor `name` of `n` weights; also returns them.
fn window(name: &str, n: usize, m: usize, rng: &mut ChaCha8Rng) -> (GradWindow, Vec<Vec<f32>>) {
    let mut w = GradWindow::new(m).unwrap();
    let gs: Vec<Vec<f32>> = (0..m).map(|_| rand_vec(n, rng)).collect();
    for g in &gs {
        w.push(BTreeMap::from([(name.to_string(), g.clone())])).unwrap();
    }
    (w, gs)
}

/// F = λI + (1/m) Σ g gᵀ over the coordinates `idx`, in f64.
fn fisher(gs: &[Vec<f32>], idx: &[usize], lam: f64) -> Vec<Vec<f64>> {
    let m = gs.len() as f64;
    idx.iter()
        .map(|&a| idx.iter().map(|&b| gs.iter().map(|g| g[a] as f64 * g[b] as f64).sum::<f64>() / m + if a == b { lam } else { 0.0 }).collect())
        .collect()
}

/// Solves A x = b by Gauss–Jordan elimination with partial pivoting (independent of the crate's Cholesky).
fn solve(a: &[Vec<f64>], b: &[f64]) -> Vec<f64> {
    let n = b.len();
    let mut m: Vec<Vec<f64>> = a.iter().zip(b).map(|(r, &bi)| r.iter().copied().chain([bi]).collect()).collect();
    for c in 0..n {
        let p = (c..n).max_by(|&i, &j| m[i][c].abs().total_cmp(&m[j][c].abs())).unwrap();
        m.swap(c, p);
        for r in 0..n {
            if r != c {
                let f = m[r][c] / m[c][c];
                let pivot = m[c].clone();
                m[r].iter_mut().zip(&pivot).skip(c).for_each(|(x, p)| *x -= f * p);
            }
        }
    }
    (0..n).map(|i| m[i][n] / m[i][i]).collect()
}

fn quad(h: &[Vec<f64>], d: &[f64]) -> f64 {
    0.5 * (0..d.len()).map(|a| (0..d.len()).map(|b| d[a] * h[a][b] * d[b]).sum::<f64>()).sum::<f64>()
}

/// Brute force per block: the constrained minimum of ½ δᵀ F_S δ with δ_Q = −w_Q (F restricted to
/// the block's kept coordinates S), i.e. δ_R = F_RR⁻¹ F_RQ w_Q. Returns new weights and Σ loss increase.
fn brute_force(w: &[f32], gs: &[Vec<f32>], before: &Mask, after: &Mask, block: usize, lam: f64) -> (Vec<f64>, f64) {
    let blocks: Vec<Vec<usize>> = (0..w.len()).step_by(block).map(|s| (s..(s + block).min(w.len())).collect()).collect();
    brute_force_blocks(w, gs, before, after, &blocks, lam)
}

/// [`brute_force`] over blocks given as lists of flat indices.
fn brute_force_blocks(w: &[f32], gs: &[Vec<f32>], before: &Mask, after: &Mask, blocks: &[Vec<usize>], lam: f64) -> (Vec<f64>, f64) {
    let mut out: Vec<f64> = w.iter().map(|&x| x as f64).collect();
    let mut total = 0.0;
    for block in blocks {
        let s: Vec<usize> = block.iter().copied().filter(|&i| before.get(i)).collect();
        let q: Vec<usize> = s.iter().copied().filter(|&i| !after.get(i)).collect();
        if q.is_empty() {
            continue;
        }
        let r: Vec<usize> = s.iter().copied().filter(|&i| after.get(i)).collect();
        let f_rr = fisher(gs, &r, lam);
        let full = fisher(gs, &s, lam);
        let pos = |i: usize| s.iter().position(|&x| x == i).unwrap();
        let rhs: Vec<f64> = r.iter().map(|&a| q.iter().map(|&b| full[pos(a)][pos(b)] * w[b] as f64).sum()).collect();
        let dr = if r.is_empty() { vec![] } else { solve(&f_rr, &rhs) };
        let mut delta = vec![0.0; s.len()];
        for (k, &i) in r.iter().enumerate() {
            delta[pos(i)] = dr[k];
            out[i] += dr[k];
        }
        for &i in &q {
            delta[pos(i)] = -(w[i] as f64);
            out[i] = 0.0;
        }
        total += quad(&full, &delta);
    }
    (out, total)
}

type Setup = (Vec<(String, Var)>, GradWindow, Vec<Vec<f32>>, Mask, Mask);

/// Tensor "w" of 2 x 6 = 12 weights, blocks of 5 (5, 5 and a partial 2); weight 1 already pruned.
fn setup(m: usize, seed: u64) -> Setup {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut w0 = rand_vec(12, &mut rng);
    w0[1] = 0.0;
    let (win, gs) = window("w", 12, m, &mut rng);
    let mut before = Mask::ones(&[2, 6]);
    before.set(1, false);
    let mut after = before.clone();
    for i in [0, 3, 7, 10] {
        after.set(i, false);
    }
    (vec![("w".to_string(), var(w0, &[2, 6]))], win, gs, before, after)
}

#[test]
fn update_is_the_constrained_minimum_and_saliency_the_loss_increase() {
    let lam = 0.1;
    // m < B (Woodbury path) and m >= B (the small F factorised directly).
    for m in [3, 8] {
        let (params, win, gs, before, after) = setup(m, 7 + m as u64);
        let w0 = values(&params[0].1);
        let (want, rise) = brute_force(&w0, &gs, &before, &after, 5, lam);
        let b = one("w", before.clone());
        let a = one("w", after.clone());
        let up = obs::update(&win, &params, &b, &a, 5, lam).unwrap();
        let got = values(&params[0].1);
        assert_eq!(up.pruned, 4);
        for i in 0..12 {
            assert!((got[i] as f64 - want[i]).abs() < 1e-5 * want[i].abs().max(1.0), "m {m}, weight {i}: {} vs {}", got[i], want[i]);
        }
        for i in [0, 1, 3, 7, 10] {
            assert_eq!(got[i].to_bits(), 0, "weight {i} must be exactly +0");
        }
        assert!((up.saliency - rise).abs() < 1e-6 * rise.max(1.0), "m {m}: ρ_Q {} vs loss increase {rise}", up.saliency);
        // The update beats plain masking on the quadratic model.
        let (_, mask_only) = {
            let mut t = 0.0;
            for start in (0..12).step_by(5) {
                let s: Vec<usize> = (start..(start + 5).min(12)).filter(|&i| before.get(i)).collect();
                let d: Vec<f64> = s.iter().map(|&i| if after.get(i) { 0.0 } else { -(w0[i] as f64) }).collect();
                t += quad(&fisher(&gs, &s, lam), &d);
            }
            ((), t)
        };
        assert!(rise < mask_only, "m {m}: {rise} !< {mask_only}");
    }
}

/// Tensor "w" of 4 x 6 in 2x1 tiles (a 2 x 6 tile grid) with B = 5: blocks of two whole tiles
/// (4 weights), taken row-major over the tile grid; listed here independently of the crate.
fn tile_blocks() -> Vec<Vec<usize>> {
    let tile = |t: usize| {
        let (row0, col) = ((t / 6) * 2, t % 6);
        [row0 * 6 + col, (row0 + 1) * 6 + col]
    };
    (0..6).map(|b| tile(2 * b).into_iter().chain(tile(2 * b + 1)).collect()).collect()
}

#[test]
fn tiled_blocks_score_each_tile_jointly_and_update_as_the_constrained_minimum() {
    let lam = 0.07;
    let blocks = obs::Blocks { size: 5, tile: Some((2, 1)) };
    for m in [2, 9] {
        let mut rng = ChaCha8Rng::seed_from_u64(31 + m as u64);
        let w0 = rand_vec(24, &mut rng);
        let (win, gs) = window("w", 24, m, &mut rng);
        let params = vec![("w".to_string(), var(w0.clone(), &[4, 6]))];
        // Tile 3 (rows 0-1 of column 3: weights 3 and 9) already pruned.
        let mut before = Mask::ones(&[4, 6]);
        for i in [3, 9] {
            before.set(i, false);
        }
        let s = obs::scores(&win, &params, Some(&one("w", before.clone())), blocks, lam).unwrap();
        // Each kept tile's score is ρ_Q, the loss increase of removing it alone from its block.
        for (b, block) in tile_blocks().iter().enumerate() {
            for tile in block.chunks(2) {
                if !before.get(tile[0]) {
                    assert_eq!((s["w"][tile[0]], s["w"][tile[1]]), (0.0, 0.0), "a pruned tile scores 0");
                    continue;
                }
                let mut after = before.clone();
                tile.iter().for_each(|&i| after.set(i, false));
                let (_, rise) = brute_force_blocks(&w0, &gs, &before, &after, &tile_blocks()[b..=b], lam);
                for &i in tile {
                    assert!((s["w"][i] as f64 - rise).abs() < 1e-5 * rise.max(1e-3), "m {m}, weight {i}: {} vs ρ_Q {rise}", s["w"][i]);
                }
            }
        }
        // Two tiles of two blocks pruned together: every block moves to its constrained minimum.
        let mut after = before.clone();
        for i in [0, 6, 13, 19] {
            after.set(i, false);
        }
        let (want, rise) = brute_force_blocks(&w0, &gs, &before, &after, &tile_blocks(), lam);
        let up = obs::update(&win, &params, &one("w", before.clone()), &one("w", after), blocks, lam).unwrap();
        let got = values(&params[0].1);
        assert_eq!(up.pruned, 4);
        for i in 0..24 {
            assert!((got[i] as f64 - want[i]).abs() < 1e-5 * want[i].abs().max(1.0), "m {m}, weight {i}: {} vs {}", got[i], want[i]);
        }
        assert!((up.saliency - rise).abs() < 1e-6 * rise.max(1.0), "m {m}: {} vs {rise}", up.saliency);
    }
    // Tiles that do not divide the tensor are refused with its name.
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (win, _) = window("w", 24, 2, &mut rng);
    let params = vec![("w".to_string(), var(rand_vec(24, &mut rng), &[4, 6]))];
    let bad = obs::Blocks { size: 5, tile: Some((3, 1)) };
    assert!(matches!(obs::scores(&win, &params, None, bad, lam), Err(PruneError::BlocksDoNotTile { .. })));
}

#[test]
fn single_weight_saliency_is_eq_4_on_the_kept_coordinates() {
    let lam = 0.05;
    for m in [2, 9] {
        let (params, win, gs, before, _) = setup(m, 100 + m as u64);
        let w0 = values(&params[0].1);
        let masks = one("w", before.clone());
        let s = obs::scores(&win, &params, Some(&masks), 5, lam).unwrap();
        for start in (0..12).step_by(5) {
            let kept: Vec<usize> = (start..(start + 5).min(12)).filter(|&i| before.get(i)).collect();
            let f = fisher(&gs, &kept, lam);
            for (t, &i) in kept.iter().enumerate() {
                let e: Vec<f64> = (0..kept.len()).map(|k| if k == t { 1.0 } else { 0.0 }).collect();
                let finv_ii = solve(&f, &e)[t];
                let want = (w0[i] as f64).powi(2) / (2.0 * finv_ii);
                assert!((s["w"][i] as f64 - want).abs() < 1e-5 * want.max(1e-3), "m {m}, weight {i}: {} vs {want}", s["w"][i]);
            }
        }
        assert_eq!(s["w"][1], 0.0, "a pruned weight scores 0");
    }
}

#[test]
fn block_one_is_the_diagonal_fisher() {
    // L = Σ_i c_i w_i with a new c per step: g = c.
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let w = var(rand_vec(40, &mut rng), &[5, 8]);
    let params = vec![("w".to_string(), w.clone())];
    let mut acc = GradAccumulator::for_criterion(Criterion::Fisher).unwrap();
    let mut win = GradWindow::new(6).unwrap();
    for _ in 0..6 {
        let c = Tensor::from_vec(rand_vec(40, &mut rng), (5, 8), &Device::Cpu).unwrap();
        let g = (w.as_tensor() * c).unwrap().sum_all().unwrap().backward().unwrap();
        acc.update(&params, &g).unwrap();
        win.update(&params, &g).unwrap();
    }
    let diag = acc.fisher(&params, 0.01).unwrap();
    let blocks = obs::scores(&win, &params, None, 1, 0.01).unwrap();
    for i in 0..40 {
        assert!((diag["w"][i] - blocks["w"][i]).abs() <= 1e-5 * diag["w"][i].abs(), "{i}: {} vs {}", diag["w"][i], blocks["w"][i]);
    }
    let rank = |s: &[f32]| {
        let mut o: Vec<usize> = (0..s.len()).collect();
        o.sort_by(|&a, &b| s[a].total_cmp(&s[b]));
        o
    };
    assert_eq!(rank(&diag["w"]), rank(&blocks["w"]));
    // Through the one signature too.
    let opts = sprig_prune::ScoreOptions { fisher_damp: 0.01, ..Default::default() };
    let via = Criterion::Obs { block: 1, grads: 6 }.scores(&params, None, &mut Inputs::none().with_grad_window(&win), &opts).unwrap();
    assert_eq!(via, blocks);
}

#[test]
fn scores_and_updates_are_bit_identical_across_runs_and_thread_counts() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let n = 6 * 70;
    let w0 = rand_vec(n, &mut rng);
    let (win, _) = window("w", n, 4, &mut rng);
    let mut after = Mask::ones(&[6, 70]);
    for i in (0..n).step_by(3) {
        after.set(i, false);
    }
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let params = vec![("w".to_string(), var(w0.clone(), &[6, 70]))];
            let s = obs::scores(&win, &params, None, 50, 1e-3).unwrap();
            let a = one("w", after.clone());
            obs::update(&win, &params, &MaskSet::ones_for(&params), &a, 50, 1e-3).unwrap();
            (s["w"].iter().map(|x| x.to_bits()).collect::<Vec<_>>(), values(&params[0].1).iter().map(|x| x.to_bits()).collect::<Vec<_>>())
        })
    };
    let one = run(1);
    assert_eq!(one, run(1));
    assert_eq!(one, run(3));
}

/// A loss whose gradients change every step: L = Σ (w − t)² ⊙ c_step.
fn train_step(params: &[(String, Var)], rng: &mut ChaCha8Rng) -> candle_core::backprop::GradStore {
    let mut loss = Tensor::new(0f32, &Device::Cpu).unwrap();
    for (_, v) in params {
        let c = Tensor::from_vec(rand_vec(v.elem_count(), rng), v.dims(), &Device::Cpu).unwrap().abs().unwrap();
        loss = (loss + (v.as_tensor() - 0.3).unwrap().sqr().unwrap().mul(&c).unwrap().sum_all().unwrap()).unwrap();
    }
    loss.backward().unwrap()
}

#[test]
fn pruner_gradual_obert_reaches_target_with_exact_zeros() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let params = vec![("a".to_string(), var(rand_vec(8 * 25, &mut rng), &[8, 25])), ("b".to_string(), var(rand_vec(4 * 60, &mut rng), &[4, 60]))];
    let mut cfg = PrunerConfig::obert(0.8, 2, 12, 2);
    cfg.criterion = Criterion::Obs { block: 20, grads: 8 };
    let mut pr = Pruner::for_params(cfg, &params).unwrap();
    let mut events = 0;
    for step in 0..=14 {
        let g = train_step(&params, &mut rng);
        pr.observe(&params, &g).unwrap();
        // SGD step, then the mask (what the mask-aware optimizer does).
        for (_, v) in &params {
            v.set(&(v.as_tensor() - (g.get(v.as_tensor()).unwrap() * 0.01).unwrap()).unwrap()).unwrap();
        }
        pr.masks().apply(&params).unwrap();
        let before: Vec<Vec<f32>> = params.iter().map(|(_, v)| values(v)).collect();
        if let Some(m) = pr.step(step, &params, &mut Inputs::none()).unwrap() {
            let m = m.clone();
            let up = pr.obs_update(&params).unwrap().expect("a pending OBS update");
            assert!(up.pruned > 0 && up.saliency >= 0.0);
            m.check_pruned_zero(&params).unwrap();
            assert_ne!(before, params.iter().map(|(_, v)| values(v)).collect::<Vec<_>>(), "kept weights moved");
            assert_eq!(pr.obs_update(&params).unwrap(), None, "nothing pending twice");
            events += 1;
        }
    }
    assert!(events >= 5, "{events} pruning events");
    assert!((pr.sparsity() - 0.8).abs() < 0.01, "sparsity {}", pr.sparsity());
    pr.masks().check_pruned_zero(&params).unwrap();
    // Other criteria: obs_update is a no-op.
    let mut gmp = Pruner::for_params(PrunerConfig::gmp(0.5, 0, 2, 1), &params).unwrap();
    gmp.step(2, &params, &mut Inputs::none()).unwrap();
    assert_eq!(gmp.obs_update(&params).unwrap(), None);
}

#[test]
fn bad_configurations_are_errors() {
    let shapes = vec![("w".to_string(), vec![4, 10])];
    let cfg = |block, grads| {
        let mut c = PrunerConfig::obert(0.5, 0, 10, 2);
        c.criterion = Criterion::Obs { block, grads };
        c
    };
    assert!(Pruner::new(cfg(10, 4), shapes.clone()).is_ok());
    assert!(matches!(Pruner::new(cfg(0, 4), shapes.clone()), Err(PruneError::BadValue { what, .. }) if what.contains("block")));
    assert!(matches!(Pruner::new(cfg(10, 0), shapes.clone()), Err(PruneError::BadValue { what, .. }) if what.contains("gradient count")));
    let mut undamped = cfg(10, 4);
    undamped.options.fisher_damp = 0.0;
    assert!(matches!(Pruner::new(undamped, shapes.clone()), Err(PruneError::BadValue { what, .. }) if what.contains("dampening")));
    assert!(matches!(GradWindow::new(0), Err(PruneError::BadValue { .. })));
    let params = vec![("w".to_string(), var(vec![0.5; 40], &[4, 10]))];
    let empty = GradWindow::new(3).unwrap();
    assert!(matches!(obs::scores(&empty, &params, None, 10, 1e-3), Err(PruneError::MissingInput { .. })));
    assert!(matches!(obs::scores(&empty, &params, None, 0, 1e-3), Err(PruneError::BadValue { .. })));
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (short, _) = window("w", 30, 2, &mut rng);
    assert!(matches!(obs::scores(&short, &params, None, 10, 1e-3), Err(PruneError::ShapeMismatch { .. })));
    // Without gradients the pruner says what is missing.
    let mut pr = Pruner::new(PrunerConfig::new(Criterion::Obs { block: 10, grads: 4 }, Schedule::OneShot { sparsity: 0.5, step: 0 }).seed(0), shapes.clone());
    assert!(pr.is_err(), "λ = 0 by default in PrunerConfig::new");
    let mut c = PrunerConfig::new(Criterion::Obs { block: 10, grads: 4 }, Schedule::OneShot { sparsity: 0.5, step: 0 });
    c.options.fisher_damp = 1e-4;
    pr = Pruner::new(c, shapes);
    assert!(matches!(pr.unwrap().one_shot(&params, &mut Inputs::none()), Err(PruneError::MissingInput { criterion: "obs", .. })));
    // Names parse back; bad names are errors.
    for c in [Criterion::Obs { block: 50, grads: 32 }, Criterion::Obs { block: 4, grads: 1 }, Criterion::Fisher] {
        assert_eq!(c.name().parse::<Criterion>().unwrap(), c);
    }
    assert_eq!("OBS".parse::<Criterion>().unwrap(), Criterion::Obs { block: Criterion::OBERT_BLOCK, grads: Criterion::OBERT_GRADS });
    assert_eq!("obs:8".parse::<Criterion>().unwrap(), Criterion::Obs { block: 8, grads: Criterion::OBERT_GRADS });
    for bad in ["obs:x", "obs:1:2:3", "obsx"] {
        assert!(matches!(bad.parse::<Criterion>(), Err(PruneError::BadName { .. })), "{bad}");
    }
    // serde: unit criteria keep their plain-string form; OBS is a small table with defaults.
    assert_eq!(serde_json::to_string(&Criterion::Magnitude).unwrap(), "\"magnitude\"");
    let c: Criterion = serde_json::from_str(r#"{"obs":{"block":25}}"#).unwrap();
    assert_eq!(c, Criterion::Obs { block: 25, grads: Criterion::OBERT_GRADS });
    let cfg = PrunerConfig::obert(0.9, 0, 100, 10);
    assert_eq!(serde_json::from_str::<PrunerConfig>(&serde_json::to_string(&cfg).unwrap()).unwrap(), cfg);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// On the quadratic model the OBS update never loses to plain masking, zeroes Q exactly and
    /// leaves weights pruned before at 0, whatever the block size, window and masks.
    #[test]
    fn update_beats_masking(seed in 0u64..10_000, block in 1usize..9, m in 1usize..7, lam in 0.01f64..1.0) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = 21;
        let mut w0 = rand_vec(n, &mut rng);
        let (win, gs) = window("w", n, m, &mut rng);
        let mut before = Mask::ones(&[3, 7]);
        let mut after = Mask::ones(&[3, 7]);
        for (i, x) in w0.iter_mut().enumerate() {
            let u = rng.random::<f32>();
            if u < 0.2 {
                before.set(i, false);
                after.set(i, false);
                *x = 0.0;
            } else if u < 0.5 {
                after.set(i, false);
            }
        }
        let params = vec![("w".to_string(), var(w0.clone(), &[3, 7]))];
        let up = obs::update(&win, &params, &one("w", before.clone()), &one("w", after.clone()), block, lam).unwrap();
        let got = values(&params[0].1);
        let mut masked = 0.0;
        let mut obs_loss = 0.0;
        for start in (0..n).step_by(block) {
            let s: Vec<usize> = (start..(start + block).min(n)).filter(|&i| before.get(i)).collect();
            let f = fisher(&gs, &s, lam);
            let dm: Vec<f64> = s.iter().map(|&i| if after.get(i) { 0.0 } else { -(w0[i] as f64) }).collect();
            let dobs: Vec<f64> = s.iter().map(|&i| got[i] as f64 - w0[i] as f64).collect();
            masked += quad(&f, &dm);
            obs_loss += quad(&f, &dobs);
        }
        prop_assert!(obs_loss <= masked * (1.0 + 1e-5) + 1e-9, "{} > {}", obs_loss, masked);
        prop_assert!((up.saliency - obs_loss).abs() <= 1e-4 * obs_loss.max(1e-3));
        for (i, x) in got.iter().enumerate() {
            if !after.get(i) {
                prop_assert_eq!(*x, 0.0);
            }
        }
    }
}
