//! `sprig bench train-step`: time forward, backward and optimizer of one BERT classifier step.
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use sprig_bert::{is_encoder_linear_weight, BertClassifier, BertEncoder, Checkpoint, Ops, Pooling};
use sprig_kernels::candle::Format;
use sprig_prune::{Allocation, Criterion, Granularity, Inputs, Pruner, PrunerConfig};
use sprig_train::{AdamW, AdamWConfig, Optimizer};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, default_value = "sentence-transformers/all-MiniLM-L6-v2")]
    pub model: String,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Train the word embeddings too (PyTorch's default); off = sprig's fine-tuning default.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub train_word_embeddings: bool,
    /// Prune every encoder linear to this sparsity (per-tensor magnitude) and compile it to
    /// `--format`, so the step runs on sprig-kernels' sparse kernels (0 = dense).
    #[arg(long, default_value_t = 0.0)]
    pub sparsity: f64,
    /// Compile with the masks of this checkpoint (e.g. a ticket, `DIR/round-RR/seed-S`) instead of
    /// `--sparsity`'s per-tensor magnitude masks (the weights stay the pre-trained ones: only the
    /// sparsity pattern matters for speed).
    #[arg(long, conflicts_with = "sparsity")]
    pub masks: Option<PathBuf>,
    /// Sparse format for `--sparsity` / `--masks`: csr, bsr4x1, bsr1x4, bsr4x4, 2:4.
    #[arg(long, default_value = "csr")]
    pub format: String,
    /// Layer implementation: fused (sprig-kernels ops) or stock (candle's ops composed).
    #[arg(long, default_value = "fused")]
    pub ops: Ops,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Serialize)]
struct Timing {
    median: f64,
    runs: Vec<f64>,
}

fn timing(mut v: Vec<f64>) -> Timing {
    let runs = v.clone();
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    Timing { median, runs }
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Parse a format name of `bench train-step` / `compile`.
pub fn parse_format(s: &str) -> Result<Format> {
    Ok(match s {
        "csr" => Format::Csr,
        "2:4" => Format::Nm(2, 4),
        "4:8" => Format::Nm(4, 8),
        _ => match s.strip_prefix("bsr").and_then(|b| b.split_once('x')) {
            Some((r, c)) => Format::Bsr(r.parse().context("block rows")?, c.parse().context("block cols")?),
            None => anyhow::bail!("unknown sparse format {s:?} (csr, bsr4x1, bsr1x4, bsr4x4, 2:4, 4:8)"),
        },
    })
}

/// Magnitude-prune every encoder linear to `sparsity` (uniform per tensor; in `format`'s blocks or
/// N:M groups where it has them) and compile it.
fn compile(encoder: &mut BertEncoder, sparsity: f64, format: &str) -> Result<()> {
    let format = parse_format(format)?;
    let prunable: Vec<(String, candle_core::Var)> =
        encoder.named_params().iter().filter(|(n, _)| is_encoder_linear_weight(n)).cloned().collect();
    // Prune in the format's own structure, so the compiled pattern has no fill-in (an unstructured
    // mask stored as 4x1 blocks keeps every block that holds any weight: ~34% dense at 90%).
    let config = PrunerConfig::one_shot(Criterion::Magnitude, sparsity).granularity(Granularity::for_format(format)).allocation(Allocation::uniform());
    let masks = Pruner::for_params(config, &prunable)?.one_shot(&prunable, &mut Inputs::none())?.clone();
    encoder.compile_sparse(&masks, format)?;
    Ok(())
}

pub fn run(a: Args) -> Result<()> {
    let device = Device::Cpu;
    let ckpt = Checkpoint::load(&a.model, &device).with_context(|| format!("loading {}", a.model))?;
    let mut encoder = ckpt.encoder(0, &device)?;
    encoder.set_train_word_embeddings(a.train_word_embeddings);
    encoder.set_ops(a.ops);
    let mut sparsity = a.sparsity;
    if let Some(dir) = &a.masks {
        let masks = sprig_prune::checkpoint::load(dir, &device).with_context(|| format!("loading masks from {}", dir.display()))?.masks;
        sparsity = masks.sparsity();
        encoder.compile_sparse(&masks, parse_format(&a.format)?)?;
    } else if a.sparsity > 0.0 {
        compile(&mut encoder, a.sparsity, &a.format)?;
    }
    let model = BertClassifier::new(encoder, 2, Pooling::Mean, None, 0)?;
    let vocab = ckpt.config.vocab_size as u32;
    drop(ckpt);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let ids: Vec<u32> = (0..a.batch * a.seq).map(|_| rng.random_range(1000..vocab)).collect();
    let ids = Tensor::from_vec(ids, (a.batch, a.seq), &device)?;
    let types = ids.zeros_like()?;
    let mask = ids.ones_like()?;
    let label_ids: Vec<u32> = (0..a.batch as u32).map(|i| i % 2).collect();
    let labels = Tensor::from_vec(label_ids.clone(), a.batch, &device)?;
    let mut opt = AdamW::new(model.trainable_params(), AdamWConfig { lr: 2e-5, weight_decay: 0.01, ..Default::default() })?;
    let (mut fwd, mut tfwd, mut bwd, mut optim, mut step) = (vec![], vec![], vec![], vec![], vec![]);
    // Mean per-step time of each fused op in the training step (forward, backward).
    let mut by_op: Vec<(String, f64, f64)> = vec![];
    let threads = candle_core::utils::get_num_threads();
    eprintln!("bench train-step: {} batch {} seq {} threads {threads} ops {:?} sparsity {sparsity} ({})", a.model, a.batch, a.seq, a.ops, a.format);
    // The same for the inference forward (`predict`).
    let mut by_op_inf: Vec<(String, f64)> = vec![];
    for i in 0..a.warmup + a.runs {
        let profiled = i >= a.warmup && a.ops == Ops::Fused;
        sprig_kernels::nn::ops::profile::enable(profiled);
        let t = Instant::now();
        let logits = model.predict(&ids, &types, &mask)?;
        logits.to_vec2::<f32>()?;
        let f = t.elapsed().as_secs_f64() * 1e3;
        if profiled {
            let totals = sprig_kernels::nn::ops::profile::totals();
            if by_op_inf.is_empty() {
                by_op_inf = totals.iter().map(|(n, _, _)| (n.to_string(), 0.0)).collect();
            }
            for (acc, (_, f, _)) in by_op_inf.iter_mut().zip(&totals) {
                acc.1 += f / a.runs as f64;
            }
        }
        sprig_kernels::nn::ops::profile::enable(i >= a.warmup && a.ops == Ops::Fused);
        let t0 = Instant::now();
        let logits = model.forward(&ids, &types, &mask, true)?;
        let loss = match a.ops {
            Ops::Fused => sprig_kernels::nn::ops::softmax_cross_entropy(&logits, &label_ids)?,
            Ops::Stock => candle_nn::loss::cross_entropy(&logits, &labels)?,
        };
        loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let t2 = Instant::now();
        opt.step(&grads)?;
        let t3 = Instant::now();
        sprig_kernels::nn::ops::profile::enable(false);
        if i >= a.warmup && a.ops == Ops::Fused {
            let totals = sprig_kernels::nn::ops::profile::totals();
            if by_op.is_empty() {
                by_op = totals.iter().map(|(n, _, _)| (n.to_string(), 0.0, 0.0)).collect();
            }
            for (acc, (_, f, b)) in by_op.iter_mut().zip(&totals) {
                acc.1 += f / a.runs as f64;
                acc.2 += b / a.runs as f64;
            }
        }
        if i >= a.warmup {
            fwd.push(f);
            tfwd.push((t1 - t0).as_secs_f64() * 1e3);
            bwd.push((t2 - t1).as_secs_f64() * 1e3);
            optim.push((t3 - t2).as_secs_f64() * 1e3);
            step.push((t3 - t0).as_secs_f64() * 1e3);
        }
        eprintln!("  run {i}: forward {f:.0} ms, step {:.0} ms", (t3 - t0).as_secs_f64() * 1e3);
    }
    let out = serde_json::json!({
        "impl": "sprig", "ops": a.ops, "sparsity": sparsity, "masks": a.masks, "format": a.format, "model": a.model, "batch": a.batch, "seq": a.seq, "threads": threads,
        "train_word_embeddings": a.train_word_embeddings,
        "forward_ms": timing(fwd), "train_forward_ms": timing(tfwd), "backward_ms": timing(bwd),
        "optimizer_ms": timing(optim), "step_ms": timing(step), "peak_rss_mb": peak_rss_mb(),
        "by_op_ms": by_op.iter().map(|(n, f, b)| serde_json::json!({"op": n, "forward": f, "backward": b})).collect::<Vec<_>>(),
        "inference_by_op_ms": by_op_inf.iter().map(|(n, f)| serde_json::json!({"op": n, "forward": f})).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    if let Some(p) = &a.json {
        sprig_train::write_json(p, &out)?;
    }
    Ok(())
}
