//! `sprig upstream`: a BERT ticket found without downstream labels, by IMP on the checkpoint's own
//! sentence-embedding objective (contrastive, SimCSE form) over unlabeled texts; resumable. Its
//! rounds are tickets for `sprig transfer` (see `sprig_lab::upstream`).
use anyhow::{bail, Result};
use sprig_lab::upstream::{run_upstream, UpstreamConfig, UPSTREAM_TASK};
use sprig_bert::FinetuneConfig;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Recipe: `--max-train` caps the corpus texts (in all), `--max-dev` the held-out texts;
    /// `--task` is not used (see `--corpus`).
    #[command(flatten)]
    pub ft: crate::cmd::finetune::Args,
    /// Comma-separated tasks whose training texts (never their labels) form the corpus.
    #[arg(long, value_delimiter = ',', default_value = "20ng,bbc")]
    pub corpus: Vec<String>,
    /// Temperature τ of the contrastive loss (0.05 = the scale 20 all-MiniLM-L6-v2 was trained with).
    #[arg(long, default_value_t = 0.05)]
    pub temperature: f64,
    /// Pruning rounds after the dense round 0.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Fraction of the original prunable weights removed per round.
    #[arg(long, default_value_t = 0.1)]
    pub rate: f64,
    /// Number of training seeds (0, 1, ...), one ticket each.
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
}

pub fn run(a: Args) -> Result<()> {
    if a.ft.task.is_some() {
        bail!("--task is not used by upstream: the corpus is given by --corpus");
    }
    let defaults = FinetuneConfig { max_train: 2000, max_dev: 300, max_seq_len: 64, epochs: 1, lr: 3e-5, ..FinetuneConfig::default() };
    let mut recipe = match &a.ft.config {
        Some(_) => a.ft.resolve()?,
        None => a.ft.apply(defaults)?,
    };
    recipe.task = UPSTREAM_TASK.to_string();
    let cfg = UpstreamConfig { recipe, corpus: a.corpus.clone(), temperature: a.temperature, rounds: a.rounds, rate: a.rate, seeds: (0..a.seeds).collect() };
    let s = run_upstream(&cfg, &a.ft.out, &sprig_data::sprig_home())?;
    println!("upstream IMP on {} texts of {}", s.corpus_texts, s.corpus.join("+"));
    println!("| round | sparsity | seeds | train loss | cosine to θ0 (held-out) | retrieval@1 vs θ0 |");
    println!("|---|---|---|---|---|---|");
    for r in &s.rounds {
        println!("| {} | {:.0}% | {} | {:.4} | {:.4} | {:.3} |", r.round, 100.0 * r.sparsity, r.seeds, r.train_loss_mean, r.cosine_to_dense_mean, r.retrieval_at_1_mean);
    }
    println!("wrote {}/summary.json; tickets in {}/round-RR", a.ft.out.display(), a.ft.out.display());
    Ok(())
}
