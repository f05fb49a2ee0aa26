//! Fine-tuning a MoE-fied classifier ([`BertEncoder::moefy`](crate::BertEncoder::moefy)) with
//! knowledge distillation from the dense model it came from, as MoEBERT does (Zuo et al. 2022):
//! the experts, attention, embeddings and head train on `α · soft + (1 − α) · hard`; split
//! routers stay as calibrated (with MoEfication's unit gates the task loss does not reach them),
//! upcycled ones ([`BertEncoder::upcycle`](crate::BertEncoder::upcycle)) train through their
//! gates with the layers' balancing and z-losses added to the loss; the
//! dense FFN weights the experts were split from are not trained (the forward does not use them).
//! The experts' own output biases stay zero. The best epoch on dev is kept.
use crate::error::{Context, Result};
use crate::finetune::{batch_tensors, evaluate, Tokenized};
use crate::prune::distill_loss;
use crate::BertClassifier;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sprig_train::fit::{BatchOrder, Ctx, Fit, Hooks, Lr, StepInfo, StepLoss};
use sprig_train::{AdamW, AdamWConfig, LinearWarmupDecay, TrainError};

/// How to fine-tune after MoE-fication.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MoeFinetuneConfig {
    pub epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    pub warmup_ratio: f64,
    /// Weight of the soft-target loss (1: distillation only).
    pub alpha: f64,
    pub temperature: f64,
    pub seed: u64,
}

impl Default for MoeFinetuneConfig {
    /// 3 epochs at 5e-5, batch 32, 10% warm-up, α = 0.5 at T = 2 (as `sprig prune --distill`).
    fn default() -> Self {
        Self { epochs: 3, lr: 5e-5, batch_size: 32, eval_batch_size: 128, warmup_ratio: 0.1, alpha: 0.5, temperature: 2.0, seed: 42 }
    }
}

/// What fine-tuning measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MoeFinetuneSummary {
    /// Dev accuracy after each epoch.
    pub dev_curve: Vec<f64>,
    pub best_epoch: usize,
    pub best_dev_accuracy: f64,
    pub train_seconds: f64,
    pub trained_parameters: usize,
}

/// Fine-tunes the MoE-fied `model` on `train` against the dense teacher's `teacher_logits`
/// (`[train examples x classes]`, row-major), keeping the weights of its best dev epoch.
pub fn finetune_moefied(model: &mut BertClassifier, train: &Tokenized, dev: &Tokenized, teacher_logits: &[f32], pad_id: u32, cfg: &MoeFinetuneConfig) -> Result<MoeFinetuneSummary> {
    if !model.encoder.is_moefied() {
        return Err(crate::BertError::Invalid("fine-tuning after MoE-fication needs a MoE-fied encoder (call moefy first)".into()));
    }
    let classes = model.num_labels();
    if teacher_logits.len() != train.labels.len() * classes {
        return Err(crate::BertError::Invalid(format!("{} teacher logits for {} examples x {classes} classes", teacher_logits.len(), train.labels.len())));
    }
    if !((0.0..=1.0).contains(&cfg.alpha) && cfg.temperature > 0.0 && cfg.temperature.is_finite()) {
        return Err(crate::BertError::Invalid(format!("alpha {} must be in [0, 1] and temperature {} a positive number", cfg.alpha, cfg.temperature)));
    }
    let device = Device::Cpu;
    // Every parameter the forward uses: not the dense FFN weights behind the experts.
    let ffn = |n: &str| n.contains(".intermediate.dense.") || (n.contains(".output.dense.") && !n.contains(".attention."));
    let mut params: Vec<_> = model.trainable_params().into_iter().filter(|(n, _)| !ffn(n)).collect();
    // The experts' own output biases stay zero (the shared one trains), so split experts fold
    // back into one FFN exactly (`BertEncoder::fold_moe_into_ffn`). Gated (upcycled) layers also
    // train their routers, through the gates and the balancing loss.
    let gated = model.encoder.moe_is_gated();
    params.extend(model.encoder.moe_params().into_iter().filter(|(n, _)| (gated || !n.ends_with("router.weight")) && !n.ends_with(".b2")));
    let trained_parameters = params.iter().map(|(_, v)| v.elem_count()).sum();
    let mut opt = AdamW::new(params.clone(), AdamWConfig { lr: cfg.lr, weight_decay: 0.01, ..AdamWConfig::default() })?;
    let lengths: Vec<usize> = train.encoded.iter().map(|e| e.ids.len()).collect();
    let fit = Fit::new(cfg.epochs, BatchOrder::Bucketed { lengths: &lengths, batch_size: cfg.batch_size, seed: cfg.seed });
    let total = fit.total_steps()?;
    let schedule = LinearWarmupDecay { base_lr: cfg.lr, warmup: (cfg.warmup_ratio * total as f64).round() as usize, total };
    let mut hooks = KeepBest { dev, batch: cfg.eval_batch_size, pad_id, curve: Vec::new(), best: None };
    let (temp, alpha) = (cfg.temperature, cfg.alpha);
    let fitted = fit.lr(Lr::WarmupDecay(schedule)).clip(Some(1.0)).eval_each_epoch(true).progress("moefy fine-tune").run(
        model,
        &mut opt,
        params.clone(),
        |model: &mut BertClassifier, idx: &[usize], _: &StepInfo| {
            let (ids, types, mask) = batch_tensors(train, idx, pad_id, &device).map_err(TrainError::callback)?;
            model.encoder.take_moe_aux_loss().map_err(TrainError::callback)?; // nothing from earlier forwards
            let label_ids: Vec<u32> = idx.iter().map(|&i| train.labels[i] as u32).collect();
            let s = model.forward(&ids, &types, &mask, true).map_err(TrainError::callback)?;
            let hard = sprig_kernels::nn::ops::softmax_cross_entropy(&s, &label_ids)?;
            let tl: Vec<f32> = idx.iter().flat_map(|&i| teacher_logits[i * classes..(i + 1) * classes].iter().copied()).collect();
            let soft = distill_loss(&s, &Tensor::from_vec(tl, (idx.len(), classes), &device)?, temp).map_err(TrainError::callback)?;
            let mut loss = ((soft * alpha)? + (hard * (1.0 - alpha))?)?;
            if let Some(aux) = model.encoder.take_moe_aux_loss().map_err(TrainError::callback)? {
                loss = (loss + aux)?;
            }
            Ok(StepLoss { loss, examples: idx.len() })
        },
        &mut hooks,
    )?;
    let (best_epoch, best_dev_accuracy, weights) = hooks.best.context("no evaluation ran")?;
    for ((_, v), t) in params.iter().zip(&weights) {
        v.set(t)?;
    }
    Ok(MoeFinetuneSummary { dev_curve: hooks.curve, best_epoch, best_dev_accuracy, train_seconds: fitted.train_seconds, trained_parameters })
}

/// Dev accuracy every epoch; a copy of the trained weights at the best one.
struct KeepBest<'a> {
    dev: &'a Tokenized,
    batch: usize,
    pad_id: u32,
    curve: Vec<f64>,
    best: Option<(usize, f64, Vec<Tensor>)>,
}

impl Hooks<BertClassifier> for KeepBest<'_> {
    fn evaluate(&mut self, model: &mut BertClassifier, ctx: &mut Ctx) -> sprig_train::error::Result<Option<f64>> {
        let acc = evaluate(model, self.dev, self.batch, self.pad_id).map_err(TrainError::callback)?.accuracy;
        tracing::info!(epoch = ctx.epoch, dev_accuracy = acc, "MoE fine-tune epoch");
        self.curve.push(acc);
        Ok(Some(acc))
    }
    fn checkpoint(&mut self, _model: &mut BertClassifier, ctx: &mut Ctx, score: f64) -> sprig_train::error::Result<()> {
        let weights = ctx.params.iter().map(|(_, v)| v.as_tensor().copy()).collect::<candle_core::Result<Vec<_>>>()?;
        self.best = Some((ctx.epoch, score, weights));
        Ok(())
    }
}
