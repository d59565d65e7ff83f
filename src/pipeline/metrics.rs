//! `metrics.jsonl`: one JSON object per line, flushed as written, so a crash loses nothing
//! already reported. On resume, lines of steps after the checkpoint are dropped, so no step
//! appears twice.

use anyhow::{Context, Result};
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens `dir/metrics.jsonl` for appending, first dropping every line whose
    /// (`phase`, `step`) comes after `keep_through` (the checkpoint being resumed), and any
    /// torn last line.
    pub fn open(dir: &Path, keep_through: Option<(&str, u64)>) -> Result<Self> {
        let path = dir.join("metrics.jsonl");
        if path.exists() {
            let f = File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let mut kept = String::new();
            for line in BufReader::new(f).lines() {
                let line = line?;
                let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
                if keep_through.is_none_or(|k| !after(&v, k)) {
                    kept.push_str(&line);
                    kept.push('\n');
                }
            }
            crate::fs::write_atomic(&path, kept.as_bytes())?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {} for writing", path.display()))?;
        Ok(MetricsLog { path, file })
    }

    pub fn write(&mut self, v: &Value) -> Result<()> {
        let mut line = serde_json::to_string(v)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .with_context(|| format!("cannot write {} (disk full?)", self.path.display()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Phases in run order. A record belongs to `phase` (an evaluation record to the phase named
/// by its `of`) at `step`; it is after the checkpoint when its phase is later, or the same
/// with a larger step.
fn after(v: &Value, (phase, step): (&str, u64)) -> bool {
    let order = |p: &str| ["sft", "rl"].iter().position(|x| *x == p);
    let p = v.get("of").or_else(|| v.get("phase")).and_then(|p| p.as_str()).and_then(order);
    let s = v.get("step").and_then(|s| s.as_u64());
    match (p, s, order(phase)) {
        (Some(a), Some(s), Some(b)) => a > b || (a == b && s > step),
        _ => false,
    }
}

/// Reads every record of a metrics file (for plots and reports).
pub fn read_metrics(path: &Path) -> Result<Vec<Value>> {
    let f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(BufReader::new(f)
        .lines()
        .map_while(|l| l.ok())
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect())
}
