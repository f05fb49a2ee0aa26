//! `sprig transfer`: fine-tune a BERT ticket found on one task on another task with its mask fixed
//! (sparse transfer, Chen et al. 2020 §5), against dense fine-tuning on the target.
use anyhow::{bail, Result};
use sprig_lab::ticket::Metric;
use sprig_lab::transfer::{run_transfer, Ticket, TransferConfig};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A ticket: `DIR/round-RR` (its `seed-*` tickets) or `DIR/round-RR/seed-S`.
    #[arg(long)]
    pub ticket: PathBuf,
    /// Recipe overrides; the default recipe is the ticket's own. `--task` is the target task,
    /// `--seed` the data seed.
    #[command(flatten)]
    pub ft: crate::cmd::finetune::Args,
    /// Number of training seeds (0, 1, ...); seed i uses the i-th ticket (cyclically).
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    /// A `sprig ticket` run on the target task whose round 0 is the dense reference (saves the
    /// dense fine-tunes); without it the dense reference is fine-tuned here.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Skip the dense reference entirely.
    #[arg(long)]
    pub no_dense: bool,
    /// accuracy, macro-f1 or mcc.
    #[arg(long, default_value = "accuracy")]
    pub metric: String,
}

pub fn run(a: Args) -> Result<()> {
    let tickets = Ticket::find(&a.ticket)?;
    let first = Ticket::load(&tickets[0])?;
    if a.ft.config.is_some() {
        bail!("--config is not used by transfer: the recipe is the ticket's, overridden by flags");
    }
    let finetune = a.ft.apply(first.recipe.clone())?;
    let metric: Metric = serde_json::from_value(serde_json::Value::String(a.metric.replace('-', "_")))
        .map_err(|_| anyhow::anyhow!("--metric {}: expected accuracy, macro-f1 or mcc", a.metric))?;
    let cfg = TransferConfig {
        tickets,
        finetune,
        seeds: (0..a.seeds).collect(),
        dense: !a.no_dense && a.reference.is_none(),
        reference: a.reference.clone(),
        metric,
    };
    let s = run_transfer(&cfg, &a.ft.out, &sprig_data::sprig_home())?;
    let f = |m: Option<f64>| m.map_or("–".to_string(), |m| format!("{:+.2}", 100.0 * m));
    println!("| source | target | sparsity | seeds | ticket | dense | diff |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {:.0}% | {} | {:.2} ± {:.2} | {} | {} |",
        s.source_task,
        s.target_task,
        100.0 * s.sparsity,
        s.seeds,
        100.0 * s.ticket_mean,
        100.0 * s.ticket_std,
        s.dense_mean.map_or("–".into(), |d| format!("{:.2}", 100.0 * d)),
        f(s.diff)
    );
    println!("wrote {}/summary.json", a.ft.out.display());
    Ok(())
}
