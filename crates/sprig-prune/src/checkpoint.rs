//! Sparse checkpoints: a directory any Hugging Face loader can read plus sprig's masks.
//!
//! ```text
//! CKPT/model.safetensors   dense weights, exactly 0.0 at pruned positions (a plain safetensors file)
//! CKPT/masks.safetensors   one U8 tensor per masked parameter: its keep-bits, packed (bit i = bit i%8 of byte i/8)
//! CKPT/sprig.json          manifest: method, schedule, seed, parent sha256, sprig version,
//!                          per-tensor sparsity, the sha256 of both files and of the manifest itself
//! ```
//! The directory is written next to its final place and renamed in, so readers never see half a
//! checkpoint. The temporaries of that write are named `.sprig-ckpt-PID-XXXXXX` (the directory
//! being written) and `.sprig-old-PID` (the replaced checkpoint being removed), PID being the
//! writing process; [`save`] removes those of processes that are gone (a killed save).
//!
//! ## What [`load`] verifies
//! The sha256 of both files; mask sizes and padding; exact zeros at pruned positions and finite
//! kept weights (every weight of an unmasked tensor is kept); every tensor of the weights file
//! listed once; and every number of the manifest (per-tensor `numel`, `kept`, `sparsity`;
//! `prunable_sparsity`, `model_sparsity`, `prunable_numel`, `model_numel`) recomputed from the
//! masks and weights: a manifest that disagrees is refused, naming the field and both values.
//!
//! ## The manifest hash
//! `manifest_sha256` is the sha256 (lower-case hex) of the manifest's canonical JSON without the
//! `manifest_sha256` field: `sprig.json` parsed as JSON, that field removed, and written back
//! compactly: no whitespace, object keys sorted by their UTF-8 bytes, arrays in order, strings and
//! numbers as serde_json writes them (numbers as shortest round-trip decimals, e.g. `0.8`, `1e-5`).
//! [`manifest_sha256`] computes it. Manifests written before the field existed have none: they
//! still load, and [`SparseCheckpoint::manifest_hashed`] is false. The hash detects an edited or
//! damaged manifest; it is not a signature (anyone can recompute it), which is why [`load`] also
//! recomputes the manifest's numbers.
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

use crate::error::{PruneError, Result};
use crate::mask::{hex, Mask, MaskSet, SparsityReport, TensorSparsity};
use serde_json::Value;

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const MASKS_FILE: &str = "masks.safetensors";
pub const MANIFEST_FILE: &str = "sprig.json";
/// Name prefix of a checkpoint directory being written (`.sprig-ckpt-PID-XXXXXX`).
pub const WRITING_PREFIX: &str = ".sprig-ckpt-";
/// Name prefix of a replaced checkpoint being removed (`.sprig-old-PID`).
pub const REPLACED_PREFIX: &str = ".sprig-old-";

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
    /// sha256 of the manifest's canonical JSON without this field (see the module doc); absent
    /// in manifests written by older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_sha256: Option<String>,
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct SparseCheckpoint {
    pub tensors: Vec<(String, Tensor)>,
    pub masks: MaskSet,
    pub manifest: Manifest,
    /// Per-tensor and total sparsity recomputed from the masks and weights (equal to the
    /// manifest's numbers, which [`load`] checked).
    pub report: SparsityReport,
    /// Whether the manifest carried a `manifest_sha256` (checked); false for manifests written by
    /// older versions.
    pub manifest_hashed: bool,
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
    let mut manifest = Manifest {
        sprig_version: crate::VERSION.to_string(),
        meta: meta.clone(),
        weights_sha256: sha256(&weights),
        masks_sha256: sha256(&views),
        tensors: report.tensors,
        prunable_sparsity: report.prunable_sparsity,
        model_sparsity: report.model_sparsity,
        prunable_numel: report.prunable_numel,
        model_numel: report.model_numel,
        manifest_sha256: None,
    };
    let json_err = |e: serde_json::Error| PruneError::Candle(candle_core::Error::Msg(e.to_string()));
    // Hash what a reader parses: the JSON text read back, so that load recomputes the same value.
    let unhashed: Value = serde_json::from_slice(&serde_json::to_vec(&manifest).map_err(json_err)?).map_err(json_err)?;
    manifest.manifest_sha256 = Some(manifest_sha256(&unhashed));
    let json = serde_json::to_vec_pretty(&manifest).map_err(json_err)?;
    write_dir_atomically(dir, &[(WEIGHTS_FILE, &weights), (MASKS_FILE, &views), (MANIFEST_FILE, &json)])?;
    Ok(manifest)
}

/// The sha256 of `manifest` (a parsed `sprig.json`) as `manifest_sha256` records it: of its
/// canonical JSON without that field (see the module doc).
pub fn manifest_sha256(manifest: &Value) -> String {
    let mut v = manifest.clone();
    if let Value::Object(m) = &mut v {
        m.remove("manifest_sha256");
    }
    let mut text = String::new();
    canonical_json(&v, &mut text);
    sha256(text.as_bytes())
}

/// Compact JSON with object keys sorted by their bytes.
fn canonical_json(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical_json(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The process id a temporary's name records after `prefix` (`PREFIX{pid}` or
/// `PREFIX{pid}-{anything}`); `None` when the name has no such pid.
pub fn pid_in_name(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let digits = rest.split('-').next()?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether process `pid` may still be running. Linux: `/proc/PID` exists; where that cannot be
/// told (no `/proc`), true, so that nothing of a possibly live process is removed.
pub fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() || !Path::new("/proc/self").exists() {
        return true;
    }
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes from `parent` the temporaries of interrupted checkpoint saves (`.sprig-ckpt-PID-*`,
/// `.sprig-old-PID`) whose process is gone; a temporary that cannot be removed is only logged.
fn clean_stale_temporaries(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = [WRITING_PREFIX, REPLACED_PREFIX].iter().find_map(|p| pid_in_name(&name, p)) else { continue };
        if process_alive(pid) || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = e.path();
        match fs::remove_dir_all(&path) {
            Ok(()) => tracing::info!(path = %path.display(), pid, "removed the temporary of an interrupted checkpoint save (its process is gone)"),
            Err(err) => tracing::warn!(path = %path.display(), pid, "could not remove the temporary of an interrupted checkpoint save: {err}"),
        }
    }
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
    clean_stale_temporaries(&parent);
    let pid = std::process::id();
    let tmp = tempfile::Builder::new().prefix(&format!("{WRITING_PREFIX}{pid}-")).tempdir_in(&parent).map_err(io(&parent))?;
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
        let old = parent.join(format!("{REPLACED_PREFIX}{pid}"));
        let _ = fs::remove_dir_all(&old);
        fs::rename(dir, &old).map_err(io(dir))?;
        fs::rename(&tmp_path, dir).map_err(io(dir))?;
        fs::remove_dir_all(&old).map_err(io(&old))?;
    } else {
        fs::rename(&tmp_path, dir).map_err(io(dir))?;
    }
    Ok(())
}

fn read_manifest_value(dir: &Path) -> Result<(Value, Manifest)> {
    let p = dir.join(MANIFEST_FILE);
    let bytes = fs::read(&p).map_err(io(&p))?;
    let bad = |e: serde_json::Error| PruneError::Corrupt { path: p.clone(), why: format!("bad manifest JSON: {e}") };
    let raw: Value = serde_json::from_slice(&bytes).map_err(bad)?;
    let manifest = serde_json::from_value(raw.clone()).map_err(bad)?;
    Ok((raw, manifest))
}

/// Reads only the manifest of a checkpoint (nothing verified: see [`load`]).
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    Ok(read_manifest_value(dir)?.1)
}

/// Equal up to the rounding of a JSON round trip.
fn same(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9
}

/// Loads a checkpoint, verifying everything listed in the module doc: file hashes, mask sizes and
/// padding, exact zeros at pruned positions and finite kept weights ([`Mask::check_pruned_zero`]),
/// the manifest's numbers recomputed from masks and weights, and the manifest hash when present.
pub fn load(dir: &Path, device: &Device) -> Result<SparseCheckpoint> {
    let (raw, manifest) = read_manifest_value(dir)?;
    let manp = dir.join(MANIFEST_FILE);
    let wp = dir.join(WEIGHTS_FILE);
    let mp = dir.join(MASKS_FILE);
    let wbytes = fs::read(&wp).map_err(io(&wp))?;
    let mbytes = fs::read(&mp).map_err(io(&mp))?;
    let corrupt = |p: &Path, why: String| PruneError::Corrupt { path: p.to_path_buf(), why };
    let disagree = |field: String, claimed: &dyn std::fmt::Display, actual: &dyn std::fmt::Display| {
        corrupt(&manp, format!("field {field} is {claimed}, but the masks and weights give {actual}"))
    };
    if sha256(&wbytes) != manifest.weights_sha256 {
        return Err(corrupt(&wp, "sha256 differs from the manifest".into()));
    }
    if sha256(&mbytes) != manifest.masks_sha256 {
        return Err(corrupt(&mp, "sha256 differs from the manifest".into()));
    }
    let st = safetensors::SafeTensors::deserialize(&wbytes).map_err(|e| corrupt(&wp, e.to_string()))?;
    let ms = safetensors::SafeTensors::deserialize(&mbytes).map_err(|e| corrupt(&mp, e.to_string()))?;
    let mask_names: HashSet<&str> = ms.names().into_iter().collect();
    let mut tensors = Vec::new();
    let mut shapes = Vec::new();
    let mut masks = MaskSet::new();
    let mut listed = HashSet::new();
    for (i, ts) in manifest.tensors.iter().enumerate() {
        if !listed.insert(ts.name.as_str()) {
            return Err(corrupt(&manp, format!("tensor `{}` is listed twice", ts.name)));
        }
        let view = st.tensor(&ts.name).map_err(|e| corrupt(&wp, format!("tensor `{}`: {e}", ts.name)))?;
        if view.shape() != ts.shape.as_slice() {
            return Err(corrupt(&wp, format!("tensor `{}` has shape {:?}, manifest says {:?}", ts.name, view.shape(), ts.shape)));
        }
        let numel: usize = ts.shape.iter().product();
        if ts.numel != numel {
            return Err(disagree(format!("tensors[{i}].numel (`{}`)", ts.name), &ts.numel, &numel));
        }
        let t = candle_core::safetensors::Load::load(&view, device)?;
        let kept = if mask_names.contains(ts.name.as_str()) {
            let mv = ms.tensor(&ts.name).map_err(|e| corrupt(&mp, format!("mask `{}`: {e}", ts.name)))?;
            if mv.dtype() != safetensors::Dtype::U8 {
                return Err(corrupt(&mp, format!("mask `{}` is not U8", ts.name)));
            }
            let m = Mask::from_bytes(&ts.shape, mv.data()).map_err(|e| corrupt(&mp, format!("mask `{}`: {e}", ts.name)))?;
            m.check_pruned_zero(&ts.name, &t).map_err(|e| corrupt(&wp, e.to_string()))?;
            let kept = m.count_kept();
            masks.insert(ts.name.clone(), m);
            kept
        } else {
            // Unmasked: every weight is kept, so every weight must be finite.
            Mask::ones(&ts.shape).check_pruned_zero(&ts.name, &t).map_err(|e| corrupt(&wp, e.to_string()))?;
            numel
        };
        if ts.kept != kept {
            return Err(disagree(format!("tensors[{i}].kept (`{}`)", ts.name), &ts.kept, &kept));
        }
        let sparsity = if numel == 0 { 0.0 } else { 1.0 - kept as f64 / numel as f64 };
        if !same(ts.sparsity, sparsity) {
            return Err(disagree(format!("tensors[{i}].sparsity (`{}`)", ts.name), &ts.sparsity, &sparsity));
        }
        shapes.push((ts.name.clone(), ts.shape.clone()));
        tensors.push((ts.name.clone(), t));
    }
    for n in ms.names() {
        if masks.get(n).is_none() {
            return Err(corrupt(&mp, format!("mask `{n}` names no tensor of the manifest")));
        }
    }
    for n in st.names() {
        if !listed.contains(n) {
            return Err(corrupt(&manp, format!("{WEIGHTS_FILE} holds tensor `{n}`, which the manifest does not list")));
        }
    }
    let report = masks.report(&shapes)?;
    for (field, claimed, actual) in [("prunable_sparsity", manifest.prunable_sparsity, report.prunable_sparsity), ("model_sparsity", manifest.model_sparsity, report.model_sparsity)] {
        if !same(claimed, actual) {
            return Err(disagree(field.into(), &claimed, &actual));
        }
    }
    // Older manifests may lack the totals (read as 0); a present one must be right.
    for (field, claimed, actual) in [("prunable_numel", manifest.prunable_numel, report.prunable_numel), ("model_numel", manifest.model_numel, report.model_numel)] {
        if raw.get(field).is_some() && claimed != actual {
            return Err(disagree(field.into(), &claimed, &actual));
        }
    }
    let manifest_hashed = match raw.get("manifest_sha256") {
        None => false,
        Some(Value::String(claimed)) => {
            let actual = manifest_sha256(&raw);
            if *claimed != actual {
                return Err(corrupt(&manp, format!("field manifest_sha256 is {claimed}, but the manifest hashes to {actual} (edited or damaged)")));
            }
            true
        }
        Some(other) => return Err(corrupt(&manp, format!("field manifest_sha256 is {other}, not a hex string"))),
    };
    Ok(SparseCheckpoint { tensors, masks, manifest, report, manifest_hashed })
}
