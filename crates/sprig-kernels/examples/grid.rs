//! Prints the benchmark grid as TSV: `cargo run --release -p sprig-kernels --example grid [quick|full|headline]`.
use sprig_kernels::bench::{run, BenchConfig};

fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "quick".into());
    let cfg = match which.as_str() {
        "full" => BenchConfig::full(),
        "headline" => BenchConfig {
            shapes: vec![(384, 1536)],
            ms: vec![1, 32, 512],
            sparsities: vec![0.5, 0.7, 0.9],
            structured: true,
            backward: true,
            seconds_per_cell: 0.3,
        },
        _ => BenchConfig::quick(),
    };
    println!("simd={}", sprig_kernels::simd_level());
    run(&cfg, |r| {
        println!("k={}\tn={}\tm={}\ts={}\t{}\t{}\t{}\t{:.4} ms", r.k, r.n, r.m, r.sparsity, r.format, r.op, r.imp, r.median_ms)
    });
}
