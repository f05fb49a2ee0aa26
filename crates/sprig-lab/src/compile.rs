//! `sprig compile`: turn a ticket's masked encoder into sprig-kernels sparse layers, check that it
//! computes what the masked-dense model computes, and time both side by side.
//!
//! The masked model keeps dense `[N, K]` weights with exact zeros and runs dense GEMMs; the compiled
//! one stores only the kept weights (CSR, BSR or N:M, see `sprig_kernels::candle::Format`) and runs
//! the sparse kernels, so its time and weight memory fall with sparsity.
use sprig_bert::masked::Base;
use sprig_bert::model::{BertClassifier, BertEncoder, Init};
use crate::transfer::Ticket;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use sprig_kernels::candle::Format;
use sprig_prune::checkpoint;
use crate::dst_run::median;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// Shapes and repetitions of the timing.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    pub format: Format,
    pub batch: usize,
    pub seq: usize,
    pub warmup: usize,
    pub runs: usize,
}

/// What `sprig compile` measured (times are medians of `runs` alternating forward passes).
#[derive(Clone, Debug, Serialize)]
pub struct CompileReport {
    pub ticket: String,
    pub task: String,
    /// Realised sparsity of the prunable (encoder linear) weights.
    pub sparsity: f64,
    pub format: String,
    pub batch: usize,
    pub seq: usize,
    pub threads: usize,
    pub dense_ms: f64,
    pub sparse_ms: f64,
    pub dense_runs_ms: Vec<f64>,
    pub sparse_runs_ms: Vec<f64>,
    /// `dense_ms / sparse_ms`.
    pub speedup: f64,
    pub dense_seq_per_s: f64,
    pub sparse_seq_per_s: f64,
    /// Largest |logit difference| between the compiled and the masked-dense model.
    pub max_abs_logit_diff: f32,
    pub linear_dense_bytes: usize,
    pub linear_sparse_bytes: usize,
}

/// The fine-tuned classifier of a ticket checkpoint (encoder + head), optionally compiled.
fn classifier(t: &Ticket, base: &Base, tensors: &HashMap<String, Tensor>, classes: usize, compile: Option<Format>) -> Result<BertClassifier> {
    let origin = t.dir.join(checkpoint::WEIGHTS_FILE);
    let mut enc = BertEncoder::new(&base.config, Init::Pretrained { tensors, origin: origin.clone() }, 0, &Device::Cpu)?;
    if let Some(f) = compile {
        enc.compile_sparse(&t.masks, f)?;
    }
    Ok(BertClassifier::new(enc, classes, t.recipe.pooling, Some((tensors, origin)), 0)?)
}

/// Checks `sparse` against `dense` on one random token batch of `o.batch x o.seq` and times their
/// forward passes alternately (`o.warmup` untimed rounds first): `(max |logit diff|, dense ms,
/// sparse ms)` per timed run.
pub fn time_pair(dense: &BertClassifier, sparse: &BertClassifier, vocab: usize, o: &CompileOptions) -> Result<(f32, Vec<f64>, Vec<f64>)> {
    if o.batch == 0 || o.seq == 0 || o.runs == 0 {
        bail!("--batch, --seq and --runs must be at least 1");
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let vocab = vocab as u32;
    let ids: Vec<u32> = (0..o.batch * o.seq).map(|_| rng.random_range(1000.min(vocab - 1)..vocab)).collect();
    let ids = Tensor::from_vec(ids, (o.batch, o.seq), &Device::Cpu)?;
    let (types, mask) = (ids.zeros_like()?, ids.ones_like()?);
    let run = |m: &BertClassifier| -> Result<(Vec<Vec<f32>>, f64)> {
        let t0 = Instant::now();
        let l = m.predict(&ids, &types, &mask)?.to_vec2::<f32>()?;
        Ok((l, t0.elapsed().as_secs_f64() * 1e3))
    };
    let (ld, _) = run(dense)?;
    let (ls, _) = run(sparse)?;
    let diff = ld.iter().flatten().zip(ls.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let (mut dr, mut sr) = (vec![], vec![]);
    for i in 0..o.warmup + o.runs {
        let (_, d) = run(dense)?;
        let (_, s) = run(sparse)?;
        tracing::info!(run = i, dense_ms = d, sparse_ms = s, "compile timing");
        if i >= o.warmup {
            dr.push(d);
            sr.push(s);
        }
    }
    Ok((diff, dr, sr))
}

/// Compiles the ticket at `dir` (a `sprig ticket` checkpoint `OUT/round-RR/seed-S`), checks it
/// against the masked-dense model on the same random token batch, and times both.
pub fn compile_ticket(dir: &Path, o: &CompileOptions) -> Result<CompileReport> {
    let t = Ticket::load(dir)?;
    let man = checkpoint::read_manifest(dir)?;
    let classes = man.meta.extra.get("classes").and_then(|c| c.as_array()).map(|a| a.len()).with_context(|| format!("{}/sprig.json lacks `classes`", dir.display()))?;
    let ck = checkpoint::load(dir, &Device::Cpu).with_context(|| format!("loading {}", dir.display()))?;
    let base = Base::for_recipe(&t.recipe)?;
    if o.seq > base.config.max_position_embeddings {
        bail!("--seq {} exceeds the model's max_position_embeddings {}", o.seq, base.config.max_position_embeddings);
    }
    let mut tensors = base.tensors.clone();
    tensors.extend(ck.tensors);
    let dense = classifier(&t, &base, &tensors, classes, None)?;
    t.masks.check_pruned_zero(&dense.named_params())?;
    let mut sparse_enc = classifier(&t, &base, &tensors, classes, Some(o.format))?;
    let (dense_bytes, sparse_bytes) = sparse_enc.encoder.linear_weight_bytes();

    let (diff, dr, sr) = time_pair(&dense, &sparse_enc, base.config.vocab_size, o)?;
    let (dm, sm) = (median(&dr), median(&sr));
    Ok(CompileReport {
        ticket: dir.display().to_string(),
        task: t.task.clone(),
        sparsity: t.sparsity,
        format: format!("{:?}", o.format),
        batch: o.batch,
        seq: o.seq,
        threads: candle_core::utils::get_num_threads(),
        dense_ms: dm,
        sparse_ms: sm,
        dense_runs_ms: dr,
        sparse_runs_ms: sr,
        speedup: dm / sm,
        dense_seq_per_s: o.batch as f64 / dm * 1e3,
        sparse_seq_per_s: o.batch as f64 / sm * 1e3,
        max_abs_logit_diff: diff,
        linear_dense_bytes: dense_bytes,
        linear_sparse_bytes: sparse_bytes,
    })
}
