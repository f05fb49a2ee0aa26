//! The README example: `cargo run --release -p sprig-kernels --example kernels_readme`.
use sprig_kernels::{Bitmask, Csr, SparseMatrix};

fn main() -> sprig_kernels::Result<()> {
    let (n, k, m) = (4, 6, 2);
    let w: Vec<f32> = (0..n * k).map(|i| i as f32 / 10.0).collect();
    let keep: Vec<bool> = (0..n * k).map(|i| i % 3 == 0).collect(); // ~67% sparse
    let csr = Csr::from_dense(&w, n, k, &Bitmask::from_bools(n, k, &keep)?)?;

    let x = vec![1.0f32; m * k];
    let mut y = vec![0.0; m * n];
    csr.forward(&x, m, None, &mut y)?; // y = x·Wᵀ
    let (mut pre, mut h) = (vec![0.0; m * n], vec![0.0; m * n]);
    // h = gelu(x·Wᵀ), GELU applied to each output tile while it is in cache; pre = x·Wᵀ
    csr.forward_gelu_with(csr.values(), &x, m, None, Some(&mut pre), &mut h)?;
    let dy = vec![1.0f32; m * n];
    let mut dx = vec![0.0; m * k];
    csr.backward_input(&dy, m, &mut dx)?; // dx = dy·W
    let mut dvals = vec![0.0; csr.nnz()];
    csr.grad_values(&dy, &x, m, &mut dvals)?; // dW at the kept positions
    println!("{} nnz={} y={y:?}", csr.format_name(), csr.nnz());
    Ok(())
}
