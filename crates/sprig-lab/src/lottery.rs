//! Lottery tickets by iterative magnitude pruning (Frankle & Carbin 2019, Alg. 1 / "Strategy 2" with
//! rewinding), with the paper's two controls: the same mask with a fresh random init ("reinit",
//! §2) and a random mask at the same per-layer sparsity ("random pruning").
//!
//! Runs on the resumable IMP runner ([`crate::imp::run_imp`]) in a [`RunDir`]: every finished
//! (round, seed) is a sparse checkpoint `OUT/round-RR/seed-S/` and every control a file
//! `OUT/round-RR/seed-S/control-<name>.json`, all written atomically; a restarted run reads them
//! back and continues from the first missing one, ending with the same files as an uninterrupted
//! run. `summary.json` (per round: remaining weights, accuracies mean ± std) and `lottery.svg`
//! are redrawn as cells finish.
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Var};
use serde::{Deserialize, Serialize};
use sprig_data::ImageDataset;
use sprig_prune::checkpoint::SparseCheckpoint;
use sprig_prune::{Allocation, Criterion, GroupRate, Inputs, MaskSet, Pruner, PrunerConfig, Rewind, RoundRate, Schedule, Selector};
use sprig_train::vision::{evaluate, train, Arch, OptimChoice, TrainConfig, VisionModel};

use crate::imp::{run_imp, Cell, CellResult, Control, ImpPlan, ImpSubject, Start, Trained};
use crate::run_dir::{without_fields, RunConfig, RunDir};

/// A lottery experiment.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LotteryConfig {
    pub arch: Arch,
    pub dataset: String,
    pub rounds: usize,
    /// Fraction of the remaining weights pruned per round in hidden layers (LTH: 0.2).
    pub rate: f64,
    /// Same for the output layer (LTH: half the rate).
    pub output_rate: f64,
    pub rewind: Rewind,
    pub seeds: Vec<u64>,
    /// The training recipe of every run (`data_seed` and `snapshot_step` are set per run).
    pub train: TrainConfig,
    /// Controls: `reinit` and/or `random_mask` ([`Lottery::CONTROLS`]).
    pub controls: Vec<Control>,
    /// Rounds in which `controls` run (empty = every round >= 1).
    #[serde(default)]
    pub control_rounds: Vec<usize>,
}

impl LotteryConfig {
    /// What the IMP runner needs.
    pub fn plan(&self) -> ImpPlan {
        ImpPlan { rounds: self.rounds, seeds: self.seeds.clone(), rewind: self.rewind, controls: self.controls.clone(), control_rounds: self.control_rounds.clone() }
    }

    /// The hidden layers' schedule, s_r = 1 − (1 − rate)^r.
    pub fn schedule(&self) -> Schedule {
        Schedule::Imp { rounds: self.rounds, rate: RoundRate::FractionOfRemaining(self.rate), rewind: self.rewind }
    }
}

impl RunConfig for LotteryConfig {
    fn validate(&self) -> Result<()> {
        for (what, p) in [("--rate", self.rate), ("--output-rate", self.output_rate)] {
            if !(p > 0.0 && p < 1.0) {
                bail!("{what} {p} must be in (0, 1)");
            }
        }
        let t = &self.train;
        if t.epochs == 0 || t.batch_size == 0 {
            bail!("--epochs and --batch-size must be at least 1 (got {} and {})", t.epochs, t.batch_size);
        }
        let (lr, momentum) = match t.optim {
            OptimChoice::Adam { lr } => (lr, 0.0),
            OptimChoice::Sgd { lr, momentum } => (lr, momentum),
        };
        if !(lr > 0.0 && lr.is_finite()) {
            bail!("--lr {lr} must be positive and finite");
        }
        if !(0.0..1.0).contains(&momentum) {
            bail!("--sgd-momentum {momentum} must be in [0, 1)");
        }
        self.schedule().validate()?;
        self.plan().validate(Lottery::CONTROLS)
    }

    /// Everything but the fields that may grow (`rounds`, `seeds`, `controls`, `control_rounds`).
    fn identity(&self) -> Result<serde_json::Value> {
        Ok(without_fields(serde_json::to_value(self)?, &ImpPlan::GROWABLE))
    }
}

/// What one training run measured (the ticket's or a control's).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LotteryMetrics {
    pub test_acc: f64,
    pub dev_acc: f64,
    pub steps: usize,
    pub seconds: f64,
}

/// One row of `summary.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SummaryRow {
    pub round: usize,
    /// Fraction of prunable weights remaining.
    pub remaining: f64,
    pub seeds: usize,
    pub test_acc_mean: f64,
    pub test_acc_std: f64,
    pub reinit_acc_mean: Option<f64>,
    pub reinit_acc_std: Option<f64>,
    pub random_mask_acc_mean: Option<f64>,
    pub random_mask_acc_std: Option<f64>,
}

/// Mean and sample standard deviation.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let s = if v.len() > 1 { (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { 0.0 };
    (m, s)
}

/// The experiment as an [`ImpSubject`]: vision models of `sprig_train`, the layerwise IMP step.
pub struct Lottery<'a> {
    cfg: &'a LotteryConfig,
    data: &'a ImageDataset,
    device: Device,
}

impl Lottery<'_> {
    fn model(&self, seed: u64) -> Result<VisionModel> {
        Ok(VisionModel::new(self.cfg.arch, self.data.height, self.data.width, self.data.classes.len(), seed, &self.device)?)
    }

    /// The prunable weights (every weight matrix and kernel, not the biases), in model order.
    fn prunable(model: &VisionModel) -> Vec<(String, Var)> {
        Selector::weights().select(&model.params)
    }

    fn pruner(&self, criterion: Criterion, prunable: &[(String, Var)]) -> PrunerConfig {
        layerwise_pruner(self.cfg, criterion, prunable)
    }

    /// The recipe of a run in `cell`: batch order seeded by (seed, round).
    fn recipe(&self, cell: &Cell, snapshot_step: Option<usize>) -> TrainConfig {
        TrainConfig { data_seed: cell.seed.wrapping_mul(1_000_003).wrapping_add(cell.round as u64), snapshot_step, ..self.cfg.train.clone() }
    }

    /// Trains `model` under `mask` and measures it.
    fn fit(&self, model: &VisionModel, cell: &Cell, mask: &MaskSet, snapshot_step: Option<usize>) -> Result<(LotteryMetrics, Option<Vec<candle_core::Tensor>>)> {
        let t0 = Instant::now();
        let out = train(model, &self.data.train, &self.recipe(cell, snapshot_step), mask, &mut |_, _| Ok(()))?;
        let metrics = LotteryMetrics { test_acc: evaluate(model, &self.data.test)?, dev_acc: evaluate(model, &self.data.dev)?, steps: out.steps, seconds: t0.elapsed().as_secs_f64() };
        Ok((metrics, out.snapshot))
    }
}

/// The layerwise IMP pruner of `c` (Frankle & Carbin 2019, §2): every hidden layer at
/// 1 − (1 − rate)^r on its own (uniform allocation), the output layer at 1 − (1 − output_rate)^r;
/// with another criterion (random), the same per-layer sparsities.
pub fn layerwise_pruner(c: &LotteryConfig, criterion: Criterion, prunable: &[(String, Var)]) -> PrunerConfig {
    let mut p = PrunerConfig::imp(c.rounds, RoundRate::FractionOfRemaining(c.rate), c.rewind).allocation(Allocation::uniform());
    p.criterion = criterion;
    let out = c.arch.output_weight();
    if prunable.iter().any(|(n, _)| n == out) {
        p = p.group([out], GroupRate::Round(RoundRate::FractionOfRemaining(c.output_rate)));
    }
    p
}

/// Sets every parameter of `model` from `w` (by name); a missing or unknown name is an error.
pub(crate) fn set_weights(model: &VisionModel, w: &std::collections::BTreeMap<String, candle_core::Tensor>) -> Result<()> {
    if let Some(n) = w.keys().find(|n| !model.params.iter().any(|(p, _)| p == *n)) {
        bail!("the start weights name `{n}`, which the model does not have");
    }
    for (n, v) in &model.params {
        v.set(w.get(n).with_context(|| format!("the start weights lack `{n}`"))?)?;
    }
    Ok(())
}

impl ImpSubject for Lottery<'_> {
    type Metrics = LotteryMetrics;
    const CONTROLS: &'static [Control] = &[Control::RandomMask, Control::Reinit];

    fn device(&self) -> Device {
        self.device.clone()
    }
    fn method(&self) -> String {
        "imp-magnitude-layerwise".into()
    }
    fn schedule(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self.cfg.schedule()).ok()
    }
    fn round_sparsity(&self, round: usize) -> Result<f64> {
        Ok(self.cfg.schedule().round_sparsity(round)?)
    }
    fn dense_mask(&self, seed: u64) -> Result<MaskSet> {
        Ok(MaskSet::ones_for(&Self::prunable(&self.model(seed)?)))
    }
    fn train(&self, cell: &Cell, start: &Start, mask: &MaskSet, snapshot_step: Option<usize>) -> Result<Trained<LotteryMetrics>> {
        let model = self.model(cell.seed)?;
        if let Start::Weights(w) = start {
            set_weights(&model, w)?;
        }
        let (metrics, snap) = self.fit(&model, cell, mask, snapshot_step)?;
        let snapshot = snap.map(|s| model.params.iter().map(|(n, _)| n.clone()).zip(s).collect());
        tracing::info!(round = cell.round, seed = cell.seed, remaining = 1.0 - mask.sparsity(), test_acc = metrics.test_acc, "lottery ticket trained");
        Ok(Trained { metrics, tensors: model.named_tensors(), snapshot })
    }
    /// Layerwise magnitude pruning of the previous round's trained weights, never reviving.
    fn prune(&self, cell: &Cell, prev: &SparseCheckpoint) -> Result<MaskSet> {
        let prunable = Self::prunable(&self.model(cell.seed)?);
        let vars: Vec<(String, Var)> = prev
            .tensors
            .iter()
            .filter(|(n, _)| prunable.iter().any(|(p, _)| p == n))
            .map(|(n, t)| Ok((n.clone(), Var::from_tensor(t)?)))
            .collect::<Result<_>>()?;
        let shapes = prunable.iter().map(|(n, v)| (n.clone(), v.dims().to_vec())).collect();
        let mut pruner = Pruner::new(self.pruner(Criterion::Magnitude, &prunable), shapes)?.with_masks(prev.masks.clone())?;
        Ok(pruner.round(cell.round, &vars, &mut Inputs::none())?.clone())
    }
    fn control(&self, control: Control, cell: &Cell, imp_mask: &MaskSet, start: &Start) -> Result<LotteryMetrics> {
        let (seed, r) = (cell.seed, cell.round);
        let (metrics, _) = match control {
            // The IMP mask on a fresh init from another seed.
            Control::Reinit => self.fit(&self.model(seed.wrapping_add(7919 * r as u64 + 104_729))?, cell, imp_mask, None)?,
            // The rewound weights under a random mask with the same per-layer sparsities.
            Control::RandomMask => {
                let model = self.model(seed)?;
                if let Start::Weights(w) = start {
                    set_weights(&model, w)?;
                }
                let prunable = Self::prunable(&model);
                let cfg = self.pruner(Criterion::Random, &prunable).seed(seed.wrapping_mul(31).wrapping_add(r as u64));
                let mask = Pruner::for_params(cfg, &prunable)?.round(r, &prunable, &mut Inputs::none())?.clone();
                self.fit(&model, cell, &mask, None)?
            }
            c => bail!("control `{c}` is not part of the lottery experiment"),
        };
        tracing::info!(round = r, seed, control = control.name(), test_acc = metrics.test_acc, "lottery control trained");
        Ok(metrics)
    }
    fn summary(&self, cells: &[CellResult<LotteryMetrics>]) -> Result<serde_json::Value> {
        Ok(serde_json::json!({ "arch": self.cfg.arch, "dataset": self.cfg.dataset, "rounds": summarize(cells) }))
    }
    fn plot(&self, run: &RunDir, cells: &[CellResult<LotteryMetrics>]) -> Result<()> {
        let rows = summarize(cells);
        if rows.is_empty() {
            return Ok(());
        }
        run.write_plot("lottery.svg", || plot_svg(&rows, &format!("IMP tickets, {:?} on {}", self.cfg.arch, self.cfg.dataset)))
    }
}

/// Runs (or resumes) the experiment into `out`; returns the summary rows (also in `out/summary.json`).
pub fn run_lottery(cfg: &LotteryConfig, data: &ImageDataset, out: &Path, device: &Device) -> Result<Vec<SummaryRow>> {
    let run = RunDir::open(out, cfg)?;
    let subject = Lottery { cfg, data, device: device.clone() };
    Ok(summarize(&run_imp(&run, &cfg.plan(), &subject)?))
}

/// Summary rows per round (mean and std over seeds; a control's columns only when every seed of
/// the round has it).
pub fn summarize(cells: &[CellResult<LotteryMetrics>]) -> Vec<SummaryRow> {
    let max_r = cells.iter().map(|c| c.round).max().unwrap_or(0);
    (0..=max_r)
        .filter_map(|round| {
            let rs: Vec<&CellResult<LotteryMetrics>> = cells.iter().filter(|c| c.round == round).collect();
            if rs.is_empty() {
                return None;
            }
            let col = |f: &dyn Fn(&CellResult<LotteryMetrics>) -> Option<f64>| -> Option<(f64, f64)> {
                let v: Vec<f64> = rs.iter().filter_map(|c| f(c)).collect();
                if v.len() == rs.len() { Some(mean_std(&v)) } else { None }
            };
            let control = |c: Control| move |x: &CellResult<LotteryMetrics>| x.controls.get(c.name()).map(|m| m.test_acc);
            let (tm, ts) = col(&|c| Some(c.metrics.test_acc))?;
            let re = col(&control(Control::Reinit));
            let rm = col(&control(Control::RandomMask));
            Some(SummaryRow {
                round,
                remaining: 1.0 - rs[0].sparsity,
                seeds: rs.len(),
                test_acc_mean: tm,
                test_acc_std: ts,
                reinit_acc_mean: re.map(|x| x.0),
                reinit_acc_std: re.map(|x| x.1),
                random_mask_acc_mean: rm.map(|x| x.0),
                random_mask_acc_std: rm.map(|x| x.1),
            })
        })
        .collect()
}

/// Test accuracy vs remaining weights (log x axis), like the LTH paper's figures: the SVG text.
pub fn plot_svg(rows: &[SummaryRow], title: &str) -> Result<String> {
    use plotters::prelude::*;
    if rows.is_empty() {
        bail!("no rows to plot");
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let xs: Vec<f64> = rows.iter().map(|r| 100.0 * r.remaining).collect();
        let xmin = xs.iter().cloned().fold(f64::INFINITY, f64::min) * 0.8;
        let ys: Vec<f64> = rows
            .iter()
            .flat_map(|r| [Some(r.test_acc_mean), r.reinit_acc_mean, r.random_mask_acc_mean])
            .flatten()
            .map(|a| 100.0 * a)
            .collect();
        let ymin = ys.iter().cloned().fold(f64::INFINITY, f64::min).floor() - 1.0;
        let ymax = ys.iter().cloned().fold(f64::NEG_INFINITY, f64::max).ceil() + 1.0;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((xmin..120.0).log_scale(), ymin..ymax)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("weights remaining (%)")
            .y_desc("test accuracy (%), mean of seeds")
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        type Pick = Box<dyn Fn(&SummaryRow) -> Option<f64>>;
        let series: [(&str, RGBColor, Pick); 3] = [
            ("IMP ticket (rewound)", BLUE, Box::new(|r| Some(r.test_acc_mean))),
            ("same mask, random reinit", RED, Box::new(|r| r.reinit_acc_mean)),
            ("random mask, same sparsity", GREEN, Box::new(|r| r.random_mask_acc_mean)),
        ];
        for (label, color, f) in series.iter() {
            let pts: Vec<(f64, f64)> = rows.iter().filter_map(|r| f(r).map(|a| (100.0 * r.remaining, 100.0 * a))).collect();
            if pts.is_empty() {
                continue;
            }
            let c = *color;
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(*label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled()))).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(svg)
}
