//! One module per subcommand.
pub mod bench;
pub mod bench_kernels;
pub mod bench_train_step;
pub mod demo;
pub mod dst;
pub mod eval;
pub mod compile;
pub mod export;
pub mod finetune;
pub mod inspect;
pub mod lottery;
pub mod prune;
pub mod prune_at_init;
pub mod ticket;
pub mod transfer;
pub mod transfer_matrix;
pub mod upstream;
