//! Accuracy vs sparsity of `sprig prune` runs, the figure of docs/results/prune.md: one series per
//! task × method × granularity × distillation × epochs (the mean over seeds at each sparsity, every
//! seed drawn as a dot), the dense fine-tunes of the same task as dashed horizontal lines.
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One run directory's `summary.json`, as the figure needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct RunPoint {
    pub dir: PathBuf,
    pub task: String,
    /// `None` for a dense `sprig finetune` run.
    pub series: Option<String>,
    /// Realised sparsity of the encoder linears.
    pub sparsity: f64,
    pub test_accuracy: f64,
}

/// Reads `dir/summary.json` of a `sprig prune` or `sprig finetune` run.
pub fn read_run(dir: &Path) -> Result<RunPoint> {
    let path = dir.join("summary.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {} (is {} a finished run?)", path.display(), dir.display()))?;
    let s: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let num = |k: &str| s[k].as_f64().with_context(|| format!("{}: no number {k:?}", path.display()));
    let task = s["task"].as_str().with_context(|| format!("{}: no task", path.display()))?.to_string();
    let test_accuracy = num("test_accuracy")?;
    let series = match s["method"].as_str() {
        None => None,
        Some(m) => {
            let distill = if s["distill"].as_bool() == Some(true) { "distilled" } else { "no distillation" };
            let epochs = s["epochs_run"].as_u64().with_context(|| format!("{}: no epochs_run", path.display()))?;
            Some(format!("{task}: {m}, {}, {distill}, {epochs} epochs", s["granularity"].as_str().unwrap_or("unstructured")))
        }
    };
    let sparsity = if series.is_some() { num("sparsity")? } else { 0.0 };
    Ok(RunPoint { dir: dir.to_path_buf(), task, series, sparsity, test_accuracy })
}

/// The SVG text of test accuracy (%) against encoder-linear sparsity (%).
pub fn plot_svg(points: &[RunPoint], title: &str) -> Result<String> {
    let pruned: Vec<&RunPoint> = points.iter().filter(|p| p.series.is_some()).collect();
    if pruned.is_empty() {
        bail!("no `sprig prune` runs to plot (only dense fine-tunes were given)");
    }
    // series -> sparsity (per mille, so that seeds at one sparsity meet) -> accuracies
    let mut series: BTreeMap<&str, BTreeMap<i64, Vec<f64>>> = BTreeMap::new();
    for p in &pruned {
        let key = p.series.as_deref().unwrap_or_default();
        series.entry(key).or_default().entry((p.sparsity * 1000.0).round() as i64).or_default().push(100.0 * p.test_accuracy);
    }
    let mut dense: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for p in points.iter().filter(|p| p.series.is_none()) {
        dense.entry(p.task.as_str()).or_default().push(100.0 * p.test_accuracy);
    }
    let ys: Vec<f64> = points.iter().map(|p| 100.0 * p.test_accuracy).collect();
    let ymin = ys.iter().cloned().fold(f64::INFINITY, f64::min).floor() - 1.0;
    let ymax = ys.iter().cloned().fold(f64::NEG_INFINITY, f64::max).ceil() + 1.0;
    let xs: Vec<f64> = pruned.iter().map(|p| 100.0 * p.sparsity).collect();
    let xmin = (xs.iter().cloned().fold(f64::INFINITY, f64::min) - 5.0).max(0.0).floor();
    let xmax = (xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max) + 5.0).min(100.0).ceil();
    // One line of means per series, a dot per run, a grey line per task's dense mean.
    let lines: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(label, by)| (label.to_string(), by.iter().map(|(s, a)| (*s as f64 / 10.0, a.iter().sum::<f64>() / a.len() as f64)).collect()))
        .collect();
    let dots: Vec<Vec<(f64, f64)>> = series.values().map(|by| by.iter().flat_map(|(s, a)| a.iter().map(move |a| (*s as f64 / 10.0, *a))).collect()).collect();
    let mut chart = crate::plot::Chart::new(title, ("encoder-linear sparsity (%)", "test accuracy (%)"), (xmin, xmax), (ymin, ymax), &lines);
    for (task, accs) in &dense {
        let mean = accs.iter().sum::<f64>() / accs.len() as f64;
        chart = chart.reference(format!("{task}: dense, {} seed(s), mean {mean:.2}", accs.len()), vec![(xmin, mean), (xmax, mean)]);
    }
    chart.dots = dots;
    chart.legend_lower_left = true;
    crate::plot::line_chart(&chart)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, v: serde_json::Value) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("summary.json"), v.to_string()).unwrap();
        dir.to_path_buf()
    }

    #[test]
    fn runs_become_series_and_the_svg_names_them() {
        let t = tempfile::tempdir().unwrap();
        let dense = write(&t.path().join("d"), serde_json::json!({"task": "rt-sentiment", "test_accuracy": 0.85}));
        let mk = |name: &str, seed_acc: f64, s: f64| {
            write(&t.path().join(name), serde_json::json!({"task": "rt-sentiment", "method": "gmp", "granularity": "unstructured", "distill": true, "epochs_run": 12, "sparsity": s, "test_accuracy": seed_acc}))
        };
        let runs = [dense, mk("a", 0.80, 0.8000001), mk("b", 0.82, 0.8), mk("c", 0.75, 0.9)];
        let pts: Vec<RunPoint> = runs.iter().map(|d| read_run(d).unwrap()).collect();
        assert_eq!(pts[0].series, None);
        assert_eq!(pts[1].series.as_deref(), Some("rt-sentiment: gmp, unstructured, distilled, 12 epochs"));
        let svg = plot_svg(&pts, "t").unwrap();
        assert!(svg.contains("rt-sentiment: gmp, unstructured, distilled, 12 epochs"));
        assert!(svg.contains("dense, 1 seed(s), mean 85.00"));
        // Three seeds' dots (two at 80%, one at 90%).
        assert_eq!(svg.matches("<circle").count(), 3, "{svg}");
        // Only dense runs, or a directory without a summary: clear errors.
        assert!(plot_svg(&pts[..1], "t").unwrap_err().to_string().contains("no `sprig prune` runs"));
        assert!(read_run(t.path()).unwrap_err().to_string().contains("summary.json"));
    }
}
