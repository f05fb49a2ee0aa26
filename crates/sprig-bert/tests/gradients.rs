//! Every trainable tensor of the classifier receives a non-zero gradient (candle-nn's fused
//! LayerNorm has none, which silently freezes an encoder built on it).
mod common;
use candle_core::{Device, Tensor};
use common::*;
use sprig_bert::{BertClassifier, Checkpoint, Pooling};

#[test]
fn every_parameter_gets_a_nonzero_gradient() {
    let device = Device::Cpu;
    let ckpt = Checkpoint::load(MINILM, &device).expect("run scripts/fetch-assets");
    let encoder = ckpt.encoder(1, &device).unwrap();
    assert!(encoder.trains_word_embeddings());
    let model = BertClassifier::new(encoder, 3, Pooling::Mean, None, 1).unwrap();
    let (r, _) = reference();
    let labels = Tensor::new(&[0u32, 1, 2, 0, 1, 2], &device).unwrap();
    let logits = model.forward(&r["input_ids"], &r["token_type_ids"], &r["attention_mask"], true).unwrap();
    let grads = candle_nn::loss::cross_entropy(&logits, &labels).unwrap().backward().unwrap();
    let params = model.trainable_params();
    // 5 embedding tensors + 16 per layer + 2 head tensors (the pooler is not used).
    assert_eq!(params.len(), 5 + 16 * ckpt.config.num_hidden_layers + 2);
    for (name, var) in &params {
        let g = grads.get(var).unwrap_or_else(|| panic!("{name} has no gradient"));
        let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm > 0.0 && norm.is_finite(), "{name}: gradient norm² {norm}");
    }
}

#[test]
fn frozen_word_embeddings_get_no_gradient() {
    let device = Device::Cpu;
    let ckpt = Checkpoint::load(MINILM, &device).expect("run scripts/fetch-assets");
    let mut encoder = ckpt.encoder(1, &device).unwrap();
    encoder.set_train_word_embeddings(false);
    let model = BertClassifier::new(encoder, 2, Pooling::Cls, None, 1).unwrap();
    let (r, _) = reference();
    let logits = model.forward(&r["input_ids"], &r["token_type_ids"], &r["attention_mask"], true).unwrap();
    let grads = logits.sum_all().unwrap().backward().unwrap();
    let word = model.named_params().into_iter().find(|(n, _)| n == "embeddings.word_embeddings.weight").unwrap().1;
    assert!(grads.get(&word).is_none());
    assert!(!model.trainable_params().iter().any(|(n, _)| n == "embeddings.word_embeddings.weight"));
}

/// The fused ops and candle's stock ops compute the same function: logits and the gradient of
/// every parameter agree on the real checkpoint (eval mode, padded batch), and both paths keep
/// agreeing with PyTorch through the reference test.
#[test]
fn fused_and_stock_paths_agree_on_outputs_and_every_gradient() {
    use sprig_bert::Ops;
    let device = Device::Cpu;
    let ckpt = Checkpoint::load(MINILM, &device).expect("run scripts/fetch-assets");
    let (r, _) = reference();
    let labels = Tensor::new(&[0u32, 1, 2, 0, 1, 2], &device).unwrap();
    let run = |ops: Ops| {
        let mut encoder = ckpt.encoder(1, &device).unwrap();
        encoder.set_ops(ops);
        assert_eq!(encoder.ops(), ops);
        let model = BertClassifier::new(encoder, 3, Pooling::Mean, None, 1).unwrap();
        let logits = model.forward(&r["input_ids"], &r["token_type_ids"], &r["attention_mask"], false).unwrap();
        // Inference (no graph) computes the same logits.
        let pred = model.predict(&r["input_ids"], &r["token_type_ids"], &r["attention_mask"]).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (a, b) in pred.iter().zip(logits.flatten_all().unwrap().to_vec1::<f32>().unwrap()) {
            assert!((a - b).abs() <= 1e-6, "{ops:?}: predict {a} vs forward {b}");
        }
        let grads = candle_nn::loss::cross_entropy(&logits, &labels).unwrap().backward().unwrap();
        let gs: Vec<(String, Vec<f32>)> = model
            .trainable_params()
            .iter()
            .map(|(n, v)| (n.clone(), grads.get(v).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()))
            .collect();
        (logits.flatten_all().unwrap().to_vec1::<f32>().unwrap(), gs)
    };
    let (lf, gf) = run(Ops::Fused);
    let (ls, gs) = run(Ops::Stock);
    for (a, b) in lf.iter().zip(&ls) {
        assert!((a - b).abs() < 1e-4, "logits {a} vs {b}");
    }
    for ((name, a), (_, b)) in gf.iter().zip(&gs) {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-8);
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        // (the key bias has an exactly-zero true gradient: softmax ignores a per-row constant)
        assert!(worst <= 1e-3 * scale + 1e-7, "{name}: max diff {worst}, scale {scale}");
    }
}

/// An encoder with attention heads removed (a different count per layer, each head as wide as
/// before) runs on both paths with the same logits and gradients.
#[test]
fn fewer_heads_per_layer_agree_on_fused_and_stock_paths() {
    use sprig_bert::{BertConfig, BertEncoder, Init, Ops};
    let device = Device::Cpu;
    let config: BertConfig = serde_json::from_value(serde_json::json!({"vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 3,
        "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 16, "sprig_attention_heads": [1, 4, 2]}))
    .unwrap();
    let ids = Tensor::new(&[[3u32, 7, 9, 11, 2], [5, 6, 8, 0, 0]], &device).unwrap();
    let tt = ids.zeros_like().unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1, 1, 1], [1, 1, 1, 0, 0]], &device).unwrap();
    let run = |ops: Ops| {
        let mut encoder = BertEncoder::new(&config, Init::Random { seed: 3 }, 1, &device).unwrap();
        encoder.set_ops(ops);
        let shapes: Vec<Vec<usize>> = encoder.named_params().iter().filter(|(n, _)| n.ends_with("attention.self.query.weight")).map(|(_, v)| v.dims().to_vec()).collect();
        assert_eq!(shapes, [vec![8, 32], vec![32, 32], vec![16, 32]]);
        let model = BertClassifier::new(encoder, 2, Pooling::Mean, None, 1).unwrap();
        let logits = model.forward(&ids, &tt, &mask, false).unwrap();
        let grads = logits.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g: Vec<Vec<f32>> = model.trainable_params().iter().map(|(_, v)| grads.get(v).map_or(vec![], |g| g.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect();
        (logits.flatten_all().unwrap().to_vec1::<f32>().unwrap(), g)
    };
    let ((lf, gf), (ls, gs)) = (run(Ops::Fused), run(Ops::Stock));
    for (a, b) in lf.iter().zip(&ls) {
        assert!((a - b).abs() < 1e-4, "logits {a} vs {b}");
    }
    for (a, b) in gf.iter().zip(&gs) {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-8);
        assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-3 * scale + 1e-7));
    }
}

/// A compiled (truly sparse) encoder computes the same logits as the dense encoder with the
/// masked weights, its trainable tensors are the stored values, and `sync_dense` writes them back.
#[test]
fn compiled_sparse_encoder_matches_masked_dense() {
    use sprig_kernels::candle::Format;
    use sprig_prune::{Mask, MaskSet};
    let device = Device::Cpu;
    let ckpt = Checkpoint::load(MINILM, &device).expect("run scripts/fetch-assets");
    let (r, _) = reference();
    let masked = ckpt.encoder(1, &device).unwrap();
    let mut keep = MaskSet::new();
    for (i, (name, var)) in masked.named_params().iter().filter(|(n, _)| sprig_bert::is_encoder_linear_weight(n)).enumerate() {
        let w = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let k: Vec<bool> = w.iter().enumerate().map(|(j, _)| (j * 7 + i) % 10 < 3).collect();
        let wm: Vec<f32> = w.iter().zip(&k).map(|(v, &k)| if k { *v } else { 0.0 }).collect();
        var.set(&Tensor::from_vec(wm, var.shape(), &device).unwrap()).unwrap();
        keep.insert(name.clone(), Mask::from_bools(var.dims(), &k).unwrap());
    }
    let mut sparse = ckpt.encoder(1, &device).unwrap();
    sparse.compile_sparse(&keep, Format::Csr).unwrap();
    assert_eq!(sparse.named_params().iter().filter(|(n, _)| n.ends_with(":values")).count(), 6 * ckpt.config.num_hidden_layers);
    let a = masked.forward(&r["input_ids"], &r["token_type_ids"], &r["attention_mask"], false).unwrap();
    let b = sparse.forward(&r["input_ids"], &r["token_type_ids"], &r["attention_mask"], false).unwrap();
    let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-4, "compiled vs masked dense: {diff}");
    // Gradients reach every compiled linear's stored values (Q, K and V through their stacked
    // product) and equal the masked dense gradient at the kept positions.
    let loss = |e: &sprig_bert::BertEncoder| {
        let h = e.forward(&r["input_ids"], &r["token_type_ids"], &r["attention_mask"], false).unwrap();
        h.sqr().unwrap().sum_all().unwrap().backward().unwrap()
    };
    let (gm, gsp) = (loss(&masked), loss(&sparse));
    let sparse_params = sparse.named_params();
    let mut checked = 0;
    for (name, var) in masked.named_params().iter().filter(|(n, _)| sprig_bert::is_encoder_linear_weight(n)) {
        let gd = gm.get(var).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want: Vec<f32> = gd.iter().zip(&keep.get(name).unwrap().to_bools()).filter(|(_, &k)| k).map(|(g, _)| *g).collect();
        let sv = &sparse_params.iter().find(|(n, _)| *n == format!("{name}:values")).unwrap().1;
        let got = gsp.get(sv).unwrap().to_vec1::<f32>().unwrap();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-8);
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert_eq!(got.len(), want.len(), "{name}");
        assert!(worst <= 1e-3 * scale, "{name}: values gradient max diff {worst}, scale {scale}");
        checked += 1;
    }
    assert_eq!(checked, 6 * ckpt.config.num_hidden_layers);
    sparse.sync_dense().unwrap();
    let mut bad = MaskSet::new();
    bad.insert("embeddings.word_embeddings.weight", Mask::from_bools(&[1], &[true]).unwrap());
    assert!(ckpt.encoder(1, &device).unwrap().compile_sparse(&bad, Format::Csr).is_err());
}
