//! An evaluation's finished batches, kept on disk as they finish, so that a crash, a kill or a
//! preemption loses at most the batch being decoded. `eval --out FILE` keeps them in
//! `FILE.partial`: a header line naming the evaluation (a fingerprint of the model files, the
//! items and every flag that changes a response), then one line per finished item, appended
//! and synced batch by batch. The next run with the same fingerprint continues after the last
//! whole batch (each batch's seeds are those of a whole run, `graded::sample_and_grade_batches`,
//! so the results are the ones an uninterrupted run writes); another fingerprint is an error
//! rather than a silent restart. When the evaluation ends, FILE is written and the partial file
//! removed.

use super::evaluate::ItemResult;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The first line of a partial file.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Header {
    /// What made the results (see [`Partial::open`]).
    mmr1_eval_partial: String,
    /// Items of the whole evaluation, and per batch.
    items: usize,
    batch_items: usize,
}

/// The partial results of one evaluation (see the module doc).
pub struct Partial {
    path: PathBuf,
    done: Vec<ItemResult>,
}

impl Partial {
    /// `out` with `.partial` added: where the results of an evaluation writing `out` are kept.
    pub fn path_for(out: &Path) -> PathBuf {
        let mut name = out.file_name().unwrap_or_default().to_os_string();
        name.push(".partial");
        out.with_file_name(name)
    }

    /// The partial results for `out` of the evaluation named `fingerprint` (`items` items,
    /// `batch_items` a batch): the whole batches a previous run finished, or none. A partial
    /// file of another evaluation is an error; a batch cut short by the crash (its lines
    /// incomplete or torn) is dropped, and the file rewritten without it.
    pub fn open(out: &Path, fingerprint: &str, items: usize, batch_items: usize) -> Result<Self> {
        let path = Self::path_for(out);
        let header = Header { mmr1_eval_partial: fingerprint.to_string(), items, batch_items };
        let mut done = Vec::new();
        if path.exists() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let mut lines = text.lines();
            let found: Option<Header> = lines.next().and_then(|l| serde_json::from_str(l).ok());
            if found.as_ref() != Some(&header) {
                bail!(
                    "{} holds the results of another evaluation (other model files, items or \
                     flags): rerun with the flags it was made with to continue it, or delete it \
                     to start over",
                    path.display()
                );
            }
            for l in lines {
                match serde_json::from_str::<ItemResult>(l) {
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

    /// The results kept so far, in item order.
    pub fn done(&self) -> &[ItemResult] {
        &self.done
    }

    /// Appends a finished batch's results and syncs them to disk.
    pub fn append(&mut self, results: &[ItemResult]) -> Result<()> {
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

    /// The evaluation is over: `out` gets the results (atomically) and the partial file goes.
    pub fn finish(self, out: &Path) -> Result<()> {
        super::super::data::jsonl::write_jsonl(out, &self.done)?;
        std::fs::remove_file(&self.path)
            .with_context(|| format!("cannot remove {}", self.path.display()))
    }
}
