//! Wanda (Sun et al. 2024) on the real MiniLM: the calibration pass sees the input of every
//! encoder linear (padding excluded) while computing the encoder's own function, and `prune` with
//! `wanda` reaches the sparsity in every matrix with a mask that is not magnitude's.
mod common;
use sprig_bert::masked::{Base, TaskData};
use sprig_bert::model::{is_encoder_linear_weight, BertEncoder, Init};
use sprig_bert::prune::{prune, PruneConfig, PruneMethod};
use sprig_bert::FinetuneConfig;
use sprig_train::MetricsLog;
use std::collections::BTreeMap;

fn cfg() -> FinetuneConfig {
    FinetuneConfig { task: "rt-sentiment".into(), batch_size: 8, max_train: 24, max_dev: 8, max_test: 8, max_steps: 1, ..FinetuneConfig::default() }
}

#[test]
fn calibration_pass_sees_every_linear_input_without_padding() {
    let base = Base::load(common::MINILM).expect("run scripts/fetch-assets");
    let data = TaskData::load(&cfg(), &base, &sprig_data::sprig_home()).expect("run scripts/fetch-assets");
    let dev = candle_core::Device::Cpu;
    let enc = BertEncoder::new(&base.config, Init::Pretrained { tensors: &base.tensors, origin: base.origin.clone() }, 0, &dev).unwrap();
    // Sentences of different lengths, so the batch is padded.
    let idx: Vec<usize> = (0..6).collect();
    let (ids, types, mask) = sprig_bert::finetune::batch_tensors(&data.train, &idx, data.pad_id, &dev).unwrap();
    let keep: Vec<u32> = mask.flatten_all().unwrap().to_vec1().unwrap();
    assert!(keep.contains(&0), "the batch has padding");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let hidden = enc
        .observe_linear_inputs(&ids, &types, &mask, &mut |name, x| {
            *seen.entry(name.to_string()).or_default() += 1;
            let (_, inp) = enc.named_params().iter().find(|(n, _)| n == name).map(|(_, v)| v.dims2().unwrap()).unwrap();
            assert_eq!(x.dims()[2], inp, "{name}: input width");
            let rows: Vec<Vec<f32>> = x.flatten_to(1).unwrap().to_vec2().unwrap();
            for (r, k) in rows.iter().zip(&keep) {
                if *k == 0 {
                    assert!(r.iter().all(|v| *v == 0.0), "{name}: a padding position has input");
                } else {
                    assert!(r.iter().any(|v| *v != 0.0), "{name}: a token has no input");
                }
            }
            Ok(())
        })
        .unwrap();
    let want: Vec<String> = enc.named_params().iter().map(|(n, _)| n.clone()).filter(|n| is_encoder_linear_weight(n)).collect();
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), { let mut w = want.clone(); w.sort(); w });
    assert!(seen.values().all(|&c| c == 1));
    // It is the encoder's function: the same hidden states as inference (at real tokens).
    let inf = enc.forward_inference(&ids, &types, &mask).unwrap();
    let (a, b): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (hidden.flatten_to(1).unwrap().to_vec2().unwrap(), inf.flatten_to(1).unwrap().to_vec2().unwrap());
    let mut worst = 0f32;
    for ((x, y), k) in a.iter().zip(&b).zip(&keep) {
        if *k == 1 {
            worst = x.iter().zip(y).fold(worst, |m, (p, q)| m.max((p - q).abs()));
        }
    }
    assert!(worst < 1e-4, "calibration pass differs from inference by {worst}");
}

#[test]
fn wanda_prunes_every_matrix_to_the_target_with_its_own_mask() {
    let base = Base::load(common::MINILM).expect("run scripts/fetch-assets");
    let data = TaskData::load(&cfg(), &base, &sprig_data::sprig_home()).expect("run scripts/fetch-assets");
    let dir = tempfile::tempdir().unwrap();
    let run = |method| {
        let pc = PruneConfig { sparsity: 0.5, method, train: FinetuneConfig { epochs: 1, ..cfg() }, ..PruneConfig::default() };
        let mut log = MetricsLog::create(&dir.path().join(format!("{method:?}.jsonl"))).unwrap();
        prune(&base, &data, &pc, None, &mut log, None).unwrap()
    };
    let wanda = run(PruneMethod::Wanda);
    assert_eq!(wanda.summary.method, "wanda");
    assert_eq!(wanda.summary.allocation, "uniform");
    for (n, m) in wanda.masks.iter() {
        assert!((m.sparsity() - 0.5).abs() < 1e-9, "{n}: {}", m.sparsity());
    }
    wanda.masks.check_pruned_zero(&wanda.model.named_params()).unwrap();
    // Magnitude once, same allocation: the activation norms change which weights survive.
    let mag = PruneConfig { sparsity: 0.5, method: PruneMethod::Oneshot, allocation: "uniform".into(), train: FinetuneConfig { epochs: 1, ..cfg() }, ..PruneConfig::default() };
    let mut log = MetricsLog::create(&dir.path().join("mag.jsonl")).unwrap();
    let mag = prune(&base, &data, &mag, None, &mut log, None).unwrap();
    let (mut differ, mut total) = (0usize, 0usize);
    for (n, m) in wanda.masks.iter() {
        let (a, b) = (m.to_bools(), mag.masks.get(n).unwrap().to_bools());
        differ += a.iter().zip(&b).filter(|(x, y)| x != y).count();
        total += a.len();
    }
    let share = differ as f64 / total as f64;
    assert!(share > 0.01, "Wanda's mask is magnitude's ({share} of positions differ)");
}
