//! Real-data test of the lottery driver (Fashion-MNIST from `sprig_home()`; CI runs
//! `scripts/fetch-assets` first, so missing files are a failure, not a skip).
use candle_core::Device;
use sprig_data::{load_image_task, sprig_home, ImageDataset, ImageSplit};
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

#[test]
fn lottery_resumes_and_is_deterministic() {
    let data = small_fashion();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = LotteryConfig {
        arch: Arch::Lenet300,
        dataset: "fashion-mnist".into(),
        rounds: 2,
        rate: 0.5,
        output_rate: 0.25,
        rewind: Rewind::Step(10),
        seeds: vec![0],
        train: TrainConfig { epochs: 1, batch_size: 100, optim: OptimChoice::Adam { lr: 1.2e-3 }, data_seed: 0, snapshot_step: None },
        controls: true,
    };
    let rows = run_lottery(&cfg, &data, tmp.path(), &Device::Cpu).unwrap();
    assert_eq!(rows.len(), 3);
    // two rounds: hidden layers keep 0.5², the output layer 0.75²
    let want = ((784 * 300 + 300 * 100) as f64 * 0.25 + 1000.0 * 0.5625) / (784 * 300 + 300 * 100 + 1000) as f64;
    assert!((rows[2].remaining - want).abs() < 1e-4, "{} vs {want}", rows[2].remaining);
    assert!(rows[2].reinit_acc_mean.is_some() && rows[2].random_mask_acc_mean.is_some());
    assert!(tmp.path().join("lottery.svg").exists());
    assert!(std::fs::read_to_string(tmp.path().join("lottery.svg")).unwrap().contains("<svg"));
    // "kill" after round 1: remove the last round; the rerun recomputes it bit for bit, reusing round 1.
    let last = tmp.path().join("seed-0").join("round-02");
    let before = std::fs::read(last.join("masks.safetensors")).unwrap();
    std::fs::remove_dir_all(&last).unwrap();
    let rows2 = run_lottery(&cfg, &data, tmp.path(), &Device::Cpu).unwrap();
    assert_eq!(rows, rows2);
    assert_eq!(before, std::fs::read(last.join("masks.safetensors")).unwrap());
    // a different experiment in the same directory is refused
    let other = LotteryConfig { rate: 0.3, ..cfg };
    assert!(run_lottery(&other, &data, tmp.path(), &Device::Cpu).is_err());
}
