//! Selectors: which parameters of a model are prunable.
use candle_core::Var;

/// Picks prunable parameters by name and rank (e.g. "linear weights, not embeddings, LayerNorm or
/// the classifier", as BERT-Tickets does).
#[derive(Clone, Debug, Default)]
pub struct Selector {
    /// Keep a name only if it contains one of these substrings (empty = every name).
    pub include: Vec<String>,
    /// Drop a name that contains one of these substrings.
    pub exclude: Vec<String>,
    /// Minimum tensor rank (2 selects matrices and conv kernels, skipping biases and norms).
    pub min_rank: usize,
}

impl Selector {
    /// Every parameter.
    pub fn all() -> Self {
        Self::default()
    }
    /// Every parameter of rank >= 2 (weights, not biases or norm scales).
    pub fn weights() -> Self {
        Self { min_rank: 2, ..Self::default() }
    }
    /// Also require one of `pats` in the name.
    pub fn including<I: IntoIterator<Item = S>, S: Into<String>>(mut self, pats: I) -> Self {
        self.include.extend(pats.into_iter().map(Into::into));
        self
    }
    /// Also drop names containing one of `pats`.
    pub fn excluding<I: IntoIterator<Item = S>, S: Into<String>>(mut self, pats: I) -> Self {
        self.exclude.extend(pats.into_iter().map(Into::into));
        self
    }
    /// Does the parameter `name` with shape `shape` qualify?
    pub fn matches(&self, name: &str, shape: &[usize]) -> bool {
        shape.len() >= self.min_rank
            && (self.include.is_empty() || self.include.iter().any(|p| name.contains(p.as_str())))
            && !self.exclude.iter().any(|p| name.contains(p.as_str()))
    }
    /// The selected `(name, Var)` pairs, in input order.
    pub fn select(&self, params: &[(String, Var)]) -> Vec<(String, Var)> {
        params.iter().filter(|(n, v)| self.matches(n, v.dims())).cloned().collect()
    }
}
