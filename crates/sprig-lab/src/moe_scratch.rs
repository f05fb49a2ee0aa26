//! MoE classifiers trained from scratch: a token model with one residual MoE FFN block, on
//! Fashion-MNIST (16 patches of 7x7 pixels as tokens) or a text task (hashed words as tokens),
//! against dense FFNs of equal active or equal total width. The router table (top-1, top-2,
//! expert choice, hash), the capacity sweep and the balancing-loss ablation are cells of one grid.
//!
//! Model: `tokens -> x = embed + position; x = x + FFN(LN(x)); mean over tokens -> linear`, where
//! `FFN` is a [`MoeFfn`] (a dense FFN is the one-expert, dropless case). Loss: cross-entropy plus
//! the layer's auxiliary loss (Switch balancing, ST-MoE z-loss). Evaluation reports accuracy and,
//! summed over the evaluation split, the expert load's coefficient of variation and the dropped
//! fraction.
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sprig_moe::{coefficient_of_variation, Capacity, MoeConfig, MoeFfn, RouterConfig, Routing};
use sprig_train::{AdamW, AdamWConfig, LinearWarmupDecay, Optimizer};

/// Patch side for images: 28x28 becomes 16 tokens of 49 pixels.
const PATCH: usize = 7;
/// Hash buckets of the text vocabulary (the hashing trick; no vocabulary file).
const BUCKETS: usize = 1 << 14;
/// Words kept per text.
const MAX_WORDS: usize = 64;

/// The FFN of the block.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Ffn {
    /// A dense FFN of `width` neurons.
    Dense { width: usize },
    /// `experts` experts of `expert_ffn` neurons each.
    Moe { experts: usize, expert_ffn: usize, routing: Routing, capacity: Capacity, balance_weight: f64 },
}

impl Ffn {
    /// A short name for tables: `dense-128`, `top2/1.25/bal0.01`, ...
    pub fn label(&self) -> String {
        match self {
            Self::Dense { width } => format!("dense-{width}"),
            Self::Moe { routing, capacity, balance_weight, .. } => {
                let r = match routing {
                    Routing::TopK { k } => format!("top{k}"),
                    Routing::ExpertChoice => "expert-choice".into(),
                    Routing::Hash => "hash".into(),
                };
                let c = match capacity {
                    Capacity::Factor(f) => format!("{f}"),
                    Capacity::Dropless => "dropless".into(),
                };
                format!("{r}/{c}/bal{balance_weight}")
            }
        }
    }
}

/// One training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScratchConfig {
    /// `fashion-mnist` or a text task (`trec6`, `rt-sentiment`, ...).
    pub task: String,
    pub ffn: Ffn,
    /// Token width.
    pub hidden: usize,
    pub epochs: usize,
    /// Examples per batch.
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
}

/// What a run measured on the test split (and the dev split, for selection).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScratchResult {
    pub config: ScratchConfig,
    pub label: String,
    pub dev_accuracy: f64,
    pub test_accuracy: f64,
    /// Tokens per expert summed over the test split, its coefficient of variation, and the share
    /// of requested token-expert pairs dropped by capacity.
    pub test_load: Vec<usize>,
    pub test_load_cv: f64,
    pub test_dropped_fraction: f64,
    /// FFN parameters in total and run per token (router included).
    pub ffn_params_total: usize,
    pub ffn_params_active: f64,
    pub train_seconds: f64,
    /// Dev accuracy after every epoch (the training curve).
    pub dev_curve: Vec<f64>,
}

/// A batch as tokens: `[T, in]` features (patch pixels) or ids, the example of each token, labels.
struct Batch {
    feats: Option<Tensor>,
    ids: Vec<u32>,
    owner: Vec<usize>,
    labels: Vec<u32>,
}

/// A split as token sequences.
struct Split {
    /// Per example: patch features (`16 * 49`) or word bucket ids.
    pixels: Vec<Vec<f32>>,
    words: Vec<Vec<u32>>,
    labels: Vec<usize>,
}

impl Split {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn batch(&self, idx: &[usize], dev: &Device) -> Result<Batch> {
        let labels = idx.iter().map(|&i| self.labels[i] as u32).collect();
        if !self.pixels.is_empty() {
            let tokens = self.pixels[0].len() / (PATCH * PATCH);
            let flat: Vec<f32> = idx.iter().flat_map(|&i| self.pixels[i].iter().copied()).collect();
            let feats = Tensor::from_vec(flat, (idx.len() * tokens, PATCH * PATCH), dev)?;
            let ids = (0..idx.len() * tokens).map(|t| (t % tokens) as u32).collect();
            let owner = (0..idx.len() * tokens).map(|t| t / tokens).collect();
            return Ok(Batch { feats: Some(feats), ids, owner, labels });
        }
        let mut ids = Vec::new();
        let mut owner = Vec::new();
        for (b, &i) in idx.iter().enumerate() {
            ids.extend(&self.words[i]);
            owner.extend(std::iter::repeat_n(b, self.words[i].len()));
        }
        Ok(Batch { feats: None, ids, owner, labels })
    }
}

/// Images cut into 7x7 patches, row-major patch order.
fn patches(images: &[f32], h: usize, w: usize) -> Vec<Vec<f32>> {
    images
        .chunks_exact(h * w)
        .map(|img| {
            let mut out = Vec::with_capacity(h * w);
            for py in 0..h / PATCH {
                for px in 0..w / PATCH {
                    for y in 0..PATCH {
                        let row = (py * PATCH + y) * w + px * PATCH;
                        out.extend_from_slice(&img[row..row + PATCH]);
                    }
                }
            }
            out
        })
        .collect()
}

/// Lower-cased alphanumeric words, FNV-1a hashed into [`BUCKETS`] (at least one token per text).
fn words(text: &str) -> Vec<u32> {
    let mut ids: Vec<u32> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(MAX_WORDS)
        .map(|w| {
            let h = w.to_lowercase().bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
            (h % BUCKETS as u64) as u32
        })
        .collect();
    if ids.is_empty() {
        ids.push(0);
    }
    ids
}

/// The task's train/dev/test splits as tokens, its class count and the input feature width
/// (49 for patches, 0 for words).
fn load(task: &str, seed: u64) -> Result<([Split; 3], usize, usize)> {
    let home = sprig_data::sprig_home();
    if sprig_data::is_image_task(task) {
        let d = sprig_data::load_image_task(task, &home, seed)?;
        if d.height % PATCH != 0 || d.width % PATCH != 0 {
            bail!("{task}: images of {}x{} do not cut into {PATCH}x{PATCH} patches", d.height, d.width);
        }
        let s = |x: &sprig_data::ImageSplit| Split { pixels: patches(&x.images, d.height, d.width), words: Vec::new(), labels: x.labels.clone() };
        return Ok(([s(&d.train), s(&d.dev), s(&d.test)], d.classes.len(), PATCH * PATCH));
    }
    let d = sprig_data::load_text_task(task, &home, seed)?;
    let s = |x: &[sprig_data::TextExample]| Split { pixels: Vec::new(), words: x.iter().map(|e| words(&e.text)).collect(), labels: x.iter().map(|e| e.label).collect() };
    Ok(([s(&d.train), s(&d.dev), s(&d.test)], d.classes.len(), 0))
}

/// The classifier's parameters.
struct Model {
    /// `[in, hidden]` patch projection or `[BUCKETS, hidden]` word embedding.
    embed: Var,
    /// `[tokens, hidden]` position embedding (images only).
    position: Option<Var>,
    ffn: MoeFfn,
    head_w: Var,
    head_b: Var,
}

fn uniform(rng: &mut ChaCha8Rng, shape: &[usize], bound: f32, dev: &Device) -> Result<Var> {
    let v: Vec<f32> = (0..shape.iter().product()).map(|_| rng.random_range(-bound..bound)).collect();
    Ok(Var::from_tensor(&Tensor::from_vec(v, shape, dev)?)?)
}

impl Model {
    fn new(cfg: &ScratchConfig, input: usize, classes: usize, dev: &Device) -> Result<Self> {
        let h = cfg.hidden;
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let (embed, position) = if input > 0 {
            let tokens = 16;
            (uniform(&mut rng, &[input, h], 1.0 / (input as f32).sqrt(), dev)?, Some(uniform(&mut rng, &[tokens, h], 0.1, dev)?))
        } else {
            (uniform(&mut rng, &[BUCKETS, h], 0.1, dev)?, None)
        };
        let moe = match &cfg.ffn {
            Ffn::Dense { width } => {
                let mut c = MoeConfig::new(h, *width, RouterConfig { capacity: Capacity::Dropless, ..RouterConfig::top_k(1, 1) });
                (c.balance_weight, c.z_weight) = (0.0, 0.0);
                c
            }
            Ffn::Moe { experts, expert_ffn, routing, capacity, balance_weight } => {
                let k = if let Routing::TopK { k } = routing { *k } else { 1 };
                let mut c = MoeConfig::new(h, *expert_ffn, RouterConfig { routing: *routing, capacity: *capacity, ..RouterConfig::top_k(*experts, k) });
                c.balance_weight = *balance_weight;
                c
            }
        };
        let ffn = MoeFfn::new(moe, cfg.seed.wrapping_add(1), dev).context("building the MoE layer")?;
        let head_w = uniform(&mut rng, &[classes, h], 1.0 / (h as f32).sqrt(), dev)?;
        let head_b = uniform(&mut rng, &[classes], 1.0 / (h as f32).sqrt(), dev)?;
        Ok(Self { embed, position, ffn, head_w, head_b })
    }

    fn params(&self) -> Vec<(String, Var)> {
        let mut p = vec![("embed".to_string(), self.embed.clone()), ("head.weight".into(), self.head_w.clone()), ("head.bias".into(), self.head_b.clone())];
        if let Some(v) = &self.position {
            p.push(("position".into(), v.clone()));
        }
        p.extend(self.ffn.params().into_iter().map(|(n, v)| (format!("ffn.{n}"), v)));
        p
    }

    /// Logits `[B, classes]`, the auxiliary loss and the MoE statistics of the batch.
    fn forward(&self, b: &Batch, rng: Option<&mut ChaCha8Rng>) -> Result<(Tensor, Tensor, sprig_moe::MoeStats)> {
        let dev = self.embed.device();
        let x = match (&b.feats, &self.position) {
            (Some(f), Some(pos)) => {
                let tokens = pos.dims()[0];
                let e = f.matmul(self.embed.as_tensor())?;
                let (t, h) = e.dims2()?;
                e.reshape((t / tokens, tokens, h))?.broadcast_add(pos.as_tensor())?.reshape((t, h))?
            }
            _ => self.embed.as_tensor().index_select(&Tensor::from_vec(b.ids.clone(), b.ids.len(), dev)?, 0)?,
        };
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let xn = xc.broadcast_div(&(xc.sqr()?.mean_keepdim(D::Minus1)? + 1e-5)?.sqrt()?)?;
        let out = match rng {
            Some(r) => self.ffn.forward_train(&xn, Some(&b.ids), r)?,
            None => self.ffn.forward(&xn, Some(&b.ids))?,
        };
        let x = (x + out.y)?;
        // Mean over each example's tokens as one [B, T] matmul.
        let n = b.labels.len();
        let mut count = vec![0f32; n];
        b.owner.iter().for_each(|&o| count[o] += 1.0);
        let mut pool = vec![0f32; n * b.owner.len()];
        b.owner.iter().enumerate().for_each(|(t, &o)| pool[o * b.owner.len() + t] = 1.0 / count[o]);
        let pooled = Tensor::from_vec(pool, (n, b.owner.len()), dev)?.matmul(&x)?;
        let logits = pooled.matmul(&self.head_w.as_tensor().t()?)?.broadcast_add(self.head_b.as_tensor())?;
        Ok((logits, out.aux_loss, out.stats))
    }
}

/// Accuracy, summed load per expert and dropped fraction over `split`.
fn evaluate(m: &Model, split: &Split, dev: &Device) -> Result<(f64, Vec<usize>, f64)> {
    let (mut correct, mut load, mut dropped, mut requested) = (0usize, vec![0usize; m.ffn.config.router.experts], 0.0, 0.0);
    let idx: Vec<usize> = (0..split.len()).collect();
    for chunk in idx.chunks(256) {
        let b = split.batch(chunk, dev)?;
        let (logits, _, stats) = m.forward(&b, None)?;
        let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        correct += pred.iter().zip(&b.labels).filter(|(p, l)| p == l).count();
        load.iter_mut().zip(&stats.tokens_per_expert).for_each(|(a, b)| *a += b);
        let pairs: usize = stats.tokens_per_expert.iter().sum();
        // dropped_fraction = dropped / requested, with requested = kept + dropped.
        let req = if stats.dropped_fraction < 1.0 { pairs as f64 / (1.0 - stats.dropped_fraction) } else { 0.0 };
        dropped += req - pairs as f64;
        requested += req;
    }
    Ok((correct as f64 / split.len().max(1) as f64, load, if requested > 0.0 { dropped / requested } else { 0.0 }))
}

/// One training step's record in `metrics.jsonl`: the loss and the MoE layer's statistics.
#[derive(Serialize)]
struct StepRecord<'a> {
    kind: &'static str,
    epoch: usize,
    step: usize,
    loss: f32,
    #[serde(flatten)]
    moe: &'a sprig_moe::MoeStats,
}

/// Trains one classifier and measures it. `progress(epoch, dev_accuracy)` after every epoch;
/// `metrics`, when given, gets every step's loss and MoE statistics (tokens per expert, load CV,
/// dropped fraction, router entropy).
pub fn run(cfg: &ScratchConfig, progress: &mut dyn FnMut(usize, f64), mut metrics: Option<&mut sprig_train::MetricsLog>) -> Result<ScratchResult> {
    if cfg.epochs == 0 || cfg.batch_size == 0 || cfg.hidden == 0 {
        bail!("epochs, batch size and hidden width must be at least 1 (got {}, {}, {})", cfg.epochs, cfg.batch_size, cfg.hidden);
    }
    let dev = Device::Cpu;
    let ([train, dev_split, test], classes, input) = load(&cfg.task, cfg.seed)?;
    if train.len() == 0 || test.len() == 0 {
        bail!("{}: empty train or test split", cfg.task);
    }
    let model = Model::new(cfg, input, classes, &dev)?;
    let mut opt = AdamW::new(model.params(), AdamWConfig { lr: cfg.lr, weight_decay: 0.0, ..AdamWConfig::default() })?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed);
    let steps_per_epoch = train.len().div_ceil(cfg.batch_size);
    let total = steps_per_epoch * cfg.epochs;
    let schedule = LinearWarmupDecay { base_lr: cfg.lr, warmup: total / 20, total };
    let start = std::time::Instant::now();
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut step = 0usize;
    let mut dev_curve = Vec::with_capacity(cfg.epochs);
    for epoch in 0..cfg.epochs {
        order.shuffle(&mut rng);
        for chunk in order.chunks(cfg.batch_size) {
            opt.set_learning_rate(schedule.lr(step));
            let b = train.batch(chunk, &dev)?;
            let (logits, aux, stats) = model.forward(&b, Some(&mut rng))?;
            let labels = Tensor::from_vec(b.labels.clone(), b.labels.len(), &dev)?;
            let loss = (candle_nn::loss::cross_entropy(&logits, &labels)? + aux)?;
            let l = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            if !l.is_finite() {
                bail!("{}: loss is {l} at step {step} (epoch {epoch}); lower --lr", cfg.ffn.label());
            }
            opt.step(&loss.backward()?)?;
            step += 1;
            if let Some(m) = metrics.as_deref_mut() {
                m.log(&StepRecord { kind: "step", epoch, step, loss: l, moe: &stats })?;
            }
        }
        dev_curve.push(evaluate(&model, &dev_split, &dev)?.0);
        progress(epoch + 1, dev_curve[epoch]);
    }
    let train_seconds = start.elapsed().as_secs_f64();
    let dev_accuracy = dev_curve[cfg.epochs - 1];
    let (test_accuracy, test_load, test_dropped_fraction) = evaluate(&model, &test, &dev)?;
    let per_expert = |f: usize| 2 * cfg.hidden * f + f + cfg.hidden;
    let (total, active) = match &cfg.ffn {
        Ffn::Dense { width } => (per_expert(*width), per_expert(*width) as f64),
        Ffn::Moe { experts, expert_ffn, routing, capacity, .. } => {
            // Experts per token on average: k, 1 for hash, the capacity factor for expert choice.
            let k = routing.per_token(*capacity);
            let router = cfg.hidden * experts;
            (router + experts * per_expert(*expert_ffn), router as f64 + k * per_expert(*expert_ffn) as f64)
        }
    };
    Ok(ScratchResult {
        label: cfg.ffn.label(),
        config: cfg.clone(),
        dev_accuracy,
        test_accuracy,
        test_load_cv: coefficient_of_variation(&test_load),
        test_load,
        test_dropped_fraction,
        ffn_params_total: total,
        ffn_params_active: active,
        train_seconds,
        dev_curve,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_cut_rows_in_order() {
        let img: Vec<f32> = (0..28 * 28).map(|i| i as f32).collect();
        let p = patches(&img, 28, 28);
        assert_eq!(p[0].len(), 28 * 28);
        // Second patch starts at column 7 of row 0; its second row at column 7 of row 1.
        assert_eq!(p[0][49], 7.0);
        assert_eq!(p[0][49 + 7], 35.0);
    }

    #[test]
    fn words_are_hashed_case_insensitively() {
        assert_eq!(words("The cat"), words("the CAT!"));
        assert_eq!(words("").len(), 1);
        assert!(words("a b c").iter().all(|&i| (i as usize) < BUCKETS));
    }
}
