//! `sprig blessings --task T --models DIR... --out DIR`: calibration, OOD detection and robustness
//! of classifier checkpoints of one task (`sprig_lab::blessings`): a table, JSON and a
//! reliability diagram.
use anyhow::{bail, Context, Result};
use sprig_lab::blessings::{reliability_svg, run as score, table, BlessingsConfig};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long)]
    pub task: String,
    /// Fine-tuned classifier directories of the task (dense, pruned, tickets; seeds as `NAME-s<seed>`
    /// are grouped).
    #[arg(long, num_args = 1.., required = true)]
    pub models: Vec<PathBuf>,
    /// Tasks whose test texts are the out-of-distribution inputs (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "sms-spam,trec6")]
    pub ood: Vec<String>,
    /// Word-dropout probability of the corrupted test texts.
    #[arg(long, default_value_t = 0.2)]
    pub token_dropout: f64,
    /// FGSM step on the word embeddings, a fraction of their RMS (0 skips the attack; at 0.5 every
    /// MiniLM model measured fell below chance, at 0.05 they differ).
    #[arg(long, default_value_t = 0.05)]
    pub fgsm_eps: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 128)]
    pub max_seq_len: usize,
    /// At most this many test (and OOD) examples per model (0: all).
    #[arg(long, default_value_t = 0)]
    pub max_examples: usize,
    /// Writes blessings.json, blessings.md and reliability.svg here.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace a blessings.json already in `--out` (refused otherwise).
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(a: Args) -> Result<()> {
    let json = a.out.join("blessings.json");
    if json.exists() && !a.overwrite {
        bail!("{} exists; nothing was changed (choose another --out, or give --overwrite)", json.display());
    }
    let cfg = BlessingsConfig {
        task: a.task.clone(),
        models: a.models.clone(),
        ood: a.ood.clone(),
        token_dropout: a.token_dropout,
        fgsm_eps: a.fgsm_eps,
        seed: a.seed,
        batch_size: a.batch_size,
        max_seq_len: a.max_seq_len,
        max_examples: a.max_examples,
    };
    cfg.validate()?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let n = cfg.models.len();
    let mut done = 0;
    let rows = score(&cfg, &sprig_data::sprig_home(), |m| {
        done += 1;
        tracing::info!("[{done}/{n}] {}: accuracy {:.4}, ECE {:.4}, OOD AUROC {:?}", m.model, m.accuracy, m.ece, m.ood_auroc);
    })?;
    let md = table(&rows);
    let svg = reliability_svg(&rows, &format!("Reliability on {} (test)", a.task))?;
    sprig_train::write_json(&json, &serde_json::json!({ "config": cfg, "models": rows }))?;
    sprig_train::run::write_atomic(&a.out.join("blessings.md"), md.as_bytes())?;
    sprig_train::run::write_atomic(&a.out.join("reliability.svg"), svg.as_bytes())?;
    print!("{md}");
    println!("written: {}, blessings.md, reliability.svg", json.display());
    Ok(())
}
