//! `summary.json` and the figure of a BERT-Tickets run: per round the sparsity, the ticket's metric
//! (mean and sample standard deviation over seeds), the controls' means, and the highest sparsity
//! at which the ticket is *matching* — within one standard deviation of full fine-tuning (Chen et
//! al. 2020, §3: "a subnetwork is matching if its performance is within one standard deviation of
//! the full model's").
use crate::imp::{CellResult, Control};
use crate::ticket::TicketConfig;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use sprig_bert::masked::RunMetrics;

/// Mean and sample standard deviation (0 for one value).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let s = if v.len() > 1 { (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { 0.0 };
    (m, s)
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RoundRow {
    pub round: usize,
    pub sparsity: f64,
    /// Seeds finished for the ticket in this round.
    pub seeds: usize,
    pub metric_mean: f64,
    pub metric_std: f64,
    pub dev_metric_mean: f64,
    pub random_mask_mean: Option<f64>,
    pub random_mask_std: Option<f64>,
    pub reinit_mean: Option<f64>,
    pub reinit_std: Option<f64>,
    pub shuffled_mean: Option<f64>,
    pub shuffled_std: Option<f64>,
    pub oneshot_mean: Option<f64>,
    pub oneshot_std: Option<f64>,
    /// Gradual magnitude pruning during fine-tuning (a comparison, not a control).
    #[serde(default)]
    pub gmp_mean: Option<f64>,
    #[serde(default)]
    pub gmp_std: Option<f64>,
    /// Movement pruning during fine-tuning (a comparison, not a control).
    #[serde(default)]
    pub movement_mean: Option<f64>,
    #[serde(default)]
    pub movement_std: Option<f64>,
    /// One-shot OBS (diagonal Fisher) of the fine-tuned model, rewound to θ₀ (a comparison).
    #[serde(default)]
    pub obs_mean: Option<f64>,
    #[serde(default)]
    pub obs_std: Option<f64>,
    /// SNIP's one-shot mask of θ₀ (Lee et al. 2019), then trained (a comparison).
    #[serde(default)]
    pub snip_mean: Option<f64>,
    #[serde(default)]
    pub snip_std: Option<f64>,
    /// RigL from a random mask at the same sparsity (Evci et al. 2020; a comparison).
    #[serde(default)]
    pub rigl_mean: Option<f64>,
    #[serde(default)]
    pub rigl_std: Option<f64>,
    /// Within one standard deviation of full fine-tuning (round 0).
    pub matching: bool,
    pub train_seconds: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TicketSummary {
    pub task: String,
    pub model: String,
    /// The test metric used ("accuracy", "macro_f1" or "mcc").
    pub metric: String,
    pub seeds_planned: usize,
    pub full_finetune_mean: Option<f64>,
    pub full_finetune_std: Option<f64>,
    /// Highest sparsity whose ticket is matching, over rounds finished for every planned seed
    /// (and for which all earlier rounds are finished); `None` if none is.
    pub highest_matching_sparsity: Option<f64>,
    pub rounds: Vec<RoundRow>,
    /// Training seconds summed over every fine-tune (tickets and controls).
    pub total_train_seconds: f64,
}

/// Summary rows from the cells finished so far.
pub fn summarize(cfg: &TicketConfig, task: &str, results: &[CellResult<RunMetrics>]) -> TicketSummary {
    let metric = cfg.metric;
    let max_r = results.iter().map(|r| r.round).max().unwrap_or(0);
    let mut rows = Vec::new();
    for round in 0..=max_r {
        let rs: Vec<&CellResult<RunMetrics>> = results.iter().filter(|r| r.round == round).collect();
        if rs.is_empty() {
            continue;
        }
        let (m, s) = mean_std(&rs.iter().map(|r| metric.of(&r.metrics)).collect::<Vec<_>>());
        let (dm, _) = mean_std(&rs.iter().map(|r| r.metrics.dev_accuracy).collect::<Vec<_>>());
        let ctl = |c: Control| -> (Option<f64>, Option<f64>) {
            let v: Vec<f64> = rs.iter().filter_map(|r| r.controls.get(c.name()).map(|x| metric.of(x))).collect();
            if v.is_empty() {
                (None, None)
            } else {
                let (a, b) = mean_std(&v);
                (Some(a), Some(b))
            }
        };
        let (rm, rsd) = ctl(Control::RandomMask);
        let (re, resd) = ctl(Control::Reinit);
        let (sh, shsd) = ctl(Control::Shuffled);
        let (os, ossd) = ctl(Control::Oneshot);
        let (gm, gmsd) = ctl(Control::Gmp);
        let (mv, mvsd) = ctl(Control::Movement);
        let (ob, obsd) = ctl(Control::Obs);
        let (sn, snsd) = ctl(Control::Snip);
        let (rl, rlsd) = ctl(Control::Rigl);
        let secs: f64 = rs.iter().map(|r| r.metrics.train_seconds + r.controls.values().map(|c| c.train_seconds).sum::<f64>()).sum();
        rows.push(RoundRow {
            round,
            sparsity: rs[0].target_sparsity,
            seeds: rs.len(),
            metric_mean: m,
            metric_std: s,
            dev_metric_mean: dm,
            random_mask_mean: rm,
            random_mask_std: rsd,
            reinit_mean: re,
            reinit_std: resd,
            shuffled_mean: sh,
            shuffled_std: shsd,
            oneshot_mean: os,
            oneshot_std: ossd,
            gmp_mean: gm,
            gmp_std: gmsd,
            movement_mean: mv,
            movement_std: mvsd,
            obs_mean: ob,
            obs_std: obsd,
            snip_mean: sn,
            snip_std: snsd,
            rigl_mean: rl,
            rigl_std: rlsd,
            matching: false,
            train_seconds: secs,
        });
    }
    let full = rows.iter().find(|r| r.round == 0).map(|r| (r.metric_mean, r.metric_std));
    let planned = cfg.seeds.len();
    let mut highest: Option<f64> = None;
    if let Some((fm, fs)) = full {
        for r in rows.iter_mut() {
            r.matching = r.metric_mean >= fm - fs;
            // Only rounds that every planned seed finished count.
            if r.round > 0 && r.matching && r.seeds == planned {
                highest = Some(highest.map_or(r.sparsity, |h| h.max(r.sparsity)));
            }
        }
    }
    let total: f64 = rows.iter().map(|r| r.train_seconds).sum();
    TicketSummary {
        task: task.to_string(),
        model: cfg.finetune.model.clone(),
        metric: serde_json::to_value(metric).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
        seeds_planned: planned,
        full_finetune_mean: full.map(|f| f.0),
        full_finetune_std: full.map(|f| f.1),
        highest_matching_sparsity: highest,
        rounds: rows,
        total_train_seconds: total,
    }
}

/// Test metric vs sparsity for the ticket and every control, as SVG text (like Chen et al.'s Fig. 2).
pub fn plot_svg(s: &TicketSummary) -> Result<String> {
    use plotters::prelude::*;
    if s.rounds.is_empty() {
        bail!("no rounds to plot");
    }
    let e = |e: &dyn std::fmt::Display| anyhow::anyhow!("{e}");
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        type Pick = Box<dyn Fn(&RoundRow) -> Option<f64>>;
        let series: [(&str, RGBColor, Pick); 8] = [
            ("IMP ticket (rewound)", BLUE, Box::new(|r| Some(r.metric_mean))),
            ("random mask", GREEN, Box::new(|r| r.random_mask_mean)),
            ("IMP mask, reinit weights", RED, Box::new(|r| r.reinit_mean)),
            ("IMP mask, shuffled weights", MAGENTA, Box::new(|r| r.shuffled_mean)),
            ("one-shot magnitude of θ0", BLACK, Box::new(|r| r.oneshot_mean)),
            ("gradual magnitude during fine-tuning", CYAN, Box::new(|r| r.gmp_mean)),
            ("movement pruning during fine-tuning", RGBColor(230, 120, 0), Box::new(|r| r.movement_mean)),
            ("one-shot OBS of the fine-tuned model", RGBColor(120, 80, 40), Box::new(|r| r.obs_mean)),
        ];
        let ys: Vec<f64> = s.rounds.iter().flat_map(|r| series.iter().filter_map(|(_, _, f)| f(r))).map(|a| 100.0 * a).collect();
        let ymin = ys.iter().cloned().fold(f64::INFINITY, f64::min).floor() - 1.0;
        let ymax = ys.iter().cloned().fold(f64::NEG_INFINITY, f64::max).ceil() + 1.0;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("BERT tickets, {} ({})", s.task, s.model), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(-2.0..100.0, ymin..ymax)
            .map_err(|x| e(&x))?;
        chart.configure_mesh().x_desc("sparsity of the encoder linears (%)").y_desc(format!("test {} (%), mean of seeds", s.metric)).draw().map_err(|x| e(&x))?;
        for (label, color, f) in series.iter() {
            let pts: Vec<(f64, f64)> = s.rounds.iter().filter_map(|r| f(r).map(|a| (100.0 * r.sparsity, 100.0 * a))).collect();
            if pts.is_empty() {
                continue;
            }
            let c = *color;
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                .map_err(|x| e(&x))?
                .label(*label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled()))).map_err(|x| e(&x))?;
        }
        chart.configure_series_labels().position(SeriesLabelPosition::LowerLeft).background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ticket::{Control, Metric, TicketConfig};
    use std::collections::{BTreeMap, HashMap};

    fn m(acc: f64) -> RunMetrics {
        RunMetrics { test_accuracy: acc, test_macro_f1: acc, test_mcc: acc, dev_accuracy: acc, dev_macro_f1: acc, steps: 1, train_seconds: 1.0, sparsity: 0.0 }
    }

    fn res(round: usize, seed: u64, acc: f64, random: Option<f64>) -> CellResult<RunMetrics> {
        let mut controls = BTreeMap::new();
        if let Some(r) = random {
            controls.insert(Control::RandomMask.name().to_string(), m(r));
        }
        let sparsity = 0.1 * round as f64;
        CellResult { round, seed, target_sparsity: sparsity, sparsity, metrics: m(acc), controls, weights_sha256: String::new(), masks_sha256: String::new() }
    }

    fn cfg(seeds: usize) -> TicketConfig {
        TicketConfig {
            finetune: sprig_bert::FinetuneConfig::default(),
            rounds: 9,
            rate: 0.1,
            rewind: sprig_prune::Rewind::Init,
            seeds: (0..seeds as u64).collect(),
            controls: vec![Control::RandomMask],
            control_rounds: vec![],
            metric: Metric::Accuracy,
        }
    }

    #[test]
    fn matching_is_within_one_std_of_full_finetuning_over_complete_rounds() {
        // Full fine-tuning 0.80 and 0.84: mean 0.82, sample std 0.0283 → matching ≥ 0.7917.
        let r = vec![
            res(0, 0, 0.80, None),
            res(0, 1, 0.84, None),
            res(1, 0, 0.80, Some(0.78)),
            res(1, 1, 0.79, Some(0.76)),
            res(2, 0, 0.78, Some(0.70)),
            res(2, 1, 0.79, Some(0.70)), // mean 0.785 < 0.7917: not matching
            res(3, 0, 0.83, Some(0.60)), // one seed of two: does not count
        ];
        let s = summarize(&cfg(2), "t", &r);
        assert_eq!(s.rounds.len(), 4);
        assert!((s.full_finetune_mean.unwrap() - 0.82).abs() < 1e-12);
        assert!((s.full_finetune_std.unwrap() - 0.02828427).abs() < 1e-6);
        assert!(s.rounds[1].matching && !s.rounds[2].matching && s.rounds[3].matching);
        assert_eq!(s.highest_matching_sparsity, Some(0.1));
        assert!((s.rounds[1].random_mask_mean.unwrap() - 0.77).abs() < 1e-12);
        assert!(s.rounds[1].reinit_mean.is_none());
        let none = summarize(&cfg(2), "t", &r[..2]);
        assert_eq!(none.highest_matching_sparsity, None);
    }

    #[test]
    fn shuffled_weights_are_a_permutation_and_seeded() {
        let t = candle_core::Tensor::arange(0f32, 600.0, &candle_core::Device::Cpu).unwrap().reshape((20, 30)).unwrap();
        let base: HashMap<String, candle_core::Tensor> = [("w".to_string(), t)].into();
        let shapes = vec![("w".to_string(), vec![20, 30])];
        let a = crate::ticket::shuffled_tensors(&base, &shapes, 1).unwrap()["w"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = crate::ticket::shuffled_tensors(&base, &shapes, 1).unwrap()["w"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let c = crate::ticket::shuffled_tensors(&base, &shapes, 2).unwrap()["w"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut s = a.clone();
        s.sort_by(f32::total_cmp);
        assert_eq!(s, (0..600).map(|i| i as f32).collect::<Vec<_>>());
        assert!(a.iter().enumerate().filter(|(i, &x)| *i as f32 == x).count() < 60, "hardly shuffled");
    }
}
