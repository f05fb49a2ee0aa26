//! MoE-fied encoders (MoEfication, Zhang et al. 2022): each layer's FFN split into experts by
//! sprig-moe's balanced clustering, with a router trained on the FFN's own inputs to pick the
//! experts whose neurons would be most active.
use super::BertEncoder;
use crate::error::{BertError, Result};
use candle_core::{DType, Tensor};
use sprig_moe::{balanced_clusters, split_ffn, train_router, Capacity, MoeFfn, RouterConfig};

/// `[B, S, H]` through the layer's experts (every token routed, padding included); `detach`:
/// inference, without autograd.
pub(super) fn forward(m: &MoeFfn, x: &Tensor, detach: bool) -> Result<Tensor> {
    let (b, s, h) = x.dims3()?;
    let x = x.reshape((b * s, h))?;
    let y = if detach { m.infer(&x, None)?.y } else { m.forward(&x, None)?.y };
    Ok(y.reshape((b, s, h))?)
}

/// How to MoE-fy an encoder.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MoefyConfig {
    pub experts: usize,
    pub top_k: usize,
    /// Rounds of balanced k-means over the FFN-in rows.
    pub kmeans_iters: usize,
    /// Full-batch AdamW steps and learning rate of each layer's router.
    pub router_steps: usize,
    pub router_lr: f64,
    pub seed: u64,
}

impl Default for MoefyConfig {
    /// 8 experts, top-2 (a quarter of the FFN neurons per token), 10 k-means rounds, 300 router
    /// steps at 0.05.
    fn default() -> Self {
        Self { experts: 8, top_k: 2, kmeans_iters: 10, router_steps: 300, router_lr: 0.05, seed: 0 }
    }
}

/// What MoE-fication measured per layer.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct MoefyReport {
    /// Calibration tokens (padding excluded) each router was trained on.
    pub calibration_tokens: usize,
    /// Per layer: share of the true top-k experts the trained router picks, on its calibration
    /// tokens.
    pub router_recall: Vec<f64>,
}

impl BertEncoder {
    /// Replaces every layer's FFN by `cfg.experts` experts (top-`cfg.top_k` routing, dropless),
    /// the routers trained on the FFN inputs of `calibration` batches (`(input_ids,
    /// token_type_ids, attention_mask)`, padding excluded), computed with the dense encoder.
    pub fn moefy(&mut self, cfg: &MoefyConfig, calibration: &[(Tensor, Tensor, Tensor)]) -> Result<MoefyReport> {
        if self.layers.iter().any(|l| l.ffn_in.sparse.is_some() || l.ffn_out.sparse.is_some()) {
            return Err(BertError::Invalid("MoE-fication needs the dense FFN weights: this encoder's FFN linears are compiled to a sparse format".into()));
        }
        if self.layers.iter().any(|l| l.moe.is_some()) {
            return Err(BertError::Invalid("this encoder is MoE-fied already".into()));
        }
        let n = self.layers.len();
        let h = self.config.hidden_size;
        let mut inputs: Vec<Vec<Tensor>> = vec![Vec::new(); n];
        for (ids, types, mask) in calibration {
            let keep: Vec<u32> = mask.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?.iter().enumerate().filter(|(_, &m)| m > 0.0).map(|(i, _)| i as u32).collect();
            let keep = Tensor::from_vec(keep.clone(), keep.len(), &self.device)?;
            self.observe_linear_inputs(ids, types, mask, &mut |name, x| {
                if let Some(i) = name.strip_prefix("encoder.layer.").and_then(|r| r.strip_suffix(".intermediate.dense.weight")).and_then(|i| i.parse::<usize>().ok()) {
                    let d = x.dims();
                    inputs[i].push(x.reshape((d[0] * d[1], h))?.index_select(&keep, 0)?.detach());
                }
                Ok(())
            })?;
        }
        let mut report = MoefyReport { calibration_tokens: inputs.first().map_or(0, |v| v.iter().map(|x| x.dims()[0]).sum()), router_recall: Vec::new() };
        let router = RouterConfig { capacity: Capacity::Dropless, ..RouterConfig::top_k(cfg.experts, cfg.top_k) };
        for (i, l) in self.layers.iter_mut().enumerate() {
            let x = Tensor::cat(&inputs[i], 0)?;
            let w1 = l.ffn_in.weight.as_detached_tensor();
            let (f, _) = w1.dims2()?;
            let groups = balanced_clusters(&w1.flatten_all()?.to_vec1::<f32>()?, f, h, cfg.experts, cfg.kmeans_iters, cfg.seed.wrapping_add(i as u64))?;
            let bias = |lin: &crate::nn::Linear, len: usize| -> Result<Tensor> {
                Ok(match &lin.bias {
                    Some(b) => b.as_detached_tensor(),
                    None => Tensor::zeros(len, DType::F32, &self.device)?,
                })
            };
            let mut m = split_ffn(&w1, &bias(&l.ffn_in, f)?, &l.ffn_out.weight.as_detached_tensor(), &bias(&l.ffn_out, h)?, &groups, router.clone())?;
            report.router_recall.push(train_router(&mut m, &x, cfg.top_k, cfg.router_steps, cfg.router_lr)?);
            l.moe = Some(m);
        }
        Ok(report)
    }

    /// Layer `layer`'s FFN block on `[T, H]` inputs, without the residual and LayerNorm, as inference
    /// runs it: the dense FFN (fused GEMM with the GELU epilogue), or its experts when `experts`
    /// (routing and gathering included). For timing the two side by side.
    pub fn ffn_block(&self, layer: usize, x: &Tensor, experts: bool) -> Result<Tensor> {
        let l = self.layers.get(layer).ok_or_else(|| BertError::Invalid(format!("layer {layer} does not exist (the encoder has {})", self.layers.len())))?;
        match (&l.moe, experts) {
            (Some(m), true) => Ok(m.infer(x, None)?.y),
            (None, true) => Err(BertError::Invalid(format!("layer {layer} is not MoE-fied"))),
            (_, false) => {
                let ff = l.ffn_in.forward_fused(x, sprig_kernels::nn::Act::Gelu, None, true)?;
                Ok(l.ffn_out.forward_fused(&ff, sprig_kernels::nn::Act::Identity, None, true)?)
            }
        }
    }

    /// Whether any layer runs its FFN as experts.
    pub fn is_moefied(&self) -> bool {
        self.layers.iter().any(|l| l.moe.is_some())
    }

    /// Back to the dense FFNs (their weights were never changed).
    pub fn clear_moe(&mut self) {
        self.layers.iter_mut().for_each(|l| l.moe = None);
    }

    /// Sets how many experts each token gets in every MoE-fied layer (e.g. all of them, which
    /// gives the dense FFN back exactly).
    pub fn set_moe_top_k(&mut self, k: usize) -> Result<()> {
        for l in self.layers.iter_mut() {
            if let Some(m) = &mut l.moe {
                let mut r = m.config.router.clone();
                r.routing = sprig_moe::Routing::TopK { k };
                r.validate()?;
                m.config.router = r;
            }
        }
        Ok(())
    }
}
