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
    fault::point("create", &tmp)?;
    let mut f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    // A fault point stands for a crash at that step; a real error removes the temp file.
    let written = fault::point("write", &tmp)
        .and_then(|_| {
            f.write_all(data)
                .with_context(|| format!("cannot write {} (disk full?)", tmp.display()))
        })
        .and_then(|_| fault::point("fsync", &tmp))
        .and_then(|_| f.sync_all().with_context(|| format!("cannot sync {}", tmp.display())));
    drop(f);
    let done = written.and_then(|_| rename(&tmp, path));
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

/// `std::fs::rename` with a fault point and an error that names both paths.
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    fault::point("rename", from)?;
    std::fs::rename(from, to)
        .with_context(|| format!("cannot rename {} to {}", from.display(), to.display()))
}

/// fsync a directory so that renames inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fault::point("fsync dir", dir)?;
    File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync directory {}", dir.display()))
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
