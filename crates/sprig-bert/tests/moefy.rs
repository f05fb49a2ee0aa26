//! MoE-fication of the real MiniLM: every layer's FFN split into 8 experts with a trained router;
//! with all experts chosen the encoder computes the dense function, with 2 of 8 a cheaper one whose
//! routers find the most active experts well above chance.
mod common;
use sprig_bert::masked::{Base, TaskData};
use sprig_bert::model::{BertEncoder, Init, MoefyConfig};
use sprig_bert::FinetuneConfig;

/// The real MiniLM and the first `max_train` rt-sentiment training examples.
fn minilm_and_rt(max_train: usize) -> (Base, TaskData) {
    let cfg = FinetuneConfig { task: "rt-sentiment".into(), batch_size: 8, max_train, max_dev: 8, max_test: 8, max_steps: 1, ..FinetuneConfig::default() };
    let base = Base::load(common::MINILM).expect("run scripts/fetch-assets");
    let data = TaskData::load(&cfg, &base, &sprig_data::sprig_home()).expect("run scripts/fetch-assets");
    (base, data)
}

#[test]
fn moefied_minilm_is_exact_with_all_experts_and_routes_above_chance_with_two() {
    let (base, data) = minilm_and_rt(64);
    let dev = candle_core::Device::Cpu;
    let mut enc = BertEncoder::new(&base.config, Init::Pretrained { tensors: &base.tensors, origin: base.origin.clone() }, 0, &dev).unwrap();
    let batch = |idx: &[usize]| sprig_bert::finetune::batch_tensors(&data.train, idx, data.pad_id, &dev).unwrap();
    let calib: Vec<_> = (0..4).map(|b| batch(&(b * 16..(b + 1) * 16).collect::<Vec<_>>())).collect();
    let (ids, types, mask) = batch(&(48..64).collect::<Vec<_>>());
    let dense = enc.forward_inference(&ids, &types, &mask).unwrap();
    let moe = MoefyConfig { router_steps: 100, ..MoefyConfig::default() };
    let report = enc.moefy(&moe, &calib[..3]).unwrap();
    assert!(enc.is_moefied());
    assert_eq!(report.router_recall.len(), base.config.num_hidden_layers);
    eprintln!("MoE-fied MiniLM: {} calibration tokens, router recall of the top-2 of 8 per layer {:?}", report.calibration_tokens, report.router_recall);
    // Chance is 2/8 = 0.25.
    assert!(report.router_recall.iter().all(|&r| r > 0.5), "{:?}", report.router_recall);
    // All eight experts: the dense encoder.
    enc.set_moe_top_k(8).unwrap();
    let all = enc.forward_inference(&ids, &types, &mask).unwrap();
    let d = (all - &dense).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d < 1e-3, "all experts vs dense: max diff {d}");
    // Two of eight: a different function, correlated with the dense one (cosine of all hidden
    // states, padding included; measured 0.64 without fine-tuning).
    enc.set_moe_top_k(2).unwrap();
    let two = enc.forward_inference(&ids, &types, &mask).unwrap();
    let cos = |a: &candle_core::Tensor, b: &candle_core::Tensor| {
        let (a, b) = (a.flatten_all().unwrap(), b.flatten_all().unwrap());
        (a.mul(&b).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()) / (a.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap() * b.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap())
    };
    let c = cos(&two, &dense);
    eprintln!("top-2 of 8 vs dense hidden states: cosine {c:.4}");
    assert!(c > 0.3 && c < 0.99999, "{c}");
    assert!(enc.moefy(&moe, &calib[3..]).is_err(), "MoE-fying twice is refused");
    let max_diff = |a: &candle_core::Tensor, b: &candle_core::Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    enc.clear_moe();
    assert_eq!(max_diff(&enc.forward_inference(&ids, &types, &mask).unwrap(), &dense), 0.0, "clearing the experts gives the dense weights back");
    // Same seed and calibration: the same experts and routers, bit for bit.
    enc.moefy(&moe, &calib[..3]).unwrap();
    enc.set_moe_top_k(2).unwrap();
    assert_eq!(max_diff(&enc.forward_inference(&ids, &types, &mask).unwrap(), &two), 0.0, "MoE-fication is deterministic");

    // Save and load: the experts folded back into the FFN (neurons reordered expert by expert:
    // the dense function is unchanged), the routers in their own file; loading cuts the FFN into
    // the same experts, so top-2 computes what it computed before.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(sprig_bert::model::MOE_FILE);
    enc.fold_moe_into_ffn().unwrap();
    enc.save_moe(&file).unwrap();
    enc.clear_moe();
    assert!(max_diff(&enc.forward_inference(&ids, &types, &mask).unwrap(), &dense) < 1e-3, "the folded FFN is the dense FFN");
    enc.load_moe(&file).unwrap();
    assert!(enc.is_moefied());
    let loaded = enc.forward_inference(&ids, &types, &mask).unwrap();
    assert!(max_diff(&loaded, &two) < 1e-4, "top-2 after save and load: {}", max_diff(&loaded, &two));
    // A router file that does not match the model is refused, naming the file.
    enc.clear_moe();
    let mut small = BertEncoder::new(&base.config, Init::Pretrained { tensors: &base.tensors, origin: base.origin.clone() }, 0, &dev).unwrap();
    small.moefy(&MoefyConfig { experts: 4, router_steps: 1, ..MoefyConfig::default() }, &calib[..1]).unwrap();
    small.fold_moe_into_ffn().unwrap();
    let wrong = dir.path().join("four-experts.safetensors");
    small.save_moe(&wrong).unwrap();
    let mut tampered = std::fs::read(&wrong).unwrap();
    let at = tampered.windows(7).position(|w| w == b"experts").expect("router settings in the metadata");
    let digit = at + tampered[at..].iter().position(|c| c.is_ascii_digit()).unwrap();
    tampered[digit] = b'8'; // experts 4 -> 8 in the settings, the tensors still [4, H]
    std::fs::write(&wrong, &tampered).unwrap();
    let err = enc.load_moe(&wrong).unwrap_err().to_string();
    assert!(err.contains("four-experts.safetensors") && err.contains("shape"), "{err}");
    assert!(enc.load_moe(&dir.path().join("missing.safetensors")).is_err());
}

/// Sparse upcycling of the real MiniLM: every FFN copied into 4 experts behind a new router is the
/// dense encoder until trained; a training forward collects the balancing loss; the experts,
/// stored whole, load back to the same function once they differ.
#[test]
fn upcycled_minilm_starts_dense_collects_its_balancing_loss_and_saves_whole() {
    let (base, data) = minilm_and_rt(16);
    let dev = candle_core::Device::Cpu;
    let new_enc = || BertEncoder::new(&base.config, Init::Pretrained { tensors: &base.tensors, origin: base.origin.clone() }, 0, &dev).unwrap();
    let mut enc = new_enc();
    let (ids, types, mask) = sprig_bert::finetune::batch_tensors(&data.train, &(0..16).collect::<Vec<_>>(), data.pad_id, &dev).unwrap();
    let max_diff = |a: &candle_core::Tensor, b: &candle_core::Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let dense = enc.forward_inference(&ids, &types, &mask).unwrap();
    assert!(enc.upcycle(4, 5, 0).is_err(), "top-5 of 4 experts is refused");
    enc.upcycle(4, 2, 0).unwrap();
    assert!(enc.is_moefied() && enc.moe_is_gated());
    let up = enc.forward_inference(&ids, &types, &mask).unwrap();
    assert!(max_diff(&up, &dense) < 1e-4, "upcycled vs dense: {}", max_diff(&up, &dense));
    assert!(enc.take_moe_aux_loss().unwrap().is_none(), "inference collects no auxiliary loss");
    enc.forward(&ids, &types, &mask, true).unwrap();
    let aux = enc.take_moe_aux_loss().unwrap().expect("a training forward collects the balancing loss").to_scalar::<f32>().unwrap();
    // Six layers of 0.01 · balance (1 when balanced) + 0.001 · z-loss.
    assert!(aux.is_finite() && aux > 0.05 && aux < 0.6, "aux loss {aux}");
    assert!(enc.take_moe_aux_loss().unwrap().is_none(), "taking it empties the collection");
    assert!(enc.upcycle(4, 2, 0).is_err(), "upcycling twice is refused");
    // Make the copies differ, then save and load: the same function, which the dense FFN
    // weights (unchanged) could not give.
    for (n, v) in enc.moe_params() {
        if n.ends_with("experts.1.w2") {
            v.set(&(v.as_tensor() + v.as_tensor().randn_like(0.0, 0.05).unwrap()).unwrap()).unwrap();
        }
    }
    let changed = enc.forward_inference(&ids, &types, &mask).unwrap();
    assert!(max_diff(&changed, &dense) > 1e-3);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(sprig_bert::model::MOE_FILE);
    enc.save_moe(&file).unwrap();
    let mut loaded = new_enc();
    loaded.load_moe(&file).unwrap();
    assert!(loaded.moe_is_gated());
    let again = loaded.forward_inference(&ids, &types, &mask).unwrap();
    assert!(max_diff(&again, &changed) < 1e-5, "after save and load: {}", max_diff(&again, &changed));
}
