//! The output directory of a run: one run at a time (a lock held for the run's life), no
//! fresh run over another run's checkpoints unless asked, and the run's wall time summed over
//! every invocation that worked on it.

use crate::fs::write_atomic;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The lock file inside an output directory.
pub const LOCK_FILE: &str = ".lock";

/// An exclusive lock on an output directory, held until dropped (or the process dies).
///
/// It is an OS file lock on `OUT/.lock`, so a run that was killed holds nothing: a lock file
/// left behind is stale by construction and is simply taken over. The file holds the pid of
/// the run that holds it, to name it in the refusal. The file is never deleted (deleting it
/// would let a third run lock a new file while a second still waits on the old one).
pub struct RunLock {
    _file: File,
}

impl RunLock {
    pub fn acquire(out: &Path) -> Result<Self> {
        let path = out.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                let who = if pid.is_empty() {
                    "another run".into()
                } else {
                    format!("another run (pid {pid})")
                };
                bail!(
                    "{}: {who} is using this output directory; wait for it to finish or stop it, or choose another --out",
                    out.display()
                );
            }
            Err(TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
                eprintln!(
                    "warning: {}: this file system has no file locks; make sure no other run uses this directory",
                    out.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
        file.set_len(0).and_then(|_| file.rewind())?;
        writeln!(file, "{}", std::process::id())?;
        file.flush()?;
        Ok(RunLock { _file: file })
    }
}

/// What a fresh run may find in its output directory and replace with `--overwrite`.
const RUN_OUTPUTS: &[&str] = &["sft", "rl", "metrics.jsonl", "report.json", TIME_FILE];

/// The checkpoint directories or `latest` pointers of another run under `out`'s `phases`
/// (`""`: `out` itself), if any.
fn checkpoints_in(out: &Path, phases: &[&str]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for phase in phases {
        let Ok(rd) = std::fs::read_dir(out.join(phase)) else { continue };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("checkpoint-") || name == "latest" {
                found.push(e.path());
            }
        }
    }
    found.sort();
    found
}

/// A fresh run into `out`: refuses when another run's checkpoints are there, unless
/// `overwrite`, which first removes that run's outputs (checkpoints, metrics, report).
pub fn prepare_fresh(out: &Path, overwrite: bool) -> Result<()> {
    let found = checkpoints_in(out, &["sft", "rl"]);
    if found.is_empty() && !overwrite {
        return Ok(());
    }
    if !overwrite {
        bail!(
            "{} holds another run's checkpoints ({}); continue it with `mmr1-fast train --resume {}`, choose another --out, or pass --overwrite to replace it",
            out.display(),
            found[0].display(),
            out.display()
        );
    }
    for name in RUN_OUTPUTS {
        let p = out.join(name);
        let r = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        match r {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("--overwrite: cannot remove {}", p.display()))
            }
        }
    }
    Ok(())
}

/// A fresh `mmr1-fast sft` run into `out`, which keeps its checkpoints in `out` itself: refused
/// when another run's checkpoints are there (the new run would truncate that run's
/// metrics.jsonl and leave its later checkpoints beside the new ones, for a resume to pick up),
/// unless `overwrite`, which first removes them and the metrics. The final model files
/// (config.json, model.safetensors) are left alone: `out` may also be the input model, and a
/// finished run replaces them.
pub fn prepare_fresh_sft(out: &Path, overwrite: bool) -> Result<()> {
    let found = checkpoints_in(out, &[""]);
    if found.is_empty() {
        return Ok(());
    }
    if !overwrite {
        bail!(
            "{} holds another run's checkpoints ({}); continue it with --resume, choose another --out, or pass --overwrite to replace it",
            out.display(),
            found[0].display()
        );
    }
    for p in found.iter().chain([&out.join("metrics.jsonl")]) {
        let r = if p.is_dir() { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) };
        match r {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("--overwrite: cannot remove {}", p.display()))
            }
        }
    }
    Ok(())
}

const TIME_FILE: &str = "time.json";

#[derive(Default, Serialize, Deserialize)]
struct TimeLedger {
    /// Wall seconds of every invocation, up to its last checkpoint of time.
    seconds: f64,
    invocations: u64,
}

/// The run's wall time over all invocations: the seconds of earlier ones (from
/// `OUT/time.json`) plus this one's. `mark` saves the total, so a killed invocation's time up
/// to its last mark still counts.
pub struct RunClock {
    path: PathBuf,
    before: f64,
    invocations: u64,
    start: Instant,
}

impl RunClock {
    /// A fresh run starts at 0; a resumed one continues the ledger.
    pub fn start(out: &Path, resume: bool) -> Result<Self> {
        let path = out.join(TIME_FILE);
        let prev: TimeLedger = match std::fs::read_to_string(&path) {
            Ok(t) if resume => serde_json::from_str(&t).unwrap_or_default(),
            _ => TimeLedger::default(),
        };
        let clock = RunClock {
            path,
            before: prev.seconds,
            invocations: prev.invocations + 1,
            start: Instant::now(),
        };
        clock.mark()?;
        Ok(clock)
    }

    pub fn total(&self) -> f64 {
        self.before + self.start.elapsed().as_secs_f64()
    }

    pub fn mark(&self) -> Result<()> {
        let l = TimeLedger { seconds: self.total(), invocations: self.invocations };
        write_atomic(&self.path, &serde_json::to_vec(&l)?)
    }
}
