//! The blessings report on real data: MiniLM-L6 with an untrained head, 150 rt-sentiment test
//! texts against trec6 as OOD. What must hold whatever the model: every metric in range, the
//! reliability bins account for every example, FGSM on the embeddings lowers the accuracy, and
//! checkpoints of another task are refused.
use candle_core::Device;
use sprig_bert::{BertClassifier, Checkpoint, Pooling};
use sprig_lab::blessings::{run, table, BlessingsConfig};
use std::collections::HashMap;

fn classifier(dir: &std::path::Path, task: &str, seed: u64) {
    let ckpt = Checkpoint::load("sentence-transformers/all-MiniLM-L6-v2", &Device::Cpu).expect("run scripts/fetch-assets");
    let model = BertClassifier::new(ckpt.encoder(seed, &Device::Cpu).unwrap(), 2, Pooling::Mean, None, seed).unwrap();
    let meta = HashMap::from([("task".to_string(), task.to_string()), ("seed".to_string(), "42".to_string())]);
    let labels = ["negative".to_string(), "positive".to_string()];
    sprig_bert::save_classifier(&model, &labels, ckpt.files.tokenizer().unwrap(), dir, meta).unwrap();
}

#[test]
fn blessings_of_a_real_model_are_in_range_and_fgsm_hurts() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("head-s1"), tmp.path().join("head-s2"));
    classifier(&a, "rt-sentiment", 1);
    classifier(&b, "rt-sentiment", 2);
    let cfg = BlessingsConfig {
        task: "rt-sentiment".into(),
        models: vec![a.clone(), b],
        ood: vec!["trec6".into()],
        token_dropout: 0.2,
        fgsm_eps: 1.0,
        gaussian_noise: 0.0,
        pixel_dropout: 0.0,
        seed: 0,
        batch_size: 64,
        max_seq_len: 64,
        max_examples: 150,
    };
    let rows = run(&cfg, &sprig_data::sprig_home(), |_| {}).expect("run scripts/fetch-assets");
    assert_eq!(rows.len(), 2);
    for m in &rows {
        assert_eq!(m.n, 150);
        assert_eq!(m.reliability.iter().map(|b| b.count).sum::<usize>(), 150);
        assert!((0.0..=1.0).contains(&m.accuracy) && (0.0..=1.0).contains(&m.ece) && m.nll > 0.0);
        let auroc = m.ood_auroc["trec6"];
        assert!((0.0..=1.0).contains(&auroc), "{auroc}");
        let fgsm = m.corrupted_accuracy["FGSM on embeddings, eps 1"];
        assert!(fgsm < m.accuracy, "FGSM did not lower the accuracy: {fgsm} vs {}", m.accuracy);
        assert!(m.sparsity == 0.0, "a dense encoder");
    }
    assert_eq!(rows[0].group, "head");
    let t = table(&rows);
    assert!(t.contains("| head (2) |"), "{t}");
    // A checkpoint of another task is refused, naming it.
    let c = tmp.path().join("trec-model");
    classifier(&c, "trec6", 3);
    let e = run(&BlessingsConfig { models: vec![a, c], ..cfg }, &sprig_data::sprig_home(), |_| {}).unwrap_err().to_string();
    assert!(e.contains("trec-model") && e.contains("trec6"), "{e}");
}
