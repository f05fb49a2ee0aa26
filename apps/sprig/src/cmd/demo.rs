//! `sprig demo`: the main job on a default, fetching any missing asset first: MiniLM-L6
//! fine-tuned on rt-sentiment, pruned to 80% while fine-tuning with distillation from that dense
//! model, and the pruned model timed on sprig's sparse kernels against its dense kernels; a table.
use anyhow::{bail, Context, Result};
use sprig_bert::prune::PruneConfig;
use sprig_bert::FinetuneConfig;
use sprig_kernels::candle::Format;
use sprig_lab::compile::{time_pair, CompileOptions};
use sprig_lab::dst_run::median;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory of the demo's runs: `dense/` (the fine-tuned teacher) and `sparse-NN/` (pruned).
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    #[arg(long, default_value = "sentence-transformers/all-MiniLM-L6-v2")]
    pub model: String,
    #[arg(long, default_value = "rt-sentiment")]
    pub task: String,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Epochs of the dense fine-tune.
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Epochs of pruning with distillation (the schedule prunes over the first two thirds).
    #[arg(long, default_value_t = 2)]
    pub prune_epochs: usize,
    /// Sparsity of the encoder linears.
    #[arg(long, default_value_t = 0.8)]
    pub sparsity: f64,
    /// Training examples (stratified, seeded subset; 0 = the whole split). The default keeps the
    /// demo within ~15 minutes on 2 cores; `sprig finetune` and `sprig prune` train on everything.
    #[arg(long, default_value_t = 5000)]
    pub max_train: usize,
}

/// `scripts/fetch-assets` of the source tree this binary was built from (or `$SPRIG_FETCH_ASSETS`).
fn fetch_script() -> PathBuf {
    std::env::var_os("SPRIG_FETCH_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fetch-assets"))
}

fn assets_present(model: &str, task: &str) -> bool {
    sprig_bert::ModelFiles::resolve(model).is_ok() && sprig_data::load_text_task(task, &sprig_data::sprig_home(), 42).is_ok()
}

pub fn run(a: Args) -> Result<()> {
    if !assets_present(&a.model, &a.task) {
        let script = fetch_script();
        if !script.is_file() {
            bail!("assets are missing and {} does not exist; run scripts/fetch-assets from the sprig repository", script.display());
        }
        eprintln!("fetching missing assets with {} ...", script.display());
        let status = std::process::Command::new("bash").arg(&script).status().with_context(|| format!("running {}", script.display()))?;
        if !status.success() {
            bail!("{} failed ({status})", script.display());
        }
    }
    if a.out.exists() && std::fs::read_dir(&a.out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} exists and is not empty; give a new --out (the demo never overwrites a run)", a.out.display());
    }
    let t = std::time::Instant::now();
    // 1. The dense teacher.
    let dense_dir = a.out.join("dense");
    let cfg = FinetuneConfig { model: a.model.clone(), task: a.task.clone(), seed: a.seed, epochs: a.epochs, max_train: a.max_train, ..FinetuneConfig::default() };
    let d = super::finetune::run_config(&cfg, &dense_dir)?;
    let t_dense = t.elapsed().as_secs_f64();
    // 2. Pruned while fine-tuning, distilling from it.
    let sparse_dir = a.out.join(format!("sparse-{:02}", (a.sparsity * 100.0).round() as u32));
    let dense_path = dense_dir.to_str().context("the output path is not UTF-8")?.to_string();
    let pcfg = PruneConfig { sparsity: a.sparsity, train: FinetuneConfig { model: dense_path, epochs: a.prune_epochs, ..cfg.clone() }, ..PruneConfig::default() };
    let s = sprig_lab::prune::run(&pcfg, &sparse_dir, &sprig_data::sprig_home())?;
    let t_prune = t.elapsed().as_secs_f64() - t_dense;
    // 3. Inference speed of the pruned model: its dense kernels vs the sparse format `sprig
    //    predict` picks for each linear on this CPU (measured, cached beside the model).
    let o = CompileOptions { format: Format::Csr, batch: 32, seq: 128, warmup: 1, runs: 3 };
    let (dm, sm, diff, sparsity, formats) = {
        let l = super::predict::load(&sparse_dir)?;
        let c = super::predict::compile(&l, super::predict::Formats::Auto, o.batch * o.seq)?;
        let dense = l.ckpt.classifier(0, &candle_core::Device::Cpu)?;
        let (diff, dr, sr) = time_pair(&dense, &c.model, dense.encoder.config.vocab_size, &o)?;
        (median(&dr), median(&sr), diff, l.masks.sparsity(), c.plan.counts())
    };
    let formats = formats.iter().map(|(f, n)| format!("{n} {f}")).collect::<Vec<_>>().join(", ");
    println!();
    println!("sprig demo: {} on {} ({} train examples, seed {}), {:.1} min in all", a.model, a.task, d.train_size, a.seed, t.elapsed().as_secs_f64() / 60.0);
    println!("| model | encoder-linear sparsity | dev acc | test acc | minutes | forward, batch 32 x 128 |");
    println!("|---|---|---|---|---|---|");
    println!("| dense, fine-tuned {} epoch(s) | 0 | {:.4} | {:.4} | {:.1} | {dm:.0} ms |", a.epochs, d.dev_accuracy, d.test_accuracy, t_dense / 60.0);
    println!(
        "| pruned (gmp + distillation, {} epochs) | {sparsity:.3} | {:.4} | {:.4} | {:.1} | {sm:.0} ms with sparse kernels ({:.2}x) |",
        a.prune_epochs, s.dev_accuracy, s.test_accuracy, t_prune / 60.0, dm / sm
    );
    println!("(median of {} alternated forwards each; linears as {formats}; max |logit diff| sparse vs dense kernels {diff:.1e})", o.runs);
    println!("sparse checkpoint: {} (Hugging Face layout with exact zeros, masks.safetensors, sprig.json; config.toml re-runs it)", sparse_dir.display());
    Ok(())
}
