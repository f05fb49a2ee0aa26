//! Routers: which expert sees which token, decided from the router's probabilities.
//!
//! - **Token choice, top-k** (Shazeer et al. 2017, "Outrageously large neural networks"; GShard
//!   top-2): each token picks its `k` most probable experts. `k = 1` is the Switch Transformer's
//!   router (Fedus, Zoph & Shazeer 2022), optionally with multiplicative input jitter.
//! - **Expert choice** (Zhou et al. 2022): each expert takes the `c` tokens that prefer it most,
//!   `c = ceil(capacity_factor · T / E)`; perfect balance by construction, a token may get 0 or
//!   several experts (encoder use: every token of the batch is visible).
//! - **Hash** (Roller et al. 2021, "Hash layers for large sparse models"): expert = a fixed hash of
//!   the token id; no learned routing, the baseline.
//!
//! Capacity ([`Capacity`]): with a factor, each expert takes at most
//! `C = ceil(factor · T · k / E)` tokens; over that, the tokens with the lowest router probability
//! for it are dropped first (they pass through the layer's residual connection). `Dropless` keeps
//! every assignment (tokens are grouped per expert and each group is one GEMM).
use crate::error::{MoeError, Result};

/// How tokens and experts are matched.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Routing {
    /// Each token takes its `k` most probable experts (`k = 1`: Switch).
    TopK { k: usize },
    /// Each expert takes its `ceil(capacity_factor · T / E)` most probable tokens.
    ExpertChoice,
    /// Expert = hash(token id) mod E, gate weight 1.
    Hash,
}

impl Routing {
    /// Parses `top1`/`switch`, `top2`, `topK`, `expert-choice`/`ec`, `hash`.
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "switch" => return Ok(Self::TopK { k: 1 }),
            "expert-choice" | "ec" => return Ok(Self::ExpertChoice),
            "hash" => return Ok(Self::Hash),
            _ => {}
        }
        if let Some(k) = s.strip_prefix("top").and_then(|k| k.trim_start_matches('-').parse::<usize>().ok()) {
            return Ok(Self::TopK { k });
        }
        Err(MoeError::UnknownRouting(s))
    }
    /// Experts per token on average (`k` for top-k, 1 for hash; expert choice: the capacity factor).
    pub fn per_token(&self, capacity: Capacity) -> f64 {
        match *self {
            Self::TopK { k } => k as f64,
            Self::Hash => 1.0,
            Self::ExpertChoice => match capacity {
                Capacity::Factor(f) => f,
                Capacity::Dropless => 1.0,
            },
        }
    }
}

/// How many tokens an expert may take.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capacity {
    /// At most `ceil(factor · T · k / E)` tokens per expert (Switch's capacity factor).
    Factor(f64),
    /// No limit: every assignment is kept.
    Dropless,
}

impl Capacity {
    /// Tokens per expert for `tokens` tokens, `per_token` experts each, over `experts` experts
    /// (`usize::MAX` for dropless).
    pub fn slots(&self, tokens: usize, per_token: f64, experts: usize) -> usize {
        match *self {
            Self::Factor(f) => ((f * tokens as f64 * per_token / experts as f64).ceil() as usize).max(1),
            Self::Dropless => usize::MAX,
        }
    }
}

/// A router's settings.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RouterConfig {
    pub experts: usize,
    pub routing: Routing,
    pub capacity: Capacity,
    /// Top-k with `k > 1`: divide the chosen experts' probabilities by their sum (GShard, Mixtral);
    /// otherwise the gate weight is the raw probability (Switch).
    pub normalize: bool,
    /// Switch's multiplicative jitter on the router input during training: `x · U(1-ε, 1+ε)`.
    pub jitter: f64,
    /// Noisy top-k (Shazeer et al. 2017, simplified to a fixed scale): Gaussian noise of this
    /// standard deviation added to the logits used for *choosing* experts during training.
    pub noise: f64,
}

impl RouterConfig {
    /// Token-choice top-k with capacity factor 1.25 (Switch's training default), normalised gates
    /// for `k > 1`, no jitter or noise.
    pub fn top_k(experts: usize, k: usize) -> Self {
        Self { experts, routing: Routing::TopK { k }, capacity: Capacity::Factor(1.25), normalize: k > 1, jitter: 0.0, noise: 0.0 }
    }
    /// The checks every constructor's result must pass: experts > 0, `1 <= k <= E`, factor > 0,
    /// jitter in [0, 1), noise >= 0.
    pub fn validate(&self) -> Result<()> {
        if self.experts == 0 {
            return Err(MoeError::NoExperts);
        }
        if let Routing::TopK { k } = self.routing {
            if k == 0 || k > self.experts {
                return Err(MoeError::BadTopK { k, experts: self.experts });
            }
        }
        if let Capacity::Factor(f) = self.capacity {
            if !(f.is_finite() && f > 0.0) {
                return Err(MoeError::BadCapacity(f));
            }
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(MoeError::BadValue { what: "router jitter", value: self.jitter, why: "must be in [0, 1)" });
        }
        if !(self.noise.is_finite() && self.noise >= 0.0) {
            return Err(MoeError::BadValue { what: "router noise", value: self.noise, why: "must be finite and >= 0" });
        }
        Ok(())
    }
}

/// The router's decision for one batch of `tokens` tokens.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Assignment {
    pub tokens: usize,
    pub experts: usize,
    /// Per expert, the tokens it processes (ascending).
    pub per_expert: Vec<Vec<usize>>,
    /// Token-expert pairs the routing asked for before capacity (top-k: `T·k`).
    pub requested: usize,
    /// Pairs dropped by capacity.
    pub dropped_pairs: usize,
    /// Tokens that no expert processes (they pass through the residual connection).
    pub unrouted_tokens: usize,
}

impl Assignment {
    /// Tokens per expert.
    pub fn load(&self) -> Vec<usize> {
        self.per_expert.iter().map(Vec::len).collect()
    }
}

/// Checks that `probs` is `[tokens, experts]` and finite.
fn check_probs(probs: &[f32], tokens: usize, experts: usize) -> Result<()> {
    if probs.len() != tokens * experts {
        return Err(MoeError::Shape { what: "router probabilities".into(), expected: vec![tokens, experts], got: vec![probs.len()] });
    }
    if let Some(i) = probs.iter().position(|p| !p.is_finite()) {
        return Err(MoeError::NonFiniteLogits { token: i / experts, expert: i % experts, value: probs[i] });
    }
    Ok(())
}

/// `true` if `a` ranks before `b`: higher score, ties to the lower index (deterministic).
fn before(sa: f32, ia: usize, sb: f32, ib: usize) -> bool {
    sa > sb || (sa == sb && ia < ib)
}

/// Assigns tokens to experts from row-major probabilities `[tokens, experts]`. `choice` are the
/// scores experts are chosen by (the probabilities, or noisy logits during training; same shape);
/// `token_ids` are needed by hash routing only.
pub fn assign(cfg: &RouterConfig, probs: &[f32], choice: &[f32], tokens: usize, token_ids: Option<&[u32]>) -> Result<Assignment> {
    cfg.validate()?;
    let e = cfg.experts;
    check_probs(probs, tokens, e)?;
    check_probs(choice, tokens, e)?;
    let slots = cfg.capacity.slots(tokens, cfg.routing.per_token(cfg.capacity), e);
    // Candidate pairs per expert: (token, probability).
    let mut cand: Vec<Vec<(usize, f32)>> = vec![Vec::new(); e];
    match cfg.routing {
        Routing::TopK { k } => {
            let mut order: Vec<usize> = (0..e).collect();
            for t in 0..tokens {
                let row = &choice[t * e..(t + 1) * e];
                order.sort_unstable_by(|&a, &b| if before(row[a], a, row[b], b) { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater });
                for &x in &order[..k] {
                    cand[x].push((t, probs[t * e + x]));
                }
            }
        }
        Routing::Hash => {
            let ids = token_ids.filter(|ids| ids.len() == tokens).ok_or(MoeError::MissingTokenIds { tokens, ids: token_ids.map_or(0, <[u32]>::len) })?;
            for (t, &id) in ids.iter().enumerate() {
                cand[hash_expert(id, e)].push((t, 1.0));
            }
        }
        Routing::ExpertChoice => {
            for (x, c) in cand.iter_mut().enumerate() {
                c.extend((0..tokens).map(|t| (t, probs[t * e + x])));
            }
        }
    }
    let requested = match cfg.routing {
        Routing::ExpertChoice => e * slots.min(tokens),
        _ => cand.iter().map(Vec::len).sum(),
    };
    let mut per_expert = Vec::with_capacity(e);
    let mut kept = 0;
    for (x, mut c) in cand.into_iter().enumerate() {
        if c.len() > slots {
            // Keep the most probable (by the choice scores for expert choice, the router
            // probabilities otherwise): the lowest-probability tokens are dropped first.
            let key = |t: usize, p: f32| if cfg.routing == Routing::ExpertChoice { choice[t * e + x] } else { p };
            c.sort_unstable_by(|a, b| if before(key(a.0, a.1), a.0, key(b.0, b.1), b.0) { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater });
            c.truncate(slots);
        }
        let mut toks: Vec<usize> = c.into_iter().map(|(t, _)| t).collect();
        toks.sort_unstable();
        kept += toks.len();
        per_expert.push(toks);
    }
    let mut seen = vec![false; tokens];
    per_expert.iter().flatten().for_each(|&t| seen[t] = true);
    Ok(Assignment {
        tokens,
        experts: e,
        per_expert,
        requested,
        dropped_pairs: requested - kept,
        unrouted_tokens: seen.iter().filter(|s| !**s).count(),
    })
}

/// The hash router's expert for a token id: a fixed multiplicative hash (Knuth), mod `experts`.
pub fn hash_expert(id: u32, experts: usize) -> usize {
    ((id.wrapping_mul(2_654_435_761) >> 7) as usize) % experts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probs(rows: &[&[f32]]) -> Vec<f32> {
        rows.iter().flat_map(|r| r.iter().copied()).collect()
    }

    #[test]
    fn top2_takes_the_two_most_probable_experts() {
        let p = probs(&[&[0.1, 0.6, 0.3], &[0.5, 0.2, 0.3]]);
        let cfg = RouterConfig { capacity: Capacity::Dropless, ..RouterConfig::top_k(3, 2) };
        let a = assign(&cfg, &p, &p, 2, None).unwrap();
        assert_eq!(a.per_expert, vec![vec![1], vec![0], vec![0, 1]]);
        assert_eq!((a.requested, a.dropped_pairs, a.unrouted_tokens), (4, 0, 0));
    }

    #[test]
    fn capacity_drops_the_least_probable_tokens_first() {
        // Four tokens all prefer expert 0; capacity ceil(1.0 * 4 * 1 / 2) = 2.
        let p = probs(&[&[0.9, 0.1], &[0.6, 0.4], &[0.8, 0.2], &[0.7, 0.3]]);
        let cfg = RouterConfig { capacity: Capacity::Factor(1.0), ..RouterConfig::top_k(2, 1) };
        let a = assign(&cfg, &p, &p, 4, None).unwrap();
        assert_eq!(a.per_expert, vec![vec![0, 2], vec![]]);
        assert_eq!((a.dropped_pairs, a.unrouted_tokens), (2, 2));
    }

    #[test]
    fn expert_choice_gives_every_expert_its_capacity() {
        let p = probs(&[&[0.9, 0.1], &[0.6, 0.4], &[0.8, 0.2], &[0.7, 0.3]]);
        let cfg = RouterConfig { routing: Routing::ExpertChoice, capacity: Capacity::Factor(1.0), ..RouterConfig::top_k(2, 1) };
        let a = assign(&cfg, &p, &p, 4, None).unwrap();
        assert_eq!(a.per_expert, vec![vec![0, 2], vec![1, 3]]);
    }

    #[test]
    fn hash_routing_depends_only_on_the_token_id() {
        let cfg = RouterConfig { routing: Routing::Hash, capacity: Capacity::Dropless, ..RouterConfig::top_k(4, 1) };
        let p = vec![0.25f32; 3 * 4];
        let a = assign(&cfg, &p, &p, 3, Some(&[7, 9, 7])).unwrap();
        let e7 = hash_expert(7, 4);
        assert!(a.per_expert[e7].contains(&0) && a.per_expert[e7].contains(&2));
        assert!(matches!(assign(&cfg, &p, &p, 3, None), Err(MoeError::MissingTokenIds { tokens: 3, ids: 0 })));
    }

    #[test]
    fn bad_settings_and_inputs_are_named() {
        let p = vec![0.5f32; 4];
        let e = |cfg: RouterConfig| assign(&cfg, &p, &p, 2, None).unwrap_err().to_string();
        assert!(e(RouterConfig::top_k(2, 3)).contains("top-k 3"));
        assert!(e(RouterConfig::top_k(0, 1)).contains("at least one expert"));
        assert!(e(RouterConfig { capacity: Capacity::Factor(0.0), ..RouterConfig::top_k(2, 1) }).contains("capacity factor 0"));
        let nan = vec![0.5, f32::NAN, 0.5, 0.5];
        let err = assign(&RouterConfig::top_k(2, 1), &nan, &nan, 2, None).unwrap_err().to_string();
        assert!(err.contains("token 0, expert 1"), "{err}");
        assert_eq!(Routing::parse("top2").unwrap(), Routing::TopK { k: 2 });
        assert_eq!(Routing::parse("switch").unwrap(), Routing::TopK { k: 1 });
        assert!(Routing::parse("best").is_err());
    }
}
