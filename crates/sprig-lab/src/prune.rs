//! `sprig prune` as a run: resolve the teacher, prune while fine-tuning
//! ([`sprig_bert::prune::prune`]), and write the pruned classifier as a directory that appears
//! whole or not at all: the Hugging Face layout with exact zeros, `masks.safetensors`, the
//! `sprig.json` manifest, `config.toml` (the resolved config: the experiment record),
//! `metrics.jsonl`, `summary.json` and `sprig-logits.json` (for `scripts/verify-hf-export`);
//! with `ffn-neurons` granularity also `narrow/`, the model with its pruned neurons removed
//! ([`crate::narrow`]).
//! The run is staged beside `out` and moved in when complete ([`StagedOut`]).
use crate::export::{reference_logits, write_sparse_classifier};
use crate::run_dir::{StagedOut, STATE_FILE};
use anyhow::{bail, Context, Result};
use sprig_bert::masked::{Base, TaskData};
use sprig_bert::prune::{check_head, prune, PruneConfig, PruneSummary, Teacher};
use sprig_bert::Checkpoint;
use sprig_prune::checkpoint::CheckpointMeta;
use sprig_train::{MetricsLog, Resume, TrainState};
use std::collections::HashMap;
use std::path::Path;

/// Test sentences whose logits are stored for the transformers check.
pub const VERIFY_EXAMPLES: usize = 32;

/// The teacher a run uses: `cfg.teacher` when given (`none` = no teacher); by default the model
/// itself when it is a fine-tuned classifier of the task (pruning a fine-tuned model distils
/// from its dense self), else none.
pub fn resolve_teacher(cfg: &PruneConfig, base: &Base, data: &TaskData) -> Result<Option<String>> {
    Ok(match cfg.teacher.as_str() {
        "none" => None,
        "" if base.tensors.contains_key("classifier.weight") => Some(cfg.train.model.clone()),
        "" => None,
        t => Some(t.to_string()),
    })
    .and_then(|t| {
        if t.is_none() && cfg.distill == Some(true) {
            bail!("--distill true needs a teacher: give --teacher DIR (a fine-tuned dense classifier of task {})", data.task);
        }
        Ok(t)
    })
}

/// Runs `cfg` and writes the pruned model into `out`, which must not exist (or be an empty
/// directory). Everything is validated and loaded before training starts.
pub fn run(cfg: &PruneConfig, out: &Path, home: &Path) -> Result<PruneSummary> {
    run_to(cfg, out, home, Options::default())
}

/// How [`run_to`] treats its run directory.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Replace a finished run in `out` (only once the new run is complete; see [`StagedOut`]).
    pub overwrite: bool,
    /// Save the resumable training state every this many steps (0: at epoch ends only); it is
    /// also saved at every epoch end.
    pub save_every: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self { overwrite: false, save_every: 100 }
    }
}

/// [`run`] with [`Options`]. `out` may never be or lie inside the model or the teacher. The run
/// saves its state in its staging directory ([`STATE_FILE`]); a run killed (even by SIGKILL)
/// continues from its last save when started again with the same config and `out`, and ends
/// with the same model, bit for bit, as an uninterrupted run.
pub fn run_to(cfg: &PruneConfig, out: &Path, home: &Path, opts: Options) -> Result<PruneSummary> {
    let overwrite = opts.overwrite;
    cfg.validate()?;
    let sources = [("--model", Path::new(&cfg.train.model)), ("--teacher", Path::new(&cfg.teacher))];
    StagedOut::check(out, &sources, overwrite)?;
    let base = Base::for_recipe(&cfg.train)?;
    let data = TaskData::load(&cfg.train, &base, home)?;
    if base.tensors.contains_key("classifier.weight") {
        let ck = Checkpoint::load(&cfg.train.model, &candle_core::Device::Cpu)?;
        check_head(&cfg.train.model, &ck, &data, &cfg.train)?;
    }
    let teacher = match resolve_teacher(cfg, &base, &data)? {
        Some(spec) => Some(Teacher::load(&spec, &data, &cfg.train, &base)?),
        None => None,
    };
    let config = toml_string(cfg)?;
    let (staged, resumed) = StagedOut::begin_resumable(out, &sources, overwrite, "config.toml", &config, |t| {
        toml::from_str::<PruneConfig>(t).ok().and_then(|c| toml_string(&c).ok())
    })?;
    let stage = staged.path();
    let state_path = stage.join(STATE_FILE);
    let (mut log, from) = if resumed {
        let loaded = TrainState::load(&state_path).map_err(anyhow::Error::from).and_then(|s| Ok((MetricsLog::append(&stage.join("metrics.jsonl"))?, Some(s))));
        match loaded {
            Ok(l) => l,
            Err(e) => return Err(keep_interrupted(staged, e)),
        }
    } else {
        sprig_train::write_atomic(&stage.join("config.toml"), config.as_bytes())?;
        (MetricsLog::create(&stage.join("metrics.jsonl"))?, None)
    };
    let resume = Resume { path: state_path.clone(), every: opts.save_every, from };
    let pruned = match prune(&base, &data, cfg, teacher.as_ref(), &mut log, Some(resume)) {
        Ok(p) => p,
        // A resumed run that fails keeps its directory (and its saved state) for the user to
        // inspect or delete; a fresh run's staging directory is removed as before.
        Err(e) if resumed => return Err(keep_interrupted(staged, e.into())),
        Err(e) => return Err(e.into()),
    };
    // The finished run does not carry its resumable state.
    if state_path.exists() {
        std::fs::remove_file(&state_path).with_context(|| format!("removing {}", state_path.display()))?;
    }
    let s = &pruned.summary;
    let meta: HashMap<String, String> = [
        ("task", data.task.clone()),
        ("seed", cfg.train.seed.to_string()),
        ("max_seq_len", cfg.train.max_seq_len.to_string()),
        ("method", cfg.method.name().to_string()),
        ("sparsity", format!("{:.6}", s.sparsity)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let ckmeta = CheckpointMeta {
        method: format!("prune-{}", cfg.method.name()),
        schedule: Some(serde_json::to_value(cfg.schedule(s.steps.max(1)))?),
        seed: Some(cfg.train.seed),
        parent_sha256: Some(file_sha256(&base.origin)?),
        extra: serde_json::json!({"task": data.task, "model": cfg.train.model, "classes": data.classes,
            "granularity": cfg.granularity, "teacher": s.teacher, "test_accuracy": s.test_accuracy}),
    };
    write_sparse_classifier(stage, &pruned.model, &data.classes, &base.tokenizer, &pruned.masks, meta, &ckmeta)?;
    let verify = reference_logits(stage, VERIFY_EXAMPLES, home)?;
    sprig_train::write_json(&stage.join("sprig-logits.json"), &verify)?;
    if sprig_bert::prune::is_structured(&cfg.granularity) {
        let narrow = stage.join("narrow");
        let k = crate::narrow::write_narrow(stage, &narrow)?;
        let logits = reference_logits(&narrow, VERIFY_EXAMPLES, home)?;
        let d = crate::narrow::max_logit_diff(&verify, &logits)?;
        if d > 1e-4 {
            bail!("the narrow model's logits differ from the pruned model's by {d:.2e} (> 1e-4): not written");
        }
        sprig_train::write_json(&narrow.join("sprig-logits.json"), &logits)?;
        tracing::info!(intermediate_size = k.intermediate_size, heads = ?k.heads, max_logit_diff = d, "narrow model (pruned neurons and heads removed) in narrow/");
    }
    sprig_train::write_json(&stage.join("summary.json"), s)?;
    drop(log);
    staged.commit()?;
    Ok(pruned.summary)
}

/// Keeps an interrupted run's staging directory after its resume failed, named in the error.
fn keep_interrupted(staged: StagedOut, e: anyhow::Error) -> anyhow::Error {
    let dir = staged.keep();
    e.context(format!("resuming the interrupted run in {} (kept; delete that directory to start over)", dir.display()))
}

fn file_sha256(p: &Path) -> Result<String> {
    use sha2::Digest;
    let b = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(sha2::Sha256::digest(&b).iter().map(|x| format!("{x:02x}")).collect())
}

/// The config as TOML (the `[train]` table last, as TOML needs).
pub fn toml_string(cfg: &PruneConfig) -> Result<String> {
    Ok(toml::to_string_pretty(cfg)?)
}
