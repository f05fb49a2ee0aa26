//! Format construction, validation and round trips.
mod common;
use common::*;
use proptest::prelude::*;
use sprig_kernels::{Bitmask, Bsr, Csr, KernelError, NmSparse, SparseMatrix};

fn masked(w: &[f32], mask: &Bitmask) -> Vec<f32> {
    let mut d = w.to_vec();
    mask.apply(&mut d).unwrap();
    d
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn bitmask_round_trip(rows in 0usize..20, cols in 0usize..90, seed in any::<u64>()) {
        let mut r = rng(seed);
        let m = random_mask(&mut r, rows, cols, 0.4, false);
        let b = m.to_bools();
        prop_assert_eq!(Bitmask::from_bools(rows, cols, &b).unwrap(), m.clone());
        prop_assert_eq!(Bitmask::from_words(rows, cols, m.words().to_vec()).unwrap(), m.clone());
        prop_assert_eq!(m.count_ones(), b.iter().filter(|&&x| x).count());
    }

    #[test]
    fn csr_round_trip(rows in 1usize..30, cols in 1usize..50, d in 0.0f64..1.0, seed in any::<u64>()) {
        let mut r = rng(seed);
        let w = randn(&mut r, rows * cols);
        let mask = random_mask(&mut r, rows, cols, d, seed % 2 == 0);
        let csr = Csr::from_dense(&w, rows, cols, &mask).unwrap();
        prop_assert_eq!(csr.to_dense(), masked(&w, &mask));
        prop_assert_eq!(csr.pattern_mask(), mask);
        // Parts -> from_parts -> same matrix.
        let again = Csr::from_parts(rows, cols, csr.row_ptr().to_vec(), csr.col_indices(), csr.values().to_vec()).unwrap();
        prop_assert_eq!(again.to_dense(), csr.to_dense());
    }

    #[test]
    fn bsr_round_trip(br in 1usize..6, bc in 1usize..6, r_ in 1usize..5, c_ in 1usize..5, d in 0.0f64..1.0, seed in any::<u64>()) {
        let (rows, cols) = (br * r_, bc * c_);
        let mut r = rng(seed);
        let w = randn(&mut r, rows * cols);
        let mask = random_mask(&mut r, rows, cols, d, false);
        let bsr = Bsr::from_dense(&w, rows, cols, (r_, c_), &mask).unwrap();
        prop_assert_eq!(bsr.to_dense(), masked(&w, &mask));
        prop_assert_eq!(bsr.nnz(), bsr.n_blocks() * r_ * c_);
        let again = Bsr::from_parts(rows, cols, (r_, c_), bsr.row_ptr().to_vec(), bsr.block_cols(), bsr.values().to_vec()).unwrap();
        prop_assert_eq!(again.to_dense(), bsr.to_dense());
    }

    #[test]
    fn nm_round_trip(rows in 1usize..10, groups in 1usize..8, seed in any::<u64>(),
                     nm in prop_oneof![Just((2usize, 4usize)), Just((4, 8))]) {
        let cols = groups * nm.1;
        let mut r = rng(seed);
        let w = randn(&mut r, rows * cols);
        // A random mask with at most n per group (some groups keep fewer).
        let mut keep = vec![false; rows * cols];
        for g in 0..rows * groups {
            for t in 0..nm.0 {
                let o = (seed as usize / (t + 1) + g * 7 + t * 3) % nm.1;
                if (g + t) % 3 != 0 { keep[g * nm.1 + o] = true; }
            }
        }
        let mask = Bitmask::from_bools(rows, cols, &keep).unwrap();
        let s = NmSparse::from_dense(&w, rows, cols, nm, &mask).unwrap();
        prop_assert_eq!(s.to_dense(), masked(&w, &mask));
        prop_assert_eq!(s.nnz(), rows * groups * nm.0);
        let again = NmSparse::from_parts(rows, cols, nm, s.values().to_vec(), s.offsets()).unwrap();
        prop_assert_eq!(again.to_dense(), s.to_dense());
    }
}

#[test]
fn csr_from_parts_rejects_bad_input() {
    let ok = Csr::from_parts(2, 3, vec![0, 1, 2], vec![0, 2], vec![1.0, 2.0]);
    assert!(ok.is_ok());
    #[allow(clippy::type_complexity)]
    let cases: Vec<(Vec<usize>, Vec<u32>, Vec<f32>, &str)> = vec![
        (vec![0, 1], vec![0], vec![1.0], "row_ptr"),
        (vec![1, 1, 2], vec![0, 2], vec![1.0, 2.0], "row_ptr[0]"),
        (vec![0, 2, 1], vec![0], vec![1.0], "decreases"),
        (vec![0, 2, 1], vec![0, 2], vec![1.0, 2.0], "row_ptr ends"),
        (vec![0, 1, 2], vec![0, 3], vec![1.0, 2.0], "out of range"),
        (vec![0, 2, 2], vec![2, 1], vec![1.0, 2.0], "strictly increasing"),
        (vec![0, 2, 2], vec![1, 1], vec![1.0, 2.0], "strictly increasing"),
        (vec![0, 1, 3], vec![0, 2], vec![1.0, 2.0], "row_ptr ends"),
        (vec![0, 1, 2], vec![0, 2], vec![1.0], "CSR values"),
    ];
    for (rp, ci, v, want) in cases {
        let e = Csr::from_parts(2, 3, rp.clone(), ci.clone(), v).unwrap_err();
        assert!(e.to_string().contains(want), "{rp:?} {ci:?}: {e}");
    }
}

#[test]
fn bsr_and_nm_reject_bad_shapes() {
    let w = vec![0.5f32; 6 * 8];
    let m = Bitmask::ones(6, 8);
    assert!(matches!(Bsr::from_dense(&w, 6, 8, (4, 1), &m), Err(KernelError::Shape(_))));
    assert!(matches!(Bsr::from_dense(&w, 6, 8, (0, 1), &m), Err(KernelError::Shape(_))));
    assert!(Bsr::from_dense(&w, 6, 8, (3, 4), &m).is_ok());
    // Block column out of range (block cols 0..2 for c=4, cols=8).
    assert!(Bsr::from_parts(6, 8, (3, 4), vec![0, 1, 1], vec![2], vec![0.0; 12]).is_err());
    // N:M: more than n kept in a group is an error naming the group.
    let e = NmSparse::from_dense(&w, 6, 8, (2, 4), &m).unwrap_err();
    assert!(e.to_string().contains("row 0, columns 0..4"), "{e}");
    assert!(NmSparse::from_dense(&w[..6 * 6], 6, 6, (2, 4), &Bitmask::ones(6, 6)).is_err());
    assert!(NmSparse::from_parts(1, 4, (2, 4), vec![1.0, 2.0], vec![2, 1]).is_err());
    assert!(NmSparse::from_parts(1, 4, (2, 4), vec![1.0, 2.0], vec![1, 4]).is_err());
    assert!(Bitmask::from_words(1, 3, vec![0b1000]).is_err());
    assert!(Bitmask::from_bools(2, 2, &[true]).is_err());
}

/// The memory target: a 90% CSR layer of BERT-FFN size holds at most a quarter of dense bytes.
#[test]
fn csr_memory_at_90_percent() {
    let (n, k) = (1536usize, 384usize);
    let mut r = rng(11);
    let w = randn(&mut r, n * k);
    let mask = random_mask(&mut r, n, k, 0.1, false);
    let csr = Csr::from_dense(&w, n, k, &mask).unwrap();
    let ratio = csr.memory_bytes() as f64 / (n * k * 4) as f64;
    assert_eq!(csr.index_width(), 2);
    assert!(ratio <= 0.25, "90% CSR uses {ratio:.3} of dense bytes");
}
