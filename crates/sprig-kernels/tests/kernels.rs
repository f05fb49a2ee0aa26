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

/// N:M shapes whose forward walks K in several L1 blocks (a ragged last block, ragged panels,
/// every panel width) and, past 2^20 stored weights, the 32-lane plan.
#[test]
fn nm_k_blocks_and_panel_widths() {
    for &(m, n, k, nm) in &[
        (70usize, 20usize, 1000usize, (2usize, 4usize)),
        (20, 9, 1000, (2, 4)),
        (9, 17, 520, (4, 8)),
        (5, 8, 4, (2, 4)),
        (13, 1100, 2000, (2, 4)),
    ] {
        let mut r = rng(k as u64 + n as u64);
        let w = randn(&mut r, n * k);
        let mut keep = vec![false; n * k];
        for (g, chunk) in keep.chunks_mut(nm.1).enumerate() {
            for t in 0..nm.0 {
                chunk[(g * 3 + t * (nm.1 / nm.0)) % nm.1] = true;
            }
        }
        let mask = sprig_kernels::Bitmask::from_bools(n, k, &keep).unwrap();
        let s = NmSparse::from_dense(&w, n, k, nm, &mask).unwrap();
        assert_eq!(s.nnz(), n * k / nm.1 * nm.0);
        check_against_reference(&s, m, 11).unwrap_or_else(|e| panic!("m={m} n={n} k={k}: {e}"));
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

/// The dedicated N:M kernels (groups of 4 and 8) at their edges: rows not a multiple of the
/// 8-row block (scalar tail), batches that are not a multiple of the 4-row tile or cross the
/// 64-row chunk, N = 1, 2, 3, 4, and groups of other sizes (CSR fallback).
#[test]
fn nm_kernel_edges() {
    for &(rows, groups, (nn, mm)) in &[
        (8usize, 3usize, (2usize, 4usize)),
        (21, 5, (2, 4)),
        (16, 4, (1, 4)),
        (19, 3, (3, 4)),
        (24, 2, (4, 8)),
        (13, 3, (2, 8)),
        (10, 2, (2, 6)),
    ] {
        let k = groups * mm;
        let mut r = rng((rows * 100 + k) as u64);
        let w = randn(&mut r, rows * k);
        let mask = random_nm_mask(&mut r, rows, k, nn, mm);
        let s = NmSparse::from_dense(&w, rows, k, (nn, mm), &mask).unwrap();
        for m in [1usize, 3, 4, 7, 64, 67, 130] {
            check_against_reference(&s, m, (m * 7 + rows) as u64)
                .unwrap_or_else(|e| panic!("{nn}:{mm} rows {rows} groups {groups} m {m}: {e}"));
        }
    }
}

/// CSR/BSR forward at shapes where the transposed 8x8 flush has ragged rows and lanes, and the
/// batch spans several panels (vector stores plus scalar edges into Y, with bias).
#[test]
fn forward_flush_edges() {
    for &(m, n, k) in &[(8usize, 8usize, 16usize), (70, 19, 33), (129, 136, 40), (33, 7, 9)] {
        let mut r = rng((m * n + k) as u64);
        let w = randn(&mut r, n * k);
        let mask = random_mask(&mut r, n, k, 0.4, true);
        check_against_reference(&Csr::from_dense(&w, n, k, &mask).unwrap(), m, 11).unwrap();
        if n % 4 == 0 {
            check_against_reference(&Bsr::from_dense(&w, n, k, (4, 1), &mask).unwrap(), m, 12).unwrap();
        }
    }
}

/// The small-batch forward (M < 4) for every block shape it specialises (R x 1 for R = 1, 2, 4,
/// 8) and the generic ones, with empty block rows and row lengths that leave 0–3 blocks after the
/// 4-way unrolled loop; and the N:M (G = 2N) path with 1, 2 and 3 eight-slot chunks per row plus
/// scalar tails.
#[test]
fn small_batch_edges() {
    for &(r_, c_) in &[(1usize, 1usize), (2, 1), (4, 1), (8, 1), (3, 1), (1, 4), (4, 4)] {
        for &(br, bc) in &[(1usize, 1usize), (3, 7), (5, 13), (9, 30)] {
            let (n, k) = (br * r_, bc * c_);
            let mut r = rng((n * 1000 + k) as u64);
            let w = randn(&mut r, n * k);
            let mask = random_mask(&mut r, n, k, 0.45, true);
            let s: Box<dyn SparseMatrix> = if (r_, c_) == (1, 1) {
                Box::new(Csr::from_dense(&w, n, k, &mask).unwrap())
            } else {
                Box::new(Bsr::from_dense(&w, n, k, (r_, c_), &mask).unwrap())
            };
            for m in 1..4 {
                check_against_reference(s.as_ref(), m, (m + n) as u64)
                    .unwrap_or_else(|e| panic!("{r_}x{c_} blocks, {n}x{k}, m {m}: {e}"));
            }
        }
    }
    for &((nn, g), groups) in &[((2usize, 4usize), 2usize), ((2, 4), 4), ((2, 4), 6), ((2, 4), 9), ((4, 8), 3), ((4, 8), 4), ((1, 2), 8)] {
        let (rows, k) = (11, groups * g);
        let mut r = rng((k * 31 + nn) as u64);
        let w = randn(&mut r, rows * k);
        let mask = random_nm_mask(&mut r, rows, k, nn, g);
        let s = NmSparse::from_dense(&w, rows, k, (nn, g), &mask).unwrap();
        for m in 1..4 {
            check_against_reference(&s, m, m as u64).unwrap_or_else(|e| panic!("{nn}:{g}, k {k}, m {m}: {e}"));
        }
    }
}
