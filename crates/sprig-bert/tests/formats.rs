//! Each encoder linear in its own format: a mixed compilation computes what the masked dense
//! encoder computes, and the measured plan covers every linear with its fastest candidate.
mod common;
use candle_core::{Device, Tensor};
use common::{reference, MINILM};
use sprig_bert::formats::{measure_formats, LinearFormat, MeasureOptions};
use sprig_bert::{is_encoder_linear_weight, BertEncoder, Checkpoint};
use sprig_kernels::candle::Format;
use sprig_prune::{Mask, MaskSet};
use std::collections::BTreeMap;

/// MiniLM with its encoder linears masked (layer 0 in 2:4 groups, the others ~90% unstructured)
/// and the pruned weights set to zero, plus the masks.
fn masked_minilm(ckpt: &Checkpoint) -> (BertEncoder, MaskSet) {
    let enc = ckpt.encoder(1, &Device::Cpu).unwrap();
    let mut masks = MaskSet::new();
    for (i, (name, var)) in enc.named_params().iter().filter(|(n, _)| is_encoder_linear_weight(n)).enumerate() {
        let w = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let two_four = name.starts_with("encoder.layer.0.");
        let keep: Vec<bool> = (0..w.len()).map(|j| if two_four { (j + j / 384) % 4 < 2 } else { (j * 7 + i) % 10 == 0 }).collect();
        let wm: Vec<f32> = w.iter().zip(&keep).map(|(v, &k)| if k { *v } else { 0.0 }).collect();
        var.set(&Tensor::from_vec(wm, var.shape(), &Device::Cpu).unwrap()).unwrap();
        masks.insert(name.clone(), Mask::from_bools(var.dims(), &keep).unwrap());
    }
    (enc, masks)
}

fn run(e: &BertEncoder) -> Tensor {
    let (r, _) = reference();
    e.forward_inference(&r["input_ids"], &r["token_type_ids"], &r["attention_mask"]).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    a.sub(b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn mixed_formats_match_the_masked_dense_encoder() {
    let ckpt = Checkpoint::load(MINILM, &Device::Cpu).expect("run scripts/fetch-assets");
    let (dense, masks) = masked_minilm(&ckpt);
    let want = run(&dense);
    // Per layer a different mix: Q, K, V sharing one format (stacked) or not, some left dense.
    let cycle = [Some(Format::Csr), Some(Format::Bsr(4, 1)), Some(Format::Bsr(1, 4)), None];
    let mut formats = BTreeMap::new();
    for (i, name) in masks.names().iter().enumerate() {
        let f = if name.starts_with("encoder.layer.0.") { Some(Format::Nm(2, 4)) } else { cycle[(i / 2) % 4] };
        if let Some(f) = f {
            formats.insert(name.clone(), f);
        }
    }
    let (mut sparse, _) = masked_minilm(&ckpt);
    sparse.compile_sparse_each(&masks, &formats).unwrap();
    let values = sparse.named_params().iter().filter(|(n, _)| n.ends_with(":values")).count();
    assert_eq!(values, formats.len());
    let d = max_diff(&want, &run(&sparse));
    assert!(d < 1e-4, "mixed formats vs masked dense: {d}");
    // A format for a linear without a mask is refused, naming it.
    let mut only = MaskSet::new();
    only.insert("encoder.layer.1.output.dense.weight", masks.get("encoder.layer.1.output.dense.weight").unwrap().clone());
    let e = masked_minilm(&ckpt).0.compile_sparse_each(&only, &formats).unwrap_err().to_string();
    assert!(e.contains("no mask"), "{e}");
}

#[test]
fn measured_plan_picks_each_linears_fastest_and_computes_the_same() {
    let ckpt = Checkpoint::load(MINILM, &Device::Cpu).expect("run scripts/fetch-assets");
    let (dense, masks) = masked_minilm(&ckpt);
    let plan = measure_formats(&dense, &masks, &MeasureOptions { rows: 16, runs: 1, seed: 0 }).unwrap();
    assert_eq!(plan.choices.len(), 36);
    for (name, c) in &plan.choices {
        assert!(c.ms.contains_key("dense") && c.ms.contains_key("csr"), "{name}: {:?}", c.ms);
        let bits = dense.named_params().iter().find(|(n, _)| n == name).map(|_| masks.get(name).unwrap().to_bitmask().unwrap()).unwrap();
        assert_eq!(c.ms.contains_key("2:4"), sprig_bert::formats::is_nm(&bits, 2, 4), "{name}: {:?}", c.ms);
        if name.starts_with("encoder.layer.0.") {
            assert!(c.ms.contains_key("2:4"), "{name}: {:?}", c.ms);
        }
        assert!(c.ms.contains_key(&c.format.to_string()), "{name}: chose {} untimed", c.format);
        if !name.contains(".attention.self.") {
            let best = c.ms.iter().min_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
            assert_eq!(&c.format.to_string(), best, "{name}: {:?}", c.ms);
        }
    }
    for l in 0..6 {
        let f = |s: &str| plan.choices[&format!("encoder.layer.{l}.attention.self.{s}.weight")].format;
        assert!(f("query") == f("key") && f("key") == f("value"), "layer {l}: Q, K, V differ");
    }
    assert_eq!(plan.counts().values().sum::<usize>(), 36);
    let (mut sparse, _) = masked_minilm(&ckpt);
    sparse.compile_sparse_each(&masks, &plan.sparse_formats()).unwrap();
    let d = max_diff(&run(&dense), &run(&sparse));
    assert!(d < 1e-4, "planned formats {:?} vs masked dense: {d}", plan.counts());
    assert!(plan.choices.values().all(|c| c.format != LinearFormat::Dense || c.ms.contains_key("dense")));
}

/// int8 (per-channel weights, per-token activations) on the masked MiniLM: token states close to
/// f32 (cosine > 0.99 per token), pruned weights stay pruned, training refused.
#[test]
fn int8_encoder_tracks_f32_and_refuses_training() {
    let ckpt = Checkpoint::load(MINILM, &Device::Cpu).expect("run scripts/fetch-assets");
    let (dense, masks) = masked_minilm(&ckpt);
    let want = run(&dense);
    let (mut q, _) = masked_minilm(&ckpt);
    let s = q.quantize_int8().unwrap();
    assert!(q.is_int8());
    assert_eq!(s.linears, 36);
    let kept = masks.count_kept();
    assert_eq!(s.nonzero_f32, kept, "the f32 non-zeros are the kept weights");
    assert!(s.nonzero_int8 <= kept && s.nonzero_int8 as f64 > 0.97 * kept as f64, "{} of {kept}", s.nonzero_int8);
    let got = run(&q);
    let (a, b) = (want.flatten_to(1).unwrap(), got.flatten_to(1).unwrap());
    let dot = (&a * &b).unwrap().sum(1).unwrap();
    let na = a.sqr().unwrap().sum(1).unwrap().sqrt().unwrap();
    let nb = b.sqr().unwrap().sum(1).unwrap().sqrt().unwrap();
    let cos = dot.div(&(na * nb).unwrap()).unwrap().min_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(cos > 0.99, "worst token cosine {cos}");
    assert!(max_diff(&want, &got) > 0.0, "int8 cannot be exactly f32");
    let (r, _) = reference();
    let e = q.forward(&r["input_ids"], &r["token_type_ids"], &r["attention_mask"], true).unwrap_err().to_string();
    assert!(e.contains("int8"), "{e}");
}
