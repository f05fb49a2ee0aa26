//! Mini-batch index generation and dynamic padding of token sequences.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// How many batches one length-sorted chunk spans in [`bucketed_batch_indices`].
pub const BUCKET_CHUNK_BATCHES: usize = 50;

/// The RNG for one epoch: ChaCha8 seeded with `seed`, stream `epoch`, so every (seed, epoch)
/// pair gets its own reproducible sequence.
fn epoch_rng(seed: u64, epoch: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch);
    rng
}

/// Splits `0..n` into batches of `batch_size` (the last may be smaller), shuffled per
/// (seed, epoch) when `shuffle` is set.
///
/// # Panics
/// If `batch_size` is 0.
pub fn batch_indices(
    n: usize,
    batch_size: usize,
    shuffle: bool,
    seed: u64,
    epoch: u64,
) -> Vec<Vec<usize>> {
    assert!(
        batch_size > 0,
        "batch_indices: batch_size must be at least 1"
    );
    let mut idx: Vec<usize> = (0..n).collect();
    if shuffle {
        idx.shuffle(&mut epoch_rng(seed, epoch));
    }
    idx.chunks(batch_size).map(<[usize]>::to_vec).collect()
}

/// Length-bucketed batches ("sortish" sampling, as in fastai's `SortishSampler`): the indices
/// are shuffled, cut into chunks of about [`BUCKET_CHUNK_BATCHES`] batches, each chunk is sorted
/// by length (longest first) and cut into batches, and the order of all batches is shuffled.
/// Batches hold sequences of similar length (little padding) while staying random per
/// (seed, epoch). Every index appears exactly once.
///
/// # Panics
/// If `batch_size` is 0.
pub fn bucketed_batch_indices(
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
    epoch: u64,
) -> Vec<Vec<usize>> {
    assert!(
        batch_size > 0,
        "bucketed_batch_indices: batch_size must be at least 1"
    );
    let mut rng = epoch_rng(seed, epoch);
    let mut idx: Vec<usize> = (0..lengths.len()).collect();
    idx.shuffle(&mut rng);
    let mut batches = Vec::with_capacity(lengths.len().div_ceil(batch_size));
    for chunk in idx.chunks_mut(batch_size * BUCKET_CHUNK_BATCHES) {
        chunk.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));
        batches.extend(chunk.chunks(batch_size).map(<[usize]>::to_vec));
    }
    batches.shuffle(&mut rng);
    batches
}

/// A padded batch of token ids, row-major `batch x seq_len`.
#[derive(Clone, Debug)]
pub struct PaddedBatch {
    pub ids: Vec<u32>,
    /// Segment ids: all 0 (single-sentence tasks).
    pub type_ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u32>,
    pub batch: usize,
    pub seq_len: usize,
}

/// Pads every sequence with `pad_id` to the longest one in the batch (dynamic padding).
pub fn pad(seqs: &[&[u32]], pad_id: u32) -> PaddedBatch {
    let batch = seqs.len();
    let seq_len = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut ids = vec![pad_id; batch * seq_len];
    let mut attention_mask = vec![0u32; batch * seq_len];
    for (row, s) in seqs.iter().enumerate() {
        ids[row * seq_len..row * seq_len + s.len()].copy_from_slice(s);
        attention_mask[row * seq_len..row * seq_len + s.len()].fill(1);
    }
    PaddedBatch {
        ids,
        type_ids: vec![0; batch * seq_len],
        attention_mask,
        batch,
        seq_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted_flat(b: &[Vec<usize>]) -> Vec<usize> {
        let mut v = b.concat();
        v.sort_unstable();
        v
    }

    #[test]
    fn batch_indices_cover_all_and_are_seeded() {
        let b = batch_indices(10, 4, false, 0, 0);
        assert_eq!(b, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);
        let s = batch_indices(1000, 32, true, 3, 1);
        assert_eq!(sorted_flat(&s), (0..1000).collect::<Vec<_>>());
        assert_eq!(s, batch_indices(1000, 32, true, 3, 1));
        assert_ne!(s, batch_indices(1000, 32, true, 3, 2), "epochs differ");
        assert_ne!(s, batch_indices(1000, 32, true, 4, 1), "seeds differ");
        assert!(batch_indices(0, 8, true, 0, 0).is_empty());
    }

    #[test]
    fn bucketed_batches_cut_padding_and_stay_random() {
        // Lengths from a fixed LCG so the test does not depend on the shuffle it checks.
        let mut x = 12345u64;
        let lengths: Vec<usize> = (0..5000)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                5 + (x >> 33) as usize % 200
            })
            .collect();
        let pad_cost = |b: &[Vec<usize>]| -> usize {
            b.iter()
                .map(|bt| bt.len() * bt.iter().map(|&i| lengths[i]).max().unwrap())
                .sum()
        };
        let bucketed = bucketed_batch_indices(&lengths, 32, 9, 0);
        let random = batch_indices(lengths.len(), 32, true, 9, 0);
        assert_eq!(sorted_flat(&bucketed), (0..5000).collect::<Vec<_>>());
        assert!(bucketed.iter().all(|b| !b.is_empty() && b.len() <= 32));
        let real: usize = lengths.iter().sum();
        // Padded token slots: bucketing must waste far less than random batching.
        assert!(
            pad_cost(&bucketed) - real < (pad_cost(&random) - real) / 4,
            "{} vs {}",
            pad_cost(&bucketed),
            pad_cost(&random)
        );
        assert_eq!(bucketed, bucketed_batch_indices(&lengths, 32, 9, 0));
        assert_ne!(bucketed, bucketed_batch_indices(&lengths, 32, 9, 1));
    }

    #[test]
    fn pad_to_longest() {
        let a = [101u32, 7, 102];
        let b = [101u32, 102];
        let p = pad(&[&a, &b], 0);
        assert_eq!((p.batch, p.seq_len), (2, 3));
        assert_eq!(p.ids, vec![101, 7, 102, 101, 102, 0]);
        assert_eq!(p.attention_mask, vec![1, 1, 1, 1, 1, 0]);
        assert_eq!(p.type_ids, vec![0; 6]);
        let e = pad(&[], 0);
        assert_eq!((e.batch, e.seq_len, e.ids.len()), (0, 0, 0));
    }
}
