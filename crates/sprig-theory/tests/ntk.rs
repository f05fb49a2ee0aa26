//! Empirical NTK: explicit and finite-difference Jacobians, the pruned path, width scaling, errors.
use sprig_theory::ntk::{self, empirical_ntk, empirical_ntk_with, jacobian, relative_frobenius, NtkMlp, NtkOptions, NtkSweepConfig, PruneMask};
use sprig_theory::TheoryError;

fn inputs(n: usize, d: usize, seed: u64) -> Vec<f32> {
    // deterministic, well spread, no exact zeros
    (0..n * d).map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 500.0 - 1.0) + 0.0013).collect()
}

/// `Θ` from the explicit Jacobian: `J Jᵀ`.
fn gram(j: &[f32], n: usize) -> Vec<f64> {
    let p = j.len() / n;
    let mut g = vec![0f64; n * n];
    for a in 0..n {
        for b in 0..n {
            g[a * n + b] = (0..p).map(|k| j[a * p + k] as f64 * j[b * p + k] as f64).sum();
        }
    }
    g
}

#[test]
fn jacobian_matches_finite_differences_and_ntk_matches_jacobian() {
    let (n, d) = (3, 4);
    let mlp = NtkMlp::new(d, 5, 2, 7).unwrap();
    let x = inputs(n, d, 1);
    let j = jacobian(&mlp, &x, n, None, 1 << 20).unwrap();
    let p = mlp.num_params();
    assert_eq!(j.len(), n * p);
    // central differences on every weight (f32: eps 1e-2 on N(0,1) weights)
    let eps = 1e-2f32;
    let mut max_err = 0f32;
    let mut off = 0;
    for l in 0..mlp.weights().len() {
        for k in 0..mlp.weights()[l].len() {
            let mut plus = mlp.clone();
            plus.weights_mut()[l][k] += eps;
            let mut minus = mlp.clone();
            minus.weights_mut()[l][k] -= eps;
            let (fp, fm) = (plus.forward(&x, n, None).unwrap(), minus.forward(&x, n, None).unwrap());
            for i in 0..n {
                let fd = (fp[i] - fm[i]) / (2.0 * eps);
                max_err = max_err.max((fd - j[i * p + off + k]).abs());
            }
        }
        off += mlp.weights()[l].len();
    }
    assert!(max_err < 2e-3, "Jacobian vs finite differences: max error {max_err}");
    let theta = empirical_ntk(&mlp, &x, n, None).unwrap();
    let want = gram(&j, n);
    assert!(relative_frobenius(&theta, &want) < 1e-5, "{theta:?} vs {want:?}");
    // symmetric and positive on the diagonal
    for a in 0..n {
        assert!(theta[a * n + a] > 0.0);
        for b in 0..n {
            assert!((theta[a * n + b] - theta[b * n + a]).abs() < 1e-9);
        }
    }
}

#[test]
fn pruned_ntk_matches_explicit_masked_jacobian() {
    let (n, d) = (4, 6);
    let mlp = NtkMlp::new(d, 8, 2, 3).unwrap();
    let x = inputs(n, d, 2);
    for rescale in [false, true] {
        let mask = PruneMask::random(&mlp, 0.6, rescale, 11).unwrap();
        // tiny chunks so the chunked path flushes many times
        let opts = NtkOptions { chunk_bytes: 4 * n as u64 * 3, ..Default::default() };
        let theta = empirical_ntk_with(&mlp, &x, n, Some(&mask), opts).unwrap();
        let want = gram(&jacobian(&mlp, &x, n, Some(&mask), 1 << 20).unwrap(), n);
        assert!(relative_frobenius(&theta, &want) < 1e-5, "rescale {rescale}");
        // pruned Jacobian entries are exactly zero
        let j = jacobian(&mlp, &x, n, Some(&mask), 1 << 20).unwrap();
        let flat: Vec<bool> = mask.keep.concat();
        let p = flat.len();
        assert!((0..n).all(|i| flat.iter().enumerate().all(|(k, &keep)| keep || j[i * p + k] == 0.0)));
    }
    // sparsity 0 through the pruned (chunked) path equals the dense factorised formula
    let all = PruneMask::random(&mlp, 0.0, true, 5).unwrap();
    assert_eq!(all.kept_fraction(), 1.0);
    let a = empirical_ntk(&mlp, &x, n, Some(&all)).unwrap();
    let b = empirical_ntk(&mlp, &x, n, None).unwrap();
    assert!(relative_frobenius(&a, &b) < 1e-5);
}

#[test]
fn unscaled_ntk_is_p_to_the_depth_times_rescaled() {
    // no biases + positively homogeneous ReLU: Θ_unscaled = p^L Θ_rescaled exactly (L = 3 layers)
    let (n, d) = (5, 10);
    let mlp = NtkMlp::new(d, 32, 2, 9).unwrap();
    let x = inputs(n, d, 3);
    let mut mask = PruneMask::random(&mlp, 0.8, false, 1).unwrap();
    let un = empirical_ntk(&mlp, &x, n, Some(&mask)).unwrap();
    mask.rescale = true;
    let re = empirical_ntk(&mlp, &x, n, Some(&mask)).unwrap();
    let p3 = 0.2f64.powi(3);
    let scaled: Vec<f64> = re.iter().map(|v| v * p3).collect();
    assert!(relative_frobenius(&un, &scaled) < 1e-4);
}

#[test]
fn rescaled_distance_falls_with_width() {
    let (n, d) = (8, 16);
    let x = inputs(n, d, 4);
    let cfg = NtkSweepConfig { widths: vec![32, 512], sparsities: vec![0.5], seeds: vec![0, 1, 2], hidden_layers: 2, memory_limit: 1 << 30 };
    let rows = ntk::ntk_sweep(&cfg, &x, n, d, &mut |_| {}).unwrap();
    let get = |w: usize, r: bool| rows.iter().find(|row| row.width == w && row.rescaled == r).unwrap().mean;
    let (narrow, wide) = (get(32, true), get(512, true));
    assert!(wide < 0.6 * narrow, "rescaled distance {narrow} at width 32 -> {wide} at 512");
    // without rescaling the distance stays near 1 - p^3 = 0.875
    let un = get(512, false);
    assert!((un - 0.875).abs() < 0.05, "unscaled distance {un}");
    assert!(rows.iter().all(|r| r.per_seed.len() == 3 && (r.kept_fraction - 0.5).abs() < 0.05));
}

#[test]
fn bad_inputs_are_typed_errors() {
    assert!(matches!(NtkMlp::new(4, 0, 2, 0), Err(TheoryError::Invalid { what: "width", .. })));
    assert!(matches!(NtkMlp::new(0, 4, 2, 0), Err(TheoryError::Invalid { what: "width", .. })));
    assert!(matches!(NtkMlp::new(4, 4, 0, 0), Err(TheoryError::Invalid { .. })));
    let mlp = NtkMlp::new(4, 4, 1, 0).unwrap();
    for s in [-0.1, 1.0, 1.5, f64::NAN] {
        let e = PruneMask::random(&mlp, s, true, 0).unwrap_err();
        assert!(e.to_string().contains("sparsity"), "{e}");
    }
    assert!(matches!(empirical_ntk(&mlp, &[], 0, None), Err(TheoryError::EmptyBatch { .. })));
    assert!(matches!(empirical_ntk(&mlp, &[0.0; 7], 2, None), Err(TheoryError::Shape { expected: 8, got: 7, .. })));
    // too large: refused before allocating, the message names the estimate
    let e = empirical_ntk_with(&mlp, &[0.5; 8], 2, None, NtkOptions { memory_limit: 1000, chunk_bytes: 1 << 20 }).unwrap_err();
    match &e {
        TheoryError::TooLarge { bytes, limit, .. } => assert!(*bytes > 1000 && *limit == 1000),
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("bytes"), "{e}");
    let e = jacobian(&mlp, &[0.5; 8], 2, None, 10).unwrap_err();
    assert!(matches!(e, TheoryError::TooLarge { .. }), "{e}");
    // a huge width is refused by the weight estimate, not by an allocation failure
    assert!(matches!(NtkMlp::new(784, 1 << 20, 2, 0), Err(TheoryError::TooLarge { .. })));
    // a sweep checks every width's memory before drawing a net
    let cfg = NtkSweepConfig { widths: vec![8, 1 << 16], sparsities: vec![0.5], seeds: vec![0], hidden_layers: 2, memory_limit: 1 << 30 };
    assert!(matches!(ntk::ntk_sweep(&cfg, &[0.5; 8], 2, 4, &mut |_| panic!("no row may run")), Err(TheoryError::TooLarge { .. })));
    let cfg = NtkSweepConfig { widths: vec![8], sparsities: vec![1.0], seeds: vec![0], hidden_layers: 2, memory_limit: 1 << 30 };
    assert!(matches!(ntk::ntk_sweep(&cfg, &[0.5; 8], 2, 4, &mut |_| {}), Err(TheoryError::Invalid { what: "sparsity", .. })));
    // a mask for another net
    let other = NtkMlp::new(4, 6, 1, 0).unwrap();
    let m = PruneMask::random(&other, 0.5, true, 0).unwrap();
    assert!(matches!(empirical_ntk(&mlp, &[0.5; 8], 2, Some(&m)), Err(TheoryError::Shape { .. })));
}
