//! `sprig bench ...`: benchmark subcommands.
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Time one training step (forward, backward, optimizer) of a BERT classifier.
    TrainStep(super::bench_train_step::Args),
    /// Sparse kernels (CSR, BSR 4x1, 2:4) vs dense GEMMs; JSON rows for docs/results/kernels.md.
    Kernels(super::bench_kernels::Args),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::TrainStep(a) => super::bench_train_step::run(a),
        BenchCommand::Kernels(a) => super::bench_kernels::run(a),
    }
}
