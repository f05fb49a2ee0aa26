//! `sprig lottery`: lottery tickets by iterative magnitude pruning, with the reinit and random-mask
//! controls at every round, several seeds, resumable (see `sprig_lab::lottery`): each ticket is a
//! sparse checkpoint `OUT/round-RR/seed-S` (`sprig inspect` reads it), each control a file
//! `OUT/round-RR/seed-S/control-<name>.json`.
use anyhow::{Context, Result};
use candle_core::Device;
use sprig_prune::Rewind;
use sprig_lab::imp::Control;
use sprig_lab::lottery::{run_lottery, LotteryConfig};
use sprig_lab::run_dir::RunDir;
use sprig_train::vision::{Arch, OptimChoice, TrainConfig};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// lenet300 (LeNet-300-100) or lenet5.
    #[arg(long, default_value = "lenet300")]
    pub model: String,
    /// fashion-mnist or mnist10k.
    #[arg(long, default_value = "fashion-mnist")]
    pub dataset: String,
    /// Pruning rounds after the dense one.
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
    /// Fraction of remaining hidden-layer weights pruned per round.
    #[arg(long, default_value_t = 0.2)]
    pub rate: f64,
    /// Same for the output layer [default: rate / 2, as in the LTH paper].
    #[arg(long)]
    pub output_rate: Option<f64>,
    /// init, step:K or lr.
    #[arg(long, default_value = "init")]
    pub rewind: String,
    /// Number of seeds (0, 1, ...).
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    #[arg(long, default_value_t = 60)]
    pub batch_size: usize,
    /// Adam learning rate (LTH uses 1.2e-3 for LeNet-300-100).
    #[arg(long, default_value_t = 1.2e-3)]
    pub lr: f64,
    /// Use SGD with this momentum instead of Adam.
    #[arg(long)]
    pub sgd_momentum: Option<f64>,
    /// Skip the reinit / random-mask controls.
    #[arg(long)]
    pub no_controls: bool,
    /// Comma-separated rounds in which the controls run (default: every round). Controls already
    /// on disk are always reported.
    #[arg(long, value_delimiter = ',')]
    pub control_rounds: Vec<usize>,
    /// Data split seed.
    #[arg(long, default_value_t = 42)]
    pub split_seed: u64,
    /// Run directory: `round-RR/seed-S` tickets, control files, `summary.json`, `lottery.svg`.
    /// A rerun with the same settings resumes; `--rounds`, `--seeds` and the controls may grow.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let arch: Arch = a.model.parse()?;
    let rewind: Rewind = a.rewind.parse().with_context(|| format!("--rewind {}", a.rewind))?;
    let optim = match a.sgd_momentum {
        Some(m) => OptimChoice::Sgd { lr: a.lr, momentum: m },
        None => OptimChoice::Adam { lr: a.lr },
    };
    let cfg = LotteryConfig {
        arch,
        dataset: a.dataset.clone(),
        rounds: a.rounds,
        rate: a.rate,
        output_rate: a.output_rate.unwrap_or(a.rate / 2.0),
        rewind,
        seeds: (0..a.seeds).collect(),
        train: TrainConfig { epochs: a.epochs, batch_size: a.batch_size, optim, data_seed: 0, snapshot_step: None },
        controls: if a.no_controls { vec![] } else { vec![Control::RandomMask, Control::Reinit] },
        control_rounds: a.control_rounds.clone(),
    };
    // Refuse bad settings or another experiment's directory before loading the data.
    RunDir::check(&a.out, &cfg)?;
    let data = sprig_data::load_image_task(&a.dataset, &sprig_data::sprig_home(), a.split_seed)
        .with_context(|| format!("loading {}", a.dataset))?;
    let rows = run_lottery(&cfg, &data, &a.out, &Device::Cpu)?;
    println!("{:>5} {:>10} {:>16} {:>16} {:>16}", "round", "remaining", "ticket", "reinit", "random mask");
    let f = |m: Option<f64>, s: Option<f64>| match (m, s) {
        (Some(m), Some(s)) => format!("{:.2} ± {:.2}", 100.0 * m, 100.0 * s),
        _ => "–".into(),
    };
    for r in &rows {
        println!(
            "{:>5} {:>9.2}% {:>16} {:>16} {:>16}",
            r.round,
            100.0 * r.remaining,
            f(Some(r.test_acc_mean), Some(r.test_acc_std)),
            f(r.reinit_acc_mean, r.reinit_acc_std),
            f(r.random_mask_acc_mean, r.random_mask_acc_std)
        );
    }
    println!("wrote {}/summary.json and {}/lottery.svg", a.out.display(), a.out.display());
    Ok(())
}
