//! `sprig moefy`: a fine-tuned classifier's FFNs split into experts with trained routers
//! (MoEfication), or upcycled into copies (`--upcycle`), evaluated against the dense model on
//! the same splits.
use anyhow::{bail, Context, Result};
use candle_core::Device;
use sprig_bert::finetune::{batch_tensors, evaluate, tokenize};
use sprig_bert::model::MoefyConfig;
use sprig_bert::{BertTokenizer, Checkpoint};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A fine-tuned classifier directory (e.g. the `--out` of `sprig finetune`).
    #[arg(long)]
    pub model: String,
    #[arg(long)]
    pub task: String,
    /// Experts per FFN (they split its neurons equally).
    #[arg(long, default_value_t = 8)]
    pub experts: usize,
    /// Experts each token runs (comma-separated to evaluate several).
    #[arg(long, value_delimiter = ',', default_value = "2")]
    pub top_k: Vec<usize>,
    /// Training examples whose FFN inputs train the routers (padding excluded).
    #[arg(long, default_value_t = 512)]
    pub calibration: usize,
    /// Full-batch AdamW steps of each router.
    #[arg(long, default_value_t = 300)]
    pub router_steps: usize,
    /// Where `moefy.json` and the MoE-fied checkpoint go (Hugging Face weights with the experts folded
    /// back into each FFN, plus `moe.safetensors` with the routers; a new or empty directory).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Also time each layer's FFN block, dense vs experts at the first `--top-k`, on this many
    /// real FFN-input tokens (32 x 128 = 4096 by default; 0 skips), alternated over `--time-reps`.
    #[arg(long, default_value_t = 4096)]
    pub time_tokens: usize,
    #[arg(long, default_value_t = 10)]
    pub time_reps: usize,
    /// Epochs of fine-tuning after MoE-fication at the first `--top-k`, distilled from the dense
    /// model (MoEBERT); 0 evaluates the MoE-fied model as split.
    #[arg(long, default_value_t = 0)]
    pub finetune_epochs: usize,
    #[arg(long, default_value_t = 5e-5)]
    pub lr: f64,
    /// Weight of the soft targets in the fine-tuning loss (the rest: hard labels).
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f64,
    #[arg(long, default_value_t = 2.0)]
    pub temperature: f64,
    /// Sparse upcycling instead of the split (Komatsuzaki et al. 2023): every expert a copy of the
    /// whole FFN behind a new router (gates renormalised over the chosen experts), trained with
    /// the model by `--finetune-epochs` (the routers too, with the balancing loss). Each token
    /// then runs `--top-k` whole FFNs; the experts are saved whole in `moe.safetensors`.
    #[arg(long)]
    pub upcycle: bool,
    /// Make every expert sparse after the split (or upcycling), before fine-tuning: the
    /// largest-magnitude `1 − S` of each expert matrix kept and run as CSR by sprig-kernels.
    #[arg(long, default_value_t = 0.0)]
    pub expert_sparsity: f64,
}

pub fn run(a: Args) -> Result<()> {
    let device = Device::Cpu;
    if a.experts == 0 || a.calibration == 0 || a.batch_size == 0 {
        bail!("--experts, --calibration and --batch-size must be at least 1");
    }
    if !(0.0..1.0).contains(&a.expert_sparsity) {
        bail!("--expert-sparsity {} is outside [0, 1)", a.expert_sparsity);
    }
    if let Some(&k) = a.top_k.iter().find(|&&k| k == 0 || k > a.experts) {
        bail!("--top-k {k} is outside 1..={} (--experts)", a.experts);
    }
    sprig_lab::run_dir::StagedOut::check_sources(&a.out, &[("--model", Path::new(&a.model))])?;
    let out_json = a.out.join("moefy.json");
    if out_json.exists() {
        bail!("{} exists (an earlier run); nothing was changed (choose another --out)", out_json.display());
    }
    let ckpt = Checkpoint::load(&a.model, &device).with_context(|| format!("loading {}", a.model))?;
    if !ckpt.has_classifier() {
        bail!("{} has no classification head (classifier.weight); fine-tune it first with `sprig finetune`", a.model);
    }
    let recorded = ckpt.config.extra.get("sprig").cloned().unwrap_or_default();
    let seed: u64 = recorded.get("seed").and_then(|s| s.as_str()?.parse().ok()).unwrap_or(42);
    let data = sprig_data::load_text_task(&a.task, &sprig_data::sprig_home(), seed)?;
    let labels = ckpt.config.labels().unwrap_or_default();
    if labels.len() != data.classes.len() {
        bail!("checkpoint has {} labels but task {} has {} classes", labels.len(), a.task, data.classes.len());
    }
    let tok = BertTokenizer::from_file(ckpt.files.tokenizer()?, 128)?;
    let mut model = ckpt.classifier(seed, &device)?;
    let (dev_t, test_t, train_t) = (tokenize(&tok, &data.dev)?, tokenize(&tok, &data.test)?, tokenize(&tok, &data.train)?);
    let eval = |m: &sprig_bert::BertClassifier| -> Result<(f64, f64)> {
        Ok((evaluate(m, &dev_t, a.batch_size, tok.pad_id())?.accuracy, evaluate(m, &test_t, a.batch_size, tok.pad_id())?.accuracy))
    };
    let dense = eval(&model)?;
    tracing::info!(dev = dense.0, test = dense.1, "dense");
    let n = a.calibration.min(train_t.labels.len());
    let idx: Vec<usize> = (0..n).collect();
    let calib = idx.chunks(32).map(|c| batch_tensors(&train_t, c, tok.pad_id(), &device)).collect::<sprig_bert::Result<Vec<_>>>()?;
    let teacher = if a.finetune_epochs > 0 { sprig_bert::finetune::logits(&model, &train_t, a.batch_size, tok.pad_id())? } else { Vec::new() };
    let ffn_inputs = if a.time_tokens > 0 { ffn_inputs(&model.encoder, &calib, a.time_tokens)? } else { Vec::new() };
    let cfg = MoefyConfig { experts: a.experts, top_k: a.top_k[0], router_steps: a.router_steps, seed, ..MoefyConfig::default() };
    let t = std::time::Instant::now();
    let report = if a.upcycle {
        model.encoder.upcycle(a.experts, a.top_k[0], seed)?;
        sprig_bert::model::MoefyReport::default()
    } else {
        model.encoder.moefy(&cfg, &calib)?
    };
    if a.expert_sparsity > 0.0 {
        model.encoder.sparsify_moe_experts(a.expert_sparsity, sprig_moe::Format::Csr)?;
        tracing::info!(sparsity = a.expert_sparsity, "experts made sparse (magnitude per matrix, CSR)");
    }
    let moefy_seconds = t.elapsed().as_secs_f64();
    if !a.upcycle {
        tracing::info!(tokens = report.calibration_tokens, recall = ?report.router_recall, seconds = moefy_seconds, "routers trained");
    }
    let mut finetune = serde_json::Value::Null;
    if a.finetune_epochs > 0 {
        let mut rows = Vec::new();
        for &k in &a.top_k {
            model.encoder.set_moe_top_k(k)?;
            rows.push((k, eval(&model)?));
        }
        model.encoder.set_moe_top_k(a.top_k[0])?;
        let fc = sprig_bert::moe_finetune::MoeFinetuneConfig { epochs: a.finetune_epochs, lr: a.lr, alpha: a.alpha, temperature: a.temperature, seed, ..Default::default() };
        let s = sprig_bert::moe_finetune::finetune_moefied(&mut model, &train_t, &dev_t, &teacher, tok.pad_id(), &fc)?;
        tracing::info!(best_epoch = s.best_epoch, dev = s.best_dev_accuracy, seconds = s.train_seconds, "fine-tuned after MoE-fication");
        finetune = serde_json::json!({
            "config": fc, "summary": s,
            "before": rows.iter().map(|(k, (d, t))| serde_json::json!({"top_k": k, "dev_accuracy": d, "test_accuracy": t})).collect::<Vec<_>>(),
        });
    }
    // The MoE-fied model as a checkpoint: Hugging Face weights with the experts folded back into
    // each FFN (every expert on), plus the routers; upcycled experts stay whole in the MoE file
    // (the FFN weights are the untrained originals). Loaded back and evaluated to check.
    model.encoder.set_moe_top_k(a.top_k[0])?;
    if !a.upcycle {
        model.encoder.fold_moe_into_ffn()?;
    }
    let meta = [("task", a.task.clone()), ("seed", seed.to_string())].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    sprig_bert::save_classifier(&model, &labels, ckpt.files.tokenizer()?, &a.out, meta)?;
    model.encoder.save_moe(&a.out.join(sprig_bert::model::MOE_FILE))?;
    let reloaded = eval(&Checkpoint::load(a.out.to_str().context("non-UTF-8 --out")?, &device)?.classifier(seed, &device)?)?;
    tracing::info!(dev = reloaded.0, test = reloaded.1, top_k = a.top_k[0], "saved and reloaded");
    let timing = time_ffn(&mut model.encoder, &ffn_inputs, a.top_k[0], a.time_reps)?;
    if a.finetune_epochs > 0 {
        println!("(MoE rows: after {} epochs of fine-tuning at top-{} distilled from the dense model)", a.finetune_epochs, a.top_k[0]);
    }
    println!("| model | experts run per token | FFN neurons active | dev acc | test acc | test / dense |\n|---|---|---|---|---|---|");
    println!("| dense | | 100% | {:.4} | {:.4} | |", dense.0, dense.1);
    let mut rows = Vec::new();
    let (kind, expert_share) = if a.upcycle { ("upcycled", 1.0) } else { ("MoE-fied", 1.0 / a.experts as f64) };
    for &k in &a.top_k {
        model.encoder.set_moe_top_k(k)?;
        let (d, t) = eval(&model)?;
        let active = k as f64 * expert_share;
        println!("| {kind}, top-{k} of {} | {k} | {:.1}% | {d:.4} | {t:.4} | {:.3} |", a.experts, 100.0 * active, t / dense.1);
        rows.push(serde_json::json!({"top_k": k, "active_ffn_fraction": active, "dev_accuracy": d, "test_accuracy": t, "test_over_dense": t / dense.1}));
    }
    let summary = serde_json::json!({
        "model": a.model, "task": a.task, "seed": seed, "experts": a.experts, "split": if a.upcycle { "upcycle" } else { "clusters" }, "expert_sparsity": a.expert_sparsity, "calibration_examples": n,
        "calibration_tokens": report.calibration_tokens, "router_steps": a.router_steps, "router_recall": report.router_recall,
        "moefy_seconds": moefy_seconds, "dense": {"dev_accuracy": dense.0, "test_accuracy": dense.1}, "moe": rows,
        "ffn_timing": timing,
        "finetune": finetune,
        "reloaded": {"top_k": a.top_k[0], "dev_accuracy": reloaded.0, "test_accuracy": reloaded.1},
    });
    sprig_train::write_json(&out_json, &summary)?;
    println!("summary: {}", out_json.display());
    Ok(())
}

/// The first `tokens` real (non-padding) FFN inputs of every layer, `[tokens, H]` each, from the
/// dense encoder on `batches`.
fn ffn_inputs(enc: &sprig_bert::BertEncoder, batches: &[(candle_core::Tensor, candle_core::Tensor, candle_core::Tensor)], tokens: usize) -> Result<Vec<candle_core::Tensor>> {
    enc.ffn_inputs(batches)?
        .into_iter()
        .map(|x| {
            if x.dims()[0] < tokens {
                bail!("the calibration examples hold {} tokens, fewer than --time-tokens {tokens} (raise --calibration or lower --time-tokens)", x.dims()[0]);
            }
            Ok(x.narrow(0, 0, tokens)?.contiguous()?)
        })
        .collect()
}

/// Median wall time (ms) of every layer's dense FFN block and of its experts at top-`k`, the two
/// alternated `reps` times after one warm-up each; `null` when there are no inputs.
fn time_ffn(enc: &mut sprig_bert::BertEncoder, inputs: &[candle_core::Tensor], k: usize, reps: usize) -> Result<serde_json::Value> {
    if inputs.is_empty() || reps == 0 {
        return Ok(serde_json::Value::Null);
    }
    enc.set_moe_top_k(k)?;
    let median = |mut v: Vec<f64>| -> f64 {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let mut layers = Vec::new();
    let (mut dense_sum, mut moe_sum) = (0.0, 0.0);
    for (i, x) in inputs.iter().enumerate() {
        let (mut dense, mut moe) = (Vec::new(), Vec::new());
        for rep in 0..=reps {
            for (experts, out) in [(false, &mut dense), (true, &mut moe)] {
                let t = std::time::Instant::now();
                let y = enc.ffn_block(i, x, experts)?;
                std::hint::black_box(&y);
                if rep > 0 {
                    out.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        let (d, m) = (median(dense), median(moe));
        dense_sum += d;
        moe_sum += m;
        tracing::info!(layer = i, dense_ms = d, moe_ms = m, ratio = m / d, "FFN block");
        layers.push(serde_json::json!({"layer": i, "dense_ms": d, "moe_ms": m, "moe_over_dense": m / d}));
    }
    println!("FFN blocks, {} tokens, top-{k}: dense {dense_sum:.1} ms, experts {moe_sum:.1} ms ({:.2}x), medians of {reps} alternated runs", inputs[0].dims()[0], moe_sum / dense_sum);
    Ok(serde_json::json!({
        "tokens": inputs[0].dims()[0], "top_k": k, "reps": reps, "threads": sprig_kernels::bench::threads(),
        "simd": sprig_kernels::simd_level(), "layers": layers,
        "dense_ms_sum": dense_sum, "moe_ms_sum": moe_sum, "moe_over_dense": moe_sum / dense_sum,
    }))
}

/// `sprig moefy-report RUN... --svg FILE`: accuracy vs FFN neurons run per token of finished
/// `sprig moefy` runs.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Output directories of `sprig moefy`.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Where to write the figure (written whole or not at all).
    #[arg(long)]
    pub svg: PathBuf,
    #[arg(long, default_value = "MoE-fied MiniLM-L6: accuracy vs FFN neurons run per token")]
    pub title: String,
}

pub fn report(a: ReportArgs) -> Result<()> {
    let mut series = Vec::new();
    for d in &a.runs {
        series.extend(sprig_lab::moe_report::read_moefy(d)?);
    }
    let svg = sprig_lab::moe_report::plot_svg(&series, &a.title)?;
    sprig_train::run::write_atomic(&a.svg, svg.as_bytes()).with_context(|| format!("writing {}", a.svg.display()))?;
    for (label, pts) in &series {
        println!("{label}: {}", pts.iter().map(|(x, y)| format!("{x:.1}% -> {y:.1}%")).collect::<Vec<_>>().join(", "));
    }
    println!("figure: {}", a.svg.display());
    Ok(())
}
