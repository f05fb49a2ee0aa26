//! Sparse checkpoints: a directory any Hugging Face loader can read plus sprig's masks.
//!
//! ```text
//! CKPT/model.safetensors   dense weights, exactly 0.0 at pruned positions (a plain safetensors file)
//! CKPT/masks.safetensors   one U8 tensor per masked parameter: its keep-bits, packed (bit i = bit i%8 of byte i/8)
//! CKPT/sprig.json          manifest: method, schedule, seed, parent sha256, sprig version,
//!                          per-tensor sparsity, and the sha256 of both files
//! ```
//! The directory is written next to its final place and renamed in, so readers never see half a checkpoint.
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

use crate::error::{PruneError, Result};
use crate::mask::{hex, Mask, MaskSet, TensorSparsity};

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const MASKS_FILE: &str = "masks.safetensors";
pub const MANIFEST_FILE: &str = "sprig.json";

/// What the caller says about a checkpoint.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct CheckpointMeta {
    /// E.g. "imp-magnitude-global" or "snip".
    pub method: String,
    /// The schedule (any serde value, typically a [`crate::Schedule`]).
    pub schedule: Option<serde_json::Value>,
    pub seed: Option<u64>,
    /// sha256 of the parent checkpoint's weights file (see [`weights_sha256`]).
    pub parent_sha256: Option<String>,
    /// Free-form extra fields (round, accuracy, ...).
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// The manifest stored as `sprig.json`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Manifest {
    pub sprig_version: String,
    #[serde(flatten)]
    pub meta: CheckpointMeta,
    pub weights_sha256: String,
    pub masks_sha256: String,
    /// Sparsity of every stored tensor (unmasked ones are dense).
    pub tensors: Vec<TensorSparsity>,
    pub prunable_sparsity: f64,
    pub model_sparsity: f64,
    /// Weights in masked tensors / in all tensors.
    #[serde(default)]
    pub prunable_numel: usize,
    #[serde(default)]
    pub model_numel: usize,
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct SparseCheckpoint {
    pub tensors: Vec<(String, Tensor)>,
    pub masks: MaskSet,
    pub manifest: Manifest,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PruneError + '_ {
    move |source| PruneError::Io { path: path.to_path_buf(), source }
}

fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// sha256 of a checkpoint's weights file: its identity as a parent.
pub fn weights_sha256(dir: &Path) -> Result<String> {
    let p = dir.join(WEIGHTS_FILE);
    Ok(sha256(&fs::read(&p).map_err(io(&p))?))
}

/// Saves `tensors` (zeroed at pruned positions) with `masks` and a manifest into directory `dir`,
/// atomically replacing an earlier checkpoint there. Every mask must name a tensor of the same shape.
pub fn save(dir: &Path, tensors: &[(String, Tensor)], masks: &MaskSet, meta: &CheckpointMeta) -> Result<Manifest> {
    let shapes: Vec<(String, Vec<usize>)> = tensors.iter().map(|(n, t)| (n.clone(), t.dims().to_vec())).collect();
    let report = masks.report(&shapes)?;
    let mut zeroed: Vec<(String, Tensor)> = Vec::with_capacity(tensors.len());
    for (n, t) in tensors {
        let t = match masks.get(n) {
            Some(m) => t.mul(&m.to_tensor(t.device())?.to_dtype(t.dtype())?)?,
            None => t.clone(),
        };
        zeroed.push((n.clone(), t));
    }
    let st_meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let weights = safetensors::serialize(zeroed.iter().map(|(n, t)| (n.as_str(), t)), Some(st_meta))
        .map_err(|e| PruneError::Candle(candle_core::Error::Msg(format!("safetensors: {e}"))))?;
    let packed: Vec<(String, Vec<u8>)> = masks.iter().map(|(n, m)| (n.clone(), m.to_bytes())).collect();
    let views = packed
        .iter()
        .map(|(n, b)| Ok((n.as_str(), safetensors::tensor::TensorView::new(safetensors::Dtype::U8, vec![b.len()], b)?)))
        .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()
        .and_then(|v| safetensors::serialize(v, None))
        .map_err(|e| PruneError::Candle(candle_core::Error::Msg(format!("safetensors: {e}"))))?;
    let manifest = Manifest {
        sprig_version: crate::VERSION.to_string(),
        meta: meta.clone(),
        weights_sha256: sha256(&weights),
        masks_sha256: sha256(&views),
        tensors: report.tensors,
        prunable_sparsity: report.prunable_sparsity,
        model_sparsity: report.model_sparsity,
        prunable_numel: report.prunable_numel,
        model_numel: report.model_numel,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| PruneError::Candle(candle_core::Error::Msg(e.to_string())))?;
    write_dir_atomically(dir, &[(WEIGHTS_FILE, &weights), (MASKS_FILE, &views), (MANIFEST_FILE, &json)])?;
    Ok(manifest)
}

/// Writes `files` into a fresh temp directory beside `dir`, then renames it to `dir`.
/// Refuses to replace an existing non-empty directory that is not a sprig checkpoint.
fn write_dir_atomically(dir: &Path, files: &[(&str, &[u8])]) -> Result<()> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io(&parent))?;
    if dir.exists() {
        let is_ckpt = dir.join(MANIFEST_FILE).exists();
        let empty = fs::read_dir(dir).map_err(io(dir))?.next().is_none();
        if !is_ckpt && !empty {
            return Err(PruneError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists and is not a sprig checkpoint; refusing to replace it"),
            });
        }
    }
    let tmp = tempfile::Builder::new().prefix(".sprig-ckpt-").tempdir_in(&parent).map_err(io(&parent))?;
    for (name, bytes) in files {
        let p = tmp.path().join(name);
        let mut f = fs::File::create(&p).map_err(io(&p))?;
        f.write_all(bytes).map_err(io(&p))?;
        f.sync_all().map_err(io(&p))?;
    }
    let tmp_path = tmp.keep();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // tempdirs are created 0700; a checkpoint should be as readable as any other output.
        fs::set_permissions(&tmp_path, fs::Permissions::from_mode(0o755)).map_err(io(&tmp_path))?;
    }
    if dir.exists() {
        let old = parent.join(format!(".sprig-old-{}", std::process::id()));
        let _ = fs::remove_dir_all(&old);
        fs::rename(dir, &old).map_err(io(dir))?;
        fs::rename(&tmp_path, dir).map_err(io(dir))?;
        fs::remove_dir_all(&old).map_err(io(&old))?;
    } else {
        fs::rename(&tmp_path, dir).map_err(io(dir))?;
    }
    Ok(())
}

/// Reads only the manifest of a checkpoint.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let p = dir.join(MANIFEST_FILE);
    let bytes = fs::read(&p).map_err(io(&p))?;
    serde_json::from_slice(&bytes).map_err(|e| PruneError::Corrupt { path: p, why: format!("bad manifest JSON: {e}") })
}

/// Loads a checkpoint, verifying hashes, mask sizes and padding, and that pruned weights are exactly 0
/// and kept ones finite ([`Mask::check_pruned_zero`]).
pub fn load(dir: &Path, device: &Device) -> Result<SparseCheckpoint> {
    let manifest = read_manifest(dir)?;
    let wp = dir.join(WEIGHTS_FILE);
    let mp = dir.join(MASKS_FILE);
    let wbytes = fs::read(&wp).map_err(io(&wp))?;
    let mbytes = fs::read(&mp).map_err(io(&mp))?;
    let corrupt = |p: &Path, why: String| PruneError::Corrupt { path: p.to_path_buf(), why };
    if sha256(&wbytes) != manifest.weights_sha256 {
        return Err(corrupt(&wp, "sha256 differs from the manifest".into()));
    }
    if sha256(&mbytes) != manifest.masks_sha256 {
        return Err(corrupt(&mp, "sha256 differs from the manifest".into()));
    }
    let st = safetensors::SafeTensors::deserialize(&wbytes).map_err(|e| corrupt(&wp, e.to_string()))?;
    let ms = safetensors::SafeTensors::deserialize(&mbytes).map_err(|e| corrupt(&mp, e.to_string()))?;
    let mut tensors = Vec::new();
    let mut masks = MaskSet::new();
    for ts in &manifest.tensors {
        let view = st.tensor(&ts.name).map_err(|e| corrupt(&wp, format!("tensor `{}`: {e}", ts.name)))?;
        if view.shape() != ts.shape.as_slice() {
            return Err(corrupt(&wp, format!("tensor `{}` has shape {:?}, manifest says {:?}", ts.name, view.shape(), ts.shape)));
        }
        let t = candle_core::safetensors::Load::load(&view, device)?;
        if ts.kept != ts.numel || ms.names().contains(&ts.name.as_str()) {
            let mv = ms.tensor(&ts.name).map_err(|e| corrupt(&mp, format!("mask `{}`: {e}", ts.name)))?;
            if mv.dtype() != safetensors::Dtype::U8 {
                return Err(corrupt(&mp, format!("mask `{}` is not U8", ts.name)));
            }
            let m = Mask::from_bytes(&ts.shape, mv.data()).map_err(|e| corrupt(&mp, format!("mask `{}`: {e}", ts.name)))?;
            if m.count_kept() != ts.kept {
                return Err(corrupt(&mp, format!("mask `{}` keeps {} weights, manifest says {}", ts.name, m.count_kept(), ts.kept)));
            }
            m.check_pruned_zero(&ts.name, &t).map_err(|e| corrupt(&wp, e.to_string()))?;
            masks.insert(ts.name.clone(), m);
        }
        tensors.push((ts.name.clone(), t));
    }
    for n in ms.names() {
        if masks.get(n).is_none() {
            return Err(corrupt(&mp, format!("mask `{n}` names no tensor of the manifest")));
        }
    }
    Ok(SparseCheckpoint { tensors, masks, manifest })
}
