//! int8 against f32 CSR and dense on one shape: `cargo run --release --example int8_probe -- K N
//! M SPARSITY [BLOCK_COLS]` (BLOCK_COLS 4: 1x4 blocks, the int8 quad).
use sprig_kernels::bench::{median_ms, random_block_mask};
use sprig_kernels::{dense_linear, Bitmask, Csr, QuantLinear, SparseMatrix};

fn main() {
    let a: Vec<f64> = std::env::args().skip(1).map(|v| v.parse().unwrap()).collect();
    let (k, n, m, s) = (a[0] as usize, a[1] as usize, a[2] as usize, a[3]);
    let bc = a.get(4).map_or(1, |v| *v as usize);
    // 1xBC blocks: a random_block_mask of the transposed shape has (BC, 1) blocks.
    let mask = if bc == 1 {
        random_block_mask(n, k, 1, s, 5)
    } else {
        let t = random_block_mask(k, n, bc, s, 5);
        let keep: Vec<bool> = (0..n * k).map(|i| t.get(i % k, i / k)).collect();
        Bitmask::from_bools(n, k, &keep).unwrap()
    };
    let w: Vec<f32> = (0..n * k).map(|i| if mask.get(i / k, i % k) { ((i * 7919) % 2001) as f32 / 1000.0 - 1.0 } else { 0.0 }).collect();
    let x: Vec<f32> = (0..m * k).map(|i| ((i * 104729) % 2001) as f32 / 1000.0 - 1.0).collect();
    let q = QuantLinear::from_dense(&w, n, k).unwrap();
    let c = Csr::from_dense(&w, n, k, &mask).unwrap();
    let mut y = vec![0f32; m * n];
    let ti = median_ms(1.0, || q.forward(&x, m, None, false, &mut y).unwrap());
    let tc = median_ms(1.0, || c.forward(&x, m, None, &mut y).unwrap());
    let td = median_ms(1.0, || dense_linear(&x, &w, None, m, n, k, &mut y).unwrap());
    println!("K={k} N={n} M={m} s={s} 1x{bc}: int8 {ti:.3} ms, csr {tc:.3} ms, dense {td:.3} ms; int8/csr {:.2}, quads/nnz {:.2}", ti / tc, q.quads() as f64 / c.nnz() as f64);
}
