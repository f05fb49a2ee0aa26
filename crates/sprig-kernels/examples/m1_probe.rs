//! M = 1 (or `M`) forward of dense, CSR, BSR 4x1 and 2:4: medians of 150 batches of 50 back-to-back
//! calls. `--example m1_probe K N SPARSITY [M]`
use sprig_kernels::bench::{random_block_mask, random_nm_mask};
use sprig_kernels::dense::dense_linear;
use sprig_kernels::{Bsr, Csr, NmSparse, SparseMatrix};
use std::time::Instant;
fn med(mut f: impl FnMut()) -> f64 {
    for _ in 0..200 { f(); }
    let mut v: Vec<f64> = (0..150).map(|_| { let t = Instant::now(); for _ in 0..50 { f(); } t.elapsed().as_secs_f64() * 1e6 / 50.0 }).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (k, n): (usize, usize) = (a[0].parse().unwrap(), a[1].parse().unwrap());
    let s: f64 = a[2].parse().unwrap();
    let m: usize = a.get(3).map(|v| v.parse().unwrap()).unwrap_or(1);
    let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    let x: Vec<f32> = (0..m * k).map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5).collect();
    let mut y = vec![0f32; m * n];
    let csr = Csr::from_dense(&w, n, k, &random_block_mask(n, k, 1, s, 5)).unwrap();
    let bsr = Bsr::from_dense(&w, n, k, (4, 1), &random_block_mask(n, k, 4, s, 6)).unwrap();
    let nm = NmSparse::from_dense(&w, n, k, (2, 4), &random_nm_mask(n, k, 7)).unwrap();
    let d = med(|| dense_linear(&x, &w, None, m, n, k, &mut y).unwrap());
    let c = med(|| csr.forward(&x, m, None, &mut y).unwrap());
    let b = med(|| bsr.forward(&x, m, None, &mut y).unwrap());
    let q = med(|| nm.forward(&x, m, None, &mut y).unwrap());
    println!("dense {d:.1} us | csr {c:.1} us ({:.2}x) | bsr4x1 {b:.1} ({:.2}x) | 2:4 {q:.1} ({:.2}x)", d / c, d / b, d / q);
}
