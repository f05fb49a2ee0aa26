//! sprig-lab: the experiments built on the sprig libraries. It holds what a library should not:
//! experiment drivers (lottery tickets, pruning at init, dynamic sparse training grids, BERT tickets,
//! transfer, upstream tickets), run-directory bookkeeping, summaries and plots. Errors here are
//! `anyhow` errors with context; the libraries below use typed errors.

pub mod imp;
pub mod run_dir;
