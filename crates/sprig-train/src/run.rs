//! Run directories: atomic file writes, JSONL metrics, progress bars.
use crate::error::{Context, Result};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Write `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename.
/// A crash leaves either the old file or the new one, never a partial file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating directory {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    tmp.as_file().sync_all().with_context(|| format!("syncing {}", path.display()))?;
    // Temporary files are created 0600; a result file should be readable like any other.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    tmp.persist(path).map_err(|e| e.error).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

/// Serialize `value` as pretty JSON into `path`, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut s = serde_json::to_string_pretty(value)?;
    s.push('\n');
    write_atomic(path, s.as_bytes())
}

/// Appends one JSON object per line (`metrics.jsonl`); each line is flushed as it is written.
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
    len: u64,
}

impl MetricsLog {
    pub fn create(path: &Path) -> Result<Self> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path: path.to_path_buf(), file, len: 0 })
    }

    /// Opens an existing log to append to (a resumed run; see [`MetricsLog::truncate`]).
    pub fn append(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new().write(true).open(path).with_context(|| format!("opening {}", path.display()))?;
        let len = file.metadata().with_context(|| format!("reading {}", path.display()))?.len();
        let mut log = Self { path: path.to_path_buf(), file, len };
        log.truncate(len)?;
        Ok(log)
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Cuts the log back to its first `len` bytes (what it held when a resumed run's state was
    /// saved) and appends from there.
    pub fn truncate(&mut self, len: u64) -> Result<()> {
        use std::io::Seek;
        let have = self.file.metadata().with_context(|| format!("reading {}", self.path.display()))?.len();
        if len > have {
            bail!("{} holds {have} bytes, fewer than the {len} the saved training state expects", self.path.display());
        }
        self.file.set_len(len).with_context(|| format!("truncating {}", self.path.display()))?;
        self.file.seek(std::io::SeekFrom::Start(len)).with_context(|| format!("seeking {}", self.path.display()))?;
        self.len = len;
        Ok(())
    }

    pub fn log<T: Serialize>(&mut self, record: &T) -> Result<()> {
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).with_context(|| format!("writing {}", self.path.display()))?;
        self.file.flush()?;
        self.len += line.len() as u64;
        Ok(())
    }
}

/// A progress bar for `total` steps that shows loss and examples/s; hidden when stderr is not a
/// terminal (logs via `tracing` still report progress).
pub fn progress_bar(total: u64, prefix: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr());
    pb.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{elapsed_precise}<{eta_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("valid template"),
    );
    pb.set_prefix(prefix.to_string());
    pb
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn atomic_write_replaces_whole_file() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("sub/a.json");
        write_json(&p, &serde_json::json!({"x": 1}))?;
        write_json(&p, &serde_json::json!({"x": 2}))?;
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p)?)?;
        assert_eq!(v["x"], 2);
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(p.parent().unwrap())?.count(), 1);
        Ok(())
    }
}
