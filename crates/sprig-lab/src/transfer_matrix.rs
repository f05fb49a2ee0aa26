//! The transfer matrix (Chen et al. 2020, §5, Fig. 4): rows = source task of the ticket, columns
//! = target task, cell = ticket − dense fine-tuning on the target (points of the test metric),
//! from the `summary.json` of several `sprig transfer` runs; written as JSON, Markdown and an SVG
//! heat-map.
use crate::transfer::TransferSummary;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TransferMatrix {
    pub sources: Vec<String>,
    pub targets: Vec<String>,
    /// `diff[i][j]`: source i → target j, ticket − dense (None = not run).
    pub diff: Vec<Vec<Option<f64>>>,
    pub ticket: Vec<Vec<Option<f64>>>,
    pub sparsity: Vec<f64>,
    pub runs: Vec<PathBuf>,
}

/// Reads the runs; every run must have a dense reference and pairs must not repeat.
pub fn build(runs: &[PathBuf]) -> Result<TransferMatrix> {
    if runs.is_empty() {
        bail!("no transfer runs given");
    }
    let mut sums = Vec::new();
    for r in runs {
        let p = r.join("summary.json");
        let s: TransferSummary = serde_json::from_slice(&std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?)
            .with_context(|| format!("parsing {} (a `sprig transfer` summary?)", p.display()))?;
        if s.diff.is_none() {
            bail!("{} has no dense reference (run without --no-dense)", p.display());
        }
        sums.push(s);
    }
    let mut sources: Vec<String> = sums.iter().map(|s| s.source_task.clone()).collect();
    let mut targets: Vec<String> = sums.iter().map(|s| s.target_task.clone()).collect();
    for v in [&mut sources, &mut targets] {
        v.sort();
        v.dedup();
    }
    let mut diff = vec![vec![None; targets.len()]; sources.len()];
    let mut ticket = diff.clone();
    for (s, r) in sums.iter().zip(runs) {
        let i = sources.iter().position(|x| *x == s.source_task).expect("listed");
        let j = targets.iter().position(|x| *x == s.target_task).expect("listed");
        if diff[i][j].is_some() {
            bail!("pair {} → {} appears twice (second: {})", s.source_task, s.target_task, r.display());
        }
        diff[i][j] = s.diff;
        ticket[i][j] = Some(s.ticket_mean);
    }
    let mut sparsity: Vec<f64> = sums.iter().map(|s| (s.sparsity * 1e4).round() / 1e4).collect();
    sparsity.sort_by(f64::total_cmp);
    sparsity.dedup();
    Ok(TransferMatrix { sources, targets, diff, ticket, sparsity, runs: runs.to_vec() })
}

impl TransferMatrix {
    pub fn markdown(&self) -> String {
        let mut s = format!("| source \\ target | {} |\n|---|{}\n", self.targets.join(" | "), "---|".repeat(self.targets.len()));
        for (i, src) in self.sources.iter().enumerate() {
            let cells: Vec<String> = (0..self.targets.len())
                .map(|j| match (self.ticket[i][j], self.diff[i][j]) {
                    (Some(t), Some(d)) => format!("{:.2} ({:+.2})", 100.0 * t, 100.0 * d),
                    _ => "–".into(),
                })
                .collect();
            s += &format!("| {src} | {} |\n", cells.join(" | "));
        }
        s
    }

    /// Heat-map of `diff` in points: blue = better than dense, red = worse.
    pub fn plot_svg(&self, path: &Path) -> Result<()> {
        use plotters::prelude::*;
        let e = |x: &dyn std::fmt::Display| anyhow::anyhow!("plot {}: {x}", path.display());
        let (n, m) = (self.sources.len(), self.targets.len());
        let cell = 110i32;
        let (w, h) = (160 + cell * m as i32, 80 + cell * n as i32);
        let max = self.diff.iter().flatten().flatten().fold(1e-9f64, |a, d| a.max(d.abs() * 100.0));
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (w as u32, h as u32)).into_drawing_area();
            root.fill(&WHITE).map_err(|x| e(&x))?;
            let font = ("sans-serif", 14).into_font();
            root.draw(&Text::new("ticket − dense on target (points); rows: source", (10, 10), font.clone())).map_err(|x| e(&x))?;
            for (j, t) in self.targets.iter().enumerate() {
                root.draw(&Text::new(t.clone(), (160 + cell * j as i32 + 8, 40), font.clone())).map_err(|x| e(&x))?;
            }
            for (i, s) in self.sources.iter().enumerate() {
                let y = 60 + cell * i as i32;
                root.draw(&Text::new(s.clone(), (10, y + cell / 2), font.clone())).map_err(|x| e(&x))?;
                for j in 0..m {
                    let x = 160 + cell * j as i32;
                    let (color, label) = match self.diff[i][j] {
                        Some(d) => {
                            let a = ((d * 100.0).abs() / max).min(1.0);
                            let shade = (255.0 * (1.0 - 0.7 * a)) as u8;
                            let col = if d >= 0.0 { RGBColor(shade, shade, 255) } else { RGBColor(255, shade, shade) };
                            (col, format!("{:+.2}", 100.0 * d))
                        }
                        None => (RGBColor(230, 230, 230), "–".into()),
                    };
                    root.draw(&Rectangle::new([(x, y), (x + cell - 4, y + cell - 4)], color.filled())).map_err(|x| e(&x))?;
                    root.draw(&Text::new(label, (x + cell / 3, y + cell / 2), font.clone())).map_err(|x| e(&x))?;
                }
            }
            root.present().map_err(|x| e(&x))?;
        }
        Ok(sprig_train::write_atomic(path, svg.as_bytes())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, src: &str, tgt: &str, ticket: f64, dense: f64) -> PathBuf {
        let d = dir.join(format!("{src}-{tgt}"));
        std::fs::create_dir_all(&d).unwrap();
        let s = TransferSummary {
            source_task: src.into(),
            target_task: tgt.into(),
            model: "m".into(),
            sparsity: 0.5,
            metric: crate::ticket::Metric::Accuracy,
            seeds: 1,
            ticket_mean: ticket,
            ticket_std: 0.0,
            dense_mean: Some(dense),
            dense_std: Some(0.0),
            diff: Some(ticket - dense),
            tickets: vec![],
            total_train_seconds: 1.0,
        };
        sprig_train::write_json(&d.join("summary.json"), &s).unwrap();
        d
    }

    #[test]
    fn matrix_places_each_pair_and_refuses_duplicates() {
        let t = tempfile::tempdir().unwrap();
        let runs = vec![write(t.path(), "rt", "sms", 0.95, 0.98), write(t.path(), "sms", "rt", 0.80, 0.78), write(t.path(), "rt", "rt", 0.79, 0.78)];
        let m = build(&runs).unwrap();
        assert_eq!(m.sources, vec!["rt", "sms"]);
        assert_eq!(m.targets, vec!["rt", "sms"]);
        assert!((m.diff[0][1].unwrap() + 0.03).abs() < 1e-12);
        assert!((m.diff[1][0].unwrap() - 0.02).abs() < 1e-12);
        assert!(m.diff[1][1].is_none());
        assert!(m.markdown().contains("| sms | 80.00 (+2.00) | – |"), "{}", m.markdown());
        m.plot_svg(&t.path().join("m.svg")).unwrap();
        let dup = build(&[runs[0].clone(), runs[0].clone()]).unwrap_err().to_string();
        assert!(dup.contains("appears twice"), "{dup}");
    }
}
