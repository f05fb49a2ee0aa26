//! `sprig dst`: dynamic sparse training (static, SET, RigL, GraNet; dense and GMP baselines) with
//! truly sparse compute; `sprig dst-report`: table and plot of a grid of runs; `sprig dst-timing`:
//! dense vs sparse wall-clock (see `sprig_train::dst`).
use anyhow::{Context, Result};
use candle_core::Device;
use sprig_train::dst::{DstArch, DstConfig, Method};
use sprig_lab::dst_run::{collect, grid_table, plot_grid_svg, run_dst, time_configs};
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// lenet300, mlp-wide (784-1024-1024-10) or conv (LeNet-5, sparse linears).
    #[arg(long, default_value = "lenet300")]
    pub model: String,
    /// fashion-mnist or mnist10k.
    #[arg(long, default_value = "fashion-mnist")]
    pub dataset: String,
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Base learning rate (Adam's default; with `--optimizer sgd` use e.g. 0.1).
    #[arg(long, default_value_t = 1.2e-3)]
    pub lr: f64,
    /// adam (β 0.9/0.999) or sgd (momentum 0.9, as in the RigL paper).
    #[arg(long, default_value = "adam")]
    pub optimizer: String,
    /// constant or cosine (decays to 0 over training).
    #[arg(long, default_value = "constant")]
    pub lr_schedule: String,
    /// Weight decay (L2 for SGD, decoupled for Adam).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// ΔT: steps between mask updates.
    #[arg(long, default_value_t = 100)]
    pub delta_t: usize,
    /// α: initial drop fraction, cosine-decayed to 0 at --end-fraction of training.
    #[arg(long, default_value_t = 0.3)]
    pub alpha: f64,
    /// Mask updates and gradual pruning stop at this fraction of training.
    #[arg(long, default_value_t = 0.75)]
    pub end_fraction: f64,
    /// GraNet's starting sparsity.
    #[arg(long, default_value_t = 0.5)]
    pub granet_initial: f64,
    /// Data split seed.
    #[arg(long, default_value_t = 42)]
    pub split_seed: u64,
    /// Use only the first N training images (smoke tests).
    #[arg(long)]
    pub max_train: Option<usize>,
}

impl Common {
    fn config(&self, method: Method, sparsity: f64) -> Result<DstConfig> {
        Ok(DstConfig {
            arch: self.model.parse()?,
            method,
            sparsity: if method == Method::Dense { 0.0 } else { sparsity },
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            optimizer: self.optimizer.parse()?,
            lr_schedule: self.lr_schedule.parse()?,
            weight_decay: self.weight_decay,
            delta_t: self.delta_t,
            alpha: self.alpha,
            end_fraction: self.end_fraction,
            granet_initial: self.granet_initial,
        })
    }
    fn data(&self) -> Result<sprig_data::ImageDataset> {
        let mut d = sprig_data::load_image_task(&self.dataset, &sprig_data::sprig_home(), self.split_seed).with_context(|| format!("loading {}", self.dataset))?;
        if let Some(n) = self.max_train {
            anyhow::ensure!(n > 0, "--max-train must be at least 1");
            let n = n.min(d.train.len());
            let hw = d.height * d.width;
            d.train.labels.truncate(n);
            d.train.images.truncate(n * hw);
        }
        Ok(d)
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// dense, static, set, rigl, granet or gmp.
    #[arg(long)]
    pub method: String,
    /// Target sparsity of the linear layers (ERK allocation); ignored for dense.
    #[arg(long, default_value_t = 0.9)]
    pub sparsity: f64,
    /// Number of seeds (0, 1, ...).
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    #[command(flatten)]
    pub common: Common,
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let method: Method = a.method.parse()?;
    let cfg = a.common.config(method, a.sparsity)?;
    let data = a.common.data()?;
    let seeds: Vec<u64> = (0..a.seeds).collect();
    let s = run_dst(&cfg, &a.common.dataset, &data, &seeds, &a.out, &Device::Cpu)?;
    println!(
        "{:?} {:?} sparsity {:.4}: test {:.2} ± {:.2} %, ITOP R_s {:.4}, {:.1} s/seed ({} seeds)",
        cfg.method, cfg.arch, s.final_sparsity, 100.0 * s.test_acc_mean, 100.0 * s.test_acc_std, s.itop_rate, s.train_seconds, s.seeds
    );
    println!("wrote {}", a.out.join("summary.json").display());
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Directory holding one `sprig dst` run directory per configuration.
    #[arg(long)]
    pub runs: PathBuf,
    /// Where to write `dst-grid.md` (table) and `dst-grid.svg` (plot).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn report(a: ReportArgs) -> Result<()> {
    let rows = collect(&a.runs)?;
    anyhow::ensure!(!rows.is_empty(), "no summary.json under {}", a.runs.display());
    let mut md = grid_table(&rows);
    md += "\n| method | sparsity | ΔT | epochs | test acc (%) | ITOP R_s | train s/seed |\n|---|---|---|---|---|---|---|\n";
    for r in &rows {
        md += &format!(
            "| {:?} | {:.2} | {} | {} | {:.2} ± {:.2} | {:.4} ± {:.4} | {:.1} |\n",
            r.config.method, r.final_sparsity, r.config.delta_t, r.config.epochs, 100.0 * r.test_acc_mean, 100.0 * r.test_acc_std, r.itop_rate, r.itop_rate_std, r.train_seconds
        );
    }
    sprig_train::write_atomic(&a.out.join("dst-grid.md"), md.as_bytes())?;
    plot_grid_svg(&rows, &a.out.join("dst-grid.svg"), &format!("DST on {}, {:?}", rows[0].dataset, rows[0].config.arch))?;
    print!("{md}");
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct TimingArgs {
    /// Sparsity of the sparse runs.
    #[arg(long, default_value_t = 0.9)]
    pub sparsity: f64,
    /// Repeats of each configuration (interleaved); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Sparse methods timed against dense.
    #[arg(long, value_delimiter = ',', default_value = "static,rigl")]
    pub methods: Vec<String>,
    #[command(flatten)]
    pub common: Common,
    /// JSON file for the timings.
    #[arg(long)]
    pub json: PathBuf,
}

pub fn timing(a: TimingArgs) -> Result<()> {
    let _: DstArch = a.common.model.parse()?;
    let mut cfgs = vec![a.common.config(Method::Dense, 0.0)?];
    for m in &a.methods {
        cfgs.push(a.common.config(m.parse()?, a.sparsity)?);
    }
    let data = a.common.data()?;
    let t = time_configs(&cfgs, &data, a.repeats, &Device::Cpu)?;
    for x in &t {
        println!("{:?} s={:.2}: median {:.2} s over {:?} -> {:.3}x dense", x.method, x.sparsity, x.median_seconds, x.seconds, x.ratio_to_dense);
    }
    sprig_train::write_json(&a.json, &serde_json::json!({ "model": a.common.model, "epochs": a.common.epochs, "batch_size": a.common.batch_size, "timings": t }))?;
    Ok(())
}
