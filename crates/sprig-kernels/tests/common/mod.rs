// `!(e <= tol)` on purpose: a NaN error must fail the check.
#![allow(clippy::neg_cmp_op_on_partial_ord)]
#![allow(dead_code)]
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sprig_kernels::{reference, Bitmask, SparseMatrix};

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

pub fn randn(r: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
}

/// Keep each weight with probability `density`; additionally empty every third row when asked.
pub fn random_mask(r: &mut ChaCha8Rng, rows: usize, cols: usize, density: f64, empty_rows: bool) -> Bitmask {
    let mut keep: Vec<bool> = (0..rows * cols).map(|_| r.random_bool(density)).collect();
    if empty_rows {
        for i in (0..rows).step_by(3) {
            keep[i * cols..(i + 1) * cols].fill(false);
        }
    }
    Bitmask::from_bools(rows, cols, &keep).unwrap()
}

/// An N:M mask: `n` random positions kept in each group of `g` columns of every row.
pub fn random_nm_mask(r: &mut ChaCha8Rng, rows: usize, cols: usize, n: usize, g: usize) -> Bitmask {
    let mut keep = vec![false; rows * cols];
    for gi in 0..rows * cols / g {
        let mut idx: Vec<usize> = (0..g).collect();
        for i in (1..g).rev() {
            idx.swap(i, r.random_range(0..=i as u32) as usize);
        }
        for &i in &idx[..n] {
            keep[gi * g + i] = true;
        }
    }
    Bitmask::from_bools(rows, cols, &keep).unwrap()
}

/// Norm-wise relative error `‖a - b‖ / ‖b‖` (absolute when `b` is zero).
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    err_vs_terms(a, b, b)
}

/// `‖a - b‖ / ‖mag‖`, where `mag` is the reference computed on the inputs' absolute values: the
/// error against the size of the terms summed, not of their sum, so that a sum whose terms cancel
/// (a small `b` from large products) does not fail a correct kernel that adds in another order.
pub fn err_vs_terms(a: &[f32], b: &[f32], mag: &[f32]) -> f64 {
    assert!(a.len() == b.len() && a.len() == mag.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = mag.iter().map(|y| (*y as f64).powi(2)).sum();
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.abs()).collect()
}

/// Checks forward, input gradient and SDDMM of `w` against masked-dense references.
pub fn check_against_reference(w: &dyn SparseMatrix, m: usize, seed: u64) -> Result<(), String> {
    let (n, k) = (w.rows(), w.cols());
    let mut r = rng(seed);
    let x = randn(&mut r, m * k);
    let bias = randn(&mut r, n);
    let dy = randn(&mut r, m * n);
    let dense = w.to_dense();
    let pattern = w.pattern_mask();

    let mut y = vec![f32::NAN; m * n];
    w.forward(&x, m, Some(&bias), &mut y).map_err(|e| e.to_string())?;
    let y_ref = reference::linear(&x, &dense, Some(&bias), m, n, k);
    // Every forward output is measured against the size of the terms that formed it (GELU's
    // slope is at most 1.13, so the same scale bounds its error).
    let y_mag = reference::linear(&abs(&x), &abs(&dense), Some(&abs(&bias)), m, n, k);
    let e = err_vs_terms(&y, &y_ref, &y_mag);
    if !(e <= 1e-5) {
        return Err(format!("forward rel err {e} ({} m={m} n={n} k={k})", w.format_name()));
    }

    // Fused GELU epilogue, in place and with the pre-activation kept (GELU itself is checked
    // against an f64 erf in nn::math's tests; here: the right elements, every element).
    let g_ref: Vec<f32> = y_ref.iter().map(|&v| sprig_kernels::nn::math::gelu(v)).collect();
    let mut yg = vec![f32::NAN; m * n];
    w.forward_gelu_with(w.values(), &x, m, Some(&bias), None, &mut yg).map_err(|e| e.to_string())?;
    let e = err_vs_terms(&yg, &g_ref, &y_mag);
    if !(e <= 1e-5) {
        return Err(format!("forward+gelu rel err {e} ({} m={m} n={n} k={k})", w.format_name()));
    }
    let (mut pre, mut yg2) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
    w.forward_gelu_with(w.values(), &x, m, Some(&bias), Some(&mut pre), &mut yg2).map_err(|e| e.to_string())?;
    let (e1, e2) = (err_vs_terms(&pre, &y_ref, &y_mag), err_vs_terms(&yg2, &g_ref, &y_mag));
    if !(e1 <= 1e-5 && e2 <= 1e-5) {
        return Err(format!("forward+gelu (pre kept) rel err {e1} / {e2} ({} m={m} n={n} k={k})", w.format_name()));
    }

    let mut dx = vec![f32::NAN; m * k];
    w.backward_input(&dy, m, &mut dx).map_err(|e| e.to_string())?;
    let dx_ref = reference::backward_input(&dy, &dense, m, n, k);
    let e = err_vs_terms(&dx, &dx_ref, &reference::backward_input(&abs(&dy), &abs(&dense), m, n, k));
    if !(e <= 1e-5) {
        return Err(format!("dx rel err {e} ({} m={m} n={n} k={k})", w.format_name()));
    }

    let mut g = vec![f32::NAN; w.nnz()];
    w.grad_values(&dy, &x, m, &mut g).map_err(|e| e.to_string())?;
    // Scatter the SDDMM result through to_dense_with, compare with the masked dense dW.
    let g_dense = w.to_dense_with(&g).map_err(|e| e.to_string())?;
    let mut dw_ref = reference::grad_weight(&dy, &x, m, n, k);
    pattern.apply(&mut dw_ref).unwrap();
    let mut dw_mag = reference::grad_weight(&abs(&dy), &abs(&x), m, n, k);
    pattern.apply(&mut dw_mag).unwrap();
    let e = err_vs_terms(&g_dense, &dw_ref, &dw_mag);
    if !(e <= 1e-5) {
        return Err(format!("dW rel err {e} ({} m={m} n={n} k={k})", w.format_name()));
    }
    Ok(())
}
