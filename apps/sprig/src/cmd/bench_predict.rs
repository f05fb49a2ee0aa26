//! `sprig bench predict --model DIR --batch 1,32 --seq 128 --runs N --warmup W --json F`: the
//! forward of `sprig predict` (model loaded and compiled as predict does it, tokenization
//! excluded) on fixed random token ids, the dense masked model and the compiled sparse one run
//! alternately; medians and ranges over the runs. Peers (PyTorch, ONNX Runtime) are timed by
//! `benches/bench-predict-peers.py`, which calls this command.
use super::predict::{compile, int8_model, load, parse_formats};
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use sprig_bert::BertClassifier;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A classifier directory (as for `sprig predict`).
    #[arg(long)]
    pub model: PathBuf,
    /// Batch sizes (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    pub batch: Vec<usize>,
    /// Tokens per sequence (all real tokens, no padding).
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Timed runs of each model per batch size.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Untimed runs of each model first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// The sparse model's formats, as `sprig predict --formats` (auto: measured per batch size
    /// at batch x seq rows, cached beside the model).
    #[arg(long, default_value = "auto")]
    pub formats: String,
    /// Also time the model with its encoder linears in int8 (`sprig predict --int8`), alternated
    /// with the other two.
    #[arg(long)]
    pub int8: bool,
    /// Also report where each model's forward spends its time (sprig-kernels' per-op timers,
    /// averaged over the timed runs; "other" is the rest: embeddings, pooling, copies, the head).
    #[arg(long)]
    pub profile: bool,
    /// Write `{provenance, rows}` here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Times of one model over the runs, in ms.
#[derive(Serialize)]
struct Stats {
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
    runs_ms: Vec<f64>,
}

impl Stats {
    fn of(runs: Vec<f64>) -> Self {
        let mut s = runs.clone();
        s.sort_by(|a, b| a.total_cmp(b));
        let n = s.len();
        let median = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 };
        Self { median_ms: median, min_ms: s[0], max_ms: s[n - 1], runs_ms: runs }
    }
}

#[derive(Serialize)]
struct Row {
    batch: usize,
    seq: usize,
    threads: usize,
    sparsity: f64,
    /// How many encoder linears run in each format.
    formats: BTreeMap<String, usize>,
    /// measured / cached / fixed, and the seconds the measurement took (when it was made).
    formats_source: &'static str,
    formats_seconds: f64,
    dense: Stats,
    sparse: Stats,
    /// dense median / sparse median.
    speedup: f64,
    /// Largest |probability difference| between the two models on the benchmark batch.
    max_abs_prob_diff: f32,
    /// With `--profile`: per model (`dense`, `sparse`, `int8`), milliseconds per forward by op.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    profile: BTreeMap<&'static str, BTreeMap<&'static str, f64>>,
    /// With `--int8`: the int8 model's times, dense median / int8 median, and its largest
    /// |probability difference| from the dense model.
    #[serde(skip_serializing_if = "Option::is_none")]
    int8: Option<Stats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    int8_speedup: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    int8_max_abs_prob_diff: Option<f32>,
}

fn probs(m: &BertClassifier, ids: &Tensor, types: &Tensor, mask: &Tensor) -> Result<Vec<f32>> {
    let logits = m.predict(ids, types, mask)?;
    Ok(candle_nn::ops::softmax_last_dim(&logits)?.flatten_all()?.to_vec1::<f32>()?)
}

pub fn run(a: Args) -> Result<()> {
    if a.batch.is_empty() || a.batch.contains(&0) || a.seq == 0 || a.runs == 0 {
        bail!("--batch values, --seq and --runs must be at least 1 (got --batch {:?} --seq {} --runs {})", a.batch, a.seq, a.runs);
    }
    let formats = parse_formats(&a.formats)?;
    let loaded = load(&a.model)?;
    let cfg = &loaded.ckpt.config;
    if a.seq > cfg.max_position_embeddings {
        bail!("--seq {} exceeds the model's max_position_embeddings {}", a.seq, cfg.max_position_embeddings);
    }
    let dense = loaded.ckpt.classifier(0, &Device::Cpu)?;
    let int8 = if a.int8 { Some(int8_model(&loaded)?) } else { None };
    let threads = sprig_kernels::bench::threads();
    eprintln!("sprig bench predict: simd {}, {threads} rayon threads", sprig_kernels::simd_level());
    let mut rows = vec![];
    let i8h = if a.int8 { (" int8 ms (range) | int8 speedup |", "---|---|") } else { ("", "") };
    println!("| batch | seq | dense ms (range) | sparse ms (range) | speedup |{} formats |\n|---|---|---|---|---|{}---|", i8h.0, i8h.1);
    for &b in &a.batch {
        let c = compile(&loaded, formats, b * a.seq)?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let vocab = cfg.vocab_size as u32;
        let ids: Vec<u32> = (0..b * a.seq).map(|_| rng.random_range(1000.min(vocab - 1)..vocab)).collect();
        let ids = Tensor::from_vec(ids, (b, a.seq), &Device::Cpu)?;
        let (types, mask) = (ids.zeros_like()?, ids.ones_like()?);
        let pd = probs(&dense, &ids, &types, &mask)?;
        let ps = probs(&c.model, &ids, &types, &mask)?;
        let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        let diff = max_diff(&pd, &ps);
        let int8_diff = int8.as_ref().map(|m| probs(m, &ids, &types, &mask).map(|p| max_diff(&pd, &p))).transpose()?;
        let (mut dr, mut sr, mut ir) = (vec![], vec![], vec![]);
        let mut prof: BTreeMap<&'static str, BTreeMap<&'static str, f64>> = BTreeMap::new();
        for i in 0..a.warmup + a.runs {
            let profiled = a.profile && i >= a.warmup;
            let mut time = |name: &'static str, m: &BertClassifier| -> Result<f64> {
                sprig_kernels::nn::ops::profile::enable(profiled);
                let t = Instant::now();
                m.predict(&ids, &types, &mask)?;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                if profiled {
                    sprig_kernels::nn::ops::profile::enable(false);
                    let p = prof.entry(name).or_default();
                    let mut ops = 0.0;
                    for (op, f, _) in sprig_kernels::nn::ops::profile::totals() {
                        *p.entry(op).or_default() += f / a.runs as f64;
                        ops += f;
                    }
                    *p.entry("other").or_default() += (ms - ops) / a.runs as f64;
                }
                Ok(ms)
            };
            let (d, s) = (time("dense", &dense)?, time("sparse", &c.model)?);
            let q = int8.as_ref().map(|m| time("int8", m)).transpose()?;
            if i >= a.warmup {
                dr.push(d);
                sr.push(s);
                ir.extend(q);
            }
        }
        let (dense_s, sparse_s) = (Stats::of(dr), Stats::of(sr));
        let int8_s = int8.as_ref().map(|_| Stats::of(ir));
        let int8_speedup = int8_s.as_ref().map(|q| dense_s.median_ms / q.median_ms);
        let row = Row {
            batch: b,
            seq: a.seq,
            threads,
            sparsity: loaded.masks.sparsity(),
            formats: c.plan.counts(),
            formats_source: c.source,
            formats_seconds: c.plan.seconds,
            speedup: dense_s.median_ms / sparse_s.median_ms,
            dense: dense_s,
            sparse: sparse_s,
            max_abs_prob_diff: diff,
            int8_speedup,
            profile: prof.iter().map(|(m, p)| (*m, p.iter().filter(|(_, v)| **v > 0.0).map(|(k, v)| (*k, *v)).collect())).collect(),
            int8: int8_s,
            int8_max_abs_prob_diff: int8_diff,
        };
        let i8c = match (&row.int8, row.int8_speedup) {
            (Some(q), Some(x)) => format!(" {:.1} ({:.1}-{:.1}) | {x:.2}x |", q.median_ms, q.min_ms, q.max_ms),
            _ => String::new(),
        };
        println!(
            "| {b} | {} | {:.1} ({:.1}-{:.1}) | {:.1} ({:.1}-{:.1}) | {:.2}x |{i8c} {:?} |",
            a.seq, row.dense.median_ms, row.dense.min_ms, row.dense.max_ms, row.sparse.median_ms, row.sparse.min_ms, row.sparse.max_ms, row.speedup, row.formats
        );
        for (m, p) in &row.profile {
            let parts: Vec<String> = p.iter().map(|(op, ms)| format!("{op} {ms:.1}")).collect();
            eprintln!("  profile {m} (ms per forward): {}", parts.join(", "));
        }
        rows.push(row);
    }
    if let Some(p) = &a.json {
        super::bench::write_with_provenance(p, &serde_json::to_value(&rows)?)?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}
