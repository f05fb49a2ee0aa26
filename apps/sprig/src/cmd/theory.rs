//! `sprig theory ntk|edge-popup|malach`: the sprig-theory experiments, printed as tables and
//! written as JSON (`{provenance, rows}`) for docs/results/theory.md.
use anyhow::{Context, Result};
use clap::Subcommand;
use sprig_theory::edge_popup::{self, DenseConfig, EdgePopupConfig, WeightInit};
use sprig_theory::malach::{self, Construction, MalachConfig};
use sprig_theory::ntk::{self, NtkSweepConfig};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum TheoryCommand {
    /// Relative Frobenius distance between the empirical NTK of a randomly pruned ReLU MLP and
    /// the dense one (same init), vs width, sparsity and rescaling (Yang & Wang 2022).
    Ntk(NtkArgs),
    /// Strong tickets: edge-popup subnetworks of untrained MLPs on Fashion-MNIST vs a trained
    /// dense LeNet-300-100 (Ramanujan et al. 2020).
    EdgePopup(EdgePopupArgs),
    /// Approximating a weight / a neuron by pruning a random ReLU layer (Malach et al. 2020;
    /// Pensia et al. 2020 subset-sum): error vs width.
    Malach(MalachArgs),
}

pub fn run(cmd: TheoryCommand) -> Result<()> {
    match cmd {
        TheoryCommand::Ntk(a) => run_ntk(a),
        TheoryCommand::EdgePopup(a) => run_edge_popup(a),
        TheoryCommand::Malach(a) => run_malach(a),
    }
}

#[derive(clap::Args, Debug)]
pub struct NtkArgs {
    /// Hidden widths (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "64,128,256,512,1024,2048,4096,8192")]
    pub widths: Vec<usize>,
    /// Sparsities (fraction removed, comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.8,0.9,0.95")]
    pub sparsities: Vec<f64>,
    /// Number of init seeds (0..seeds).
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Hidden layers.
    #[arg(long, default_value_t = 2)]
    pub depth: usize,
    /// Fashion-MNIST test images in the Gram matrix.
    #[arg(long, default_value_t = 32)]
    pub n: usize,
    /// Seed of the input pick.
    #[arg(long, default_value_t = 0)]
    pub data_seed: u64,
    /// Refuse a width whose memory estimate is above this many GiB.
    #[arg(long, default_value_t = 4.0)]
    pub memory_gib: f64,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn run_ntk(a: NtkArgs) -> Result<()> {
    anyhow::ensure!(a.memory_gib.is_finite() && a.memory_gib > 0.0, "--memory-gib must be > 0, got {}", a.memory_gib);
    let (x, d) = ntk::fashion_inputs(&sprig_data::sprig_home(), a.n, a.data_seed)?;
    let cfg = NtkSweepConfig {
        widths: a.widths,
        sparsities: a.sparsities,
        seeds: (0..a.seeds).collect(),
        hidden_layers: a.depth,
        memory_limit: (a.memory_gib * (1u64 << 30) as f64) as u64,
    };
    println!("| width | sparsity | rescaled | kept | rel. Frobenius distance (mean ± std over {} seeds) |", a.seeds);
    println!("|---|---|---|---|---|");
    let t0 = std::time::Instant::now();
    let rows = ntk::ntk_sweep(&cfg, &x, a.n, d, &mut |r| {
        println!("| {} | {} | {} | {:.4} | {:.4} ± {:.4} |", r.width, r.sparsity, if r.rescaled { "yes" } else { "no" }, r.kept_fraction, r.mean, r.std);
    })?;
    eprintln!("ntk sweep: {:.1} s", t0.elapsed().as_secs_f64());
    if let Some(p) = a.json {
        let v = serde_json::json!({ "config": cfg, "n_inputs": a.n, "d_in": d, "data_seed": a.data_seed, "seconds": t0.elapsed().as_secs_f64(), "rows": rows });
        super::bench::write_with_provenance(&p, &v)?;
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct EdgePopupArgs {
    /// Width multipliers of LeNet-300-100's hidden layers (300·k, 100·k), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub width_mult: Vec<usize>,
    /// Kept fractions per layer (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0.3,0.5,0.7")]
    pub keep: Vec<f64>,
    /// Epochs of score training per subnetwork.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0.1)]
    pub lr: f64,
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f64,
    /// signed-constant or kaiming-normal.
    #[arg(long, default_value = "signed-constant")]
    pub init: String,
    /// Use σ = √(2/fan_in) instead of the kept-fan-in-scaled √(2/(keep·fan_in)).
    #[arg(long)]
    pub no_scale_fan: bool,
    /// Epochs of the dense LeNet-300-100 reference (Adam 1e-3); 0 skips it.
    #[arg(long, default_value_t = 30)]
    pub dense_epochs: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use at most this many training images (seeded subset; default all).
    #[arg(long)]
    pub max_train: Option<usize>,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn run_edge_popup(a: EdgePopupArgs) -> Result<()> {
    let init: WeightInit = a.init.parse()?;
    let data = sprig_data::load_image_task("fashion-mnist", &sprig_data::sprig_home(), a.seed).context("loading fashion-mnist")?;
    let mut data = edge_popup::standardise(&data);
    if let Some(m) = a.max_train {
        data = edge_popup::subsample(&data, m, data.dev.len(), data.test.len(), a.seed);
    }
    eprintln!("fashion-mnist: {} train / {} dev / {} test", data.train.len(), data.dev.len(), data.test.len());
    let t0 = std::time::Instant::now();
    let mut v = serde_json::json!({});
    let dense = if a.dense_epochs > 0 {
        let cfg = DenseConfig { epochs: a.dense_epochs, seed: a.seed, data_seed: a.seed, ..Default::default() };
        let out = edge_popup::train_dense_lenet300(&cfg, &data, &mut |p| eprintln!("dense lenet300 epoch {} dev {:.4} ({:.0} s)", p.epoch, p.dev_acc, p.seconds))?;
        println!("dense LeNet-300-100 (trained, Adam {}): best dev {:.4} at epoch {}/{}, test {:.4}", cfg.lr, out.best_dev_acc, out.best_epoch, cfg.epochs, out.test_acc);
        v["dense"] = serde_json::to_value(&out)?;
        Some(out.test_acc)
    } else {
        None
    };
    println!("| hidden | keep | weights kept / total | best dev (epoch) | test | test − dense |");
    println!("|---|---|---|---|---|---|");
    let mut runs = Vec::new();
    for &k in &a.width_mult {
        for &keep in &a.keep {
            let cfg = EdgePopupConfig {
                hidden: vec![300 * k, 100 * k],
                keep,
                init,
                scale_fan: !a.no_scale_fan,
                epochs: a.epochs,
                batch_size: a.batch_size,
                lr: a.lr,
                weight_decay: a.weight_decay,
                seed: a.seed,
                data_seed: a.seed,
                ..Default::default()
            };
            let label = format!("{}-{} keep {keep}", 300 * k, 100 * k);
            let out = edge_popup::train_edge_popup(&cfg, &data, &mut |p| {
                eprintln!("{label} epoch {} loss {:.4} dev {:.4} ({:.0} s)", p.epoch, p.train_loss.unwrap_or(f64::NAN), p.dev_acc, p.seconds)
            })?;
            let gap = dense.map_or(String::from("-"), |d| format!("{:+.2} pt", 100.0 * (out.test_acc - d)));
            println!("| {}-{} | {keep} | {} / {} | {:.4} ({}) | {:.4} | {gap} |", 300 * k, 100 * k, out.kept_weights, out.total_weights, out.best_dev_acc, out.best_epoch, out.test_acc);
            runs.push(out);
        }
    }
    if let Some(d) = dense {
        if let Some(best) = runs.iter().max_by(|x, y| x.best_dev_acc.total_cmp(&y.best_dev_acc)) {
            let gap = 100.0 * (d - best.test_acc);
            println!(
                "best-dev subnetwork {:?} keep {}: test {:.4} vs dense {:.4}: {:.2} pt below -> within 2 points: {}",
                best.config.hidden, best.config.keep, best.test_acc, d, gap, if gap <= 2.0 { "met" } else { "not met" }
            );
        }
    }
    v["edge_popup"] = serde_json::to_value(&runs)?;
    v["seconds"] = serde_json::json!(t0.elapsed().as_secs_f64());
    if let Some(p) = a.json {
        super::bench::write_with_provenance(&p, &v)?;
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct MalachArgs {
    /// Hidden units per target weight for the Malach construction (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "4,16,64,256,1024,4096")]
    pub widths: Vec<usize>,
    /// Hidden units per target weight for the subset-sum construction (exact search; <= ~80).
    #[arg(long, value_delimiter = ',', default_value = "4,8,12,16,24,32,48")]
    pub subset_widths: Vec<usize>,
    #[arg(long, default_value_t = 200)]
    pub trials: usize,
    /// Inputs of the target neuron.
    #[arg(long, default_value_t = 10)]
    pub neuron_inputs: usize,
    #[arg(long, default_value_t = 1000)]
    pub neuron_points: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn run_malach(a: MalachArgs) -> Result<()> {
    let mut rows = Vec::new();
    println!("| construction | width | weight err mean | weight err max | grid check max | neuron ({}) err mean | kept |", a.neuron_inputs);
    println!("|---|---|---|---|---|---|---|");
    for (construction, widths) in [(Construction::Malach, &a.widths), (Construction::SubsetSum, &a.subset_widths)] {
        if widths.is_empty() {
            continue;
        }
        let cfg = MalachConfig {
            construction,
            widths: widths.clone(),
            trials: a.trials,
            neuron_inputs: a.neuron_inputs,
            neuron_points: a.neuron_points,
            seed: a.seed,
        };
        for r in malach::malach_sweep(&cfg)? {
            println!(
                "| {:?} | {} | {:.3e} | {:.3e} | {:.3e} | {:.3e} | {:.5} |",
                r.construction, r.width, r.weight_err_mean, r.weight_err_max, r.weight_err_grid_max, r.neuron_err_mean, r.kept_fraction
            );
            rows.push(r);
        }
    }
    if let Some(p) = a.json {
        super::bench::write_with_provenance(&p, &serde_json::json!({ "trials": a.trials, "neuron_inputs": a.neuron_inputs, "neuron_points": a.neuron_points, "seed": a.seed, "rows": rows }))?;
    }
    Ok(())
}
