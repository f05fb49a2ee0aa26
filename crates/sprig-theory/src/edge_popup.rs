//! Strong lottery tickets by edge-popup (Ramanujan, Wortsman, Kembhavi, Farhadi & Rastegari 2020,
//! "What's Hidden in a Randomly Weighted Neural Network?", Algorithm 1 / §3).
//!
//! An MLP `d_in → hidden.. → classes` with **no biases** keeps its weights frozen at random init.
//! Each weight has a learned score `s`; the forward pass of layer `l` uses
//! `W_eff = W ∘ h(|s|)`, where `h` keeps the top `keep · numel` scores of the layer by `|s|` (exactly
//! that many, ties broken by index) as in the paper's `GetSubnet` on `scores.abs()`. The gradient
//! goes straight through `h`: `W_eff = W ∘ (m + |s| − detach(|s|))` with `m = detach(h(|s|))`, so
//! `∂L/∂s = sign(s) · (∂L/∂W_eff) ∘ W` (the paper's eq. (2) with the official code's `abs`).
//!
//! Init (paper §4 / Appendix): [`WeightInit::SignedConstant`] draws `±σ` with
//! `σ = √(2 / fan_in)` ("Signed Kaiming Constant"), [`WeightInit::KaimingNormal`] `N(0, σ²)`; with
//! `scale_fan` (the paper's "scaled" variant) `σ = √(2 / (keep · fan_in))`, compensating the
//! smaller kept fan-in. Scores: Kaiming uniform `U(±1/√fan_in)` (PyTorch's `kaiming_uniform_`
//! with `a = √5`, as in the official code).
//!
//! Optimiser: SGD with momentum 0.9 and weight decay on the scores, cosine learning-rate decay
//! per step (paper: SGD, momentum 0.9, cosine decay) via `sprig-train`'s mask-free [`Sgd`].
//! Model selection: the epoch with the best dev accuracy; test accuracy is reported at that epoch.
use candle_core::{Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sprig_data::{ImageDataset, ImageSplit};
use sprig_kernels::candle::matmul_cpu_invariant;
use sprig_train::sgd::{Sgd, SgdConfig};
use sprig_train::vision::{self, Arch, OptimChoice, TrainConfig, VisionModel};
use sprig_train::Optimizer;

use crate::error::{invalid, Result};

/// How the frozen weights are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightInit {
    /// `±σ`, sign uniform ("Signed Kaiming Constant").
    SignedConstant,
    /// `N(0, σ²)`.
    KaimingNormal,
}

impl std::str::FromStr for WeightInit {
    type Err = crate::TheoryError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "signed-constant" | "signed_constant" => Ok(Self::SignedConstant),
            "kaiming-normal" | "kaiming_normal" => Ok(Self::KaimingNormal),
            _ => invalid("weight init", s, "expected signed-constant or kaiming-normal"),
        }
    }
}

/// One edge-popup run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EdgePopupConfig {
    /// Hidden widths (LeNet-300-100: `[300, 100]`).
    pub hidden: Vec<usize>,
    /// Fraction of every layer's weights kept, in (0, 1].
    pub keep: f64,
    pub init: WeightInit,
    pub scale_fan: bool,
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate of the cosine schedule.
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Seed of weights and scores.
    pub seed: u64,
    /// Seed of the batch order.
    pub data_seed: u64,
}

impl Default for EdgePopupConfig {
    fn default() -> Self {
        Self {
            hidden: vec![300, 100],
            keep: 0.5,
            init: WeightInit::SignedConstant,
            scale_fan: true,
            epochs: 10,
            batch_size: 128,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            seed: 0,
            data_seed: 0,
        }
    }
}

impl EdgePopupConfig {
    /// Refuses empty/zero widths, a kept fraction outside (0, 1], zero epochs or batch size.
    pub fn validate(&self) -> Result<()> {
        if self.hidden.is_empty() || self.hidden.contains(&0) {
            return invalid("hidden widths", format!("{:?}", self.hidden), "need at least one hidden layer, each width >= 1");
        }
        if !(self.keep > 0.0 && self.keep <= 1.0) {
            return invalid("keep", self.keep, "the kept fraction must be in (0, 1]");
        }
        if self.epochs == 0 || self.batch_size == 0 {
            return invalid("epochs / batch_size", format!("{} / {}", self.epochs, self.batch_size), "both must be >= 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return invalid("lr", self.lr, "must be finite and > 0");
        }
        Ok(())
    }
}

/// Number of weights kept out of `numel` at fraction `keep`: `round(keep · numel)`, at least 1.
pub fn kept_count(numel: usize, keep: f64) -> usize {
    ((keep * numel as f64).round() as usize).clamp(1, numel.max(1))
}

/// The top-`k` mask of `|scores|` (1 kept, 0 pruned), exactly `k` ones; ties by lower index.
pub fn topk_mask(scores: &[f32], k: usize) -> Vec<f32> {
    let mut mask = vec![0f32; scores.len()];
    if k >= scores.len() {
        mask.iter_mut().for_each(|m| *m = 1.0);
        return mask;
    }
    let mut idx: Vec<u32> = (0..scores.len() as u32).collect();
    let cmp = |a: &u32, b: &u32| scores[*b as usize].abs().total_cmp(&scores[*a as usize].abs()).then(a.cmp(b));
    if k > 0 {
        idx.select_nth_unstable_by(k - 1, cmp);
        for &i in &idx[..k] {
            mask[i as usize] = 1.0;
        }
    }
    mask
}

/// An MLP with frozen random weights and one learned score per weight.
pub struct EdgePopupMlp {
    /// Widths `[d_in, hidden.., classes]`.
    pub dims: Vec<usize>,
    /// Frozen weights, `out x in`.
    pub weights: Vec<Tensor>,
    /// Scores, same shapes (the only trained parameters).
    pub scores: Vec<Var>,
    pub keep: f64,
}

impl EdgePopupMlp {
    /// Weights and scores drawn from `ChaCha8Rng(seed)` as the module docs say.
    pub fn new(d_in: usize, hidden: &[usize], classes: usize, keep: f64, init: WeightInit, scale_fan: bool, seed: u64) -> Result<Self> {
        let mut dims = vec![d_in];
        dims.extend_from_slice(hidden);
        dims.push(classes);
        if dims.contains(&0) {
            return invalid("widths", format!("{dims:?}"), "every width must be >= 1");
        }
        if !(keep > 0.0 && keep <= 1.0) {
            return invalid("keep", keep, "the kept fraction must be in (0, 1]");
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut weights, mut scores) = (Vec::new(), Vec::new());
        for w in dims.windows(2) {
            let (fan_in, out) = (w[0], w[1]);
            let n = fan_in * out;
            let eff_fan = if scale_fan { keep * fan_in as f64 } else { fan_in as f64 };
            let sigma = (2.0 / eff_fan).sqrt() as f32;
            let wv: Vec<f32> = match init {
                WeightInit::SignedConstant => (0..n).map(|_| if rng.random::<bool>() { sigma } else { -sigma }).collect(),
                WeightInit::KaimingNormal => (0..n)
                    .map(|_| {
                        let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
                        sigma * ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
                    })
                    .collect(),
            };
            let bound = 1.0 / (fan_in as f32).sqrt();
            let sv: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
            weights.push(Tensor::from_vec(wv, (out, fan_in), &Device::Cpu)?);
            scores.push(Var::from_tensor(&Tensor::from_vec(sv, (out, fan_in), &Device::Cpu)?)?);
        }
        Ok(Self { dims, weights, scores, keep })
    }

    /// Current top-k masks of every layer (detached, `out x in`).
    pub fn masks(&self) -> Result<Vec<Tensor>> {
        self.scores
            .iter()
            .map(|s| {
                let v = s.as_tensor().flatten_all()?.to_vec1::<f32>()?;
                let m = topk_mask(&v, kept_count(v.len(), self.keep));
                Ok(Tensor::from_vec(m, s.shape(), &Device::Cpu)?)
            })
            .collect()
    }

    /// Realised kept fraction and kept count of every layer.
    pub fn kept(&self) -> Result<Vec<(f64, usize)>> {
        self.masks()?
            .iter()
            .map(|m| {
                let k = m.sum_all()?.to_scalar::<f32>()? as usize;
                Ok((k as f64 / m.elem_count() as f64, k))
            })
            .collect()
    }

    /// Logits; `train` routes the straight-through gradient to the scores.
    pub fn forward(&self, x: &Tensor, masks: &[Tensor], train: bool) -> Result<Tensor> {
        let mut h = x.clone();
        for (l, (w, m)) in self.weights.iter().zip(masks).enumerate() {
            let gate = if train {
                let a = self.scores[l].as_tensor().abs()?;
                (m + (&a - a.detach())?)?
            } else {
                m.clone()
            };
            let weff = (w * gate)?;
            h = matmul_cpu_invariant(&h, &weff.t()?)?;
            if l + 1 < self.weights.len() {
                h = h.relu()?;
            }
        }
        Ok(h)
    }

    /// Accuracy on `split` with the current masks.
    pub fn accuracy(&self, split: &ImageSplit) -> Result<f64> {
        let masks = self.masks()?;
        let d = self.dims[0];
        let mut pred = Vec::with_capacity(split.len());
        let all: Vec<usize> = (0..split.len()).collect();
        for idx in all.chunks(1000) {
            let (x, _) = vision::batch_tensor(split, idx, d, &Device::Cpu)?;
            let p = self.forward(&x, &masks, false)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
            pred.extend(p.into_iter().map(|v| v as usize));
        }
        Ok(sprig_data::metrics::accuracy(&pred, &split.labels))
    }
}

/// One point of a training curve.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochPoint {
    pub epoch: usize,
    /// Mean training loss over the epoch (`None` where the trainer does not report it).
    pub train_loss: Option<f64>,
    pub dev_acc: f64,
    pub seconds: f64,
}

/// What [`train_edge_popup`] returns.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EdgePopupOutcome {
    pub config: EdgePopupConfig,
    pub dims: Vec<usize>,
    pub curve: Vec<EpochPoint>,
    pub best_epoch: usize,
    pub best_dev_acc: f64,
    /// Test accuracy of the best-dev epoch's subnetwork.
    pub test_acc: f64,
    /// Realised kept fraction per layer (of the selected subnetwork).
    pub kept_per_layer: Vec<f64>,
    pub total_weights: usize,
    pub kept_weights: usize,
    pub seconds: f64,
}

/// Trains the scores of an [`EdgePopupMlp`] on `data.train` (module docs); `progress` sees every
/// epoch's point.
pub fn train_edge_popup(cfg: &EdgePopupConfig, data: &ImageDataset, progress: &mut dyn FnMut(&EpochPoint)) -> Result<EdgePopupOutcome> {
    cfg.validate()?;
    if data.train.is_empty() || data.dev.is_empty() || data.test.is_empty() {
        return invalid("dataset splits", format!("{}/{}/{}", data.train.len(), data.dev.len(), data.test.len()), "train, dev and test must be non-empty");
    }
    let t0 = std::time::Instant::now();
    let d = data.height * data.width;
    let model = EdgePopupMlp::new(d, &cfg.hidden, data.classes.len(), cfg.keep, cfg.init, cfg.scale_fan, cfg.seed)?;
    let named: Vec<(String, Var)> = model.scores.iter().enumerate().map(|(i, s)| (format!("fc{}.scores", i + 1), s.clone())).collect();
    let mut opt = Sgd::new(named, SgdConfig { lr: cfg.lr, momentum: cfg.momentum, nesterov: false, weight_decay: cfg.weight_decay })?;
    let n = data.train.len();
    let steps_per_epoch = n.div_ceil(cfg.batch_size);
    let total = steps_per_epoch * cfg.epochs;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.data_seed);
    let mut curve = Vec::new();
    let mut best: Option<(usize, f64, Vec<Tensor>)> = None;
    let mut step = 0usize;
    for epoch in 1..=cfg.epochs {
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let mut loss_sum = 0f64;
        for idx in order.chunks(cfg.batch_size) {
            let lr = 0.5 * cfg.lr * (1.0 + (std::f64::consts::PI * step as f64 / total as f64).cos());
            opt.set_learning_rate(lr);
            let (x, y) = vision::batch_tensor(&data.train, idx, d, &Device::Cpu)?;
            let masks = model.masks()?;
            let loss = candle_nn::loss::cross_entropy(&model.forward(&x, &masks, true)?, &y)?;
            let l = loss.to_scalar::<f32>()? as f64;
            if !l.is_finite() {
                return invalid("training loss", l, format!("non-finite at step {step}"));
            }
            loss_sum += l * idx.len() as f64;
            opt.step(&loss.backward()?)?;
            step += 1;
        }
        let dev_acc = model.accuracy(&data.dev)?;
        let point = EpochPoint { epoch, train_loss: Some(loss_sum / n as f64), dev_acc, seconds: t0.elapsed().as_secs_f64() };
        progress(&point);
        curve.push(point);
        if best.as_ref().is_none_or(|b| dev_acc > b.1) {
            let snap = model.scores.iter().map(|s| s.as_tensor().copy()).collect::<candle_core::Result<Vec<_>>>()?;
            best = Some((epoch, dev_acc, snap));
        }
    }
    let (best_epoch, best_dev_acc, snap) = best.expect("epochs >= 1");
    for (s, t) in model.scores.iter().zip(&snap) {
        s.set(t)?;
    }
    let test_acc = model.accuracy(&data.test)?;
    let kept = model.kept()?;
    let total_weights = model.scores.iter().map(|s| s.elem_count()).sum();
    Ok(EdgePopupOutcome {
        config: cfg.clone(),
        dims: model.dims.clone(),
        curve,
        best_epoch,
        best_dev_acc,
        test_acc,
        kept_per_layer: kept.iter().map(|k| k.0).collect(),
        total_weights,
        kept_weights: kept.iter().map(|k| k.1).sum(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The dense reference: LeNet-300-100 trained normally (sprig-train's [`VisionModel`] and loop).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DenseConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Adam learning rate (constant).
    pub lr: f64,
    pub seed: u64,
    pub data_seed: u64,
}

impl Default for DenseConfig {
    fn default() -> Self {
        Self { epochs: 30, batch_size: 128, lr: 1e-3, seed: 0, data_seed: 0 }
    }
}

/// What [`train_dense_lenet300`] returns.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DenseOutcome {
    pub config: DenseConfig,
    /// Dev accuracy after every epoch (the convergence curve).
    pub curve: Vec<EpochPoint>,
    pub best_epoch: usize,
    pub best_dev_acc: f64,
    /// Test accuracy of the best-dev epoch's weights.
    pub test_acc: f64,
    pub seconds: f64,
}

/// Trains LeNet-300-100 with Adam, evaluating dev after every epoch and testing the best-dev epoch.
pub fn train_dense_lenet300(cfg: &DenseConfig, data: &ImageDataset, progress: &mut dyn FnMut(&EpochPoint)) -> Result<DenseOutcome> {
    if cfg.epochs == 0 || cfg.batch_size == 0 {
        return invalid("epochs / batch_size", format!("{} / {}", cfg.epochs, cfg.batch_size), "both must be >= 1");
    }
    if data.train.is_empty() || data.dev.is_empty() || data.test.is_empty() {
        return invalid("dataset splits", format!("{}/{}/{}", data.train.len(), data.dev.len(), data.test.len()), "train, dev and test must be non-empty");
    }
    let t0 = std::time::Instant::now();
    let model = VisionModel::new(Arch::Lenet300, data.height, data.width, data.classes.len(), cfg.seed, &Device::Cpu)?;
    let tc = TrainConfig {
        epochs: cfg.epochs,
        batch_size: cfg.batch_size,
        optim: OptimChoice::Adam { lr: cfg.lr },
        data_seed: cfg.data_seed,
        snapshot_step: None,
    };
    let spe = data.train.len().div_ceil(cfg.batch_size);
    let mut curve = Vec::new();
    let mut best: Option<(usize, f64, Vec<Tensor>)> = None;
    let mut cb = |step: usize, m: &VisionModel| -> sprig_train::error::Result<()> {
        if step.is_multiple_of(spe) {
            let dev_acc = vision::evaluate(m, &data.dev)?;
            let p = EpochPoint { epoch: step / spe, train_loss: None, dev_acc, seconds: t0.elapsed().as_secs_f64() };
            progress(&p);
            curve.push(p);
            if best.as_ref().is_none_or(|b| dev_acc > b.1) {
                best = Some((step / spe, dev_acc, m.snapshot()?));
            }
        }
        Ok(())
    };
    vision::train(&model, &data.train, &tc, &sprig_prune::MaskSet::new(), &mut cb)?;
    let (best_epoch, best_dev_acc, snap) = match best {
        Some(b) => b,
        None => return invalid("epochs", cfg.epochs, "no epoch finished"),
    };
    model.restore(&snap)?;
    let test_acc = vision::evaluate(&model, &data.test)?;
    Ok(DenseOutcome { config: cfg.clone(), curve, best_epoch, best_dev_acc, test_acc, seconds: t0.elapsed().as_secs_f64() })
}

/// Standardises pixels with the train split's mean and std (the same affine map on every split).
pub fn standardise(data: &ImageDataset) -> ImageDataset {
    let px = &data.train.images;
    let mean = px.iter().map(|&v| v as f64).sum::<f64>() / px.len().max(1) as f64;
    let std = (px.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / px.len().max(1) as f64).sqrt().max(1e-12);
    let map = |s: &ImageSplit| ImageSplit { images: s.images.iter().map(|&v| ((v as f64 - mean) / std) as f32).collect(), labels: s.labels.clone() };
    ImageDataset { train: map(&data.train), dev: map(&data.dev), test: map(&data.test), ..data.clone() }
}

/// A seeded subset: at most `train`/`dev`/`test` images of each split (for tests and quick runs).
pub fn subsample(data: &ImageDataset, train: usize, dev: usize, test: usize, seed: u64) -> ImageDataset {
    let hw = data.height * data.width;
    let pick = |s: &ImageSplit, k: usize, salt: u64| {
        let idx = crate::pick_indices(s.len(), k, seed ^ salt);
        ImageSplit {
            images: idx.iter().flat_map(|&i| s.images[i * hw..(i + 1) * hw].iter().copied()).collect(),
            labels: idx.iter().map(|&i| s.labels[i]).collect(),
        }
    };
    ImageDataset { train: pick(&data.train, train, 1), dev: pick(&data.dev, dev, 2), test: pick(&data.test, test, 3), ..data.clone() }
}
