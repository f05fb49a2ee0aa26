//! DST experiments: several seeds of one configuration into a resumable run directory, a grid
//! summary with a plot, and the dense-vs-sparse wall-clock comparison.
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use sprig_data::ImageDataset;

use sprig_train::dst::{run_one, DstConfig, Method, RunResult};
use crate::lottery::mean_std;
use sprig_train::run::write_json;

/// `summary.json` of one configuration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DstSummary {
    pub config: DstConfig,
    pub dataset: String,
    pub seeds: usize,
    pub test_acc_mean: f64,
    pub test_acc_std: f64,
    pub itop_rate: f64,
    pub itop_rate_std: f64,
    /// Mean training wall seconds per seed.
    pub train_seconds: f64,
    pub final_sparsity: f64,
    pub runs: Vec<RunResult>,
}

/// Runs (or resumes: `DIR/seed-S/result.json` are kept) `seeds` seeds of `cfg` into `out`.
pub fn run_dst(cfg: &DstConfig, dataset: &str, data: &ImageDataset, seeds: &[u64], out: &Path, device: &Device) -> Result<DstSummary> {
    if seeds.is_empty() {
        bail!("--seeds must be at least 1");
    }
    cfg.validate()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let cfg_path = out.join("config.json");
    if cfg_path.exists() {
        let old: DstConfig = serde_json::from_slice(&std::fs::read(&cfg_path)?).with_context(|| format!("reading {}", cfg_path.display()))?;
        if &old != cfg {
            bail!("{} holds a different experiment (see its config.json); use another --out", out.display());
        }
    }
    write_json(&cfg_path, cfg)?;
    let mut runs = Vec::new();
    for &seed in seeds {
        let path = out.join(format!("seed-{seed}")).join("result.json");
        if path.exists() {
            let r: RunResult = serde_json::from_slice(&std::fs::read(&path)?).with_context(|| format!("reading {}", path.display()))?;
            tracing::info!("{:?} s={} seed {seed}: done before ({:.4})", cfg.method, cfg.sparsity, r.test_acc);
            runs.push(r);
            continue;
        }
        let r = run_one(cfg, data, seed, device)?;
        tracing::info!(
            "{:?} s={} seed {seed}: test {:.4}, R_s {:.4}, sparsity {:.4}, {} updates, {:.1}s",
            cfg.method, cfg.sparsity, r.test_acc, r.itop_rate, r.final_sparsity, r.mask_updates, r.train_seconds
        );
        write_json(&path, &r)?;
        runs.push(r);
    }
    let (am, as_) = mean_std(&runs.iter().map(|r| r.test_acc).collect::<Vec<_>>());
    let (im, is) = mean_std(&runs.iter().map(|r| r.itop_rate).collect::<Vec<_>>());
    let s = DstSummary {
        config: cfg.clone(),
        dataset: dataset.to_string(),
        seeds: runs.len(),
        test_acc_mean: am,
        test_acc_std: as_,
        itop_rate: im,
        itop_rate_std: is,
        train_seconds: runs.iter().map(|r| r.train_seconds).sum::<f64>() / runs.len() as f64,
        final_sparsity: runs.iter().map(|r| r.final_sparsity).sum::<f64>() / runs.len() as f64,
        runs,
    };
    write_json(&out.join("summary.json"), &s)?;
    Ok(s)
}

/// Every `summary.json` one level under `root` (a grid of `sprig dst` runs), sorted.
pub fn collect(root: &Path) -> Result<Vec<DstSummary>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root).with_context(|| format!("reading {}", root.display()))? {
        let p = e?.path().join("summary.json");
        if p.is_file() {
            out.push(serde_json::from_slice::<DstSummary>(&std::fs::read(&p)?).with_context(|| format!("reading {}", p.display()))?);
        }
    }
    out.sort_by(|a, b| {
        (format!("{:?}", a.config.method), a.config.sparsity, a.config.delta_t, a.config.epochs)
            .partial_cmp(&(format!("{:?}", b.config.method), b.config.sparsity, b.config.delta_t, b.config.epochs))
            .expect("finite")
    });
    Ok(out)
}

/// Test accuracy vs sparsity, one line per method (the dense run as a horizontal line), as SVG.
pub fn plot_grid_svg(rows: &[DstSummary], path: &Path, title: &str) -> Result<()> {
    use plotters::prelude::*;
    let e = |e: &dyn std::fmt::Display| anyhow::anyhow!("{e}");
    let methods = [(Method::Static, "static", BLACK), (Method::Set, "SET", GREEN), (Method::Rigl, "RigL", BLUE), (Method::Granet, "GraNet", MAGENTA), (Method::Gmp, "GMP (prune from dense)", RED)];
    let pts: Vec<(f64, f64)> = rows.iter().map(|r| (100.0 * r.config.sparsity, 100.0 * r.test_acc_mean)).collect();
    if pts.is_empty() {
        bail!("nothing to plot");
    }
    let ymin = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min).floor() - 0.5;
    let ymax = pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max).ceil() + 0.5;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(78.0..99.0, ymin..ymax)
            .map_err(|x| e(&x))?;
        chart.configure_mesh().x_desc("sparsity (%)").y_desc("test accuracy (%), mean of seeds").draw().map_err(|x| e(&x))?;
        if let Some(d) = rows.iter().find(|r| r.config.method == Method::Dense) {
            let y = 100.0 * d.test_acc_mean;
            chart
                .draw_series(LineSeries::new(vec![(78.0, y), (99.0, y)], CYAN.stroke_width(2)))
                .map_err(|x| e(&x))?
                .label("dense")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], CYAN.stroke_width(2)));
        }
        for (m, label, color) in methods {
            let mut p: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.config.method == m && is_main_interval(r, rows))
                .map(|r| (100.0 * r.config.sparsity, 100.0 * r.test_acc_mean))
                .collect();
            p.sort_by(|a, b| a.0.total_cmp(&b.0));
            if p.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(p.clone(), color.stroke_width(2)))
                .map_err(|x| e(&x))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            chart.draw_series(p.iter().map(|q| Circle::new(*q, 3, color.filled()))).map_err(|x| e(&x))?;
        }
        chart.configure_series_labels().position(SeriesLabelPosition::LowerLeft).background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
    }
    Ok(sprig_train::run::write_atomic(path, svg.as_bytes())?)
}

/// The grid's main (ΔT, epochs) for a method is its most common pair; other pairs are the ITOP
/// sweeps (fixed steps with another ΔT, or fixed updates with ΔT and epochs scaled together).
pub fn is_main_interval(r: &DstSummary, rows: &[DstSummary]) -> bool {
    let key = |o: &DstSummary| (o.config.delta_t, o.config.epochs);
    let same: Vec<(usize, usize)> = rows.iter().filter(|o| o.config.method == r.config.method).map(key).collect();
    let mode = same.iter().max_by_key(|d| (same.iter().filter(|x| x == d).count(), std::cmp::Reverse(**d))).copied();
    mode == Some(key(r))
}

/// Markdown table: rows by method, columns by sparsity, `mean ± std (R_s)`.
pub fn grid_table(rows: &[DstSummary]) -> String {
    let mut sp: Vec<f64> = rows.iter().filter(|r| r.config.method != Method::Dense).map(|r| r.config.sparsity).collect();
    sp.sort_by(f64::total_cmp);
    sp.dedup();
    let mut s = String::from("| method |");
    for x in &sp {
        s += &format!(" {:.0}% |", 100.0 * x);
    }
    s += "\n|---|";
    s += &"---|".repeat(sp.len());
    s += "\n";
    for m in [Method::Dense, Method::Static, Method::Set, Method::Rigl, Method::Granet, Method::Gmp] {
        let mine: Vec<&DstSummary> = rows.iter().filter(|r| r.config.method == m && is_main_interval(r, rows)).collect();
        if mine.is_empty() {
            continue;
        }
        s += &format!("| {m:?} |");
        for x in &sp {
            let cell = mine.iter().find(|r| (r.config.sparsity - x).abs() < 1e-9 || m == Method::Dense);
            s += &match cell {
                Some(r) => format!(" {:.2} ± {:.2} (R_s {:.3}) |", 100.0 * r.test_acc_mean, 100.0 * r.test_acc_std, r.itop_rate),
                None => " – |".into(),
            };
        }
        s += "\n";
    }
    s
}

/// Median of a non-empty slice.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// One timing repeat of each configuration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Timing {
    pub method: Method,
    pub sparsity: f64,
    pub seconds: Vec<f64>,
    pub median_seconds: f64,
    pub ratio_to_dense: f64,
}

/// Trains each of `cfgs` for its epochs `repeats` times, interleaved (dense, sparse, dense, …) so
/// load drifts hit all alike; returns median training seconds and the ratio to the first config.
pub fn time_configs(cfgs: &[DstConfig], data: &ImageDataset, repeats: usize, device: &Device) -> Result<Vec<Timing>> {
    if cfgs.is_empty() || repeats == 0 {
        bail!("need at least one configuration and one repeat");
    }
    let mut secs = vec![Vec::new(); cfgs.len()];
    for rep in 0..repeats {
        for (i, c) in cfgs.iter().enumerate() {
            let r = run_one(c, data, rep as u64, device)?;
            tracing::info!("timing {:?} s={} repeat {rep}: {:.2}s (test {:.4})", c.method, c.sparsity, r.train_seconds, r.test_acc);
            secs[i].push(r.train_seconds);
        }
    }
    let base = median(&secs[0]);
    Ok(cfgs
        .iter()
        .zip(secs)
        .map(|(c, s)| {
            let m = median(&s);
            Timing { method: c.method, sparsity: c.sparsity, seconds: s, median_seconds: m, ratio_to_dense: m / base }
        })
        .collect())
}
