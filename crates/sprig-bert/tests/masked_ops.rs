//! A masked fine-tune (the inner loop of `sprig ticket` and `sprig transfer`) honours the recipe's
//! `ops`: stock and fused layers both train, keep pruned weights at exactly zero, and differ in
//! the last bits of the trained weights (they round differently).
mod common;
use sprig_bert::masked::{finetune_masked, Base, Start, TaskData};
use sprig_bert::{FinetuneConfig, Ops};
use sprig_prune::{Mask, MaskSet};
use std::collections::HashMap;

#[test]
fn masked_finetune_runs_the_configured_ops() {
    let base = Base::load(common::MINILM).expect("run scripts/fetch-assets");
    let cfg = FinetuneConfig { task: "rt-sentiment".into(), batch_size: 8, max_train: 16, max_dev: 8, max_test: 8, max_steps: 2, ..FinetuneConfig::default() };
    let data = TaskData::load(&cfg, &base, &sprig_data::sprig_home()).expect("run scripts/fetch-assets");
    // Every fifth weight of every encoder linear pruned.
    let mut masks = MaskSet::new();
    for (name, shape) in base.prunable_shapes().unwrap() {
        let mut m = Mask::ones(&shape);
        (0..m.len()).step_by(5).for_each(|i| m.set(i, false));
        masks.insert(name, m);
    }
    let none = HashMap::new();
    let run = |ops: Ops| {
        let cfg = FinetuneConfig { ops, ..cfg.clone() };
        finetune_masked(&base, &data, &cfg, 1, Start { tensors: &none, head: false }, Some(&masks), None).unwrap()
    };
    let (fused, stock) = (run(Ops::Fused), run(Ops::Stock));
    assert_eq!(fused.model.encoder.ops(), Ops::Fused);
    assert_eq!(stock.model.encoder.ops(), Ops::Stock, "the recipe's ops were ignored");
    assert_eq!((fused.metrics.steps, stock.metrics.steps), (2, 2));
    let (pf, ps) = (fused.model.named_params(), stock.model.named_params());
    masks.check_pruned_zero(&pf).unwrap();
    masks.check_pruned_zero(&ps).unwrap();
    let differing = pf
        .iter()
        .zip(&ps)
        .filter(|((_, a), (_, b))| {
            let (a, b) = (a.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap());
            a.iter().zip(&b).any(|(x, y)| x.to_bits() != y.to_bits())
        })
        .count();
    assert!(differing > 0, "stock and fused ops trained bit-identical weights: one path ran twice");
}
