//! sprig-lab: the experiments built on the sprig libraries. It holds what a library should not:
//! experiment drivers, run-directory bookkeeping, summaries and plots. Errors here are `anyhow`
//! errors with context; the libraries below use typed errors.
//!
//! Vision (on `sprig_train`'s models and trainers):
//! - [`lottery`]: lottery tickets by iterative magnitude pruning with reinit and random-mask
//!   controls (Frankle & Carbin 2019), `lottery.svg`;
//! - [`pai`]: pruning at initialisation (magnitude, random, SNIP, GraSP, SynFlow), then training;
//! - [`dst_run`]: dynamic sparse training grids, their reports (`dst-grid.md`, `dst-grid.svg`) and timing;
//! - [`blessings_grid`]: Chen et al.'s comparison (dense, IMP ticket, one-shot magnitude, random,
//!   SNIP, SynFlow, RigL, small dense) trained for the blessings report.
//!
//! Both: [`blessings`] (with [`blessings_image`]): accuracy, NLL, ECE, OOD AUROC and robustness
//! of any set of classifier checkpoints of one task, text or image.
//!
//! Shared by all experiments: [`run_dir`] (one run-directory contract: validate before writing,
//! refuse a different experiment, clean orphan temporary files, summaries marked complete) and
//! [`imp`] (one resumable IMP runner with its registry of controls).
//!
//! BERT (on `sprig_bert`'s encoder and masked fine-tuning):
//! - [`ticket`], [`ticket_summary`]: BERT lottery tickets with the controls of Chen et al. 2020,
//!   resumable, `summary.json` and `tickets.svg`;
//! - [`transfer`], [`transfer_matrix`]: sparse transfer of a ticket to another task, and the
//!   source x target matrix with its heat-map;
//! - [`upstream`]: upstream tickets on a contrastive sentence-embedding objective;
//! - [`prune`]: `sprig prune`, a pretrained or fine-tuned BERT pruned while fine-tuning (with
//!   distillation), written as a Hugging Face directory with masks and manifest;
//! - [`compile`], [`export`]: a ticket compiled to sparse kernels (checked and timed), and a
//!   ticket exported as a Hugging Face-loadable directory.
pub mod blessings;
pub mod blessings_grid;
pub mod blessings_image;
pub mod compile;
pub mod dst_run;
pub mod export;
pub mod imp;
pub mod lottery;
pub mod moe_report;
pub mod moe_scratch;
pub mod narrow;
pub mod pai;
pub mod plot;
pub mod prune;
pub mod prune_report;
pub mod run_dir;
pub mod staged;
pub mod ticket;
pub mod ticket_summary;
pub mod transfer;
pub mod transfer_matrix;
pub mod upstream;
