//! Pruning a BERT classifier while fine-tuning it, with knowledge distillation from a dense
//! teacher: the library behind `sprig prune`.
//!
//! Every pruning step is a [`Pruner`] configuration (criterion × granularity × allocation ×
//! schedule) driven from the one training loop ([`Fit`]) by [`GradualHooks`]:
//!
//! | method | criterion | schedule |
//! |---|---|---|
//! | `gmp` (Zhu & Gupta 2017) | magnitude | cubic, eq. 1, from `prune_start` to `prune_end` |
//! | `movement` (Sanh et al. 2020) | −Σ_t ∂L/∂W ⊙ W (§3) accumulated as Adam steps (the scores are trained by Adam, as in the authors' code), each matrix to the target; non-monotone: every event re-ranks all weights, pruned ones with their values kept aside, and revives those back in the top-k | cubic |
//! | `obert` (Kurtic et al. 2022) | block OBS: saliency w²/(2[F⁻¹]ᵢᵢ) with the empirical Fisher of the last 32 training gradients over blocks of 50 weights, and the OBS update of the kept weights after each pruning event (eq. 3-5) | cubic |
//! | `obert-diag` | the same with a diagonal Fisher (blocks of one weight, no update): the cheap variant | cubic |
//! | `oneshot` | magnitude once before training, then fine-tuning with the mask fixed | one-shot |
//! | `wanda` (Sun et al. 2024) | \|W_ij\|·‖X_j‖₂ (eq. 1) with the inputs of 128 training examples, each matrix to the target, once before training, then fine-tuning with the mask fixed | one-shot |
//!
//! Distillation (Hinton et al. 2015; as in oBERT's and movement pruning's recipes): the loss is
//! `α·T²·CE(softmax(t/T), softmax(s/T)) + (1 − α)·CE(y, s)` with the teacher's logits `t`
//! computed once per training example (no dropout) before training. The checkpoint kept is the
//! best on dev among the evaluations at the final sparsity.
use crate::finetune::{batch_tensors, evaluate, logits, FinetuneConfig};
use crate::gradual::GradualHooks;
use crate::masked::{Base, TaskData};
use crate::model::{is_encoder_linear_weight, BertClassifier, BertEncoder, Init};
use crate::error::{BertError, Context, Result};
use crate::Checkpoint;
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use sprig_data::metrics::Report;
use sprig_prune::{ActivationNorms, Allocation, AllocationKind, Criterion, Granularity, Inputs, Mask, MaskSet, Pruner, PrunerConfig, Schedule};
use sprig_train::fit::{BatchOrder, Ctx, Fit, Hooks, Lr, StepInfo, StepLoss};
use sprig_train::{AdamW, AdamWConfig, LinearWarmupDecay, MetricsLog, Optimizer, Resume, TrainError, TrainState};

/// How weights are scored and when they are pruned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PruneMethod {
    /// Gradual magnitude pruning (Zhu & Gupta 2017).
    #[default]
    Gmp,
    /// Movement pruning (Sanh et al. 2020), hard top-k per matrix.
    Movement,
    /// Second-order block OBS with the empirical Fisher and the OBS weight update (oBERT, Kurtic
    /// et al. 2022).
    Obert,
    /// oBERT with a diagonal Fisher (no weight update).
    #[serde(rename = "obert-diag")]
    ObertDiag,
    /// Magnitude pruning once at the start, then fine-tuning with the mask fixed.
    Oneshot,
    /// Wanda (Sun et al. 2024) once at the start: |W_ij|·‖X_j‖₂ with the inputs of
    /// [`WANDA_CALIBRATION`] training examples, then fine-tuning with the mask fixed.
    Wanda,
}

/// Calibration examples of [`PruneMethod::Wanda`] (the paper's 128 sequences).
pub const WANDA_CALIBRATION: usize = 128;

impl std::str::FromStr for PruneMethod {
    type Err = BertError;
    fn from_str(s: &str) -> Result<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase()))
            .map_err(|_| BertError::Invalid(format!("unknown pruning method {s:?} (expected gmp, movement, obert, obert-diag, oneshot or wanda)")))
    }
}

impl PruneMethod {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Gmp => "gmp",
            Self::Movement => "movement",
            Self::Obert => "obert",
            Self::ObertDiag => "obert-diag",
            Self::Oneshot => "oneshot",
            Self::Wanda => "wanda",
        }
    }
    /// Pruned once before training, then fine-tuned with the mask fixed.
    pub fn is_one_shot(&self) -> bool {
        matches!(self, Self::Oneshot | Self::Wanda)
    }
    fn criterion(&self) -> Criterion {
        match self {
            Self::Gmp | Self::Oneshot => Criterion::Magnitude,
            Self::Movement => Criterion::Movement,
            Self::Obert => Criterion::Obs { block: Criterion::OBERT_BLOCK, grads: Criterion::OBERT_GRADS },
            Self::ObertDiag => Criterion::Fisher,
            Self::Wanda => Criterion::Wanda,
        }
    }
    /// The method's usual allocation: per matrix for movement (the authors' TopK layers; one
    /// global threshold on movement scores empties whole matrices) and Wanda (its scores carry
    /// each layer's input scale; the paper compares within a layer), global otherwise.
    fn default_allocation(&self) -> AllocationKind {
        match self {
            Self::Movement | Self::Wanda => AllocationKind::Uniform,
            _ => AllocationKind::Global,
        }
    }
}

/// Structured pruning of whole FFN neurons: the rows of every layer's `intermediate.dense` weight
/// (Li et al. 2017's filters), the same number in every layer, so that the pruned model can be
/// rewritten as a dense BERT with a narrower `intermediate_size`.
pub const FFN_NEURONS: &str = "ffn-neurons";

/// Structured pruning of whole attention heads (Michel et al. 2019): each head's rows of every
/// layer's `attention.self.value` weight, the same number of heads in every layer. A head whose
/// value rows are zero outputs its value bias whatever the input (its attention weights sum to
/// one), so its query and key rows do nothing and the head can be removed physically, its constant
/// folded into the output projection's bias ([`sprig_bert` config `sprig_attention_heads`]).
pub const ATTENTION_HEADS: &str = "attention-heads";

/// The structured granularities, whose pruned models can be rewritten smaller and dense.
pub fn is_structured(granularity: &str) -> bool {
    granularity == FFN_NEURONS || granularity == ATTENTION_HEADS
}

/// The weights a run prunes: `intermediate.dense` (FFN-in) weights for [`FFN_NEURONS`],
/// `attention.self.value` weights for [`ATTENTION_HEADS`], else every encoder linear.
pub fn is_prunable(granularity: &str, name: &str) -> bool {
    let only = match granularity {
        FFN_NEURONS => ".intermediate.dense.weight",
        ATTENTION_HEADS => ".attention.self.value.weight",
        _ => return is_encoder_linear_weight(name),
    };
    name.ends_with(only) && is_encoder_linear_weight(name)
}

/// `unstructured`, `RxC` blocks of the `[out, in]` matrix (e.g. `4x1`: 4 output rows × 1 input
/// column, sprig-kernels' BSR 4x1), `N:M` (e.g. `2:4`), [`FFN_NEURONS`] (whole rows) or
/// [`ATTENTION_HEADS`] (the `num_heads` row slices of a model with that many heads).
pub fn parse_granularity(s: &str, num_heads: usize) -> Result<Granularity> {
    let bad = || BertError::Invalid(format!("unknown granularity {s:?} (expected unstructured, RxC blocks such as 4x1 or 1x4, N:M such as 2:4, ffn-neurons or attention-heads)"));
    let pair = |sep: char| -> Result<(usize, usize)> {
        let (a, b) = s.split_once(sep).ok_or_else(bad)?;
        let (a, b): (usize, usize) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
        if a == 0 || b == 0 {
            return Err(bad());
        }
        Ok((a, b))
    };
    Ok(match s {
        "unstructured" => Granularity::Unstructured,
        FFN_NEURONS => Granularity::Rows,
        ATTENTION_HEADS => Granularity::Heads { num_heads, axis: 0 },
        _ if s.contains(':') => {
            let (n, m) = pair(':')?;
            if n >= m {
                return Err(BertError::Invalid(format!("granularity {s}: N:M needs N < M")));
            }
            Granularity::NM { n, m }
        }
        _ if s.contains('x') => {
            let (r, c) = pair('x')?;
            Granularity::Block { r, c }
        }
        _ => return Err(bad()),
    })
}

/// Everything that defines a pruning run; written to `config.toml` in the run directory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PruneConfig {
    /// Final sparsity of the encoder linears, in [0, 1).
    pub sparsity: f64,
    pub method: PruneMethod,
    /// `unstructured`, `4x1`, `1x4`, `2:4` ... ([`parse_granularity`]).
    pub granularity: String,
    /// `global`, `uniform`, `er` or `erk`; empty = the method's usual one (movement and wanda:
    /// uniform, others: global).
    pub allocation: String,
    /// Start and end of the cubic schedule as fractions of all training steps.
    pub prune_start: f64,
    pub prune_end: f64,
    /// Steps between pruning events.
    pub prune_every: usize,
    /// A fine-tuned dense classifier of the same task (directory or hub id); empty = the model
    /// itself when it carries a head for this task, else none. `none` = no teacher.
    pub teacher: String,
    /// Distil from the teacher (default: on when there is one).
    pub distill: Option<bool>,
    /// Softmax temperature T of the soft targets.
    pub temperature: f64,
    /// Weight α of the soft-target loss (1 − α on the hard labels).
    pub alpha: f64,
    /// oBERT only: weights per block of the empirical Fisher (B; default 50, Kurtic et al. §3).
    pub obert_block: Option<usize>,
    /// oBERT only: gradients in the empirical Fisher (m; default 32: each costs 4 bytes per
    /// encoder weight, 42 MB for MiniLM-L6; the paper uses 1024). With m < B the block Fisher
    /// has rank m and the damping λ decides the rest of its inverse.
    pub obert_grads: Option<usize>,
    /// oBERT with block granularities (4x1, 1x4) only: Fisher blocks of whole tiles and one joint
    /// saliency per tile (Kurtic et al. eq. 3, the default), or, with `false`, blocks of B
    /// consecutive weights of a row and tiles ranked by their weights' single saliencies
    /// ([`sprig_prune::ScoreOptions::obs_tiles`]).
    pub obert_tiles: Option<bool>,
    /// The fine-tuning recipe (model, task, seed, epochs, lr, ...).
    pub train: FinetuneConfig,
}

impl Default for PruneConfig {
    fn default() -> Self {
        Self {
            sparsity: 0.8,
            method: PruneMethod::Gmp,
            granularity: "unstructured".into(),
            allocation: String::new(),
            prune_start: 0.0,
            prune_end: 0.67,
            prune_every: 10,
            teacher: String::new(),
            distill: None,
            temperature: 2.0,
            alpha: 0.5,
            obert_block: None,
            obert_grads: None,
            obert_tiles: None,
            train: FinetuneConfig { epochs: 6, ..FinetuneConfig::default() },
        }
    }
}

impl PruneConfig {
    pub fn validate(&self) -> Result<()> {
        self.train.validate()?;
        if !(0.0..1.0).contains(&self.sparsity) {
            bail!("sparsity {} is outside [0, 1)", self.sparsity);
        }
        // The name only: the number of heads is the model's (any count parses alike).
        let g = parse_granularity(&self.granularity, 1)?;
        if let Granularity::NM { n, m } = g {
            let s = 1.0 - n as f64 / m as f64;
            if (self.sparsity - s).abs() > 1e-9 {
                bail!("granularity {} fixes the sparsity at {s}; asked for {}", self.granularity, self.sparsity);
            }
        }
        self.allocation()?;
        if is_structured(&self.granularity) {
            let (g, what) = (&self.granularity, if self.granularity == FFN_NEURONS { "neurons by the magnitude of their input weights" } else { "heads by the magnitude of their value weights" });
            if !matches!(self.method, PruneMethod::Gmp | PruneMethod::Oneshot) {
                bail!("granularity {g} prunes whole {what}: use --method gmp or oneshot, not {}", self.method.name());
            }
            if !matches!(self.allocation.as_str(), "" | "uniform") {
                bail!("granularity {g} keeps the same number in every layer (allocation uniform), not {}", self.allocation);
            }
        }
        if !self.method.is_one_shot() {
            if !(0.0 <= self.prune_start && self.prune_start < self.prune_end && self.prune_end <= 1.0) {
                bail!("the schedule needs 0 <= prune_start < prune_end <= 1 (got {} and {})", self.prune_start, self.prune_end);
            }
            if self.prune_every == 0 {
                bail!("prune_every must be at least 1");
            }
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            bail!("temperature must be a positive number, got {}", self.temperature);
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            bail!("alpha must be in [0, 1], got {}", self.alpha);
        }
        for (what, v) in [("obert_block", self.obert_block), ("obert_grads", self.obert_grads)] {
            match v {
                Some(_) if self.method != PruneMethod::Obert => bail!("{what} (oBERT's Fisher) applies to --method obert only, not {}", self.method.name()),
                Some(0) => bail!("{what} must be at least 1"),
                _ => {}
            }
        }
        if self.obert_tiles.is_some() {
            if self.method != PruneMethod::Obert {
                bail!("obert_tiles (oBERT's Fisher blocks) applies to --method obert only, not {}", self.method.name());
            }
            if !matches!(g, Granularity::Block { .. }) {
                bail!("obert_tiles applies to block granularities (4x1, 1x4), not {}", self.granularity);
            }
        }
        Ok(())
    }

    pub fn allocation(&self) -> Result<Allocation> {
        let kind = match self.allocation.as_str() {
            "" if is_structured(&self.granularity) => AllocationKind::Uniform,
            "" => self.method.default_allocation(),
            s => serde_json::from_value(serde_json::Value::String(s.into()))
                .map_err(|_| BertError::Invalid(format!("unknown allocation {s:?} (expected global, uniform, er or erk)")))?,
        };
        Ok(Allocation { kind, keep_dense: vec![] })
    }

    /// The [`Pruner`] configuration over a fine-tune of `total` steps (t₀ = round(start·T),
    /// t₁ = round(end·T), at least t₀ + 1) of a model with `num_heads` attention heads.
    pub fn pruner(&self, total: usize, num_heads: usize) -> Result<PrunerConfig> {
        self.validate()?;
        let criterion = match self.method.criterion() {
            Criterion::Obs { block, grads } => Criterion::Obs { block: self.obert_block.unwrap_or(block), grads: self.obert_grads.unwrap_or(grads) },
            c => c,
        };
        let mut c = PrunerConfig::new(criterion, self.schedule(total)).granularity(parse_granularity(&self.granularity, num_heads)?).allocation(self.allocation()?);
        // λ of the Fisher: oBERT's 1e-7 for the block inverse; a tie-breaker for the diagonal.
        c.options.fisher_damp = if self.method == PruneMethod::Obert { 1e-7 } else { crate::masked::OBS_DAMP };
        c.options.seed = self.train.seed;
        c.options.obs_tiles = self.obert_tiles.unwrap_or(true);
        // Movement pruning's masks are non-monotone and its scores move by Adam's normalised
        // steps, as Sanh et al. train them (§3; their scores are parameters under Adam). Plain
        // sums of g ⊙ w, whose noise grows with |w|, collapsed rt-sentiment to one class.
        c.revive = self.method == PruneMethod::Movement;
        c.options.movement_adam = self.method == PruneMethod::Movement;
        Ok(c)
    }

    /// The schedule over a fine-tune of `total` steps: one shot at step 0, or the cubic one from
    /// t₀ = round(start·T) to t₁ = round(end·T), at least t₀ + 1.
    pub fn schedule(&self, total: usize) -> Schedule {
        match self.method {
            PruneMethod::Oneshot | PruneMethod::Wanda => Schedule::OneShot { sparsity: self.sparsity, step: 0 },
            _ => {
                let t0 = (self.prune_start * total as f64).round() as usize;
                let t1 = ((self.prune_end * total as f64).round() as usize).max(t0 + 1);
                Schedule::Gradual { initial: 0.0, final_sparsity: self.sparsity, start: t0, end: t1, frequency: self.prune_every }
            }
        }
    }

    /// The step after which the mask is final (evaluations from then on may be kept).
    fn final_step(&self, total: usize) -> usize {
        match self.schedule(total) {
            Schedule::Gradual { end, .. } => end,
            _ => 0,
        }
    }
}

/// A dense teacher's logits on a task's splits, computed once.
pub struct Teacher {
    pub spec: String,
    /// Row-major `n × C` logits of the training split, in order.
    pub train_logits: Vec<f32>,
    pub dev: Report,
    pub test: Report,
}

impl Teacher {
    /// Loads the classifier `spec`, checks it is a teacher for `data` (same labels, same data
    /// split seed and task when it records them, same tokenizer) and runs it on every split.
    pub fn load(spec: &str, data: &TaskData, cfg: &FinetuneConfig, base: &Base) -> Result<Self> {
        let ck = Checkpoint::load(spec, &Device::Cpu).with_context(|| format!("loading teacher {spec}"))?;
        if !ck.has_classifier() {
            bail!("teacher {spec} has no classification head (classifier.weight): give a fine-tuned classifier");
        }
        check_head(spec, &ck, data, cfg)?;
        let tok = std::fs::read(ck.files.tokenizer()?).context("reading the teacher's tokenizer")?;
        let own = std::fs::read(&base.tokenizer).context("reading the model's tokenizer")?;
        if tok != own {
            bail!("teacher {spec} uses a different tokenizer than the model {}", base.spec);
        }
        let model = ck.classifier(0, &Device::Cpu)?;
        tracing::info!(teacher = spec, examples = data.train.labels.len(), "teacher logits on the training split");
        let train_logits = logits(&model, &data.train, cfg.eval_batch_size, data.pad_id)?;
        let dev = evaluate(&model, &data.dev, cfg.eval_batch_size, data.pad_id)?;
        let test = evaluate(&model, &data.test, cfg.eval_batch_size, data.pad_id)?;
        tracing::info!(dev_accuracy = dev.accuracy, test_accuracy = test.accuracy, "teacher");
        Ok(Self { spec: spec.to_string(), train_logits, dev, test })
    }
}

/// A checkpoint's head must be for `data`'s labels, and, when it records its task and data seed
/// (sprig's `config.json` `"sprig"` record), for the same task and split: a head trained on
/// another split has seen this run's dev and test examples.
pub fn check_head(spec: &str, ck: &Checkpoint, data: &TaskData, cfg: &FinetuneConfig) -> Result<()> {
    let labels = ck.config.labels().unwrap_or_default();
    let n = ck.tensors.get("classifier.weight").map_or(0, |t| t.dims()[0]);
    if n != data.classes.len() || (!labels.is_empty() && labels != data.classes) {
        bail!("{spec}: its head has labels {labels:?} ({n} outputs); task {} has {:?}", data.task, data.classes);
    }
    let rec = ck.config.extra.get("sprig").cloned().unwrap_or_default();
    if let Some(task) = rec.get("task").and_then(|v| v.as_str()) {
        if task != data.task {
            bail!("{spec} was fine-tuned on task {task}, not {}", data.task);
        }
    }
    if let Some(seed) = rec.get("seed").and_then(|v| v.as_str()).and_then(|s| s.parse::<u64>().ok()) {
        if seed != cfg.seed {
            bail!("{spec} was fine-tuned on the data split of seed {seed}; this run splits with seed {} (its dev/test examples were that model's training data): use --seed {seed}", cfg.seed);
        }
    }
    Ok(())
}

/// What a pruning run measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PruneSummary {
    pub task: String,
    pub model: String,
    pub method: String,
    pub granularity: String,
    pub allocation: String,
    pub target_sparsity: f64,
    /// Realised sparsity of the encoder linears (from the masks) and of every weight of the model.
    pub sparsity: f64,
    pub model_sparsity: f64,
    pub teacher: Option<String>,
    pub distill: bool,
    pub seed: u64,
    pub steps: usize,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub train_seconds: f64,
    pub train_examples_per_second: f64,
    pub dev_accuracy: f64,
    pub test_accuracy: f64,
    pub test_macro_f1: f64,
    pub dense_dev_accuracy: Option<f64>,
    pub dense_test_accuracy: Option<f64>,
    pub dev: Report,
    pub test: Report,
    pub split: sprig_data::SplitInfo,
    pub train_size: usize,
}

/// A finished pruning run: the best-on-dev model at the final sparsity, its masks, its summary.
pub struct Pruned {
    pub model: BertClassifier,
    pub masks: MaskSet,
    pub summary: PruneSummary,
}

/// Masks of the exact zeros of every encoder linear (a checkpoint pruned before; a linear
/// without a zero gets an all-kept mask).
pub fn masks_of_zeros(params: &[(String, Var)]) -> Result<MaskSet> {
    let mut m = MaskSet::new();
    for (n, v) in params.iter().filter(|(n, _)| is_encoder_linear_weight(n)) {
        let (rows, cols) = v.as_tensor().dims2()?;
        let w = v.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        m.insert(n.clone(), Mask::from_bitmask(&[rows, cols], &sprig_kernels::Bitmask::from_nonzero(rows, cols, &w)?)?);
    }
    Ok(m)
}

/// Prunes `base` (its head is kept when it has one for this task) to `cfg.sparsity` while
/// fine-tuning on `data`, distilling from `teacher` when given, logging to `log`.
/// With `resume`, the run saves its state as [`Resume`] says and continues from `resume.from`
/// when given (the model, data and teacher are rebuilt from `cfg` as for a fresh run, then the
/// saved state replaces the weights, optimizer, pruner, kept checkpoint and dropout generators).
pub fn prune(base: &Base, data: &TaskData, cfg: &PruneConfig, teacher: Option<&Teacher>, log: &mut MetricsLog, resume: Option<Resume>) -> Result<Pruned> {
    cfg.validate()?;
    let tc = &cfg.train;
    let device = Device::Cpu;
    let mut encoder = BertEncoder::new(&base.config, Init::Pretrained { tensors: &base.tensors, origin: base.origin.clone() }, tc.seed, &device)?;
    encoder.set_train_word_embeddings(tc.train_word_embeddings);
    encoder.set_ops(tc.ops);
    let head = base.tensors.contains_key("classifier.weight").then(|| (&base.tensors, base.origin.clone()));
    let mut model = BertClassifier::new(encoder, data.classes.len(), tc.pooling, head, tc.seed)?;
    let params = model.trainable_params();
    let prunable: Vec<(String, Var)> = params.iter().filter(|(n, _)| is_prunable(&cfg.granularity, n)).cloned().collect();
    if prunable.is_empty() {
        bail!("model {}: no encoder linear weights to prune", base.spec);
    }
    let mut opt = AdamW::new(params.clone(), AdamWConfig { lr: tc.lr, weight_decay: tc.weight_decay, eps: 1e-8, ..AdamWConfig::default() })?;
    let lengths: Vec<usize> = data.train.encoded.iter().map(|e| e.ids.len()).collect();
    let fit = Fit::new(tc.epochs, BatchOrder::Bucketed { lengths: &lengths, batch_size: tc.batch_size, seed: tc.seed })
        .max_steps((tc.max_steps > 0).then_some(tc.max_steps));
    let total = fit.total_steps()?;
    let final_step = cfg.final_step(total);
    if final_step > total {
        bail!("training stops after {total} steps, before the pruning schedule ends at step {final_step}");
    }
    // A checkpoint pruned before starts from its zeros; one already as sparse as asked is refused.
    let start = masks_of_zeros(&prunable)?;
    if start.sparsity() >= cfg.sparsity && start.sparsity() > 0.0 {
        bail!("model {} is already {:.4} sparse in its encoder linears, at or above the asked {}", base.spec, start.sparsity(), cfg.sparsity);
    }
    // A model whose heads were removed before prunes among those it kept (the same number per layer).
    let heads = base.config.uniform_heads().with_context(|| format!("model {}: its layers keep different numbers of heads ({:?}); the pruner needs one", base.spec, base.config.sprig_attention_heads))?;
    let mut pruner = Pruner::for_params(cfg.pruner(total, heads)?, &prunable)?;
    if start.sparsity() > 0.0 {
        pruner = pruner.with_masks(start)?;
        opt.set_masks(pruner.masks())?;
    }
    if cfg.method.is_one_shot() {
        let norms = match cfg.method {
            PruneMethod::Wanda => Some(calibrate(&model, data, tc.eval_batch_size)?),
            _ => None,
        };
        let mut inputs = Inputs::none();
        if let Some(n) = &norms {
            inputs = inputs.with_activations(n);
        }
        pruner.one_shot(&prunable, &mut inputs)?;
        pruner.obs_update(&prunable)?;
        let m = pruner.masks().clone();
        opt.set_masks(&m)?;
        tracing::info!(sparsity = m.sparsity(), "one-shot prune before fine-tuning");
    }
    let distill = cfg.distill.unwrap_or(teacher.is_some());
    let soft = match (distill, teacher) {
        (true, Some(t)) => Some(t),
        (true, None) => bail!("distillation asked for but no teacher given"),
        _ => None,
    };
    let classes = data.classes.len();
    let (temp, alpha) = (cfg.temperature, cfg.alpha);
    let schedule = LinearWarmupDecay { base_lr: tc.lr, warmup: (tc.warmup_ratio * total as f64).round() as usize, total };
    let mut hooks = (
        GradualHooks::with_pruner(pruner, prunable.clone()),
        SelectHooks { data, cfg: tc, final_step, last: None, best: None },
    );
    let fit = match resume {
        Some(r) => fit.resumable(r),
        None => fit,
    };
    let fitted = fit
        .lr(Lr::WarmupDecay(schedule))
        .clip(Some(tc.max_grad_norm))
        .eval_each_epoch(true)
        .progress(format!("prune {} {} {:.0}%", data.task, cfg.method.name(), cfg.sparsity * 100.0))
        .metrics(log)
        .run(
            &mut model,
            &mut opt,
            params.clone(),
            |model: &mut BertClassifier, idx: &[usize], _: &StepInfo| {
                let (ids, types, mask) = batch_tensors(&data.train, idx, data.pad_id, &device).map_err(TrainError::callback)?;
                let label_ids: Vec<u32> = idx.iter().map(|&i| data.train.labels[i] as u32).collect();
                let s = model.forward(&ids, &types, &mask, true).map_err(TrainError::callback)?;
                let hard = match model.encoder.ops() {
                    crate::Ops::Fused => sprig_kernels::nn::ops::softmax_cross_entropy(&s, &label_ids)?,
                    crate::Ops::Stock => candle_nn::loss::cross_entropy(&s, &Tensor::from_vec(label_ids, idx.len(), &device)?)?,
                };
                let loss = match soft {
                    Some(t) => {
                        let tl: Vec<f32> = idx.iter().flat_map(|&i| t.train_logits[i * classes..(i + 1) * classes].iter().copied()).collect();
                        let tl = Tensor::from_vec(tl, (idx.len(), classes), &device)?;
                        let soft = distill_loss(&s, &tl, temp).map_err(TrainError::callback)?;
                        ((soft * alpha)? + (hard * (1.0 - alpha))?)?
                    }
                    None => hard,
                };
                Ok(StepLoss { loss, examples: idx.len() })
            },
            &mut hooks,
        );
    let fitted = fitted.map_err(|e| match e {
        TrainError::NonFinite { value, step, .. } => BertError::Invalid(format!("loss became {value} at step {step} (task {}, {} to {})", data.task, cfg.method.name(), cfg.sparsity)),
        e => e.into(),
    })?;
    let (gradual, select) = hooks;
    let masks = gradual.pruner.into_masks();
    let Kept { epoch: best_epoch, dev: best_dev, weights: best } = select.best.context("no evaluation at the final sparsity ran")?;
    for (n, v) in model.named_params() {
        if let Some(t) = best.iter().find(|(bn, _)| *bn == n).map(|(_, t)| t) {
            v.set(t)?;
        }
    }
    let all = model.named_params();
    masks.check_pruned_zero(&all)?;
    let test = evaluate(&model, &data.test, tc.eval_batch_size, data.pad_id)?;
    let model_numel: usize = all.iter().map(|(_, v)| v.elem_count()).sum();
    let pruned = masks.numel() - masks.count_kept();
    let summary = PruneSummary {
        task: data.task.clone(),
        model: tc.model.clone(),
        method: cfg.method.name().into(),
        granularity: cfg.granularity.clone(),
        allocation: format!("{:?}", cfg.allocation()?.kind).to_lowercase(),
        target_sparsity: cfg.sparsity,
        sparsity: masks.sparsity(),
        model_sparsity: pruned as f64 / model_numel as f64,
        teacher: teacher.map(|t| t.spec.clone()),
        distill: soft.is_some(),
        seed: tc.seed,
        steps: fitted.steps,
        epochs_run: fitted.epochs_run,
        best_epoch,
        train_seconds: fitted.train_seconds,
        train_examples_per_second: fitted.examples as f64 / fitted.train_seconds.max(1e-9),
        dev_accuracy: best_dev.accuracy,
        test_accuracy: test.accuracy,
        test_macro_f1: test.macro_f1,
        dense_dev_accuracy: teacher.map(|t| t.dev.accuracy),
        dense_test_accuracy: teacher.map(|t| t.test.accuracy),
        dev: best_dev,
        test,
        split: data.split.clone(),
        train_size: data.train.labels.len(),
    };
    Ok(Pruned { model, masks, summary })
}

/// Wanda's input norms: the inputs of every encoder linear over the first [`WANDA_CALIBRATION`]
/// training examples (padding excluded), in batches of `batch`.
fn calibrate(model: &BertClassifier, data: &TaskData, batch: usize) -> Result<ActivationNorms> {
    let n = data.train.labels.len().min(WANDA_CALIBRATION);
    let mut norms = ActivationNorms::new();
    let idx: Vec<usize> = (0..n).collect();
    for chunk in idx.chunks(batch.max(1)) {
        let (ids, types, mask) = batch_tensors(&data.train, chunk, data.pad_id, &Device::Cpu)?;
        model.encoder.observe_linear_inputs(&ids, &types, &mask, &mut |name, x| Ok(norms.observe(name, x)?))?;
    }
    tracing::info!(examples = n, "Wanda calibration");
    Ok(norms)
}

/// Soft-target loss T²·mean_b Σ_c softmax(t/T)_bc · (−log softmax(s/T)_bc) (Hinton et al. 2015,
/// §2: the T² keeps the gradient scale of the soft targets independent of T). It differs from
/// KL(p_t ‖ p_s) by the teacher's entropy, a constant.
pub fn distill_loss(student: &Tensor, teacher: &Tensor, temperature: f64) -> Result<Tensor> {
    let p = candle_nn::ops::softmax_last_dim(&(teacher / temperature)?)?;
    let logq = candle_nn::ops::log_softmax(&(student / temperature)?, candle_core::D::Minus1)?;
    let n = student.dims()[0] as f64;
    Ok(((p * logq)?.sum_all()? * (-temperature * temperature / n))?)
}

/// Dev evaluation every epoch; the best one at the final mask is kept (a copy of the weights).
struct SelectHooks<'a> {
    data: &'a TaskData,
    cfg: &'a FinetuneConfig,
    final_step: usize,
    last: Option<Report>,
    best: Option<Kept>,
}

/// The kept evaluation: its epoch, dev report and a copy of the weights.
struct Kept {
    epoch: usize,
    dev: Report,
    weights: Vec<(String, Tensor)>,
}

#[derive(Serialize)]
struct EvalRecord<'a> {
    kind: &'static str,
    epoch: usize,
    step: usize,
    split: &'static str,
    sparsity: f64,
    #[serde(flatten)]
    report: &'a Report,
}

impl Hooks<BertClassifier> for SelectHooks<'_> {
    fn evaluate(&mut self, model: &mut BertClassifier, ctx: &mut Ctx) -> sprig_train::error::Result<Option<f64>> {
        let r = evaluate(model, &self.data.dev, self.cfg.eval_batch_size, self.data.pad_id).map_err(TrainError::callback)?;
        let kept: (usize, usize) = model.named_params().iter().filter(|(n, _)| is_encoder_linear_weight(n)).try_fold((0, 0), |(z, n), (_, v)| {
            let w = v.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            Ok::<_, candle_core::Error>((z + w.iter().filter(|x| **x == 0.0).count(), n + w.len()))
        })?;
        let sparsity = kept.0 as f64 / kept.1.max(1) as f64;
        ctx.log(&EvalRecord { kind: "eval", epoch: ctx.epoch, step: ctx.step, split: "dev", sparsity, report: &r })?;
        let eligible = ctx.step >= self.final_step;
        tracing::info!(epoch = ctx.epoch, step = ctx.step, dev_accuracy = r.accuracy, sparsity, selectable = eligible, "epoch done");
        let acc = r.accuracy;
        self.last = Some(r);
        Ok(eligible.then_some(acc))
    }

    fn checkpoint(&mut self, model: &mut BertClassifier, ctx: &mut Ctx, _score: f64) -> sprig_train::error::Result<()> {
        let copy = sprig_train::fit::snapshot(&model.named_params())?;
        if let Some(r) = self.last.take() {
            self.best = Some(Kept { epoch: ctx.epoch, dev: r, weights: copy });
        }
        Ok(())
    }

    /// The kept checkpoint (`select/best/NAME`), the last report and the dropout generators.
    fn save_state(&mut self, model: &mut BertClassifier, state: &mut TrainState) -> sprig_train::error::Result<()> {
        let pos: Vec<String> = model.dropout_positions().iter().map(u128::to_string).collect();
        state.put("select/dropout", &pos)?;
        state.put("select/last", &self.last)?;
        state.put("select/best", &self.best.as_ref().map(|k| (k.epoch, &k.dev)))?;
        for (n, t) in self.best.iter().flat_map(|k| &k.weights) {
            state.put_tensor(format!("select/best/{n}"), t)?;
        }
        Ok(())
    }

    fn load_state(&mut self, model: &mut BertClassifier, state: &TrainState) -> sprig_train::error::Result<()> {
        let pos = state.get::<Vec<String>>("select/dropout")?.iter().map(|p| p.parse::<u128>()).collect::<std::result::Result<Vec<_>, _>>();
        let pos = pos.map_err(|e| TrainError::Invalid(format!("the saved dropout positions: {e}")))?;
        model.set_dropout_positions(&pos).map_err(TrainError::callback)?;
        self.last = state.get("select/last")?;
        self.best = match state.get::<Option<(usize, Report)>>("select/best")? {
            Some((epoch, dev)) => {
                let weights = model.named_params().iter().map(|(n, _)| Ok((n.clone(), state.tensor(&format!("select/best/{n}"))?.clone()))).collect::<sprig_train::error::Result<_>>()?;
                Some(Kept { epoch, dev, weights })
            }
            None => None,
        };
        Ok(())
    }
}
