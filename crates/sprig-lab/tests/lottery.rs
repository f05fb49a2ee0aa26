//! Real-data test of the lottery driver (Fashion-MNIST from `sprig_home()`; CI runs
//! `scripts/fetch-assets` first, so missing files are a failure, not a skip).
use std::path::Path;

use candle_core::Device;
use sprig_data::{load_image_task, sprig_home, ImageDataset, ImageSplit};
use sprig_lab::imp::{cell_dir, control_file, Control};
use sprig_lab::lottery::{run_lottery, LotteryConfig};
use sprig_prune::Rewind;
use sprig_train::vision::{Arch, OptimChoice, TrainConfig};

fn take(s: &ImageSplit, n: usize, hw: usize) -> ImageSplit {
    let n = n.min(s.len());
    ImageSplit { images: s.images[..n * hw].to_vec(), labels: s.labels[..n].to_vec() }
}

fn small_fashion() -> ImageDataset {
    let mut d = load_image_task("fashion-mnist", &sprig_home(), 42).unwrap_or_else(|e| panic!("loading fashion-mnist: {e}"));
    let hw = d.height * d.width;
    d.train = take(&d.train, 3000, hw);
    d.dev = take(&d.dev, 500, hw);
    d.test = take(&d.test, 1000, hw);
    d
}

fn config() -> LotteryConfig {
    LotteryConfig {
        arch: Arch::Lenet300,
        dataset: "fashion-mnist".into(),
        rounds: 2,
        rate: 0.5,
        output_rate: 0.25,
        rewind: Rewind::Step(10),
        seeds: vec![0],
        train: TrainConfig { epochs: 1, batch_size: 100, optim: OptimChoice::Adam { lr: 1.2e-3 }, data_seed: 0, snapshot_step: None },
        controls: vec![Control::RandomMask, Control::Reinit],
        control_rounds: vec![],
    }
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// The weights and masks hashes of every round's ticket.
fn hashes(run: &Path) -> Vec<(serde_json::Value, serde_json::Value)> {
    (0..=2)
        .map(|r| {
            let m = json(&cell_dir(run, r, 0).join("sprig.json"));
            (m["weights_sha256"].clone(), m["masks_sha256"].clone())
        })
        .collect()
}

/// A control's file without its wall-clock field.
fn control(run: &Path, r: usize, c: Control) -> serde_json::Value {
    let mut v = json(&control_file(run, r, 0, c));
    v["metrics"].as_object_mut().unwrap().remove("seconds");
    v
}

#[test]
fn lottery_resumes_after_an_interruption_and_is_deterministic() {
    let data = small_fashion();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (a.path(), b.path());
    let cfg = config();
    let rows = run_lottery(&cfg, &data, a, &Device::Cpu).unwrap();
    assert_eq!(rows.len(), 3);
    // two rounds: hidden layers keep 0.5², the output layer 0.75²
    let want = ((784 * 300 + 300 * 100) as f64 * 0.25 + 1000.0 * 0.5625) / (784 * 300 + 300 * 100 + 1000) as f64;
    assert!((rows[2].remaining - want).abs() < 1e-4, "{} vs {want}", rows[2].remaining);
    assert!(rows[2].reinit_acc_mean.is_some() && rows[2].random_mask_acc_mean.is_some());
    assert!(rows[0].reinit_acc_mean.is_none(), "no control runs at round 0");
    assert!(rows[2].test_acc_mean > 0.5, "{rows:?}"); // chance is 0.1
    assert!(std::fs::read_to_string(a.join("lottery.svg")).unwrap().contains("<svg"));
    let s = json(&a.join("summary.json"));
    assert_eq!(s["complete"], true);
    assert_eq!(s["rounds"].as_array().unwrap().len(), 3);
    assert!(a.join("rewind-seed-0.safetensors").exists());

    // An interrupted run: it stopped after round 1 (a run of one round), then was killed while
    // writing (temporary leftovers) before round 1's random-mask control was on disk.
    run_lottery(&LotteryConfig { rounds: 1, ..cfg.clone() }, &data, b, &Device::Cpu).unwrap();
    std::fs::remove_file(control_file(b, 1, 0, Control::RandomMask)).unwrap();
    std::fs::write(cell_dir(b, 1, 0).join(".tmpXyZ12"), "half a control").unwrap();
    std::fs::create_dir_all(b.join("round-02").join(".sprig-ckpt-Ab12")).unwrap();
    std::fs::write(b.join("round-02").join(".sprig-ckpt-Ab12").join("model.safetensors"), "half a checkpoint").unwrap();
    let resumed = run_lottery(&cfg, &data, b, &Device::Cpu).unwrap();
    assert_eq!(resumed, rows, "the resumed run's summary differs from the uninterrupted one");
    assert_eq!(hashes(b), hashes(a), "ticket weights or masks differ");
    for r in 1..=2 {
        for c in [Control::RandomMask, Control::Reinit] {
            assert_eq!(control(b, r, c), control(a, r, c), "round {r} control {c}");
        }
    }
    assert!(!cell_dir(b, 1, 0).join(".tmpXyZ12").exists() && !b.join("round-02").join(".sprig-ckpt-Ab12").exists(), "leftovers not removed");

    // A different experiment in the same directory is refused, naming the field.
    let e = run_lottery(&LotteryConfig { rate: 0.3, ..cfg.clone() }, &data, a, &Device::Cpu).unwrap_err();
    assert!(format!("{e:#}").contains("`rate` is 0.5 there, 0.3 here"), "{e:#}");

    // A refused start writes nothing, so the corrected one runs in the same directory.
    let c = tempfile::tempdir().unwrap();
    let out = c.path().join("run");
    let bad = LotteryConfig { rounds: 0, train: TrainConfig { batch_size: 0, ..cfg.train.clone() }, ..cfg.clone() };
    let e = run_lottery(&bad, &data, &out, &Device::Cpu).unwrap_err();
    assert!(format!("{e:#}").contains("--batch-size"), "{e:#}");
    assert!(!out.exists(), "a refused start wrote {}", out.display());
    // A negative or non-finite learning rate is refused the same way (it trained "fine" once).
    for lr in [-1e-3, 0.0, f64::NAN] {
        let bad = LotteryConfig { rounds: 0, train: TrainConfig { optim: OptimChoice::Adam { lr }, ..cfg.train.clone() }, ..cfg.clone() };
        let e = run_lottery(&bad, &data, &out, &Device::Cpu).unwrap_err();
        assert!(format!("{e:#}").contains("--lr"), "{e:#}");
        assert!(!out.exists(), "a refused start wrote {}", out.display());
    }
    let good = LotteryConfig { rounds: 0, ..cfg };
    assert_eq!(run_lottery(&good, &data, &out, &Device::Cpu).unwrap()[0].test_acc_mean, rows[0].test_acc_mean);
}
