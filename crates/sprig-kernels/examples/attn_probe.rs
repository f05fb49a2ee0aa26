//! Times the fused attention kernel alone: `cargo run --release -p sprig-kernels --example attn_probe [B S HEADS D]`.
use sprig_kernels::nn::{attention, AttentionSpec, DropoutSpec};
use std::time::Instant;

fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().expect("usize")).collect();
    let (b, s, nh, d) = if a.len() == 4 { (a[0], a[1], a[2], a[3]) } else { (32, 128, 12, 32) };
    let h = nh * d;
    let qkv: Vec<f32> = (0..b * s * 3 * h).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0).collect();
    let mut ctx = vec![0f32; b * s * h];
    let mut dqkv = vec![0f32; qkv.len()];
    for drop in [None, Some(DropoutSpec { p: 0.1, seed: 1 })] {
        let spec = AttentionSpec { batch: b, seq: s, heads: nh, head_dim: d, scale: 1.0 / (d as f32).sqrt(), key_bias: vec![0.0; b * s], dropout: drop };
        let mut probs = vec![0f32; spec.probs_len()];
        let (mut fw, mut bw) = (Vec::new(), Vec::new());
        for _ in 0..7 {
            let t = Instant::now();
            attention::forward(&qkv, &spec, &mut ctx, Some(&mut probs));
            fw.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            attention::backward(&qkv, &spec, Some(&probs), &ctx, &mut dqkv);
            bw.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let mut inf = Vec::new();
        for _ in 0..7 {
            let t = Instant::now();
            attention::forward(&qkv, &spec, &mut ctx, None);
            inf.push(t.elapsed().as_secs_f64() * 1e3);
        }
        if drop.is_none() {
            let mut q8 = Vec::new();
            let mut ctx8 = vec![0f32; ctx.len()];
            for _ in 0..7 {
                let t = Instant::now();
                sprig_kernels::quant::attention::forward(&qkv, &spec, &mut ctx8);
                q8.push(t.elapsed().as_secs_f64() * 1e3);
            }
            q8.sort_by(f64::total_cmp);
            attention::forward(&qkv, &spec, &mut ctx, None);
            let err = ctx.iter().zip(&ctx8).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            let mag = ctx.iter().map(|a| a.abs()).fold(0f32, f32::max);
            println!("int8 inference forward ({}): {:.2} ms, max |int8 - f32| {err:.2e} (max |ctx| {mag:.2})", sprig_kernels::quant::attention::attention_path(&spec), q8[3]);
        }
        inf.sort_by(f64::total_cmp);
        fw.sort_by(f64::total_cmp);
        bw.sort_by(f64::total_cmp);
        let flop = 4.0 * (b * nh * s * s * d) as f64;
        println!("dropout {:?}: inference forward {:.2} ms, forward {:.2} ms ({:.1} GFLOP/s), backward {:.2} ms ({:.1} GFLOP/s)", drop.map(|x| x.p), inf[3], fw[3], flop / fw[3] / 1e6, bw[3], 2.0 * flop / bw[3] / 1e6);
    }
}
