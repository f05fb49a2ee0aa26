//! Forward CSR time for random columns vs the same columns in every row (panel rows stay in L1):
//! `--example csr_ceiling K N M KEEP_PER_ROW`.
use sprig_kernels::bench::median_ms;
use sprig_kernels::{Csr, SparseMatrix};

fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().unwrap()).collect();
    let (k, n, m, per) = (a[0], a[1], a[2], a[3]);
    let x: Vec<f32> = (0..m * k).map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5).collect();
    let mut y = vec![0f32; m * n];
    for (name, f) in [
        ("random", Box::new(|r: usize, j: usize| (r * 7919 + j * 104729 + (r * j) % 13) % k) as Box<dyn Fn(usize, usize) -> usize>),
        ("same", Box::new(|_r: usize, j: usize| j)),
        ("spread", Box::new(|_r: usize, j: usize| j * (k / per))),
    ] {
        let mut w = vec![0f32; n * k];
        for r in 0..n {
            for j in 0..per {
                w[r * k + f(r, j)] = 0.5 + j as f32 * 1e-3;
            }
        }
        let c = Csr::from_dense_nonzero(&w, n, k).unwrap();
        let t = median_ms(1.0, || c.forward(&x, m, None, &mut y).unwrap());
        println!("{name}: nnz {} ({:.1}/row) {t:.3} ms, {:.1} GFLOP/s", c.nnz(), c.nnz() as f64 / n as f64, 2.0 * (c.nnz() * m) as f64 / t / 1e6);
    }
}
