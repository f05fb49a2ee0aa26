//! Times block OBS ([`sprig_prune::obs`]) at MiniLM-L6 size: the encoder linears of 6 layers
//! (4 x 384x384 + 384x1536 + 1536x384 each, 10.6 M weights), B = 50, m = 32, random data:
//! scores of every weight, the global ranking that prunes 50%, and the weight update of every block.
//! `cargo run --release -p sprig-prune --example obs_bench [layers]` (needs ~1.5 GB for the window).
use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{Device, Var};
use sprig_prune::obs::{self, GradWindow};
use sprig_prune::{prune, Allocation, Granularity, MaskSet};

/// CPU seconds used by this process so far (utime + stime from /proc, Linux; 0 elsewhere), so
/// timings on a shared machine can be read apart from the wall clock.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0) + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let layers: usize = std::env::args().nth(1).map_or(Ok(6), |a| a.parse())?;
    let (block, m, lam) = (50, 32, 1e-7);
    let mut shapes = Vec::new();
    for l in 0..layers {
        for (n, s) in [("q", [384, 384]), ("k", [384, 384]), ("v", [384, 384]), ("o", [384, 384]), ("up", [1536, 384]), ("down", [384, 1536])] {
            shapes.push((format!("layer.{l}.{n}.weight"), s.to_vec()));
        }
    }
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.02
    };
    let params: Vec<(String, Var)> = shapes
        .iter()
        .map(|(n, s)| Ok((n.clone(), Var::from_vec((0..s.iter().product()).map(|_| next() * 5.0).collect::<Vec<f32>>(), s.as_slice(), &Device::Cpu)?)))
        .collect::<Result<_, candle_core::Error>>()?;
    let numel: usize = shapes.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    let mut window = GradWindow::new(m)?;
    for _ in 0..m {
        window.push(shapes.iter().map(|(n, s)| (n.clone(), (0..s.iter().product()).map(|_| next()).collect())).collect::<BTreeMap<_, _>>())?;
    }
    println!("{numel} weights, B = {block}, m = {m}, window {:.2} GB, {} threads", window.bytes() as f64 / 1e9, rayon::current_num_threads());
    let (t, c) = (Instant::now(), cpu_seconds());
    let scores = obs::scores(&window, &params, None, block, lam)?;
    println!("scores: {:.2} s wall, {:.2} s CPU", t.elapsed().as_secs_f64(), cpu_seconds() - c);
    let (t, c) = (Instant::now(), cpu_seconds());
    let after = prune(&scores, &shapes, 0.5, Granularity::Unstructured, &Allocation::global(), None)?;
    println!("global prune to 50%: {:.2} s wall, {:.2} s CPU", t.elapsed().as_secs_f64(), cpu_seconds() - c);
    let (t, c) = (Instant::now(), cpu_seconds());
    let up = obs::update(&window, &params, &MaskSet::ones_for(&params), &after, block, lam)?;
    println!("update: {:.2} s wall, {:.2} s CPU ({} weights pruned)", t.elapsed().as_secs_f64(), cpu_seconds() - c, up.pruned);
    after.check_pruned_zero(&params)?;
    Ok(())
}
