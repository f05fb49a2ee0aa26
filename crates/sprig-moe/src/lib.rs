//! # sprig-moe
//!
//! Sparse mixture-of-experts on CPU for candle models: [`router`]s that match tokens and experts
//! (token-choice top-k and Switch top-1 with jitter or noise, expert choice, hash routing), the
//! [`Capacity`] that bounds an expert's tokens (dropping the least probable first) or does not
//! (dropless), the auxiliary [`loss`]es (Switch load balancing, ST-MoE z-loss), and [`MoeFfn`], an
//! MoE FFN layer with backward through the router and the experts, reporting [`MoeStats`] every
//! forward (tokens per expert, load CV, dropped fraction, router entropy).
//!
//! Conditional computation as sparsity: Shazeer et al. 2017 (sparsely-gated MoE), Fedus, Zoph &
//! Shazeer 2022 (Switch Transformers), Zhou et al. 2022 (expert choice), Roller et al. 2021 (hash
//! layers), Zoph et al. 2022 (ST-MoE).
// `usize::is_multiple_of` needs Rust 1.87; the workspace supports 1.85.
#![allow(clippy::manual_is_multiple_of)]

pub mod error;
pub mod layer;
pub mod loss;
pub mod moefy;
pub mod router;
pub mod stats;

pub use error::{MoeError, Result};
pub use layer::{magnitude_sparse, Expert, Format, MoeConfig, MoeFfn, MoeOutput, SparseWeight};
pub use loss::{load_balancing_loss, z_loss};
pub use moefy::{balanced_clusters, expert_activation_scores, router_recall, split_ffn, train_router, upcycle_ffn, within_group_spread};
pub use router::{assign, hash_expert, Assignment, Capacity, RouterConfig, Routing};
pub use stats::{coefficient_of_variation, MoeStats};
