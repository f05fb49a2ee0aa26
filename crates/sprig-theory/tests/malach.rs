//! Malach et al. / Pensia et al. constructions: error falls with width; the closed form holds.
use sprig_theory::malach::{approximate_weight, eval_block, malach_sweep, Construction, MalachConfig};

fn sweep(c: Construction, widths: Vec<usize>) -> Vec<sprig_theory::malach::MalachRow> {
    malach_sweep(&MalachConfig { construction: c, widths, trials: 60, neuron_inputs: 4, neuron_points: 200, seed: 1 }).unwrap()
}

#[test]
fn malach_error_falls_with_width() {
    let rows = sweep(Construction::Malach, vec![8, 128, 2048]);
    for w in rows.windows(2) {
        assert!(w[1].weight_err_mean < 0.5 * w[0].weight_err_mean, "{:?}", rows);
        assert!(w[1].neuron_err_mean < w[0].neuron_err_mean, "{:?}", rows);
    }
    // the closed-form sup-error equals the grid-measured one up to grid resolution (the error is
    // linear in x on each side, so its max is at x = ±1, which the grid contains)
    for r in &rows {
        assert!((r.weight_err_max - r.weight_err_grid_max).abs() < 1e-9, "{r:?}");
    }
}

#[test]
fn subset_sum_error_falls_much_faster() {
    let rows = sweep(Construction::SubsetSum, vec![8, 24, 40]);
    assert!(rows[2].weight_err_mean < 0.05 * rows[0].weight_err_mean, "{rows:?}");
    let m = sweep(Construction::Malach, vec![40]);
    assert!(rows[2].weight_err_mean < 0.2 * m[0].weight_err_mean, "subset-sum {rows:?} vs malach {m:?}");
}

#[test]
fn approximation_is_a_pruning_of_the_random_block() {
    let u = [0.9, -0.5, 0.3, -0.8, 0.6, 0.2];
    let v = [0.5, 0.4, -0.7, 0.9, 0.3, -0.1];
    for c in [Construction::Malach, Construction::SubsetSum] {
        let a = approximate_weight(0.4, &u, &v, c).unwrap();
        for x in [-1.0, -0.3, 0.25, 1.0] {
            let err = (eval_block(&u, &v, &a.kept, x) - 0.4 * x).abs();
            assert!(err <= a.error + 1e-12, "{c:?}: {err} > {}", a.error);
        }
    }
    // exact subset-sum: 0.9*0.5 + 0.6*0.3 = 0.63, 0.45, ... best for 0.45 positive side is exact
    let a = approximate_weight(0.45, &u, &v, Construction::SubsetSum).unwrap();
    assert!((a.slope_pos - 0.45).abs() < 1e-12);
}

#[test]
fn bad_inputs_are_typed_errors() {
    let bad = |c: MalachConfig| malach_sweep(&c).unwrap_err().to_string();
    let base = MalachConfig { construction: Construction::Malach, widths: vec![4], trials: 1, neuron_inputs: 1, neuron_points: 1, seed: 0 };
    assert!(bad(MalachConfig { widths: vec![0], ..base.clone() }).contains("widths"));
    assert!(bad(MalachConfig { trials: 0, ..base.clone() }).contains("trials"));
    assert!(approximate_weight(0.1, &[], &[], Construction::Malach).is_err());
    assert!(approximate_weight(f64::NAN, &[1.0], &[1.0], Construction::Malach).is_err());
    let many = vec![0.5; 200];
    let e = approximate_weight(0.1, &many, &many, Construction::SubsetSum).unwrap_err();
    assert!(e.to_string().contains("200"), "{e}");
    assert!("nope".parse::<Construction>().is_err());
}
