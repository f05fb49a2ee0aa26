//! From-scratch MoE classifiers on real trec6 questions: they learn, every routed token-expert
//! pair is counted, capacity drops what it must and dropless drops nothing.
use sprig_lab::moe_scratch::{run, Ffn, ScratchConfig};
use sprig_moe::{Capacity, Routing};

fn cfg(routing: Routing, capacity: Capacity) -> ScratchConfig {
    ScratchConfig {
        task: "trec6".into(),
        ffn: Ffn::Moe { experts: 4, expert_ffn: 32, routing, capacity, balance_weight: 0.01 },
        hidden: 32,
        epochs: 4,
        batch_size: 32,
        lr: 2e-3,
        seed: 7,
    }
}

#[test]
fn moe_classifier_learns_trec6_and_accounts_for_every_token() {
    let mut epochs = 0;
    let dir = tempfile::tempdir().unwrap();
    let mut log = sprig_train::MetricsLog::create(&dir.path().join("metrics.jsonl")).unwrap();
    let top2 = run(&cfg(Routing::TopK { k: 2 }, Capacity::Dropless), &mut |_, _| epochs += 1, Some(&mut log)).expect("run scripts/fetch-assets");
    assert_eq!(epochs, 4);
    assert_eq!(top2.dev_curve.len(), 4);
    // Every step logged with its MoE statistics: 4 epochs of ceil(train / 32) steps.
    drop(log);
    let steps: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(steps.len() > 4 * 100, "{} step records", steps.len());
    let last = steps.last().unwrap();
    assert_eq!(last["tokens_per_expert"].as_array().unwrap().len(), 4);
    assert!(last["load_cv"].as_f64().unwrap() >= 0.0 && last["router_entropy"].as_f64().unwrap() > 0.0, "{last}");
    eprintln!("trec6 top-2 of 4: test {:.4}, load {:?} (CV {:.3})", top2.test_accuracy, top2.test_load, top2.test_load_cv);
    // Six classes; the largest holds about a quarter of the questions.
    assert!(top2.test_accuracy > 0.5, "{}", top2.test_accuracy);
    assert_eq!(top2.test_dropped_fraction, 0.0);
    // Dropless top-2: every test token went to exactly two experts.
    let tokens: usize = top2.test_load.iter().sum();
    assert_eq!(tokens % 2, 0);
    // Capacity factor 1.0 with top-1: an expert past its share drops tokens (counted, not lost).
    let capped = run(&cfg(Routing::TopK { k: 1 }, Capacity::Factor(1.0)), &mut |_, _| {}, None).unwrap();
    assert!(capped.test_dropped_fraction > 0.0 && capped.test_dropped_fraction < 0.5, "{}", capped.test_dropped_fraction);
    let kept: usize = capped.test_load.iter().sum();
    assert!(((tokens / 2) as f64 * (1.0 - capped.test_dropped_fraction) - kept as f64).abs() < 1.0, "{kept} kept of {} at {}", tokens / 2, capped.test_dropped_fraction);
    // A dense FFN of the same width as two experts: one expert, all tokens.
    let dense = run(&ScratchConfig { ffn: Ffn::Dense { width: 64 }, ..cfg(Routing::Hash, Capacity::Dropless) }, &mut |_, _| {}, None).unwrap();
    assert_eq!(dense.test_load, vec![tokens / 2]);
    assert!(dense.test_accuracy > 0.5);
    // Same seed, same run.
    let again = run(&cfg(Routing::TopK { k: 2 }, Capacity::Dropless), &mut |_, _| {}, None).unwrap();
    assert_eq!((again.test_accuracy, again.test_load), (top2.test_accuracy, top2.test_load));
}
