//! A command's output directory written whole or not at all (`sprig finetune`, `sprig prune`),
//! and the resumable state a killed `sprig prune` leaves in it.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sprig_prune::checkpoint::{pid_in_name, process_alive};

use crate::run_dir::SUMMARY_FILE;

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

    /// [`StagedOut::begin`] for a run that saves its state in [`STATE_FILE`] as it goes
    /// (`sprig prune`). A staging directory of `out` left by a killed process, holding a state
    /// file and a `config_file` whose text is `config`, is taken over (renamed to this process)
    /// and `true` is returned: continue from its state. One with another config is refused,
    /// naming it and the first field that differs, so that saved work is never dropped silently.
    ///
    /// `resolve` maps a saved config's text to the text this version writes for it (parse, then
    /// serialize; `None` if it does not parse): a run started by an older version, whose file
    /// lacks a field added since with a default, is the same run and is resumed.
    pub fn begin_resumable(
        out: &Path,
        sources: &[(&str, &Path)],
        overwrite: bool,
        config_file: &str,
        config: &str,
        resolve: impl Fn(&str) -> Option<String>,
    ) -> Result<(StagedOut, bool)> {
        Self::check(out, sources, overwrite)?;
        let (parent, name) = parent_and_name(out)?;
        let mut found: Option<(std::time::SystemTime, PathBuf)> = None;
        for dir in dead_stages(&parent, &name)?.into_iter().filter(|d| d.join(STATE_FILE).is_file()) {
            let text = std::fs::read_to_string(dir.join(config_file)).with_context(|| format!("reading {}", dir.join(config_file).display()))?;
            let theirs = resolve(&text).unwrap_or(text);
            if theirs != config {
                let field = config_difference(&theirs, config).unwrap_or_else(|| "the text differs".into());
                bail!(
                    "{} holds an interrupted run of --out {} with another config ({field}); nothing was changed: resume it with --config {}, or delete that directory to start over",
                    dir.display(),
                    out.display(),
                    dir.join(config_file).display()
                );
            }
            let t = std::fs::metadata(dir.join(STATE_FILE)).and_then(|m| m.modified()).with_context(|| format!("reading {}", dir.display()))?;
            if found.as_ref().is_none_or(|(t0, _)| t > *t0) {
                found = Some((t, dir));
            }
        }
        let Some((_, from)) = found else { return Ok((Self::begin(out, sources, overwrite)?, false)) };
        let staged = Self::begin(out, sources, overwrite)?;
        // rename(2) replaces the new, empty staging directory.
        std::fs::rename(&from, &staged.stage).with_context(|| format!("taking over the interrupted run {}", from.display()))?;
        tracing::info!(from = %from.display(), dir = %staged.stage.display(), "resuming an interrupted run");
        Ok((staged, true))
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

/// The resumable state a run saves in its staging directory ([`StagedOut::begin_resumable`]).
pub const STATE_FILE: &str = "train-state.safetensors";

/// Staging directories `.NAME.partial-PID-*` in `parent` whose process is gone.
fn dead_stages(parent: &Path, name: &str) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(parent) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", parent.display())),
    };
    let partial = format!(".{name}.partial-");
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", parent.display()))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = pid_in_name(&file, &partial) {
            if !process_alive(pid) && entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The first field where two TOML configs differ ([`crate::run_dir::first_difference`]).
fn config_difference(old: &str, new: &str) -> Option<String> {
    let json = |s: &str| toml::from_str::<toml::Value>(s).ok().and_then(|v| serde_json::to_value(v).ok());
    crate::run_dir::first_difference(&json(old)?, &json(new)?)
}

/// Removes, beside `out`, the staging directories `.NAME.partial-PID-*` whose process is gone
/// (except resumable ones, holding a [`STATE_FILE`]: see [`StagedOut::begin_resumable`]),
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
        if !is_old && path.join(STATE_FILE).is_file() {
            // A killed run that can be resumed: only StagedOut::begin_resumable takes it over.
            continue;
        }
        std::fs::remove_dir_all(&path).with_context(|| format!("removing the stale staging directory {}", path.display()))?;
        tracing::info!(path = %path.display(), pid, "removed a staging directory left by an interrupted run (its process is gone)");
        removed.push(path);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(dir: &Path, tag: &str) {
        std::fs::create_dir_all(dir).unwrap();
        for f in FINISHED_RUN_FILES {
            std::fs::write(dir.join(f), tag).unwrap();
        }
    }

    /// A run interrupted under an older version (its config lacks a field added since, with a
    /// default) is resumed; one whose resolved config differs is refused by field.
    #[test]
    fn resumable_stage_is_compared_by_its_resolved_config() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("run");
        let stage = tmp.path().join(".run.partial-999999999-abcdef");
        std::fs::create_dir(&stage).unwrap();
        std::fs::write(stage.join(STATE_FILE), "state").unwrap();
        std::fs::write(stage.join("config.toml"), "lr = 0.1\n").unwrap();
        // Today's config has `layers`, defaulting to 0.
        let resolve = |t: &str| {
            let mut v: toml::Table = toml::from_str(t).ok()?;
            v.entry("layers").or_insert(toml::Value::Integer(0));
            toml::to_string(&v).ok()
        };
        let e = StagedOut::begin_resumable(&out, &[], false, "config.toml", "layers = 0\nlr = 0.2\n", resolve).unwrap_err().to_string();
        assert!(e.contains("`lr` is 0.1 there, 0.2 here") && stage.is_dir(), "{e}");
        let (s, resumed) = StagedOut::begin_resumable(&out, &[], false, "config.toml", "layers = 0\nlr = 0.1\n", resolve).unwrap();
        assert!(resumed && !stage.exists() && s.path().join(STATE_FILE).is_file());
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
