//! Fine-tuning a BERT classifier from given starting weights with a fixed keep-mask on the encoder
//! linears: the inner loop of BERT-Tickets (Chen et al., NeurIPS 2020, §3: "train the subnetwork
//! f(x; m ⊙ θ₀) with the task's recipe") and of sparse transfer (§5). The mask is installed in the
//! optimizer (`Optimizer::set_mask`), so pruned weights are zero after every step and never regrow.
//!
//! The data are tokenized once ([`TaskData`]) and the pretrained tensors loaded once ([`Base`]), so
//! that an experiment with dozens of fine-tunes pays for neither more than once.
use crate::checkpoint::Checkpoint;
use crate::config::BertConfig;
use crate::gradual::{Gradual, GradualHooks, Pruning, Rigl};
use crate::finetune::{batch_tensors, evaluate, tokenize, FinetuneConfig, Tokenized};
use crate::model::{is_encoder_linear_weight, BertClassifier, BertEncoder, Init};
use crate::tokenizer::BertTokenizer;
use crate::error::{BertError, Context, Result};
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use sprig_data::batch::bucketed_batch_indices;
use sprig_data::metrics::Report;
use sprig_prune::{Criterion, GradAccumulator, Inputs, MaskSet, Pruner, PrunerConfig, Scores};
use candle_core::backprop::GradStore;
use sprig_train::fit::{BatchOrder, Ctx, Fit, Hooks, Lr, StepInfo, StepLoss};
use sprig_train::{AdamW, AdamWConfig, LinearWarmupDecay, Optimizer, TrainError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A pretrained checkpoint loaded once: config, tensors by canonical name, tokenizer file.
pub struct Base {
    pub spec: String,
    pub config: BertConfig,
    pub tensors: HashMap<String, Tensor>,
    pub origin: PathBuf,
    pub tokenizer: PathBuf,
}

impl Base {
    pub fn load(spec: &str) -> Result<Self> {
        Self::load_layers(spec, 0)
    }

    /// The model of a fine-tuning recipe: `cfg.model` with its first `cfg.layers` layers.
    pub fn for_recipe(cfg: &FinetuneConfig) -> Result<Self> {
        Self::load_layers(&cfg.model, cfg.layers)
    }

    /// `spec` with only its first `layers` encoder layers (0: all; [`crate::checkpoint::keep_layers`]).
    pub fn load_layers(spec: &str, layers: usize) -> Result<Self> {
        let ck = Checkpoint::load_layers(spec, layers, &Device::Cpu).with_context(|| format!("loading model {spec}"))?;
        let tokenizer = ck.files.tokenizer()?.to_path_buf();
        let origin = ck.files.weights[0].clone();
        Ok(Self { spec: spec.to_string(), config: ck.config, tensors: ck.tensors, origin, tokenizer })
    }

    /// The prunable tensors (BERT-Tickets' set, [`is_encoder_linear_weight`]) in checkpoint order.
    pub fn prunable_shapes(&self) -> Result<Vec<(String, Vec<usize>)>> {
        let enc = BertEncoder::new(&self.config, Init::Pretrained { tensors: &self.tensors, origin: self.origin.clone() }, 0, &Device::Cpu)?;
        Ok(enc.named_params().iter().filter(|(n, _)| is_encoder_linear_weight(n)).map(|(n, v)| (n.clone(), v.dims().to_vec())).collect())
    }
}

/// A task's splits, subsampled as the config says and tokenized once.
pub struct TaskData {
    pub task: String,
    pub classes: Vec<String>,
    pub train: Tokenized,
    pub dev: Tokenized,
    pub test: Tokenized,
    pub pad_id: u32,
    pub split: sprig_data::SplitInfo,
}

impl TaskData {
    /// Loads `cfg.task` from `home`, split and subsampled with `cfg.seed` (the data seed), and
    /// tokenizes it with `base`'s tokenizer at `cfg.max_seq_len`.
    pub fn load(cfg: &FinetuneConfig, base: &Base, home: &Path) -> Result<Self> {
        let data = sprig_data::load_text_task(&cfg.task, home, cfg.seed).with_context(|| format!("loading task {}", cfg.task))?;
        let cap = |n: usize| if n == 0 { usize::MAX } else { n };
        let data = data.subsample(cap(cfg.max_train), cap(cfg.max_dev), cap(cfg.max_test), cfg.seed);
        for (name, split) in [("train", &data.train), ("dev", &data.dev), ("test", &data.test)] {
            if split.is_empty() {
                bail!("task {}: the {name} split is empty", data.task);
            }
        }
        let tok = BertTokenizer::from_file(&base.tokenizer, cfg.max_seq_len.min(base.config.max_position_embeddings))?;
        Ok(Self {
            task: data.task.clone(),
            classes: data.classes.clone(),
            train: tokenize(&tok, &data.train)?,
            dev: tokenize(&tok, &data.dev)?,
            test: tokenize(&tok, &data.test)?,
            pad_id: tok.pad_id(),
            split: data.split.clone(),
        })
    }
}

/// What one masked fine-tune measured (final weights, no best-epoch selection).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunMetrics {
    pub test_accuracy: f64,
    pub test_macro_f1: f64,
    pub test_mcc: f64,
    pub dev_accuracy: f64,
    pub dev_macro_f1: f64,
    pub steps: usize,
    pub train_seconds: f64,
    /// Sparsity of the prunable tensors during training.
    pub sparsity: f64,
}

impl RunMetrics {
    fn from(dev: &Report, test: &Report, steps: usize, secs: f64, sparsity: f64) -> Self {
        Self {
            test_accuracy: test.accuracy,
            test_macro_f1: test.macro_f1,
            test_mcc: test.mcc,
            dev_accuracy: dev.accuracy,
            dev_macro_f1: dev.macro_f1,
            steps,
            train_seconds: secs,
            sparsity,
        }
    }
}

/// Where a fine-tune starts: encoder tensors by canonical name (any missing one comes from the
/// base) and optionally a classification head (`classifier.weight`/`bias`); without one the head
/// is fresh, normal(0, 0.02) seeded by the run's seed.
pub struct Start<'a> {
    pub tensors: &'a HashMap<String, Tensor>,
    pub head: bool,
}

/// A finished masked fine-tune: metrics, the trained model, and the weights at `snapshot_step`.
pub struct MaskedRun {
    pub metrics: RunMetrics,
    /// The final mask of a gradual-pruning run ([`finetune_gradual`]); `None` otherwise.
    pub gradual_mask: Option<MaskSet>,
    pub model: BertClassifier,
    pub snapshot: Option<HashMap<String, Tensor>>,
}

/// Copies every parameter's current value, by name.
pub fn snapshot(params: &[(String, Var)]) -> Result<HashMap<String, Tensor>> {
    params.iter().map(|(n, v)| Ok((n.clone(), v.as_tensor().copy()?))).collect()
}

/// Fine-tune from `start` with `masks` fixed on the encoder linears (`None` = dense), seed `seed`
/// (head init, dropout, batch order). `cfg` gives the recipe; its `seed` is the data seed and is
/// not used here. Deterministic: same inputs, same result bit for bit.
pub fn finetune_masked(
    base: &Base,
    data: &TaskData,
    cfg: &FinetuneConfig,
    seed: u64,
    start: Start,
    masks: Option<&MaskSet>,
    snapshot_step: Option<usize>,
) -> Result<MaskedRun> {
    finetune_with(base, data, cfg, seed, start, masks, snapshot_step, None)
}

/// Fine-tune from `start` (dense) while pruning the encoder linears on the `gradual` schedule
/// (gradual magnitude or movement pruning, [`crate::gradual`]); otherwise as [`finetune_masked`].
pub fn finetune_gradual(base: &Base, data: &TaskData, cfg: &FinetuneConfig, seed: u64, start: Start, gradual: Gradual) -> Result<MaskedRun> {
    finetune_with(base, data, cfg, seed, start, None, None, Some(Pruning::Gradual(gradual)))
}

/// Fine-tune from `start` under RigL at a constant sparsity ([`Rigl`]: a random mask, then
/// drop-and-grow); otherwise as [`finetune_masked`]. The final mask is the run's
/// `gradual_mask`.
pub fn finetune_rigl(base: &Base, data: &TaskData, cfg: &FinetuneConfig, seed: u64, start: Start, rigl: Rigl) -> Result<MaskedRun> {
    finetune_with(base, data, cfg, seed, start, None, None, Some(Pruning::Rigl(rigl)))
}

#[allow(clippy::too_many_arguments)]
fn finetune_with(
    base: &Base,
    data: &TaskData,
    cfg: &FinetuneConfig,
    seed: u64,
    start: Start,
    masks: Option<&MaskSet>,
    snapshot_step: Option<usize>,
    pruning: Option<Pruning>,
) -> Result<MaskedRun> {
    cfg.validate()?;
    let device = Device::Cpu;
    let mut merged: HashMap<String, Tensor> = base.tensors.clone();
    for (n, t) in start.tensors {
        merged.insert(n.clone(), t.clone());
    }
    let mut encoder = BertEncoder::new(&base.config, Init::Pretrained { tensors: &merged, origin: base.origin.clone() }, seed, &device)?;
    encoder.set_train_word_embeddings(cfg.train_word_embeddings);
    encoder.set_ops(cfg.ops);
    let head = if start.head { Some((&merged, base.origin.clone())) } else { None };
    let mut model = BertClassifier::new(encoder, data.classes.len(), cfg.pooling, head, seed)?;
    let params = model.trainable_params();
    let mut opt = AdamW::new(params.clone(), AdamWConfig { lr: cfg.lr, weight_decay: cfg.weight_decay, eps: 1e-8, ..AdamWConfig::default() })?;
    let all_params = model.named_params();
    let mut sparsity = 0.0;
    if let Some(m) = masks {
        m.check_against(&all_params)?;
        if let Some(name) = m.names().into_iter().find(|n| !is_encoder_linear_weight(n)) {
            bail!("mask for `{name}`: only the encoder linears are prunable");
        }
        let (mut trained, mut frozen) = (MaskSet::new(), MaskSet::new());
        for (name, mask) in m.iter() {
            let set = if params.iter().any(|(n, _)| n == name) { &mut trained } else { &mut frozen };
            set.insert(name.clone(), mask.clone());
        }
        opt.set_masks(&trained)?;
        frozen.apply(&all_params)?;
        sparsity = m.sparsity();
    }
    let lengths: Vec<usize> = data.train.encoded.iter().map(|e| e.ids.len()).collect();
    let fit = Fit::new(cfg.epochs, BatchOrder::Bucketed { lengths: &lengths, batch_size: cfg.batch_size, seed })
        .max_steps((cfg.max_steps > 0).then_some(cfg.max_steps));
    let total = fit.total_steps()?;
    if let Some(k) = snapshot_step.filter(|&k| k > total) {
        bail!("rewind step {k} is past the end of training ({total} steps)");
    }
    let schedule = LinearWarmupDecay { base_lr: cfg.lr, warmup: (cfg.warmup_ratio * total as f64).round() as usize, total };
    let mut gradual = match pruning {
        Some(p) => {
            let prunable: Vec<(String, Var)> = params.iter().filter(|(n, _)| is_encoder_linear_weight(n)).cloned().collect();
            let pruner = p.pruner(total, &prunable)?;
            // RigL starts sparse: its random mask holds from the first step.
            if pruner.masks().sparsity() > 0.0 {
                opt.set_masks(pruner.masks())?;
                sparsity = pruner.masks().sparsity();
            }
            Some(GradualHooks::with_pruner(pruner, prunable))
        }
        None => None,
    };
    let t0 = Instant::now();
    let fitted = fit.lr(Lr::WarmupDecay(schedule)).clip(Some(cfg.max_grad_norm)).snapshot_at(snapshot_step).run(
        &mut model,
        &mut opt,
        params.clone(),
        |model: &mut BertClassifier, idx: &[usize], _: &StepInfo| {
            let (ids, types, mask) = batch_tensors(&data.train, idx, data.pad_id, &device).map_err(TrainError::callback)?;
            let labels = Tensor::from_vec(idx.iter().map(|&i| data.train.labels[i] as u32).collect::<Vec<_>>(), idx.len(), &device)?;
            let logits = model.forward(&ids, &types, &mask, true).map_err(TrainError::callback)?;
            // candle's cross-entropy whatever the ops: the reference every ticket run used.
            Ok(StepLoss { loss: candle_nn::loss::cross_entropy(&logits, &labels)?, examples: idx.len() })
        },
        &mut MaybeGradual(&mut gradual),
    );
    let fitted = fitted.map_err(|e| match e {
        TrainError::NonFinite { value, step, .. } => {
            BertError::Invalid(format!("loss became {value} at step {step} (task {}, seed {seed}, sparsity {sparsity:.3})", data.task))
        }
        e => e.into(),
    })?;
    let secs = t0.elapsed().as_secs_f64();
    // The loop snapshots the trained parameters; frozen ones (word embeddings) never change.
    let snap = match fitted.snapshot {
        Some(trained) => {
            let mut snap: HashMap<String, Tensor> = trained.into_iter().collect();
            for (n, v) in &all_params {
                if !snap.contains_key(n) {
                    snap.insert(n.clone(), v.as_tensor().copy()?);
                }
            }
            Some(snap)
        }
        None => None,
    };
    let gradual_mask = gradual.map(|g| g.pruner.into_masks());
    if let Some(m) = masks.or(gradual_mask.as_ref()) {
        m.check_pruned_zero(&all_params)?;
        sparsity = m.sparsity();
    }
    let dev = evaluate(&model, &data.dev, cfg.eval_batch_size, data.pad_id)?;
    let test = evaluate(&model, &data.test, cfg.eval_batch_size, data.pad_id)?;
    Ok(MaskedRun { metrics: RunMetrics::from(&dev, &test, fitted.steps, secs, sparsity), gradual_mask, model, snapshot: snap })
}

/// The gradual pruner's hooks when there is one.
struct MaybeGradual<'a>(&'a mut Option<GradualHooks>);

impl Hooks<BertClassifier> for MaybeGradual<'_> {
    fn before_step(&mut self, m: &mut BertClassifier, ctx: &mut Ctx, grads: &mut GradStore) -> sprig_train::error::Result<()> {
        self.0.as_mut().map_or(Ok(()), |g| g.before_step(m, ctx, grads))
    }
    fn after_step(&mut self, m: &mut BertClassifier, ctx: &mut Ctx, loss: f64) -> sprig_train::error::Result<()> {
        self.0.as_mut().map_or(Ok(()), |g| g.after_step(m, ctx, loss))
    }
}

/// Training examples whose loss gradients estimate the Fisher for [`obs_scores`], and the batch.
pub const OBS_CALIBRATION: usize = 512;
pub const OBS_BATCH: usize = 8;
/// Dampening λ of the Fisher diagonal (also breaks ties toward magnitude where F_ii = 0).
pub const OBS_DAMP: f64 = 1e-10;

/// One-shot OBS saliency of the fine-tuned weights `tensors` (encoder + head, by canonical name):
/// ρ_i = w_i² (F_ii + λ) / 2, the loss increase of removing w_i under a diagonal empirical Fisher
/// (Hassibi & Stork 1993, eq. 5; oBERT, Kurtic et al. 2022, eq. 2 with blocks of one weight).
/// F_ii is the mean squared loss gradient over [`OBS_CALIBRATION`] training examples in batches of
/// [`OBS_BATCH`] (no dropout, seeded order). With a diagonal Fisher the OBS update of the remaining
/// weights vanishes, so only the mask is used.
pub fn obs_scores(base: &Base, data: &TaskData, cfg: &FinetuneConfig, tensors: &HashMap<String, Tensor>, seed: u64) -> Result<Scores> {
    let device = Device::Cpu;
    let mut merged = base.tensors.clone();
    merged.extend(tensors.iter().map(|(n, t)| (n.clone(), t.clone())));
    if !merged.contains_key("classifier.weight") {
        bail!("OBS needs a fine-tuned model with its classification head");
    }
    let encoder = BertEncoder::new(&base.config, Init::Pretrained { tensors: &merged, origin: base.origin.clone() }, seed, &device)?;
    let model = BertClassifier::new(encoder, data.classes.len(), cfg.pooling, Some((&merged, base.origin.clone())), seed)?;
    let prunable: Vec<(String, Var)> = model.named_params().into_iter().filter(|(n, _)| is_encoder_linear_weight(n)).collect();
    let mut acc = GradAccumulator::new();
    for idx in calibration_batches(data, seed) {
        acc.update(&prunable, &calibration_loss(&model, data, &idx)?.backward()?)?;
    }
    Ok(acc.fisher(&prunable, OBS_DAMP)?)
}

/// The first [`OBS_CALIBRATION`] training examples of a seeded bucketed order, in batches of [`OBS_BATCH`].
fn calibration_batches(data: &TaskData, seed: u64) -> Vec<Vec<usize>> {
    let lengths: Vec<usize> = data.train.encoded.iter().map(|e| e.ids.len()).collect();
    let batches = OBS_CALIBRATION.min(lengths.len()).div_ceil(OBS_BATCH);
    bucketed_batch_indices(&lengths, OBS_BATCH, seed ^ 0x0B5, 0).into_iter().take(batches).collect()
}

/// Cross-entropy of `model` (no dropout) on the training examples `idx`.
fn calibration_loss(model: &BertClassifier, data: &TaskData, idx: &[usize]) -> Result<Tensor> {
    let device = Device::Cpu;
    let (ids, types, mask) = batch_tensors(&data.train, idx, data.pad_id, &device)?;
    let labels = Tensor::from_vec(idx.iter().map(|&i| data.train.labels[i] as u32).collect::<Vec<_>>(), idx.len(), &device)?;
    Ok(candle_nn::loss::cross_entropy(&model.forward(&ids, &types, &mask, false)?, &labels)?)
}

/// SNIP (Lee et al. 2019, eq. 6) of θ₀: the one-shot mask at `sparsity` over the encoder linears
/// of the base weights with a fresh head (normal(0, 0.02) seeded by `seed`, as the fine-tunes
/// start), keeping the largest connection sensitivities |∂L/∂w · w|, the gradient averaged over
/// the calibration examples of [`obs_scores`]; one global threshold, as in the paper. Pruning at
/// initialisation's criterion applied where a pre-trained model's fine-tune starts.
pub fn snip_mask(base: &Base, data: &TaskData, cfg: &FinetuneConfig, sparsity: f64, seed: u64) -> Result<MaskSet> {
    let encoder = BertEncoder::new(&base.config, Init::Pretrained { tensors: &base.tensors, origin: base.origin.clone() }, seed, &Device::Cpu)?;
    let model = BertClassifier::new(encoder, data.classes.len(), cfg.pooling, None, seed)?;
    let prunable: Vec<(String, Var)> = model.named_params().into_iter().filter(|(n, _)| is_encoder_linear_weight(n)).collect();
    let batches = calibration_batches(data, seed);
    let mut loss = |b: usize| calibration_loss(&model, data, &batches[b]).map_err(|e| candle_core::Error::Msg(e.to_string()));
    let mut pruner = Pruner::for_params(PrunerConfig::one_shot(Criterion::Snip, sparsity), &prunable)?;
    Ok(pruner.one_shot(&prunable, &mut Inputs::none().with_loss(&mut loss, batches.len()))?.clone())
}
