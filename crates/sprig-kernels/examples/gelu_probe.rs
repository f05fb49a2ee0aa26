//! Times the GELU slice kernels single-threaded on one [4096, 1536] activation (a MiniLM FFN at
//! batch 32 x seq 128): `cargo run --release -p sprig-kernels --example gelu_probe`.
use sprig_kernels::bench::median_ms;
use sprig_kernels::nn::math::{gelu_backward_inplace, gelu_inplace, gelu_slice};

fn main() {
    let n = 4096 * 1536;
    let z: Vec<f32> = (0..n).map(|i| ((i * 7919) % 2000) as f32 / 250.0 - 4.0).collect();
    let mut y = vec![0f32; n];
    let mut g = vec![1f32; n];
    let ns = |ms: f64| ms * 1e6 / n as f64;
    let f = median_ms(1.0, || gelu_slice(&z, &mut y));
    let mut w = z.clone();
    let i = median_ms(1.0, || {
        w.copy_from_slice(&z);
        gelu_inplace(&mut w)
    });
    let c = median_ms(1.0, || w.copy_from_slice(&z));
    let b = median_ms(1.0, || gelu_backward_inplace(&z, &mut g));
    println!("gelu_slice {f:.2} ms ({:.2} ns/elem) | copy+gelu_inplace {i:.2} ms (copy alone {c:.2}) | gelu_backward {b:.2} ms ({:.2} ns/elem)", ns(f), ns(b));
}
