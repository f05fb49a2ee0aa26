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
//! without iterations ("standard pruning" of θ₀).
//!
//! Layout of `OUT/` (every file atomic, every finished unit kept, so a killed run resumes from the
//! last finished unit and ends with the same results as an uninterrupted one):
//! ```text
//! config.json                      the experiment; a resumed run must match it
//! round-RR/seed-S/                 the ticket: sparse checkpoint (trained weights, masks, sprig.json)
//! round-RR/seed-S.<control>.json   one control's result
//! rewind-seed-S.safetensors        weights at step k (rewind to step k only)
//! summary.json, tickets.svg        per round: sparsity, metric mean/std, controls; highest matching sparsity
//! ```
use sprig_bert::finetune::FinetuneConfig;
use sprig_bert::gradual::{Gradual, GradualCriterion};
use sprig_bert::masked::{finetune_gradual, finetune_masked, obs_scores, Base, RunMetrics, Start, TaskData};
use sprig_bert::nn::randn;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sprig_prune::checkpoint::{self, CheckpointMeta};
use sprig_prune::{prune, Allocation, Granularity, MaskSet, Rewind, RoundRate, Schedule, Scores};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A control run at the same sparsity as the ticket (Chen et al. 2020, §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    /// A random global mask, pre-trained weights.
    RandomMask,
    /// The IMP mask, prunable weights re-initialised normal(0, 0.02) (BERT's init).
    Reinit,
    /// The IMP mask, pre-trained prunable weights shuffled within each tensor.
    Shuffled,
    /// One-shot global magnitude pruning of θ₀ to the same sparsity, no IMP.
    Oneshot,
    /// Gradual (cubic) global magnitude pruning to the same sparsity during one fine-tune from θ₀
    /// (Zhu & Gupta 2017).
    Gmp,
    /// Movement pruning to the same sparsity during one fine-tune from θ₀ (Sanh et al. 2020).
    Movement,
    /// One-shot OBS: the mask of the diagonal-Fisher OBS saliency of the dense fine-tuned model
    /// (round 0 of the seed), pruned globally to the sparsity in one step, weights rewound to θ₀.
    Obs,
}

impl Control {
    pub const ALL: [Control; 7] = [Control::RandomMask, Control::Reinit, Control::Shuffled, Control::Oneshot, Control::Gmp, Control::Movement, Control::Obs];
    pub fn name(&self) -> &'static str {
        match self {
            Control::RandomMask => "random_mask",
            Control::Reinit => "reinit",
            Control::Shuffled => "shuffled",
            Control::Oneshot => "oneshot",
            Control::Gmp => "gmp",
            Control::Movement => "movement",
            Control::Obs => "obs",
        }
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
            _ => bail!("unknown control `{s}` (expected random-mask, reinit, shuffled, oneshot, gmp, movement or obs)"),
        })
    }
}

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
    pub fn validate(&self) -> Result<()> {
        self.finetune.validate()?;
        if self.seeds.is_empty() {
            bail!("--seeds must be at least 1");
        }
        if self.rounds == 0 {
            bail!("--rounds must be at least 1");
        }
        self.schedule().validate().with_context(|| format!("rate {} x rounds {} must stay below sparsity 1", self.rate, self.rounds))?;
        if self.rewind == Rewind::LearningRate {
            bail!("rewind lr is not supported for BERT tickets (use init or step:K)");
        }
        Ok(())
    }
}

/// One (round, seed) result: the ticket and the controls that ran.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RoundResult {
    pub round: usize,
    pub seed: u64,
    pub sparsity: f64,
    pub ticket: RunMetrics,
    pub controls: HashMap<String, RunMetrics>,
}

pub fn round_dir(out: &Path, round: usize) -> PathBuf {
    out.join(format!("round-{round:02}"))
}

fn control_file(out: &Path, round: usize, seed: u64, c: Control) -> PathBuf {
    round_dir(out, round).join(format!("seed-{seed}.{}.json", c.name()))
}

/// |w| of the prunable tensors (Han et al. 2015); it lives in `sprig_bert::gradual`, which GMP uses.
pub use sprig_bert::gradual::magnitude_scores;

/// Seeded uniform scores (the random-pruning control).
pub fn random_scores(shapes: &[(String, Vec<usize>)], seed: u64) -> Scores {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    shapes.iter().map(|(n, s)| (n.clone(), (0..s.iter().product::<usize>()).map(|_| rng.random::<f32>()).collect())).collect()
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

fn global(scores: &Scores, shapes: &[(String, Vec<usize>)], s: f64, current: Option<&MaskSet>) -> Result<MaskSet> {
    Ok(prune(scores, shapes, s, Granularity::Unstructured, &Allocation::global(), current)?)
}

/// The IMP step: global magnitude pruning of the trained `tensors` to sparsity `s`, never
/// reviving what `current` already pruned.
pub fn global_magnitude_mask(tensors: &HashMap<String, Tensor>, shapes: &[(String, Vec<usize>)], s: f64, current: Option<&MaskSet>) -> Result<MaskSet> {
    global(&magnitude_scores(tensors, shapes)?, shapes, s, current)
}

struct Ctx<'a> {
    cfg: &'a TicketConfig,
    out: &'a Path,
    base: &'a Base,
    data: &'a TaskData,
    shapes: Vec<(String, Vec<usize>)>,
}

impl Ctx<'_> {
    /// Starting weights of round ≥ 1 (and of the controls that keep θ₀'s values): θ₀ or step k.
    fn rewind_start(&self, seed: u64) -> Result<(HashMap<String, Tensor>, bool)> {
        match self.cfg.rewind {
            Rewind::Step(_) => {
                let p = self.out.join(format!("rewind-seed-{seed}.safetensors"));
                let t = candle_core::safetensors::load(&p, &Device::Cpu).with_context(|| format!("loading {}", p.display()))?;
                Ok((t, true))
            }
            _ => Ok((HashMap::new(), false)),
        }
    }

    /// Runs or reads the ticket of (round, seed); returns its result and mask.
    fn ticket(&self, r: usize, seed: u64) -> Result<(RunMetrics, MaskSet)> {
        let dir = round_dir(self.out, r).join(format!("seed-{seed}"));
        if checkpoint::read_manifest(&dir).is_ok() {
            let ck = checkpoint::load(&dir, &Device::Cpu).with_context(|| format!("reading {}", dir.display()))?;
            let m: RunMetrics = serde_json::from_value(ck.manifest.meta.extra["metrics"].clone()).with_context(|| format!("bad manifest in {}", dir.display()))?;
            return Ok((m, ck.masks));
        }
        let sparsity = self.cfg.schedule().round_sparsity(r)?;
        let (mask, parent) = if r == 0 {
            (None, None)
        } else {
            let prev = round_dir(self.out, r - 1).join(format!("seed-{seed}"));
            let ck = checkpoint::load(&prev, &Device::Cpu).with_context(|| format!("loading {}", prev.display()))?;
            let trained: HashMap<String, Tensor> = ck.tensors.into_iter().collect();
            let cur = if r == 1 { None } else { Some(&ck.masks) };
            let m = global_magnitude_mask(&trained, &self.shapes, sparsity, cur)?;
            (Some(m), Some(checkpoint::weights_sha256(&prev)?))
        };
        let (start, head) = if r == 0 { (HashMap::new(), false) } else { self.rewind_start(seed)? };
        let snap_step = match (r, self.cfg.rewind) {
            (0, Rewind::Step(k)) => Some(k),
            _ => None,
        };
        let run = finetune_masked(self.base, self.data, &self.cfg.finetune, seed, Start { tensors: &start, head }, mask.as_ref(), snap_step)?;
        if let (Some(snap), Rewind::Step(_)) = (&run.snapshot, self.cfg.rewind) {
            let p = self.out.join(format!("rewind-seed-{seed}.safetensors"));
            let mut named: Vec<(&String, &Tensor)> = snap.iter().collect();
            named.sort_by(|a, b| a.0.cmp(b.0));
            let bytes = safetensors::serialize(named, None)?;
            sprig_train::write_atomic(&p, &bytes)?;
        }
        let tensors: Vec<(String, Tensor)> = run.model.trainable_params().iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
        let mask = match mask {
            Some(m) => m,
            None => {
                let prunable: Vec<(String, candle_core::Var)> = run.model.named_params().into_iter().filter(|(n, _)| self.shapes.iter().any(|(s, _)| s == n)).collect();
                MaskSet::ones_for(&prunable)
            }
        };
        let meta = CheckpointMeta {
            method: "bert-tickets-imp-global-magnitude".into(),
            schedule: Some(serde_json::to_value(self.cfg.schedule())?),
            seed: Some(seed),
            parent_sha256: parent,
            extra: serde_json::json!({
                "round": r, "sparsity": sparsity, "metrics": run.metrics, "task": self.data.task,
                "classes": self.data.classes, "model": self.base.spec, "finetune": self.cfg.finetune,
            }),
        };
        checkpoint::save(&dir, &tensors, &mask, &meta)?;
        tracing::info!(round = r, seed, sparsity, test_accuracy = run.metrics.test_accuracy, seconds = run.metrics.train_seconds, "ticket done");
        Ok((run.metrics, mask))
    }

    fn control(&self, c: Control, r: usize, seed: u64, imp_mask: &MaskSet) -> Result<RunMetrics> {
        let path = control_file(self.out, r, seed, c);
        if path.exists() {
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            return serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()));
        }
        let s = self.cfg.schedule().round_sparsity(r)?;
        let salt = seed.wrapping_mul(1_000_003).wrapping_add(r as u64 * 7919);
        let (start, head) = self.rewind_start(seed)?;
        let gradual = match c {
            Control::Gmp => Some(GradualCriterion::Magnitude),
            Control::Movement => Some(GradualCriterion::Movement),
            _ => None,
        };
        if let Some(g) = gradual {
            let run = finetune_gradual(self.base, self.data, &self.cfg.finetune, seed, Start { tensors: &start, head }, Gradual::standard(g, s))?;
            sprig_train::write_json(&path, &run.metrics)?;
            tracing::info!(round = r, seed, control = c.name(), sparsity = run.metrics.sparsity, test_accuracy = run.metrics.test_accuracy, "control done");
            return Ok(run.metrics);
        }
        let (start, mask) = match c {
            Control::RandomMask => (start, global(&random_scores(&self.shapes, salt ^ 0x5A5A), &self.shapes, s, None)?),
            Control::Oneshot => (start, global(&magnitude_scores(&self.base.tensors, &self.shapes)?, &self.shapes, s, None)?),
            Control::Obs => {
                let dir = round_dir(self.out, 0).join(format!("seed-{seed}"));
                let ck = checkpoint::load(&dir, &Device::Cpu).with_context(|| format!("OBS scores the dense fine-tuned model of round 0: loading {}", dir.display()))?;
                let tuned: HashMap<String, Tensor> = ck.tensors.into_iter().collect();
                (start, global(&obs_scores(self.base, self.data, &self.cfg.finetune, &tuned, seed)?, &self.shapes, s, None)?)
            }
            Control::Gmp | Control::Movement => unreachable!("handled above"),
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
        };
        let run = finetune_masked(self.base, self.data, &self.cfg.finetune, seed, Start { tensors: &start, head }, Some(&mask), None)?;
        sprig_train::write_json(&path, &run.metrics)?;
        tracing::info!(round = r, seed, control = c.name(), sparsity = s, test_accuracy = run.metrics.test_accuracy, "control done");
        Ok(run.metrics)
    }
}

/// Runs (or resumes) the experiment into `out`; data from `home` (`$SPRIG_HOME`).
pub fn run_tickets(cfg: &TicketConfig, out: &Path, home: &Path) -> Result<crate::ticket_summary::TicketSummary> {
    cfg.validate()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let cfg_path = out.join("config.json");
    if cfg_path.exists() {
        let old: TicketConfig = serde_json::from_slice(&std::fs::read(&cfg_path)?).with_context(|| format!("reading {}", cfg_path.display()))?;
        let same = TicketConfig { rounds: cfg.rounds, seeds: cfg.seeds.clone(), controls: cfg.controls.clone(), control_rounds: cfg.control_rounds.clone(), ..old.clone() };
        if &same != cfg {
            bail!("{} holds a different experiment (see its config.json); use another --out", out.display());
        }
    }
    sprig_train::write_json(&cfg_path, cfg)?;
    let base = Base::load(&cfg.finetune.model)?;
    let data = TaskData::load(&cfg.finetune, &base, home)?;
    let shapes = base.prunable_shapes()?;
    let ctx = Ctx { cfg, out, base: &base, data: &data, shapes };
    let mut results: Vec<RoundResult> = Vec::new();
    for r in 0..=cfg.rounds {
        for &seed in &cfg.seeds {
            let (ticket, mask) = ctx.ticket(r, seed)?;
            let mut res = RoundResult { round: r, seed, sparsity: cfg.schedule().round_sparsity(r)?, ticket, controls: HashMap::new() };
            if r > 0 {
                let run_here = cfg.control_rounds.is_empty() || cfg.control_rounds.contains(&r);
                for c in Control::ALL {
                    if (run_here && cfg.controls.contains(&c)) || control_file(out, r, seed, c).exists() {
                        let m = ctx.control(c, r, seed, &mask)?;
                        res.controls.insert(c.name().to_string(), m);
                    }
                }
            }
            results.push(res);
            let summary = crate::ticket_summary::summarize(cfg, &data.task, &results);
            sprig_train::write_json(&out.join("summary.json"), &summary)?;
        }
        let summary = crate::ticket_summary::summarize(cfg, &data.task, &results);
        crate::ticket_summary::plot_svg(&summary, &out.join("tickets.svg"))?;
    }
    sprig_train::write_json(&out.join("results.json"), &results)?;
    Ok(crate::ticket_summary::summarize(cfg, &data.task, &results))
}
