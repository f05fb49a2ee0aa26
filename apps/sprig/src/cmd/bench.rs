//! `sprig bench ...`: benchmark subcommands.
use anyhow::{Context, Result};
use clap::Subcommand;
use std::io::Write;
use std::path::Path;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Time one training step (forward, backward, optimizer) of a BERT classifier.
    TrainStep(super::bench_train_step::Args),
    /// Sparse kernels (CSR, BSR 4x1, 2:4) vs dense GEMMs; JSON rows for docs/results/kernels.md.
    Kernels(super::bench_kernels::Args),
    /// `sprig predict`'s forward (model loaded and compiled, no tokenization): dense vs sparse.
    Predict(super::bench_predict::Args),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::TrainStep(a) => super::bench_train_step::run(a),
        BenchCommand::Kernels(a) => super::bench_kernels::run(a),
        BenchCommand::Predict(a) => super::bench_predict::run(a),
    }
}

/// Writes `{provenance, rows}` to `path` atomically: every result file says how, where, when and
/// from which commit it was measured (`sprig_kernels::bench::provenance_json`). Paths under the
/// working directory are recorded relative to it (no machine paths in results).
pub fn write_with_provenance(path: &Path, rows: &serde_json::Value) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let cwd = std::env::current_dir().ok().map(|d| format!("{}/", d.display()));
    let relative = |a: String| match &cwd {
        Some(c) if a.starts_with(c.as_str()) => a[c.len()..].to_string(),
        _ => a,
    };
    let command = std::iter::once("sprig".to_string()).chain(std::env::args().skip(1).map(relative)).collect::<Vec<_>>().join(" ");
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let provenance: serde_json::Value = serde_json::from_str(&sprig_kernels::bench::provenance_json(&command, commit.as_deref()))?;
    serde_json::to_writer_pretty(&mut tmp, &serde_json::json!({ "provenance": provenance, "rows": rows }))?;
    tmp.write_all(b"\n")?;
    tmp.persist(path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
