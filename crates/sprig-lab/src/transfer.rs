//! Sparse transfer of BERT tickets (Chen et al. 2020, §5, Table 3): the mask m found by IMP on a
//! source task S is applied to the pre-trained weights θ₀ and the subnetwork f(x; m ⊙ θ₀) is
//! fine-tuned on a target task T with the mask fixed (no regrowth); the result is compared with
//! full (dense) fine-tuning on T with the same recipe and seeds.
//!
//! Layout of `OUT/`: `config.json`, `seed-S.ticket.json` and `seed-S.dense.json` per seed (each
//! written atomically, so a killed run resumes), `summary.json`.
use sprig_bert::finetune::FinetuneConfig;
use sprig_bert::masked::{finetune_masked, Base, RunMetrics, Start, TaskData};
use crate::ticket::Metric;
use crate::ticket_summary::mean_std;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use sprig_prune::checkpoint;
use sprig_prune::MaskSet;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A ticket on disk: its mask and where it came from.
pub struct Ticket {
    pub dir: PathBuf,
    pub masks: MaskSet,
    pub task: String,
    pub model: String,
    pub sparsity: f64,
    pub recipe: FinetuneConfig,
    /// The training seed of the ticket's own fine-tune and what it measured, when the ticket was
    /// fine-tuned from θ₀ (`sprig ticket` with rewind to init): transferring it to its own task
    /// with its own recipe and seed is that same, deterministic run, so it is read, not repeated.
    pub own_run: Option<(u64, RunMetrics)>,
}

impl Ticket {
    /// Reads a ticket checkpoint written by `sprig ticket` (`OUT/round-RR/seed-S`).
    pub fn load(dir: &Path) -> Result<Self> {
        let man = checkpoint::read_manifest(dir).with_context(|| format!("{} is not a ticket checkpoint (no readable sprig.json)", dir.display()))?;
        let ck = checkpoint::load(dir, &Device::Cpu).with_context(|| format!("loading {}", dir.display()))?;
        let x = &man.meta.extra;
        let field = |k: &str| x.get(k).cloned().with_context(|| format!("{}/sprig.json lacks `{k}` (not written by `sprig ticket`?)", dir.display()));
        Ok(Self {
            dir: dir.to_path_buf(),
            masks: ck.masks,
            task: serde_json::from_value(field("task")?)?,
            model: serde_json::from_value(field("model")?)?,
            sparsity: man.prunable_sparsity,
            recipe: serde_json::from_value(field("finetune")?).with_context(|| format!("recipe in {}/sprig.json", dir.display()))?,
            own_run: {
                let from_init = man.meta.schedule.as_ref().and_then(|s| s.get("rewind")).and_then(|r| r.get("kind")).and_then(|k| k.as_str()) == Some("init");
                let metrics = x.get("metrics").and_then(|m| serde_json::from_value::<RunMetrics>(m.clone()).ok());
                match (from_init, man.meta.seed, metrics) {
                    (true, Some(seed), Some(m)) => Some((seed, m)),
                    _ => None,
                }
            },
        })
    }

    /// The tickets under `path`: the checkpoint itself, or the `seed-*` checkpoints of a round
    /// directory in seed order.
    pub fn find(path: &Path) -> Result<Vec<PathBuf>> {
        if path.join(checkpoint::MANIFEST_FILE).exists() {
            return Ok(vec![path.to_path_buf()]);
        }
        let rd = std::fs::read_dir(path).with_context(|| format!("reading ticket directory {}", path.display()))?;
        let mut v: Vec<(u64, PathBuf)> = Vec::new();
        for e in rd {
            let p = e?.path();
            let seed = p.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("seed-")).and_then(|s| s.parse::<u64>().ok());
            if let Some(s) = seed {
                if p.join(checkpoint::MANIFEST_FILE).exists() {
                    v.push((s, p));
                }
            }
        }
        if v.is_empty() {
            bail!("{} holds no ticket (expected sprig.json or seed-*/sprig.json)", path.display());
        }
        v.sort();
        Ok(v.into_iter().map(|x| x.1).collect())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TransferConfig {
    /// Ticket checkpoints, one per seed (seed i uses ticket i modulo their number).
    pub tickets: Vec<PathBuf>,
    /// Recipe on the target (task = target task; seed = data seed).
    pub finetune: FinetuneConfig,
    pub seeds: Vec<u64>,
    /// Also fine-tune densely on the target (the reference for the difference).
    pub dense: bool,
    /// Instead of `dense`: a `sprig ticket` run on the target task whose round 0 (full
    /// fine-tuning, same recipe) is the reference.
    #[serde(default)]
    pub reference: Option<PathBuf>,
    pub metric: Metric,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TransferSummary {
    pub source_task: String,
    pub target_task: String,
    pub model: String,
    pub sparsity: f64,
    pub metric: Metric,
    pub seeds: usize,
    pub ticket_mean: f64,
    pub ticket_std: f64,
    pub dense_mean: Option<f64>,
    pub dense_std: Option<f64>,
    /// ticket − dense on the target (negative = worse than full fine-tuning).
    pub diff: Option<f64>,
    pub tickets: Vec<PathBuf>,
    pub total_train_seconds: f64,
}

fn cached(path: &Path, f: impl FnOnce() -> Result<RunMetrics>) -> Result<RunMetrics> {
    if path.exists() {
        let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        return serde_json::from_slice(&b).with_context(|| format!("parsing {}", path.display()));
    }
    let m = f()?;
    sprig_train::write_json(path, &m)?;
    Ok(m)
}

/// Runs (or resumes) a transfer into `out`.
pub fn run_transfer(cfg: &TransferConfig, out: &Path, home: &Path) -> Result<TransferSummary> {
    if cfg.tickets.is_empty() || cfg.seeds.is_empty() {
        bail!("transfer needs at least one ticket and one seed");
    }
    let tickets: Vec<Ticket> = cfg.tickets.iter().map(|p| Ticket::load(p)).collect::<Result<_>>()?;
    let t0 = &tickets[0];
    if let Some(t) = tickets.iter().find(|t| t.model != t0.model || t.recipe.layers != t0.recipe.layers || t.task != t0.task) {
        bail!("tickets {} and {} come from different models or tasks", t0.dir.display(), t.dir.display());
    }
    if cfg.finetune.model != t0.model {
        bail!("the recipe's model {} is not the ticket's model {}", cfg.finetune.model, t0.model);
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let cfg_path = out.join("config.json");
    if cfg_path.exists() {
        let old: TransferConfig = serde_json::from_slice(&std::fs::read(&cfg_path)?).with_context(|| format!("reading {}", cfg_path.display()))?;
        if old.finetune != cfg.finetune || old.tickets != cfg.tickets || old.metric != cfg.metric {
            bail!("{} holds a different transfer (see its config.json); use another --out", out.display());
        }
    }
    sprig_train::write_json(&cfg_path, cfg)?;
    let base = Base::for_recipe(&t0.recipe)?;
    let data = TaskData::load(&cfg.finetune, &base, home)?;
    let none = HashMap::new();
    let (mut tk, mut dn, mut secs) = (Vec::new(), Vec::new(), 0.0);
    for (i, &seed) in cfg.seeds.iter().enumerate() {
        let t = &tickets[i % tickets.len()];
        let m = cached(&out.join(format!("seed-{seed}.ticket.json")), || {
            if let Some((s, m)) = &t.own_run {
                if *s == seed && t.task == data.task && t.recipe == cfg.finetune {
                    tracing::info!(seed, task = t.task, ticket = %t.dir.display(), "own task, recipe and seed: the ticket's fine-tune is this run; read, not repeated");
                    return Ok(m.clone());
                }
            }
            let r = finetune_masked(&base, &data, &cfg.finetune, seed, Start { tensors: &none, head: false }, Some(&t.masks), None)?;
            tracing::info!(seed, source = t.task, target = data.task, sparsity = t.sparsity, test_accuracy = r.metrics.test_accuracy, "transfer ticket done");
            Ok(r.metrics)
        })?;
        secs += m.train_seconds;
        tk.push(cfg.metric.of(&m));
        if cfg.dense {
            let d = cached(&out.join(format!("seed-{seed}.dense.json")), || {
                let r = finetune_masked(&base, &data, &cfg.finetune, seed, Start { tensors: &none, head: false }, None, None)?;
                tracing::info!(seed, target = data.task, test_accuracy = r.metrics.test_accuracy, "dense reference done");
                Ok(r.metrics)
            })?;
            secs += d.train_seconds;
            dn.push(cfg.metric.of(&d));
        }
    }
    let (tm, ts) = mean_std(&tk);
    let dense = match &cfg.reference {
        Some(r) if dn.is_empty() => Some(reference_of(r, &data.task, cfg.metric)?),
        _ if dn.is_empty() => None,
        _ => Some(mean_std(&dn)),
    };
    let s = TransferSummary {
        source_task: t0.task.clone(),
        target_task: data.task.clone(),
        model: t0.model.clone(),
        sparsity: t0.sparsity,
        metric: cfg.metric,
        seeds: cfg.seeds.len(),
        ticket_mean: tm,
        ticket_std: ts,
        dense_mean: dense.map(|d| d.0),
        dense_std: dense.map(|d| d.1),
        diff: dense.map(|d| tm - d.0),
        tickets: cfg.tickets.clone(),
        total_train_seconds: secs,
    };
    sprig_train::write_json(&out.join("summary.json"), &s)?;
    Ok(s)
}

/// Full fine-tuning's (mean, std) on `task` from a `sprig ticket` run directory.
fn reference_of(dir: &Path, task: &str, metric: Metric) -> Result<(f64, f64)> {
    let p = dir.join("summary.json");
    let s: crate::ticket_summary::TicketSummary =
        serde_json::from_slice(&std::fs::read(&p).with_context(|| format!("reading reference {}", p.display()))?).with_context(|| format!("parsing {}", p.display()))?;
    let want = serde_json::to_value(metric)?;
    if s.task != task || serde_json::Value::String(s.metric.clone()) != want {
        bail!("reference {} is a run on {} ({}), not on {task} ({want})", p.display(), s.task, s.metric);
    }
    match (s.full_finetune_mean, s.full_finetune_std) {
        (Some(m), Some(sd)) => Ok((m, sd)),
        _ => bail!("reference {} has no finished round 0", p.display()),
    }
}
