//! The comparison of Chen et al. 2022 ("Can You Win Everything with a Lottery Ticket?") on an
//! image task with LeNet-300-100 or LeNet-5: at the sparsities of chosen IMP rounds, the IMP ticket
//! (Frankle & Carbin 2019, rewound to init) against the dense net, one-shot magnitude pruning of
//! the trained dense net then fine-tuning (Han et al. 2015), a random mask at the same per-layer
//! sparsities, SNIP (Lee et al. 2019), GraSP (Wang et al. 2020) and SynFlow (Tanaka et al. 2020)
//! at init, RigL (Evci et al.
//! 2020; on LeNet-5 its convs stay dense, its linears sparser, so that it keeps the ticket's
//! weight count), and a small dense net of the same shape with as many weights as the ticket keeps. Every net is trained with
//! one recipe; each is saved as a sparse checkpoint `OUT/models/<variant>[-<pct>]-s<seed>` and
//! the lot is scored by [`crate::blessings_image`].
//!
//! Resumable: the IMP rounds are a `sprig lottery` run in `OUT/imp`, and a model whose
//! checkpoint exists is not trained again.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use sprig_data::ImageDataset;
use sprig_prune::checkpoint::{self, CheckpointMeta};
use sprig_prune::{Criterion, Inputs, Mask, MaskSet, Pruner, Rewind, Selector};
use sprig_train::dst::{DstArch, DstConfig, DstOptimizer, DstTrainer, Method};
use sprig_train::vision::{train, Arch, OptimChoice, TrainConfig, VisionModel};

use crate::blessings::ModelBlessings;
use crate::imp::cell_dir;
use crate::lottery::{layerwise_pruner, run_lottery, LotteryConfig};
use crate::pai::{mask_at_init, PaiConfig};
use crate::run_dir::{without_fields, RunConfig, RunDir};

/// The sparse variants, in table order (the dense net is always there).
pub const VARIANTS: &[&str] = &["imp", "oneshot-ft", "random", "snip", "grasp", "synflow", "rigl", "small-dense"];

/// A blessings comparison on an image task.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GridConfig {
    pub dataset: String,
    /// LeNet-300-100 (the default, left out of the config file) or LeNet-5.
    #[serde(default = "lenet300", skip_serializing_if = "is_lenet300")]
    pub arch: Arch,
    /// IMP rounds whose sparsities are compared: hidden layers at 1 − (1 − rate)^r.
    pub rounds: Vec<usize>,
    pub rate: f64,
    pub output_rate: f64,
    pub seeds: Vec<u64>,
    /// Which of [`VARIANTS`] to train.
    pub variants: Vec<String>,
    /// The recipe of every training (dense, each IMP round, each variant, the fine-tuning).
    pub train: TrainConfig,
    /// RigL: steps between mask updates, initial drop fraction, end of updates.
    pub rigl_delta_t: usize,
    pub rigl_alpha: f64,
    pub rigl_end_fraction: f64,
    /// SNIP's calibration batches (and their size); SynFlow's iterations.
    pub calib_batches: usize,
    pub calib_batch_size: usize,
    pub synflow_iterations: usize,
}

fn lenet300() -> Arch {
    Arch::Lenet300
}

fn is_lenet300(a: &Arch) -> bool {
    *a == Arch::Lenet300
}

impl RunConfig for GridConfig {
    fn validate(&self) -> Result<()> {
        if self.rounds.is_empty() || self.rounds.contains(&0) {
            bail!("--rounds must name IMP rounds >= 1, got {:?}", self.rounds);
        }
        if self.seeds.is_empty() {
            bail!("--seeds must be at least 1");
        }
        if !matches!(self.arch, Arch::Lenet300 | Arch::Lenet5) {
            bail!("the grid trains LeNet-300-100 or LeNet-5, not {:?}", self.arch);
        }
        if let Some(v) = self.variants.iter().find(|v| !VARIANTS.contains(&v.as_str())) {
            bail!("unknown variant {v:?}: expected some of {VARIANTS:?}");
        }
        self.lottery().validate()
    }
    fn identity(&self) -> Result<serde_json::Value> {
        Ok(without_fields(serde_json::to_value(self)?, &["rounds", "seeds", "variants"]))
    }
}

impl GridConfig {
    /// The IMP run behind the tickets (rewound to init, no controls).
    pub fn lottery(&self) -> LotteryConfig {
        LotteryConfig {
            arch: self.arch,
            dataset: self.dataset.clone(),
            rounds: self.rounds.iter().copied().max().unwrap_or(0),
            rate: self.rate,
            output_rate: self.output_rate,
            rewind: Rewind::Init,
            seeds: self.seeds.clone(),
            train: self.train.clone(),
            controls: vec![],
            control_rounds: vec![],
        }
    }
}

fn save(dir: &Path, tensors: &[(String, Tensor)], masks: &MaskSet, variant: &str, seed: u64, dataset: &str, sparsity: f64) -> Result<()> {
    let extra = serde_json::json!({ "variant": variant, "dataset": dataset, "target_sparsity": sparsity });
    let meta = CheckpointMeta { method: variant.to_string(), schedule: None, seed: Some(seed), parent_sha256: None, extra };
    checkpoint::save(dir, tensors, masks, &meta).with_context(|| format!("saving {}", dir.display()))?;
    Ok(())
}

/// Trains `model` under `mask` with the grid's recipe; `salt` varies the batch order per variant.
fn fit(cfg: &GridConfig, data: &ImageDataset, model: &VisionModel, mask: &MaskSet, seed: u64, salt: u64) -> Result<()> {
    let recipe = TrainConfig { data_seed: seed.wrapping_mul(1_000_003).wrapping_add(1_000 + salt), snapshot_step: None, ..cfg.train.clone() };
    train(model, &data.train, &recipe, mask, &mut |_, _| Ok(()))?;
    Ok(())
}

/// One sparse variant at IMP round `r` for `seed`: `(tensors, masks)` after training.
fn variant(cfg: &GridConfig, data: &ImageDataset, name: &str, r: usize, seed: u64, imp: &Path, dev: &Device) -> Result<(Vec<(String, Tensor)>, MaskSet)> {
    let lot = cfg.lottery();
    let classes = data.classes.len();
    let init = || VisionModel::new(cfg.arch, data.height, data.width, classes, seed, dev);
    let ticket = checkpoint::load(&cell_dir(imp, r, seed), dev)?;
    let target = ticket.masks.sparsity();
    let salt = 10 * r as u64 + VARIANTS.iter().position(|v| *v == name).unwrap_or(0) as u64;
    let layerwise = |model: &VisionModel, crit: Criterion, from: Option<&[(String, Tensor)]>| -> Result<MaskSet> {
        let prunable = Selector::weights().select(&model.params);
        let vars: Vec<(String, Var)> = match from {
            Some(w) => prunable.iter().map(|(n, _)| Ok((n.clone(), Var::from_tensor(&w.iter().find(|(m, _)| m == n).context("weights")?.1)?))).collect::<Result<_>>()?,
            None => prunable.clone(),
        };
        let pc = layerwise_pruner(&lot, crit, &prunable).seed(seed.wrapping_mul(31).wrapping_add(r as u64));
        Ok(Pruner::for_params(pc, &prunable)?.round(r, &vars, &mut Inputs::none())?.clone())
    };
    let trained = |model: VisionModel, mask: MaskSet| -> Result<(Vec<(String, Tensor)>, MaskSet)> {
        fit(cfg, data, &model, &mask, seed, salt)?;
        Ok((model.named_tensors(), mask))
    };
    match name {
        "imp" => Ok((ticket.tensors, ticket.masks)),
        "oneshot-ft" => {
            let dense = checkpoint::load(&cell_dir(imp, 0, seed), dev)?;
            let model = init()?;
            model.restore(&model.params.iter().map(|(n, _)| dense.tensors.iter().find(|(m, _)| m == n).map(|(_, t)| t.clone()).context("dense weights")).collect::<Result<Vec<_>>>()?)?;
            let mask = layerwise(&model, Criterion::Magnitude, Some(&dense.tensors))?;
            mask.apply(&model.params)?;
            trained(model, mask)
        }
        "random" => {
            let model = init()?;
            let mask = layerwise(&model, Criterion::Random, None)?;
            trained(model, mask)
        }
        "snip" | "grasp" | "synflow" => {
            let model = init()?;
            let pai = PaiConfig {
                arch: cfg.arch,
                dataset: cfg.dataset.clone(),
                methods: vec![],
                sparsities: vec![],
                seeds: vec![],
                train: cfg.train.clone(),
                calib_batches: cfg.calib_batches,
                calib_batch_size: cfg.calib_batch_size,
                synflow_iterations: cfg.synflow_iterations,
            };
            let crit = match name {
                "snip" => Criterion::Snip,
                "grasp" => Criterion::Grasp,
                _ => Criterion::Synflow,
            };
            let mask = mask_at_init(&model, data, crit, target, seed, &pai)?;
            mask.apply(&model.params)?;
            trained(model, mask)
        }
        "rigl" => {
            let (lr, optimizer) = match cfg.train.optim {
                OptimChoice::Adam { lr } => (lr, DstOptimizer::Adam),
                OptimChoice::Sgd { lr, .. } => (lr, DstOptimizer::Sgd),
            };
            // LeNet-5's convs stay dense under RigL here (`DstArch::Conv`): its linears are made
            // sparser so that the net keeps as many weights as the ticket.
            let (arch, sparsity) = match cfg.arch {
                Arch::Lenet300 => (DstArch::Lenet300, target),
                _ => {
                    let shapes = cfg.arch.param_shapes(data.height, data.width, classes);
                    let convs: usize = shapes.iter().filter(|(_, s)| s.len() == 4).map(|(_, s)| s.iter().product::<usize>()).sum();
                    let linears = cfg.arch.weight_count(data.height, data.width, classes) - convs;
                    let kept = ticket.masks.count_kept();
                    if kept <= convs {
                        bail!("RigL keeps LeNet-5's {convs} conv weights dense, more than the ticket's {kept} weights");
                    }
                    (DstArch::Conv, 1.0 - (kept - convs) as f64 / linears as f64)
                }
            };
            let dc = DstConfig {
                arch,
                method: Method::Rigl,
                sparsity,
                epochs: cfg.train.epochs,
                batch_size: cfg.train.batch_size,
                lr,
                optimizer,
                lr_schedule: Default::default(),
                weight_decay: 0.0,
                delta_t: cfg.rigl_delta_t,
                alpha: cfg.rigl_alpha,
                end_fraction: cfg.rigl_end_fraction,
                granet_initial: 0.5,
            };
            let mut t = DstTrainer::new(&dc, data.height, data.width, classes, data.train.len(), seed, dev)?;
            t.train(&data.train, seed.wrapping_mul(1_000_003).wrapping_add(1_000 + salt))?;
            t.check_exact()?;
            let mut tensors = Vec::new();
            let mut masks = t.model.masks();
            for (i, (w, b)) in t.model.conv.iter().enumerate() {
                let name = format!("conv{}.weight", i + 1);
                masks.insert(name.clone(), Mask::ones(w.dims()));
                tensors.push((name, w.as_tensor().copy()?));
                tensors.push((format!("conv{}.bias", i + 1), b.as_tensor().copy()?));
            }
            for fc in &t.model.fcs {
                tensors.push((format!("{}.weight", fc.name), Tensor::from_vec(fc.dense_weight()?, (fc.n, fc.k), dev)?));
                tensors.push((format!("{}.bias", fc.name), fc.bias.as_tensor().copy()?));
            }
            Ok((tensors, masks))
        }
        "small-dense" => {
            let arch = cfg.arch.with_weight_count(ticket.masks.count_kept(), data.height, data.width, classes);
            let model = VisionModel::new(arch, data.height, data.width, classes, seed, dev)?;
            let mask = MaskSet::ones_for(&Selector::weights().select(&model.params));
            trained(model, mask)
        }
        other => bail!("unknown variant {other:?}"),
    }
}

/// Trains (or finds) every model of the grid; returns their directories, dense first.
pub fn run_grid(cfg: &GridConfig, data: &ImageDataset, out: &Path, dev: &Device) -> Result<Vec<PathBuf>> {
    let run = RunDir::open(out, cfg)?;
    let imp = run.path("imp");
    run_lottery(&cfg.lottery(), data, &imp, dev).context("the IMP rounds")?;
    let models = run.path("models");
    let mut dirs = Vec::new();
    for &seed in &cfg.seeds {
        let d = models.join(format!("dense-s{seed}"));
        if !d.join(checkpoint::MANIFEST_FILE).exists() {
            let c = checkpoint::load(&cell_dir(&imp, 0, seed), dev)?;
            save(&d, &c.tensors, &c.masks, "dense", seed, &cfg.dataset, 0.0)?;
        }
        dirs.push(d);
    }
    for &r in &cfg.rounds {
        for name in VARIANTS.iter().filter(|v| cfg.variants.iter().any(|w| w == *v)) {
            for &seed in &cfg.seeds {
                let target = checkpoint::read_manifest(&cell_dir(&imp, r, seed))?.prunable_sparsity;
                let d = models.join(format!("{name}-{:.0}-s{seed}", 100.0 * target));
                if !d.join(checkpoint::MANIFEST_FILE).exists() {
                    let t0 = std::time::Instant::now();
                    let (tensors, masks) = variant(cfg, data, name, r, seed, &imp, dev).with_context(|| format!("{name} at round {r}, seed {seed}"))?;
                    save(&d, &tensors, &masks, name, seed, &cfg.dataset, target)?;
                    tracing::info!("{name} at {:.1}% (round {r}), seed {seed}: trained in {:.0}s", 100.0 * target, t0.elapsed().as_secs_f64());
                }
                dirs.push(d);
            }
        }
    }
    Ok(dirs)
}

/// `(sparsity %, value)` pairs.
type Points = Vec<(f64, f64)>;

/// The variant of a model group: its name without a trailing `-<pct>` (`imp-67` → `imp`).
fn variant_of(group: &str) -> &str {
    match group.rsplit_once('-') {
        Some((head, pct)) if !pct.is_empty() && pct.chars().all(|c| c.is_ascii_digit()) => head,
        _ => group,
    }
}

/// One figure per column of the report (accuracy, NLL, ECE, each OOD AUROC, each corruption)
/// against sparsity (the matched sparsity for the small dense net): a line per variant through its per-sparsity means over seeds, the dense
/// mean as the reference line. `(file name, SVG)` pairs.
pub fn metric_figures(rows: &[ModelBlessings]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (name, f) in crate::blessings::columns(rows).into_iter().skip(1) {
        let mut by: BTreeMap<&str, BTreeMap<&str, Points>> = BTreeMap::new();
        for m in rows {
            // x: the sparsity the group was trained to match (its `-<pct>` suffix: the small dense
            // net has no zeros), else the model's own.
            let x = m.group.rsplit_once('-').and_then(|(_, p)| p.parse::<f64>().ok()).unwrap_or(100.0 * m.sparsity);
            by.entry(variant_of(&m.group)).or_default().entry(m.group.as_str()).or_default().push((x, f(m)));
        }
        let mean = |v: &[(f64, f64)]| (v.iter().map(|p| p.0).sum::<f64>() / v.len() as f64, v.iter().map(|p| p.1).sum::<f64>() / v.len() as f64);
        let dense = by.remove("dense").map(|g| g.values().map(|v| mean(v).1).sum::<f64>() / g.len() as f64);
        let series: Vec<(String, Vec<(f64, f64)>)> = by
            .iter()
            .map(|(v, groups)| {
                let mut pts: Vec<(f64, f64)> = groups.values().map(|g| mean(g)).collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                (v.to_string(), pts)
            })
            .collect();
        let ys: Vec<f64> = series.iter().flat_map(|s| s.1.iter().map(|p| p.1)).chain(dense).filter(|y| y.is_finite()).collect();
        if ys.is_empty() {
            continue;
        }
        let (lo, hi) = ys.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(*y), b.max(*y)));
        let pad = ((hi - lo) * 0.1).max(1e-3);
        let xs: Vec<f64> = series.iter().flat_map(|s| s.1.iter().map(|p| p.0)).collect();
        let (x0, x1) = xs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(*x), b.max(*x)));
        let (x0, x1) = if xs.is_empty() { (0.0, 100.0) } else { ((x0 - 5.0).max(0.0), (x1 + 5.0).min(100.0)) };
        let mut chart = crate::plot::Chart::new(&name, ("sparsity of the weight matrices (%)", &name), (x0, x1), (lo - pad, hi + pad), &series);
        if let Some(d) = dense {
            chart = chart.reference(format!("dense ({d:.4})"), vec![(x0, d), (x1, d)]);
        }
        let svg = crate::plot::line_chart(&chart)?;
        let slug: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
        let slug = slug.split('-').filter(|p| !p.is_empty()).collect::<Vec<_>>().join("-");
        out.push((format!("{slug}.svg"), svg));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_dense_matches_the_weight_count() {
        assert_eq!((variant_of("imp-67"), variant_of("small-dense-89"), variant_of("dense"), variant_of("oneshot-ft")), ("imp", "small-dense", "dense", "oneshot-ft"));
        for arch in [Arch::Lenet300, Arch::Lenet5] {
            let full = arch.weight_count(28, 28, 10);
            assert_eq!(arch.with_weight_count(full, 28, 28, 10).weight_count(28, 28, 10), full, "{arch:?}");
            for keep in [0.328, 0.107] {
                let kept = (keep * full as f64) as usize;
                let small = arch.with_weight_count(kept, 28, 28, 10);
                let n = small.weight_count(28, 28, 10);
                assert!((n as f64 / kept as f64 - 1.0).abs() < 0.02, "{small:?}: {n} weights for {kept}");
            }
        }
        // The widths of the published LeNet-300-100 grid (784-106-35-10 at 67.1%, 784-36-12-10 at 89.2%).
        let full = Arch::Lenet300.weight_count(28, 28, 10);
        for (keep, h) in [(0.329, (106, 35)), (0.108, (36, 12))] {
            assert_eq!(Arch::Lenet300.with_weight_count((keep * full as f64) as usize, 28, 28, 10), Arch::Mlp { hidden1: h.0, hidden2: h.1 });
        }
        // And of the LeNet-5 grid, at its tickets' weight counts.
        for (kept, w) in [(20363, (3, 9, 69, 48)), (6803, (2, 5, 39, 27))] {
            assert_eq!(Arch::Lenet5.with_weight_count(kept, 28, 28, 10), Arch::Cnn { conv1: w.0, conv2: w.1, fc1: w.2, fc2: w.3 });
        }
    }
}
