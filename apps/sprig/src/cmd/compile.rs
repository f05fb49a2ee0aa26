//! `sprig compile`: a ticket's masked encoder as sprig-kernels sparse layers, checked against the
//! masked-dense model and timed side by side (see `sprig_lab::compile`).
use anyhow::Result;
use sprig_lab::compile::{compile_ticket, CompileOptions};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Ticket checkpoints (`DIR/round-RR/seed-S` written by `sprig ticket`), or round directories
    /// (their first seed is used).
    #[arg(long, required = true, num_args = 1..)]
    pub ticket: Vec<PathBuf>,
    /// Sparse format: csr, bsr4x1, bsr1x4, bsr4x4 (2:4 needs an N:M mask).
    #[arg(long, default_value = "csr")]
    pub format: String,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Write the reports (a JSON list) here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let o = CompileOptions { format: crate::cmd::bench_train_step::parse_format(&a.format)?, batch: a.batch, seq: a.seq, warmup: a.warmup, runs: a.runs };
    let mut reports = vec![];
    for t in &a.ticket {
        let dir = sprig_lab::transfer::Ticket::find(t)?.remove(0);
        let r = compile_ticket(&dir, &o)?;
        println!(
            "{}: sparsity {:.3} {}  dense {:.1} ms  sparse {:.1} ms  speedup {:.2}x  ({:.1} -> {:.1} seq/s)  weights {:.1} -> {:.1} MB  max |logit diff| {:.2e}",
            r.ticket, r.sparsity, r.format, r.dense_ms, r.sparse_ms, r.speedup, r.dense_seq_per_s, r.sparse_seq_per_s,
            r.linear_dense_bytes as f64 / 1e6, r.linear_sparse_bytes as f64 / 1e6, r.max_abs_logit_diff
        );
        reports.push(r);
    }
    if let Some(p) = &a.json {
        sprig_train::write_json(p, &reports)?;
    }
    Ok(())
}
