//! The BERT encoder (Devlin et al. 2019) with every parameter a named `Var`, so that pruning code
//! can mask any linear by its Hugging Face name, and a sequence-classification model on top.
use crate::config::{BertConfig, Pooling};
use crate::error::{BertError, Result};
use crate::nn::{ones, param, randn, zeros, Activation, Dropout, LayerNorm, Linear};
use candle_core::{DType, Device, Tensor, Var, D};
use sprig_kernels::nn::{ops, Act, AttentionSpec};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

mod int8;
mod moe;
pub use int8::Int8Summary;
pub use moe::{MoefyConfig, MoefyReport, MOE_FILE, MOE_FORMAT};

/// Where parameter values come from when building a model.
pub enum Init<'a> {
    /// Pretrained tensors by canonical name (see [`crate::weights::load_safetensors`]); `origin`
    /// names the file(s) for error messages.
    Pretrained { tensors: &'a HashMap<String, Tensor>, origin: PathBuf },
    /// BERT's initialisation: normal(0, 0.02) weights, zero biases, unit LayerNorm gains.
    Random { seed: u64 },
}

struct Builder<'a> {
    init: Init<'a>,
    rng: ChaCha8Rng,
    device: Device,
    params: Vec<(String, Var)>,
}

enum Kind {
    Weight,
    Bias,
    Gain,
}

impl Builder<'_> {
    fn var(&mut self, name: &str, shape: &[usize], kind: Kind) -> Result<Var> {
        let t = match &self.init {
            Init::Pretrained { tensors, origin } => {
                let t = tensors
                    .get(name)
                    .ok_or_else(|| BertError::MissingTensor { path: origin.clone(), name: name.into() })?;
                if t.dims() != shape {
                    return Err(BertError::Tensor {
                        path: origin.clone(),
                        name: name.into(),
                        msg: format!("shape {:?} does not match the config's {:?}", t.dims(), shape),
                    });
                }
                t.clone()
            }
            Init::Random { .. } => match kind {
                Kind::Weight => randn(shape, 0.02, &mut self.rng, &self.device)?,
                Kind::Bias => zeros(shape, &self.device)?,
                Kind::Gain => ones(shape, &self.device)?,
            },
        };
        let v = Var::from_tensor(&t)?;
        self.params.push((name.to_string(), v.clone()));
        Ok(v)
    }
    fn linear(&mut self, prefix: &str, out: usize, inp: usize) -> Result<Linear> {
        Ok(Linear {
            weight: self.var(&format!("{prefix}.weight"), &[out, inp], Kind::Weight)?,
            bias: Some(self.var(&format!("{prefix}.bias"), &[out], Kind::Bias)?),
            sparse: None,
        })
    }
    fn layer_norm(&mut self, prefix: &str, dim: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: self.var(&format!("{prefix}.weight"), &[dim], Kind::Gain)?,
            bias: self.var(&format!("{prefix}.bias"), &[dim], Kind::Bias)?,
            eps,
        })
    }
}

struct Embeddings {
    word: Var,
    position: Var,
    token_type: Var,
    norm: LayerNorm,
    dropout: Dropout,
}

struct Layer {
    /// Attention heads of this layer ([`BertConfig::layer_heads`]), each `head_dim` wide.
    heads: usize,
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    ffn_in: Linear,
    ffn_out: Linear,
    ffn_norm: LayerNorm,
    attn_dropout: Dropout,
    hidden_dropout: Dropout,
    /// Once Q, K and V are compiled: their three patterns stacked row-wise into one `[3H, H]`
    /// pattern whose stored values are Q's, K's and V's values concatenated, so the fused path
    /// runs one sparse product (one packing of X, no concatenation of three outputs).
    qkv_pattern: Option<std::sync::Arc<dyn sprig_kernels::SparseMatrix>>,
    /// The FFN as experts ([`BertEncoder::moefy_layer`]); `ffn_in`/`ffn_out` then go unused.
    moe: Option<sprig_moe::MoeFfn>,
    /// The linears in int8 ([`BertEncoder::quantize_int8`], inference only).
    int8: Option<int8::Int8Layer>,
}

/// Which implementation runs the encoder's layers. Both compute the same function (tests hold
/// them together to ~1e-5); dropout masks differ between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ops {
    /// sprig-kernels' fused ops: faer linears with fused bias/GELU/dropout, fused multi-head
    /// attention, residual + LayerNorm (`sprig_kernels::nn::ops`).
    #[default]
    Fused,
    /// candle's stock ops composed (the reference path).
    Stock,
}

impl std::str::FromStr for Ops {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "fused" => Ok(Self::Fused),
            "stock" => Ok(Self::Stock),
            _ => Err(format!("unknown ops {s:?} (fused, stock)")),
        }
    }
}

/// The encoder: embeddings and `num_hidden_layers` transformer layers, post-LayerNorm.
pub struct BertEncoder {
    pub config: BertConfig,
    embeddings: Embeddings,
    layers: Vec<Layer>,
    activation: Activation,
    params: Vec<(String, Var)>,
    train_word_embeddings: bool,
    ops: Ops,
    device: Device,
    /// The auxiliary losses (load balancing, z-loss) of gated MoE layers from training forwards
    /// since [`BertEncoder::take_moe_aux_loss`] last emptied it.
    moe_aux: std::sync::Mutex<Vec<Tensor>>,
}

/// The names of the encoder linears that BERT-Tickets prunes (Chen et al. 2020, §3): query, key,
/// value, attention output, FFN in and FFN out of every layer.
pub fn is_encoder_linear_weight(name: &str) -> bool {
    name.starts_with("encoder.layer.")
        && name.ends_with(".weight")
        && [".attention.self.query.", ".attention.self.key.", ".attention.self.value.", ".attention.output.dense.", ".intermediate.dense.", ".output.dense."]
            .iter()
            .any(|p| name.contains(p))
}

impl BertEncoder {
    /// Build the encoder; `dropout_seed` seeds every dropout layer (distinct streams per layer).
    pub fn new(config: &BertConfig, init: Init, dropout_seed: u64, device: &Device) -> Result<Self> {
        config.validate().map_err(|msg| BertError::Config { path: "<config>".into(), msg })?;
        let seed = if let Init::Random { seed } = init { seed } else { 0 };
        let mut b = Builder { init, rng: ChaCha8Rng::seed_from_u64(seed), device: device.clone(), params: vec![] };
        let (h, eps) = (config.hidden_size, config.layer_norm_eps);
        let mut drop_id = 0u64;
        let mut dropout = |p: f64| {
            drop_id += 1;
            Dropout::new(p as f32, dropout_seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(drop_id))
        };
        let embeddings = Embeddings {
            word: b.var("embeddings.word_embeddings.weight", &[config.vocab_size, h], Kind::Weight)?,
            position: b.var("embeddings.position_embeddings.weight", &[config.max_position_embeddings, h], Kind::Weight)?,
            token_type: b.var("embeddings.token_type_embeddings.weight", &[config.type_vocab_size, h], Kind::Weight)?,
            norm: b.layer_norm("embeddings.LayerNorm", h, eps)?,
            dropout: dropout(config.hidden_dropout_prob),
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let heads = config.layer_heads(i);
            let a = heads * config.head_dim();
            layers.push(Layer {
                heads,
                query: b.linear(&format!("{p}.attention.self.query"), a, h)?,
                key: b.linear(&format!("{p}.attention.self.key"), a, h)?,
                value: b.linear(&format!("{p}.attention.self.value"), a, h)?,
                attn_out: b.linear(&format!("{p}.attention.output.dense"), h, a)?,
                attn_norm: b.layer_norm(&format!("{p}.attention.output.LayerNorm"), h, eps)?,
                ffn_in: b.linear(&format!("{p}.intermediate.dense"), config.intermediate_size, h)?,
                ffn_out: b.linear(&format!("{p}.output.dense"), h, config.intermediate_size)?,
                ffn_norm: b.layer_norm(&format!("{p}.output.LayerNorm"), h, eps)?,
                attn_dropout: dropout(config.attention_probs_dropout_prob),
                hidden_dropout: dropout(config.hidden_dropout_prob),
                qkv_pattern: None,
                moe: None,
                int8: None,
            });
        }
        let activation = Activation::from_hf(&config.hidden_act).expect("validated");
        Ok(Self {
            config: config.clone(),
            embeddings,
            layers,
            activation,
            params: b.params,
            train_word_embeddings: true,
            ops: Ops::default(),
            device: device.clone(),
            moe_aux: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// All parameters by Hugging Face name (without `bert.` prefix), in checkpoint order.
    pub fn named_params(&self) -> &[(String, Var)] {
        &self.params
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Freeze or unfreeze the word-embedding matrix (frozen: no gradient is computed for it).
    pub fn set_train_word_embeddings(&mut self, train: bool) {
        self.train_word_embeddings = train;
    }

    pub fn trains_word_embeddings(&self) -> bool {
        self.train_word_embeddings
    }

    /// Choose the implementation of the layers (fused by default). Fused needs the exact GELU
    /// (`hidden_act = "gelu"`); other activations always run on stock ops.
    pub fn set_ops(&mut self, ops: Ops) {
        self.ops = ops;
    }

    /// The encoder linears by Hugging Face weight name (`encoder.layer.{i}.….weight`).
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = vec![];
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = format!("encoder.layer.{i}");
            out.push((format!("{p}.attention.self.query.weight"), &mut l.query));
            out.push((format!("{p}.attention.self.key.weight"), &mut l.key));
            out.push((format!("{p}.attention.self.value.weight"), &mut l.value));
            out.push((format!("{p}.attention.output.dense.weight"), &mut l.attn_out));
            out.push((format!("{p}.intermediate.dense.weight"), &mut l.ffn_in));
            out.push((format!("{p}.output.dense.weight"), &mut l.ffn_out));
        }
        out
    }

    /// Bytes of the encoder linears' weights: `(as dense f32, as stored now)`; the two differ for
    /// linears compiled by [`BertEncoder::compile_sparse`] (values + indices of their format).
    pub fn linear_weight_bytes(&mut self) -> (usize, usize) {
        self.linears_mut().iter().fold((0, 0), |(d, s), (_, l)| {
            let dense = l.weight.elem_count() * std::mem::size_of::<f32>();
            (d + dense, s + l.sparse.as_ref().map_or(dense, |sw| sw.pattern.memory_bytes()))
        })
    }

    /// Compile the encoder linears masked in `masks` into sparse layers of `format` (each mask's
    /// bits go to the kernels as a `Bitmask`, no boolean pass). Their trainable parameter becomes
    /// the stored values, listed by [`BertEncoder::named_params`] as `"<weight name>:values"` in
    /// place of the dense weight. One format for all: [`BertEncoder::compile_sparse_each`].
    pub fn compile_sparse(&mut self, masks: &sprig_prune::MaskSet, format: sprig_kernels::candle::Format) -> Result<()> {
        let formats: BTreeMap<String, sprig_kernels::candle::Format> = masks.iter().map(|(n, _)| (n.clone(), format)).collect();
        self.compile_sparse_each(masks, &formats)
    }

    /// Compile each masked encoder linear to its own format, `formats[weight name]`; a masked
    /// linear without an entry stays dense (its weight holds exact zeros at the pruned positions,
    /// so it computes the same function). Q, K and V of a layer compiled to one format are
    /// stacked into one pattern (one sparse product, see `Layer::qkv_pattern`).
    pub fn compile_sparse_each(
        &mut self,
        masks: &sprig_prune::MaskSet,
        formats: &BTreeMap<String, sprig_kernels::candle::Format>,
    ) -> Result<()> {
        if let Some(name) = formats.keys().find(|n| masks.get(n).is_none()) {
            return Err(BertError::Invalid(format!("a format is given for {name} but no mask")));
        }
        let mut known = HashSet::new();
        let mut replaced = HashMap::new();
        for (name, lin) in self.linears_mut() {
            if let Some(m) = masks.get(&name) {
                if m.len() != lin.weight.elem_count() {
                    return Err(BertError::Candle(candle_core::Error::Msg(format!(
                        "mask for {name} has {} entries, the weight has {}",
                        m.len(),
                        lin.weight.elem_count()
                    ))));
                }
                if let Some(&format) = formats.get(&name) {
                    lin.compile(&m.to_bitmask()?, format)?;
                    replaced.insert(name.clone(), lin.sparse.as_ref().expect("compiled").values.clone());
                }
                known.insert(name);
            }
        }
        if let Some((unknown, _)) = masks.iter().find(|(n, _)| !known.contains(*n)) {
            return Err(BertError::Candle(candle_core::Error::Msg(format!("{unknown} is not an encoder linear weight"))));
        }
        for (name, var) in self.params.iter_mut() {
            if let Some(v) = replaced.remove(name.as_str()) {
                *name = format!("{name}:values");
                *var = v;
            }
        }
        for (i, l) in self.layers.iter_mut().enumerate() {
            let f = |s: &str| formats.get(&format!("encoder.layer.{i}.attention.self.{s}.weight")).copied();
            match (f("query"), f("key"), f("value")) {
                (Some(q), Some(k), Some(v)) if q == k && k == v => l.qkv_pattern = stacked_qkv(l, q)?,
                // Q, K and V untouched by this call: an earlier stacking stays valid.
                (None, None, None) => {}
                _ => l.qkv_pattern = None,
            }
        }
        Ok(())
    }

    /// Write every compiled layer's values back into its dense weight (for saving/exporting).
    pub fn sync_dense(&mut self) -> Result<()> {
        for (_, lin) in self.linears_mut() {
            lin.sync_dense()?;
        }
        Ok(())
    }

    /// The implementation that actually runs.
    pub fn ops(&self) -> Ops {
        if self.activation == Activation::GeluErf { self.ops } else { Ops::Stock }
    }

    /// Token states `[B, S, H]` for `input_ids`, `token_type_ids` and `attention_mask` (all `[B, S]`,
    /// u32; mask 1 = real token). Dropout is active when `train`.
    pub fn forward(&self, input_ids: &Tensor, token_type_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_impl(input_ids, token_type_ids, attention_mask, train, false)
    }

    /// Inference: [`BertEncoder::forward`] without dropout and without an autograd graph (the
    /// parameters are detached, so the fused ops keep no activations for a backward).
    pub fn forward_inference(&self, input_ids: &Tensor, token_type_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        self.forward_impl(input_ids, token_type_ids, attention_mask, false, true)
    }

    fn forward_impl(&self, input_ids: &Tensor, token_type_ids: &Tensor, attention_mask: &Tensor, train: bool, detach: bool) -> Result<Tensor> {
        let (bsz, seq) = input_ids.dims2()?;
        if seq > self.config.max_position_embeddings {
            return Err(BertError::Candle(candle_core::Error::Msg(format!(
                "sequence length {seq} exceeds max_position_embeddings {}",
                self.config.max_position_embeddings
            ))));
        }
        let h = self.config.hidden_size;
        let e = &self.embeddings;
        let word = param(&e.word, detach || !self.train_word_embeddings);
        let words = word.index_select(&input_ids.flatten_all()?, 0)?.reshape((bsz, seq, h))?;
        let types = param(&e.token_type, detach).index_select(&token_type_ids.flatten_all()?, 0)?.reshape((bsz, seq, h))?;
        let pos = param(&e.position, detach).narrow(0, 0, seq)?.unsqueeze(0)?;
        if self.ops() == Ops::Fused {
            let rest = types.broadcast_add(&pos)?;
            let mut x = ops::add_layer_norm(&words, &rest, &e.norm.gamma_beta(detach)?, e.norm.eps, e.dropout.spec(train))?;
            let key_bias: Vec<f32> =
                attention_mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?.iter().map(|m| (m - 1.0) * 1e4).collect();
            for layer in &self.layers {
                x = self.layer_forward_fused(layer, &x, &key_bias, train, detach)?;
            }
            return Ok(x);
        }
        let x = words.add(&types)?.broadcast_add(&pos)?;
        let mut x = e.dropout.forward(&e.norm.forward(&x)?, train)?;
        // Additive mask: 0 for tokens, a large negative number for padding, [B, 1, 1, S].
        let bias = ((attention_mask.to_dtype(DType::F32)? - 1.0)? * 1e4)?.reshape((bsz, 1, 1, seq))?;
        for layer in &self.layers {
            x = self.layer_forward(layer, &x, &bias, train, &mut |_, _| Ok(()))?;
        }
        Ok(x)
    }

    /// The calibration pass of activation-aware criteria (Wanda, Sun et al. 2024, §3): one forward
    /// of a batch on stock ops without dropout, calling `observe(weight name, input)` with the
    /// input `[batch, seq, in]` of every encoder linear, padding positions set to 0 (they add
    /// nothing to ‖X_j‖₂). Returns the last hidden states.
    pub fn observe_linear_inputs(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        observe: &mut dyn FnMut(&str, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let (bsz, seq) = input_ids.dims2()?;
        let h = self.config.hidden_size;
        let e = &self.embeddings;
        let emb = |v: &Var, ids: &Tensor| -> Result<Tensor> { Ok(v.as_detached_tensor().index_select(&ids.flatten_all()?, 0)?.reshape((bsz, seq, h))?) };
        let pos = e.position.as_detached_tensor().narrow(0, 0, seq)?.unsqueeze(0)?;
        let mut x = e.norm.forward(&emb(&e.word, input_ids)?.add(&emb(&e.token_type, token_type_ids)?)?.broadcast_add(&pos)?)?;
        let bias = ((attention_mask.to_dtype(DType::F32)? - 1.0)? * 1e4)?.reshape((bsz, 1, 1, seq))?;
        let keep = attention_mask.to_dtype(DType::F32)?.reshape((bsz, seq, 1))?;
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("encoder.layer.{i}");
            x = self.layer_forward(layer, &x, &bias, false, &mut |which, input| {
                let name = match which {
                    Which::Qkv => ["attention.self.query", "attention.self.key", "attention.self.value"].as_slice(),
                    Which::AttnOut => &["attention.output.dense"],
                    Which::FfnIn => &["intermediate.dense"],
                    Which::FfnOut => &["output.dense"],
                };
                let masked = input.broadcast_mul(&keep)?;
                name.iter().try_for_each(|n| observe(&format!("{p}.{n}.weight"), &masked))
            })?;
            x = x.detach();
        }
        Ok(x)
    }

    /// One layer on fused ops: packed QKV linear, fused attention, output linear with dropout,
    /// residual + LayerNorm, FFN-in with GELU, FFN-out with dropout, residual + LayerNorm.
    fn layer_forward_fused(&self, l: &Layer, x: &Tensor, key_bias: &[f32], train: bool, detach: bool) -> Result<Tensor> {
        let (bsz, seq, _) = x.dims3()?;
        let (nh, hd) = (l.heads, self.config.head_dim());
        int8::check_inference(l, train, detach)?;
        let qkv = if let Some(q) = &l.int8 {
            q.qkv.forward(x, Act::Identity)?
        } else if let (Some(pat), Some(q), Some(k), Some(v)) = (&l.qkv_pattern, &l.query.sparse, &l.key.sparse, &l.value.sparse) {
            let vals = Tensor::cat(&[param(&q.values, detach), param(&k.values, detach), param(&v.values, detach)], 0)?;
            let b = Tensor::cat(&[l.query.bias_or_zeros()?, l.key.bias_or_zeros()?, l.value.bias_or_zeros()?], 0)?;
            let b = if detach { b.detach() } else { b };
            ops::sparse_linear(x, &vals, pat, &b, Act::Identity, None)?
        } else if l.query.sparse.is_none() && l.key.sparse.is_none() && l.value.sparse.is_none() {
            let cat3 = |a: &Var, b: &Var, c: &Var| Tensor::cat(&[param(a, detach), param(b, detach), param(c, detach)], 0);
            let wqkv = cat3(&l.query.weight, &l.key.weight, &l.value.weight)?;
            let bqkv = Tensor::cat(&[l.query.bias_or_zeros()?, l.key.bias_or_zeros()?, l.value.bias_or_zeros()?], 0)?;
            let bqkv = if detach { bqkv.detach() } else { bqkv };
            ops::linear(x, &wqkv, &bqkv, Act::Identity, None)?
        } else {
            let q = l.query.forward_fused(x, Act::Identity, None, detach)?;
            let k = l.key.forward_fused(x, Act::Identity, None, detach)?;
            let v = l.value.forward_fused(x, Act::Identity, None, detach)?;
            Tensor::cat(&[q, k, v], 2)?
        };
        let spec = AttentionSpec {
            batch: bsz,
            seq,
            heads: nh,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
            key_bias: key_bias.to_vec(),
            dropout: l.attn_dropout.spec(train),
        };
        let ctx = if l.int8.is_some() { ops::attention_int8(&qkv, spec)? } else { ops::attention(&qkv, spec)? };
        let a = match &l.int8 {
            Some(q) => q.attn_out.forward(&ctx, Act::Identity)?,
            None => l.attn_out.forward_fused(&ctx, Act::Identity, l.hidden_dropout.spec(train), detach)?,
        };
        let x1 = ops::add_layer_norm(&a, x, &l.attn_norm.gamma_beta(detach)?, l.attn_norm.eps, None)?;
        let f = match (&l.moe, l.int8.as_ref().and_then(|q| q.ffn.as_ref())) {
            (Some(m), _) => l.hidden_dropout.forward(&moe::forward(m, &x1, detach, train.then_some(&self.moe_aux))?, train)?,
            (None, Some((fi, fo))) => fo.forward(&fi.forward(&x1, Act::Gelu)?, Act::Identity)?,
            (None, None) => {
                let ff = l.ffn_in.forward_fused(&x1, Act::Gelu, None, detach)?;
                l.ffn_out.forward_fused(&ff, Act::Identity, l.hidden_dropout.spec(train), detach)?
            }
        };
        Ok(ops::add_layer_norm(&f, &x1, &l.ffn_norm.gamma_beta(detach)?, l.ffn_norm.eps, None)?)
    }

    /// One layer on stock ops; `input(which, x)` sees the input of each linear before it runs.
    fn layer_forward(&self, l: &Layer, x: &Tensor, bias: &Tensor, train: bool, input: &mut dyn FnMut(Which, &Tensor) -> Result<()>) -> Result<Tensor> {
        let (bsz, seq, _) = x.dims3()?;
        let (nh, hd) = (l.heads, self.config.head_dim());
        if l.int8.is_some() {
            return Err(BertError::Invalid("int8 layers run on the fused ops only".into()));
        }
        let heads = |t: Tensor| -> candle_core::Result<Tensor> { t.reshape((bsz, seq, nh, hd))?.transpose(1, 2)?.contiguous() };
        input(Which::Qkv, x)?;
        let q = heads(l.query.forward(x)?)?;
        let k = heads(l.key.forward(x)?)?;
        let v = heads(l.value.forward(x)?)?;
        let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?.broadcast_add(bias)?;
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let probs = l.attn_dropout.forward(&probs, train)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((bsz, seq, nh * hd))?;
        input(Which::AttnOut, &ctx)?;
        let attn = l.hidden_dropout.forward(&l.attn_out.forward(&ctx)?, train)?;
        let x = l.attn_norm.forward(&attn.add(x)?)?;
        input(Which::FfnIn, &x)?;
        let ff = match &l.moe {
            Some(m) => moe::forward(m, &x, false, train.then_some(&self.moe_aux))?,
            None => {
                let ff = self.activation.forward(&l.ffn_in.forward(&x)?)?;
                input(Which::FfnOut, &ff)?;
                l.ffn_out.forward(&ff)?
            }
        };
        let ff = l.hidden_dropout.forward(&ff, train)?;
        Ok(l.ffn_norm.forward(&ff.add(&x)?)?)
    }
}

/// Which linears of a layer an input feeds ([`BertEncoder::observe_linear_inputs`]).
#[derive(Clone, Copy)]
enum Which {
    Qkv,
    AttnOut,
    FfnIn,
    FfnOut,
}

/// Q, K and V's compiled patterns stacked row-wise (see `Layer::qkv_pattern`), or `None` when one
/// of them is dense or the stacked format does not store the values in Q, K, V order.
fn stacked_qkv(l: &Layer, format: sprig_kernels::candle::Format) -> Result<Option<std::sync::Arc<dyn sprig_kernels::SparseMatrix>>> {
    let (Some(q), Some(k), Some(v)) = (&l.query.sparse, &l.key.sparse, &l.value.sparse) else {
        return Ok(None);
    };
    let parts = [q, k, v];
    let cols = q.pattern.cols();
    if parts.iter().any(|p| p.pattern.cols() != cols) {
        return Ok(None);
    }
    let rows_all: usize = parts.iter().map(|p| p.pattern.rows()).sum();
    let (mut dense, mut keep, mut vals) = (Vec::new(), Vec::new(), Vec::new());
    for p in parts {
        let v = p.values.as_tensor().to_vec1::<f32>()?;
        // The stored positions come from all-ones values: a stored value may itself be 0.
        let ones = vec![1f32; v.len()];
        let d = p.pattern.to_dense_with(&v).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let m = p.pattern.to_dense_with(&ones).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        dense.extend(d);
        keep.extend(m.iter().map(|&x| x != 0.0));
        vals.extend(v);
    }
    let w = Tensor::from_vec(dense, (rows_all, cols), &candle_core::Device::Cpu)?;
    let sl = sprig_kernels::candle::SparseLinear::from_dense(&w, &keep, None, format)?;
    let stacked = sl.values().as_tensor().to_vec1::<f32>()?;
    let same = stacked.len() == vals.len() && stacked.iter().zip(&vals).all(|(a, b)| a.to_bits() == b.to_bits());
    Ok(same.then(|| sl.pattern().clone()))
}

/// Pool token states `[B, S, H]` into `[B, H]`.
pub fn pool(hidden: &Tensor, attention_mask: &Tensor, pooling: Pooling) -> Result<Tensor> {
    Ok(match pooling {
        Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
        Pooling::Mean => {
            let m = attention_mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let sum = hidden.broadcast_mul(&m)?.sum(1)?;
            let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
            sum.broadcast_div(&count)?
        }
    })
}

/// Encoder + pooling + dropout + a linear head: `BertForSequenceClassification` with a choice of
/// pooling (mean pooling suits sentence-embedding checkpoints whose pooler is untrained).
pub struct BertClassifier {
    pub encoder: BertEncoder,
    pub classifier: Linear,
    pub pooling: Pooling,
    dropout: Dropout,
    head_params: Vec<(String, Var)>,
}

impl BertClassifier {
    /// Attach a head: from `tensors` (`classifier.weight`/`bias`) when given, else a fresh
    /// normal(0, 0.02) head seeded by `seed`.
    pub fn new(encoder: BertEncoder, num_labels: usize, pooling: Pooling, head: Option<(&HashMap<String, Tensor>, PathBuf)>, seed: u64) -> Result<Self> {
        let device = encoder.device().clone();
        let h = encoder.config.hidden_size;
        let init = match head {
            Some((tensors, origin)) => Init::Pretrained { tensors, origin },
            None => Init::Random { seed },
        };
        let mut b = Builder { init, rng: ChaCha8Rng::seed_from_u64(seed ^ 0xC1A5), device, params: vec![] };
        let classifier = b.linear("classifier", num_labels, h)?;
        let dropout = Dropout::new(encoder.config.hidden_dropout_prob as f32, seed ^ 0xD20F);
        Ok(Self { encoder, classifier, pooling, dropout, head_params: b.params })
    }

    /// Every dropout layer, in a fixed order (embeddings, each layer's attention and hidden
    /// dropout, the head's).
    fn dropouts(&self) -> Vec<&Dropout> {
        let e = &self.encoder;
        std::iter::once(&e.embeddings.dropout)
            .chain(e.layers.iter().flat_map(|l| [&l.attn_dropout, &l.hidden_dropout]))
            .chain(std::iter::once(&self.dropout))
            .collect()
    }

    /// The dropout generators' positions ([`Dropout::position`]), for a resumable run.
    pub fn dropout_positions(&self) -> Vec<u128> {
        self.dropouts().iter().map(|d| d.position()).collect()
    }

    /// Restores [`BertClassifier::dropout_positions`]; errors when the count differs.
    pub fn set_dropout_positions(&self, pos: &[u128]) -> Result<()> {
        let d = self.dropouts();
        if d.len() != pos.len() {
            bail!("{} dropout positions saved, the model has {} dropout layers", pos.len(), d.len());
        }
        d.iter().zip(pos).for_each(|(d, &p)| d.set_position(p));
        Ok(())
    }

    /// Every parameter, encoder first, then the head.
    pub fn named_params(&self) -> Vec<(String, Var)> {
        self.encoder.named_params().iter().chain(self.head_params.iter()).cloned().collect()
    }

    /// Parameters that receive gradients (all but a frozen word-embedding matrix).
    pub fn trainable_params(&self) -> Vec<(String, Var)> {
        self.named_params()
            .into_iter()
            .filter(|(n, _)| self.encoder.trains_word_embeddings() || n != "embeddings.word_embeddings.weight")
            .collect()
    }

    pub fn num_labels(&self) -> usize {
        self.classifier.weight.dims()[0]
    }

    /// Logits `[B, num_labels]`.
    pub fn forward(&self, input_ids: &Tensor, token_type_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Result<Tensor> {
        let hidden = self.encoder.forward(input_ids, token_type_ids, attention_mask, train)?;
        let pooled = pool(&hidden, attention_mask, self.pooling)?;
        Ok(self.classifier.forward(&self.dropout.forward(&pooled, train)?)?)
    }

    /// Logits for inference: no dropout, no autograd graph ([`BertEncoder::forward_inference`]).
    pub fn predict(&self, input_ids: &Tensor, token_type_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let hidden = self.encoder.forward_inference(input_ids, token_type_ids, attention_mask)?;
        let pooled = pool(&hidden, attention_mask, self.pooling)?;
        Ok(self.classifier.forward(&pooled)?.detach())
    }
}
