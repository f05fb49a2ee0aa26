//! The training loop with hooks (`sprig_train::fit`): it reproduces `vision::train` bit for bit on
//! real Fashion-MNIST with a mask installed, keeps pruned weights at exactly zero, stops on a
//! non-finite loss with `TrainError::NonFinite`, and calls its hooks in the documented order.
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use sprig_data::{load_image_task, sprig_home, ImageSplit};
use sprig_prune::{criteria, prune, Allocation, Granularity, Selector};
use sprig_train::fit::{AfterStep, BatchOrder, Best, Ctx, Fit, FitOutcome, Hooks, Lr, StepInfo, StepLoss};
use sprig_train::sgd::{Sgd, SgdConfig};
use sprig_train::vision::{batch_tensor, train, Arch, OptimChoice, TrainConfig, VisionModel};
use sprig_train::{AdamW, AdamWConfig, LinearWarmupDecay, MetricsLog, Optimizer, TrainError};

type Masks = sprig_prune::MaskSet;

fn fashion(n: usize) -> (ImageSplit, usize, usize) {
    let d = load_image_task("fashion-mnist", &sprig_home(), 42).unwrap_or_else(|e| panic!("loading fashion-mnist (run scripts/fetch-assets): {e}"));
    let hw = d.height * d.width;
    (ImageSplit { images: d.train.images[..n * hw].to_vec(), labels: d.train.labels[..n].to_vec() }, d.height, d.width)
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
}

/// An 80%-sparse global magnitude mask on the weights of `model`.
fn magnitude_masks(model: &VisionModel) -> Masks {
    let prunable: Vec<(String, Var)> = Selector::weights().select(&model.params);
    let shapes: Vec<(String, Vec<usize>)> = prunable.iter().map(|(n, v)| (n.clone(), v.dims().to_vec())).collect();
    prune(&criteria::magnitude(&prunable).unwrap(), &shapes, 0.8, Granularity::Unstructured, &Allocation::global(), None).unwrap()
}

/// Errors unless every pruned weight of `model` is exactly zero.
fn check_pruned_zero(model: &VisionModel, masks: &Masks) -> sprig_train::error::Result<()> {
    for (name, mask) in masks.iter() {
        let keep = mask.to_bools();
        let w = model.params.iter().find(|(n, _)| n == name).unwrap().1.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        if let Some(i) = (0..w.len()).find(|&i| !keep[i] && w[i] != 0.0) {
            return Err(TrainError::Invalid(format!("{name}[{i}] = {} is pruned but non-zero", w[i])));
        }
    }
    Ok(())
}

/// `vision::train` expressed with the loop: same optimizer, masks, batch order and snapshot.
fn fit_vision(
    model: &mut VisionModel,
    split: &ImageSplit,
    cfg: &TrainConfig,
    masks: &Masks,
    metrics: Option<&mut MetricsLog>,
    hooks: &mut impl Hooks<VisionModel>,
) -> sprig_train::error::Result<FitOutcome> {
    let params = model.params.clone();
    let mut opt: Box<dyn Optimizer> = match cfg.optim {
        OptimChoice::Adam { lr } => Box::new(AdamW::new(params.clone(), AdamWConfig { lr, weight_decay: 0.0, ..Default::default() })?),
        OptimChoice::Sgd { lr, momentum } => Box::new(Sgd::new(params.clone(), SgdConfig { lr, momentum, ..Default::default() })?),
    };
    opt.set_masks(masks)?;
    let (hw, dev) = (model.height * model.width, Device::Cpu);
    let mut fit = Fit::new(cfg.epochs, BatchOrder::Shuffled { n: split.len(), batch_size: cfg.batch_size, seed: cfg.data_seed })
        .snapshot_at(cfg.snapshot_step);
    if let Some(m) = metrics {
        fit = fit.metrics(m);
    }
    fit.run(
        model,
        opt.as_mut(),
        params,
        |m: &mut VisionModel, idx: &[usize], _: &StepInfo| {
            let (x, y) = batch_tensor(split, idx, hw, &dev).map_err(TrainError::callback)?;
            Ok(StepLoss { loss: candle_nn::loss::cross_entropy(&m.forward(&x)?, &y)?, examples: idx.len() })
        },
        hooks,
    )
}

#[test]
fn reproduces_vision_train_bit_for_bit_with_a_mask() {
    let (split, h, w) = fashion(1000);
    for optim in [OptimChoice::Adam { lr: 1.2e-3 }, OptimChoice::Sgd { lr: 0.05, momentum: 0.9 }] {
        let cfg = TrainConfig { epochs: 2, batch_size: 100, optim: optim.clone(), data_seed: 3, snapshot_step: Some(7) };
        let old = VisionModel::new(Arch::Lenet300, h, w, 10, 1, &Device::Cpu).unwrap();
        let masks = magnitude_masks(&old);
        let mut old_steps = Vec::new();
        let want = train(&old, &split, &cfg, &masks, &mut |s, _| {
            old_steps.push(s);
            Ok(())
        })
        .unwrap();

        let mut new = VisionModel::new(Arch::Lenet300, h, w, 10, 1, &Device::Cpu).unwrap();
        let mut new_steps = Vec::new();
        let mut hook = AfterStep(|m: &mut VisionModel, ctx: &mut Ctx| {
            new_steps.push(ctx.step);
            check_pruned_zero(m, &masks)
        });
        let got = fit_vision(&mut new, &split, &cfg, &masks, None, &mut hook).unwrap();

        assert_eq!(got.steps, 20);
        assert_eq!(got.steps, want.steps, "{optim:?}");
        assert_eq!(old_steps, new_steps, "{optim:?}: after_step saw other step numbers");
        assert_eq!(got.last_loss.to_bits(), want.final_train_loss.to_bits(), "{optim:?}: final loss");
        assert_eq!((got.epochs_run, got.epoch_loss.len()), (2, 2));
        for ((n, a), (_, b)) in old.params.iter().zip(&new.params) {
            assert_eq!(bits(a.as_tensor()), bits(b.as_tensor()), "{optim:?}: {n} differs after training");
        }
        let (s_old, s_new) = (want.snapshot.unwrap(), got.snapshot.unwrap());
        assert_eq!(s_old.len(), s_new.len());
        for (a, (n, b)) in s_old.iter().zip(&s_new) {
            assert_eq!(bits(a), bits(b), "{optim:?}: snapshot of {n} differs");
        }
        // The snapshot was taken mid-training, not at the end.
        assert_ne!(bits(&s_new[0].1), bits(new.params[0].1.as_tensor()));
        check_pruned_zero(&new, &masks).unwrap();
        assert!(masks.iter().all(|(_, m)| m.sparsity() > 0.0));
    }
}

#[test]
fn a_non_finite_loss_stops_with_non_finite_naming_the_step() {
    let (split, h, w) = fashion(500);
    let dir = tempfile::tempdir().unwrap();

    // A learning rate of 1e30 sends the weights to ~1e30 and the logits to inf at once.
    let cfg = TrainConfig { epochs: 1, batch_size: 50, optim: OptimChoice::Adam { lr: 1e30 }, data_seed: 0, snapshot_step: None };
    let mut model = VisionModel::new(Arch::Lenet300, h, w, 10, 0, &Device::Cpu).unwrap();
    let masks = magnitude_masks(&model);
    let err = fit_vision(&mut model, &split, &cfg, &masks, None, &mut ()).unwrap_err();
    match &err {
        TrainError::NonFinite { what: "loss", value, step } => assert!(!value.is_finite() && *step >= 1, "{err}"),
        other => panic!("expected NonFinite, got {other}"),
    }
    assert!(err.to_string().contains("at step"), "{err}");

    // A hook that poisons one output weight after the third step (past the last ReLU, which would
    // map a NaN to 0): the fourth loss (step index 3) is NaN.
    let cfg = TrainConfig { optim: OptimChoice::Adam { lr: 1e-3 }, ..cfg };
    let mut model = VisionModel::new(Arch::Lenet300, h, w, 10, 0, &Device::Cpu).unwrap();
    let mut log = MetricsLog::create(&dir.path().join("metrics.jsonl")).unwrap();
    let mut poison = AfterStep(|_: &mut VisionModel, ctx: &mut Ctx| {
        if ctx.step == 3 {
            let (_, v) = ctx.params.iter().find(|(n, _)| n == "fc3.weight").unwrap();
            let mut x = v.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            x[17] = f32::NAN;
            v.set(&Tensor::from_vec(x, v.shape(), v.device())?)?;
        }
        Ok(())
    });
    let err = fit_vision(&mut model, &split, &cfg, &masks, Some(&mut log), &mut poison).unwrap_err();
    assert!(matches!(err, TrainError::NonFinite { what: "loss", step: 3, .. }), "{err}");
    drop(log);
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4, "three train records and the error");
    assert!(lines[..3].iter().all(|r| r["kind"] == "train" && r["loss"].as_f64().unwrap().is_finite()));
    assert_eq!((lines[3]["kind"].as_str(), lines[3]["step"].as_u64()), (Some("error"), Some(3)));

    // Today's loop trains on through the NaN and only fails at the end; it must not panic either.
    let model = VisionModel::new(Arch::Lenet300, h, w, 10, 0, &Device::Cpu).unwrap();
    let cfg = TrainConfig { optim: OptimChoice::Adam { lr: 1e30 }, ..cfg };
    assert!(train(&model, &split, &cfg, &masks, &mut |_, _| Ok(())).is_err());
}

/// A least-squares step for `y = w·(i, 1)` on example `i`, for hook-order tests.
fn toy_step() -> impl FnMut(&mut Var, &[usize], &StepInfo) -> sprig_train::error::Result<StepLoss> {
    |w: &mut Var, idx: &[usize], _: &StepInfo| {
        let x: Vec<f32> = idx.iter().flat_map(|&i| [i as f32, 1.0]).collect();
        let y: Vec<f32> = idx.iter().map(|&i| 2.0 * i as f32 - 1.0).collect();
        let x = Tensor::from_vec(x, (idx.len(), 2), &Device::Cpu)?;
        let y = Tensor::from_vec(y, idx.len(), &Device::Cpu)?;
        let pred = x.matmul(&w.as_tensor().unsqueeze(1)?)?.squeeze(1)?;
        Ok(StepLoss { loss: (pred - y)?.sqr()?.mean_all()?, examples: idx.len() })
    }
}

/// Records every hook call; `evaluate` returns the scripted scores in turn.
struct Recorder {
    events: Vec<String>,
    scores: Vec<f64>,
    lrs: Vec<(usize, f64)>,
    snap_at_4: Option<Vec<u32>>,
    stop_at: Option<usize>,
}

impl Hooks<Var> for Recorder {
    fn before_step(&mut self, _: &mut Var, ctx: &mut Ctx, grads: &mut GradStore) -> sprig_train::error::Result<()> {
        let g = grads.get(ctx.params[0].1.as_tensor()).expect("a gradient for w");
        let norm = g.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
        assert!(norm <= 1.0 + 1e-5, "clipped to 1, got {norm}");
        self.events.push(format!("before {} (batch of {})", ctx.step, ctx.batch.len()));
        Ok(())
    }
    fn after_step(&mut self, w: &mut Var, ctx: &mut Ctx, loss: f64) -> sprig_train::error::Result<()> {
        assert!(loss.is_finite());
        self.lrs.push((ctx.step, ctx.opt.learning_rate()));
        if ctx.step == 4 {
            self.snap_at_4 = Some(bits(w.as_tensor()));
        }
        ctx.log(&serde_json::json!({"kind": "hook", "step": ctx.step}))?;
        if self.stop_at == Some(ctx.step) {
            ctx.stop();
        }
        self.events.push(format!("after {}", ctx.step));
        Ok(())
    }
    fn evaluate(&mut self, _: &mut Var, ctx: &mut Ctx) -> sprig_train::error::Result<Option<f64>> {
        assert!(ctx.batch.is_empty());
        self.events.push(format!("eval {}", ctx.step));
        Ok(Some(self.scores.remove(0)))
    }
    fn checkpoint(&mut self, _: &mut Var, ctx: &mut Ctx, score: f64) -> sprig_train::error::Result<()> {
        self.events.push(format!("checkpoint {} {score}", ctx.step));
        Ok(())
    }
    fn epoch_end(&mut self, _: &mut Var, ctx: &mut Ctx, mean_loss: f64) -> sprig_train::error::Result<()> {
        assert!(mean_loss.is_finite() && mean_loss > 0.0);
        self.events.push(format!("epoch_end {} {}", ctx.epoch, ctx.step));
        Ok(())
    }
}

fn recorder(scores: &[f64], stop_at: Option<usize>) -> Recorder {
    Recorder { events: vec![], scores: scores.to_vec(), lrs: vec![], snap_at_4: None, stop_at }
}

#[test]
fn hooks_fire_in_the_documented_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = MetricsLog::create(&dir.path().join("metrics.jsonl")).unwrap();
    let mut w = Var::from_tensor(&Tensor::new(&[0.3f32, -0.2], &Device::Cpu).unwrap()).unwrap();
    let params = vec![("w".to_string(), w.clone())];
    let mut opt = AdamW::new(params.clone(), AdamWConfig { lr: 0.1, weight_decay: 0.0, ..Default::default() }).unwrap();
    let schedule = LinearWarmupDecay { base_lr: 0.1, warmup: 2, total: 7 };
    // 5 examples in batches of 2: 3 steps per epoch; 3 epochs capped at 7 steps.
    let fit = Fit::new(3, BatchOrder::Shuffled { n: 5, batch_size: 2, seed: 0 })
        .max_steps(Some(7))
        .lr(Lr::WarmupDecay(schedule))
        .clip(Some(1.0))
        .eval_every(Some(2))
        .eval_each_epoch(true)
        .snapshot_at(Some(4))
        .metrics(&mut log);
    assert_eq!(fit.total_steps().unwrap(), 7);
    let mut rec = recorder(&[0.5, 0.4, 0.6, 0.6, 0.7], None);
    let out = fit.run(&mut w, &mut opt, params, toy_step(), &mut rec).unwrap();
    #[rustfmt::skip]
    let want = [
        "before 0 (batch of 2)", "after 1", "before 1 (batch of 2)", "after 2", "eval 2", "checkpoint 2 0.5",
        "before 2 (batch of 1)", "after 3", "eval 3", "epoch_end 0 3",
        "before 3 (batch of 2)", "after 4", "eval 4", "checkpoint 4 0.6", "before 4 (batch of 2)", "after 5",
        "before 5 (batch of 1)", "after 6", "eval 6", "epoch_end 1 6",
        "before 6 (batch of 2)", "after 7", "eval 7", "checkpoint 7 0.7", "epoch_end 2 7",
    ];
    assert_eq!(rec.events, want);
    assert_eq!((out.steps, out.epochs_run, out.epoch_loss.len(), out.examples), (7, 3, 3, 12));
    assert_eq!(out.best, Some(Best { score: 0.7, epoch: 2, step: 7 }));
    // The rate of step s (1-based) is the schedule's at s - 1 finished steps.
    assert!(rec.lrs.iter().all(|&(s, lr)| lr == schedule.lr(s - 1)), "{:?}", rec.lrs);
    let snap = out.snapshot.unwrap();
    assert_eq!(Some(bits(&snap[0].1)), rec.snap_at_4);
    drop(log);
    let kinds: Vec<String> = std::fs::read_to_string(dir.path().join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, [["hook", "train"]; 7].concat(), "hook records come before the step's train record");
}

#[test]
fn stop_drop_last_and_bad_settings() {
    let mut w = Var::from_tensor(&Tensor::new(&[0.3f32, -0.2], &Device::Cpu).unwrap()).unwrap();
    let params = vec![("w".to_string(), w.clone())];
    let mut opt = Sgd::new(params.clone(), SgdConfig { lr: 0.01, momentum: 0.0, ..Default::default() }).unwrap();
    // drop_last: the ragged batch of 1 is skipped and not counted; a stop after step 3 still
    // finishes the epoch with its evaluation.
    let fit = Fit::new(4, BatchOrder::Shuffled { n: 5, batch_size: 2, seed: 1 }).drop_last(true).eval_each_epoch(true).clip(Some(1.0));
    assert_eq!(fit.total_steps().unwrap(), 8);
    let mut rec = recorder(&[0.1, 0.2], Some(3));
    let out = fit.run(&mut w, &mut opt, params.clone(), toy_step(), &mut rec).unwrap();
    #[rustfmt::skip]
    let want = ["before 0 (batch of 2)", "after 1", "before 1 (batch of 2)", "after 2", "eval 2", "checkpoint 2 0.1",
                "epoch_end 0 2", "before 2 (batch of 2)", "after 3", "eval 3", "checkpoint 3 0.2", "epoch_end 1 3"];
    assert_eq!(rec.events, want);
    assert_eq!((out.steps, out.epochs_run), (3, 2));

    let order = || BatchOrder::Shuffled { n: 5, batch_size: 2, seed: 1 };
    let bad = [
        Fit::new(0, order()),
        Fit::new(1, BatchOrder::Shuffled { n: 0, batch_size: 2, seed: 1 }),
        Fit::new(1, BatchOrder::Shuffled { n: 5, batch_size: 0, seed: 1 }),
        Fit::new(1, BatchOrder::Shuffled { n: 1, batch_size: 2, seed: 1 }).drop_last(true),
        Fit::new(1, BatchOrder::Custom { steps_per_epoch: 2, order: Box::new(|_| vec![vec![0, 1], vec![2]]) }).drop_last(true),
        Fit::new(1, order()).max_steps(Some(0)),
        Fit::new(1, order()).snapshot_at(Some(4)),
    ];
    for fit in bad {
        let err = fit.run(&mut w, &mut opt, params.clone(), toy_step(), &mut ()).unwrap_err();
        assert!(matches!(err, TrainError::Invalid(_)), "{err}");
    }
    // An error from a hook comes back unchanged, as the first one stops the loop.
    let mut failing = AfterStep(|_: &mut Var, ctx: &mut Ctx| match ctx.step {
        2 => Err(TrainError::callback(std::io::Error::other("disk full"))),
        s => {
            assert!(s < 2, "the loop went on after an error");
            Ok(())
        }
    });
    let err = Fit::new(1, order()).run(&mut w, &mut opt, params, toy_step(), &mut failing).unwrap_err();
    assert!(matches!(err, TrainError::Callback(_)) && err.to_string() == "disk full", "{err}");
}
