//! A run killed at any step and resumed from its last saved state ends exactly as the
//! uninterrupted run: weights, optimizer, hook state, best evaluation, snapshot and metrics log.
use candle_core::{Device, Tensor, Var};
use sprig_train::fit::{BatchOrder, Ctx, Fit, FitOutcome, Hooks, Lr, Resume, StepInfo, StepLoss};
use sprig_train::{AdamW, AdamWConfig, LinearWarmupDecay, MetricsLog, Optimizer, TrainError, TrainState};

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
}

/// A hook with state of its own: how many steps it saw and a running sum of their losses; its
/// dev score depends on the weights, so the best evaluation moves during the run.
#[derive(Default)]
struct Counter {
    steps: usize,
    loss_sum: f64,
    saves: usize,
}

impl Hooks<Var> for Counter {
    fn after_step(&mut self, _: &mut Var, ctx: &mut Ctx, loss: f64) -> sprig_train::error::Result<()> {
        self.steps += 1;
        self.loss_sum += loss;
        ctx.log(&serde_json::json!({"kind": "hook", "step": ctx.step, "seen": self.steps}))
    }
    fn evaluate(&mut self, w: &mut Var, _: &mut Ctx) -> sprig_train::error::Result<Option<f64>> {
        let v = w.as_tensor().to_vec1::<f32>()?;
        Ok(Some(-((v[0] - 2.0).abs() + (v[1] + 1.0).abs()) as f64))
    }
    fn save_state(&mut self, _: &mut Var, state: &mut TrainState) -> sprig_train::error::Result<()> {
        self.saves += 1;
        state.put("counter/steps", &self.steps)?;
        state.put_f64("counter/loss_sum", self.loss_sum);
        Ok(())
    }
    fn load_state(&mut self, _: &mut Var, state: &TrainState) -> sprig_train::error::Result<()> {
        self.steps = state.get("counter/steps")?;
        self.loss_sum = state.get_f64("counter/loss_sum")?;
        Ok(())
    }
}

/// Least squares for y = 2x - 1 on example i; fails at step `crash_at` (a killed process: nothing
/// after the last save survives).
fn step(crash_at: Option<usize>) -> impl FnMut(&mut Var, &[usize], &StepInfo) -> sprig_train::error::Result<StepLoss> {
    move |w: &mut Var, idx: &[usize], info: &StepInfo| {
        if Some(info.step) == crash_at {
            return Err(TrainError::Invalid("killed".into()));
        }
        let x: Vec<f32> = idx.iter().flat_map(|&i| [i as f32 * 0.1, 1.0]).collect();
        let y: Vec<f32> = idx.iter().map(|&i| 0.2 * i as f32 - 1.0).collect();
        let x = Tensor::from_vec(x, (idx.len(), 2), &Device::Cpu)?;
        let y = Tensor::from_vec(y, idx.len(), &Device::Cpu)?;
        let pred = x.matmul(&w.as_tensor().unsqueeze(1)?)?.squeeze(1)?;
        Ok(StepLoss { loss: (pred - y)?.sqr()?.mean_all()?, examples: idx.len() })
    }
}

struct Ended {
    w: Vec<u32>,
    out: FitOutcome,
    hook: Counter,
    opt_t: u64,
    log: Vec<serde_json::Value>,
}

/// 11 examples in batches of 3 (4 steps an epoch, the last batch short), 4 epochs, saving every
/// 3 steps and at each epoch end; killed at `crash_at` and resumed when given.
fn run(dir: &std::path::Path, crash_at: Option<usize>) -> Ended {
    let state_path = dir.join("state.safetensors");
    let log_path = dir.join("metrics.jsonl");
    let schedule = LinearWarmupDecay { base_lr: 0.05, warmup: 3, total: 16 };
    let fit_once = |crash: Option<usize>, from: Option<TrainState>, log: &mut MetricsLog| {
        let mut w = Var::from_tensor(&Tensor::new(&[0.3f32, -0.2], &Device::Cpu).unwrap()).unwrap();
        let params = vec![("w".to_string(), w.clone())];
        let mut opt = AdamW::new(params.clone(), AdamWConfig { lr: 0.05, weight_decay: 0.01, ..Default::default() }).unwrap();
        opt.set_mask("w", Some(&[true, true])).unwrap();
        let mut hook = Counter::default();
        let res = Fit::new(4, BatchOrder::Shuffled { n: 11, batch_size: 3, seed: 7 })
            .lr(Lr::WarmupDecay(schedule))
            .clip(Some(0.5))
            .eval_every(Some(5))
            .eval_each_epoch(true)
            .snapshot_at(Some(2))
            .metrics(log)
            .resumable(Resume { path: state_path.clone(), every: 3, from })
            .run(&mut w, &mut opt, params, step(crash), &mut hook);
        res.map(|out| Ended { w: bits(w.as_tensor()), out, opt_t: opt.steps(), hook, log: vec![] })
    };
    let mut log = MetricsLog::create(&log_path).unwrap();
    let mut ended = match fit_once(crash_at, None, &mut log) {
        Ok(e) => e,
        Err(e) => {
            assert!(e.to_string().contains("killed"), "{e}");
            drop(log);
            let from = TrainState::load(&state_path).unwrap();
            let mut log = MetricsLog::append(&log_path).unwrap();
            fit_once(None, Some(from), &mut log).unwrap()
        }
    };
    ended.log = std::fs::read_to_string(&log_path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("examples_per_second");
            v
        })
        .collect();
    ended
}

#[test]
fn killed_at_any_step_and_resumed_ends_as_the_uninterrupted_run() {
    let whole_dir = tempfile::tempdir().unwrap();
    let whole = run(whole_dir.path(), None);
    assert_eq!(whole.out.steps, 16);
    // Every 3 steps (3, 6, 9, 15) and at the ends of epochs 0-2 (steps 4, 8, 12): step 12 ends an
    // epoch and is saved once, not twice; the run's end is not saved.
    assert_eq!(whole.hook.saves, 7, "saves every 3 steps and at epoch ends");
    // Crashing at step 0 leaves no state: nothing to resume; every later step has one.
    for crash in 3..16 {
        let dir = tempfile::tempdir().unwrap();
        let r = run(dir.path(), Some(crash));
        assert_eq!(r.w, whole.w, "weights after a crash at step {crash}");
        assert_eq!(r.opt_t, whole.opt_t);
        assert_eq!((r.hook.steps, r.hook.loss_sum.to_bits()), (whole.hook.steps, whole.hook.loss_sum.to_bits()), "hook state, crash at {crash}");
        assert_eq!(r.out.best, whole.out.best, "crash at {crash}");
        assert_eq!((r.out.steps, r.out.epochs_run, r.out.examples), (whole.out.steps, whole.out.epochs_run, whole.out.examples));
        assert_eq!(r.out.epoch_loss.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), whole.out.epoch_loss.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
        assert_eq!(r.out.last_loss.to_bits(), whole.out.last_loss.to_bits());
        assert_eq!(bits(&r.out.snapshot.as_ref().unwrap()[0].1), bits(&whole.out.snapshot.as_ref().unwrap()[0].1));
        assert_eq!(r.log, whole.log, "metrics log after a crash at step {crash}");
    }
}

#[test]
fn a_state_of_another_run_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.safetensors");
    let mut s = TrainState::new();
    s.put("fit/total", &99usize).unwrap();
    s.save(&p).unwrap();
    let mut w = Var::from_tensor(&Tensor::new(&[0.3f32, -0.2], &Device::Cpu).unwrap()).unwrap();
    let params = vec![("w".to_string(), w.clone())];
    let mut opt = AdamW::new(params.clone(), AdamWConfig::default()).unwrap();
    let e = Fit::new(1, BatchOrder::Shuffled { n: 4, batch_size: 2, seed: 0 })
        .resumable(Resume { path: p.clone(), every: 0, from: Some(TrainState::load(&p).unwrap()) })
        .run(&mut w, &mut opt, params, step(None), &mut ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("99 steps") && e.contains("this run has 2"), "{e}");
}
