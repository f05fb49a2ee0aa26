//! `sprig moe-scratch`: MoE classifiers trained from scratch over a grid of routers, capacity
//! factors and balancing-loss weights, against dense FFNs, over seeds. Every finished cell is one
//! line of `results.jsonl` in `--out`, its steps (loss, tokens per expert, load CV, dropped
//! fraction, router entropy) in `metrics/<cell>-s<seed>.jsonl`; rerunning the same command skips
//! finished cells.
use anyhow::{bail, Context, Result};
use sprig_lab::moe_scratch::{run as run_cell, Ffn, ScratchConfig, ScratchResult};
use sprig_moe::{Capacity, Routing};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// `fashion-mnist` or a text task (`trec6`, `rt-sentiment`, ...).
    #[arg(long)]
    pub task: String,
    /// Routers: `top1`, `top2`, `expert-choice`, `hash`.
    #[arg(long, value_delimiter = ',', default_value = "top1,top2,expert-choice,hash")]
    pub routings: Vec<String>,
    /// Capacity factors, or `dropless` (expert choice needs a factor: its dropless cell is skipped).
    #[arg(long, value_delimiter = ',', default_value = "1.0,1.25,2.0,dropless")]
    pub capacities: Vec<String>,
    /// Weights of the Switch load-balancing loss.
    #[arg(long, value_delimiter = ',', default_value = "0.01")]
    pub balance: Vec<f64>,
    /// Dense FFN widths to train as references (the flag with no value: none).
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "64,128,512")]
    pub dense_widths: Vec<usize>,
    #[arg(long, default_value_t = 8)]
    pub experts: usize,
    /// Neurons per expert.
    #[arg(long, default_value_t = 64)]
    pub expert_ffn: usize,
    /// Token width.
    #[arg(long, default_value_t = 64)]
    pub hidden: usize,
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    #[arg(long, value_delimiter = ',', default_value = "42,43,44")]
    pub seeds: Vec<u64>,
    /// Directory of `results.jsonl` (created; finished cells in it are kept and skipped).
    #[arg(long)]
    pub out: PathBuf,
}

fn parse_capacity(s: &str) -> Result<Capacity> {
    if s.eq_ignore_ascii_case("dropless") {
        return Ok(Capacity::Dropless);
    }
    let f: f64 = s.parse().with_context(|| format!("--capacities: {s:?} is neither a number nor `dropless`"))?;
    if !(f.is_finite() && f > 0.0) {
        bail!("--capacities: capacity factor {f} must be a finite number > 0");
    }
    Ok(Capacity::Factor(f))
}

/// The grid's cells, in order: dense references, then every router x capacity x balance weight.
fn cells(a: &Args) -> Result<Vec<ScratchConfig>> {
    let mut ffns: Vec<Ffn> = a.dense_widths.iter().map(|&width| Ffn::Dense { width }).collect();
    for r in &a.routings {
        let routing = Routing::parse(r)?;
        if let Routing::TopK { k } = routing {
            if k == 0 || k > a.experts {
                bail!("--routings {r}: k = {k} is outside 1..={} (--experts)", a.experts);
            }
        }
        for c in &a.capacities {
            let capacity = parse_capacity(c)?;
            if routing == Routing::ExpertChoice && capacity == Capacity::Dropless {
                continue;
            }
            for &balance_weight in &a.balance {
                if !(balance_weight.is_finite() && balance_weight >= 0.0) {
                    bail!("--balance {balance_weight} must be a finite number >= 0");
                }
                ffns.push(Ffn::Moe { experts: a.experts, expert_ffn: a.expert_ffn, routing, capacity, balance_weight });
            }
        }
    }
    Ok(a.seeds
        .iter()
        .flat_map(|&seed| {
            ffns.iter().map(move |ffn| ScratchConfig {
                task: a.task.clone(),
                ffn: ffn.clone(),
                hidden: a.hidden,
                epochs: a.epochs,
                batch_size: a.batch_size,
                lr: a.lr,
                seed,
            })
        })
        .collect())
}

/// A cell's label as a file name (`top2/1.25/bal0.01` -> `top2_1.25_bal0.01`).
fn r_label(cfg: &ScratchConfig) -> String {
    cfg.ffn.label().replace('/', "_")
}

/// Finished cells of `path` (a torn last line, from a killed run, is ignored with a warning).
fn finished(path: &std::path::Path) -> Result<Vec<ScratchResult>> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        match serde_json::from_str(line) {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!(line = i + 1, error = %e, "{}: skipping an unreadable line", path.display()),
        }
    }
    Ok(out)
}

pub fn run(a: Args) -> Result<()> {
    if a.seeds.is_empty() {
        bail!("--seeds is empty");
    }
    let grid = cells(&a)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let path = a.out.join("results.jsonl");
    let mut done = finished(&path)?;
    let todo: Vec<&ScratchConfig> = grid.iter().filter(|c| !done.iter().any(|r| &r.config == *c)).collect();
    eprintln!("sprig moe-scratch: {} cells, {} finished, {} to run; simd {}, {} threads", grid.len(), grid.len() - todo.len(), todo.len(), sprig_kernels::simd_level(), sprig_kernels::bench::threads());
    let bar = sprig_train::progress_bar(todo.len() as u64, "cells");
    for cfg in todo {
        bar.set_message(format!("{} seed {}", cfg.ffn.label(), cfg.seed));
        // Every step's loss and MoE statistics, one file per cell.
        let name = format!("{}-s{}.jsonl", r_label(cfg), cfg.seed);
        let mut log = sprig_train::MetricsLog::create(&a.out.join("metrics").join(&name))?;
        let r = run_cell(cfg, &mut |epoch, acc| tracing::debug!(epoch, dev_accuracy = acc, "epoch"), Some(&mut log))?;
        tracing::info!(cell = %r.label, seed = cfg.seed, test = r.test_accuracy, load_cv = r.test_load_cv, dropped = r.test_dropped_fraction, seconds = r.train_seconds, "cell finished");
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
        f.write_all(format!("{}\n", serde_json::to_string(&r)?).as_bytes()).with_context(|| format!("appending to {}", path.display()))?;
        done.push(r);
        bar.inc(1);
    }
    bar.finish_and_clear();
    print_table(&grid, &done);
    Ok(())
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let s = if v.len() > 1 { (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { 0.0 };
    (m, s)
}

/// One row per FFN of the grid: test accuracy, load CV and dropped fraction, mean ± std over
/// seeds.
fn print_table(grid: &[ScratchConfig], done: &[ScratchResult]) {
    println!("| FFN (router / capacity / balance weight) | FFN params active / total | test accuracy | load CV | dropped | seeds |\n|---|---|---|---|---|---|");
    let mut seen: Vec<&Ffn> = Vec::new();
    for c in grid {
        if seen.contains(&&c.ffn) {
            continue;
        }
        seen.push(&c.ffn);
        let rs: Vec<&ScratchResult> = done.iter().filter(|r| r.config.ffn == c.ffn && grid.contains(&r.config)).collect();
        if rs.is_empty() {
            continue;
        }
        let f = |g: &dyn Fn(&ScratchResult) -> f64| mean_std(&rs.iter().map(|r| g(r)).collect::<Vec<_>>());
        let (acc, acc_s) = f(&|r| 100.0 * r.test_accuracy);
        let (cv, cv_s) = f(&|r| r.test_load_cv);
        let (dr, _) = f(&|r| 100.0 * r.test_dropped_fraction);
        let moe = matches!(c.ffn, Ffn::Moe { .. });
        println!(
            "| {} | {:.0} / {} | {acc:.2} ± {acc_s:.2} | {} | {} | {} |",
            c.ffn.label(),
            rs[0].ffn_params_active,
            rs[0].ffn_params_total,
            if moe { format!("{cv:.3} ± {cv_s:.3}") } else { "".into() },
            if moe { format!("{dr:.1}%") } else { "".into() },
            rs.len()
        );
    }
}
