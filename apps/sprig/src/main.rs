//! `sprig`: the command line that composes sprig's crates.
//!
//! Each subcommand lives in `cmd/<name>.rs` as a `clap::Args` struct plus `run(args)`.
use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser, Debug)]
#[command(name = "sprig", version, about = "Sparse neural networks: prune, find tickets, train sparse, run fast")]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `sprig_train=debug`.
    #[arg(long, global = true, default_value = "info", env = "SPRIG_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Fine-tune a BERT checkpoint on a classification task.
    Finetune(cmd::finetune::Cmd),
    /// Prune a BERT to a sparsity while fine-tuning it (GMP, movement, oBERT, one-shot, Wanda), with distillation.
    Prune(cmd::prune::Args),
    /// Plot test accuracy vs sparsity of `sprig prune` runs (and dense fine-tunes) as an SVG.
    PruneReport(cmd::prune::ReportArgs),
    /// Evaluate a fine-tuned checkpoint on a task's test split.
    Eval(cmd::eval::Args),
    /// Split a fine-tuned classifier's FFNs into experts with trained routers (MoEfication) and
    /// evaluate it against the dense model
    Moefy(cmd::moefy::Args),
    /// Train MoE classifiers from scratch over routers, capacity factors and balancing weights, against dense FFNs.
    MoeScratch(cmd::moe_scratch::Args),
    /// Plot test accuracy against FFN neurons run per token for `sprig moefy` runs.
    MoefyReport(cmd::moefy::ReportArgs),
    /// Calibration, OOD detection (max softmax probability) and robustness to corrupted inputs of
    /// checkpoints of one task: the blessings of sparsity, with a reliability diagram.
    Blessings(cmd::blessings::Args),
    /// Chen et al.'s comparison on an image task: dense vs IMP ticket vs one-shot magnitude vs random vs SNIP vs GraSP vs SynFlow vs RigL vs a small dense net, trained and scored.
    BlessingsGrid(cmd::blessings::GridArgs),
    /// The main job on a default: fetch missing assets, fine-tune MiniLM-L6 on rt-sentiment, print results.
    Demo(cmd::demo::Args),
    /// Classify texts with a (pruned) classifier directory; each pruned linear runs in its fastest format on this CPU.
    Predict(cmd::predict::Args),
    /// Benchmarks (kernels, training step, predict).
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Theory checks: empirical NTK of randomly pruned MLPs, edge-popup strong tickets, Malach et al.'s construction.
    #[command(subcommand)]
    Theory(cmd::theory::TheoryCommand),
    /// Lottery tickets by iterative magnitude pruning, with reinit and random-mask controls.
    Lottery(cmd::lottery::Args),
    /// Per-layer sparsity table of a sparse checkpoint.
    Inspect(cmd::inspect::Args),
    /// Prune at init (magnitude, random, SNIP, GraSP, SynFlow), then train: a table.
    PruneAtInit(cmd::prune_at_init::Args),
    /// Dynamic sparse training (static, SET, RigL, GraNet; dense and GMP baselines), sparse compute.
    Dst(cmd::dst::Args),
    /// Table and plot of a directory of `sprig dst` runs.
    DstReport(cmd::dst::ReportArgs),
    /// Wall-clock of dense vs sparse training, same epochs and batch size, medians of repeats.
    DstTiming(cmd::dst::TimingArgs),
    /// BERT lottery tickets (Chen et al. 2020): IMP on the encoder linears with controls, resumable.
    Ticket(cmd::ticket::Args),
    /// Compile a ticket's masked encoder to sparse kernels; check it and time it against masked-dense.
    Compile(cmd::compile::Args),
    /// Export a ticket checkpoint as a Hugging Face-loadable directory (+ masks, manifest, logits to verify).
    Export(cmd::export::Args),
    /// Sparse transfer: fine-tune a ticket on another task with its mask fixed.
    Transfer(cmd::transfer::Args),
    /// Source x target matrix (ticket - dense) of several transfer runs, with a heat-map.
    TransferMatrix(cmd::transfer_matrix::Args),
    /// An upstream ticket without downstream labels: IMP on the checkpoint's contrastive sentence-embedding objective.
    Upstream(cmd::upstream::Args),
}

/// Keeps freed memory in the process for reuse. glibc hands every freed block above its mmap
/// threshold (128 KiB, rising to at most 32 MiB) back to the kernel and trims the heap top, so each
/// training step or forward faulted in and zeroed its [batch·seq, hidden] activation buffers
/// again: page faults, `clear_page` and munmap TLB shootdowns were ~10% of a 90%-sparse MiniLM
/// step's samples. With blocks up to 32 MiB kept in the heap and no trimming, the step took
/// ~2100 ms instead of ~2420 ms (`sprig bench train-step --sparsity 0.9`, 2 vCPU Zen 3, 2026-11-27,
/// alternated runs), at the same peak RSS within 3%.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only changes allocator parameters; it is called before any other thread
    // exists. A rejected value (return 0) leaves glibc's defaults, which are correct, only slower.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

fn main() {
    keep_freed_memory();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .with_target(false)
        // Colour codes only for a terminal: logs redirected to a file stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Finetune(a) => cmd::finetune::run(a),
        Command::Prune(a) => cmd::prune::run(a),
        Command::PruneReport(a) => cmd::prune::report(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Moefy(a) => cmd::moefy::run(a),
        Command::MoeScratch(a) => cmd::moe_scratch::run(a),
        Command::MoefyReport(a) => cmd::moefy::report(a),
        Command::Blessings(a) => cmd::blessings::run(a),
        Command::BlessingsGrid(a) => cmd::blessings::grid(a),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Predict(a) => cmd::predict::run(a),
        Command::Bench(b) => cmd::bench::run(b),
        Command::Theory(t) => cmd::theory::run(t),
        Command::Lottery(a) => cmd::lottery::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::PruneAtInit(a) => cmd::prune_at_init::run(a),
        Command::Dst(a) => cmd::dst::run(a),
        Command::DstReport(a) => cmd::dst::report(a),
        Command::DstTiming(a) => cmd::dst::timing(a),
        Command::Ticket(a) => cmd::ticket::run(a),
        Command::Compile(a) => cmd::compile::run(a),
        Command::Export(a) => cmd::export::run(a),
        Command::Transfer(a) => cmd::transfer::run(a),
        Command::TransferMatrix(a) => cmd::transfer_matrix::run(a),
        Command::Upstream(a) => cmd::upstream::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
