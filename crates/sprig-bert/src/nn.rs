//! Building blocks with autograd through every trainable tensor: linear, differentiable LayerNorm,
//! seeded dropout, activations. (candle-nn's fused LayerNorm has no backward; candle's CPU RNG
//! cannot be seeded: both would break training or reproducibility.)
use candle_core::{DType, Device, Result, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sprig_kernels::candle::{sparse_matmul, Format};
use sprig_kernels::nn::{ops, Act, DropoutSpec};
use std::sync::Mutex;

pub use sprig_kernels::candle::SparseWeight;

/// `y = x Wᵀ + b` with `W` stored `[out, in]` as in PyTorch / Hugging Face; once compiled
/// (`sparse` set) the product runs on sprig-kernels' sparse kernels and `weight` is stale until
/// [`Linear::sync_dense`].
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Var,
    pub bias: Option<Var>,
    pub sparse: Option<SparseWeight>,
}

impl Linear {
    /// Compile to `format` keeping the positions where `keep` is true.
    pub fn compile(&mut self, keep: &sprig_kernels::Bitmask, format: Format) -> Result<()> {
        self.sparse = Some(SparseWeight::from_bitmask(self.weight.as_tensor(), keep, format)?);
        Ok(())
    }

    /// Write the sparse values back into the dense `weight` (zeros off the pattern).
    pub fn sync_dense(&self) -> Result<()> {
        if let Some(s) = &self.sparse {
            self.weight.set(&s.to_dense()?.reshape(self.weight.shape())?)?;
        }
        Ok(())
    }

    /// The bias, or zeros.
    pub fn bias_or_zeros(&self) -> Result<Tensor> {
        match &self.bias {
            Some(b) => Ok(b.as_tensor().clone()),
            None => Tensor::zeros(self.weight.dim(0)?, DType::F32, self.weight.device()),
        }
    }

    /// The fused-op forward: `dropout(act(x Wᵀ + b))`, dense or sparse.
    /// `detach`: use the parameters without autograd tracking (inference: the ops then keep
    /// nothing for a backward and GELU runs in place).
    pub fn forward_fused(&self, x: &Tensor, act: Act, dropout: Option<DropoutSpec>, detach: bool) -> Result<Tensor> {
        let b = if detach { self.bias_or_zeros()?.detach() } else { self.bias_or_zeros()? };
        match &self.sparse {
            Some(s) => ops::sparse_linear(x, &param(&s.values, detach), &s.pattern, &b, act, dropout),
            None => ops::linear(x, &param(&self.weight, detach), &b, act, dropout),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(s) = &self.sparse {
            let y = sparse_matmul(x, s.values.as_tensor(), &s.pattern)?;
            return match &self.bias {
                Some(b) => y.broadcast_add(b.as_tensor()),
                None => Ok(y),
            };
        }
        let dims = x.dims().to_vec();
        let (k, n) = (dims[dims.len() - 1], self.weight.dim(0)?);
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let y = x.reshape((rows, k))?.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b.as_tensor())?,
            None => y,
        };
        let mut out = dims;
        *out.last_mut().expect("rank >= 1") = n;
        y.reshape(out)
    }
}

/// A parameter's tensor, detached from autograd when `detach`.
pub fn param(v: &Var, detach: bool) -> Tensor {
    if detach { v.as_detached_tensor() } else { v.as_tensor().clone() }
}

/// LayerNorm over the last dimension (Ba et al. 2016), composed of differentiable ops.

#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Var,
    pub bias: Var,
    pub eps: f64,
}

impl LayerNorm {
    /// `[γ; β]` packed for the fused op (differentiable in both unless `detach`).
    pub fn gamma_beta(&self, detach: bool) -> Result<Tensor> {
        Tensor::cat(&[param(&self.weight, detach), param(&self.bias, detach)], 0)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        xn.broadcast_mul(self.weight.as_tensor())?.broadcast_add(self.bias.as_tensor())
    }
}

/// Inverted dropout (Srivastava et al. 2014) with its own seeded generator, so that a run is
/// reproducible for a seed. Active only when `train` is true.
#[derive(Debug)]
pub struct Dropout {
    pub p: f32,
    rng: Mutex<ChaCha8Rng>,
}

impl Dropout {
    pub fn new(p: f32, seed: u64) -> Self {
        Self { p, rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)) }
    }

    /// A fresh dropout draw for a fused op (`None` when inactive); each call advances the
    /// generator, so a run is reproducible for a seed.
    pub fn spec(&self, train: bool) -> Option<DropoutSpec> {
        if !train || self.p == 0.0 {
            return None;
        }
        let seed = self.rng.lock().expect("dropout rng poisoned").random::<u64>();
        Some(DropoutSpec { p: self.p, seed })
    }

    /// How far the generator has advanced (ChaCha's word position), for a resumable run.
    pub fn position(&self) -> u128 {
        self.rng.lock().expect("dropout rng poisoned").get_word_pos()
    }

    /// Moves the generator to a [`Dropout::position`] (a resumed run's next draws are those the
    /// uninterrupted run would have made).
    pub fn set_position(&self, pos: u128) {
        self.rng.lock().expect("dropout rng poisoned").set_word_pos(pos);
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.p == 0.0 {
            return Ok(x.clone());
        }
        let n = x.elem_count();
        let scale = 1.0 / (1.0 - self.p);
        let threshold = (self.p as f64 * u32::MAX as f64) as u32;
        let mut rng = self.rng.lock().expect("dropout rng poisoned");
        let mask: Vec<f32> = (0..n).map(|_| if rng.random::<u32>() < threshold { 0.0 } else { scale }).collect();
        drop(rng);
        x.mul(&Tensor::from_vec(mask, x.shape(), x.device())?)
    }
}

/// Activation of the feed-forward block, by its Hugging Face name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU with erf (Hendrycks & Gimpel 2016), HF "gelu".
    GeluErf,
    /// tanh approximation, HF "gelu_new" / "gelu_pytorch_tanh".
    GeluTanh,
    Relu,
}

impl Activation {
    pub fn from_hf(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Self::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" => Some(Self::GeluTanh),
            "relu" => Some(Self::Relu),
            _ => None,
        }
    }
    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::GeluErf => x.gelu_erf(),
            Self::GeluTanh => x.gelu(),
            Self::Relu => x.relu(),
        }
    }
}

/// Seeded normal(0, std) initialisation (BERT's `initializer_range` = 0.02), Box–Muller.
pub fn randn(shape: &[usize], std: f64, rng: &mut ChaCha8Rng, device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        let u1: f64 = rng.random::<f64>().max(1e-300);
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        v.push((r * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32);
        if v.len() < n {
            v.push((r * (2.0 * std::f64::consts::PI * u2).sin() * std) as f32);
        }
    }
    Tensor::from_vec(v, shape, device)
}

pub fn zeros(shape: &[usize], device: &Device) -> Result<Tensor> {
    Tensor::zeros(shape, DType::F32, device)
}

pub fn ones(shape: &[usize], device: &Device) -> Result<Tensor> {
    Tensor::ones(shape, DType::F32, device)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn layer_norm_matches_definition_and_has_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let x = Var::from_tensor(&randn(&[3, 5, 8], 1.0, &mut rng, &dev)?)?;
        let ln = LayerNorm {
            weight: Var::from_tensor(&randn(&[8], 1.0, &mut rng, &dev)?)?,
            bias: Var::from_tensor(&randn(&[8], 1.0, &mut rng, &dev)?)?,
            eps: 1e-12,
        };
        let y = ln.forward(x.as_tensor())?;
        let xs = x.as_tensor().to_vec3::<f32>()?;
        let (w, b) = (ln.weight.to_vec1::<f32>()?, ln.bias.to_vec1::<f32>()?);
        let ys = y.to_vec3::<f32>()?;
        for i in 0..3 {
            for j in 0..5 {
                let row = &xs[i][j];
                let m = row.iter().sum::<f32>() / 8.0;
                let v = row.iter().map(|a| (a - m) * (a - m)).sum::<f32>() / 8.0;
                for k in 0..8 {
                    let want = (row[k] - m) / (v + 1e-12).sqrt() * w[k] + b[k];
                    assert!((ys[i][j][k] - want).abs() < 1e-5);
                }
            }
        }
        let grads = y.sqr()?.sum_all()?.backward()?;
        for v in [&x, &ln.weight, &ln.bias] {
            let g = grads.get(v).expect("gradient");
            assert!(g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
        }
        Ok(())
    }

    #[test]
    fn dropout_is_seeded_and_scaled() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::ones((100, 100), DType::F32, &dev)?;
        let a = Dropout::new(0.1, 7).forward(&x, true)?.flatten_all()?.to_vec1::<f32>()?;
        let b = Dropout::new(0.1, 7).forward(&x, true)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(a, b);
        let zeros = a.iter().filter(|&&v| v == 0.0).count() as f64 / 1e4;
        assert!((zeros - 0.1).abs() < 0.02, "{zeros}");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        let eval = Dropout::new(0.1, 7).forward(&x, false)?.flatten_all()?.to_vec1::<f32>()?;
        assert!(eval.iter().all(|&v| v == 1.0));
        Ok(())
    }
}
