//! Times forward, dX and SDDMM separately for one shape: `--example probe K N M SPARSITY [R]`.
use sprig_kernels::bench::{median_ms, random_block_mask, random_nm_mask};
use sprig_kernels::dense::dense_linear;
use sprig_kernels::{Bsr, Csr, NmSparse, SparseMatrix};

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let p = |i: usize, d: &str| a.get(i).cloned().unwrap_or(d.into());
    let (k, n, m): (usize, usize, usize) = (p(0, "384").parse().unwrap(), p(1, "1536").parse().unwrap(), p(2, "512").parse().unwrap());
    let s: f64 = p(3, "0.9").parse().unwrap();
    // R = block height (1 = CSR), or "nm" for 2:4 (SPARSITY ignored).
    let nm = p(4, "1") == "nm";
    let r: usize = if nm { 1 } else { p(4, "1").parse().unwrap() };
    let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    let x: Vec<f32> = (0..m * k).map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5).collect();
    let dy: Vec<f32> = (0..m * n).map(|i| ((i * 13) % 1000) as f32 / 1000.0 - 0.5).collect();
    let mask = random_block_mask(n, k, r, s, 5);
    let f: Box<dyn SparseMatrix> = if nm { Box::new(NmSparse::from_dense(&w, n, k, (2, 4), &random_nm_mask(n, k, 7)).unwrap()) } else if r == 1 { Box::new(Csr::from_dense(&w, n, k, &mask).unwrap()) } else { Box::new(Bsr::from_dense(&w, n, k, (r, 1), &mask).unwrap()) };
    let mut y = vec![0f32; m * n];
    let mut dx = vec![0f32; m * k];
    let mut g = vec![0f32; f.nnz()];
    // PROBE_OP=dense|fwd|dx|sddmm PROBE_REPS=N: run only that op N times (for `perf stat`).
    if let Ok(op) = std::env::var("PROBE_OP") {
        let reps: usize = std::env::var("PROBE_REPS").map(|v| v.parse().unwrap()).unwrap_or(100);
        for _ in 0..reps {
            match op.as_str() {
                "dense" => dense_linear(&x, &w, None, m, n, k, &mut y).unwrap(),
                "fwd" => f.forward(&x, m, None, &mut y).unwrap(),
                "dx" => f.backward_input(&dy, m, &mut dx).unwrap(),
                _ => f.grad_values(&dy, &x, m, &mut g).unwrap(),
            }
        }
        return;
    }
    let dense = median_ms(1.0, || dense_linear(&x, &w, None, m, n, k, &mut y).unwrap());
    let fw = median_ms(1.0, || f.forward(&x, m, None, &mut y).unwrap());
    let bx = median_ms(1.0, || f.backward_input(&dy, m, &mut dx).unwrap());
    let sd = median_ms(1.0, || f.grad_values(&dy, &x, m, &mut g).unwrap());
    let gf = |t: f64| 2.0 * f.nnz() as f64 * m as f64 / t / 1e6;
    println!("{} k={k} n={n} m={m} s={s}: dense {dense:.4} ms ({:.1} GF/s) | fwd {fw:.4} ms ({:.1} GF/s, {:.2}x) | dX {bx:.4} ms ({:.1}) | sddmm {sd:.4} ms ({:.1})",
        f.format_name(), 2.0 * (m * n * k) as f64 / dense / 1e6, gf(fw), dense / fw, gf(bx), gf(sd));
}
