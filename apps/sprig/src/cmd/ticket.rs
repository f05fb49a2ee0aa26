//! `sprig ticket`: lottery tickets in a pre-trained BERT (Chen et al. 2020) with the random-mask,
//! reinit, shuffled and one-shot controls, several seeds, resumable (see `sprig_lab::ticket`):
//! tickets in `OUT/round-RR/seed-S`, controls in `OUT/round-RR/seed-S/control-<name>.json`.
use anyhow::{Context, Result};
use sprig_lab::ticket::{run_tickets, Control, Metric, TicketConfig};
use sprig_prune::Rewind;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub ft: crate::cmd::finetune::Args,
    /// Pruning rounds after the dense round 0 (0: only the dense fine-tunes, one per seed).
    #[arg(long, default_value_t = 9)]
    pub rounds: usize,
    /// Fraction of the original prunable weights removed per round (BERT-Tickets: 0.1).
    #[arg(long, default_value_t = 0.1)]
    pub rate: f64,
    /// init (θ0, the pre-trained weights) or step:K.
    #[arg(long, default_value = "init")]
    pub rewind: String,
    /// Number of training seeds (0, 1, ...).
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Comma-separated controls: random-mask, reinit, shuffled, oneshot; and the comparisons gmp
    /// (gradual magnitude) and movement (movement pruning), which prune to the round's sparsity
    /// during one fine-tune from θ0, obs (one-shot diagonal-Fisher OBS of the fine-tuned model,
    /// rewound to θ0), snip (SNIP's one-shot mask of θ0, then trained) and rigl (RigL from a random
    /// mask of θ0 at the round's sparsity); "none" for none.
    #[arg(long, default_value = "random-mask,reinit,shuffled,oneshot")]
    pub controls: String,
    /// Comma-separated rounds in which `--controls` run (default: every round). Controls already
    /// on disk from an earlier invocation are always reported, so e.g. `--controls reinit,shuffled
    /// --control-rounds 5` adds those controls at 50% to a finished run.
    #[arg(long, value_delimiter = ',')]
    pub control_rounds: Vec<usize>,
    /// accuracy, macro-f1 or mcc (test metric that decides "matching").
    #[arg(long, default_value = "accuracy")]
    pub metric: String,
    /// Also save each control's trained model in `OUT/round-RR/seed-S-<control>/` (a sparse
    /// checkpoint that `sprig export --ticket` turns into a classifier directory, e.g. for
    /// `sprig blessings`). Changes no result; applies to the controls this invocation trains.
    #[arg(long)]
    pub keep_control_models: bool,
}

pub fn parse_controls(s: &str) -> Result<Vec<Control>> {
    if s == "none" || s.is_empty() {
        return Ok(vec![]);
    }
    s.split(',').map(|c| c.trim().parse()).collect()
}

pub fn run(a: Args) -> Result<()> {
    let finetune = a.ft.resolve()?;
    let rewind: Rewind = a.rewind.parse().with_context(|| format!("--rewind {}", a.rewind))?;
    let metric: Metric = serde_json::from_value(serde_json::Value::String(a.metric.replace('-', "_")))
        .map_err(|_| anyhow::anyhow!("--metric {}: expected accuracy, macro-f1 or mcc", a.metric))?;
    let cfg = TicketConfig { finetune, rounds: a.rounds, rate: a.rate, rewind, seeds: (0..a.seeds).collect(), controls: parse_controls(&a.controls)?, control_rounds: a.control_rounds.clone(), metric };
    let out: PathBuf = a.ft.out.clone();
    let s = run_tickets(&cfg, &out, &sprig_data::sprig_home(), a.keep_control_models)?;
    let f = |m: Option<f64>| m.map_or("–".to_string(), |m| format!("{:.2}", 100.0 * m));
    println!("| round | sparsity | seeds | ticket {} | random mask | reinit | shuffled | one-shot | GMP | movement | OBS | SNIP | RigL | matching |", s.metric);
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &s.rounds {
        println!(
            "| {} | {:.0}% | {} | {:.2} ± {:.2} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.round,
            100.0 * r.sparsity,
            r.seeds,
            100.0 * r.metric_mean,
            100.0 * r.metric_std,
            f(r.random_mask_mean),
            f(r.reinit_mean),
            f(r.shuffled_mean),
            f(r.oneshot_mean),
            f(r.gmp_mean),
            f(r.movement_mean),
            f(r.obs_mean),
            f(r.snip_mean),
            f(r.rigl_mean),
            if r.matching { "yes" } else { "no" }
        );
    }
    match s.highest_matching_sparsity {
        Some(h) => println!("highest matching sparsity: {:.0}%", 100.0 * h),
        None => println!("highest matching sparsity: none"),
    }
    println!("wrote {}/summary.json and {}/tickets.svg", out.display(), out.display());
    Ok(())
}
