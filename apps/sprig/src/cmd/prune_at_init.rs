//! `sprig prune-at-init`: magnitude / random / SNIP / GraSP / SynFlow at init, then train; a table.
use anyhow::{Context, Result};
use candle_core::Device;
use sprig_prune::Criterion;
use sprig_lab::pai::{run_pai, PaiConfig};
use sprig_train::vision::{Arch, OptimChoice, TrainConfig};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, default_value = "lenet300")]
    pub model: String,
    #[arg(long, default_value = "fashion-mnist")]
    pub dataset: String,
    /// Comma-separated criteria.
    #[arg(long, default_value = "magnitude,random,snip,grasp,synflow", value_delimiter = ',')]
    pub methods: Vec<String>,
    /// Comma-separated sparsities in [0, 1).
    #[arg(long, default_value = "0.8,0.9,0.95,0.98", value_delimiter = ',')]
    pub sparsities: Vec<f64>,
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    #[arg(long, default_value_t = 60)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1.2e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 10)]
    pub calib_batches: usize,
    #[arg(long, default_value_t = 100)]
    pub calib_batch_size: usize,
    #[arg(long, default_value_t = 100)]
    pub synflow_iterations: usize,
    #[arg(long, default_value_t = 42)]
    pub split_seed: u64,
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let arch: Arch = a.model.parse()?;
    let methods = a.methods.iter().map(|m| m.parse::<Criterion>().with_context(|| format!("--methods {m}"))).collect::<Result<Vec<_>>>()?;
    let cfg = PaiConfig {
        arch,
        dataset: a.dataset.clone(),
        methods,
        sparsities: a.sparsities.clone(),
        seeds: (0..a.seeds).collect(),
        train: TrainConfig { epochs: a.epochs, batch_size: a.batch_size, optim: OptimChoice::Adam { lr: a.lr }, data_seed: 0, snapshot_step: None },
        calib_batches: a.calib_batches,
        calib_batch_size: a.calib_batch_size,
        synflow_iterations: a.synflow_iterations,
    };
    let data = sprig_data::load_image_task(&a.dataset, &sprig_data::sprig_home(), a.split_seed)
        .with_context(|| format!("loading {}", a.dataset))?;
    let table = run_pai(&cfg, &data, &a.out, &Device::Cpu)?;
    print!("{table}");
    Ok(())
}
