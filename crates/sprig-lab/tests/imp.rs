//! The IMP runner and run directories on a toy subject: a 4x12 linear regression trained by plain
//! minibatch SGD on a seeded synthetic dataset (pure Rust arithmetic, so every run is bit-exact).
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sprig_lab::imp::{cell_dir, control_file, rewind_file, run_imp, Cell, CellResult, Control, ImpPlan, ImpSubject, Start, Trained};
use sprig_lab::run_dir::{without_fields, RunConfig, RunDir};
use sprig_prune::checkpoint::{self, SparseCheckpoint};
use sprig_prune::{prune, Allocation, Granularity, Mask, MaskSet, Rewind, RoundRate, Schedule, Scores};

const OUT: usize = 4;
const IN: usize = 12;
const N: usize = 48;
const W: &str = "fc.weight";
const B: &str = "fc.bias";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct ToyConfig {
    rate: f64,
    lr: f64,
    steps: usize,
    #[serde(flatten)]
    plan: ImpPlan,
}

impl RunConfig for ToyConfig {
    fn validate(&self) -> Result<()> {
        if !(self.rate > 0.0 && self.rate < 1.0) {
            bail!("rate {} must be in (0, 1)", self.rate);
        }
        if self.steps == 0 || self.lr <= 0.0 {
            bail!("steps and lr must be positive");
        }
        self.plan.validate(Toy::CONTROLS)
    }
    fn identity(&self) -> Result<serde_json::Value> {
        Ok(without_fields(serde_json::to_value(self)?, &ImpPlan::GROWABLE))
    }
}

/// Weight and bias, flat.
type Params = (Vec<f32>, Vec<f32>);

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct ToyMetrics {
    loss: f64,
    steps: usize,
}

struct Toy {
    cfg: ToyConfig,
    x: Vec<f32>,
    y: Vec<f32>,
    /// Fail (as a killed process would stop) when this many trainings (cells + controls) have run.
    fail_after: Option<usize>,
    runs: AtomicUsize,
    /// A buggy pruning step that revives pruned weights (to test the runner's check).
    revive: bool,
}

impl Toy {
    fn new(cfg: &ToyConfig) -> Toy {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let truth: Vec<f32> = (0..OUT * IN).map(|i| if i % 3 == 0 { rng.random_range(-2.0..2.0) } else { 0.1 * rng.random_range(-1.0..1.0) }).collect();
        let x: Vec<f32> = (0..N * IN).map(|_| rng.random_range(-1.0..1.0)).collect();
        let y = (0..N * OUT).map(|k| (0..IN).map(|j| truth[(k % OUT) * IN + j] * x[(k / OUT) * IN + j]).sum::<f32>() + 0.05 * rng.random_range(-1.0f32..1.0)).collect();
        Toy { cfg: cfg.clone(), x, y, fail_after: None, runs: AtomicUsize::new(0), revive: false }
    }
    fn schedule(&self) -> Schedule {
        Schedule::Imp { rounds: self.cfg.plan.rounds, rate: RoundRate::FractionOfRemaining(self.cfg.rate), rewind: self.cfg.plan.rewind }
    }
    fn init(seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..OUT * IN).map(|_| rng.random_range(-0.5..0.5)).collect()
    }
    fn tick(&self) -> Result<()> {
        let n = self.runs.fetch_add(1, Ordering::SeqCst);
        if self.fail_after.is_some_and(|k| n >= k) {
            bail!("simulated crash after {k} trainings", k = n);
        }
        Ok(())
    }
    /// Plain SGD on the mean squared error; pruned weights are zero after every step.
    fn sgd(&self, order_seed: u64, mut w: Vec<f32>, mut b: Vec<f32>, keep: &[bool], snap: Option<usize>) -> (ToyMetrics, Vec<f32>, Vec<f32>, Option<Params>) {
        let mask = |w: &mut Vec<f32>| w.iter_mut().zip(keep).for_each(|(v, &k)| if !k { *v = 0.0 });
        mask(&mut w);
        let mut rng = ChaCha8Rng::seed_from_u64(order_seed);
        let mut snapshot = None;
        for step in 0..self.cfg.steps {
            if snap == Some(step) {
                snapshot = Some((w.clone(), b.clone()));
            }
            let batch: Vec<usize> = (0..8).map(|_| rng.random_range(0..N)).collect();
            let (mut gw, mut gb) = (vec![0f32; OUT * IN], vec![0f32; OUT]);
            for &i in &batch {
                for o in 0..OUT {
                    let pred = b[o] + (0..IN).map(|j| w[o * IN + j] * self.x[i * IN + j]).sum::<f32>();
                    let e = pred - self.y[i * OUT + o];
                    gb[o] += e / 8.0;
                    (0..IN).for_each(|j| gw[o * IN + j] += e * self.x[i * IN + j] / 8.0);
                }
            }
            w.iter_mut().zip(&gw).for_each(|(v, g)| *v -= self.cfg.lr as f32 * g);
            b.iter_mut().zip(&gb).for_each(|(v, g)| *v -= self.cfg.lr as f32 * g);
            mask(&mut w);
        }
        if snap == Some(self.cfg.steps) {
            snapshot = Some((w.clone(), b.clone()));
        }
        let loss = (0..N)
            .flat_map(|i| (0..OUT).map(move |o| (i, o)))
            .map(|(i, o)| ((b[o] + (0..IN).map(|j| w[o * IN + j] * self.x[i * IN + j]).sum::<f32>() - self.y[i * OUT + o]) as f64).powi(2))
            .sum::<f64>()
            / (N * OUT) as f64;
        (ToyMetrics { loss, steps: self.cfg.steps }, w, b, snapshot)
    }
    fn shapes() -> Vec<(String, Vec<usize>)> {
        vec![(W.to_string(), vec![OUT, IN])]
    }
    fn global(&self, scores: Vec<f32>, s: f64, current: Option<&MaskSet>) -> Result<MaskSet> {
        let scores: Scores = [(W.to_string(), scores)].into();
        Ok(prune(&scores, &Self::shapes(), s, Granularity::Unstructured, &Allocation::global(), current)?)
    }
    fn start_weights(start: &Start, seed: u64) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok(match start {
            Start::Init => (Self::init(seed), vec![0.0; OUT]),
            Start::Weights(t) => (vec1(&t[W])?, vec1(&t[B])?),
        })
    }
    fn trained(m: ToyMetrics, w: Vec<f32>, b: Vec<f32>, snap: Option<Params>) -> Result<Trained<ToyMetrics>> {
        let named = |w: Vec<f32>, b: Vec<f32>| -> Result<Vec<(String, Tensor)>> {
            Ok(vec![(W.into(), Tensor::from_vec(w, (OUT, IN), &Device::Cpu)?), (B.into(), Tensor::from_vec(b, OUT, &Device::Cpu)?)])
        };
        Ok(Trained { metrics: m, tensors: named(w, b)?, snapshot: snap.map(|(w, b)| named(w, b)).transpose()? })
    }
}

fn vec1(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

impl ImpSubject for Toy {
    type Metrics = ToyMetrics;
    const CONTROLS: &'static [Control] = &[Control::RandomMask, Control::Reinit, Control::Oneshot];

    fn method(&self) -> String {
        "toy-imp-global-magnitude".into()
    }
    fn schedule(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self.schedule()).ok()
    }
    fn round_sparsity(&self, round: usize) -> Result<f64> {
        Ok(self.schedule().round_sparsity(round)?)
    }
    fn dense_mask(&self, _seed: u64) -> Result<MaskSet> {
        let mut m = MaskSet::new();
        m.insert(W, Mask::ones(&[OUT, IN]));
        Ok(m)
    }
    fn train(&self, cell: &Cell, start: &Start, mask: &MaskSet, snapshot_step: Option<usize>) -> Result<Trained<ToyMetrics>> {
        self.tick()?;
        let (w, b) = Self::start_weights(start, cell.seed)?;
        let (m, w, b, snap) = self.sgd(cell.derived_seed(1), w, b, &mask.require(W)?.to_bools(), snapshot_step);
        Self::trained(m, w, b, snap)
    }
    fn prune(&self, cell: &Cell, prev: &SparseCheckpoint) -> Result<MaskSet> {
        let w = prev.tensors.iter().find(|(n, _)| n == W).map(|(_, t)| t).expect("weight");
        if self.revive {
            // Keeps the smallest weights, ignoring the current mask: the zeros pruned last round come back.
            return self.global(vec1(&w.abs()?.neg()?)?, cell.target_sparsity, None);
        }
        self.global(vec1(&w.abs()?)?, cell.target_sparsity, Some(&prev.masks))
    }
    fn control(&self, control: Control, cell: &Cell, imp_mask: &MaskSet, start: &Start) -> Result<ToyMetrics> {
        self.tick()?;
        let (w, b) = Self::start_weights(start, cell.seed)?;
        let (w, mask) = match control {
            Control::Reinit => (Self::init(cell.derived_seed(2)), imp_mask.clone()),
            Control::RandomMask => {
                let mut rng = ChaCha8Rng::seed_from_u64(cell.derived_seed(3));
                (w, self.global((0..OUT * IN).map(|_| rng.random::<f32>()).collect(), cell.target_sparsity, None)?)
            }
            Control::Oneshot => {
                let s = w.iter().map(|v| v.abs()).collect();
                (w, self.global(s, cell.target_sparsity, None)?)
            }
            c => bail!("unsupported {c}"),
        };
        Ok(self.sgd(cell.derived_seed(4), w, b, &mask.require(W)?.to_bools(), None).0)
    }
}

fn config(rewind: Rewind) -> ToyConfig {
    ToyConfig {
        rate: 0.3,
        lr: 0.1,
        steps: 40,
        plan: ImpPlan { rounds: 3, seeds: vec![1, 2], rewind, controls: vec![Control::Reinit, Control::RandomMask, Control::Oneshot], control_rounds: vec![] },
    }
}

fn run(dir: &Path, cfg: &ToyConfig, fail_after: Option<usize>) -> Result<Vec<CellResult<ToyMetrics>>> {
    let rd = RunDir::open(dir, cfg)?;
    let toy = Toy { fail_after, ..Toy::new(cfg) };
    run_imp(&rd, &cfg.plan, &toy)
}

/// Every file under `dir` with its bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn runs_to_completion_with_every_rewind() {
    for rewind in [Rewind::Init, Rewind::Step(5), Rewind::LearningRate] {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(rewind);
        let cells = run(tmp.path(), &cfg, None).unwrap();
        assert_eq!(cells.len(), 8);
        for c in &cells {
            assert!(cell_dir(tmp.path(), c.round, c.seed).join("sprig.json").exists());
            assert!(c.metrics.loss.is_finite());
            let want = if c.round == 0 { 0 } else { 3 };
            assert_eq!(c.controls.len(), want, "round {} controls {:?}", c.round, c.controls.keys());
        }
        // Training works: the dense round fits the data far better than the untrained init.
        assert!(cells[0].metrics.loss < 0.5, "{:?}", cells[0].metrics);
        assert_eq!(rewind_file(tmp.path(), 1).exists(), matches!(rewind, Rewind::Step(_)));
        let s = summary(tmp.path());
        assert_eq!(s["complete"], true);
        assert_eq!(s["cells"].as_array().unwrap().len(), 8);
        // A second start reads everything back and changes no file but the (identical) summary.
        let before = tree(tmp.path());
        let again = run(tmp.path(), &cfg, Some(0)).unwrap();
        assert_eq!(again, cells);
        assert_eq!(tree(tmp.path()), before);
    }
}

#[test]
fn crashed_and_resumed_equals_uninterrupted() {
    let cfg = config(Rewind::Step(5));
    let whole = tempfile::tempdir().unwrap();
    let expected = run(whole.path(), &cfg, None).unwrap();
    // 8 cells + 6 x 3 controls = 26 trainings; crash at a ticket, between ticket and controls, mid-controls.
    for k in [1, 2, 3, 5, 9, 17, 25] {
        let tmp = tempfile::tempdir().unwrap();
        let err = run(tmp.path(), &cfg, Some(k)).unwrap_err();
        assert!(format!("{err:#}").contains("simulated crash"), "{err:#}");
        let partial = summary(tmp.path());
        assert_eq!(partial["complete"], false, "crash after {k}");
        let resumed = run(tmp.path(), &cfg, None).unwrap();
        assert_eq!(resumed, expected, "crash after {k}");
        assert_eq!(summary(tmp.path()), summary(whole.path()));
        for c in &expected {
            let (a, b) = (cell_dir(whole.path(), c.round, c.seed), cell_dir(tmp.path(), c.round, c.seed));
            let (ma, mb) = (checkpoint::read_manifest(&a).unwrap(), checkpoint::read_manifest(&b).unwrap());
            assert_eq!((ma.weights_sha256, ma.masks_sha256), (mb.weights_sha256, mb.masks_sha256), "crash after {k}, {}", b.display());
        }
        assert_eq!(tree(tmp.path()), tree(whole.path()), "crash after {k}");
    }
}

#[test]
fn growing_rounds_seeds_and_controls_resumes() {
    let full = config(Rewind::Init);
    let whole = tempfile::tempdir().unwrap();
    run(whole.path(), &full, None).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let small = ToyConfig { plan: ImpPlan { rounds: 1, seeds: vec![1], controls: vec![Control::Reinit], ..full.plan.clone() }, ..full.clone() };
    run(tmp.path(), &small, None).unwrap();
    assert_eq!(summary(tmp.path())["complete"], true);
    run(tmp.path(), &full, None).unwrap();
    let (a, b) = (tree(tmp.path()), tree(whole.path()));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, v) in &a {
        if k.ends_with("sprig.json") {
            // The manifest records the schedule as configured when the cell ran (fewer rounds then),
            // and so hashes differently.
            let strip = |b: &[u8]| without_fields(serde_json::from_slice(b).unwrap(), &["schedule", "manifest_sha256"]);
            assert_eq!(strip(v), strip(&b[k]), "{k}");
        } else {
            assert!(v == &b[k], "{k} differs:\n{}\n{}", String::from_utf8_lossy(v), String::from_utf8_lossy(&b[k]));
        }
    }
}

#[test]
fn a_different_experiment_is_refused_and_nothing_written() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(Rewind::Init);
    run(tmp.path(), &cfg, None).unwrap();
    let before = tree(tmp.path());
    let other = ToyConfig { lr: 0.05, ..cfg.clone() };
    let err = format!("{:#}", run(tmp.path(), &other, None).unwrap_err());
    assert!(err.contains(&tmp.path().display().to_string()) && err.contains("`lr` is 0.1 there, 0.05 here"), "{err}");
    let other = ToyConfig { plan: ImpPlan { rewind: Rewind::Step(3), ..cfg.plan.clone() }, ..cfg.clone() };
    let err = format!("{:#}", run(tmp.path(), &other, None).unwrap_err());
    assert!(err.contains("`rewind"), "{err}");
    assert_eq!(tree(tmp.path()), before);
    // A non-empty directory that is not a run directory is refused too.
    let foreign = tempfile::tempdir().unwrap();
    std::fs::write(foreign.path().join("notes.txt"), "mine").unwrap();
    let err = format!("{:#}", run(foreign.path(), &cfg, None).unwrap_err());
    assert!(err.contains("not a run directory"), "{err}");
    assert_eq!(tree(foreign.path()).len(), 1);
}

#[test]
fn an_invalid_config_writes_nothing_and_the_corrected_one_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let good = config(Rewind::Init);
    for bad in [
        ToyConfig { rate: 1.5, ..good.clone() },
        ToyConfig { plan: ImpPlan { controls: vec![Control::Gmp], ..good.plan.clone() }, ..good.clone() },
        ToyConfig { plan: ImpPlan { seeds: vec![], ..good.plan.clone() }, ..good.clone() },
        ToyConfig { plan: ImpPlan { control_rounds: vec![4], ..good.plan.clone() }, ..good.clone() },
    ] {
        let err = format!("{:#}", run(&out, &bad, None).unwrap_err());
        assert!(err.contains("invalid config"), "{err}");
        assert!(!out.exists(), "{err}");
    }
    run(&out, &good, None).unwrap();
    assert_eq!(summary(&out)["complete"], true);
}

#[test]
fn orphan_temporary_files_are_removed_on_the_next_start() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(Rewind::Init);
    run(tmp.path(), &cfg, None).unwrap();
    let clean = tree(tmp.path());
    let r1 = tmp.path().join("round-01");
    std::fs::write(tmp.path().join(".tmpA1b2C3"), "half a summary").unwrap();
    std::fs::write(r1.join("seed-1").join(".tmpXyZ"), "half a control").unwrap();
    std::fs::create_dir(r1.join(".sprig-ckpt-Q1w2")).unwrap();
    std::fs::write(r1.join(".sprig-ckpt-Q1w2").join("model.safetensors"), "half").unwrap();
    std::fs::create_dir(r1.join(".sprig-old-4242")).unwrap();
    run(tmp.path(), &cfg, None).unwrap();
    assert_eq!(tree(tmp.path()), clean);
    assert!(!r1.join(".sprig-ckpt-Q1w2").exists() && !r1.join(".sprig-old-4242").exists());
    // A fresh directory holding only a killed first start's temp file is accepted.
    let fresh = tempfile::tempdir().unwrap();
    std::fs::write(fresh.path().join(".tmpK1ll3d"), "{").unwrap();
    run(fresh.path(), &cfg, None).unwrap();
    assert_eq!(tree(fresh.path()), clean);
}

#[test]
fn sparsity_follows_the_schedule_and_masks_never_revive() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = ToyConfig { plan: ImpPlan { rounds: 5, seeds: vec![3], controls: vec![], ..config(Rewind::Init).plan }, ..config(Rewind::Init) };
    let cells = run(tmp.path(), &cfg, None).unwrap();
    let numel = (OUT * IN) as f64;
    let mut prev: Option<Vec<bool>> = None;
    for (r, c) in cells.iter().enumerate() {
        let want = 1.0 - 0.7f64.powi(r as i32);
        assert!((c.sparsity - want).abs() <= 1.0 / numel, "round {r}: sparsity {} vs schedule {want}", c.sparsity);
        assert_eq!(c.target_sparsity, want);
        let ck = checkpoint::load(&cell_dir(tmp.path(), r, 3), &Device::Cpu).unwrap();
        let keep = ck.masks.require(W).unwrap().to_bools();
        if let Some(p) = &prev {
            assert!(keep.iter().zip(p).all(|(k, p)| !k || *p), "round {r} revived a weight");
        }
        let w = vec1(&ck.tensors.iter().find(|(n, _)| n == W).unwrap().1).unwrap();
        assert!(w.iter().zip(&keep).all(|(v, k)| *k || *v == 0.0));
        prev = Some(keep);
    }
    assert!(cells.last().unwrap().sparsity > 0.8);
    // A pruning step that revives pruned weights is refused by the runner.
    let bad = tempfile::tempdir().unwrap();
    let rd = RunDir::open(bad.path(), &cfg).unwrap();
    let toy = Toy { revive: true, ..Toy::new(&cfg) };
    let err = format!("{:#}", run_imp(&rd, &cfg.plan, &toy).unwrap_err());
    assert!(err.contains("revived"), "{err}");
}

#[test]
fn control_files_are_per_cell_and_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = ToyConfig { plan: ImpPlan { control_rounds: vec![2], ..config(Rewind::Init).plan }, ..config(Rewind::Init) };
    let cells = run(tmp.path(), &cfg, None).unwrap();
    for c in &cells {
        assert_eq!(c.controls.len(), if c.round == 2 { 3 } else { 0 }, "round {}", c.round);
        assert_eq!(control_file(tmp.path(), c.round, c.seed, Control::Reinit).exists(), c.round == 2);
    }
    // Controls on disk are reported even when the plan no longer asks for them.
    let fewer = ToyConfig { plan: ImpPlan { controls: vec![], ..cfg.plan.clone() }, ..cfg.clone() };
    assert_eq!(run(tmp.path(), &fewer, Some(0)).unwrap(), cells);
}
