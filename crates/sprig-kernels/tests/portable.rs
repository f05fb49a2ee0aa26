//! The portable (non-intrinsics) kernels, forced on, against the references.
mod common;
use common::*;
use sprig_kernels::{Bsr, Csr, NmSparse};

#[test]
fn portable_kernels_match_reference() {
    sprig_kernels::force_portable(true);
    assert_eq!(sprig_kernels::simd_level(), "portable");
    for (i, &(m, n, k)) in [(1usize, 7usize, 33usize), (3, 16, 40), (17, 24, 64), (70, 9, 1200), (65, 8, 2500)].iter().enumerate() {
        let mut r = rng(i as u64);
        let w = randn(&mut r, n * k);
        let mask = random_mask(&mut r, n, k, 0.3, true);
        check_against_reference(&Csr::from_dense(&w, n, k, &mask).unwrap(), m, 1).unwrap();
        if n % 4 == 0 {
            check_against_reference(&Bsr::from_dense(&w, n, k, (4, 1), &mask).unwrap(), m, 2).unwrap();
        }
        if k % 4 == 0 {
            let mut keep = vec![false; n * k];
            for g in 0..n * k / 4 { keep[g * 4] = true; keep[g * 4 + 3] = true; }
            let mk = sprig_kernels::Bitmask::from_bools(n, k, &keep).unwrap();
            check_against_reference(&NmSparse::from_dense(&w, n, k, (2, 4), &mk).unwrap(), m, 3).unwrap();
        }
        if k % 8 == 0 {
            let mut keep = vec![false; n * k];
            for g in 0..n * k / 8 { for o in [1, 2, 5, 7] { keep[g * 8 + o] = true; } }
            let mk = sprig_kernels::Bitmask::from_bools(n, k, &keep).unwrap();
            check_against_reference(&NmSparse::from_dense(&w, n, k, (4, 8), &mk).unwrap(), m, 4).unwrap();
        }
    }
}
