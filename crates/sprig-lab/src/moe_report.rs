//! Accuracy against the share of FFN neurons run per token, for `sprig moefy` runs: the figure of
//! docs/results/moe.md. One series per task and stage (as split; fine-tuned after the split), the
//! test accuracy as a percentage of the dense model's.
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

/// One series: its label and `(active FFN %, test accuracy as % of dense)` points.
pub type Series = (String, Vec<(f64, f64)>);

/// The series of one run directory's `moefy.json`.
pub fn read_moefy(dir: &Path) -> Result<Vec<Series>> {
    let path = dir.join("moefy.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {} (is {} a finished `sprig moefy` run?)", path.display(), dir.display()))?;
    let s: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let task = s["task"].as_str().with_context(|| format!("{}: no task", path.display()))?;
    let dense = s["dense"]["test_accuracy"].as_f64().with_context(|| format!("{}: no dense test accuracy", path.display()))?;
    let experts = s["experts"].as_f64().with_context(|| format!("{}: no experts", path.display()))?;
    let points = |rows: &Value| -> Vec<(f64, f64)> {
        let mut p: Vec<(f64, f64)> = rows
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| Some((100.0 * r["top_k"].as_f64()? / experts, 100.0 * r["test_accuracy"].as_f64()? / dense)))
            .collect();
        p.sort_by(|a, b| a.0.total_cmp(&b.0));
        p
    };
    let mut out = Vec::new();
    // The first `--top-k` is the one fine-tuned at (and the first row).
    if s["finetune"].is_object() {
        let epochs = s["finetune"]["config"]["epochs"].as_u64().unwrap_or(0);
        out.push((format!("{task}: as split (no fine-tuning)"), points(&s["finetune"]["before"])));
        out.push((format!("{task}: fine-tuned {epochs} epochs at top-{}, distilled", s["moe"][0]["top_k"].as_u64().unwrap_or(0)), points(&s["moe"])));
    } else {
        out.push((format!("{task}: as split (no fine-tuning)"), points(&s["moe"])));
    }
    Ok(out)
}

/// The SVG text of the figure.
pub fn plot_svg(series: &[Series], title: &str) -> Result<String> {
    if series.iter().all(|(_, p)| p.is_empty()) {
        bail!("no MoE-fied rows to plot");
    }
    let ys: Vec<f64> = series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)).collect();
    let ymin = (ys.iter().cloned().fold(f64::INFINITY, f64::min) - 5.0).floor();
    let ymax = ys.iter().cloned().fold(f64::NEG_INFINITY, f64::max).max(100.0).ceil() + 2.0;
    let axes = ("FFN neurons run per token (%)", "test accuracy (% of the dense model's)");
    crate::plot::line_chart(&crate::plot::Chart::new(title, axes, (0.0, 105.0), (ymin, ymax), series).reference("98% of dense", vec![(0.0, 98.0), (105.0, 98.0)]))
}
