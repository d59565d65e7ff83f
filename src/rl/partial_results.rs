//! A long run's finished batches (an evaluation's item results, a scoring pass's graded
//! rollouts), kept on disk as they finish, so that a crash, a kill or a preemption loses at
//! most the batch being decoded. `eval --out FILE` and `score --out FILE` keep them in
//! `FILE.partial`: a header line naming the run (a [`fingerprint`] of the model files, the
//! items, the backend and every flag that changes a response), then one line per finished
//! item, appended and synced batch by batch. The next run with the same fingerprint continues
//! after the last whole batch (each batch's seeds are those of a whole run,
//! `graded::sample_and_grade_batches`, so the results are the ones an uninterrupted run
//! writes); another fingerprint is an error rather than a silent restart. When the run has
//! written its outputs, the partial file is removed.

use crate::data::rl_items::RlItem;
use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The first line of a partial file.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Header {
    /// What made the results (see [`Partial::open`]).
    mmr1_partial: String,
    /// Items of the whole run, and per batch.
    items: usize,
    batch_items: usize,
}

/// What a run's responses depend on: the model directory's files (names, sizes and
/// modification times: a retrained model in the same place is another model), the items, and
/// `settings` (the backend's name and every flag that changes a response or its grading).
pub fn fingerprint(model_dir: &Path, items: &[RlItem], settings: &str) -> Result<String> {
    let mut files: Vec<(String, u64, Option<std::time::SystemTime>)> = Vec::new();
    let dir = std::fs::read_dir(model_dir)
        .with_context(|| format!("cannot read {}", model_dir.display()))?;
    for e in dir {
        let e = e?;
        let m = e.metadata()?;
        if m.is_file() {
            files.push((e.file_name().to_string_lossy().into_owned(), m.len(), m.modified().ok()));
        }
    }
    files.sort();
    let what = format!("{files:?}|{}|{settings}", serde_json::to_string(items)?);
    Ok(format!("{:032x}", twox_hash::XxHash3_128::oneshot(what.as_bytes())))
}

/// The partial results of one run, one `T` per finished item (see the module doc).
pub struct Partial<T> {
    path: PathBuf,
    done: Vec<T>,
}

/// `out` with `.partial` added: where the partial results of a run writing `out` are kept.
pub fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

impl<T: Serialize + DeserializeOwned + Clone> Partial<T> {
    /// The partial results for `out` of the run named `fingerprint` (`items` items,
    /// `batch_items` a batch): the whole batches a previous run finished, or none. A partial
    /// file of another run is an error, unless it holds no result; a batch cut short by the
    /// crash (its lines incomplete or torn) is dropped, and the file rewritten without it.
    pub fn open(out: &Path, fingerprint: &str, items: usize, batch_items: usize) -> Result<Self> {
        let path = partial_path(out);
        let header = Header { mmr1_partial: fingerprint.to_string(), items, batch_items };
        let mut done = Vec::new();
        if path.exists() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let mut lines = text.lines().peekable();
            let found: Option<Header> = lines.next().and_then(|l| serde_json::from_str(l).ok());
            // A file without results (a run that failed before its first batch) holds nothing
            // to lose: it is started over whatever it names.
            let empty = lines.peek().is_none_or(|l| l.trim().is_empty());
            if found.as_ref() != Some(&header) && !empty {
                bail!(
                    "{} holds the results of another run (other model files, items or flags): \
                     rerun with the flags it was made with to continue it, or delete it to \
                     start over",
                    path.display()
                );
            }
            for l in lines.filter(|_| found.as_ref() == Some(&header)) {
                match serde_json::from_str::<T>(l) {
                    Ok(r) => done.push(r),
                    Err(_) => break, // the line a crash cut
                }
            }
            if done.len() < items {
                done.truncate(done.len() / batch_items.max(1) * batch_items.max(1));
            }
            done.truncate(items);
        }
        let mut text = serde_json::to_string(&header)? + "\n";
        for r in &done {
            text += &(serde_json::to_string(r)? + "\n");
        }
        crate::fs::write_atomic(&path, text.as_bytes())?;
        Ok(Partial { path, done })
    }

    /// The partial file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The results kept so far, in item order.
    pub fn done(&self) -> &[T] {
        &self.done
    }

    /// Appends a finished batch's results and syncs them to disk.
    pub fn append(&mut self, results: &[T]) -> Result<()> {
        crate::fs::fault::point("append", &self.path)?;
        let mut text = String::new();
        for r in results {
            text += &(serde_json::to_string(r)? + "\n");
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .with_context(|| format!("cannot append to {}", self.path.display()))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_data())
            .with_context(|| format!("cannot append to {}", self.path.display()))?;
        self.done.extend_from_slice(results);
        Ok(())
    }

    /// The run has written its outputs: the partial file goes.
    pub fn finish(self) -> Result<()> {
        std::fs::remove_file(&self.path)
            .with_context(|| format!("cannot remove {}", self.path.display()))
    }
}
