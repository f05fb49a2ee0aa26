//! sprig-theory: numerical checks of the theory of sparse networks.
//!
//! - [`ntk`]: the empirical neural tangent kernel of ReLU MLPs, dense and randomly pruned (with and
//!   without the `1/√(1−s)` rescaling of Yang & Wang 2022), and the relative distance between them
//!   as the width grows.
//! - [`edge_popup`]: strong lottery tickets — subnetworks of a randomly weighted, never trained MLP
//!   found by learning a score per weight (Ramanujan et al. 2020, "What's Hidden in a Randomly
//!   Weighted Neural Network?"), against a trained dense LeNet-300-100.
//! - [`malach`]: the constructions behind the strong lottery ticket theorem (Malach et al. 2020,
//!   "Proving the Lottery Ticket Hypothesis: Pruning is All You Need"; Pensia et al. 2020,
//!   "Optimal Lottery Tickets via SubsetSum"), checked numerically: approximation error vs width.
//!
//! Errors are [`TheoryError`] (typed, naming the offending value); no plots, no I/O beyond loading
//! datasets through `sprig-data`.

pub mod edge_popup;
pub mod error;
pub mod malach;
pub mod ntk;

pub use error::{Result, TheoryError};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `k` distinct indices out of `0..n`, seeded (partial Fisher–Yates on ChaCha8), in draw order.
pub fn pick_indices(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut idx: Vec<usize> = (0..n).collect();
    let k = k.min(n);
    for i in 0..k {
        let j = rng.random_range(i..n);
        idx.swap(i, j);
    }
    idx.truncate(k);
    idx
}
