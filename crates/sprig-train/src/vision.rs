//! Small vision models for pruning experiments — LeNet-300-100 and LeNet-5 — as named `Var`s, with a
//! seeded init and a mask-aware train/eval loop over [`sprig_data::ImageDataset`] splits.
use sprig_prune::MaskSet;
use crate::error::{Context, Result};
use candle_core::{DType, Device, Module, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sprig_data::ImageSplit;
use sprig_kernels::nn::ops::{conv2d, relu_max_pool2x2};

use crate::fit::{AfterStep, BatchOrder, Ctx, Fit, StepInfo, StepLoss};
use crate::optim::{AdamW, AdamWConfig, Optimizer};
use crate::sgd::{Sgd, SgdConfig};

/// The architectures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// LeNet-300-100: 784-300-100-10 fully connected, ReLU (LeCun et al. 1998; LTH Fig. 2).
    Lenet300,
    /// LeNet-5: conv5x5(6, pad 2)-pool-conv5x5(16)-pool-120-84-10, ReLU (LeCun et al. 1998).
    Lenet5,
    /// LeNet-300-100's shape at other widths: input-`hidden1`-`hidden2`-classes, ReLU (the small
    /// dense net of a sparse one's parameter count).
    Mlp { hidden1: usize, hidden2: usize },
    /// LeNet-5's shape at other widths: conv5x5(`conv1`)-pool-conv5x5(`conv2`)-pool-`fc1`-`fc2`-classes
    /// (the small dense net of a sparse LeNet-5's parameter count).
    Cnn { conv1: usize, conv2: usize, fc1: usize, fc2: usize },
}

/// LeNet-5's widths as [`Arch::Cnn`].
const LENET5: Arch = Arch::Cnn { conv1: 6, conv2: 16, fc1: 120, fc2: 84 };

impl std::str::FromStr for Arch {
    type Err = crate::TrainError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "lenet300" | "lenet-300-100" => Ok(Self::Lenet300),
            "lenet5" | "lenet-5" => Ok(Self::Lenet5),
            _ => bail!("unknown model {s:?}: expected lenet300 or lenet5"),
        }
    }
}

impl Arch {
    /// `(name, shape)` of every parameter, in a fixed order.
    pub fn param_shapes(&self, height: usize, width: usize, classes: usize) -> Vec<(String, Vec<usize>)> {
        let p = |n: &str, s: &[usize]| (n.to_string(), s.to_vec());
        match *self {
            Self::Lenet300 => Self::Mlp { hidden1: 300, hidden2: 100 }.param_shapes(height, width, classes),
            Self::Mlp { hidden1, hidden2 } => vec![
                p("fc1.weight", &[hidden1, height * width]),
                p("fc1.bias", &[hidden1]),
                p("fc2.weight", &[hidden2, hidden1]),
                p("fc2.bias", &[hidden2]),
                p("fc3.weight", &[classes, hidden2]),
                p("fc3.bias", &[classes]),
            ],
            Self::Lenet5 => LENET5.param_shapes(height, width, classes),
            Self::Cnn { conv1, conv2, fc1, fc2 } => {
                let (h, w) = ((height / 2 - 4) / 2, (width / 2 - 4) / 2);
                vec![
                    p("conv1.weight", &[conv1, 1, 5, 5]),
                    p("conv1.bias", &[conv1]),
                    p("conv2.weight", &[conv2, conv1, 5, 5]),
                    p("conv2.bias", &[conv2]),
                    p("fc1.weight", &[fc1, conv2 * h * w]),
                    p("fc1.bias", &[fc1]),
                    p("fc2.weight", &[fc2, fc1]),
                    p("fc2.bias", &[fc2]),
                    p("fc3.weight", &[classes, fc2]),
                    p("fc3.bias", &[classes]),
                ]
            }
        }
    }

    /// Number of weights (the parameters of two or more dimensions; biases not counted).
    pub fn weight_count(&self, height: usize, width: usize, classes: usize) -> usize {
        self.param_shapes(height, width, classes).iter().filter(|(_, s)| s.len() > 1).map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    /// The same shape with every hidden width (channels and units) scaled by `f`, rounded, at
    /// least 1: LeNet-300-100 becomes an [`Arch::Mlp`], LeNet-5 an [`Arch::Cnn`].
    pub fn scaled(&self, f: f64) -> Self {
        let s = |w: usize| ((w as f64 * f).round() as usize).max(1);
        match *self {
            Self::Lenet300 => Self::Mlp { hidden1: s(300), hidden2: s(100) },
            Self::Mlp { hidden1, hidden2 } => Self::Mlp { hidden1: s(hidden1), hidden2: s(hidden2) },
            Self::Lenet5 => LENET5.scaled(f),
            Self::Cnn { conv1, conv2, fc1, fc2 } => Self::Cnn { conv1: s(conv1), conv2: s(conv2), fc1: s(fc1), fc2: s(fc2) },
        }
    }

    /// A dense net of this shape with every hidden width scaled by the one factor `f` at which
    /// it would hold `kept` weights, widths then rounded (the small dense net of a sparse one's
    /// parameter count). Every weight matrix spans at most two hidden widths, so the count is a
    /// quadratic `c0 + c1·f + c2·f²`, read off the shapes at the exact scales 1, 2 and 3.
    pub fn with_weight_count(&self, kept: usize, height: usize, width: usize, classes: usize) -> Self {
        let n = |k: f64| self.scaled(k).weight_count(height, width, classes) as f64;
        let (n1, n2, n3) = (n(1.0), n(2.0), n(3.0));
        let c2 = (n3 - 2.0 * n2 + n1) / 2.0;
        let c1 = n2 - n1 - 3.0 * c2;
        let c0 = n1 - c1 - c2 - kept as f64;
        let f = if c2 > 0.0 { (-c1 + (c1 * c1 - 4.0 * c2 * c0).sqrt()) / (2.0 * c2) } else { -c0 / c1 };
        self.scaled(f)
    }
    /// The architecture of named weights: LeNet-5's shape when they hold `conv1.weight` (LeNet-5
    /// itself at its own widths), else the MLP of their `fc1`/`fc2` widths (LeNet-300-100 at 300
    /// and 100).
    pub fn of_tensors(tensors: &[(String, Tensor)]) -> Result<Self> {
        let dims = |n: &str| tensors.iter().find(|(m, _)| m == n).map(|(_, t)| t.dims().to_vec());
        if let Some(c1) = dims("conv1.weight") {
            return match (c1.as_slice(), dims("conv2.weight").as_deref(), dims("fc1.weight").as_deref(), dims("fc2.weight").as_deref()) {
                (&[conv1, 1, 5, 5], Some(&[conv2, c, 5, 5]), Some(&[fc1, _]), Some(&[fc2, f])) if c == conv1 && f == fc1 => {
                    let cnn = Self::Cnn { conv1, conv2, fc1, fc2 };
                    Ok(if cnn == LENET5 { Self::Lenet5 } else { cnn })
                }
                _ => bail!("the weights hold conv1.weight but not LeNet-5's layers (conv1, conv2 of 5x5 kernels, fc1, fc2 of matching widths)"),
            };
        }
        match (dims("fc1.weight").as_deref(), dims("fc2.weight").as_deref()) {
            (Some(&[300, _]), Some(&[100, 300])) => Ok(Self::Lenet300),
            (Some(&[hidden1, _]), Some(&[hidden2, h])) if h == hidden1 => Ok(Self::Mlp { hidden1, hidden2 }),
            _ => bail!("the weights are neither LeNet-5 (conv1.weight) nor an MLP (fc1.weight, fc2.weight of matching widths)"),
        }
    }

    /// Name of the output layer's weight (LTH prunes it at half the rate).
    pub fn output_weight(&self) -> &'static str {
        "fc3.weight"
    }
}

/// A model: an architecture plus its named parameters.
#[derive(Clone)]
pub struct VisionModel {
    pub arch: Arch,
    pub height: usize,
    pub width: usize,
    pub params: Vec<(String, Var)>,
}

impl VisionModel {
    /// PyTorch's default init, seeded: weights and biases ~ U(−1/√fan_in, 1/√fan_in)
    /// (kaiming_uniform with a = √5), drawn from ChaCha8 so a seed gives the same net everywhere.
    pub fn new(arch: Arch, height: usize, width: usize, classes: usize, seed: u64, device: &Device) -> Result<Self> {
        let shapes = arch.param_shapes(height, width, classes);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut params = Vec::new();
        let mut fan_in = 1usize;
        for (name, shape) in shapes {
            if shape.len() > 1 {
                fan_in = shape[1..].iter().product();
            }
            let bound = 1.0 / (fan_in as f32).sqrt();
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
            params.push((name, Var::from_tensor(&Tensor::from_vec(v, shape.as_slice(), device)?)?));
        }
        Ok(Self { arch, height, width, params })
    }

    fn p(&self, name: &str) -> &Tensor {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_tensor()).expect("parameter names are fixed by Arch")
    }

    fn linear(&self, x: &Tensor, name: &str) -> candle_core::Result<Tensor> {
        sprig_kernels::candle::matmul_cpu_invariant(x, &self.p(&format!("{name}.weight")).t()?)?.broadcast_add(self.p(&format!("{name}.bias")))
    }

    /// Logits for a batch `x` of shape `[batch, height * width]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.arch {
            Arch::Lenet300 | Arch::Mlp { .. } => {
                let h = self.linear(x, "fc1")?.relu()?;
                let h = self.linear(&h, "fc2")?.relu()?;
                self.linear(&h, "fc3")
            }
            Arch::Lenet5 | Arch::Cnn { .. } => {
                let b = x.dim(0)?;
                let x = x.reshape((b, 1, self.height, self.width))?;
                let conv = |x: &Tensor, n: &str, pad| -> candle_core::Result<Tensor> {
                    let w = self.p(&format!("{n}.weight"));
                    relu_max_pool2x2(&conv2d(x, w, self.p(&format!("{n}.bias")), pad)?)
                };
                let h = conv(&x, "conv1", 2)?;
                let h = conv(&h, "conv2", 0)?.flatten_from(1)?;
                let h = self.linear(&h, "fc1")?.relu()?;
                let h = self.linear(&h, "fc2")?.relu()?;
                self.linear(&h, "fc3")
            }
        }
    }

    /// Current values of all parameters (for rewinding).
    pub fn snapshot(&self) -> Result<Vec<Tensor>> {
        Ok(self.params.iter().map(|(_, v)| v.as_tensor().copy()).collect::<candle_core::Result<_>>()?)
    }

    /// Sets all parameters from a snapshot.
    pub fn restore(&self, snap: &[Tensor]) -> Result<()> {
        if snap.len() != self.params.len() {
            bail!("snapshot has {} tensors, model {}", snap.len(), self.params.len());
        }
        for ((n, v), t) in self.params.iter().zip(snap) {
            v.set(t).with_context(|| format!("restoring {n}"))?;
        }
        Ok(())
    }

    /// `(name, tensor)` pairs of the current values.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.params.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect()
    }
}

/// Which optimizer trains the model.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OptimChoice {
    Adam { lr: f64 },
    Sgd { lr: f64, momentum: f64 },
}

/// How a model is trained.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub optim: OptimChoice,
    /// Seed of the batch order.
    pub data_seed: u64,
    /// Capture the weights after this many steps (for rewinding to step k).
    pub snapshot_step: Option<usize>,
}

/// What a training run returns.
pub struct TrainOutcome {
    pub steps: usize,
    pub final_train_loss: f64,
    pub snapshot: Option<Vec<Tensor>>,
}

/// Turns image rows into a `[n, h*w]` tensor.
pub fn batch_tensor(split: &ImageSplit, idx: &[usize], hw: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    let mut x = Vec::with_capacity(idx.len() * hw);
    let mut y = Vec::with_capacity(idx.len());
    for &i in idx {
        x.extend_from_slice(&split.images[i * hw..(i + 1) * hw]);
        y.push(split.labels[i] as u32);
    }
    Ok((Tensor::from_vec(x, (idx.len(), hw), device)?, Tensor::from_vec(y, idx.len(), device)?))
}

/// Trains `model` on `split` with cross-entropy, honouring `masks` (name → keep-bits) through the
/// optimizer's mask discipline. `after_step(step, model)` runs after every optimizer step.
pub fn train(
    model: &VisionModel,
    split: &ImageSplit,
    cfg: &TrainConfig,
    masks: &MaskSet,
    after_step: &mut dyn FnMut(usize, &VisionModel) -> Result<()>,
) -> Result<TrainOutcome> {
    if split.is_empty() {
        bail!("training split is empty");
    }
    let device = model.params[0].1.device().clone();
    let hw = model.height * model.width;
    let mut opt: Box<dyn Optimizer> = match cfg.optim {
        OptimChoice::Adam { lr } => Box::new(AdamW::new(
            model.params.clone(),
            AdamWConfig { lr, weight_decay: 0.0, ..Default::default() },
        )?),
        OptimChoice::Sgd { lr, momentum } => {
            Box::new(Sgd::new(model.params.clone(), SgdConfig { lr, momentum, ..Default::default() })?)
        }
    };
    opt.set_masks(masks)?;
    let mut model = model.clone();
    let params = model.params.clone();
    let out = Fit::new(cfg.epochs, BatchOrder::Shuffled { n: split.len(), batch_size: cfg.batch_size, seed: cfg.data_seed })
        .snapshot_at(cfg.snapshot_step)
        .run(
            &mut model,
            opt.as_mut(),
            params,
            |m: &mut VisionModel, idx: &[usize], _: &StepInfo| {
                let (x, y) = batch_tensor(split, idx, hw, &device)?;
                Ok(StepLoss { loss: candle_nn::loss::cross_entropy(&m.forward(&x)?, &y)?, examples: idx.len() })
            },
            &mut AfterStep(|m: &mut VisionModel, ctx: &mut Ctx| after_step(ctx.step, m)),
        )?;
    let snapshot = out.snapshot.map(|s| s.into_iter().map(|(_, t)| t).collect());
    Ok(TrainOutcome { steps: out.steps, final_train_loss: out.last_loss, snapshot })
}

/// Accuracy of `model` on `split`.
pub fn evaluate(model: &VisionModel, split: &ImageSplit) -> Result<f64> {
    let device = model.params[0].1.device().clone();
    let hw = model.height * model.width;
    let mut pred = Vec::with_capacity(split.len());
    let all: Vec<usize> = (0..split.len()).collect();
    for idx in all.chunks(1000) {
        let (x, _) = batch_tensor(split, idx, hw, &device)?;
        let p = model.forward(&x)?.argmax(D::Minus1)?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        pred.extend(p.into_iter().map(|v| v as usize));
    }
    Ok(sprig_data::metrics::accuracy(&pred, &split.labels))
}

impl Module for VisionModel {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        VisionModel::forward(self, xs)
    }
}
