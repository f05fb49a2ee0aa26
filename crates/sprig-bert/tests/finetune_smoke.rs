//! A short fine-tune on a small real subset of rt-sentiment: the loss falls, the run directory is
//! complete, and the same seed gives the same run bit for bit.
mod common;
use sprig_bert::{Checkpoint, FinetuneConfig};

fn losses(dir: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn loss_falls_on_real_sentences() {
    let data = sprig_data::load_text_task("rt-sentiment", &sprig_data::sprig_home(), 42).expect("run scripts/fetch-assets");
    let out = tempfile::tempdir().unwrap();
    let cfg = FinetuneConfig { epochs: 3, batch_size: 16, lr: 1e-4, max_train: 256, max_dev: 96, max_test: 128, ..FinetuneConfig::default() };
    let s = sprig_bert::finetune(&cfg, &data, out.path()).unwrap();
    assert_eq!(s.steps, 48);
    let l = losses(out.path());
    assert_eq!(l.len(), 48);
    let first: f64 = l[..8].iter().sum::<f64>() / 8.0;
    let last: f64 = l[l.len() - 8..].iter().sum::<f64>() / 8.0;
    assert!(last < first - 0.1, "loss did not fall: first {first:.3}, last {last:.3}");
    // 256 examples are enough to beat the majority class clearly.
    assert!(s.test_accuracy > 0.6, "test accuracy {}", s.test_accuracy);
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("summary.json")).unwrap()).unwrap();
    for key in ["task", "model", "seed", "steps", "train_seconds", "dev_accuracy", "test_accuracy", "test_macro_f1", "test_ece"] {
        assert!(summary.get(key).is_some(), "summary.json lacks {key}");
    }
    let ckpt = Checkpoint::load(out.path().to_str().unwrap(), &candle_core::Device::Cpu).unwrap();
    assert_eq!(ckpt.config.labels().unwrap(), data.classes);
}

#[test]
fn same_seed_same_run() {
    let data = sprig_data::load_text_task("rt-sentiment", &sprig_data::sprig_home(), 3).expect("run scripts/fetch-assets");
    let cfg = FinetuneConfig { seed: 3, batch_size: 8, max_train: 64, max_dev: 16, max_test: 16, max_steps: 3, ..FinetuneConfig::default() };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    sprig_bert::finetune(&cfg, &data, a.path()).unwrap();
    sprig_bert::finetune(&cfg, &data, b.path()).unwrap();
    let (la, lb) = (losses(a.path()), losses(b.path()));
    assert_eq!(la.len(), 3);
    assert_eq!(la, lb);
    // Same weights bit for bit (the files' metadata order may differ, so compare tensors).
    let dev = candle_core::Device::Cpu;
    let ta = Checkpoint::load(a.path().to_str().unwrap(), &dev).unwrap().tensors;
    let tb = Checkpoint::load(b.path().to_str().unwrap(), &dev).unwrap().tensors;
    assert_eq!(ta.len(), tb.len());
    for (name, t) in &ta {
        let (x, y) = (t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), tb[name].flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "{name} differs");
    }
}
