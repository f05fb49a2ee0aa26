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
use sprig_prune::checkpoint::{pid_in_name, process_alive};

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

/// A command's output directory written whole or not at all (`sprig finetune`, `sprig prune`).
///
/// ```text
/// PARENT/.NAME.partial-PID-XXXXXX   the run being written (PID: the writing process)
/// PARENT/.NAME.old-PID-XXXXXX       a finished run being replaced (`--overwrite`), removed at once
/// PARENT/NAME                       the finished run (`summary.json` and `config.toml`)
/// ```
/// [`StagedOut::check`] (writes nothing) refuses an `--out` equal to or inside a source directory
/// (`--model`, `--teacher`) or holding one, and a non-empty `--out` unless it holds a finished run
/// and `overwrite` is given. [`StagedOut::begin`] checks again, removes staging directories of
/// `NAME` whose process is gone (a killed run), and creates the staging directory;
/// [`StagedOut::commit`] moves the run into place, replacing the old one only once the new one is
/// complete. Dropped uncommitted, the staging directory is removed ([`StagedOut::keep`] keeps it).
#[derive(Debug)]
pub struct StagedOut {
    out: PathBuf,
    stage: PathBuf,
    overwrite: bool,
    done: bool,
}

/// The files whose presence marks a finished run of `sprig finetune` / `sprig prune`.
pub const FINISHED_RUN_FILES: [&str; 2] = ["config.toml", SUMMARY_FILE];

fn parent_and_name(out: &Path) -> Result<(PathBuf, String)> {
    let name = out.file_name().and_then(|n| n.to_str()).with_context(|| format!("--out {} has no UTF-8 final component", out.display()))?;
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Ok((parent.to_path_buf(), name.to_string()))
}

/// `p` made absolute through its deepest existing ancestor (symbolic links resolved).
fn resolve(p: &Path) -> Result<PathBuf> {
    let abs = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().context("reading the current directory")?.join(p) };
    let mut probe = abs.clone();
    let mut rest = Vec::new();
    while !probe.exists() {
        match (probe.file_name().map(|n| n.to_os_string()), probe.parent()) {
            (Some(n), Some(parent)) => {
                rest.push(n);
                probe = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut r = probe.canonicalize().with_context(|| format!("resolving {}", probe.display()))?;
    for n in rest.into_iter().rev() {
        r.push(n);
    }
    Ok(r)
}

fn finished_run(dir: &Path) -> bool {
    FINISHED_RUN_FILES.iter().all(|f| dir.join(f).is_file())
}

impl StagedOut {
    /// Checks, writing nothing, that a run may write `out` (see the type doc). `sources` are the
    /// directories the run reads, by flag (`("--model", path)`); names that are not existing
    /// directories (hub ids, `none`) are skipped.
    pub fn check(out: &Path, sources: &[(&str, &Path)], overwrite: bool) -> Result<()> {
        Self::check_sources(out, sources)?;
        if out.exists() {
            if !out.is_dir() {
                bail!("--out {} exists and is not a directory; nothing was changed", out.display());
            }
            let empty = std::fs::read_dir(out).with_context(|| format!("listing {}", out.display()))?.next().is_none();
            if !empty {
                if !finished_run(out) {
                    bail!("--out {} is not empty and holds no finished run (no {}); nothing was changed (choose a new directory)", out.display(), FINISHED_RUN_FILES.join(" + "));
                }
                if !overwrite {
                    bail!("--out {} is not empty: it holds a finished run; nothing was changed (choose a new directory, or give --overwrite to replace it)", out.display());
                }
            }
        }
        Ok(())
    }

    /// Refuses an `out` equal to, inside or containing one of the `sources` directories (names
    /// that are not existing directories are skipped), whatever `--overwrite` says.
    pub fn check_sources(out: &Path, sources: &[(&str, &Path)]) -> Result<()> {
        let out_r = resolve(out)?;
        for (flag, src) in sources {
            if !src.is_dir() {
                continue;
            }
            let src_r = src.canonicalize().with_context(|| format!("resolving {}", src.display()))?;
            if out_r.starts_with(&src_r) {
                let how = if out_r == src_r { "is" } else { "is inside" };
                bail!("--out {} {how} {flag} {}: the run would overwrite its own source (refused even with --overwrite)", out.display(), src.display());
            }
            if src_r.starts_with(&out_r) {
                bail!("{flag} {} is inside --out {}: the run would overwrite its own source (refused even with --overwrite)", src.display(), out.display());
            }
        }
        Ok(())
    }

    /// Checks `out` again, removes stale staging directories of its name (their process is gone)
    /// and creates the staging directory the run is written into.
    pub fn begin(out: &Path, sources: &[(&str, &Path)], overwrite: bool) -> Result<StagedOut> {
        Self::check(out, sources, overwrite)?;
        let (parent, name) = parent_and_name(out)?;
        std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
        clean_stale_stages(out)?;
        let pid = std::process::id();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}.partial-{pid}-"))
            .tempdir_in(&parent)
            .with_context(|| format!("creating a staging directory in {}", parent.display()))?;
        let stage = tmp.keep();
        tracing::info!(dir = %stage.display(), "run in progress (moved to {} when done)", out.display());
        Ok(StagedOut { out: out.to_path_buf(), stage, overwrite, done: false })
    }

    /// The staging directory: write the run here.
    pub fn path(&self) -> &Path {
        &self.stage
    }

    /// Moves the finished run into `out`. An empty `out` is replaced; a finished run there is
    /// replaced (only when `overwrite` was given) by renaming it aside, renaming the new run in,
    /// then removing the old one. If `out` changed meanwhile, nothing is replaced and the new run
    /// stays in the staging directory, named in the error.
    pub fn commit(mut self) -> Result<()> {
        let (parent, name) = parent_and_name(&self.out)?;
        let keep_stage = |e: anyhow::Error, s: &mut StagedOut| {
            s.done = true;
            e.context(format!("the finished run is left in {}", s.stage.display()))
        };
        if let Err(e) = Self::check(&self.out, &[], self.overwrite) {
            return Err(keep_stage(e, &mut self));
        }
        let mut old = None;
        if self.out.exists() {
            if finished_run(&self.out) {
                let aside = tempfile::Builder::new()
                    .prefix(&format!(".{name}.old-{}-", std::process::id()))
                    .tempdir_in(&parent)
                    .with_context(|| format!("creating a directory in {}", parent.display()));
                let aside = match aside {
                    Ok(a) => a.keep(),
                    Err(e) => return Err(keep_stage(e, &mut self)),
                };
                // rename(2) replaces an empty directory: `aside` is one.
                if let Err(e) = std::fs::rename(&self.out, &aside) {
                    let _ = std::fs::remove_dir(&aside);
                    return Err(keep_stage(anyhow::Error::new(e).context(format!("moving the old run {} aside", self.out.display())), &mut self));
                }
                old = Some(aside);
            } else if let Err(e) = std::fs::remove_dir(&self.out) {
                return Err(keep_stage(anyhow::Error::new(e).context(format!("{} is no longer empty", self.out.display())), &mut self));
            }
        }
        if let Err(e) = std::fs::rename(&self.stage, &self.out) {
            let e = anyhow::Error::new(e).context(format!("moving the run into {}", self.out.display()));
            let e = match &old {
                Some(o) => match std::fs::rename(o, &self.out) {
                    Ok(()) => e.context("the old run was put back"),
                    Err(_) => e.context(format!("the old run is in {}", o.display())),
                },
                None => e,
            };
            return Err(keep_stage(e, &mut self));
        }
        self.done = true;
        if let Some(o) = old {
            std::fs::remove_dir_all(&o).with_context(|| format!("removing the replaced run {}", o.display()))?;
            tracing::info!(out = %self.out.display(), "replaced the finished run (--overwrite)");
        }
        Ok(())
    }

    /// Leaves the staging directory where it is (e.g. a failed run, for inspection) and returns
    /// its path; the next run with the same `out` removes it once this process is gone.
    pub fn keep(mut self) -> PathBuf {
        self.done = true;
        self.stage.clone()
    }
}

impl Drop for StagedOut {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.stage);
        }
    }
}

/// Removes, beside `out`, the staging directories `.NAME.partial-PID-*` whose process is gone,
/// and the replaced runs `.NAME.old-PID-*` of such processes once `out` exists again (if it does
/// not, the swap was interrupted and the old run is kept, with a warning). Directories of live
/// processes and names without a pid are left alone. Returns what was removed, each logged.
pub fn clean_stale_stages(out: &Path) -> Result<Vec<PathBuf>> {
    let (parent, name) = parent_and_name(out)?;
    let entries = match std::fs::read_dir(&parent) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", parent.display())),
    };
    let (partial, old) = (format!(".{name}.partial-"), format!(".{name}.old-"));
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", parent.display()))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        let (pid, is_old) = match (pid_in_name(&file, &partial), pid_in_name(&file, &old)) {
            (Some(p), _) => (p, false),
            (None, Some(p)) => (p, true),
            _ => continue,
        };
        let path = entry.path();
        if process_alive(pid) || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if is_old && !out.exists() {
            tracing::warn!(path = %path.display(), "an interrupted --overwrite left the previous run here; {} is missing, so it is kept", out.display());
            continue;
        }
        std::fs::remove_dir_all(&path).with_context(|| format!("removing the stale staging directory {}", path.display()))?;
        tracing::info!(path = %path.display(), pid, "removed a staging directory left by an interrupted run (its process is gone)");
        removed.push(path);
    }
    Ok(removed)
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

    fn finished(dir: &Path, tag: &str) {
        std::fs::create_dir_all(dir).unwrap();
        for f in FINISHED_RUN_FILES {
            std::fs::write(dir.join(f), tag).unwrap();
        }
    }

    #[test]
    fn staged_out_refuses_sources_and_foreign_dirs_and_overwrites_only_when_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let model = tmp.path().join("model");
        std::fs::create_dir(&model).unwrap();
        let src = [("--model", model.as_path())];
        for (out, overwrite) in [(model.clone(), true), (model.join("inner"), true), (tmp.path().to_path_buf(), true)] {
            let e = StagedOut::check(&out, &src, overwrite).unwrap_err().to_string();
            assert!(e.contains("--model") && e.contains("refused even with --overwrite"), "{e}");
        }
        let out = tmp.path().join("run");
        StagedOut::check(&out, &src, false).unwrap();
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("precious.txt"), "x").unwrap();
        let e = StagedOut::check(&out, &src, true).unwrap_err().to_string();
        assert!(e.contains("no finished run"), "{e}");
        std::fs::remove_file(out.join("precious.txt")).unwrap();
        finished(&out, "old");
        let e = StagedOut::check(&out, &src, false).unwrap_err().to_string();
        assert!(e.contains("finished run") && e.contains("--overwrite"), "{e}");
        // With overwrite: the old run stays whole until the new one is committed.
        let s = StagedOut::begin(&out, &src, true).unwrap();
        finished(s.path(), "new");
        assert_eq!(std::fs::read_to_string(out.join(SUMMARY_FILE)).unwrap(), "old");
        s.commit().unwrap();
        assert_eq!(std::fs::read_to_string(out.join(SUMMARY_FILE)).unwrap(), "new");
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 2, "{left:?}");
        // An uncommitted stage is removed when dropped; a kept one stays.
        let s = StagedOut::begin(&tmp.path().join("other"), &src, false).unwrap();
        let p = s.path().to_path_buf();
        drop(s);
        assert!(!p.exists());
        let s = StagedOut::begin(&tmp.path().join("other"), &src, false).unwrap();
        let p = s.keep();
        assert!(p.exists() && !tmp.path().join("other").exists());
    }

    #[test]
    fn stale_stages_of_dead_processes_are_removed_live_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("run");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let me = std::process::id();
        let names = [
            (".run.partial-999999999-abc".to_string(), false),
            (format!(".run.partial-{dead}-abc"), false),
            (format!(".run.partial-{me}-abc"), true),   // a live process
            (".other.partial-999999999-abc".to_string(), true), // another output's
            (".run.partial-abcdef".to_string(), true),  // no pid: cannot tell
            (".run.old-999999999-abc".to_string(), true), // `run` is missing: the old run is kept
        ];
        for (n, _) in &names {
            std::fs::create_dir(tmp.path().join(n)).unwrap();
        }
        let s = StagedOut::begin(&out, &[], false).unwrap();
        for (n, kept) in &names {
            assert_eq!(tmp.path().join(n).exists(), *kept, "{n}");
        }
        finished(s.path(), "new");
        s.commit().unwrap();
        // Once `run` exists, a dead process's replaced run goes too.
        assert_eq!(clean_stale_stages(&out).unwrap(), vec![tmp.path().join(".run.old-999999999-abc")]);
    }
}
