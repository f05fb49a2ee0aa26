//! Kernels (forward, dX, SDDMM) against scalar masked-dense references.
mod common;
use common::*;
use proptest::prelude::*;
use sprig_kernels::{Bsr, Csr, NmSparse, SparseMatrix};

fn density_strategy() -> impl Strategy<Value = f64> {
    prop_oneof![Just(0.0), Just(1.0), Just(0.1), Just(0.5), 0.0f64..1.0]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn csr_matches_reference(m in 1usize..80, n in 1usize..40, k in 1usize..70,
                             d in density_strategy(), empty in any::<bool>(), seed in any::<u64>()) {
        let mut r = rng(seed);
        let w = randn(&mut r, n * k);
        let mask = random_mask(&mut r, n, k, d, empty);
        let csr = Csr::from_dense(&w, n, k, &mask).unwrap();
        prop_assert_eq!(csr.nnz(), mask.count_ones());
        check_against_reference(&csr, m, seed ^ 1).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn bsr_matches_reference(m in 1usize..80, br in 1usize..8, bc in 1usize..8,
                             shape in prop_oneof![Just((1usize, 4usize)), Just((4, 1)), Just((4, 4)), Just((8, 1)), Just((2, 3)), Just((3, 1))],
                             d in density_strategy(), seed in any::<u64>()) {
        let (r_, c_) = shape;
        let (n, k) = (br * r_, bc * c_);
        let mut r = rng(seed);
        let w = randn(&mut r, n * k);
        let mask = random_mask(&mut r, n, k, d, false);
        let bsr = Bsr::from_dense(&w, n, k, shape, &mask).unwrap();
        check_against_reference(&bsr, m, seed ^ 2).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn nm_matches_reference(m in 1usize..80, n in 1usize..30, groups in 1usize..12,
                            nm in prop_oneof![Just((2usize, 4usize)), Just((4, 8)), Just((1, 4))],
                            seed in any::<u64>()) {
        let k = groups * nm.1;
        let mut r = rng(seed);
        let w = randn(&mut r, n * k);
        // Keep the n largest |w| of each group.
        let mut keep = vec![false; n * k];
        for g in 0..n * groups {
            let base = g * nm.1;
            let mut idx: Vec<usize> = (0..nm.1).collect();
            idx.sort_by(|&a, &b| w[base + b].abs().partial_cmp(&w[base + a].abs()).unwrap());
            for &i in &idx[..nm.0] { keep[base + i] = true; }
        }
        let mask = sprig_kernels::Bitmask::from_bools(n, k, &keep).unwrap();
        let s = NmSparse::from_dense(&w, n, k, nm, &mask).unwrap();
        prop_assert_eq!(s.to_dense(), { let mut d = w.clone(); mask.apply(&mut d).unwrap(); d });
        check_against_reference(&s, m, seed ^ 3).map_err(TestCaseError::fail)?;
    }
}

/// Shapes that select the other panel widths (K > 1024 and K > 2048) and several panels.
#[test]
fn wide_k_and_many_panels() {
    for &(m, n, k) in &[(150usize, 20usize, 1500usize), (70, 12, 2100), (9, 8, 3000), (200, 16, 64)] {
        let mut r = rng(k as u64);
        let w = randn(&mut r, n * k);
        let mask = random_mask(&mut r, n, k, 0.2, true);
        let csr = Csr::from_dense(&w, n, k, &mask).unwrap();
        check_against_reference(&csr, m, 7).unwrap();
        let bsr = Bsr::from_dense(&w, n, k, (4, 1), &mask).unwrap();
        check_against_reference(&bsr, m, 8).unwrap();
    }
}

/// More than 65 536 columns switches CSR to u32 indices.
#[test]
fn wide_matrix_uses_u32_indices() {
    let (n, k, m) = (3usize, 70_000usize, 5usize);
    let mut r = rng(3);
    let w = randn(&mut r, n * k);
    let mask = random_mask(&mut r, n, k, 0.01, false);
    let csr = Csr::from_dense(&w, n, k, &mask).unwrap();
    assert_eq!(csr.index_width(), 4);
    assert_eq!(csr.format_name(), "csr-u32");
    check_against_reference(&csr, m, 9).unwrap();
    let small = Csr::from_dense(&w[..k], 1, k.min(65_536), &sprig_kernels::Bitmask::ones(1, 65_536)).err();
    assert!(small.is_some(), "length mismatch must be an error");
}

#[test]
fn wrong_lengths_are_errors() {
    let w = Csr::from_dense_nonzero(&[1.0, 0.0, 2.0, 3.0], 2, 2).unwrap();
    let mut y = vec![0.0; 3];
    let e = w.forward(&[1.0, 2.0], 1, None, &mut y).unwrap_err();
    assert!(e.to_string().contains("y (m*rows)"), "{e}");
    let mut y = vec![0.0; 2];
    assert!(w.forward(&[1.0, 2.0], 1, Some(&[1.0]), &mut y).is_err());
    assert!(w.forward_with(&[1.0], &[1.0, 2.0], 1, None, &mut y).is_err());
    let mut g = vec![0.0; 2];
    assert!(w.grad_values(&[1.0, 1.0], &[1.0, 1.0], 1, &mut g).is_err());
}
