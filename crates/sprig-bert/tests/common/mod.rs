//! Shared helpers for the integration tests (included with `mod common;`).
#![allow(dead_code)]
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

/// The real checkpoint, resolved through the hub cache exactly as a user's hub id would be.
pub const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The PyTorch reference tensors (as f32/u32 tensors) and their metadata.
pub fn reference() -> (HashMap<String, Tensor>, serde_json::Value) {
    let path = fixture_dir().join("minilm-l6-reference.safetensors");
    let bytes = std::fs::read(&path).expect("fixture");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("fixture safetensors");
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let t = match view.dtype() {
            safetensors::Dtype::F32 => Tensor::from_raw_buffer(view.data(), DType::F32, view.shape(), &Device::Cpu).unwrap(),
            safetensors::Dtype::I64 => Tensor::from_raw_buffer(view.data(), DType::I64, view.shape(), &Device::Cpu)
                .unwrap()
                .to_dtype(DType::U32)
                .unwrap(),
            d => panic!("unexpected dtype {d:?}"),
        };
        out.insert(name.to_string(), t);
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("minilm-l6-reference.json")).unwrap()).unwrap();
    (out, json)
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    a.sub(b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}
