//! Upstream tickets, found without a downstream label (Chen et al. 2020, §5: the subnetwork found
//! by IMP on the *pre-training* objective transfers to every downstream task).
//!
//! The objective is the checkpoint's own. `all-MiniLM-L6-v2` was trained with an in-batch-negatives
//! contrastive loss on sentence pairs (MultipleNegativesRankingLoss, cosine similarity × 20). With
//! no pairs at hand we use its unsupervised form, SimCSE (Gao et al. 2021, Eq. 1): every text is
//! encoded twice with independent dropout masks, the two views are the positive pair and the other
//! texts of the batch the negatives,
//!
//! `ℓ_i = −log exp(sim(h_i, h_i⁺)/τ) / Σ_j exp(sim(h_i, h_j⁺)/τ)`, `τ = 0.05`,
//!
//! on mean-pooled, L2-normalised embeddings. IMP is the BERT-Tickets loop of [`crate::ticket`]:
//! train m ⊙ θ on the objective, prune the encoder linears globally by magnitude, rewind to θ₀.
//! The corpus is the *texts* of some tasks (labels never read); by default 20 Newsgroups and BBC
//! News, which are none of the transfer targets.
//!
//! A round's checkpoint (`OUT/round-RR/seed-S`) has the layout of a `sprig ticket` checkpoint with
//! task `upstream`, so `sprig transfer --ticket OUT/round-RR` fine-tunes it on any task.
use sprig_bert::finetune::{batch_tensors, FinetuneConfig, Tokenized};
use sprig_bert::masked::{Base, TaskData};
use sprig_bert::model::{is_encoder_linear_weight, pool, BertEncoder, Init};
use crate::imp::{run_imp, Cell, CellResult, Control, ImpPlan, ImpSubject, Start, Trained};
use crate::run_dir::{without_fields, RunConfig, RunDir};
use crate::ticket::{dense_mask, imp_step};
use crate::ticket_summary::mean_std;
use sprig_bert::Pooling;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var, D};
use serde::{Deserialize, Serialize};
use sprig_prune::checkpoint::SparseCheckpoint;
use sprig_prune::{MaskSet, RoundRate, Schedule};
use sprig_train::fit::{BatchOrder, Fit, Lr, StepInfo, StepLoss};
use sprig_train::{AdamW, AdamWConfig, LinearWarmupDecay, Optimizer, TrainError};
use std::path::Path;
use std::time::Instant;

/// The task name written into upstream tickets (the transfer matrix's row).
pub const UPSTREAM_TASK: &str = "upstream";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UpstreamConfig {
    /// Model and training recipe (`max_train` = corpus texts in all, `max_dev` = held-out texts,
    /// `seed` = data seed); `task` is [`UPSTREAM_TASK`].
    pub recipe: FinetuneConfig,
    /// Tasks whose training texts form the corpus (their labels are never read).
    pub corpus: Vec<String>,
    /// Softmax temperature τ of the contrastive loss.
    pub temperature: f64,
    pub rounds: usize,
    /// Fraction of the original prunable weights removed per round.
    pub rate: f64,
    /// Training seeds (dropout, batch order): one ticket each.
    pub seeds: Vec<u64>,
}

impl UpstreamConfig {
    pub fn schedule(&self) -> Schedule {
        Schedule::Imp { rounds: self.rounds, rate: RoundRate::LinearOfOriginal(self.rate), rewind: sprig_prune::Rewind::Init }
    }

    /// What the IMP runner needs (no controls; rewinding to θ₀).
    pub fn plan(&self) -> ImpPlan {
        ImpPlan { rounds: self.rounds, seeds: self.seeds.clone(), rewind: sprig_prune::Rewind::Init, controls: vec![], control_rounds: vec![] }
    }
}

impl RunConfig for UpstreamConfig {
    fn validate(&self) -> Result<()> {
        self.recipe.validate()?;
        if self.corpus.is_empty() {
            bail!("the upstream corpus needs at least one task");
        }
        if self.seeds.is_empty() || self.rounds == 0 {
            bail!("upstream IMP needs at least one seed and one round");
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            bail!("temperature must be positive, got {}", self.temperature);
        }
        if self.recipe.batch_size < 2 {
            bail!("the contrastive loss needs batches of at least 2 texts (in-batch negatives)");
        }
        self.schedule().validate().with_context(|| format!("rate {} x rounds {} must stay below sparsity 1", self.rate, self.rounds))?;
        self.plan().validate(&[])
    }

    /// Everything but `rounds` and `seeds`, which may grow.
    fn identity(&self) -> Result<serde_json::Value> {
        Ok(without_fields(serde_json::to_value(self)?, &ImpPlan::GROWABLE))
    }
}

/// What one round of upstream training measured.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UpstreamMetrics {
    /// Mean contrastive loss over the last epoch.
    pub train_loss: f64,
    /// Held-out texts: mean cosine similarity between the trained subnetwork's embedding and the
    /// dense θ₀'s (how much of the checkpoint's embedding the ticket keeps).
    pub heldout_cosine_to_dense: f64,
    /// Held-out texts, no dropout: fraction of texts whose nearest neighbour among the θ₀
    /// embeddings of the held-out set is the text itself.
    pub heldout_retrieval_at_1: f64,
    pub steps: usize,
    pub train_seconds: f64,
    pub sparsity: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UpstreamRound {
    pub round: usize,
    pub sparsity: f64,
    pub seeds: usize,
    pub train_loss_mean: f64,
    pub cosine_to_dense_mean: f64,
    pub retrieval_at_1_mean: f64,
    pub train_seconds: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UpstreamSummary {
    pub model: String,
    pub corpus: Vec<String>,
    pub corpus_texts: usize,
    pub rounds: Vec<UpstreamRound>,
    pub total_train_seconds: f64,
}

/// The corpus: the tasks' train texts (capped at `max_train` in all, split evenly) for training,
/// their dev texts (capped at `max_dev`) held out.
struct Corpus {
    train: Tokenized,
    heldout: Tokenized,
    pad_id: u32,
}

fn load_corpus(cfg: &UpstreamConfig, base: &Base, home: &Path) -> Result<Corpus> {
    let n = cfg.corpus.len();
    let share = |cap: usize| if cap == 0 { 0 } else { cap.div_ceil(n) };
    let (mut train, mut heldout) = (Tokenized { encoded: vec![], labels: vec![] }, Tokenized { encoded: vec![], labels: vec![] });
    let mut pad_id = 0;
    for task in &cfg.corpus {
        let c = FinetuneConfig { task: task.clone(), max_train: share(cfg.recipe.max_train), max_dev: share(cfg.recipe.max_dev), max_test: 1, ..cfg.recipe.clone() };
        let d = TaskData::load(&c, base, home).with_context(|| format!("loading corpus task {task}"))?;
        // Labels are dropped: the objective never sees them.
        train.labels.extend(std::iter::repeat_n(0, d.train.encoded.len()));
        train.encoded.extend(d.train.encoded);
        heldout.labels.extend(std::iter::repeat_n(0, d.dev.encoded.len()));
        heldout.encoded.extend(d.dev.encoded);
        pad_id = d.pad_id;
    }
    if train.encoded.len() < cfg.recipe.batch_size {
        bail!("the upstream corpus has {} texts, fewer than one batch of {}", train.encoded.len(), cfg.recipe.batch_size);
    }
    Ok(Corpus { train, heldout, pad_id })
}

/// SimCSE loss of a batch (Gao et al. 2021, Eq. 1): rows `0..B` and `B..2B` of `emb` are the two
/// dropout views of the same `B` texts.
pub fn contrastive_loss(emb: &Tensor, temperature: f64) -> Result<Tensor> {
    let b = emb.dim(0)? / 2;
    let norm = emb.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    let z = emb.broadcast_div(&norm)?;
    let (a, p) = (z.narrow(0, 0, b)?, z.narrow(0, b, b)?);
    let sim = (a.matmul(&p.t()?)? / temperature)?;
    let targets = Tensor::arange(0u32, b as u32, emb.device())?;
    Ok(candle_nn::loss::cross_entropy(&sim, &targets)?)
}

/// Mean-pooled, L2-normalised embeddings without dropout or autograd graph, in `data` order.
fn embed(enc: &BertEncoder, data: &Tokenized, pad_id: u32) -> Result<Vec<Vec<f32>>> {
    let mut out = vec![Vec::new(); data.encoded.len()];
    let idx: Vec<usize> = (0..data.encoded.len()).collect();
    for chunk in idx.chunks(128) {
        let (ids, types, mask) = batch_tensors(data, chunk, pad_id, enc.device())?;
        let h = pool(&enc.forward_inference(&ids, &types, &mask)?, &mask, Pooling::Mean)?;
        for (row, &i) in h.to_vec2::<f32>()?.into_iter().zip(chunk) {
            let n = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            out[i] = row.into_iter().map(|x| x / n).collect();
        }
    }
    Ok(out)
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (*x as f64) * (*y as f64)).sum()
}

/// Trains `m ⊙ θ₀` on the contrastive objective; returns the metrics and the trained tensors.
#[allow(clippy::type_complexity)]
fn train_round(cfg: &UpstreamConfig, base: &Base, corpus: &Corpus, dense_emb: &[Vec<f32>], seed: u64, masks: Option<&MaskSet>) -> Result<(UpstreamMetrics, Vec<(String, Tensor)>, MaskSet)> {
    let device = Device::Cpu;
    let mut enc = BertEncoder::new(&base.config, Init::Pretrained { tensors: &base.tensors, origin: base.origin.clone() }, seed, &device)?;
    enc.set_ops(cfg.recipe.ops);
    enc.set_train_word_embeddings(cfg.recipe.train_word_embeddings);
    let params: Vec<(String, Var)> =
        enc.named_params().iter().filter(|(n, _)| cfg.recipe.train_word_embeddings || n != "embeddings.word_embeddings.weight").cloned().collect();
    let mut opt = AdamW::new(params.clone(), AdamWConfig { lr: cfg.recipe.lr, weight_decay: cfg.recipe.weight_decay, eps: 1e-8, ..AdamWConfig::default() })?;
    let prunable: Vec<(String, Var)> = params.iter().filter(|(n, _)| is_encoder_linear_weight(n)).cloned().collect();
    let mask = match masks {
        Some(m) => {
            m.check_against(&prunable)?;
            opt.set_masks(m)?;
            m.clone()
        }
        None => MaskSet::ones_for(&prunable),
    };
    let r = &cfg.recipe;
    let lengths: Vec<usize> = corpus.train.encoded.iter().map(|e| e.ids.len()).collect();
    // In-batch negatives need full batches: the ragged last one is skipped.
    let fit = Fit::new(r.epochs, BatchOrder::Bucketed { lengths: &lengths, batch_size: r.batch_size, seed })
        .drop_last(true)
        .max_steps((r.max_steps > 0).then_some(r.max_steps));
    let total = fit.total_steps().with_context(|| format!("upstream training (corpus of {} texts, batch {})", lengths.len(), r.batch_size))?;
    let schedule = LinearWarmupDecay { base_lr: r.lr, warmup: (r.warmup_ratio * total as f64).round() as usize, total };
    let t0 = Instant::now();
    let sparsity = mask.sparsity();
    let out = fit.lr(Lr::WarmupDecay(schedule)).clip(Some(r.max_grad_norm)).run(
        &mut enc,
        &mut opt,
        params.clone(),
        |enc: &mut BertEncoder, idx: &[usize], _: &StepInfo| {
            let twice: Vec<usize> = idx.iter().chain(idx.iter()).copied().collect();
            let (ids, types, am) = batch_tensors(&corpus.train, &twice, corpus.pad_id, &device).map_err(TrainError::callback)?;
            let h = enc.forward(&ids, &types, &am, true).map_err(TrainError::callback)?;
            let emb = pool(&h, &am, Pooling::Mean).map_err(TrainError::callback)?;
            let loss = contrastive_loss(&emb, cfg.temperature).map_err(TrainError::callback)?;
            Ok(StepLoss { loss, examples: idx.len() })
        },
        &mut (),
    );
    let out = match out {
        Ok(o) => o,
        Err(TrainError::NonFinite { value, step, .. }) => bail!("upstream loss became {value} at step {step} (seed {seed}, sparsity {sparsity:.3})"),
        Err(e) => return Err(e.into()),
    };
    let (step, secs) = (out.steps, t0.elapsed().as_secs_f64());
    mask.check_pruned_zero(&prunable)?;
    let emb = embed(&enc, &corpus.heldout, corpus.pad_id)?;
    let n = emb.len().max(1) as f64;
    let cosine = emb.iter().zip(dense_emb).map(|(a, b)| dot(a, b)).sum::<f64>() / n;
    let hits = emb
        .iter()
        .enumerate()
        .filter(|(i, e)| {
            let best = dense_emb.iter().map(|d| dot(e, d)).enumerate().max_by(|x, y| x.1.total_cmp(&y.1)).map(|x| x.0);
            best == Some(*i)
        })
        .count();
    let metrics = UpstreamMetrics {
        train_loss: out.epoch_loss.last().copied().unwrap_or(f64::NAN),
        heldout_cosine_to_dense: cosine,
        heldout_retrieval_at_1: hits as f64 / n,
        steps: step,
        train_seconds: secs,
        sparsity: mask.sparsity(),
    };
    let tensors = params.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    Ok((metrics, tensors, mask))
}

/// Upstream IMP as an [`ImpSubject`]: no controls, rewinding to θ₀.
struct Upstream<'a> {
    cfg: &'a UpstreamConfig,
    base: &'a Base,
    corpus: &'a Corpus,
    dense_emb: &'a [Vec<f32>],
    shapes: Vec<(String, Vec<usize>)>,
}

impl Upstream<'_> {
    fn summarize(&self, cells: &[CellResult<UpstreamMetrics>]) -> UpstreamSummary {
        let mut rounds = Vec::new();
        for r in 0..=cells.iter().map(|c| c.round).max().unwrap_or(0) {
            let ms: Vec<&CellResult<UpstreamMetrics>> = cells.iter().filter(|c| c.round == r).collect();
            let Some(first) = ms.first() else { continue };
            let f = |g: fn(&UpstreamMetrics) -> f64| mean_std(&ms.iter().map(|c| g(&c.metrics)).collect::<Vec<_>>()).0;
            rounds.push(UpstreamRound {
                round: r,
                sparsity: first.target_sparsity,
                seeds: ms.len(),
                train_loss_mean: f(|m| m.train_loss),
                cosine_to_dense_mean: f(|m| m.heldout_cosine_to_dense),
                retrieval_at_1_mean: f(|m| m.heldout_retrieval_at_1),
                train_seconds: ms.iter().map(|c| c.metrics.train_seconds).sum(),
            });
        }
        UpstreamSummary {
            model: self.base.spec.clone(),
            corpus: self.cfg.corpus.clone(),
            corpus_texts: self.corpus.train.encoded.len(),
            total_train_seconds: rounds.iter().map(|r| r.train_seconds).sum(),
            rounds,
        }
    }
}

impl ImpSubject for Upstream<'_> {
    type Metrics = UpstreamMetrics;
    const CONTROLS: &'static [Control] = &[];

    fn method(&self) -> String {
        "upstream-imp-contrastive-global-magnitude".into()
    }
    fn schedule(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self.cfg.schedule()).ok()
    }
    fn round_sparsity(&self, round: usize) -> Result<f64> {
        Ok(self.cfg.schedule().round_sparsity(round)?)
    }
    fn dense_mask(&self, _seed: u64) -> Result<MaskSet> {
        Ok(dense_mask(&self.shapes))
    }
    fn train(&self, cell: &Cell, start: &Start, mask: &MaskSet, _snapshot_step: Option<usize>) -> Result<Trained<UpstreamMetrics>> {
        if !matches!(start, Start::Init) {
            bail!("upstream IMP rewinds to the pre-trained weights only");
        }
        let (m, tensors, _) = train_round(self.cfg, self.base, self.corpus, self.dense_emb, cell.seed, (cell.round > 0).then_some(mask))?;
        tracing::info!(round = cell.round, seed = cell.seed, sparsity = cell.target_sparsity, loss = m.train_loss, cosine = m.heldout_cosine_to_dense, seconds = m.train_seconds, "upstream round done");
        Ok(Trained { metrics: m, tensors, snapshot: None })
    }
    fn prune(&self, cell: &Cell, prev: &SparseCheckpoint) -> Result<MaskSet> {
        imp_step(self.cfg.schedule(), &self.shapes, prev, cell.round)
    }
    fn extra(&self, _cell: &Cell) -> Result<serde_json::Value> {
        Ok(serde_json::json!({ "task": UPSTREAM_TASK, "classes": [], "model": self.base.spec, "finetune": self.cfg.recipe, "corpus": self.cfg.corpus }))
    }
    fn summary(&self, cells: &[CellResult<UpstreamMetrics>]) -> Result<serde_json::Value> {
        Ok(serde_json::to_value(self.summarize(cells))?)
    }
}

/// Runs (or resumes) upstream IMP into `out`; corpus from `home` (`$SPRIG_HOME`).
pub fn run_upstream(cfg: &UpstreamConfig, out: &Path, home: &Path) -> Result<UpstreamSummary> {
    // Checked before the (slow) loading, opened after it: a start that fails to load writes nothing.
    RunDir::check(out, cfg)?;
    let base = Base::for_recipe(&cfg.recipe)?;
    let corpus = load_corpus(cfg, &base, home)?;
    let dense = BertEncoder::new(&base.config, Init::Pretrained { tensors: &base.tensors, origin: base.origin.clone() }, 0, &Device::Cpu)?;
    let dense_emb = embed(&dense, &corpus.heldout, corpus.pad_id)?;
    drop(dense);
    let run = RunDir::open(out, cfg)?;
    let subject = Upstream { cfg, base: &base, corpus: &corpus, dense_emb: &dense_emb, shapes: base.prunable_shapes()? };
    let cells = run_imp(&run, &cfg.plan(), &subject)?;
    Ok(subject.summarize(&cells))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contrastive_loss_prefers_aligned_views() {
        let d = Device::Cpu;
        // Two views equal: the positive has cosine 1, negatives are orthogonal.
        let e = Tensor::new(&[[1f32, 0., 0.], [0., 1., 0.], [0., 0., 1.], [1., 0., 0.], [0., 1., 0.], [0., 0., 1.]], &d).unwrap();
        let aligned = contrastive_loss(&e, 0.05).unwrap().to_scalar::<f32>().unwrap();
        // Views permuted: every positive is orthogonal.
        let p = Tensor::new(&[[1f32, 0., 0.], [0., 1., 0.], [0., 0., 1.], [0., 1., 0.], [0., 0., 1.], [1., 0., 0.]], &d).unwrap();
        let crossed = contrastive_loss(&p, 0.05).unwrap().to_scalar::<f32>().unwrap();
        // log-sum-exp by hand: aligned = log(e^20 + 2) - 20, crossed = log(e^20 + 2) - 0.
        let lse = (20f64.exp() + 2.0).ln();
        assert!((aligned as f64 - (lse - 20.0)).abs() < 1e-4, "{aligned}");
        assert!((crossed as f64 - lse).abs() < 1e-3, "{crossed}");
        // Scale invariance: embeddings are normalised first.
        let scaled = contrastive_loss(&(e * 7.0).unwrap(), 0.05).unwrap().to_scalar::<f32>().unwrap();
        assert!((scaled - aligned).abs() < 1e-5);
    }
}
