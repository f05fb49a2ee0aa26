//! `sprig eval`: evaluate a fine-tuned classifier checkpoint on a task's test split.
use anyhow::{bail, Context, Result};
use candle_core::Device;
use sprig_bert::finetune::{evaluate, tokenize};
use sprig_bert::{BertTokenizer, Checkpoint};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A fine-tuned checkpoint directory (e.g. the `--out` of `sprig finetune`).
    #[arg(long)]
    pub model: String,
    #[arg(long)]
    pub task: String,
    /// Where to write `eval.json`.
    #[arg(long)]
    pub out: PathBuf,
    /// Split seed [default: the seed recorded in the checkpoint, else 42].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Which split: test or dev.
    #[arg(long, default_value = "test")]
    pub split: String,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 128)]
    pub max_seq_len: usize,
    /// Evaluate on the split of a `--seed` other than the one the checkpoint was fine-tuned with
    /// (its test examples may then be training examples of the checkpoint).
    #[arg(long)]
    pub any_split_seed: bool,
    /// Run the encoder linears in int8 (per-channel weights, per-token activations; pruned
    /// weights stay pruned), as `sprig predict --int8` does.
    #[arg(long)]
    pub int8: bool,
    /// Replace an `eval.json` already in `--out` (refused otherwise).
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(a: Args) -> Result<()> {
    let device = Device::Cpu;
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1 (got 0)");
    }
    if !matches!(a.split.as_str(), "test" | "dev") {
        bail!("unknown split {:?} (test or dev)", a.split);
    }
    // An evaluation is written beside runs, never into the checkpoint it evaluates, and never
    // over an earlier one unless asked.
    sprig_lab::run_dir::StagedOut::check_sources(&a.out, &[("--model", Path::new(&a.model))])?;
    let eval_json = a.out.join("eval.json");
    if eval_json.exists() && !a.overwrite {
        bail!("{} exists (an earlier evaluation); nothing was changed (choose another --out, or give --overwrite to replace it)", eval_json.display());
    }
    let ckpt = Checkpoint::load(&a.model, &device).with_context(|| format!("loading {}", a.model))?;
    if !ckpt.has_classifier() {
        bail!("{} has no classification head (classifier.weight); fine-tune it first with `sprig finetune`", a.model);
    }
    let recorded = ckpt.config.extra.get("sprig").cloned().unwrap_or_default();
    let trained_seed: Option<u64> = recorded.get("seed").and_then(|s| s.as_str()?.parse().ok());
    if let (Some(asked), Some(trained)) = (a.seed, trained_seed) {
        if asked != trained && !a.any_split_seed {
            bail!("--seed {asked} differs from the seed {trained} of the split {} was fine-tuned on: its test split would overlap that model's training data (pass --any-split-seed to evaluate anyway)", a.model);
        }
    }
    if a.max_seq_len < 2 || a.max_seq_len > ckpt.config.max_position_embeddings {
        bail!("--max-seq-len must be in 2..={} (the model's max_position_embeddings), got {}", ckpt.config.max_position_embeddings, a.max_seq_len);
    }
    let seed = a.seed.or(trained_seed).unwrap_or(42);
    if let Some(t) = recorded.get("task").and_then(|t| t.as_str()) {
        if t != a.task {
            tracing::warn!("checkpoint was fine-tuned on {t}, evaluating on {}", a.task);
        }
    }
    let data = sprig_data::load_text_task(&a.task, &sprig_data::sprig_home(), seed)?;
    let labels = ckpt.config.labels().unwrap_or_default();
    if labels.len() != data.classes.len() {
        bail!("checkpoint has {} labels but task {} has {} classes", labels.len(), a.task, data.classes.len());
    }
    let tok = BertTokenizer::from_file(ckpt.files.tokenizer()?, a.max_seq_len)?;
    let mut model = ckpt.classifier(seed, &device)?;
    let int8 = if a.int8 { Some(model.encoder.quantize_int8()?) } else { None };
    if let Some(s) = &int8 {
        tracing::info!("int8 ({}, attention {}): {} linears, {} of {} f32 non-zeros stay non-zero", s.path, s.attention, s.linears, s.nonzero_int8, s.nonzero_f32);
    }
    let examples = match a.split.as_str() {
        "test" => &data.test,
        "dev" => &data.dev,
        s => bail!("unknown split {s:?} (test or dev)"),
    };
    let t = std::time::Instant::now();
    let report = evaluate(&model, &tokenize(&tok, examples)?, a.batch_size, tok.pad_id())?;
    let seconds = t.elapsed().as_secs_f64();
    let out = serde_json::json!({
        "model": a.model, "task": a.task, "split": a.split, "seed": seed, "seconds": seconds,
        "accuracy": report.accuracy, "macro_f1": report.macro_f1, "mcc": report.mcc, "ece": report.ece, "n": report.n,
        "int8": int8,
    });
    sprig_train::write_json(&eval_json, &out)?;
    println!("| task | split | n | accuracy | macro-F1 | MCC | ECE |\n|---|---|---|---|---|---|---|");
    println!("| {} | {} | {} | {:.4} | {:.4} | {:.4} | {:.4} |", a.task, a.split, report.n, report.accuracy, report.macro_f1, report.mcc, report.ece);
    Ok(())
}
