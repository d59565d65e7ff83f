//! File-system helpers shared by every writer of run outputs.
//!
//! Every file a run writes goes through `AtomicFile` (directly or via `write_atomic`): the data
//! goes to a temporary file beside the target, is fsynced, and only then renamed over the
//! target, so a crash leaves the old file or the new one, never a torn one. The file-system
//! calls themselves are the small functions at the end of this module (`create_file`,
//! `write_file`, `sync_file`, `rename_file`), so a test hook that fails the Nth of them sits in
//! one place.

use anyhow::{Context, Result};
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
        write_file(file, data)
            .with_context(|| format!("cannot write {} (disk full?)", self.tmp.display()))
    }

    /// Writes what is buffered, fsyncs, and renames the temporary file over the target.
    pub fn finish(mut self) -> Result<()> {
        self.flush()?;
        let file = self.file.take().expect("AtomicFile finished twice");
        sync_file(&file).with_context(|| format!("cannot sync {}", self.tmp.display()))?;
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
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(data)?;
    f.finish()
}

// ---- the file-system calls of every writer -----------------------------------------------

fn create_file(path: &Path) -> std::io::Result<File> {
    File::create(path)
}

fn write_file(file: &mut File, data: &[u8]) -> std::io::Result<()> {
    file.write_all(data)
}

fn sync_file(file: &File) -> std::io::Result<()> {
    file.sync_all()
}

fn rename_file(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::rename(from, to)
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
