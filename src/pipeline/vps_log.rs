//! `vps.jsonl`, beside metrics.jsonl: what MMR1's Figure 3 shows and no RL stack logs. At the
//! initial scoring and at every T_update refresh, one record with the distribution of VPS over
//! the items (equal-width bins from 0 to the largest VPS possible, plus one bin for items not
//! scored yet) and the transition matrix of items between bins since the previous record
//! (row: bin before, column: bin after; row sums are the previous counts, column sums the
//! current ones). A user sees whether VAS keeps finding informative prompts: mass leaving the
//! low bins as items become solvable, items falling to 0 once the policy always solves them.

use crate::rl::vas::VpsTable;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// Equal-width VPS bins; one more bin (the last) holds unscored items.
pub const VPS_BINS: usize = 8;

/// One line of vps.jsonl.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VpsRecord {
    /// RL steps done when the record was made (0: the initial scoring).
    pub step: u64,
    /// "initial_scoring" or "refresh".
    pub event: String,
    /// `VPS_BINS + 1` edges from 0 to the largest VPS possible (alpha/4 + beta).
    pub bin_edges: Vec<f64>,
    /// Items per bin, `VPS_BINS + 1` entries (the last: unscored).
    pub counts: Vec<usize>,
    /// `transition[i][j]`: items in bin i at the previous record and in bin j now.
    pub transition: Vec<Vec<usize>>,
    /// Items re-scored since the previous record.
    pub refreshed: usize,
}

/// Bin edges for a table: VPS lies in [0, alpha * 0.25 + beta] (OVS = p(1-p) <= 1/4, TDS <= 1).
pub fn bin_edges(table: &VpsTable) -> Vec<f64> {
    let top = (table.alpha as f64 * 0.25 + table.beta as f64).max(1e-12);
    (0..=VPS_BINS).map(|i| top * i as f64 / VPS_BINS as f64).collect()
}

/// The bin of every item (`VPS_BINS` for an unscored one).
pub fn item_bins(table: &VpsTable) -> Vec<usize> {
    let edges = bin_edges(table);
    let top = edges[VPS_BINS];
    table
        .items()
        .iter()
        .map(|it| match it.vps {
            None => VPS_BINS,
            Some(v) => {
                let f = (v.max(0.0) as f64 / top * VPS_BINS as f64).floor() as usize;
                f.min(VPS_BINS - 1)
            }
        })
        .collect()
}

/// The record for a change of the table from bins `before` to its current state.
pub fn vps_record(table: &VpsTable, before: &[usize], step: u64, event: &str) -> VpsRecord {
    let after = item_bins(table);
    let mut counts = vec![0usize; VPS_BINS + 1];
    let mut transition = vec![vec![0usize; VPS_BINS + 1]; VPS_BINS + 1];
    for (&b, &a) in before.iter().zip(&after) {
        counts[a] += 1;
        transition[b][a] += 1;
    }
    let refreshed =
        table.items().iter().filter(|it| it.vps.is_some() && it.last_step == step).count();
    VpsRecord {
        step,
        event: event.into(),
        bin_edges: bin_edges(table),
        counts,
        transition,
        refreshed,
    }
}

/// Appends records to `vps.jsonl`, flushed per line.
pub struct VpsLog {
    path: PathBuf,
    file: File,
}

impl VpsLog {
    /// Opens `dir/vps.jsonl`. A fresh RL phase (`keep_through` 0) starts it empty; a resumed
    /// one keeps the records up to its checkpoint's step and drops later ones (and torn lines).
    pub fn open(dir: &Path, keep_through: u64) -> Result<Self> {
        let path = dir.join("vps.jsonl");
        if path.exists() {
            let mut kept = String::new();
            if keep_through > 0 {
                let f =
                    File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
                for line in BufReader::new(f).lines() {
                    let line = line?;
                    match serde_json::from_str::<VpsRecord>(&line) {
                        Ok(r) if r.step <= keep_through => {
                            kept.push_str(&line);
                            kept.push('\n');
                        }
                        _ => {}
                    }
                }
            }
            crate::fs::write_atomic(&path, kept.as_bytes())?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {} for writing", path.display()))?;
        Ok(VpsLog { path, file })
    }

    pub fn write(&mut self, r: &VpsRecord) -> Result<()> {
        let mut line = serde_json::to_string(r)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .with_context(|| format!("cannot write {} (disk full?)", self.path.display()))
    }
}

/// Reads every record of a vps.jsonl (torn or foreign lines skipped).
pub fn read_vps(path: &Path) -> Result<Vec<VpsRecord>> {
    let f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(BufReader::new(f)
        .lines()
        .map_while(|l| l.ok())
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_counts_and_transitions_add_up() {
        let mut t = VpsTable::new(5);
        let before = item_bins(&t);
        assert_eq!(before, vec![VPS_BINS; 5], "unscored items sit in the last bin");
        // Eight identical rollouts each (TDS 0), pass rates 3/8, 1, 1/8: VPS = 0.8 p(1-p) =
        // 0.1875, 0, 0.0875 over bins of width 0.05 -> bins 3, 0, 1 (no value near an edge).
        let r: Vec<&[u32]> = vec![&[1, 2, 3, 4, 5, 6, 7, 8]; 8];
        let pass = |k: usize| (0..8).map(|i| if i < k { 1.0 } else { 0.0 }).collect::<Vec<f32>>();
        t.refresh(0, &pass(3), &r, 3);
        t.refresh(1, &pass(8), &r, 3);
        t.refresh(2, &pass(1), &r, 3);
        let rec = vps_record(&t, &before, 3, "refresh");
        assert_eq!(rec.bin_edges.len(), VPS_BINS + 1);
        assert!((rec.bin_edges[VPS_BINS] - 0.4).abs() < 1e-6);
        assert_eq!(item_bins(&t), vec![3, 0, 1, VPS_BINS, VPS_BINS]);
        assert_eq!(rec.counts.iter().sum::<usize>(), 5);
        assert_eq!(rec.transition[VPS_BINS].iter().sum::<usize>(), 5, "all came from unscored");
        assert_eq!(rec.transition[VPS_BINS][3], 1);
        assert_eq!(rec.transition[VPS_BINS][VPS_BINS], 2);
        assert_eq!(rec.refreshed, 3);
        for (j, &c) in rec.counts.iter().enumerate() {
            assert_eq!(rec.transition.iter().map(|row| row[j]).sum::<usize>(), c);
        }
    }

    #[test]
    fn log_is_emptied_on_a_fresh_start_and_trimmed_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let t = VpsTable::new(3);
        let b = item_bins(&t);
        let mut log = VpsLog::open(dir.path(), 0).unwrap();
        for s in [0, 10, 20] {
            log.write(&vps_record(&t, &b, s, "refresh")).unwrap();
        }
        drop(log);
        VpsLog::open(dir.path(), 10).unwrap();
        let steps: Vec<u64> =
            read_vps(&dir.path().join("vps.jsonl")).unwrap().iter().map(|r| r.step).collect();
        assert_eq!(steps, [0, 10]);
        VpsLog::open(dir.path(), 0).unwrap();
        assert!(read_vps(&dir.path().join("vps.jsonl")).unwrap().is_empty());
    }
}
