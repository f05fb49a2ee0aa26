//! `sprig blessings --task T --models DIR... --out DIR`: calibration, OOD detection and robustness
//! of classifier checkpoints of one task (`sprig_lab::blessings`, text or image): a table, JSON
//! and a reliability diagram. `sprig blessings-grid` trains Chen et al.'s comparison on an image
//! task (`sprig_lab::blessings_grid`) and scores it the same way.
use anyhow::{bail, Context, Result};
use candle_core::Device;
use sprig_lab::blessings::{default_ood, reliability_svg, run as score, table, BlessingsConfig};
use sprig_lab::blessings::ModelBlessings;
use sprig_lab::blessings_grid::{metric_figures, run_grid, GridConfig, VARIANTS};
use sprig_lab::run_dir::RunDir;
use sprig_train::vision::{Arch, OptimChoice, TrainConfig};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A text task (rt-sentiment, trec6, ...) or an image task (fashion-mnist, mnist10k).
    #[arg(long)]
    pub task: String,
    /// Classifier directories of the task: fine-tuned BERT classifiers (dense, pruned, tickets) or
    /// image checkpoints (`sprig lottery` cells, `sprig blessings-grid` models); seeds named
    /// `NAME-s<seed>` are grouped.
    #[arg(long, num_args = 1.., required = true)]
    pub models: Vec<PathBuf>,
    #[command(flatten)]
    pub probe: Probes,
    /// Writes blessings.json, blessings.md and reliability.svg here.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace a blessings.json already in `--out` (refused otherwise).
    #[arg(long)]
    pub overwrite: bool,
}

/// What the report measures beyond accuracy, NLL and ECE.
#[derive(clap::Args, Debug, Clone)]
pub struct Probes {
    /// Tasks whose inputs are the out-of-distribution examples (comma-separated) [default:
    /// sms-spam,trec6 for rt-sentiment, rt-sentiment,sms-spam for trec6, mnist10k for
    /// fashion-mnist, ...].
    #[arg(long, value_delimiter = ',')]
    pub ood: Vec<String>,
    /// Word-dropout probability of the corrupted test texts.
    #[arg(long, default_value_t = 0.2)]
    pub token_dropout: f64,
    /// Standard deviation of the Gaussian noise added to test images (pixels in [0, 1]).
    #[arg(long, default_value_t = 0.2)]
    pub gaussian_noise: f64,
    /// Probability of zeroing each pixel of the test images.
    #[arg(long, default_value_t = 0.2)]
    pub pixel_dropout: f64,
    /// FGSM step (0 skips the attack). Text: on the word embeddings, a fraction of their RMS (at
    /// 0.5 every MiniLM model measured fell below chance); images: in pixel units.
    #[arg(long, default_value_t = 0.05)]
    pub fgsm_eps: f64,
    /// Seed of the corruptions.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 128)]
    pub max_seq_len: usize,
    /// At most this many test (and OOD) examples per model (0: all).
    #[arg(long, default_value_t = 0)]
    pub max_examples: usize,
}

impl Probes {
    fn config(&self, task: &str, models: Vec<PathBuf>) -> BlessingsConfig {
        let image = sprig_data::is_image_task(task);
        BlessingsConfig {
            task: task.to_string(),
            models,
            ood: if self.ood.is_empty() { default_ood(task) } else { self.ood.clone() },
            token_dropout: self.token_dropout,
            fgsm_eps: self.fgsm_eps,
            gaussian_noise: if image { self.gaussian_noise } else { 0.0 },
            pixel_dropout: if image { self.pixel_dropout } else { 0.0 },
            seed: self.seed,
            batch_size: self.batch_size,
            max_seq_len: self.max_seq_len,
            max_examples: self.max_examples,
        }
    }
}

pub fn run(a: Args) -> Result<()> {
    let json = a.out.join("blessings.json");
    if json.exists() && !a.overwrite {
        bail!("{} exists; nothing was changed (choose another --out, or give --overwrite)", json.display());
    }
    let cfg = a.probe.config(&a.task, a.models.clone());
    cfg.validate()?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    report(&cfg, &a.out).map(|_| ())
}

/// Scores `cfg`'s models and writes blessings.json, blessings.md and reliability.svg into `out`.
fn report(cfg: &BlessingsConfig, out: &Path) -> Result<Vec<ModelBlessings>> {
    let json = out.join("blessings.json");
    let n = cfg.models.len();
    let mut done = 0;
    let rows = score(cfg, &sprig_data::sprig_home(), |m| {
        done += 1;
        tracing::info!("[{done}/{n}] {}: accuracy {:.4}, ECE {:.4}, OOD AUROC {:?}", m.model, m.accuracy, m.ece, m.ood_auroc);
    })?;
    let md = table(&rows);
    let svg = reliability_svg(&rows, &format!("Reliability on {} (test)", cfg.task))?;
    sprig_train::write_json(&json, &serde_json::json!({ "config": cfg, "models": rows }))?;
    sprig_train::run::write_atomic(&out.join("blessings.md"), md.as_bytes())?;
    sprig_train::run::write_atomic(&out.join("reliability.svg"), svg.as_bytes())?;
    print!("{md}");
    println!("written: {}, blessings.md, reliability.svg", json.display());
    Ok(rows)
}

#[derive(clap::Args, Debug)]
pub struct GridArgs {
    /// fashion-mnist or mnist10k.
    #[arg(long, default_value = "fashion-mnist")]
    pub dataset: String,
    /// The network, as in `sprig lottery`: lenet300 (LeNet-300-100) or lenet5 (LeNet-5; RigL
    /// keeps its convs dense and its linears sparser, at the ticket's weight count).
    #[arg(long = "model", default_value = "lenet300")]
    pub arch: Arch,
    /// IMP rounds whose sparsities are compared (hidden layers at 1 - (1 - rate)^r: round 5 keeps
    /// 32.8% of them, Chen et al.'s CIFAR tickets).
    #[arg(long, value_delimiter = ',', default_value = "5,10")]
    pub rounds: Vec<usize>,
    #[arg(long, default_value_t = 0.2)]
    pub rate: f64,
    /// Number of seeds (0, 1, ...).
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Sparse variants to train (comma-separated) [default: all].
    #[arg(long, value_delimiter = ',')]
    pub variants: Vec<String>,
    /// Epochs of every training (dense, each IMP round, each variant).
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Batch size of every training.
    #[arg(long, default_value_t = 128)]
    pub train_batch_size: usize,
    /// Adam learning rate (the LTH paper's for LeNet-300-100, used for LeNet-5 too).
    #[arg(long, default_value_t = 1.2e-3)]
    pub lr: f64,
    #[command(flatten)]
    pub probe: Probes,
    /// Run directory: `imp/` (the IMP rounds), `models/<variant>-<pct>-s<seed>`, and the report
    /// (blessings.json, blessings.md, reliability.svg). A rerun resumes.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn grid(a: GridArgs) -> Result<()> {
    let cfg = GridConfig {
        dataset: a.dataset.clone(),
        arch: a.arch,
        rounds: a.rounds.clone(),
        rate: a.rate,
        output_rate: a.rate / 2.0,
        seeds: (0..a.seeds).collect(),
        variants: if a.variants.is_empty() { VARIANTS.iter().map(|v| v.to_string()).collect() } else { a.variants.clone() },
        train: TrainConfig { epochs: a.epochs, batch_size: a.train_batch_size, optim: OptimChoice::Adam { lr: a.lr }, data_seed: 0, snapshot_step: None },
        rigl_delta_t: 100,
        rigl_alpha: 0.3,
        rigl_end_fraction: 0.75,
        calib_batches: 10,
        calib_batch_size: 100,
        synflow_iterations: 100,
    };
    if !sprig_data::is_image_task(&a.dataset) {
        bail!("--dataset {} is not an image task (fashion-mnist, mnist10k); score text models with `sprig blessings`", a.dataset);
    }
    let bcfg = a.probe.config(&a.dataset, vec![]);
    bcfg.validate_options()?;
    RunDir::check(&a.out, &cfg)?;
    let data = sprig_data::load_image_task(&a.dataset, &sprig_data::sprig_home(), 42)?;
    let models = run_grid(&cfg, &data, &a.out, &Device::Cpu)?;
    let rows = report(&BlessingsConfig { models, ..bcfg }, &a.out)?;
    let figures = metric_figures(&rows)?;
    for (name, svg) in &figures {
        sprig_train::run::write_atomic(&a.out.join(name), svg.as_bytes())?;
    }
    println!("figures: {}", figures.iter().map(|f| f.0.as_str()).collect::<Vec<_>>().join(", "));
    Ok(())
}
