//! Dynamic sparse training with truly sparse compute: the model and one training run.
//!
//! Between mask updates every sparse layer is a compiled CSR pattern from `sprig-kernels` whose
//! stored values are the trainable [`Var`]: the forward is an SpMM, the input gradient a transposed
//! SpMM and the weight gradient an SDDMM at the kept positions only (no dense `W`, no dense `dW`).
//! At a mask update (every ΔT steps, rules in [`sprig_prune::dst`]) the dense weights are
//! materialised, RigL/GraNet compute one dense gradient with a masked-dense forward/backward on the
//! current batch, the mask changes, the pattern is recompiled and the optimizer state is carried
//! over by position ([`Optimizer::remap_param`]): kept weights keep their Adam moments, grown
//! weights start at 0 with zero state.
//!
//! Dense and GMP (Zhu & Gupta 2017, prune from dense) runs use dense weights (masked for GMP).
//! For the `conv` model (LeNet-5) only the three linear layers are sparse; the two small conv layers
//! (2,550 weights of 44k) stay dense, and reported sparsity is over the linear layers.
use std::sync::Arc;

use crate::error::{Context, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sprig_data::ImageSplit;
use sprig_kernels::candle::{matmul_cpu_invariant, sparse_matmul};
use sprig_kernels::{Bitmask, Csr, SparseMatrix};
use sprig_kernels::nn::ops::{conv2d, relu_max_pool2x2};
use sprig_prune::dst::{ItopTracker, UpdateSchedule};
use sprig_prune::{Allocation, Criterion, GrowRule, Inputs, Mask, MaskSet, Pruner, PrunerConfig, Schedule, Scores};

use crate::fit::{BatchOrder, Ctx, Fit, FitOutcome, Hooks, Lr, StepInfo, StepLoss};
use crate::optim::{AdamW, AdamWConfig, Optimizer};
use crate::schedule::LrSchedule;
use crate::sgd::{Sgd, SgdConfig};
use crate::vision::batch_tensor;

/// Models for DST experiments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DstArch {
    /// LeNet-300-100 (784-300-100-10).
    Lenet300,
    /// A wide MLP, 784-1024-1024-10 (for the wall-clock comparison).
    MlpWide,
    /// LeNet-5 with dense convs and sparse 400-120-84-10 linears.
    Conv,
}

impl std::str::FromStr for DstArch {
    type Err = crate::TrainError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "lenet300" => Ok(Self::Lenet300),
            "mlp-wide" => Ok(Self::MlpWide),
            "conv" | "lenet5" => Ok(Self::Conv),
            _ => bail!("unknown model {s:?}: expected lenet300, mlp-wide or conv"),
        }
    }
}

/// Training methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    Dense,
    Static,
    Set,
    Rigl,
    Granet,
    /// Gradual magnitude pruning from dense (Zhu & Gupta 2017), masked dense compute.
    Gmp,
}

impl std::str::FromStr for Method {
    type Err = crate::TrainError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "dense" => Self::Dense,
            "static" => Self::Static,
            "set" => Self::Set,
            "rigl" => Self::Rigl,
            "granet" => Self::Granet,
            "gmp" => Self::Gmp,
            _ => bail!("unknown method {s:?}: expected dense, static, set, rigl, granet or gmp"),
        })
    }
}

/// The optimizer of a DST run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DstOptimizer {
    /// Adam (β 0.9/0.999; decoupled weight decay if `weight_decay` > 0).
    #[default]
    Adam,
    /// SGD with momentum 0.9, as in the RigL paper's experiments (Evci et al. 2020, App. A).
    Sgd,
}

impl std::str::FromStr for DstOptimizer {
    type Err = crate::TrainError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "adam" => Ok(Self::Adam),
            "sgd" => Ok(Self::Sgd),
            _ => bail!("unknown optimizer {s:?}: expected adam or sgd"),
        }
    }
}

/// One DST run's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DstConfig {
    pub arch: DstArch,
    pub method: Method,
    /// Target sparsity over the sparse (linear) layers, ERK-allocated.
    pub sparsity: f64,
    pub epochs: usize,
    pub batch_size: usize,
    /// Base learning rate.
    pub lr: f64,
    /// Adam (default) or SGD with momentum 0.9.
    #[serde(default)]
    pub optimizer: DstOptimizer,
    /// Constant (default) or cosine-decayed learning rate.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// L2 weight decay (SGD) / decoupled weight decay (Adam); 0 by default.
    #[serde(default)]
    pub weight_decay: f64,
    /// ΔT: steps between mask updates.
    pub delta_t: usize,
    /// α: initial drop fraction (cosine-decayed).
    pub alpha: f64,
    /// Updates (and GMP/GraNet pruning) stop at this fraction of training (RigL: 0.75).
    pub end_fraction: f64,
    /// GraNet's starting sparsity (denser than the target).
    pub granet_initial: f64,
}

impl DstConfig {
    /// Checks every value before anything is written.
    pub fn validate(&self) -> Result<()> {
        sprig_prune::error::check_sparsity(self.sparsity).with_context(|| format!("--sparsity {}", self.sparsity))?;
        sprig_prune::error::check_sparsity(self.granet_initial).with_context(|| format!("--granet-initial {}", self.granet_initial))?;
        ensure!(self.epochs > 0 && self.batch_size > 0, "epochs ({}) and batch size ({}) must be >= 1", self.epochs, self.batch_size);
        ensure!(self.lr > 0.0 && self.lr.is_finite(), "learning rate {} must be positive", self.lr);
        ensure!(self.weight_decay >= 0.0 && self.weight_decay.is_finite(), "weight decay {} must be >= 0", self.weight_decay);
        ensure!(self.end_fraction > 0.0 && self.end_fraction <= 1.0, "end fraction {} must be in (0, 1]", self.end_fraction);
        UpdateSchedule { delta_t: self.delta_t, t_end: 1, alpha: self.alpha }.validate()?;
        Ok(())
    }
}

/// A linear layer: dense weight or compiled sparse pattern + stored values; `mask` is the keep-mask.
pub struct Fc {
    pub name: String,
    pub n: usize,
    pub k: usize,
    pub mask: Mask,
    pub weight: FcWeight,
    pub bias: Var,
}

/// How a linear layer's weight is held.
pub enum FcWeight {
    /// Dense `[n, k]` (dense and GMP runs; GMP's mask is enforced by the optimizer).
    Dense(Var),
    /// CSR pattern and its stored values `[nnz]`.
    Sparse { pattern: Arc<dyn SparseMatrix>, values: Var },
}

impl Fc {
    /// Dense `[n, k]` weights (zeros off the pattern).
    pub fn dense_weight(&self) -> Result<Vec<f32>> {
        match &self.weight {
            FcWeight::Dense(w) => Ok(w.as_tensor().flatten_all()?.to_vec1()?),
            FcWeight::Sparse { pattern, values } => Ok(pattern.to_dense_with(&values.as_tensor().to_vec1::<f32>()?)?),
        }
    }
    fn param_name(&self) -> String {
        match self.weight {
            FcWeight::Dense(_) => format!("{}.weight", self.name),
            FcWeight::Sparse { .. } => format!("{}.values", self.name),
        }
    }
}

/// The model: optional dense convs, then linear layers.
pub struct DstModel {
    pub arch: DstArch,
    pub conv: Vec<(Var, Var)>,
    pub fcs: Vec<Fc>,
    pub height: usize,
    pub width: usize,
}

fn uniform(rng: &mut ChaCha8Rng, n: usize, fan_in: usize) -> Vec<f32> {
    let b = 1.0 / (fan_in as f32).sqrt();
    (0..n).map(|_| rng.random_range(-b..b)).collect()
}

impl DstModel {
    /// Linear shapes `(name, [out, in])`.
    pub fn fc_shapes(arch: DstArch, height: usize, width: usize, classes: usize) -> Vec<(String, Vec<usize>)> {
        let dims = match arch {
            DstArch::Lenet300 => vec![height * width, 300, 100, classes],
            DstArch::MlpWide => vec![height * width, 1024, 1024, classes],
            DstArch::Conv => vec![16 * ((height / 2 - 4) / 2) * ((width / 2 - 4) / 2), 120, 84, classes],
        };
        dims.windows(2).enumerate().map(|(i, w)| (format!("fc{}.weight", i + 1), vec![w[1], w[0]])).collect()
    }

    /// PyTorch-default uniform init (seeded ChaCha8) masked by `masks` (`None`: dense); sparse
    /// layers are compiled to CSR when `sparse` is set.
    #[allow(clippy::too_many_arguments)]
    pub fn new(arch: DstArch, height: usize, width: usize, classes: usize, seed: u64, masks: Option<&MaskSet>, sparse: bool, dev: &Device) -> Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut conv = Vec::new();
        if arch == DstArch::Conv {
            for (o, i) in [(6usize, 1usize), (16, 6)] {
                let w = uniform(&mut rng, o * i * 25, i * 25);
                let b = uniform(&mut rng, o, i * 25);
                conv.push((Var::from_vec(w, (o, i, 5, 5), dev)?, Var::from_vec(b, o, dev)?));
            }
        }
        let mut fcs = Vec::new();
        for (name, shape) in Self::fc_shapes(arch, height, width, classes) {
            let (n, k) = (shape[0], shape[1]);
            let mut w = uniform(&mut rng, n * k, k);
            let b = uniform(&mut rng, n, k);
            let mask = match masks {
                Some(m) => m.get(&name).with_context(|| format!("no mask for {name}"))?.clone(),
                None => Mask::ones(&shape),
            };
            w.iter_mut().enumerate().for_each(|(i, x)| if !mask.get(i) { *x = 0.0 });
            let weight = if sparse { compile(&w, n, k, &mask, dev)?.0 } else { FcWeight::Dense(Var::from_vec(w, (n, k), dev)?) };
            let base = name.trim_end_matches(".weight").to_string();
            fcs.push(Fc { name: base, n, k, mask, weight, bias: Var::from_vec(b, n, dev)? });
        }
        Ok(Self { arch, conv, fcs, height, width })
    }

    /// `(name, Var)` of every trainable tensor.
    pub fn params(&self) -> Vec<(String, Var)> {
        let mut p = Vec::new();
        for (i, (w, b)) in self.conv.iter().enumerate() {
            p.push((format!("conv{}.weight", i + 1), w.clone()));
            p.push((format!("conv{}.bias", i + 1), b.clone()));
        }
        for fc in &self.fcs {
            let w = match &fc.weight {
                FcWeight::Dense(w) => w.clone(),
                FcWeight::Sparse { values, .. } => values.clone(),
            };
            p.push((fc.param_name(), w));
            p.push((format!("{}.bias", fc.name), fc.bias.clone()));
        }
        p
    }

    /// Logits; with `dense_w`, the linear layers use these dense weights instead (RigL's gradient pass).
    pub fn forward(&self, x: &Tensor, dense_w: Option<&[Var]>) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        if self.arch == DstArch::Conv {
            let b = x.dim(0)?;
            h = h.reshape((b, 1, self.height, self.width))?;
            for (i, (w, bias)) in self.conv.iter().enumerate() {
                let pad = if i == 0 { 2 } else { 0 };
                h = relu_max_pool2x2(&conv2d(&h, w, bias, pad)?)?;
            }
            h = h.flatten_from(1)?;
        }
        let last = self.fcs.len() - 1;
        for (i, fc) in self.fcs.iter().enumerate() {
            h = match (dense_w, &fc.weight) {
                (Some(ws), _) => matmul_cpu_invariant(&h, &ws[i].as_tensor().t()?)?,
                (None, FcWeight::Dense(w)) => matmul_cpu_invariant(&h, &w.as_tensor().t()?)?,
                (None, FcWeight::Sparse { pattern, values }) => sparse_matmul(&h, values.as_tensor(), pattern)?,
            };
            h = h.broadcast_add(fc.bias.as_tensor())?;
            if i < last {
                h = h.relu()?;
            }
        }
        Ok(h)
    }

    /// Sparsity of the linear layers by their masks.
    pub fn sparsity(&self) -> f64 {
        let (kept, total) = self.fcs.iter().fold((0, 0), |(a, b), f| (a + f.mask.count_kept(), b + f.mask.len()));
        1.0 - kept as f64 / total as f64
    }

    /// The linear layers' masks.
    pub fn masks(&self) -> MaskSet {
        let mut m = MaskSet::new();
        for f in &self.fcs {
            m.insert(format!("{}.weight", f.name), f.mask.clone());
        }
        m
    }
}

/// Compiles `w [n, k]` (row-major) at `mask` to CSR; returns the layer weight and its values Var.
fn compile(w: &[f32], n: usize, k: usize, mask: &Mask, dev: &Device) -> Result<(FcWeight, Var)> {
    let bm = Bitmask::from_bools(n, k, &mask.to_bools())?;
    let csr = Csr::from_dense(w, n, k, &bm)?;
    let values = Var::from_slice(csr.values(), csr.nnz(), dev)?;
    let pattern: Arc<dyn SparseMatrix> = Arc::new(csr);
    Ok((FcWeight::Sparse { pattern, values: values.clone() }, values))
}

/// Installs `new` as `fc`'s mask: grown weights are 0, kept ones keep value and optimizer state
/// (remapped by position), the CSR pattern is rebuilt.
pub fn recompile(fc: &mut Fc, new: Mask, opt: &mut dyn Optimizer, dev: &Device) -> Result<()> {
    let w = fc.dense_weight()?;
    let mut dense = vec![0f32; w.len()];
    let mut from = Vec::with_capacity(new.count_kept());
    let mut rank = 0usize;
    for i in 0..w.len() {
        let (was, is) = (fc.mask.get(i), new.get(i));
        if is {
            from.push(was.then_some(rank));
            if was {
                dense[i] = w[i];
            }
        }
        rank += was as usize;
    }
    let name = fc.param_name();
    match fc.weight {
        FcWeight::Sparse { .. } => {
            let (weight, values) = compile(&dense, fc.n, fc.k, &new, dev)?;
            opt.remap_param(&name, values, &from)?;
            fc.weight = weight;
        }
        FcWeight::Dense(_) => opt.set_mask(&name, Some(&new.to_bools()))?,
    }
    fc.mask = new;
    Ok(())
}

/// What one run produced.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    pub seed: u64,
    pub test_acc: f64,
    pub dev_acc: f64,
    /// ITOP's R_s at the end of training.
    pub itop_rate: f64,
    pub train_seconds: f64,
    /// Wall seconds of each epoch (training only).
    pub epoch_seconds: Vec<f64>,
    pub final_sparsity: f64,
    pub steps: usize,
    pub mask_updates: usize,
    pub final_train_loss: f64,
}

/// Total optimizer steps of a config on `n` training examples.
pub fn total_steps(cfg: &DstConfig, n: usize) -> usize {
    cfg.epochs * n.div_ceil(cfg.batch_size)
}

/// The DST state machine around a model: schedules, tracker, optimizer.
pub struct DstTrainer {
    pub cfg: DstConfig,
    pub model: DstModel,
    pub opt: Box<dyn Optimizer>,
    total_steps: usize,
    /// The prune-and-grow rule (SET, RigL, GraNet, GMP) or static mask; `None` for dense.
    pub pruner: Option<Pruner>,
    updates: UpdateSchedule,
    pub mask_updates: usize,
    dev: Device,
}

impl DstTrainer {
    /// Builds the starting model: dense (dense, GMP), random ERK at the target (static, SET, RigL)
    /// or at `granet_initial` (GraNet).
    pub fn new(cfg: &DstConfig, height: usize, width: usize, classes: usize, n_train: usize, seed: u64, dev: &Device) -> Result<Self> {
        cfg.validate()?;
        let total = total_steps(cfg, n_train);
        let t_end = ((total as f64 * cfg.end_fraction) as usize).max(1);
        let updates = UpdateSchedule { delta_t: cfg.delta_t, t_end, alpha: cfg.alpha };
        updates.validate()?;
        let last_update = (t_end - 1) / cfg.delta_t * cfg.delta_t;
        let initial = match cfg.method {
            Method::Granet => cfg.granet_initial,
            _ => 0.0,
        };
        let prune_sched = Schedule::Gradual { initial, final_sparsity: cfg.sparsity, start: 0, end: last_update.max(1), frequency: cfg.delta_t };
        if matches!(cfg.method, Method::Granet | Method::Gmp) {
            ensure!(last_update > 0, "{:?} needs at least one mask update: ΔT = {} but updates stop at step {t_end}", cfg.method, cfg.delta_t);
            ensure!(initial <= cfg.sparsity, "GraNet's initial sparsity {initial} is above the target {}", cfg.sparsity);
            prune_sched.validate()?;
        }
        let shapes = DstModel::fc_shapes(cfg.arch, height, width, classes);
        // The prune-and-grow rule as a Pruner configuration (ERK allocation, RigL §3).
        let config = match cfg.method {
            Method::Dense => None,
            Method::Static => Some(PrunerConfig::one_shot(Criterion::Magnitude, cfg.sparsity).allocation(Allocation::erk())),
            Method::Set => Some(PrunerConfig::dst(cfg.sparsity, updates, GrowRule::Random)),
            Method::Rigl => Some(PrunerConfig::dst(cfg.sparsity, updates, GrowRule::Gradient)),
            Method::Granet => Some(PrunerConfig::new(Criterion::Magnitude, prune_sched).allocation(Allocation::erk()).regrow(updates, GrowRule::Gradient)),
            // GMP on the DST clock: GraNet's schedule from dense, with no regrowth (α = 0).
            Method::Gmp => Some(
                PrunerConfig::new(Criterion::Magnitude, prune_sched).allocation(Allocation::erk()).regrow(UpdateSchedule { alpha: 0.0, ..updates }, GrowRule::Random),
            ),
        };
        let mut pruner = match config {
            Some(c) => Some(Pruner::new(c.seed(seed), shapes)?),
            None => None,
        };
        let start = match (&mut pruner, cfg.method) {
            (Some(p), Method::Static | Method::Set | Method::Rigl | Method::Granet) => Some(p.start_random()?.clone()),
            _ => None,
        };
        let sparse = start.is_some();
        let model = DstModel::new(cfg.arch, height, width, classes, seed, start.as_ref(), sparse, dev)?;
        let opt: Box<dyn Optimizer> = match cfg.optimizer {
            DstOptimizer::Adam => Box::new(AdamW::new(model.params(), AdamWConfig { lr: cfg.lr, weight_decay: cfg.weight_decay, ..Default::default() })?),
            DstOptimizer::Sgd => Box::new(Sgd::new(model.params(), SgdConfig { lr: cfg.lr, momentum: 0.9, nesterov: false, weight_decay: cfg.weight_decay })?),
        };
        Ok(Self { cfg: cfg.clone(), model, opt, total_steps: total, pruner, updates, mask_updates: 0, dev: dev.clone() })
    }

    /// One dense gradient of the loss w.r.t. every linear weight, with a masked-dense pass.
    pub fn dense_grads(&self, x: &Tensor, y: &Tensor) -> Result<Vec<Vec<f32>>> {
        let ws: Vec<Var> = self.model.fcs.iter().map(|f| Ok(Var::from_vec(f.dense_weight()?, (f.n, f.k), &self.dev)?)).collect::<Result<_>>()?;
        let loss = candle_nn::loss::cross_entropy(&self.model.forward(x, Some(&ws))?, y)?;
        let g = loss.backward()?;
        ws.iter().map(|w| Ok(g.get(w).context("no gradient for a linear weight")?.flatten_all()?.to_vec1()?)).collect()
    }

    /// Mask update after `step` finished steps (a no-op off the schedule); `x, y` is the current batch.
    pub fn maybe_update(&mut self, step: usize, x: &Tensor, y: &Tensor) -> Result<bool> {
        let mut opt = std::mem::replace(&mut self.opt, placeholder_optimizer()?);
        let r = self.update_with(opt.as_mut(), step, x, y);
        self.opt = opt;
        r
    }

    /// ITOP's R_s (Liu et al. 2021, §4): the fraction of linear weights ever active (the starting
    /// mask's density for dense and static runs).
    pub fn itop_rate(&self) -> f64 {
        match self.pruner.as_ref().and_then(Pruner::itop_rate) {
            Some(r) => r,
            None => ItopTracker::new(&self.model.masks()).rate(),
        }
    }

    /// Whether a mask update falls after `step` finished steps.
    fn is_update_step(&self, step: usize) -> bool {
        !matches!(self.cfg.method, Method::Dense | Method::Static) && self.updates.is_update_step(step)
    }

    /// [`DstTrainer::maybe_update`] with the optimizer lent by the training loop.
    fn update_with(&mut self, opt: &mut dyn Optimizer, step: usize, x: &Tensor, y: &Tensor) -> Result<bool> {
        let m = self.cfg.method;
        if !self.is_update_step(step) {
            return Ok(false);
        }
        let grads: Option<Scores> = if matches!(m, Method::Rigl | Method::Granet) {
            Some(self.model.fcs.iter().map(|f| format!("{}.weight", f.name)).zip(self.dense_grads(x, y)?).collect())
        } else {
            None
        };
        // The pruner scores dense copies of the weights; the layers are then recompiled at its masks.
        let dense: Vec<(String, Var)> =
            self.model.fcs.iter().map(|f| Ok((format!("{}.weight", f.name), Var::from_vec(f.dense_weight()?, (f.n, f.k), &self.dev)?))).collect::<Result<_>>()?;
        let pruner = self.pruner.as_mut().context("a DST method without a pruner")?;
        let mut inputs = match &grads {
            Some(g) => Inputs::none().with_dense_grads(g),
            None => Inputs::none(),
        };
        let Some(masks) = pruner.step(step, &dense, &mut inputs)? else { return Ok(false) };
        for fc in self.model.fcs.iter_mut() {
            let new = masks.require(&format!("{}.weight", fc.name))?.clone();
            recompile(fc, new, opt, &self.dev)?;
        }
        self.mask_updates += 1;
        Ok(true)
    }

    /// Checks the invariants: every layer holds exactly its mask's count and nothing off the mask.
    pub fn check_exact(&self) -> Result<()> {
        for fc in &self.model.fcs {
            let w = fc.dense_weight()?;
            let off = (0..w.len()).filter(|&i| !fc.mask.get(i) && w[i] != 0.0).count();
            ensure!(off == 0, "{}: {off} weights off the mask are non-zero", fc.name);
            if let FcWeight::Sparse { pattern, values } = &fc.weight {
                ensure!(pattern.nnz() == fc.mask.count_kept() && values.elem_count() == pattern.nnz(), "{}: pattern holds {} values for {} kept", fc.name, pattern.nnz(), fc.mask.count_kept());
            }
        }
        Ok(())
    }

    /// Trains for the configured epochs on the training loop ([`Fit`]); `data_seed` orders the
    /// batches. Returns the steps, the last step's loss and the wall seconds of each epoch.
    pub fn train(&mut self, split: &ImageSplit, data_seed: u64) -> Result<(usize, f64, Vec<f64>)> {
        ensure!(!split.is_empty(), "training split is empty");
        let mut opt = std::mem::replace(&mut self.opt, placeholder_optimizer()?);
        let r = self.fit(opt.as_mut(), split, data_seed);
        self.opt = opt;
        let out = r?;
        Ok((out.steps, out.last_loss, out.epoch_seconds))
    }

    fn fit(&mut self, opt: &mut dyn Optimizer, split: &ImageSplit, data_seed: u64) -> Result<FitOutcome> {
        let (hw, dev) = (self.model.height * self.model.width, self.dev.clone());
        let lr = Lr::Schedule { schedule: self.cfg.lr_schedule, base: self.cfg.lr, total: self.total_steps };
        let params = self.model.params();
        Fit::new(self.cfg.epochs, BatchOrder::Shuffled { n: split.len(), batch_size: self.cfg.batch_size, seed: data_seed }).lr(lr).run(
            self,
            opt,
            params,
            |t: &mut DstTrainer, idx: &[usize], _: &StepInfo| {
                let (x, y) = batch_tensor(split, idx, hw, &dev)?;
                Ok(StepLoss { loss: candle_nn::loss::cross_entropy(&t.model.forward(&x, None)?, &y)?, examples: idx.len() })
            },
            &mut DstHooks { split, hw },
        )
    }

    /// Accuracy on `split`.
    pub fn evaluate(&self, split: &ImageSplit) -> Result<f64> {
        let hw = self.model.height * self.model.width;
        let all: Vec<usize> = (0..split.len()).collect();
        let mut pred = Vec::with_capacity(split.len());
        for idx in all.chunks(1000) {
            let (x, _) = batch_tensor(split, idx, hw, &self.dev)?;
            let p = self.model.forward(&x, None)?.argmax(D::Minus1)?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
            pred.extend(p.into_iter().map(|v| v as usize));
        }
        Ok(sprig_data::metrics::accuracy(&pred, &split.labels))
    }
}

/// The DST side of the training loop: the mask update after each step (on the current batch),
/// and a per-epoch debug line.
struct DstHooks<'a> {
    split: &'a ImageSplit,
    hw: usize,
}

impl Hooks<DstTrainer> for DstHooks<'_> {
    fn after_step(&mut self, t: &mut DstTrainer, ctx: &mut Ctx, _loss: f64) -> Result<()> {
        if !t.is_update_step(ctx.step) {
            return Ok(());
        }
        let (x, y) = batch_tensor(self.split, ctx.batch, self.hw, &t.dev)?;
        if t.update_with(ctx.opt, ctx.step, &x, &y)? {
            *ctx.params = t.model.params();
        }
        Ok(())
    }

    fn epoch_end(&mut self, t: &mut DstTrainer, ctx: &mut Ctx, mean_loss: f64) -> Result<()> {
        tracing::debug!("epoch {}: mean loss {mean_loss:.4}, sparsity {:.4}, R_s {:.4}", ctx.epoch, t.model.sparsity(), t.itop_rate());
        Ok(())
    }
}

/// An optimizer over no parameters, held by [`DstTrainer`] while the real one is lent out.
fn placeholder_optimizer() -> Result<Box<dyn Optimizer>> {
    Ok(Box::new(Sgd::new(Vec::new(), SgdConfig::default())?))
}

/// Trains one seed end to end and evaluates it.
pub fn run_one(cfg: &DstConfig, data: &sprig_data::ImageDataset, seed: u64, dev: &Device) -> Result<RunResult> {
    let mut t = DstTrainer::new(cfg, data.height, data.width, data.classes.len(), data.train.len(), seed, dev)?;
    let t0 = std::time::Instant::now();
    let (steps, loss, epoch_seconds) = t.train(&data.train, seed.wrapping_mul(7919).wrapping_add(1))?;
    let train_seconds = t0.elapsed().as_secs_f64();
    t.check_exact()?;
    Ok(RunResult {
        seed,
        test_acc: t.evaluate(&data.test)?,
        dev_acc: t.evaluate(&data.dev)?,
        itop_rate: t.itop_rate(),
        train_seconds,
        epoch_seconds,
        final_sparsity: t.model.sparsity(),
        steps,
        mask_updates: t.mask_updates,
        final_train_loss: loss,
    })
}
