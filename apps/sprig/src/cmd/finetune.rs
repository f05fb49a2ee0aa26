//! `sprig finetune`: fine-tune a BERT checkpoint on a text-classification task.
use anyhow::{Context, Result};
use sprig_bert::{FinetuneConfig, FinetuneSummary, Pooling};
use sprig_lab::run_dir::StagedOut;
use std::path::{Path, PathBuf};

/// Every field overrides the config file (or the defaults).
#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// Local checkpoint directory or Hugging Face hub id [default: sentence-transformers/all-MiniLM-L6-v2].
    #[arg(long)]
    pub model: Option<String>,
    /// Task name: rt-sentiment, sms-spam, trec6, r8, 20ng, bbc [default: rt-sentiment].
    #[arg(long)]
    pub task: Option<String>,
    /// A TOML run config (e.g. a previous run's config.toml); flags override its fields.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Run directory: config.toml, metrics.jsonl, the best checkpoint, summary.json.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub weight_decay: Option<f64>,
    #[arg(long)]
    pub warmup_ratio: Option<f64>,
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    /// mean or cls.
    #[arg(long)]
    pub pooling: Option<Pooling>,
    #[arg(long)]
    pub train_word_embeddings: Option<bool>,
    /// Cap on training examples (stratified, seeded); 0 = all.
    #[arg(long)]
    pub max_train: Option<usize>,
    #[arg(long)]
    pub max_dev: Option<usize>,
    #[arg(long)]
    pub max_test: Option<usize>,
    /// Stop after this many steps (0 = all epochs).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Layer implementation: fused (default) or stock (candle's ops, the reference).
    #[arg(long)]
    pub ops: Option<sprig_bert::Ops>,
    /// Keep only the first N encoder layers of the model, a smaller dense net (Sajjad et al.'s
    /// top-layer dropping); 0 = all [default: 0].
    #[arg(long)]
    pub layers: Option<usize>,
}

impl Args {
    /// The resolved config: defaults, then the config file, then the flags.
    pub fn resolve(&self) -> Result<FinetuneConfig> {
        let c = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?
            }
            None => FinetuneConfig::default(),
        };
        self.apply(c)
    }

    /// `c` with every given flag applied, validated.
    pub fn apply(&self, mut c: FinetuneConfig) -> Result<FinetuneConfig> {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f.clone() { c.$f = v; } )* };
        }
        set!(model, task, seed, epochs, batch_size, lr, weight_decay, warmup_ratio, max_grad_norm, max_seq_len, pooling, train_word_embeddings, max_train, max_dev, max_test, max_steps, ops, layers);
        c.validate()?;
        Ok(c)
    }
}

/// `cfg.max_seq_len` against the model's `max_position_embeddings`, and `cfg.layers` against its
/// layers (read from its config before anything is written).
fn check_against_model(cfg: &FinetuneConfig) -> Result<()> {
    let files = sprig_bert::ModelFiles::resolve(&cfg.model).with_context(|| format!("loading model {}", cfg.model))?;
    let mc = sprig_bert::BertConfig::from_file(&files.config)?;
    if cfg.layers > mc.num_hidden_layers {
        anyhow::bail!("--layers {} exceeds the model's {} encoder layers ({})", cfg.layers, mc.num_hidden_layers, files.config.display());
    }
    if cfg.max_seq_len > mc.max_position_embeddings {
        anyhow::bail!("max_seq_len {} exceeds the model's max_position_embeddings {} (accepted: 2..={})", cfg.max_seq_len, mc.max_position_embeddings, mc.max_position_embeddings);
    }
    Ok(())
}

/// Check the output and the model, load the task, fine-tune, write `config.toml` and the run
/// into `out`, which must be new or empty.
pub fn run_config(cfg: &FinetuneConfig, out: &Path) -> Result<FinetuneSummary> {
    run_config_to(cfg, out, false)
}

/// [`run_config`], replacing a finished run in `out` when `overwrite` is given. The run is
/// staged beside `out` and moved in when complete ([`sprig_lab::run_dir::StagedOut`]); `out` may
/// never be or lie inside `--model`. A failed run that wrote a checkpoint is left in its staging
/// directory (named in the error) until the next run with the same `out`.
pub fn run_config_to(cfg: &FinetuneConfig, out: &Path, overwrite: bool) -> Result<FinetuneSummary> {
    let sources = [("--model", Path::new(&cfg.model))];
    StagedOut::check(out, &sources, overwrite)?;
    check_against_model(cfg)?;
    let home = sprig_data::sprig_home();
    let data = sprig_data::load_text_task(&cfg.task, &home, cfg.seed).with_context(|| format!("loading task {}", cfg.task))?;
    let staged = StagedOut::begin(out, &sources, overwrite)?;
    sprig_train::write_atomic(&staged.path().join("config.toml"), toml::to_string_pretty(cfg)?.as_bytes())?;
    match sprig_bert::finetune(cfg, &data, staged.path()) {
        Ok(s) => {
            staged.commit()?;
            Ok(s)
        }
        Err(e) if staged.path().join("model.safetensors").exists() => {
            let left = staged.keep();
            Err(anyhow::Error::from(e).context(format!("fine-tuning failed; nothing was written to --out {}; the partial run is left in {}", out.display(), left.display())))
        }
        Err(e) => Err(anyhow::Error::from(e).context(format!("fine-tuning failed; nothing was written to --out {}", out.display()))),
    }
}

pub fn print_summary(s: &FinetuneSummary) {
    println!("| task | model | steps | train s | ex/s | dev acc | test acc | test macro-F1 | test ECE |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {:.0} | {:.1} | {:.4} | {:.4} | {:.4} | {:.4} |",
        s.task, s.model, s.steps, s.train_seconds, s.train_examples_per_second, s.dev_accuracy, s.test_accuracy, s.test_macro_f1, s.test_ece
    );
}

/// The `sprig finetune` command: the recipe and what to do with an existing run.
#[derive(clap::Args, Debug)]
pub struct Cmd {
    #[command(flatten)]
    pub ft: Args,
    /// Replace a finished run in `--out` (only once the new run is complete; `--out` may still
    /// never be or lie inside `--model`).
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(c: Cmd) -> Result<()> {
    let cfg = c.ft.resolve()?;
    let summary = run_config_to(&cfg, &c.ft.out, c.overwrite)?;
    print_summary(&summary);
    println!("run directory: {}", c.ft.out.display());
    Ok(())
}
