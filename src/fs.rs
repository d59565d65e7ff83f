//! File-system helpers shared by every writer of run outputs.
//!
//! Every file a run writes goes through `AtomicFile` (directly or via `write_atomic`): the data
//! goes to a temporary file beside the target, is fsynced, and only then renamed over the
//! target, so a crash leaves the old file or the new one, never a torn one. The file-system
//! calls themselves are the small functions at the end of this module (`create_file`,
//! `write_file`, `sync_file`, `rename_file`), so a test hook that fails the Nth of them sits in
//! one place.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Bytes gathered before one write call: large enough that a checkpoint is written in few
/// system calls, small next to any tensor worth streaming.
const BUF_BYTES: usize = 1 << 20;

/// A file written under a temporary name and renamed into place by `finish`. Dropped without
/// `finish` (an error on the way), it removes its temporary file and leaves the target alone.
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
    buf: Vec<u8>,
}

impl AtomicFile {
    /// Creates `.{name}.tmp` beside `path` (replacing a stale one).
    pub fn create(path: &Path) -> Result<Self> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = path.file_name().and_then(|s| s.to_str()).unwrap_or("file");
        let tmp = dir.join(format!(".{name}.tmp"));
        let file = create_file(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            tmp,
            file: Some(file),
            buf: Vec::with_capacity(BUF_BYTES),
        })
    }

    /// Appends `data` (buffered; large slices go straight to the file).
    pub fn write_all(&mut self, data: &[u8]) -> Result<()> {
        if self.buf.len() + data.len() > BUF_BYTES {
            self.flush()?;
        }
        if data.len() >= BUF_BYTES {
            self.write_now(data)
        } else {
            self.buf.extend_from_slice(data);
            Ok(())
        }
    }

    fn flush(&mut self) -> Result<()> {
        let buf = std::mem::take(&mut self.buf);
        let r = self.write_now(&buf);
        self.buf = buf;
        self.buf.clear();
        r
    }

    fn write_now(&mut self, data: &[u8]) -> Result<()> {
        let file = self.file.as_mut().expect("AtomicFile used after finish");
        write_file(file, data, &self.tmp)
            .with_context(|| format!("cannot write {} (disk full?)", self.tmp.display()))
    }

    /// Writes what is buffered, fsyncs, and renames the temporary file over the target.
    pub fn finish(mut self) -> Result<()> {
        self.flush()?;
        let file = self.file.take().expect("AtomicFile finished twice");
        sync_file(&file, &self.tmp)
            .with_context(|| format!("cannot sync {}", self.tmp.display()))?;
        drop(file);
        rename_file(&self.tmp, &self.path).with_context(|| {
            format!("cannot rename {} to {}", self.tmp.display(), self.path.display())
        })
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            // Not finished: an error is on its way up; do not leave the partial file behind.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `data` to `path` through a temporary file, fsync and rename.
/// On any failure the temporary file is removed: a failed write leaves nothing behind.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    if path.is_dir() {
        bail!("{} is a directory, not a file path", path.display());
    }
    let mut f = AtomicFile::create(path)?;
    f.write_all(data)?;
    f.finish()
}

/// Copies each of `names` that is a file in `src` to `dir`, atomically each (the files that
/// travel with a model directory: tokenizer, chat template, preprocessor settings).
pub fn copy_present<'a>(
    src: &Path,
    dir: &Path,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<()> {
    for name in names {
        let p = src.join(name);
        if p.is_file() {
            let data = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
            write_atomic(&dir.join(name), &data)?;
        }
    }
    Ok(())
}

/// `std::fs::rename` with a fault point and an error that names both paths.
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    rename_file(from, to)
        .with_context(|| format!("cannot rename {} to {}", from.display(), to.display()))
}

/// fsync a directory so that renames inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fault::point("fsync dir", dir)?;
    File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync directory {}", dir.display()))
}

// ---- the file-system calls of every writer, each a fault point (see `fault`) --------------

fn create_file(path: &Path) -> Result<File> {
    fault::point("create", path)?;
    Ok(File::create(path)?)
}

fn write_file(file: &mut File, data: &[u8], path: &Path) -> Result<()> {
    fault::point("write", path)?;
    Ok(file.write_all(data)?)
}

fn sync_file(file: &File, path: &Path) -> Result<()> {
    fault::point("fsync", path)?;
    Ok(file.sync_all()?)
}

fn rename_file(from: &Path, to: &Path) -> Result<()> {
    fault::point("rename", from)?;
    Ok(std::fs::rename(from, to)?)
}

/// Fault injection for crash-safety tests (test-only; unarmed it costs one thread-local read
/// per file-system step). Every step of a save that can be interrupted by a crash calls
/// [`point`]; a test arms the thread with [`fail_at`]`(n)` and the `n`-th point reached from
/// then on (0-based) returns an error instead of doing its step, which is what a kill at that
/// moment leaves on disk. The counter is per thread, so tests running in parallel threads do
/// not disturb each other; a writer that spawns threads does not see the arming.
pub mod fault {
    use anyhow::{bail, Result};
    use std::cell::Cell;
    use std::path::Path;

    thread_local! {
        /// (armed at point, points passed since the last `fail_at` / `count`).
        static STATE: Cell<(Option<u64>, u64)> = const { Cell::new((None, 0)) };
    }

    /// Arms this thread: the `n`-th fault point from now fails (0 = the next one).
    pub fn fail_at(n: u64) {
        STATE.with(|s| s.set((Some(n), 0)));
    }

    /// Disarms this thread and restarts the count (to count the points of an operation, call
    /// it before and read [`passed`] after).
    pub fn disarm() {
        STATE.with(|s| s.set((None, 0)));
    }

    /// Fault points passed on this thread since the last [`fail_at`] / [`disarm`].
    pub fn passed() -> u64 {
        STATE.with(|s| s.get().1)
    }

    /// One interruptible step (`what` on `path`): an error when this thread is armed at it.
    /// A fault fires once; the thread is disarmed after it.
    pub fn point(what: &str, path: &Path) -> Result<()> {
        let (armed, n) = STATE.with(|s| s.get());
        if armed == Some(n) {
            STATE.with(|s| s.set((None, n + 1)));
            bail!("injected fault #{n}: {what} {}", path.display());
        }
        STATE.with(|s| s.set((armed, n + 1)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_file_writes_all_and_cleans_up_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        std::fs::write(&path, b"old").unwrap();
        // Small writes, one larger than the buffer, then small again: order is kept.
        let big: Vec<u8> = (0..BUF_BYTES * 2 + 3).map(|i| (i % 251) as u8).collect();
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"head").unwrap();
        f.write_all(&big).unwrap();
        f.write_all(b"tail").unwrap();
        // Not visible before finish.
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        f.finish().unwrap();
        let mut want = b"head".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"tail");
        assert_eq!(std::fs::read(&path).unwrap(), want);

        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"partial").unwrap();
        drop(f);
        assert_eq!(std::fs::read(&path).unwrap(), want, "an unfinished file replaced the target");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "the temporary file was left behind");
    }
}
