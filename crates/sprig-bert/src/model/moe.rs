//! MoE-fied encoders (MoEfication, Zhang et al. 2022): each layer's FFN split into experts by
//! sprig-moe's balanced clustering, with a router trained on the FFN's own inputs to pick the
//! experts whose neurons would be most active.
use super::BertEncoder;
use crate::error::{BertError, Result};
use candle_core::{DType, Tensor};
use sprig_moe::{balanced_clusters, split_ffn, train_router, upcycle_ffn, Capacity, MoeConfig, MoeFfn, RouterConfig};

/// `[B, S, H]` through the layer's experts (every token routed, padding included); `detach`:
/// inference, without autograd. A gated layer (sparse upcycling) adds its auxiliary loss to
/// `aux` when given one (training forwards); MoEfication's unit gates give the router nothing to
/// learn from it.
pub(super) fn forward(m: &MoeFfn, x: &Tensor, detach: bool, aux: Option<&std::sync::Mutex<Vec<Tensor>>>) -> Result<Tensor> {
    let (b, s, h) = x.dims3()?;
    let x = x.reshape((b * s, h))?;
    let y = if detach {
        m.infer(&x, None)?.y
    } else {
        let out = m.forward(&x, None)?;
        if let Some(aux) = aux.filter(|_| !m.config.unit_gates) {
            aux.lock().unwrap_or_else(|e| e.into_inner()).push(out.aux_loss);
        }
        out.y
    };
    Ok(y.reshape((b, s, h))?)
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| BertError::Invalid(e.to_string()))
}

/// The `format` metadata of a router file ([`BertEncoder::save_moe`]).
pub const MOE_FORMAT: &str = "sprig-moe-routers-v1";

/// The router file beside a MoE-fied checkpoint's Hugging Face weights.
pub const MOE_FILE: &str = "moe.safetensors";

/// A layer's dense FFN cut into experts by neuron `groups` (sprig-moe's `split_ffn`).
fn split_layer(l: &super::Layer, groups: &[Vec<usize>], router: &RouterConfig) -> Result<MoeFfn> {
    let (w1, w2) = (l.ffn_in.weight.as_detached_tensor(), l.ffn_out.weight.as_detached_tensor());
    Ok(split_ffn(&w1, &l.ffn_in.bias_or_zeros()?.detach(), &w2, &l.ffn_out.bias_or_zeros()?.detach(), groups, router.clone())?)
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
        self.check_dense_ffns("MoE-fication")?;
        let h = self.config.hidden_size;
        let inputs = self.ffn_inputs(calibration)?;
        let mut report = MoefyReport { calibration_tokens: inputs.first().map_or(0, |x| x.dims()[0]), router_recall: Vec::new() };
        let router = RouterConfig { capacity: Capacity::Dropless, ..RouterConfig::top_k(cfg.experts, cfg.top_k) };
        for (i, l) in self.layers.iter_mut().enumerate() {
            let w1 = l.ffn_in.weight.as_detached_tensor();
            let (f, _) = w1.dims2()?;
            let groups = balanced_clusters(&w1.flatten_all()?.to_vec1::<f32>()?, f, h, cfg.experts, cfg.kmeans_iters, cfg.seed.wrapping_add(i as u64))?;
            let mut m = split_layer(l, &groups, &router)?;
            report.router_recall.push(train_router(&mut m, &inputs[i], cfg.top_k, cfg.router_steps, cfg.router_lr)?);
            l.moe = Some(m);
        }
        Ok(report)
    }

    /// Refuses to make experts (`what`) of an encoder whose FFNs are compiled to a sparse format
    /// or already experts.
    fn check_dense_ffns(&self, what: &str) -> Result<()> {
        if self.layers.iter().any(|l| l.ffn_in.sparse.is_some() || l.ffn_out.sparse.is_some()) {
            return Err(BertError::Invalid(format!("{what} needs the dense FFN weights: this encoder's FFN linears are compiled to a sparse format")));
        }
        if self.is_moefied() {
            return Err(BertError::Invalid("this encoder is MoE-fied already".into()));
        }
        Ok(())
    }

    /// Sparse upcycling (Komatsuzaki et al. 2023): every layer's FFN becomes `experts` copies of
    /// itself behind a new router (seeded N(0, 0.02²), top-`top_k`, gates renormalised over the
    /// chosen experts, dropless), so the model is unchanged until it is trained
    /// ([`crate::moe_finetune::finetune_moefied`] then trains the routers too, with the balancing
    /// loss). Each token runs `top_k` whole FFNs: more compute than dense, not less.
    pub fn upcycle(&mut self, experts: usize, top_k: usize, seed: u64) -> Result<()> {
        self.check_dense_ffns("upcycling")?;
        let router = RouterConfig::top_k(experts, top_k);
        router.validate()?;
        let mut moes = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            let (w1, w2) = (l.ffn_in.weight.as_detached_tensor(), l.ffn_out.weight.as_detached_tensor());
            moes.push(upcycle_ffn(&w1, &l.ffn_in.bias_or_zeros()?.detach(), &w2, &l.ffn_out.bias_or_zeros()?.detach(), router.clone(), seed.wrapping_add(i as u64))?);
        }
        for (l, m) in self.layers.iter_mut().zip(moes) {
            l.moe = Some(m);
        }
        Ok(())
    }

    /// Makes every MoE layer's experts sparse: the largest-magnitude `1 − sparsity` of each
    /// expert matrix kept and run in `format` by sprig-kernels (forward and backward), so a
    /// token's experts cost less again. Their pruned weights are zero in the dense copies too.
    pub fn sparsify_moe_experts(&mut self, sparsity: f64, format: sprig_moe::Format) -> Result<()> {
        if !self.is_moefied() {
            return Err(BertError::Invalid("this encoder has no experts to sparsify (MoE-fy or upcycle it first)".into()));
        }
        for m in self.layers.iter_mut().filter_map(|l| l.moe.as_mut()) {
            m.sparsify_experts(sparsity, format)?;
        }
        Ok(())
    }

    /// Whether the MoE layers weigh their experts by the router's gates (upcycled) rather than
    /// summing them (MoEfication's split).
    pub fn moe_is_gated(&self) -> bool {
        self.layers.iter().filter_map(|l| l.moe.as_ref()).any(|m| !m.config.unit_gates)
    }

    /// The sum of the auxiliary losses that training forwards of gated MoE layers collected since
    /// the last call (`None` when there were none), emptying the collection.
    pub fn take_moe_aux_loss(&self) -> Result<Option<Tensor>> {
        let losses = std::mem::take(&mut *self.moe_aux.lock().unwrap_or_else(|e| e.into_inner()));
        let mut it = losses.into_iter();
        let Some(first) = it.next() else { return Ok(None) };
        Ok(Some(it.try_fold(first, |a, b| a + b)?))
    }

    /// Every layer's FFN inputs on `batches` (`(input_ids, token_type_ids, attention_mask)`), from
    /// the dense encoder, padding excluded: one `[tokens, H]` tensor per layer.
    pub fn ffn_inputs(&self, batches: &[(Tensor, Tensor, Tensor)]) -> Result<Vec<Tensor>> {
        let h = self.config.hidden_size;
        let mut inputs: Vec<Vec<Tensor>> = vec![Vec::new(); self.layers.len()];
        for (ids, types, mask) in batches {
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
        inputs.iter().map(|xs| Ok(Tensor::cat(xs, 0)?)).collect()
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

    /// The MoE-fied layers' parameters (`encoder.layer.{i}.moe.router.weight`,
    /// `...moe.experts.{j}.w1`, ...), for an optimizer.
    pub fn moe_params(&self) -> Vec<(String, candle_core::Var)> {
        self.layers
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.moe.as_ref().map(|m| (i, m)))
            .flat_map(|(i, m)| m.params().into_iter().map(move |(n, v)| (format!("encoder.layer.{i}.moe.{n}"), v)))
            .collect()
    }

    /// Writes every MoE-fied layer's experts back into its dense FFN weights, expert after expert
    /// (expert `e` becomes FFN neurons `e·f .. (e+1)·f`; the shared output bias becomes the FFN's
    /// output bias), so that the Hugging Face weights run the model with every expert on, and
    /// [`BertEncoder::load_moe`] cuts them back into the same experts. Refused when an expert has
    /// a non-zero output bias of its own (a top-k model could not then be folded exactly).
    pub fn fold_moe_into_ffn(&mut self) -> Result<()> {
        for (i, l) in self.layers.iter_mut().enumerate() {
            let Some(m) = &l.moe else { continue };
            m.experts.iter().try_for_each(|x| x.sync_dense())?;
            let cat = |f: &dyn Fn(&sprig_moe::Expert) -> Tensor, dim: usize| Tensor::cat(&m.experts.iter().map(f).collect::<Vec<_>>(), dim);
            for x in &m.experts {
                if x.b2.as_tensor().abs()?.max_all()?.to_scalar::<f32>()? != 0.0 {
                    return Err(BertError::Invalid(format!("layer {i}: an expert has its own output bias; the experts cannot be folded into one FFN")));
                }
            }
            let want = l.ffn_in.weight.dims().to_vec();
            let w1 = cat(&|x| x.w1.as_detached_tensor(), 0)?;
            if w1.dims() != want.as_slice() {
                return Err(BertError::Invalid(format!("layer {i}: the experts hold {:?} FFN-in weights, the FFN {want:?}", w1.dims())));
            }
            l.ffn_in.weight.set(&w1)?;
            if let Some(b) = &l.ffn_in.bias {
                b.set(&cat(&|x| x.b1.as_detached_tensor(), 0)?)?;
            }
            l.ffn_out.weight.set(&cat(&|x| x.w2.as_detached_tensor(), 1)?.contiguous()?)?;
            if let (Some(b), Some(ob)) = (&l.ffn_out.bias, &m.out_bias) {
                b.set(&ob.as_detached_tensor())?;
            }
        }
        Ok(())
    }

    /// Saves the routers of a MoE-fied encoder whose experts were folded
    /// ([`BertEncoder::fold_moe_into_ffn`]) to `path` (safetensors, written to a temporary file
    /// and renamed): `encoder.layer.{i}.moe.router.weight` `[E, H]` per layer, and the routing in
    /// the metadata. Gated (upcycled) layers, whose experts cannot be folded, also store every
    /// expert (`...moe.experts.{j}.w1|b1|w2`), the shared output bias and the layer settings.
    pub fn save_moe(&self, path: &std::path::Path) -> Result<()> {
        let mut tensors = Vec::new();
        let mut meta = std::collections::HashMap::new();
        for (i, l) in self.layers.iter().enumerate() {
            if let Some(m) = &l.moe {
                m.experts.iter().try_for_each(|x| x.sync_dense())?;
                tensors.push((format!("encoder.layer.{i}.moe.router.weight"), m.router.as_detached_tensor()));
                meta.entry("router".to_string()).or_insert(to_json(&m.config.router)?);
                if !m.config.unit_gates {
                    // Gated experts (upcycled) do not fold into one FFN: they are stored whole.
                    meta.entry("moe_config".to_string()).or_insert(to_json(&m.config)?);
                    for (j, x) in m.experts.iter().enumerate() {
                        for (n, v) in [("w1", &x.w1), ("b1", &x.b1), ("w2", &x.w2)] {
                            tensors.push((format!("encoder.layer.{i}.moe.experts.{j}.{n}"), v.as_detached_tensor()));
                        }
                    }
                    if let Some(b) = &m.out_bias {
                        tensors.push((format!("encoder.layer.{i}.moe.out_bias"), b.as_detached_tensor()));
                    }
                }
            }
        }
        if tensors.is_empty() {
            return Err(BertError::Invalid("this encoder is not MoE-fied: no routers to save".into()));
        }
        meta.insert("format".into(), MOE_FORMAT.into());
        let bytes = crate::weights::to_safetensors_bytes(&tensors, Some(meta))?;
        sprig_train::write_atomic(path, &bytes)?;
        Ok(())
    }

    /// MoE-fies this encoder from a file written by [`BertEncoder::save_moe`]: each layer with a
    /// router `[E, H]` has its FFN cut into `E` experts of consecutive neurons. Errors name the
    /// file when it does not match the model (hidden size, layer, neurons not divisible by `E`).
    pub fn load_moe(&mut self, path: &std::path::Path) -> Result<()> {
        if self.is_moefied() {
            return Err(BertError::Invalid("this encoder is MoE-fied already".into()));
        }
        let bad = |msg: String| BertError::Invalid(format!("{}: {msg}", path.display()));
        let bytes = std::fs::read(path).map_err(crate::error::io_err(path))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| BertError::Safetensors { path: path.into(), msg: e.to_string() })?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(MOE_FORMAT) {
            return Err(bad(format!("not a sprig MoE router file (metadata format {:?}, expected {MOE_FORMAT:?})", meta.get("format"))));
        }
        let router: RouterConfig = serde_json::from_str(meta.get("router").ok_or_else(|| bad("no router settings in its metadata".into()))?).map_err(|e| bad(format!("router settings: {e}")))?;
        router.validate()?;
        let tensors = crate::weights::load_safetensors(&[path], &self.device)?;
        // Present when the experts are stored whole (gated, upcycled); else they are the FFN's
        // neurons cut into consecutive groups.
        let gated: Option<MoeConfig> = meta.get("moe_config").map(|c| serde_json::from_str(c).map_err(|e| bad(format!("MoE settings: {e}")))).transpose()?;
        let h = self.config.hidden_size;
        let n = self.layers.len();
        let mut moes = Vec::new();
        for (name, t) in &tensors {
            let Some(i) = name.strip_prefix("encoder.layer.").and_then(|r| r.strip_suffix(".moe.router.weight")) else {
                if gated.is_some() && name.contains(".moe.") {
                    continue; // an expert's weights, read with its router below
                }
                return Err(bad(format!("tensor {name} is not the router of one of the model's {n} layers")));
            };
            let i = i.parse::<usize>().ok().filter(|&i| i < n).ok_or_else(|| bad(format!("tensor {name} is not the router of one of the model's {n} layers")))?;
            let (e, th) = t.dims2().map_err(|_| bad(format!("{name} has shape {:?}, expected [experts, {h}]", t.dims())))?;
            let l = &self.layers[i];
            let f = l.ffn_in.weight.dims()[0];
            let m = match &gated {
                Some(cfg) => {
                    if th != h || e != cfg.router.experts || cfg.hidden != h {
                        return Err(bad(format!("{name} has shape [{e}, {th}]; the model needs [{}, {h}]", cfg.router.experts)));
                    }
                    let get = |k: &str, want: &[usize]| -> Result<candle_core::Var> {
                        let key = format!("encoder.layer.{i}.moe.{k}");
                        let t = tensors.get(&key).ok_or_else(|| bad(format!("{key} is missing")))?;
                        if t.dims() != want {
                            return Err(bad(format!("{key} has shape {:?}, expected {want:?}", t.dims())));
                        }
                        Ok(candle_core::Var::from_tensor(t)?)
                    };
                    let fe = cfg.expert_ffn;
                    let experts = (0..e)
                        .map(|j| {
                            let b2 = candle_core::Var::from_tensor(&Tensor::zeros(h, DType::F32, &self.device)?)?;
                            Ok(sprig_moe::Expert::dense(get(&format!("experts.{j}.w1"), &[fe, h])?, get(&format!("experts.{j}.b1"), &[fe])?, get(&format!("experts.{j}.w2"), &[h, fe])?, b2))
                        })
                        .collect::<Result<Vec<_>>>()?;
                    let out_bias = tensors.contains_key(&format!("encoder.layer.{i}.moe.out_bias")).then(|| get("out_bias", &[h])).transpose()?;
                    MoeFfn { config: cfg.clone(), router: candle_core::Var::from_tensor(t)?, experts, out_bias }
                }
                None => {
                    if th != h || e != router.experts || !f.is_multiple_of(e) {
                        return Err(bad(format!("{name} has shape [{e}, {th}]; the model needs [{}, {h}] with its {f} FFN neurons divisible by the experts", router.experts)));
                    }
                    let groups: Vec<Vec<usize>> = (0..e).map(|x| (x * f / e..(x + 1) * f / e).collect()).collect();
                    let m = split_layer(l, &groups, &router)?;
                    m.router.set(t)?;
                    m
                }
            };
            moes.push((i, m));
        }
        for (i, m) in moes {
            self.layers[i].moe = Some(m);
        }
        Ok(())
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
