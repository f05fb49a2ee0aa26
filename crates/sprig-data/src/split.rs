//! Seeded stratified splits and subsamples (ChaCha8, so identical on every machine).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::{SplitInfo, TextExample};

/// Split method recorded for datasets without an official split.
pub(crate) const METHOD_POOLED: &str = "stratified 80/10/10 train/dev/test (seeded, per class)";
/// Split method recorded for datasets with an official test set.
pub(crate) const METHOD_OFFICIAL: &str =
    "official train/test; dev = stratified 10% of official train (seeded)";

/// Fraction of each class sent to dev (and, for pooled data, to test).
const HELD_OUT: f64 = 0.1;

/// Partitions the indices `0..labels.len()` into `1 + held.len()` groups, class by class: each
/// class's indices are shuffled, group `k >= 1` takes `round(n_c * held[k-1])` of them and group 0
/// the rest. Each group is then shuffled so classes are interleaved.
pub(crate) fn stratified_partition(
    labels: &[usize],
    n_classes: usize,
    held: &[f64],
    rng: &mut ChaCha8Rng,
) -> Vec<Vec<usize>> {
    let mut by_class = vec![Vec::new(); n_classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l].push(i);
    }
    let mut groups = vec![Vec::new(); 1 + held.len()];
    for mut idx in by_class {
        idx.shuffle(rng);
        let n = idx.len();
        let mut start = 0;
        for (k, frac) in held.iter().enumerate() {
            let take = ((n as f64 * frac).round() as usize).min(n - start);
            groups[k + 1].extend_from_slice(&idx[start..start + take]);
            start += take;
        }
        groups[0].extend_from_slice(&idx[start..]);
    }
    for g in &mut groups {
        g.shuffle(rng);
    }
    groups
}

/// A dataset as read from disk, before splitting.
pub(crate) enum Raw<T> {
    /// One pool of examples: split stratified 80/10/10.
    Pooled(Vec<T>),
    /// Official train and test: dev is a stratified 10% of train, test is kept in file order.
    Official { train: Vec<T>, test: Vec<T> },
}

/// Anything with a class label.
pub(crate) trait Labelled {
    fn label(&self) -> usize;
}

impl Labelled for TextExample {
    fn label(&self) -> usize {
        self.label
    }
}

impl<T: Labelled> Raw<T> {
    /// Splits with `seed`; `n_classes` bounds the labels.
    pub(crate) fn split_with(
        self,
        n_classes: usize,
        seed: u64,
    ) -> (Vec<T>, Vec<T>, Vec<T>, SplitInfo) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (train, dev, test, method) = match self {
            Raw::Pooled(all) => {
                let labels: Vec<usize> = all.iter().map(Labelled::label).collect();
                let g = stratified_partition(&labels, n_classes, &[HELD_OUT, HELD_OUT], &mut rng);
                let mut slots: Vec<Option<T>> = all.into_iter().map(Some).collect();
                let mut take = |ix: &[usize]| {
                    ix.iter()
                        .map(|&i| slots[i].take().expect("index used once"))
                        .collect::<Vec<T>>()
                };
                let (tr, de, te) = (take(&g[0]), take(&g[1]), take(&g[2]));
                (tr, de, te, METHOD_POOLED)
            }
            Raw::Official { train, test } => {
                let labels: Vec<usize> = train.iter().map(Labelled::label).collect();
                let g = stratified_partition(&labels, n_classes, &[HELD_OUT], &mut rng);
                let mut slots: Vec<Option<T>> = train.into_iter().map(Some).collect();
                let mut take = |ix: &[usize]| {
                    ix.iter()
                        .map(|&i| slots[i].take().expect("index used once"))
                        .collect::<Vec<T>>()
                };
                let (tr, de) = (take(&g[0]), take(&g[1]));
                (tr, de, test, METHOD_OFFICIAL)
            }
        };
        let info = SplitInfo {
            seed,
            method: method.to_string(),
            train: train.len(),
            dev: dev.len(),
            test: test.len(),
        };
        (train, dev, test, info)
    }
}

impl Raw<TextExample> {
    pub(crate) fn with_classes(self, classes: Vec<String>) -> TextRaw {
        TextRaw { classes, raw: self }
    }
}

/// A text dataset before splitting, with its class names.
pub(crate) struct TextRaw {
    pub(crate) classes: Vec<String>,
    pub(crate) raw: Raw<TextExample>,
}

impl TextRaw {
    pub(crate) fn into_splits(
        self,
        seed: u64,
    ) -> (
        Vec<TextExample>,
        Vec<TextExample>,
        Vec<TextExample>,
        SplitInfo,
    ) {
        let n = self.classes.len();
        self.raw.split_with(n, seed)
    }
}

/// Indices of a stratified subsample of at most `max` items (all of them, in order, when
/// `labels.len() <= max`). Per-class quotas use largest-remainder rounding of
/// `max * n_c / n`; the chosen indices are returned in increasing order.
pub(crate) fn stratified_subsample(
    labels: &[usize],
    n_classes: usize,
    max: usize,
    seed: u64,
    salt: u64,
) -> Vec<usize> {
    let n = labels.len();
    if n <= max {
        return (0..n).collect();
    }
    let mut by_class = vec![Vec::new(); n_classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l].push(i);
    }
    // Largest-remainder quotas summing exactly to `max`.
    let exact: Vec<f64> = by_class
        .iter()
        .map(|c| max as f64 * c.len() as f64 / n as f64)
        .collect();
    let mut quota: Vec<usize> = exact.iter().map(|q| q.floor() as usize).collect();
    let mut order: Vec<usize> = (0..n_classes).collect();
    order.sort_by(|&a, &b| {
        (exact[b] - exact[b].floor())
            .total_cmp(&(exact[a] - exact[a].floor()))
            .then(a.cmp(&b))
    });
    let mut left = max - quota.iter().sum::<usize>();
    for &c in order.iter().cycle() {
        if left == 0 {
            break;
        }
        if quota[c] < by_class[c].len() {
            quota[c] += 1;
            left -= 1;
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(salt);
    let mut out = Vec::with_capacity(max);
    for (c, mut idx) in by_class.into_iter().enumerate() {
        idx.shuffle(&mut rng);
        out.extend_from_slice(&idx[..quota[c]]);
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_covers_every_index_once_and_is_stratified() {
        let labels: Vec<usize> = (0..1000).map(|i| if i % 4 == 0 { 1 } else { 0 }).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let g = stratified_partition(&labels, 2, &[0.1, 0.1], &mut rng);
        let mut all: Vec<usize> = g.concat();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert_eq!(
            g.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![800, 100, 100]
        );
        for part in &g {
            let pos = part.iter().filter(|&&i| labels[i] == 1).count();
            assert_eq!(pos * 4, part.len(), "each part keeps the 1:3 ratio");
        }
    }

    #[test]
    fn subsample_quotas_sum_to_max_and_follow_class_shares() {
        let labels: Vec<usize> = (0..1003).map(|i| i % 3).collect();
        let s = stratified_subsample(&labels, 3, 100, 1, 0);
        assert_eq!(s.len(), 100);
        let counts: Vec<usize> = (0..3)
            .map(|c| s.iter().filter(|&&i| labels[i] == c).count())
            .collect();
        assert!(counts.iter().all(|&c| (33..=34).contains(&c)), "{counts:?}");
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(stratified_subsample(&labels, 3, 5000, 1, 0).len(), 1003);
        assert_ne!(s, stratified_subsample(&labels, 3, 100, 2, 0));
    }
}
