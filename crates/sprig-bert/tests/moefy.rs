//! MoE-fication of the real MiniLM: every layer's FFN split into 8 experts with a trained router;
//! with all experts chosen the encoder computes the dense function, with 2 of 8 a cheaper one whose
//! routers find the most active experts well above chance.
mod common;
use sprig_bert::masked::{Base, TaskData};
use sprig_bert::model::{BertEncoder, Init, MoefyConfig};
use sprig_bert::FinetuneConfig;

#[test]
fn moefied_minilm_is_exact_with_all_experts_and_routes_above_chance_with_two() {
    let cfg = FinetuneConfig { task: "rt-sentiment".into(), batch_size: 8, max_train: 64, max_dev: 8, max_test: 8, max_steps: 1, ..FinetuneConfig::default() };
    let base = Base::load(common::MINILM).expect("run scripts/fetch-assets");
    let data = TaskData::load(&cfg, &base, &sprig_data::sprig_home()).expect("run scripts/fetch-assets");
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
    enc.clear_moe();
    let back = enc.forward_inference(&ids, &types, &mask).unwrap();
    assert_eq!((back - dense).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
}
