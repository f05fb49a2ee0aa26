//! A training run's resumable state: what a killed run needs to continue exactly where it last
//! saved, bit for bit as if it had not stopped. One file, `safetensors` with a JSON record in its
//! metadata, written atomically ([`write_atomic`]), so a crash while saving leaves the previous
//! state whole.
//!
//! The training loop ([`crate::Fit::resumable`]) saves its own counters, the trained parameters and
//! the optimizer's state; each hook adds its own ([`crate::Hooks::save_state`]) under its prefix.
use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Context, Result};
use crate::run::write_atomic;

/// The metadata key holding the JSON record.
const META_KEY: &str = "sprig.train_state";
/// Format version of the record; a state of another version is refused, not guessed at.
pub const STATE_VERSION: u64 = 1;

/// Named tensors plus a JSON record, saved as one safetensors file.
#[derive(Debug, Default, Clone)]
pub struct TrainState {
    pub tensors: BTreeMap<String, Tensor>,
    pub meta: serde_json::Map<String, serde_json::Value>,
}

impl TrainState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores a tensor (copied to a contiguous CPU tensor, detached).
    pub fn put_tensor(&mut self, name: impl Into<String>, t: &Tensor) -> Result<()> {
        self.tensors.insert(name.into(), t.detach().to_device(&Device::Cpu)?.contiguous()?);
        Ok(())
    }

    /// Stores `v` as a 1-d f32 tensor.
    pub fn put_f32s(&mut self, name: impl Into<String>, v: &[f32]) -> Result<()> {
        let t = Tensor::from_slice(v, v.len(), &Device::Cpu)?;
        self.tensors.insert(name.into(), t);
        Ok(())
    }

    /// Stores booleans as a 1-d u8 tensor (1 = true).
    pub fn put_bools(&mut self, name: impl Into<String>, v: &[bool]) -> Result<()> {
        let b: Vec<u8> = v.iter().map(|&x| x as u8).collect();
        self.tensors.insert(name.into(), Tensor::from_vec(b, v.len(), &Device::Cpu)?);
        Ok(())
    }

    /// The tensor `name`; an error naming it when the state lacks it.
    pub fn tensor(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).with_context(|| format!("the saved training state has no tensor {name:?}"))
    }

    /// The 1-d f32 tensor `name` as a vector, which must hold `len` values.
    pub fn f32s(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let t = self.tensor(name)?;
        if t.dtype() != DType::F32 || t.elem_count() != len {
            bail!("the saved training state's {name:?} is {:?} with {} values; expected f32 with {len}", t.dtype(), t.elem_count());
        }
        Ok(t.flatten_all()?.to_vec1::<f32>()?)
    }

    /// The u8 tensor `name` as booleans, which must hold `len` values.
    pub fn bools(&self, name: &str, len: usize) -> Result<Vec<bool>> {
        let t = self.tensor(name)?;
        if t.dtype() != DType::U8 || t.elem_count() != len {
            bail!("the saved training state's {name:?} is {:?} with {} values; expected u8 with {len}", t.dtype(), t.elem_count());
        }
        Ok(t.flatten_all()?.to_vec1::<u8>()?.into_iter().map(|b| b != 0).collect())
    }

    /// Stores a JSON value.
    pub fn put<T: Serialize>(&mut self, key: impl Into<String>, v: &T) -> Result<()> {
        self.meta.insert(key.into(), serde_json::to_value(v)?);
        Ok(())
    }

    /// Stores an f64 by its bits (JSON floats need not round-trip bit for bit).
    pub fn put_f64(&mut self, key: impl Into<String>, v: f64) {
        self.meta.insert(key.into(), serde_json::Value::from(v.to_bits()));
    }

    /// The JSON value `key`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<T> {
        let v = self.meta.get(key).with_context(|| format!("the saved training state has no field {key:?}"))?;
        serde_json::from_value(v.clone()).with_context(|| format!("the saved training state's field {key:?}"))
    }

    /// An f64 stored by [`TrainState::put_f64`].
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        Ok(f64::from_bits(self.get::<u64>(key)?))
    }

    /// Whether `key` is a field.
    pub fn has(&self, key: &str) -> bool {
        self.meta.contains_key(key)
    }

    /// Adds `tensors` under `prefix/` and `meta` as the field `prefix` (a component's own state).
    pub fn put_part(&mut self, prefix: &str, tensors: BTreeMap<String, Tensor>, meta: serde_json::Value) -> Result<()> {
        for (n, t) in tensors {
            self.put_tensor(format!("{prefix}/{n}"), &t)?;
        }
        self.meta.insert(prefix.to_string(), meta);
        Ok(())
    }

    /// The tensors under `prefix/` (names without the prefix) and the field `prefix`.
    pub fn part(&self, prefix: &str) -> Result<(BTreeMap<String, Tensor>, serde_json::Value)> {
        let p = format!("{prefix}/");
        let tensors = self.tensors.iter().filter_map(|(n, t)| n.strip_prefix(&p).map(|k| (k.to_string(), t.clone()))).collect();
        let meta = self.meta.get(prefix).cloned().with_context(|| format!("the saved training state has no part {prefix:?}"))?;
        Ok((tensors, meta))
    }

    /// Writes the state to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut meta = self.meta.clone();
        meta.insert("version".into(), STATE_VERSION.into());
        let md: std::collections::HashMap<String, String> = [(META_KEY.to_string(), serde_json::Value::Object(meta).to_string())].into();
        let bytes = safetensors::serialize(self.tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(md))
            .map_err(|e| crate::TrainError::File { path: path.to_path_buf(), msg: format!("serializing the training state: {e}") })?;
        write_atomic(path, &bytes)
    }

    /// Reads a state written by [`TrainState::save`]; a truncated or foreign file is an error
    /// naming it.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(crate::io_err(path))?;
        let corrupt = |why: String| crate::TrainError::File { path: path.to_path_buf(), msg: format!("not a readable training state: {why}") };
        let (_, md) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let record = md.metadata().as_ref().and_then(|m| m.get(META_KEY)).ok_or_else(|| corrupt(format!("no {META_KEY} record")))?;
        let meta: serde_json::Map<String, serde_json::Value> = serde_json::from_str(record).map_err(|e| corrupt(e.to_string()))?;
        let version = meta.get("version").and_then(|v| v.as_u64());
        if version != Some(STATE_VERSION) {
            return Err(corrupt(format!("format version {version:?}, this sprig reads version {STATE_VERSION}")));
        }
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| corrupt(e.to_string()))?;
        Ok(Self { tensors: tensors.into_iter().collect(), meta })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_tensors_fields_and_exact_floats_and_refuses_a_truncated_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.safetensors");
        let mut s = TrainState::new();
        s.put_f32s("a", &[1.0, f32::MIN_POSITIVE, -3.5]).unwrap();
        s.put_bools("m", &[true, false, true]).unwrap();
        let x = 0.1f64 + 0.2;
        s.put_f64("x", x);
        s.put("step", &17usize).unwrap();
        s.put_part("hook", [("w".to_string(), Tensor::new(&[2f32, 4.], &Device::Cpu).unwrap())].into(), serde_json::json!({"k": 1})).unwrap();
        s.save(&p).unwrap();
        let r = TrainState::load(&p).unwrap();
        assert_eq!(r.f32s("a", 3).unwrap(), vec![1.0, f32::MIN_POSITIVE, -3.5]);
        assert_eq!(r.bools("m", 3).unwrap(), vec![true, false, true]);
        assert_eq!(r.get_f64("x").unwrap().to_bits(), x.to_bits());
        assert_eq!(r.get::<usize>("step").unwrap(), 17);
        let (t, m) = r.part("hook").unwrap();
        assert_eq!(t["w"].to_vec1::<f32>().unwrap(), vec![2., 4.]);
        assert_eq!(m["k"], 1);
        assert!(r.f32s("a", 4).is_err() && r.tensor("nope").is_err() && r.get::<usize>("nope").is_err());
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 7]).unwrap();
        let e = TrainState::load(&p).unwrap_err().to_string();
        assert!(e.contains("state.safetensors") && e.contains("not a readable training state"), "{e}");
    }
}
