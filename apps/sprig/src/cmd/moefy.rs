//! `sprig moefy`: a fine-tuned classifier's FFNs split into experts with trained routers
//! (MoEfication), evaluated against the dense model on the same splits.
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
    /// Where `moefy.json` goes (a new or empty directory).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
}

pub fn run(a: Args) -> Result<()> {
    let device = Device::Cpu;
    if a.experts == 0 || a.calibration == 0 || a.batch_size == 0 {
        bail!("--experts, --calibration and --batch-size must be at least 1");
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
    let cfg = MoefyConfig { experts: a.experts, top_k: a.top_k[0], router_steps: a.router_steps, seed, ..MoefyConfig::default() };
    let t = std::time::Instant::now();
    let report = model.encoder.moefy(&cfg, &calib)?;
    let moefy_seconds = t.elapsed().as_secs_f64();
    tracing::info!(tokens = report.calibration_tokens, recall = ?report.router_recall, seconds = moefy_seconds, "routers trained");
    println!("| model | experts run per token | FFN neurons active | dev acc | test acc | test / dense |\n|---|---|---|---|---|---|");
    println!("| dense | | 100% | {:.4} | {:.4} | |", dense.0, dense.1);
    let mut rows = Vec::new();
    for &k in &a.top_k {
        model.encoder.set_moe_top_k(k)?;
        let (d, t) = eval(&model)?;
        println!("| MoE-fied, top-{k} of {} | {k} | {:.1}% | {d:.4} | {t:.4} | {:.3} |", a.experts, 100.0 * k as f64 / a.experts as f64, t / dense.1);
        rows.push(serde_json::json!({"top_k": k, "active_ffn_fraction": k as f64 / a.experts as f64, "dev_accuracy": d, "test_accuracy": t, "test_over_dense": t / dense.1}));
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let summary = serde_json::json!({
        "model": a.model, "task": a.task, "seed": seed, "experts": a.experts, "calibration_examples": n,
        "calibration_tokens": report.calibration_tokens, "router_steps": a.router_steps, "router_recall": report.router_recall,
        "moefy_seconds": moefy_seconds, "dense": {"dev_accuracy": dense.0, "test_accuracy": dense.1}, "moe": rows,
    });
    sprig_train::write_json(&out_json, &summary)?;
    println!("summary: {}", out_json.display());
    Ok(())
}
