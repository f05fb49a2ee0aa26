//! int8 inference for the encoder linears (sprig-kernels' [`QuantLinear`]: weights per output
//! channel, activations per token, VNNI where the CPU has it). Pruned weights stay pruned: a zero
//! quantizes to zero and whole empty 4-column groups are skipped, so a 90%-sparse model runs int8
//! *and* sparse. Attention, LayerNorm, embeddings and the head stay f32.
use super::{BertEncoder, Layer, Ops};
use crate::error::{BertError, Result};
use crate::nn::Linear;
use candle_core::Tensor;
use serde::Serialize;
use sprig_kernels::nn::{ops, Act};
use sprig_kernels::QuantLinear;
use std::sync::Arc;

/// An int8 linear and its f32 bias.
#[derive(Clone, Debug)]
pub(super) struct QLinear {
    w: Arc<QuantLinear>,
    bias: Arc<Vec<f32>>,
}

impl QLinear {
    pub(super) fn forward(&self, x: &Tensor, act: Act) -> Result<Tensor> {
        Ok(ops::quant_linear(x, &self.w, Some(self.bias.clone()), act)?)
    }
}

/// A layer's linears in int8: Q, K and V stacked into one `[3H, H]` weight (one pass over X),
/// the attention output, and the FFN's two linears (`None` for a MoE-fied FFN, which keeps its
/// f32 experts).
#[derive(Clone, Debug)]
pub(super) struct Int8Layer {
    pub(super) qkv: QLinear,
    pub(super) attn_out: QLinear,
    pub(super) ffn: Option<(QLinear, QLinear)>,
}

/// What [`BertEncoder::quantize_int8`] did, for logs and result files.
#[derive(Clone, Debug, Serialize)]
pub struct Int8Summary {
    pub path: &'static str,
    /// The attention's products: `"int8-vnni"`, or `"f32"` without VNNI or for head widths
    /// that are not a multiple of 16.
    pub attention: &'static str,
    pub linears: usize,
    /// Non-zero weights before and after rounding to int8 (weights below half a step become 0).
    pub nonzero_f32: usize,
    pub nonzero_int8: usize,
    pub weights: usize,
    /// Bytes of the int8 weights with their indices and scales, against the f32 dense weights.
    pub bytes_int8: usize,
    pub bytes_f32_dense: usize,
}

/// The weight as it computes now (a compiled sparse layer's values, else the dense weight) and
/// its bias, flattened.
fn current(l: &Linear) -> Result<(Vec<f32>, usize, usize, Vec<f32>)> {
    let (n, k) = l.weight.as_tensor().dims2()?;
    let w = match &l.sparse {
        Some(s) => s.pattern.to_dense_with(&s.values.as_tensor().to_vec1::<f32>()?).map_err(|e| BertError::Invalid(e.to_string()))?,
        None => l.weight.as_tensor().flatten_all()?.to_vec1::<f32>()?,
    };
    Ok((w, n, k, l.bias_or_zeros()?.to_vec1::<f32>()?))
}

fn quantize(parts: &[&Linear], s: &mut Int8Summary) -> Result<QLinear> {
    let (mut w, mut bias, mut rows, mut cols) = (Vec::new(), Vec::new(), 0, 0);
    for l in parts {
        let (lw, n, k, b) = current(l)?;
        w.extend(lw);
        bias.extend(b);
        rows += n;
        cols = k;
    }
    let q = QuantLinear::from_dense(&w, rows, cols).map_err(|e| BertError::Invalid(format!("int8: {e}")))?;
    s.linears += parts.len();
    s.nonzero_f32 += q.nonzero_f32();
    s.nonzero_int8 += q.nonzero();
    s.weights += rows * cols;
    s.bytes_int8 += q.memory_bytes();
    s.bytes_f32_dense += 4 * rows * cols;
    Ok(QLinear { w: Arc::new(q), bias: Arc::new(bias) })
}

impl BertEncoder {
    /// Quantize every encoder linear to int8 for inference ([`BertEncoder::forward_inference`]);
    /// training or a forward with autograd is refused afterwards. Takes the weights as they are
    /// now (compiled sparse layers included), so prune and fine-tune first.
    pub fn quantize_int8(&mut self) -> Result<Int8Summary> {
        if self.ops() != Ops::Fused {
            return Err(BertError::Invalid(format!("int8 needs the fused ops (erf GELU); this model's activation is {:?}", self.activation)));
        }
        let attention = sprig_kernels::quant::attention::path_for(self.config.head_dim());
        let mut s = Int8Summary { path: sprig_kernels::int8_path(), attention, linears: 0, nonzero_f32: 0, nonzero_int8: 0, weights: 0, bytes_int8: 0, bytes_f32_dense: 0 };
        let mut out = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let qkv = quantize(&[&l.query, &l.key, &l.value], &mut s)?;
            let attn_out = quantize(&[&l.attn_out], &mut s)?;
            let ffn = match l.moe {
                Some(_) => None,
                None => Some((quantize(&[&l.ffn_in], &mut s)?, quantize(&[&l.ffn_out], &mut s)?)),
            };
            out.push(Int8Layer { qkv, attn_out, ffn });
        }
        for (l, q) in self.layers.iter_mut().zip(out) {
            l.int8 = Some(q);
        }
        Ok(s)
    }

    /// True once [`BertEncoder::quantize_int8`] ran.
    pub fn is_int8(&self) -> bool {
        self.layers.iter().any(|l| l.int8.is_some())
    }
}

/// Refuses a training forward through int8 layers.
pub(super) fn check_inference(l: &Layer, train: bool, detach: bool) -> Result<()> {
    if l.int8.is_some() && (train || !detach) {
        return Err(BertError::Invalid("this encoder was quantized to int8 for inference; it cannot be trained or differentiated (load the f32 checkpoint again)".into()));
    }
    Ok(())
}
