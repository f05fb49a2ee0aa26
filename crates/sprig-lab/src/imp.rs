//! One resumable runner for iterative magnitude pruning (Frankle & Carbin 2019, Alg. 1, with
//! rewinding: Frankle et al. 2020; Renda et al. 2020), generic over what is trained
//! ([`ImpSubject`]), with the controls of the lottery-ticket papers ([`Control`]).
//!
//! Layout of a run directory ([`RunDir`]), every file atomic, every finished unit kept:
//! ```text
//! config.json                            the experiment (see run_dir)
//! round-RR/seed-S/                       the cell: sparse checkpoint (trained weights, masks, sprig.json);
//!                                        sprig.json's `extra` holds {round, seed, sparsity, metrics, ..subject's extra}
//! round-RR/seed-S/control-<name>.json    one control's result ([`ControlResult`])
//! rewind-seed-S.safetensors              weights at step k of round 0 (rewind to step k only)
//! summary.json                           the subject's summary, `"complete": false` until the last cell
//! ```
//! Order: rounds 0..=R, within a round the seeds in the plan's order, each cell followed by its
//! controls in [`Control::ALL`] order. Resume: a cell whose `sprig.json` exists is read back, not
//! rerun; a control whose file exists is read back (and reported even if the plan no longer asks
//! for it). The subject derives its seeds from (round, seed) alone ([`Cell::derived_seed`] or its
//! own rule), so a killed and resumed run ends with the same checkpoints, bit for bit, as an
//! uninterrupted one.
//!
//! # The three experiments (method by method)
//! Each builds an [`ImpPlan`] from its config (`rounds`, `seeds`, `rewind`, `controls`,
//! `control_rounds`), implements [`crate::run_dir::RunConfig`] for its config (`validate` = the
//! config's checks + `plan.validate(S::CONTROLS)`; `identity` = `without_fields(json, &ImpPlan::GROWABLE)`),
//! opens its [`RunDir`] (after loading data where loading may fail: `RunDir::check` first), then
//! calls [`run_imp`]. Pruning steps are [`sprig_prune::Pruner`] configurations.
//!
//! | method | lottery ([`crate::lottery`]) | tickets ([`crate::ticket`]) | upstream ([`crate::upstream`]) |
//! |---|---|---|---|
//! | `Metrics` | `LotteryMetrics`: test/dev acc, steps, seconds | `RunMetrics` | `UpstreamMetrics` |
//! | `CONTROLS` | `[RandomMask, Reinit]` | all nine | `[]` |
//! | `method`/`schedule` | "imp-magnitude-layerwise", `Schedule::Imp{FractionOfRemaining(rate)}` | "bert-tickets-imp-global-magnitude", `cfg.schedule()` | "upstream-imp-contrastive-global-magnitude", `cfg.schedule()` |
//! | `round_sparsity` | hidden-layer schedule `1-(1-rate)^r` | `cfg.schedule().round_sparsity(r)` | same |
//! | `dense_mask` | ones over `Selector::weights()` of the seed's model | ones over `base.prunable_shapes()` | same |
//! | `prune` | `PrunerConfig::imp(.., FractionOfRemaining(rate))`, uniform allocation, the output weight in a group at `output_rate` | `ticket::imp_step`: `PrunerConfig::imp(.., LinearOfOriginal(rate))`, global | same as tickets |
//! | `train` | model of the seed, `data_seed = seed*1_000_003 + r` | `finetune_masked`, no mask in round 0 | `train_round`, no mask in round 0 |
//! | `control` | Reinit: model of `seed + 7919 r + 104_729` on the IMP mask; RandomMask: the rewound start under the layerwise pruner with a random criterion seeded `seed*31 + r` | salt `seed*1_000_003 + 7919 r`; random mask / one-shot / OBS / SNIP are one-shot pruners, RigL drop-and-grows from a random start seeded by the salt; Obs reads `cell_dir(run, 0, seed)` | — |
//! | `extra` | none | `{task, classes, model, finetune}` | `{task: "upstream", classes: [], model, finetune, corpus}` |
//! | `summary`/`plot` | rows per round, `lottery.svg` | `ticket_summary`, `tickets.svg`; `results.json` from the returned cells | `UpstreamSummary` |
//!
//! Earlier layouts: lottery's was `seed-S/round-RR` with the result at the top of `extra` and
//! `seed-S/rewind.safetensors` (those run directories do not resume under this layout); tickets'
//! control files were `round-RR/seed-S.<name>.json` (ticket and upstream checkpoints are unchanged).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sprig_prune::checkpoint::{self, CheckpointMeta, SparseCheckpoint};
use sprig_prune::{MaskSet, Rewind};

use crate::run_dir::{read_json, RunDir, SUMMARY_FILE};

/// A control run at the same sparsity as the ticket (Frankle & Carbin 2019, §2; Chen et al. 2020, §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    /// A random mask at the same sparsity, rewound weights ("random pruning").
    RandomMask,
    /// The IMP mask, prunable weights freshly re-initialised ("random reinit").
    Reinit,
    /// The IMP mask, rewound prunable weights shuffled within each tensor ("random shuffled").
    Shuffled,
    /// One-shot magnitude pruning of the rewound weights to the same sparsity, no iterations.
    Oneshot,
    /// Gradual (cubic) magnitude pruning to the same sparsity during one training run (Zhu & Gupta 2017).
    Gmp,
    /// Movement pruning to the same sparsity during one training run (Sanh et al. 2020).
    Movement,
    /// One-shot OBS: the mask of the diagonal-Fisher OBS saliency of round 0's dense trained model.
    Obs,
    /// SNIP (Lee et al. 2019): the one-shot mask of the largest |∂L/∂w · w| at the rewound start.
    Snip,
    /// RigL (Evci et al. 2020): a random mask at the same sparsity, drop-and-grow during training.
    Rigl,
}

impl Control {
    pub const ALL: [Control; 9] =
        [Control::RandomMask, Control::Reinit, Control::Shuffled, Control::Oneshot, Control::Gmp, Control::Movement, Control::Obs, Control::Snip, Control::Rigl];

    /// The name in files and summaries (the serde name).
    pub fn name(&self) -> &'static str {
        match self {
            Control::RandomMask => "random_mask",
            Control::Reinit => "reinit",
            Control::Shuffled => "shuffled",
            Control::Oneshot => "oneshot",
            Control::Gmp => "gmp",
            Control::Movement => "movement",
            Control::Obs => "obs",
            Control::Snip => "snip",
            Control::Rigl => "rigl",
        }
    }
}

impl std::fmt::Display for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Control {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.replace('-', "_").as_str() {
            "random_mask" | "random" => Control::RandomMask,
            "reinit" => Control::Reinit,
            "shuffled" | "shuffle" => Control::Shuffled,
            "oneshot" | "one_shot" => Control::Oneshot,
            "gmp" | "gradual" => Control::Gmp,
            "movement" => Control::Movement,
            "obs" => Control::Obs,
            "snip" => Control::Snip,
            "rigl" => Control::Rigl,
            _ => bail!("unknown control `{s}` (expected random-mask, reinit, shuffled, oneshot, gmp, movement, obs, snip or rigl)"),
        })
    }
}

/// What the runner needs from an experiment's config.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ImpPlan {
    /// Pruning rounds after the dense round 0.
    pub rounds: usize,
    /// Training seeds: one ticket each.
    pub seeds: Vec<u64>,
    pub rewind: Rewind,
    #[serde(default)]
    pub controls: Vec<Control>,
    /// Rounds in which `controls` run (empty = every round >= 1).
    #[serde(default)]
    pub control_rounds: Vec<usize>,
}

impl ImpPlan {
    /// Config fields that may grow between starts of one run directory.
    pub const GROWABLE: [&'static str; 4] = ["rounds", "seeds", "controls", "control_rounds"];

    /// Checks the plan against the controls a subject supports.
    pub fn validate(&self, supported: &[Control]) -> Result<()> {
        ensure!(!self.seeds.is_empty(), "--seeds must name at least one seed");
        let mut s = self.seeds.clone();
        s.sort_unstable();
        if let Some(w) = s.windows(2).find(|w| w[0] == w[1]) {
            bail!("seed {} is listed twice", w[0]);
        }
        if let Some(c) = self.controls.iter().find(|c| !supported.contains(c)) {
            let names: Vec<&str> = supported.iter().map(|c| c.name()).collect();
            bail!("control `{c}` is not supported by this experiment (supported: {})", if names.is_empty() { "none".into() } else { names.join(", ") });
        }
        if let Some(r) = self.control_rounds.iter().find(|&&r| r == 0 || r > self.rounds) {
            bail!("control round {r} is outside 1..={}", self.rounds);
        }
        Ok(())
    }

    /// Does the plan ask for `c` at `round`?
    pub fn runs_control(&self, c: Control, round: usize) -> bool {
        round > 0 && self.controls.contains(&c) && (self.control_rounds.is_empty() || self.control_rounds.contains(&round))
    }
}

/// `root/round-RR/seed-S`: the cell's sparse checkpoint.
pub fn cell_dir(root: &Path, round: usize, seed: u64) -> PathBuf {
    root.join(format!("round-{round:02}")).join(format!("seed-{seed}"))
}

/// `root/round-RR/seed-S/control-<name>.json`.
pub fn control_file(root: &Path, round: usize, seed: u64, c: Control) -> PathBuf {
    cell_dir(root, round, seed).join(format!("control-{}.json", c.name()))
}

/// `root/round-RR/seed-S-<name>`: a control's trained model, when the experiment keeps them.
pub fn control_model_dir(root: &Path, round: usize, seed: u64, c: Control) -> PathBuf {
    root.join(format!("round-{round:02}")).join(format!("seed-{seed}-{}", c.name()))
}

/// `root/rewind-seed-S.safetensors`: round 0's weights at the rewind step.
pub fn rewind_file(root: &Path, seed: u64) -> PathBuf {
    root.join(format!("rewind-seed-{seed}.safetensors"))
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed that depends only on (seed, round, salt) (SplitMix64 chain), for data order, reinit, ...
pub fn derive_seed(seed: u64, round: usize, salt: u64) -> u64 {
    splitmix64(splitmix64(splitmix64(salt) ^ round as u64) ^ seed)
}

/// One (round, seed) of the run.
#[derive(Clone, Debug)]
pub struct Cell<'a> {
    pub run: &'a RunDir,
    pub round: usize,
    pub seed: u64,
    /// The schedule's sparsity for this round ([`ImpSubject::round_sparsity`]).
    pub target_sparsity: f64,
}

impl Cell<'_> {
    pub fn dir(&self) -> PathBuf {
        cell_dir(self.run.root(), self.round, self.seed)
    }
    /// [`derive_seed`] of this cell.
    pub fn derived_seed(&self, salt: u64) -> u64 {
        derive_seed(self.seed, self.round, salt)
    }
}

/// Where a training run starts.
#[derive(Clone, Debug)]
pub enum Start {
    /// The subject's own initial weights θ₀ for the seed (round 0, and rewinding to init).
    Init,
    /// These weights, by name: round 0's weights at step k (rewind to step k), or the previous
    /// round's trained weights (learning-rate rewinding). Names the subject does not know are an error.
    Weights(BTreeMap<String, Tensor>),
}

/// What one training run returns.
pub struct Trained<M> {
    pub metrics: M,
    /// All trained tensors to checkpoint (pruned positions are zeroed by the checkpoint).
    pub tensors: Vec<(String, Tensor)>,
    /// Weights at the requested `snapshot_step`, when one was requested.
    pub snapshot: Option<Vec<(String, Tensor)>>,
}

/// What differs between IMP experiments (lottery, tickets, upstream); see the module doc.
pub trait ImpSubject {
    type Metrics: Serialize + DeserializeOwned + Clone;
    /// The controls this subject implements.
    const CONTROLS: &'static [Control];

    /// Device the checkpoints are loaded on.
    fn device(&self) -> Device {
        Device::Cpu
    }
    /// `method` of the checkpoint manifest.
    fn method(&self) -> String;
    /// `schedule` of the checkpoint manifest.
    fn schedule(&self) -> Option<serde_json::Value> {
        None
    }
    /// The schedule's sparsity after round `round` (0 = dense).
    fn round_sparsity(&self, round: usize) -> Result<f64>;
    /// Round 0's mask: all ones over the prunable tensors.
    fn dense_mask(&self, seed: u64) -> Result<MaskSet>;
    /// Trains from `start` under `mask` (pruned weights exactly zero after every step); returns the
    /// weights at `snapshot_step` too when it is given (round 0 with rewinding to step k).
    fn train(&self, cell: &Cell, start: &Start, mask: &MaskSet, snapshot_step: Option<usize>) -> Result<Trained<Self::Metrics>>;
    /// The pruning step between rounds: the mask of round `cell.round` from the previous round's
    /// checkpoint (trained weights and masks). Must never revive a pruned weight (the runner checks).
    fn prune(&self, cell: &Cell, prev: &SparseCheckpoint) -> Result<MaskSet>;
    /// Runs control `control` at the cell's sparsity; `start` is the cell's rewound start.
    fn control(&self, control: Control, cell: &Cell, imp_mask: &MaskSet, start: &Start) -> Result<Self::Metrics> {
        let _ = (cell, imp_mask, start);
        bail!("control `{control}` is not implemented by this experiment")
    }
    /// Extra fields merged into the manifest's `extra` (an object or null).
    fn extra(&self, cell: &Cell) -> Result<serde_json::Value> {
        let _ = cell;
        Ok(serde_json::Value::Null)
    }
    /// The summary written to `summary.json` (the runner adds `"complete"`). Default: the cells.
    fn summary(&self, cells: &[CellResult<Self::Metrics>]) -> Result<serde_json::Value> {
        Ok(serde_json::json!({ "cells": cells }))
    }
    /// Draws plots after every round, e.g. `run.write_plot("tickets.svg", || ..)`. Default: none.
    fn plot(&self, run: &RunDir, cells: &[CellResult<Self::Metrics>]) -> Result<()> {
        let _ = (run, cells);
        Ok(())
    }
}

/// One cell's result: the ticket's metrics and those of its controls.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CellResult<M> {
    pub round: usize,
    pub seed: u64,
    pub target_sparsity: f64,
    /// Measured sparsity over the prunable (masked) tensors.
    pub sparsity: f64,
    pub metrics: M,
    pub controls: BTreeMap<String, M>,
    pub weights_sha256: String,
    pub masks_sha256: String,
}

/// The content of a control file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ControlResult<M> {
    pub control: Control,
    pub round: usize,
    pub seed: u64,
    pub sparsity: f64,
    pub metrics: M,
}

/// Errors unless every kept weight of `next` was kept in `prev` (same names, same shapes).
pub fn check_no_revival(prev: &MaskSet, next: &MaskSet) -> Result<()> {
    ensure!(prev.names() == next.names(), "the pruning step returned masks for {:?}, the previous round had {:?}", next.names(), prev.names());
    for (name, m) in next.iter() {
        let p = prev.require(name)?;
        ensure!(p.shape() == m.shape(), "mask `{name}` has shape {:?}, the previous round's {:?}", m.shape(), p.shape());
        if let Some(i) = (0..m.len()).find(|&i| m.get(i) && !p.get(i)) {
            bail!("the pruning step revived weight {i} of `{name}` (pruned in the previous round)");
        }
    }
    Ok(())
}

fn load_weights(path: &Path, device: &Device) -> Result<BTreeMap<String, Tensor>> {
    let t = candle_core::safetensors::load(path, device).with_context(|| format!("loading {}", path.display()))?;
    Ok(t.into_iter().collect())
}

/// The start of round `round` (and of its controls) under `rewind`.
fn start_of(run: &RunDir, rewind: Rewind, round: usize, seed: u64, prev: Option<&SparseCheckpoint>, device: &Device) -> Result<Start> {
    Ok(match (round, rewind) {
        (0, _) | (_, Rewind::Init) => Start::Init,
        (_, Rewind::Step(_)) => Start::Weights(load_weights(&rewind_file(run.root(), seed), device)?),
        (_, Rewind::LearningRate) => {
            let owned;
            let prev = match prev {
                Some(p) => p,
                None => {
                    let dir = cell_dir(run.root(), round - 1, seed);
                    owned = checkpoint::load(&dir, device).with_context(|| format!("loading {}", dir.display()))?;
                    &owned
                }
            };
            Start::Weights(prev.tensors.iter().cloned().collect())
        }
    })
}

fn result_from_manifest<M: DeserializeOwned>(cell: &Cell, m: &checkpoint::Manifest) -> Result<CellResult<M>> {
    let path = cell.dir().join(checkpoint::MANIFEST_FILE);
    let e = &m.meta.extra;
    if e["round"].as_u64() != Some(cell.round as u64) || m.meta.seed != Some(cell.seed) {
        bail!("{} is not the checkpoint of round {}, seed {} (it says round {}, seed {:?})", path.display(), cell.round, cell.seed, e["round"], m.meta.seed);
    }
    let metrics = serde_json::from_value(e["metrics"].clone()).with_context(|| format!("reading the metrics in {}", path.display()))?;
    Ok(CellResult {
        round: cell.round,
        seed: cell.seed,
        target_sparsity: cell.target_sparsity,
        sparsity: m.prunable_sparsity,
        metrics,
        controls: BTreeMap::new(),
        weights_sha256: m.weights_sha256.clone(),
        masks_sha256: m.masks_sha256.clone(),
    })
}

/// Runs (or reads back) one cell; returns its result and, when it was run now, its mask.
fn ticket<S: ImpSubject>(subject: &S, plan: &ImpPlan, cell: &Cell) -> Result<(CellResult<S::Metrics>, Option<MaskSet>)> {
    let dir = cell.dir();
    if dir.join(checkpoint::MANIFEST_FILE).exists() {
        let m = checkpoint::read_manifest(&dir).with_context(|| format!("reading the finished cell {}", dir.display()))?;
        tracing::info!(round = cell.round, seed = cell.seed, "cell done before");
        return Ok((result_from_manifest(cell, &m)?, None));
    }
    let device = subject.device();
    let (r, seed) = (cell.round, cell.seed);
    let (mask, parent, prev) = if r == 0 {
        (subject.dense_mask(seed)?, None, None)
    } else {
        let pd = cell_dir(cell.run.root(), r - 1, seed);
        let prev = checkpoint::load(&pd, &device).with_context(|| format!("loading the previous round {}", pd.display()))?;
        let m = subject.prune(cell, &prev).with_context(|| format!("pruning for round {r}, seed {seed}"))?;
        check_no_revival(&prev.masks, &m).with_context(|| format!("round {r}, seed {seed}"))?;
        (m, Some(checkpoint::weights_sha256(&pd)?), Some(prev))
    };
    let start = start_of(cell.run, plan.rewind, r, seed, prev.as_ref(), &device)?;
    drop(prev);
    let snapshot_step = match (r, plan.rewind) {
        (0, Rewind::Step(k)) => Some(k),
        _ => None,
    };
    let t = subject.train(cell, &start, &mask, snapshot_step).with_context(|| format!("training round {r}, seed {seed}"))?;
    if let Some(k) = snapshot_step {
        let mut snap = t.snapshot.with_context(|| format!("rewind step {k} is past the end of round 0's training (seed {seed})"))?;
        snap.sort_by(|a, b| a.0.cmp(&b.0));
        let bytes = safetensors::serialize(snap.iter().map(|(n, t)| (n.as_str(), t)), None)?;
        sprig_train::write_atomic(&rewind_file(cell.run.root(), seed), &bytes)?;
    }
    let extra = manifest_extra(subject, cell, &t.metrics)?;
    let meta = CheckpointMeta { method: subject.method(), schedule: subject.schedule(), seed: Some(seed), parent_sha256: parent, extra };
    checkpoint::save(&dir, &t.tensors, &mask, &meta).with_context(|| format!("saving {}", dir.display()))?;
    // Read back, not kept from memory: JSON floats may not round-trip bit for bit, and a resumed run
    // reads them from the file, so a fresh cell reports what the file says, as a resumed one does.
    let man = checkpoint::read_manifest(&dir).with_context(|| format!("reading back {}", dir.display()))?;
    tracing::info!(round = r, seed, sparsity = man.prunable_sparsity, "cell done");
    Ok((result_from_manifest(cell, &man)?, Some(mask)))
}

/// The `extra` of a checkpoint trained in `cell`: round, seed, sparsity, `metrics` and the
/// experiment's own fields ([`ImpSubject::extra`]).
pub fn manifest_extra<S: ImpSubject>(subject: &S, cell: &Cell, metrics: &S::Metrics) -> Result<serde_json::Value> {
    let mut extra = serde_json::json!({ "round": cell.round, "seed": cell.seed, "sparsity": cell.target_sparsity, "metrics": metrics });
    match subject.extra(cell)? {
        serde_json::Value::Object(m) => extra.as_object_mut().expect("an object").extend(m),
        serde_json::Value::Null => {}
        other => bail!("the experiment's manifest extra must be an object, got {other}"),
    }
    Ok(extra)
}

/// Runs (or resumes) IMP in `run` for `plan`; writes `summary.json` after every cell and plots
/// after every round; returns every cell's result in run order.
pub fn run_imp<S: ImpSubject>(run: &RunDir, plan: &ImpPlan, subject: &S) -> Result<Vec<CellResult<S::Metrics>>> {
    plan.validate(S::CONTROLS)?;
    let device = subject.device();
    let total = (plan.rounds + 1) * plan.seeds.len();
    let mut cells: Vec<CellResult<S::Metrics>> = Vec::with_capacity(total);
    for r in 0..=plan.rounds {
        let target_sparsity = subject.round_sparsity(r)?;
        for &seed in &plan.seeds {
            let cell = Cell { run, round: r, seed, target_sparsity };
            let (mut res, mut mask) = ticket(subject, plan, &cell)?;
            let mut start: Option<Start> = None;
            for c in Control::ALL.into_iter().filter(|_| r > 0) {
                let path = control_file(run.root(), r, seed, c);
                if let Some(done) = read_json::<ControlResult<S::Metrics>>(&path)? {
                    res.controls.insert(c.name().to_string(), done.metrics);
                    continue;
                }
                if !plan.runs_control(c, r) {
                    continue;
                }
                if mask.is_none() {
                    let ck = checkpoint::load(&cell.dir(), &device).with_context(|| format!("loading {}", cell.dir().display()))?;
                    mask = Some(ck.masks);
                }
                if start.is_none() {
                    start = Some(start_of(run, plan.rewind, r, seed, None, &device)?);
                }
                let (m, s) = (mask.as_ref().expect("loaded above"), start.as_ref().expect("set above"));
                let metrics = subject.control(c, &cell, m, s).with_context(|| format!("control {c}, round {r}, seed {seed}"))?;
                sprig_train::write_json(&path, &ControlResult { control: c, round: r, seed, sparsity: target_sparsity, metrics })?;
                // Read back like the manifest above (same values fresh or resumed).
                let done: ControlResult<S::Metrics> = read_json(&path)?.with_context(|| format!("{} vanished", path.display()))?;
                tracing::info!(round = r, seed, control = c.name(), "control done");
                res.controls.insert(c.name().to_string(), done.metrics);
            }
            cells.push(res);
            run.write_summary(SUMMARY_FILE, &subject.summary(&cells)?, cells.len() == total)?;
        }
        subject.plot(run, &cells)?;
    }
    Ok(cells)
}
