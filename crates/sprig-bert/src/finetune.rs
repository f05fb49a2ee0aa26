//! Fine-tuning a BERT classifier on a text task: AdamW with linear warm-up and decay, gradient
//! clipping, evaluation every epoch, the best-on-dev checkpoint kept, deterministic for a seed.
use crate::checkpoint::{save_classifier, Checkpoint};
use crate::config::Pooling;
use crate::model::BertClassifier;
use crate::tokenizer::{BertTokenizer, Encoded};
use crate::error::{Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sprig_data::batch::pad;
use sprig_data::metrics::{report, Report};
use sprig_data::{TextDataset, TextExample};
use sprig_train::fit::{BatchOrder, Ctx, Fit, Hooks, Lr, StepInfo, StepLoss};
use sprig_train::{AdamW, AdamWConfig, LinearWarmupDecay, MetricsLog, TrainError};
use std::path::Path;
use std::time::Instant;

/// Everything that defines a fine-tuning run; written to `config.toml` in the run directory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneConfig {
    /// Local checkpoint directory or hub id.
    pub model: String,
    pub task: String,
    pub seed: u64,
    pub epochs: usize,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Fraction of all steps used for linear warm-up.
    pub warmup_ratio: f64,
    /// Clip the global gradient norm to this (0 turns clipping off).
    pub max_grad_norm: f64,
    pub max_seq_len: usize,
    pub pooling: Pooling,
    /// Train the word-embedding matrix (11.7M of MiniLM's 22.7M weights). Off by default: it
    /// changes accuracy little and costs a quarter of the step time on CPU.
    pub train_word_embeddings: bool,
    /// Cap on training/dev/test examples (0 = all); subsets are stratified and seeded.
    pub max_train: usize,
    pub max_dev: usize,
    pub max_test: usize,
    /// Stop after this many optimizer steps (0 = run all epochs). For smoke tests.
    pub max_steps: usize,
    /// Layer implementation: `fused` (sprig-kernels ops, default) or `stock` (candle's ops).
    #[serde(default)]
    pub ops: crate::Ops,
    /// Keep only the first N encoder layers of the model (a smaller dense net,
    /// [`crate::checkpoint::keep_layers`]); 0 keeps all.
    #[serde(default)]
    pub layers: usize,
    /// Testing aid: make the loss NaN at this step to exercise the NaN guard.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug_nan_at_step: Option<usize>,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            model: "sentence-transformers/all-MiniLM-L6-v2".into(),
            task: "rt-sentiment".into(),
            seed: 42,
            epochs: 3,
            batch_size: 32,
            eval_batch_size: 128,
            lr: 5e-5,
            weight_decay: 0.01,
            warmup_ratio: 0.1,
            max_grad_norm: 1.0,
            max_seq_len: 128,
            pooling: Pooling::Mean,
            train_word_embeddings: false,
            max_train: 0,
            max_dev: 0,
            max_test: 0,
            max_steps: 0,
            ops: crate::Ops::default(),
            layers: 0,
            debug_nan_at_step: None,
        }
    }
}

impl FinetuneConfig {
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 || self.eval_batch_size == 0 {
            bail!("epochs, batch_size and eval_batch_size must be positive");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("lr must be a positive number, got {}", self.lr);
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            bail!("warmup_ratio must be in [0, 1), got {}", self.warmup_ratio);
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            bail!("weight_decay must be a finite number >= 0, got {}", self.weight_decay);
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            bail!("max_grad_norm must be a finite number >= 0 (0 turns clipping off), got {}", self.max_grad_norm);
        }
        if self.max_seq_len < 2 {
            bail!("max_seq_len must be at least 2, got {}", self.max_seq_len);
        }
        Ok(())
    }
}

/// What a run reports in `summary.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FinetuneSummary {
    pub task: String,
    pub model: String,
    pub seed: u64,
    pub steps: usize,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub train_seconds: f64,
    pub train_examples_per_second: f64,
    pub dev_accuracy: f64,
    pub test_accuracy: f64,
    pub test_macro_f1: f64,
    pub test_mcc: f64,
    pub test_ece: f64,
    pub dev: Report,
    pub test: Report,
    pub split: sprig_data::SplitInfo,
    pub train_size: usize,
    pub trainable_parameters: usize,
}

/// Tokenized examples of one split.
pub struct Tokenized {
    pub encoded: Vec<Encoded>,
    pub labels: Vec<usize>,
}

pub fn tokenize(tok: &BertTokenizer, examples: &[TextExample]) -> Result<Tokenized> {
    let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
    Ok(Tokenized { encoded: tok.encode_batch(&texts)?, labels: examples.iter().map(|e| e.label).collect() })
}

/// Tensors `(input_ids, token_type_ids, attention_mask)` for the examples at `idx`.
pub fn batch_tensors(data: &Tokenized, idx: &[usize], pad_id: u32, device: &Device) -> Result<(Tensor, Tensor, Tensor)> {
    let ids: Vec<&[u32]> = idx.iter().map(|&i| data.encoded[i].ids.as_slice()).collect();
    let b = pad(&ids, pad_id);
    let shape = (b.batch, b.seq_len);
    // Segment ids: all zero for single-sentence tasks, padded like the ids.
    let mut type_ids = vec![0u32; b.batch * b.seq_len];
    for (r, &i) in idx.iter().enumerate() {
        let t = &data.encoded[i].type_ids;
        type_ids[r * b.seq_len..r * b.seq_len + t.len()].copy_from_slice(t);
    }
    Ok((
        Tensor::from_vec(b.ids, shape, device)?,
        Tensor::from_vec(type_ids, shape, device)?,
        Tensor::from_vec(b.attention_mask, shape, device)?,
    ))
}

/// Class probabilities (row-major `n x C`) for every example, in order.
pub fn predict(model: &BertClassifier, data: &Tokenized, batch_size: usize, pad_id: u32) -> Result<Vec<f32>> {
    outputs(model, data, batch_size, pad_id, true)
}

/// Logits (row-major `n x C`) for every example, in order (no dropout).
pub fn logits(model: &BertClassifier, data: &Tokenized, batch_size: usize, pad_id: u32) -> Result<Vec<f32>> {
    outputs(model, data, batch_size, pad_id, false)
}

fn outputs(model: &BertClassifier, data: &Tokenized, batch_size: usize, pad_id: u32, softmax: bool) -> Result<Vec<f32>> {
    let n = data.labels.len();
    let c = model.num_labels();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| data.encoded[i].ids.len());
    let mut probs = vec![0f32; n * c];
    for chunk in order.chunks(batch_size) {
        let (ids, types, mask) = batch_tensors(data, chunk, pad_id, model.encoder.device())?;
        let logits = model.predict(&ids, &types, &mask)?;
        let p = if softmax { candle_nn::ops::softmax_last_dim(&logits)? } else { logits }.to_vec2::<f32>()?;
        for (row, &i) in chunk.iter().enumerate() {
            probs[i * c..(i + 1) * c].copy_from_slice(&p[row]);
        }
    }
    Ok(probs)
}

pub fn evaluate(model: &BertClassifier, data: &Tokenized, batch_size: usize, pad_id: u32) -> Result<Report> {
    if data.labels.is_empty() {
        bail!("cannot evaluate on an empty split");
    }
    if let Some(&l) = data.labels.iter().find(|&&l| l >= model.num_labels()) {
        bail!("label {l} is outside the classifier's {} classes (0..{}): the head does not fit this task", model.num_labels(), model.num_labels());
    }
    let probs = predict(model, data, batch_size, pad_id)?;
    Ok(report(&probs, model.num_labels(), &data.labels))
}

#[derive(Serialize)]
struct EvalRecord<'a> {
    kind: &'static str,
    epoch: usize,
    step: usize,
    split: &'a str,
    #[serde(flatten)]
    report: &'a Report,
}

/// Fine-tune on `data` and write the run into `out`: `metrics.jsonl`, the best-on-dev checkpoint
/// (`config.json`, `model.safetensors`, `tokenizer.json`) and `summary.json`. The caller writes
/// `config.toml`.
pub fn finetune(cfg: &FinetuneConfig, data: &TextDataset, out: &Path) -> Result<FinetuneSummary> {
    cfg.validate()?;
    let device = Device::Cpu;
    let cap = |n: usize| if n == 0 { usize::MAX } else { n };
    let data = if cfg.max_train == 0 && cfg.max_dev == 0 && cfg.max_test == 0 {
        data.clone()
    } else {
        data.subsample(cap(cfg.max_train), cap(cfg.max_dev), cap(cfg.max_test), cfg.seed)
    };
    for (name, split) in [("train", &data.train), ("dev", &data.dev), ("test", &data.test)] {
        if split.is_empty() {
            bail!("task {}: the {name} split is empty", data.task);
        }
    }
    let ckpt = Checkpoint::load_layers(&cfg.model, cfg.layers, &device).with_context(|| format!("loading model {}", cfg.model))?;
    let tok_path = ckpt.files.tokenizer()?.to_path_buf();
    let tok = BertTokenizer::from_file(&tok_path, cfg.max_seq_len.min(ckpt.config.max_position_embeddings))?;
    let mut encoder = ckpt.encoder(cfg.seed, &device)?;
    encoder.set_train_word_embeddings(cfg.train_word_embeddings);
    encoder.set_ops(cfg.ops);
    let model = BertClassifier::new(encoder, data.classes.len(), cfg.pooling, None, cfg.seed)?;
    drop(ckpt);

    let t0 = Instant::now();
    let train = tokenize(&tok, &data.train)?;
    let dev = tokenize(&tok, &data.dev)?;
    let test = tokenize(&tok, &data.test)?;
    tracing::info!(
        train = train.labels.len(), dev = dev.labels.len(), test = test.labels.len(),
        seconds = t0.elapsed().as_secs_f64(), "tokenized {}", data.task
    );

    let params = model.trainable_params();
    let n_trainable: usize = params.iter().map(|(_, v)| v.elem_count()).sum();
    let mut opt = AdamW::new(
        params.clone(),
        AdamWConfig { lr: cfg.lr, weight_decay: cfg.weight_decay, eps: 1e-8, ..AdamWConfig::default() },
    )?;
    let lengths: Vec<usize> = train.encoded.iter().map(|e| e.ids.len()).collect();

    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // The checkpoint lives in the run directory itself, so `--model DIR` loads it.
    let ckpt_dir = out.to_path_buf();
    let mut log = MetricsLog::create(&out.join("metrics.jsonl"))?;
    let fit = Fit::new(cfg.epochs, BatchOrder::Bucketed { lengths: &lengths, batch_size: cfg.batch_size, seed: cfg.seed })
        .max_steps((cfg.max_steps > 0).then_some(cfg.max_steps));
    let total_steps = fit.total_steps()?;
    let schedule = LinearWarmupDecay { base_lr: cfg.lr, warmup: (cfg.warmup_ratio * total_steps as f64).round() as usize, total: total_steps };
    let fit = fit
        .lr(Lr::WarmupDecay(schedule))
        .clip(Some(cfg.max_grad_norm))
        .eval_each_epoch(true)
        .progress(format!("finetune {}", data.task))
        .metrics(&mut log);
    let mut model = model;
    let mut hooks = FinetuneHooks { dev: &dev, cfg, task: &data.task, classes: &data.classes, tok_path: &tok_path, ckpt_dir: &ckpt_dir, pad_id: tok.pad_id(), last: None, best: None };
    let mut at: Option<StepInfo> = None;
    let fitted = fit.run(
        &mut model,
        &mut opt,
        params,
        |model: &mut BertClassifier, idx: &[usize], info: &StepInfo| {
            at = Some(*info);
            let (ids, types, mask) = batch_tensors(&train, idx, tok.pad_id(), &device).map_err(TrainError::callback)?;
            let label_ids: Vec<u32> = idx.iter().map(|&i| train.labels[i] as u32).collect();
            let logits = model.forward(&ids, &types, &mask, true).map_err(TrainError::callback)?;
            let mut loss = match model.encoder.ops() {
                crate::Ops::Fused => sprig_kernels::nn::ops::softmax_cross_entropy(&logits, &label_ids)?,
                crate::Ops::Stock => candle_nn::loss::cross_entropy(&logits, &Tensor::from_vec(label_ids, idx.len(), &device)?)?,
            };
            if cfg.debug_nan_at_step == Some(info.step) {
                loss = (loss * f64::NAN)?;
            }
            Ok(StepLoss { loss, examples: idx.len() })
        },
        &mut hooks,
    );
    let fitted = match fitted {
        Ok(f) => f,
        Err(TrainError::NonFinite { value, step, .. }) => {
            let (epoch, lr) = at.map_or((0, f64::NAN), |i| (i.epoch, i.lr));
            let kept = match &hooks.best {
                Some((e, _)) => format!("the last good checkpoint (epoch {e}) is kept in {}", ckpt_dir.display()),
                None => "no checkpoint had been written yet".into(),
            };
            bail!("loss became {value} at step {step} (epoch {epoch}, lr {lr:.3e}); training stopped; {kept}");
        }
        Err(e) => return Err(e.into()),
    };
    let step = fitted.steps;
    let (best_epoch, dev_report) = hooks.best.take().context("no evaluation ran")?;
    // Evaluate the best-on-dev checkpoint on test.
    let best_model = Checkpoint::load(ckpt_dir.to_str().context("non-UTF-8 output path")?, &device)?.classifier(cfg.seed, &device)?;
    let test_report = evaluate(&best_model, &test, cfg.eval_batch_size, tok.pad_id())?;
    log.log(&EvalRecord { kind: "eval", epoch: best_epoch, step, split: "test", report: &test_report })?;
    let summary = FinetuneSummary {
        task: data.task.clone(),
        model: cfg.model.clone(),
        seed: cfg.seed,
        steps: step,
        epochs_run: fitted.epochs_run,
        best_epoch,
        train_seconds: fitted.train_seconds,
        train_examples_per_second: fitted.examples as f64 / fitted.train_seconds.max(1e-9),
        dev_accuracy: dev_report.accuracy,
        test_accuracy: test_report.accuracy,
        test_macro_f1: test_report.macro_f1,
        test_mcc: test_report.mcc,
        test_ece: test_report.ece,
        dev: dev_report,
        test: test_report,
        split: data.split.clone(),
        train_size: train.labels.len(),
        trainable_parameters: n_trainable,
    };
    sprig_train::write_json(&out.join("summary.json"), &summary)?;
    Ok(summary)
}

/// The fine-tune's evaluation and best-on-dev checkpoint, as hooks of the training loop.
struct FinetuneHooks<'a> {
    dev: &'a Tokenized,
    cfg: &'a FinetuneConfig,
    task: &'a str,
    classes: &'a [String],
    tok_path: &'a Path,
    ckpt_dir: &'a Path,
    pad_id: u32,
    /// The latest dev report, and the best one with its epoch.
    last: Option<Report>,
    best: Option<(usize, Report)>,
}

impl Hooks<BertClassifier> for FinetuneHooks<'_> {
    fn evaluate(&mut self, model: &mut BertClassifier, ctx: &mut Ctx) -> sprig_train::error::Result<Option<f64>> {
        let r = evaluate(model, self.dev, self.cfg.eval_batch_size, self.pad_id).map_err(TrainError::callback)?;
        ctx.log(&EvalRecord { kind: "eval", epoch: ctx.epoch, step: ctx.step, split: "dev", report: &r })?;
        tracing::info!(epoch = ctx.epoch, step = ctx.step, dev_accuracy = r.accuracy, "epoch done");
        let acc = r.accuracy;
        self.last = Some(r);
        Ok(Some(acc))
    }

    fn checkpoint(&mut self, model: &mut BertClassifier, ctx: &mut Ctx, _score: f64) -> sprig_train::error::Result<()> {
        let meta = [("task", self.task.to_string()), ("epoch", ctx.epoch.to_string()), ("step", ctx.step.to_string()), ("seed", self.cfg.seed.to_string())]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        save_classifier(model, self.classes, self.tok_path, self.ckpt_dir, meta).map_err(TrainError::callback)?;
        self.best = self.last.take().map(|r| (ctx.epoch, r));
        Ok(())
    }
}
