//! `matmul_cpu_invariant`: the bits of a sequential fused-multiply-add sum over K blocks of at most
//! 512, whatever the CPU's caches (candle's own matmul blocks K by the L1 cache's associativity).
use candle_core::{Device, Tensor, Var};
use sprig_kernels::candle::{matmul_cpu_invariant, CPU_INVARIANT_K};

/// Deterministic values in [-1, 1) with many mantissa bits (a fixed LCG).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// The reference: K in `ceil(k / 512)` equal blocks, each summed in order with one rounding per
/// fused multiply-add from zero, the block sums added in order.
fn emulate(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let len = k.div_ceil(k.div_ceil(CPU_INVARIANT_K));
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut total = 0f32;
            for (bi, k0) in (0..k).step_by(len).enumerate() {
                let mut acc = 0f32;
                for kk in k0..(k0 + len).min(k) {
                    acc = a[i * k + kk].mul_add(b[kk * n + j], acc);
                }
                total = if bi == 0 { acc } else { total + acc };
            }
            out[i * n + j] = total;
        }
    }
    out
}

#[test]
fn equals_the_sequential_block_sum_bit_for_bit() {
    if !cfg!(target_arch = "x86_64") || !std::arch::is_x86_feature_detected!("fma") {
        eprintln!("skipped: the reference assumes gemm's x86-64 FMA kernels");
        return;
    }
    let dev = Device::Cpu;
    // K = 784 (LeNet's input layer, two blocks of 392) and 1536 (three of 512); m and n past
    // gemm's small-matrix shortcut (64) and not multiples of its register tiles.
    for &(m, k, n) in &[(128usize, 784usize, 300usize), (70, 1536, 90), (16, 300, 10)] {
        let (a, b) = (values(m * k, 1), values(k * n, 2));
        let ta = Tensor::from_vec(a.clone(), (m, k), &dev).unwrap();
        let tb = Tensor::from_vec(b.clone(), (k, n), &dev).unwrap();
        let got = matmul_cpu_invariant(&ta, &tb).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = emulate(&a, &b, m, k, n);
        let diff = got.iter().zip(&want).filter(|(g, w)| g.to_bits() != w.to_bits()).count();
        assert_eq!(diff, 0, "m={m} k={k} n={n}: {diff} of {} outputs differ from the block-sum reference", got.len());
    }
}

#[test]
fn a_transposed_weight_and_gradients_work_like_matmul() {
    let dev = Device::Cpu;
    let (m, k, n) = (32, 784, 20);
    let x = Var::from_vec(values(m * k, 3), (m, k), &dev).unwrap();
    // `[n, k]` weight used as `w.t()`, as a linear layer does.
    let w = Var::from_vec(values(n * k, 4), (n, k), &dev).unwrap();
    let y = matmul_cpu_invariant(x.as_tensor(), &w.as_tensor().t().unwrap()).unwrap();
    let y_ref = x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap();
    assert_eq!(y.dims(), &[m, n]);
    let max_diff = (&y - &y_ref).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(max_diff < 1e-4, "differs from matmul by {max_diff}");
    let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let g_ref = y_ref.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    for v in [&x, &w] {
        let (a, b) = (g.get(v).unwrap(), g_ref.get(v).unwrap());
        assert_eq!(a.dims(), b.dims());
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-3, "gradient differs by {d}");
    }
}
