//! Lottery tickets in pre-trained BERT (Chen et al., "The Lottery Ticket Hypothesis for Pre-trained
//! BERT Networks", NeurIPS 2020), with the paper's controls, resumable.
//!
//! IMP (§3, Alg. 1 of Frankle & Carbin 2019 with the paper's choices): the prunable set is the
//! encoder's query, key, value, attention-output, FFN-in and FFN-out weights; each round fine-tunes
//! f(x; m ⊙ θ), prunes *globally* by magnitude so that the sparsity grows by `rate` of the original
//! weights (10%, 20%, …), and rewinds the survivors to the pre-trained θ₀ (or to step k).
//!
//! Controls at every sparsity (§4, Table 2): a random mask ("random pruning"), the IMP mask on
//! randomly re-initialised weights ("random reinit"), the IMP mask on the pre-trained weights
//! shuffled within each tensor ("random shuffled"), and one-shot global magnitude pruning of θ₀
//! without iterations ("standard pruning" of θ₀); as comparisons, gradual magnitude and movement
//! pruning during one fine-tune, and one-shot OBS of the dense fine-tuned model.
//!
//! Runs on the IMP runner ([`crate::imp::run_imp`]) in a [`RunDir`] (every file atomic, every
//! finished unit kept, so a killed run resumes from the last finished unit and ends with the same
//! results as an uninterrupted one):
//! ```text
//! config.json                            the experiment; a resumed run must match it
//! round-RR/seed-S/                       the ticket: sparse checkpoint (trained weights, masks, sprig.json)
//! round-RR/seed-S/control-<name>.json    one control's result
//! round-RR/seed-S-<name>/                the control's trained model (with `keep_control_models`)
//! rewind-seed-S.safetensors              weights at step k (rewind to step k only)
//! summary.json, tickets.svg              per round: sparsity, metric mean/std, controls; highest matching sparsity
//! results.json                           every cell with its controls (when the run is complete)
//! ```
use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sprig_bert::finetune::FinetuneConfig;
use sprig_bert::gradual::{Gradual, GradualCriterion, Rigl};
use sprig_bert::masked::{finetune_gradual, finetune_masked, finetune_rigl, obs_scores, snip_mask, Base, MaskedRun, RunMetrics, Start as FtStart, TaskData};
use sprig_bert::nn::randn;
use sprig_prune::checkpoint::{self, CheckpointMeta, SparseCheckpoint};
use sprig_prune::{Criterion, Inputs, Mask, MaskSet, Pruner, PrunerConfig, Rewind, RoundRate, Schedule};

pub use crate::imp::Control;
use crate::imp::{cell_dir, control_model_dir, manifest_extra, run_imp, Cell, CellResult, ImpPlan, ImpSubject, Start, Trained};
use crate::run_dir::{without_fields, RunConfig, RunDir};
use crate::ticket_summary::{plot_svg, summarize, TicketSummary};

/// Which test metric decides "matching".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    #[default]
    Accuracy,
    MacroF1,
    Mcc,
}

impl Metric {
    pub fn of(&self, m: &RunMetrics) -> f64 {
        match self {
            Metric::Accuracy => m.test_accuracy,
            Metric::MacroF1 => m.test_macro_f1,
            Metric::Mcc => m.test_mcc,
        }
    }
}

/// A BERT-Tickets experiment.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TicketConfig {
    /// Model, task and fine-tuning recipe; `finetune.seed` is the data (split/subsample) seed.
    pub finetune: FinetuneConfig,
    /// Pruning rounds after the dense round 0.
    pub rounds: usize,
    /// Fraction of the original prunable weights removed per round (Chen et al.: 0.1).
    pub rate: f64,
    pub rewind: Rewind,
    /// Training seeds (head init, dropout, batch order).
    pub seeds: Vec<u64>,
    pub controls: Vec<Control>,
    /// Rounds in which `controls` run (empty = every round ≥ 1). Results of controls already on
    /// disk are reported whatever this says, so a resumed run can add controls at chosen rounds.
    #[serde(default)]
    pub control_rounds: Vec<usize>,
    pub metric: Metric,
}

impl TicketConfig {
    pub fn schedule(&self) -> Schedule {
        Schedule::Imp { rounds: self.rounds, rate: RoundRate::LinearOfOriginal(self.rate), rewind: self.rewind }
    }

    /// What the IMP runner needs.
    pub fn plan(&self) -> ImpPlan {
        ImpPlan { rounds: self.rounds, seeds: self.seeds.clone(), rewind: self.rewind, controls: self.controls.clone(), control_rounds: self.control_rounds.clone() }
    }
}

impl RunConfig for TicketConfig {
    fn validate(&self) -> Result<()> {
        self.finetune.validate()?;
        self.schedule().validate().with_context(|| format!("rate {} x rounds {} must stay below sparsity 1", self.rate, self.rounds))?;
        if self.rewind == Rewind::LearningRate {
            bail!("rewind lr is not supported for BERT tickets (use init or step:K)");
        }
        self.plan().validate(&Control::ALL)
    }

    /// Everything but the fields that may grow (`rounds`, `seeds`, `controls`, `control_rounds`).
    fn identity(&self) -> Result<serde_json::Value> {
        Ok(without_fields(serde_json::to_value(self)?, &ImpPlan::GROWABLE))
    }
}

/// θ₀ with the prunable tensors re-initialised normal(0, 0.02) (seeded).
pub fn reinit_tensors(shapes: &[(String, Vec<usize>)], seed: u64) -> Result<HashMap<String, Tensor>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    shapes.iter().map(|(n, s)| Ok((n.clone(), randn(s, 0.02, &mut rng, &Device::Cpu)?))).collect()
}

/// θ₀'s prunable tensors, each permuted uniformly at random (Fisher–Yates, seeded).
pub fn shuffled_tensors(base: &HashMap<String, Tensor>, shapes: &[(String, Vec<usize>)], seed: u64) -> Result<HashMap<String, Tensor>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    shapes
        .iter()
        .map(|(n, s)| {
            let mut v = base.get(n).with_context(|| format!("no tensor {n}"))?.flatten_all()?.to_vec1::<f32>()?;
            for i in (1..v.len()).rev() {
                v.swap(i, rng.random_range(0..=i));
            }
            Ok((n.clone(), Tensor::from_vec(v, s.as_slice(), &Device::Cpu)?))
        })
        .collect()
}

/// The `shapes` tensors of `tensors` as `Var`s, in `shapes` order (what a [`Pruner`] scores).
fn vars_of<'a>(tensors: impl IntoIterator<Item = (&'a String, &'a Tensor)>, shapes: &[(String, Vec<usize>)]) -> Result<Vec<(String, Var)>> {
    let by_name: HashMap<&String, &Tensor> = tensors.into_iter().collect();
    shapes
        .iter()
        .map(|(n, _)| Ok((n.clone(), Var::from_tensor(by_name.get(n).with_context(|| format!("no tensor {n}"))?)?)))
        .collect()
}

/// The BERT-Tickets IMP step (Chen et al. 2020, §3): global magnitude pruning of the previous
/// round's trained weights to `schedule`'s sparsity of `round`, never reviving what `prev` pruned.
pub fn imp_step(schedule: Schedule, shapes: &[(String, Vec<usize>)], prev: &SparseCheckpoint, round: usize) -> Result<MaskSet> {
    let vars = vars_of(prev.tensors.iter().map(|(n, t)| (n, t)), shapes)?;
    let mut pruner = Pruner::new(PrunerConfig::new(Criterion::Magnitude, schedule), shapes.to_vec())?.with_masks(prev.masks.clone())?;
    Ok(pruner.round(round, &vars, &mut Inputs::none())?.clone())
}

/// All ones over `shapes` (round 0's mask).
pub fn dense_mask(shapes: &[(String, Vec<usize>)]) -> MaskSet {
    let mut m = MaskSet::new();
    for (n, s) in shapes {
        m.insert(n.clone(), Mask::ones(s));
    }
    m
}

/// The tensors and head flag of a fine-tune that starts from `start`: θ₀ (nothing to load) or the
/// weights at the rewind step, head included.
fn ft_start(start: &Start) -> (HashMap<String, Tensor>, bool) {
    match start {
        Start::Init => (HashMap::new(), false),
        Start::Weights(w) => (w.iter().map(|(n, t)| (n.clone(), t.clone())).collect(), true),
    }
}

/// The experiment as an [`ImpSubject`].
struct Tickets<'a> {
    cfg: &'a TicketConfig,
    base: &'a Base,
    data: &'a TaskData,
    shapes: Vec<(String, Vec<usize>)>,
    /// Save each control's trained model beside its cell (for `sprig export`, `sprig blessings`).
    keep_control_models: bool,
}

impl Tickets<'_> {
    /// Saves a control's trained model as a sparse checkpoint like a ticket's (same manifest
    /// fields, so `sprig export --ticket` reads it), when the experiment keeps control models.
    /// Written before the control's result file, so a resumed run never has a result without it.
    fn keep_control(&self, c: Control, cell: &Cell, run: &MaskedRun, mask: &MaskSet) -> Result<()> {
        if !self.keep_control_models {
            return Ok(());
        }
        let dir = control_model_dir(cell.run.root(), cell.round, cell.seed, c);
        let tensors: Vec<(String, Tensor)> = run.model.trainable_params().iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
        let mut extra = manifest_extra(self, cell, &run.metrics)?;
        extra["control"] = c.name().into();
        let meta = CheckpointMeta { method: format!("bert-tickets-control-{}", c.name()), schedule: None, seed: Some(cell.seed), parent_sha256: None, extra };
        checkpoint::save(&dir, &tensors, mask, &meta).with_context(|| format!("saving {}", dir.display()))?;
        Ok(())
    }

    /// The mask of a one-shot `cfg` over the prunable tensors, scoring `vars` (θ₀'s).
    fn one_shot(&self, cfg: PrunerConfig, vars: &[(String, Var)]) -> Result<MaskSet> {
        Ok(Pruner::new(cfg, self.shapes.clone())?.one_shot(vars, &mut Inputs::none())?.clone())
    }
}

impl ImpSubject for Tickets<'_> {
    type Metrics = RunMetrics;
    const CONTROLS: &'static [Control] = &Control::ALL;

    fn method(&self) -> String {
        "bert-tickets-imp-global-magnitude".into()
    }
    fn schedule(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self.cfg.schedule()).ok()
    }
    fn round_sparsity(&self, round: usize) -> Result<f64> {
        Ok(self.cfg.schedule().round_sparsity(round)?)
    }
    fn dense_mask(&self, _seed: u64) -> Result<MaskSet> {
        Ok(dense_mask(&self.shapes))
    }
    fn train(&self, cell: &Cell, start: &Start, mask: &MaskSet, snapshot_step: Option<usize>) -> Result<Trained<RunMetrics>> {
        let (tensors, head) = ft_start(start);
        let mask = (cell.round > 0).then_some(mask);
        let run = finetune_masked(self.base, self.data, &self.cfg.finetune, cell.seed, FtStart { tensors: &tensors, head }, mask, snapshot_step)?;
        let tensors = run.model.trainable_params().iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
        tracing::info!(round = cell.round, seed = cell.seed, sparsity = cell.target_sparsity, test_accuracy = run.metrics.test_accuracy, seconds = run.metrics.train_seconds, "ticket done");
        Ok(Trained { metrics: run.metrics, tensors, snapshot: run.snapshot.map(|s| s.into_iter().collect()) })
    }
    fn prune(&self, cell: &Cell, prev: &SparseCheckpoint) -> Result<MaskSet> {
        imp_step(self.cfg.schedule(), &self.shapes, prev, cell.round)
    }
    fn control(&self, c: Control, cell: &Cell, imp_mask: &MaskSet, start: &Start) -> Result<RunMetrics> {
        let (r, seed, s) = (cell.round, cell.seed, cell.target_sparsity);
        let (ft, data) = (&self.cfg.finetune, self.data);
        let salt = seed.wrapping_mul(1_000_003).wrapping_add(r as u64 * 7919);
        let (start, head) = ft_start(start);
        let gradual = match c {
            Control::Gmp => Some(GradualCriterion::Magnitude),
            Control::Movement => Some(GradualCriterion::Movement),
            _ => None,
        };
        if gradual.is_some() || c == Control::Rigl {
            let st = FtStart { tensors: &start, head };
            let run = match gradual {
                Some(g) => finetune_gradual(self.base, data, ft, seed, st, Gradual::standard(g, s))?,
                None => finetune_rigl(self.base, data, ft, seed, st, Rigl::standard(s, salt ^ 0x121A))?,
            };
            tracing::info!(round = r, seed, control = c.name(), sparsity = run.metrics.sparsity, test_accuracy = run.metrics.test_accuracy, "control done");
            let mask = run.gradual_mask.clone().context("a gradual run returns its final mask")?;
            self.keep_control(c, cell, &run, &mask)?;
            return Ok(run.metrics);
        }
        let base_vars = || vars_of(self.base.tensors.iter(), &self.shapes);
        let (start, mask) = match c {
            Control::RandomMask => (start, self.one_shot(PrunerConfig::one_shot(Criterion::Random, s).seed(salt ^ 0x5A5A), &base_vars()?)?),
            Control::Oneshot => (start, self.one_shot(PrunerConfig::one_shot(Criterion::Magnitude, s), &base_vars()?)?),
            Control::Snip => (start, snip_mask(self.base, data, ft, s, seed)?),
            Control::Obs => {
                let dir = cell_dir(cell.run.root(), 0, seed);
                let ck = checkpoint::load(&dir, &Device::Cpu).with_context(|| format!("OBS scores the dense fine-tuned model of round 0: loading {}", dir.display()))?;
                let tuned: HashMap<String, Tensor> = ck.tensors.into_iter().collect();
                let scores = obs_scores(self.base, data, ft, &tuned, seed)?;
                let mask = Pruner::new(PrunerConfig::one_shot(Criterion::Magnitude, s), self.shapes.clone())?.prune_scores(s, &scores)?.clone();
                (start, mask)
            }
            Control::Reinit => {
                let mut t = start;
                t.extend(reinit_tensors(&self.shapes, salt ^ 0x1E1E)?);
                (t, imp_mask.clone())
            }
            Control::Shuffled => {
                let mut t = start;
                let src = if t.is_empty() { self.base.tensors.clone() } else { t.clone() };
                t.extend(shuffled_tensors(&src, &self.shapes, salt ^ 0x5F5F)?);
                (t, imp_mask.clone())
            }
            Control::Gmp | Control::Movement | Control::Rigl => unreachable!("handled above"),
        };
        let run = finetune_masked(self.base, data, ft, seed, FtStart { tensors: &start, head }, Some(&mask), None)?;
        tracing::info!(round = r, seed, control = c.name(), sparsity = s, test_accuracy = run.metrics.test_accuracy, "control done");
        self.keep_control(c, cell, &run, &mask)?;
        Ok(run.metrics)
    }
    fn extra(&self, _cell: &Cell) -> Result<serde_json::Value> {
        Ok(serde_json::json!({ "task": self.data.task, "classes": self.data.classes, "model": self.base.spec, "finetune": self.cfg.finetune }))
    }
    fn summary(&self, cells: &[CellResult<RunMetrics>]) -> Result<serde_json::Value> {
        Ok(serde_json::to_value(summarize(self.cfg, &self.data.task, cells))?)
    }
    fn plot(&self, run: &RunDir, cells: &[CellResult<RunMetrics>]) -> Result<()> {
        let s = summarize(self.cfg, &self.data.task, cells);
        if s.rounds.is_empty() {
            return Ok(());
        }
        run.write_plot("tickets.svg", || plot_svg(&s))
    }
}

/// Runs (or resumes) the experiment into `out`; data from `home` (`$SPRIG_HOME`).
/// With `keep_control_models`, each control trained by this invocation also saves its model in
/// `round-RR/seed-S-<name>/` (it changes no result, so it is not part of the experiment's config).
pub fn run_tickets(cfg: &TicketConfig, out: &Path, home: &Path, keep_control_models: bool) -> Result<TicketSummary> {
    // Checked before the (slow) loading, opened after it: a start that fails to load writes nothing.
    RunDir::check(out, cfg)?;
    let base = Base::for_recipe(&cfg.finetune)?;
    let data = TaskData::load(&cfg.finetune, &base, home)?;
    let run = RunDir::open(out, cfg)?;
    let subject = Tickets { cfg, base: &base, data: &data, shapes: base.prunable_shapes()?, keep_control_models };
    let cells = run_imp(&run, &cfg.plan(), &subject)?;
    run.write_json("results.json", &cells)?;
    Ok(summarize(cfg, &data.task, &cells))
}
