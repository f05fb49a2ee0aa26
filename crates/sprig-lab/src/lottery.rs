//! Lottery tickets by iterative magnitude pruning (Frankle & Carbin 2019, Alg. 1 / "Strategy 2" with
//! rewinding), with the paper's two controls at every round: the same mask with a fresh random init
//! ("reinit", §2) and a random mask at the same per-layer sparsity ("random pruning").
//!
//! Resumable: every finished (round, seed) is a sparse checkpoint `DIR/seed-S/round-RR/` written
//! atomically; a restarted run skips them and continues from the last one.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use sprig_data::ImageDataset;
use sprig_prune::checkpoint::{self, CheckpointMeta};
use sprig_prune::{criteria, prune, Allocation, Granularity, MaskSet, Rewind, RoundRate, Schedule, Selector};

use sprig_train::run::write_json;
use sprig_train::vision::{evaluate, train, Arch, TrainConfig, VisionModel};

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
    pub train: TrainConfig,
    /// Run the reinit and random-mask controls.
    pub controls: bool,
}

/// One (round, seed) result.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RoundResult {
    pub round: usize,
    pub seed: u64,
    /// Fraction of prunable weights remaining.
    pub remaining: f64,
    pub ticket_test_acc: f64,
    pub ticket_dev_acc: f64,
    pub reinit_test_acc: Option<f64>,
    pub random_mask_test_acc: Option<f64>,
    pub steps: usize,
    pub seconds: f64,
}

/// One row of `summary.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SummaryRow {
    pub round: usize,
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

fn round_dir(out: &Path, seed: u64, round: usize) -> PathBuf {
    out.join(format!("seed-{seed}")).join(format!("round-{round:02}"))
}

/// Per-layer masks at round `r`: hidden weights at 1 − (1 − rate)^r, the output layer at 1 − (1 − output_rate)^r,
/// from `scores` and never reviving weights pruned in `current`.
fn layerwise_masks(cfg: &LotteryConfig, shapes: &[(String, Vec<usize>)], scores: &sprig_prune::Scores, r: usize, current: Option<&MaskSet>) -> Result<MaskSet> {
    let out_name = cfg.arch.output_weight();
    let (hidden, output): (Vec<_>, Vec<_>) = shapes.iter().cloned().partition(|(n, _)| n != out_name);
    let s = |p: f64| Schedule::Imp { rounds: cfg.rounds, rate: RoundRate::FractionOfRemaining(p), rewind: cfg.rewind }.round_sparsity(r);
    let mut m = prune(scores, &hidden, s(cfg.rate)?, Granularity::Unstructured, &Allocation::uniform(), current)?;
    if !output.is_empty() {
        for (n, mk) in prune(scores, &output, s(cfg.output_rate)?, Granularity::Unstructured, &Allocation::uniform(), current)?.iter() {
            m.insert(n.clone(), mk.clone());
        }
    }
    Ok(m)
}

fn mask_bools(m: &MaskSet) -> Vec<(String, Vec<bool>)> {
    m.iter().map(|(n, mk)| (n.clone(), mk.to_bools())).collect()
}

/// Runs (or resumes) the experiment into `out`; returns the summary rows (also written to `out/summary.json`).
pub fn run_lottery(cfg: &LotteryConfig, data: &ImageDataset, out: &Path, device: &Device) -> Result<Vec<SummaryRow>> {
    if cfg.seeds.is_empty() {
        bail!("--seeds must be at least 1");
    }
    for (what, p) in [("rate", cfg.rate), ("output rate", cfg.output_rate)] {
        if !(p > 0.0 && p < 1.0) {
            bail!("{what} {p} must be in (0, 1)");
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let cfg_path = out.join("config.json");
    if cfg_path.exists() {
        let old: LotteryConfig = serde_json::from_slice(&std::fs::read(&cfg_path)?).with_context(|| format!("reading {}", cfg_path.display()))?;
        if old.arch != cfg.arch || old.dataset != cfg.dataset || old.rate != cfg.rate || old.rewind != cfg.rewind || old.train != cfg.train || old.output_rate != cfg.output_rate || old.controls != cfg.controls {
            bail!("{} holds a different experiment (see its config.json); use another --out", out.display());
        }
    }
    write_json(&cfg_path, cfg)?;
    let classes = data.classes.len();
    let new_model = |seed: u64| VisionModel::new(cfg.arch, data.height, data.width, classes, seed, device);
    let mut results: Vec<RoundResult> = Vec::new();
    for r in 0..=cfg.rounds {
        for &seed in &cfg.seeds {
            let dir = round_dir(out, seed, r);
            if let Ok(man) = checkpoint::read_manifest(&dir) {
                let res: RoundResult = serde_json::from_value(man.meta.extra.clone()).with_context(|| format!("reading result of {}", dir.display()))?;
                tracing::info!("round {r} seed {seed}: done before (ticket {:.4})", res.ticket_test_acc);
                results.push(res);
                continue;
            }
            let t0 = std::time::Instant::now();
            let init = new_model(seed)?;
            let theta0 = init.snapshot()?;
            let prunable: Vec<(String, Var)> = Selector::weights().select(&init.params);
            let shapes: Vec<(String, Vec<usize>)> = prunable.iter().map(|(n, v)| (n.clone(), v.dims().to_vec())).collect();
            let rewind_file = out.join(format!("seed-{seed}")).join("rewind.safetensors");
            let tcfg = TrainConfig { data_seed: seed.wrapping_mul(1_000_003).wrapping_add(r as u64), ..cfg.train.clone() };
            let (mask, parent) = if r == 0 {
                (MaskSet::ones_for(&prunable), None)
            } else {
                let prev_dir = round_dir(out, seed, r - 1);
                let prev = checkpoint::load(&prev_dir, device).with_context(|| format!("loading {}", prev_dir.display()))?;
                let vars: Vec<(String, Var)> = prev.tensors.iter().filter(|(n, _)| shapes.iter().any(|(s, _)| s == n)).map(|(n, t)| Ok((n.clone(), Var::from_tensor(t)?))).collect::<Result<_>>()?;
                let scores = criteria::magnitude(&vars)?;
                let m = layerwise_masks(cfg, &shapes, &scores, r, Some(&prev.masks))?;
                // start of the ticket run: rewound weights
                match cfg.rewind {
                    Rewind::Init => init.restore(&theta0)?,
                    Rewind::Step(_) => {
                        let st = candle_core::safetensors::load(&rewind_file, device).with_context(|| format!("loading {}", rewind_file.display()))?;
                        for (n, v) in &init.params {
                            v.set(st.get(n).with_context(|| format!("{} lacks {n}", rewind_file.display()))?)?;
                        }
                    }
                    Rewind::LearningRate => {
                        for (n, v) in &init.params {
                            let t = prev.tensors.iter().find(|(pn, _)| pn == n).map(|(_, t)| t).with_context(|| format!("{} lacks {n}", prev_dir.display()))?;
                            v.set(t)?;
                        }
                    }
                }
                (m, Some(checkpoint::weights_sha256(&prev_dir)?))
            };
            let start = init.snapshot()?;
            let tcfg0 = TrainConfig { snapshot_step: match (r, cfg.rewind) { (0, Rewind::Step(k)) => Some(k), _ => None }, ..tcfg.clone() };
            let outcome = train(&init, &data.train, &tcfg0, &mask_bools(&mask), &mut |_, _| Ok(()))?;
            if r == 0 {
                if let Rewind::Step(k) = cfg.rewind {
                    let snap = outcome.snapshot.with_context(|| format!("rewind step {k} is past the end of training ({} steps)", outcome.steps))?;
                    let named: Vec<(String, Tensor)> = init.params.iter().map(|(n, _)| n.clone()).zip(snap).collect();
                    let bytes = safetensors::serialize(named.iter().map(|(n, t)| (n.as_str(), t)), None)?;
                    sprig_train::run::write_atomic(&rewind_file, &bytes)?;
                }
            }
            let ticket_test_acc = evaluate(&init, &data.test)?;
            let ticket_dev_acc = evaluate(&init, &data.dev)?;
            let (mut reinit_test_acc, mut random_mask_test_acc) = (None, None);
            if cfg.controls && r > 0 {
                let re = new_model(seed.wrapping_add(7919 * r as u64 + 104_729))?;
                train(&re, &data.train, &tcfg, &mask_bools(&mask), &mut |_, _| Ok(()))?;
                reinit_test_acc = Some(evaluate(&re, &data.test)?);
                let rm_model = new_model(seed)?;
                rm_model.restore(&start)?;
                let rscores = criteria::random(&prunable, seed.wrapping_mul(31).wrapping_add(r as u64));
                let rmask = layerwise_masks(cfg, &shapes, &rscores, r, None)?;
                train(&rm_model, &data.train, &tcfg, &mask_bools(&rmask), &mut |_, _| Ok(()))?;
                random_mask_test_acc = Some(evaluate(&rm_model, &data.test)?);
            }
            let res = RoundResult {
                round: r,
                seed,
                remaining: 1.0 - mask.sparsity(),
                ticket_test_acc,
                ticket_dev_acc,
                reinit_test_acc,
                random_mask_test_acc,
                steps: outcome.steps,
                seconds: t0.elapsed().as_secs_f64(),
            };
            tracing::info!(
                "round {r} seed {seed}: remaining {:.4} ticket {:.4} reinit {:?} random-mask {:?} ({:.0}s)",
                res.remaining, res.ticket_test_acc, res.reinit_test_acc, res.random_mask_test_acc, res.seconds
            );
            let meta = CheckpointMeta {
                method: "imp-magnitude-layerwise".into(),
                schedule: Some(serde_json::to_value(Schedule::Imp { rounds: cfg.rounds, rate: RoundRate::FractionOfRemaining(cfg.rate), rewind: cfg.rewind })?),
                seed: Some(seed),
                parent_sha256: parent,
                extra: serde_json::to_value(&res)?,
            };
            checkpoint::save(&dir, &init.named_tensors(), &mask, &meta)?;
            results.push(res);
        }
        let rows = summarize(&results);
        write_json(&out.join("summary.json"), &rows)?;
        plot_svg(&rows, &out.join("lottery.svg"), &format!("IMP tickets, {:?} on {}", cfg.arch, cfg.dataset))?;
    }
    Ok(summarize(&results))
}

/// Summary rows per round (mean and std over seeds).
pub fn summarize(results: &[RoundResult]) -> Vec<SummaryRow> {
    let max_r = results.iter().map(|r| r.round).max().unwrap_or(0);
    (0..=max_r)
        .filter_map(|round| {
            let rs: Vec<&RoundResult> = results.iter().filter(|r| r.round == round).collect();
            if rs.is_empty() {
                return None;
            }
            let col = |f: &dyn Fn(&RoundResult) -> Option<f64>| -> Option<(f64, f64)> {
                let v: Vec<f64> = rs.iter().filter_map(|r| f(r)).collect();
                if v.len() == rs.len() { Some(mean_std(&v)) } else { None }
            };
            let (tm, ts) = col(&|r| Some(r.ticket_test_acc))?;
            let re = col(&|r| r.reinit_test_acc);
            let rm = col(&|r| r.random_mask_test_acc);
            Some(SummaryRow {
                round,
                remaining: rs[0].remaining,
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

/// Test accuracy vs remaining weights (log x axis), like the LTH paper's figures, as SVG.
pub fn plot_svg(rows: &[SummaryRow], path: &Path, title: &str) -> Result<()> {
    use plotters::prelude::*;
    if rows.is_empty() {
        return Ok(());
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
    Ok(sprig_train::run::write_atomic(path, svg.as_bytes())?)
}
