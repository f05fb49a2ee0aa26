//! Criterion benches: sparse forward/backward vs the dense Rust GEMMs on the headline
//! shape (K=384, N=1536). The full grid is `sprig bench kernels --json FILE`.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use sprig_kernels::bench::{random_block_mask, random_nm_mask};
use sprig_kernels::dense::{dense_linear_backward, dense_linear_with, DenseImpl};
use sprig_kernels::{Bsr, Csr, NmSparse, SparseMatrix};
use std::hint::black_box;

fn vals(n: usize, seed: u32) -> Vec<f32> {
    (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2000) as f32 / 1000.0 - 1.0).collect()
}

fn kernels(c: &mut Criterion) {
    let (k, n) = (384usize, 1536usize);
    let w = vals(n * k, 1);
    let bias = vals(n, 2);
    for m in [1usize, 32, 512] {
        let x = vals(m * k, 3);
        let dy = vals(m * n, 4);
        let mut y = vec![0f32; m * n];
        let mut dx = vec![0f32; m * k];
        let mut dw = vec![0f32; n * k];
        let mut g = c.benchmark_group(format!("forward_k{k}_n{n}_m{m}"));
        g.sample_size(20);
        for (imp, name) in [(DenseImpl::Faer, "dense-faer"), (DenseImpl::MatrixMultiply, "dense-matrixmultiply")] {
            g.bench_function(name, |b| b.iter(|| dense_linear_with(imp, black_box(&x), &w, Some(&bias), m, n, k, &mut y).unwrap()));
        }
        let mut fmts: Vec<(String, Box<dyn SparseMatrix>)> = Vec::new();
        for s in [0.5, 0.7, 0.9, 0.95] {
            let csr = Csr::from_dense(&w, n, k, &random_block_mask(n, k, 1, s, 5)).unwrap();
            fmts.push((format!("csr-{s}"), Box::new(csr)));
        }
        let b41 = Bsr::from_dense(&w, n, k, (4, 1), &random_block_mask(n, k, 4, 0.9, 6)).unwrap();
        fmts.push(("bsr4x1-0.9".into(), Box::new(b41)));
        let nm = NmSparse::from_dense(&w, n, k, (2, 4), &random_nm_mask(n, k, 7)).unwrap();
        fmts.push(("nm2:4".into(), Box::new(nm)));
        for (name, f) in &fmts {
            g.bench_with_input(BenchmarkId::new("sprig", name), f, |b, f| {
                b.iter(|| f.forward(black_box(&x), m, Some(&bias), &mut y).unwrap())
            });
        }
        g.finish();
        let mut g = c.benchmark_group(format!("backward_k{k}_n{n}_m{m}"));
        g.sample_size(10);
        g.bench_function("dense-faer", |b| b.iter(|| dense_linear_backward(black_box(&x), &w, &dy, m, n, k, &mut dx, &mut dw).unwrap()));
        for (name, f) in &fmts {
            let mut gv = vec![0f32; f.nnz()];
            g.bench_with_input(BenchmarkId::new("sprig", name), f, |b, f| {
                b.iter(|| {
                    f.backward_input(black_box(&dy), m, &mut dx).unwrap();
                    f.grad_values(&dy, &x, m, &mut gv).unwrap();
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);
