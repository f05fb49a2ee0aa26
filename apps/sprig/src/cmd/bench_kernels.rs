//! `sprig bench kernels [--quick] --json FILE`: sprig's sparse kernels (CSR, BSR 4x1, 2:4) and
//! the dense Rust GEMMs on the standard kernel shapes, medians written as JSON rows
//! `[{k, n, m, sparsity, format, op, impl, median_ms}]`. Peers (PyTorch, SciPy) are measured by
//! `benches/bench-kernels-peers.py`.
use anyhow::{Context, Result};
use serde::Serialize;
use sprig_kernels::bench::{run as run_grid, BenchConfig};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Small grid (K=384 N=1536, M 1 and 512, 50% and 90%, 2:4, 4x1): under a minute.
    #[arg(long)]
    pub quick: bool,
    /// Only these M values (comma-separated), overriding the grid's.
    #[arg(long, value_delimiter = ',')]
    pub m: Option<Vec<usize>>,
    /// Only these weight shapes `KxN` (comma-separated, W is `[N, K]`), overriding the grid's.
    #[arg(long, value_delimiter = ',')]
    pub shape: Option<Vec<String>>,
    /// Target seconds of timing per cell (default: 0.3, or 0.15 with --quick).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Only these sparsities (comma-separated), overriding the grid's.
    #[arg(long, value_delimiter = ',')]
    pub sparsity: Option<Vec<f64>>,
    /// Forward only.
    #[arg(long)]
    pub no_backward: bool,
    /// Where to write the JSON (`{provenance, rows}`: command, machine, date and commit, then the rows).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Serialize)]
struct Row<'a> {
    k: usize,
    n: usize,
    m: usize,
    sparsity: f64,
    format: &'a str,
    op: &'a str,
    #[serde(rename = "impl")]
    imp: &'a str,
    median_ms: f64,
}

pub fn run(args: Args) -> Result<()> {
    let mut cfg = if args.quick { BenchConfig::quick() } else { BenchConfig::full() };
    if let Some(m) = args.m {
        anyhow::ensure!(m.iter().all(|&v| v > 0), "--m values must be positive, got {m:?}");
        cfg.ms = m;
    }
    if let Some(shapes) = args.shape {
        cfg.shapes = shapes
            .iter()
            .map(|v| {
                let (k, n) = v
                    .split_once('x')
                    .with_context(|| format!("--shape {v:?}: expected KxN, e.g. 384x1536"))?;
                let k: usize = k.parse().with_context(|| format!("--shape {v:?}: bad K"))?;
                let n: usize = n.parse().with_context(|| format!("--shape {v:?}: bad N"))?;
                anyhow::ensure!(k > 0 && n > 0, "--shape {v:?}: K and N must be positive");
                Ok((k, n))
            })
            .collect::<Result<_>>()?;
    }
    if let Some(sec) = args.seconds {
        anyhow::ensure!(sec > 0.0 && sec.is_finite(), "--seconds must be positive, got {sec}");
        cfg.seconds_per_cell = sec;
    }
    if let Some(s) = args.sparsity {
        anyhow::ensure!(
            s.iter().all(|v| (0.0..1.0).contains(v)),
            "--sparsity values must be in [0, 1), got {s:?}"
        );
        cfg.sparsities = s;
    }
    cfg.backward = !args.no_backward;
    eprintln!(
        "sprig bench kernels: simd {}, {} rayon threads",
        sprig_kernels::simd_level(),
        sprig_kernels::bench::threads()
    );
    let rows = run_grid(&cfg, |r| {
        eprintln!(
            "K={:<5} N={:<5} M={:<5} {:>5.2} {:<7} {:<8} {:<15} {:>10.4} ms",
            r.k, r.n, r.m, r.sparsity, r.format, r.op, r.imp, r.median_ms
        )
    });
    if let Some(path) = args.json {
        let out: Vec<Row> = rows
            .iter()
            .map(|r| Row {
                k: r.k,
                n: r.n,
                m: r.m,
                sparsity: r.sparsity,
                format: &r.format,
                op: &r.op,
                imp: &r.imp,
                median_ms: r.median_ms,
            })
            .collect();
        super::bench::write_with_provenance(&path, &serde_json::to_value(&out)?)?;
        eprintln!("wrote {} rows to {}", out.len(), path.display());
    }
    Ok(())
}
