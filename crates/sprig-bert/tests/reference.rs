//! sprig's encoder against PyTorch `transformers` on the real MiniLM-L6 checkpoint
//! (fixture made by scripts/make-bert-fixture.py).
mod common;
use candle_core::Device;
use common::*;
use sprig_bert::{pool, BertTokenizer, Checkpoint, Pooling};

#[test]
fn tokenizer_matches_hugging_face_ids() {
    let ckpt = sprig_bert::ModelFiles::resolve(MINILM).expect("run scripts/fetch-assets");
    let tok = BertTokenizer::from_file(ckpt.tokenizer().unwrap(), 512).unwrap();
    let (_, json) = reference();
    let sentences = json["sentences"].as_array().unwrap();
    assert!(sentences.len() >= 5);
    let texts: Vec<&str> = sentences.iter().map(|s| s["text"].as_str().unwrap()).collect();
    let enc = tok.encode_batch(&texts).unwrap();
    for (s, e) in sentences.iter().zip(&enc) {
        let want: Vec<u32> = s["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(e.ids, want, "{}", s["text"]);
    }
}

#[test]
fn hidden_states_and_pooling_match_pytorch() {
    let device = Device::Cpu;
    let ckpt = Checkpoint::load(MINILM, &device).expect("run scripts/fetch-assets");
    let encoder = ckpt.encoder(0, &device).unwrap();
    let (r, _) = reference();
    let hidden = encoder.forward(&r["input_ids"], &r["token_type_ids"], &r["attention_mask"], false).unwrap();
    // Padding positions are garbage in both implementations: compare real tokens only.
    let mask = r["attention_mask"].to_dtype(candle_core::DType::F32).unwrap().unsqueeze(2).unwrap();
    let d = max_abs_diff(&hidden.broadcast_mul(&mask).unwrap(), &r["last_hidden_state"].broadcast_mul(&mask).unwrap());
    assert!(d <= 1e-4, "last_hidden_state max |diff| = {d}");
    let mean = pool(&hidden, &r["attention_mask"], Pooling::Mean).unwrap();
    let d = max_abs_diff(&mean, &r["mean_pooled"]);
    assert!(d <= 1e-4, "mean pooled max |diff| = {d}");
    let cls = pool(&hidden, &r["attention_mask"], Pooling::Cls).unwrap();
    let d = max_abs_diff(&cls, &r["cls"]);
    assert!(d <= 1e-4, "cls max |diff| = {d}");
    // Eval mode is deterministic: no dropout.
    let again = encoder.forward(&r["input_ids"], &r["token_type_ids"], &r["attention_mask"], false).unwrap();
    assert_eq!(max_abs_diff(&hidden, &again), 0.0);
}
