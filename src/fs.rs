//! File-system helpers shared by every writer of run outputs.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Writes `data` to `path` through a temporary file, fsync and rename.
/// On any failure the temporary file is removed: a failed write leaves nothing behind.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    if path.is_dir() {
        bail!("{} is a directory, not a file path", path.display());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp =
        dir.join(format!(".{}.tmp", path.file_name().and_then(|s| s.to_str()).unwrap_or("file")));
    let mut f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let written = f
        .write_all(data)
        .with_context(|| format!("cannot write {} (disk full?)", tmp.display()))
        .and_then(|_| f.sync_all().with_context(|| format!("cannot sync {}", tmp.display())));
    drop(f);
    let done = written.and_then(|_| {
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
    });
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}
