//! # sprig-prune
//!
//! Pruning for any candle model seen as a set of named `Var`s: [`Mask`]/[`MaskSet`] (bit-packed,
//! shape-checked), [`criteria`] that score weights, [`Granularity`] that groups them, [`Allocation`]
//! that shares a sparsity budget between layers, [`Schedule`]s that say when and how much, and
//! [`checkpoint`]s that store sparse models as plain safetensors plus masks and a manifest.
//!
//! A [`Pruner`] composes them: one [`MaskSet`] and a [`PrunerConfig`] (criterion × granularity ×
//! allocation × schedule, per-layer [`LayerGroup`]s and, for dynamic sparse training, a
//! [`GrowRule`]). GMP, movement pruning, IMP with per-layer rates, one-shot SNIP/GraSP/SynFlow/Wanda,
//! SET, RigL, GraNet and oBERT's block OBS ([`obs`]) are configurations of it (see [`pruner`]). Every criterion has one
//! signature, [`Criterion::scores`] with [`Inputs`]; [`MaskSet::check_pruned_zero`] is the one
//! check that pruned weights are exactly zero; [`Mask::to_bitmask`] hands masks to sprig-kernels.
// `usize::is_multiple_of` needs Rust 1.87; the workspace supports 1.85.
#![allow(clippy::manual_is_multiple_of)]

pub mod allocation;
pub mod checkpoint;
pub mod criteria;
pub mod dst;
pub mod error;
pub mod granularity;
pub mod mask;
pub mod obs;
pub mod pruner;
pub mod schedule;
pub mod score;
pub mod select;

pub use allocation::{prune, Allocation, AllocationKind, Scores};
pub use criteria::{ActivationNorms, Criterion, GradAccumulator};
pub use error::{PruneError, Result};
pub use granularity::Granularity;
pub use mask::{Mask, MaskSet, SparsityReport, TensorSparsity};
pub use obs::{Blocks, GradWindow, ObsUpdate};
pub use pruner::{GroupRate, GrowRule, LayerGroup, Pruner, PrunerConfig, Regrow, Revived};
pub use schedule::{Rewind, RoundRate, Schedule};
pub use score::{Inputs, ScoreOptions};
pub use select::Selector;

/// The version written into checkpoint manifests.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
