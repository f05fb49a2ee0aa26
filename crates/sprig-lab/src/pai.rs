//! Pruning at initialization: score the freshly initialised net, prune once, then train with the mask
//! fixed (SNIP, GraSP, SynFlow vs magnitude and random; cf. Frankle et al. 2021, "Pruning neural
//! networks at initialization: why are we missing the mark?"). Resumable per cell.
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use sprig_data::ImageDataset;
use sprig_prune::{Criterion, Inputs, MaskSet, Pruner, PrunerConfig, Selector};

use crate::lottery::mean_std;
use sprig_train::run::write_json;
use sprig_train::vision::{batch_tensor, evaluate, train, Arch, TrainConfig, VisionModel};

/// A pruning-at-init comparison.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PaiConfig {
    pub arch: Arch,
    pub dataset: String,
    pub methods: Vec<Criterion>,
    pub sparsities: Vec<f64>,
    pub seeds: Vec<u64>,
    pub train: TrainConfig,
    /// Calibration batches (and their size) for SNIP and GraSP.
    pub calib_batches: usize,
    pub calib_batch_size: usize,
    /// SynFlow iterations (Tanaka et al. use 100).
    pub synflow_iterations: usize,
}

/// One trained cell.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PaiCell {
    /// Criterion name, or "dense".
    pub method: String,
    pub sparsity: f64,
    pub seed: u64,
    pub realised_sparsity: f64,
    pub test_acc: f64,
    pub seconds: f64,
}

/// The mask a criterion gives at init (global allocation over the rank >= 2 weights): a one-shot
/// [`Pruner`] with the calibration loss (SNIP, GraSP) or the all-ones forward (SynFlow, iterated).
pub fn mask_at_init(model: &VisionModel, data: &ImageDataset, method: Criterion, sparsity: f64, seed: u64, cfg: &PaiConfig) -> Result<MaskSet> {
    if !matches!(method, Criterion::Magnitude | Criterion::Random | Criterion::Snip | Criterion::Grasp | Criterion::Synflow) {
        bail!("{} is not a pruning-at-init criterion here (use magnitude, random, snip, grasp, synflow)", method.name());
    }
    let prunable: Vec<(String, Var)> = Selector::weights().select(&model.params);
    let device = model.params[0].1.device().clone();
    let hw = model.height * model.width;
    let calib: Vec<Vec<usize>> = sprig_data::batch::batch_indices(data.train.len(), cfg.calib_batch_size, true, seed ^ 0x5eed, 0)
        .into_iter()
        .take(cfg.calib_batches)
        .collect();
    let mut loss = |b: usize| -> candle_core::Result<Tensor> {
        let (x, y) = batch_tensor(&data.train, &calib[b], hw, &device).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        candle_nn::loss::cross_entropy(&model.forward(&x)?, &y)
    };
    let mut fwd = || model.forward(&Tensor::ones((1, hw), DType::F32, &device)?);
    let iterations = if method == Criterion::Synflow { cfg.synflow_iterations } else { 1 };
    let config = PrunerConfig::one_shot(method, sparsity).seed(seed.wrapping_add(0xabcdef)).iterations(iterations);
    let mut pruner = Pruner::for_params(config, &prunable)?;
    let mut inputs = match method {
        Criterion::Snip | Criterion::Grasp => Inputs::none().with_loss(&mut loss, calib.len()),
        Criterion::Synflow => Inputs::none().with_forward_ones(&model.params, &mut fwd),
        _ => Inputs::none(),
    };
    Ok(pruner.one_shot(&prunable, &mut inputs)?.clone())
}

/// Runs (or resumes) the comparison into `out`, writing `out/cells/*.json`, `out/summary.json` and `out/table.md`.
pub fn run_pai(cfg: &PaiConfig, data: &ImageDataset, out: &Path, device: &Device) -> Result<String> {
    if cfg.seeds.is_empty() {
        bail!("--seeds must be at least 1");
    }
    for &s in &cfg.sparsities {
        sprig_prune::error::check_sparsity(s)?;
    }
    for m in &cfg.methods {
        if !matches!(m, Criterion::Magnitude | Criterion::Random | Criterion::Snip | Criterion::Grasp | Criterion::Synflow) {
            bail!("{} is not a pruning-at-init criterion here (use magnitude, random, snip, grasp, synflow)", m.name());
        }
    }
    write_json(&out.join("config.json"), cfg)?;
    let classes = data.classes.len();
    let mut cells: Vec<PaiCell> = Vec::new();
    let mut jobs: Vec<(Option<Criterion>, f64)> = vec![(None, 0.0)];
    for &s in &cfg.sparsities {
        for &m in &cfg.methods {
            jobs.push((Some(m), s));
        }
    }
    for (method, s) in jobs {
        for &seed in &cfg.seeds {
            let name = method.map(|m| m.name()).unwrap_or_else(|| "dense".into());
            let path = out.join("cells").join(format!("{name}-{s}-seed{seed}.json"));
            if let Ok(bytes) = std::fs::read(&path) {
                cells.push(serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))?);
                continue;
            }
            let t0 = std::time::Instant::now();
            let model = VisionModel::new(cfg.arch, data.height, data.width, classes, seed, device)?;
            let mask = match method {
                Some(m) => mask_at_init(&model, data, m, s, seed, cfg)?,
                None => MaskSet::ones_for(&Selector::weights().select(&model.params)),
            };
            let tcfg = TrainConfig { data_seed: seed.wrapping_mul(1_000_003), ..cfg.train.clone() };
            train(&model, &data.train, &tcfg, &mask, &mut |_, _| Ok(()))?;
            let cell = PaiCell { method: name, sparsity: s, seed, realised_sparsity: mask.sparsity(), test_acc: evaluate(&model, &data.test)?, seconds: t0.elapsed().as_secs_f64() };
            tracing::info!("{} at {:.2}: seed {seed} test {:.4} ({:.0}s)", cell.method, s, cell.test_acc, cell.seconds);
            write_json(&path, &cell)?;
            cells.push(cell);
        }
    }
    write_json(&out.join("summary.json"), &cells)?;
    let table = table(cfg, &cells);
    sprig_train::run::write_atomic(&out.join("table.md"), table.as_bytes())?;
    Ok(table)
}

/// Markdown table: rows = methods (dense first), columns = sparsities, cells = mean ± std test accuracy (%).
pub fn table(cfg: &PaiConfig, cells: &[PaiCell]) -> String {
    let mut t = String::from("| method |");
    for s in &cfg.sparsities {
        t += &format!(" {:.0}% sparse |", 100.0 * s);
    }
    t += "\n|---|";
    t += &"---|".repeat(cfg.sparsities.len());
    t += "\n";
    let cell = |m: &str, s: f64| {
        let v: Vec<f64> = cells.iter().filter(|c| c.method == m && (m == "dense" || (c.sparsity - s).abs() < 1e-9)).map(|c| 100.0 * c.test_acc).collect();
        if v.is_empty() {
            "–".to_string()
        } else {
            let (m, sd) = mean_std(&v);
            format!("{m:.2} ± {sd:.2}")
        }
    };
    t += "| dense (reference) |";
    for &s in &cfg.sparsities {
        t += &format!(" {} |", cell("dense", s));
    }
    t += "\n";
    for m in &cfg.methods {
        t += &format!("| {} |", m.name());
        for &s in &cfg.sparsities {
            t += &format!(" {} |", cell(&m.name(), s));
        }
        t += "\n";
    }
    t
}
