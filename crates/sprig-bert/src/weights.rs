//! Reading safetensors checkpoints into named f32 tensors, and writing them back atomically.
use crate::error::{io_err, BertError, Result};
use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

/// Canonical parameter name: without a `bert.` prefix, with the old `gamma`/`beta` LayerNorm names
/// mapped to `weight`/`bias`.
pub fn canonical_name(name: &str) -> String {
    let n = name.strip_prefix("bert.").unwrap_or(name);
    if let Some(stem) = n.strip_suffix(".gamma") {
        return format!("{stem}.weight");
    }
    if let Some(stem) = n.strip_suffix(".beta") {
        return format!("{stem}.bias");
    }
    n.to_string()
}

/// True for names of trainable parameters (`….weight`, `….bias`, and the old `gamma`/`beta`),
/// which must be floating point; other tensors are buffers.
fn is_parameter_name(name: &str) -> bool {
    [".weight", ".bias", ".gamma", ".beta"].iter().any(|s| name.ends_with(s))
}

/// Load every floating-point tensor of the given files as f32 (f16/bf16/f64 are converted);
/// integer buffers such as `embeddings.position_ids` are skipped. A parameter (a `.weight` or
/// `.bias`) of another dtype is an error naming its dtype, not a tensor that goes missing later.
/// Names are canonicalised.
pub fn load_safetensors(files: &[impl AsRef<Path>], device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for file in files {
        let path = file.as_ref();
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| BertError::Safetensors { path: path.into(), msg: e.to_string() })?;
        for (name, view) in st.tensors() {
            let dtype = match view.dtype() {
                Dtype::F32 => DType::F32,
                Dtype::F16 => DType::F16,
                Dtype::BF16 => DType::BF16,
                Dtype::F64 => DType::F64,
                other if is_parameter_name(&name) => {
                    return Err(BertError::Tensor {
                        path: path.into(),
                        name,
                        msg: format!("has dtype {other:?}, expected a float type (F32, F16, BF16 or F64)"),
                    })
                }
                _ => continue,
            };
            let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), device)
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(|e| BertError::Tensor { path: path.into(), name: name.clone(), msg: e.to_string() })?;
            let t = if t.elem_count() > 0 && !all_finite(&t)? {
                return Err(BertError::Tensor { path: path.into(), name, msg: "contains NaN or infinity".into() });
            } else {
                t
            };
            let canonical = canonical_name(&name);
            if out.contains_key(&canonical) {
                return Err(BertError::Tensor {
                    path: path.into(),
                    name,
                    msg: format!("is a second tensor named {canonical} (names are compared without a `bert.` prefix and with gamma/beta as weight/bias)"),
                });
            }
            out.insert(canonical, t);
        }
    }
    Ok(out)
}

fn all_finite(t: &Tensor) -> Result<bool> {
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    Ok(v.iter().all(|x| x.is_finite()))
}

/// Serialize named tensors to safetensors bytes, sorted by name, with string metadata.
pub fn to_safetensors_bytes(tensors: &[(String, Tensor)], metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    let mut items: Vec<(String, Tensor)> = tensors.iter().map(|(n, t)| Ok((n.clone(), t.contiguous()?))).collect::<Result<_>>()?;
    items.sort_by(|a, b| a.0.cmp(&b.0));
    safetensors::serialize(items.iter().map(|(n, t)| (n.as_str(), t)), metadata)
        .map_err(|e| BertError::Safetensors { path: "<memory>".into(), msg: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, tensors: &[(&str, Dtype, Vec<u8>)]) -> std::path::PathBuf {
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .map(|(n, d, b)| (n.to_string(), safetensors::tensor::TensorView::new(*d, vec![b.len() / 4], b).unwrap()))
            .collect();
        let p = dir.join("model.safetensors");
        std::fs::write(&p, safetensors::serialize(views, None).unwrap()).unwrap();
        p
    }

    #[test]
    fn parameters_of_a_non_float_dtype_and_duplicate_names_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = |x: f32| x.to_le_bytes().to_vec();
        let p = write(dir.path(), &[("a.weight", Dtype::F32, f(1.0)), ("position_ids", Dtype::I32, 7i32.to_le_bytes().to_vec())]);
        let t = load_safetensors(&[&p], &Device::Cpu).unwrap();
        assert!(t.contains_key("a.weight") && !t.contains_key("position_ids"), "integer buffers are skipped");
        let p = write(dir.path(), &[("a.LayerNorm.gamma", Dtype::I32, 1i32.to_le_bytes().to_vec())]);
        let e = load_safetensors(&[&p], &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("model.safetensors") && e.contains("a.LayerNorm.gamma") && e.contains("I32") && e.contains("F32"), "{e}");
        let p = write(dir.path(), &[("bert.a.weight", Dtype::F32, f(1.0)), ("a.weight", Dtype::F32, f(2.0))]);
        let e = load_safetensors(&[&p], &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("second tensor named a.weight"), "{e}");
    }
}
