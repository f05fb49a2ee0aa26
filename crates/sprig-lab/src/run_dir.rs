//! Run directories: one directory per experiment, described by its serde config.
//!
//! ```text
//! OUT/config.json    the experiment (written atomically once the config is valid and matches)
//! OUT/summary.json   the summary so far: `"complete": false` until the last unit of work is done
//! OUT/*.svg          plots, drawn by the experiment through a callback
//! OUT/...            the experiment's own units of work (checkpoints, JSON results)
//! ```
//!
//! [`RunDir::open`] is the one way in. In this order, it
//! 1. validates the config ([`RunConfig::validate`]) — a refused start writes nothing, so a
//!    corrected command is never blocked by the failed one;
//! 2. if `OUT/config.json` exists, compares its [`RunConfig::identity`] with the new config's and
//!    refuses a different experiment, naming the directory and the first differing field (fields
//!    outside the identity, e.g. `rounds`, `seeds`, `controls`, may change between starts);
//!    a non-empty directory without a config is refused too;
//! 3. removes temporary files left by a killed atomic save ([`clean_orphans`]);
//! 4. writes the new config.
//!
//! Every JSON file is written atomically ([`sprig_train::write_atomic`]: temp file, fsync, rename).
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
pub use crate::staged::{clean_stale_stages, StagedOut, FINISHED_RUN_FILES, STATE_FILE};

pub const CONFIG_FILE: &str = "config.json";
pub const SUMMARY_FILE: &str = "summary.json";

/// Name prefixes of temporary files and directories that atomic writers leave behind when killed:
/// `tempfile`'s default `.tmp` (used by [`sprig_train::write_atomic`]) and the sparse checkpoint's
/// `.sprig-ckpt-` (a directory being written) and `.sprig-old-` (a replaced checkpoint being removed).
pub const ORPHAN_PREFIXES: [&str; 3] = [".tmp", ".sprig-ckpt-", ".sprig-old-"];

/// A config that describes a run directory.
pub trait RunConfig: Serialize + DeserializeOwned {
    /// Checks every value; called before anything is written.
    fn validate(&self) -> Result<()> {
        Ok(())
    }

    /// The part of the config that names the experiment: two configs with the same identity may
    /// share a run directory. Default: the whole config. Use [`without_fields`] to let fields grow.
    fn identity(&self) -> Result<Value> {
        Ok(serde_json::to_value(self)?)
    }
}

/// `v` (a JSON object) without the named top-level fields; other values unchanged.
pub fn without_fields(mut v: Value, fields: &[&str]) -> Value {
    if let Value::Object(m) = &mut v {
        for f in fields {
            m.remove(*f);
        }
    }
    v
}

fn show(v: Option<&Value>) -> String {
    match v {
        None => "absent".to_string(),
        Some(v) => {
            let s = v.to_string();
            if s.len() > 80 { format!("{}...", &s[..s.char_indices().nth(77).map_or(s.len(), |c| c.0)]) } else { s }
        }
    }
}

fn diff_at(path: &str, old: Option<&Value>, new: Option<&Value>) -> Option<String> {
    let here = |p: &str| if p.is_empty() { "(the whole config)".to_string() } else { format!("`{p}`") };
    let join = |k: &str| if path.is_empty() { k.to_string() } else { format!("{path}.{k}") };
    match (old, new) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| diff_at(&join(k), a.get(k), b.get(k)))
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) if a.len() == b.len() => {
            (0..a.len()).find_map(|i| diff_at(&format!("{path}[{i}]"), a.get(i), b.get(i)))
        }
        (a, b) if a == b => None,
        (a, b) => Some(format!("{} is {} there, {} here", here(path), show(a), show(b))),
    }
}

/// The first field (in sorted key order, depth first) where `old` and `new` differ, as
/// "`train.lr` is 0.1 there, 0.2 here"; `None` when they are equal.
pub fn first_difference(old: &Value, new: &Value) -> Option<String> {
    diff_at("", Some(old), Some(new))
}

fn is_orphan(name: &std::ffi::OsStr) -> bool {
    let n = name.to_string_lossy();
    ORPHAN_PREFIXES.iter().any(|p| n.starts_with(p))
}

/// Removes, anywhere under `root`, the temporary files and directories named by [`ORPHAN_PREFIXES`]
/// (left by a killed atomic save). Symbolic links are not followed. Returns how many were removed.
pub fn clean_orphans(root: &Path) -> Result<usize> {
    let mut removed = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let path = entry.path();
            let ft = entry.file_type().with_context(|| format!("reading {}", path.display()))?;
            if is_orphan(&entry.file_name()) {
                if ft.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                }
                .with_context(|| format!("removing the leftover temporary {}", path.display()))?;
                tracing::info!(path = %path.display(), "removed a temporary file left by an interrupted save");
                removed += 1;
            } else if ft.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(removed)
}

/// An open run directory (see the module doc).
#[derive(Clone, Debug)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// Checks, writing nothing, that `cfg` may run in `root`: the config is valid, and `root` is
    /// absent, empty, or holds a config with the same identity (steps 1 and 2 of the module doc).
    /// Callers that load data before [`RunDir::open`] call this first, so that a refused start
    /// fails fast and a start whose loading fails leaves no `config.json` behind.
    pub fn check<C: RunConfig>(root: &Path, cfg: &C) -> Result<()> {
        cfg.validate().with_context(|| format!("invalid config for {}", root.display()))?;
        let new_id = cfg.identity()?;
        let cfg_path = root.join(CONFIG_FILE);
        if cfg_path.exists() {
            let bytes = std::fs::read(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?;
            let old: C = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} holds a different kind of experiment: its {CONFIG_FILE} does not parse", root.display()))?;
            if let Some(d) = first_difference(&old.identity()?, &new_id) {
                bail!("{} holds a different experiment: {d} (see its {CONFIG_FILE}); use another output directory", root.display());
            }
        } else if root.exists() {
            let entries = std::fs::read_dir(root).with_context(|| format!("listing {}", root.display()))?;
            for e in entries {
                let e = e.with_context(|| format!("listing {}", root.display()))?;
                if !is_orphan(&e.file_name()) {
                    bail!(
                        "{} is not empty and has no {CONFIG_FILE} (found {}): not a run directory; use another output directory",
                        root.display(),
                        e.file_name().to_string_lossy()
                    );
                }
            }
        }
        Ok(())
    }

    /// Opens or creates the run directory `root` for `cfg` (validate, check identity, clean
    /// orphans, write `config.json`; see the module doc). Nothing is written when it fails.
    pub fn open<C: RunConfig>(root: &Path, cfg: &C) -> Result<RunDir> {
        Self::check(root, cfg)?;
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        clean_orphans(root)?;
        sprig_train::write_json(&root.join(CONFIG_FILE), cfg)?;
        Ok(RunDir { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `root/rel`.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    /// Writes `value` as pretty JSON to `root/rel`, atomically.
    pub fn write_json<T: Serialize>(&self, rel: impl AsRef<Path>, value: &T) -> Result<()> {
        Ok(sprig_train::write_json(&self.path(rel), value)?)
    }

    /// Reads `root/rel` if it exists.
    pub fn read_json<T: DeserializeOwned>(&self, rel: impl AsRef<Path>) -> Result<Option<T>> {
        read_json(&self.path(rel))
    }

    /// Writes a summary to `root/rel` with a top-level `"complete"` field: `false` while units of
    /// work remain, `true` once the last one is done. An object gets the field added; any other
    /// value is wrapped as `{"complete": .., "summary": value}`.
    pub fn write_summary<T: Serialize>(&self, rel: impl AsRef<Path>, value: &T, complete: bool) -> Result<()> {
        let v = match serde_json::to_value(value)? {
            Value::Object(mut m) => {
                m.insert("complete".into(), Value::Bool(complete));
                Value::Object(m)
            }
            other => serde_json::json!({ "complete": complete, "summary": other }),
        };
        self.write_json(rel, &v)
    }

    /// Draws a plot through `draw` (which returns the SVG text, e.g. from plotters'
    /// `SVGBackend::with_string`) and writes it to `root/rel` atomically.
    pub fn write_plot(&self, rel: impl AsRef<Path>, draw: impl FnOnce() -> Result<String>) -> Result<()> {
        let path = self.path(rel);
        let svg = draw().with_context(|| format!("drawing {}", path.display()))?;
        Ok(sprig_train::write_atomic(&path, svg.as_bytes())?)
    }
}

/// Reads JSON from `path` if it exists (`None` when absent; an error naming the file when it does not parse).
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_difference_names_the_nested_field() {
        let a = serde_json::json!({"arch": "mlp", "train": {"lr": 0.1, "epochs": 2}, "seeds": [1, 2]});
        let b = serde_json::json!({"arch": "mlp", "train": {"lr": 0.2, "epochs": 2}, "seeds": [1, 2]});
        assert_eq!(first_difference(&a, &a), None);
        assert_eq!(first_difference(&a, &b).unwrap(), "`train.lr` is 0.1 there, 0.2 here");
        let c = serde_json::json!({"arch": "mlp", "train": {"lr": 0.1, "epochs": 2}, "seeds": [1, 2], "x": 1});
        assert_eq!(first_difference(&a, &c).unwrap(), "`x` is absent there, 1 here");
        let d = serde_json::json!({"arch": "mlp", "train": {"lr": 0.1, "epochs": 2}, "seeds": [1, 3]});
        assert_eq!(first_difference(&a, &d).unwrap(), "`seeds[1]` is 2 there, 3 here");
        assert_eq!(first_difference(&without_fields(a, &["seeds"]), &without_fields(d, &["seeds"])), None);
    }

}
