//! What a routing step did: load per expert, its balance, drops, router entropy.
use crate::router::Assignment;

/// Statistics of one MoE forward, for `metrics.jsonl`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MoeStats {
    /// Tokens each expert processed.
    pub tokens_per_expert: Vec<usize>,
    /// Coefficient of variation (std / mean) of `tokens_per_expert`: 0 is perfect balance.
    pub load_cv: f64,
    /// Token-expert pairs dropped by capacity, over those requested.
    pub dropped_fraction: f64,
    /// Tokens no expert processed, over all tokens.
    pub unrouted_fraction: f64,
    /// Mean over tokens of the entropy (nats) of the router's distribution.
    pub router_entropy: f64,
}

impl MoeStats {
    /// From an assignment and the router probabilities `[T, E]` (row-major).
    pub fn new(a: &Assignment, probs: &[f32]) -> Self {
        let load = a.load();
        Self {
            load_cv: coefficient_of_variation(&load),
            dropped_fraction: a.dropped_pairs as f64 / a.requested.max(1) as f64,
            unrouted_fraction: a.unrouted_tokens as f64 / a.tokens.max(1) as f64,
            router_entropy: mean_entropy(probs, a.experts),
            tokens_per_expert: load,
        }
    }
}

/// `std / mean` (population std); 0 for an empty or all-zero load.
pub fn coefficient_of_variation(load: &[usize]) -> f64 {
    let n = load.len() as f64;
    let mean = load.iter().sum::<usize>() as f64 / n.max(1.0);
    if mean == 0.0 {
        return 0.0;
    }
    let var = load.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    var.sqrt() / mean
}

/// Mean entropy (nats) of the rows of `probs` (`experts` columns).
pub fn mean_entropy(probs: &[f32], experts: usize) -> f64 {
    let rows = probs.len() / experts.max(1);
    if rows == 0 {
        return 0.0;
    }
    let h: f64 = probs.chunks_exact(experts).map(|r| r.iter().filter(|&&p| p > 0.0).map(|&p| -(p as f64) * (p as f64).ln()).sum::<f64>()).sum();
    h / rows as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balance_and_entropy() {
        assert_eq!(coefficient_of_variation(&[5, 5, 5, 5]), 0.0);
        assert!((coefficient_of_variation(&[8, 0, 0, 0]) - 3f64.sqrt()).abs() < 1e-12);
        assert!((mean_entropy(&[0.5, 0.5, 1.0, 0.0], 2) - 2f64.ln() / 2.0).abs() < 1e-7);
    }
}
