//! `metrics.jsonl`: one JSON object per line, flushed as written, so a crash loses nothing
//! already reported. Each line is one of the record types below, written and read back through
//! serde; a line names its kind by `phase` (and `event` for the initial VAS scoring), which is
//! the file format `plot` and outside tools read.
//!
//! On resume, the records of work after the checkpoint are dropped, so every record appears
//! exactly once however often a run is stopped and resumed.
//!
//! New fields go into the record structs with `#[serde(default)]`, so files written before
//! them still read.

use super::run_dir::RunClock;
use crate::backend::memory::MemoryStats;
use crate::serde_float::nan_if_null;
use crate::train::sft::SftStepMetrics;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// The phases of a run, in run order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Sft,
    Rl,
}

/// Which evaluation an eval record is (written as its label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EvalLabel {
    /// The starting model, when an SFT phase follows.
    #[serde(rename = "before SFT")]
    BeforeSft,
    /// The starting model of a run without an SFT phase (what RL starts from).
    #[serde(rename = "start")]
    Start,
    #[serde(rename = "after SFT")]
    AfterSft,
    #[serde(rename = "after RL")]
    AfterRl,
    /// Every `eval.every` steps of a phase.
    #[serde(rename = "periodic")]
    Periodic,
}

impl EvalLabel {
    /// A phase's closing evaluation: it runs after the phase's last checkpoint, so resuming
    /// from that checkpoint runs it again (and its old record is dropped).
    pub fn closes_phase(self) -> bool {
        matches!(self, EvalLabel::AfterSft | EvalLabel::AfterRl)
    }
}

/// `{"phase": "eval", ...}`: accuracy of the model at `step` of phase `of`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub of: Phase,
    pub step: u64,
    pub label: EvalLabel,
    #[serde(deserialize_with = "nan_if_null")]
    pub accuracy: f64,
    #[serde(deserialize_with = "nan_if_null", default)]
    pub format: f64,
    #[serde(default)]
    pub items: usize,
}

/// VPS weights over the items at a step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VpsSummary {
    pub scored: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub mean: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub min: f32,
    #[serde(deserialize_with = "nan_if_null")]
    pub max: f32,
}

/// Wall time of an RL step's parts, seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RlStepTimes {
    #[serde(deserialize_with = "nan_if_null")]
    pub rollout_and_reward: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub update: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub scoring: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub step: f64,
}

/// `{"phase": "rl", ...}`: one GRPO step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RlStepRecord {
    pub step: u64,
    #[serde(deserialize_with = "nan_if_null")]
    pub reward_mean: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub reward_std: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub accuracy: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub format: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub zero_var_frac: f64,
    pub groups: usize,
    pub filtered_groups: usize,
    pub weighted_prompts: usize,
    pub uniform_prompts: usize,
    pub vps: VpsSummary,
    /// None when the step had no informative group to learn from.
    pub loss: Option<f64>,
    #[serde(deserialize_with = "nan_if_null")]
    pub pg_loss: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub kl: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub approx_kl: f64,
    pub entropy: Option<f64>,
    #[serde(deserialize_with = "nan_if_null")]
    pub clip_frac: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub clip_frac_low: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub clip_frac_high: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub mean_ratio: f64,
    /// Largest |ratio - 1| over the first mini-batch of the first PPO epoch (before any
    /// optimizer step): 0 when `logp_old` and the update's log-probs are computed alike, as
    /// they must be; anything else means the log-prob pass is not batch-invariant on this
    /// device (docs/perf.md, "The demo on the GPU in bf16"). Not measured (0) when an
    /// on-policy update takes `logp_old` from its own forward (`rl.old_logprob_pass` false).
    #[serde(deserialize_with = "nan_if_null")]
    pub first_epoch_max_ratio_dev: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub grad_norm: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub lr: f32,
    #[serde(deserialize_with = "nan_if_null")]
    pub response_len: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub tokens_per_s: f64,
    /// Share of the rollouts' KV-cache slot-steps that decoded a response (continuous
    /// batching: `rl::decode_scheduler`; 1 = no slot ever idle).
    #[serde(deserialize_with = "nan_if_null")]
    pub rollout_occupancy: f64,
    /// Response tokens sampled per second of the rollouts' decode loop (per rank).
    #[serde(deserialize_with = "nan_if_null")]
    pub rollout_tokens_per_s: f64,
    pub time: RlStepTimes,
    /// The device allocator's counters after the step (peaks since the process started);
    /// absent on the CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_memory: Option<MemoryStats>,
}

/// `{"phase": "rl", "event": "initial_scoring", ...}`: the VPS scoring before step 1.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ScoringRecord {
    pub step: u64,
    pub items: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub seconds: f64,
    pub vps: VpsSummary,
}

/// `"  peak mem 1.2 GiB"` for a progress line (the device memory reserved at the peak), or
/// nothing on the CPU.
pub fn peak_note(m: Option<MemoryStats>) -> String {
    m.map_or(String::new(), |m| {
        format!("  peak mem {}", crate::backend::memory::human_bytes(m.peak_reserved_bytes))
    })
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Sft(SftStepMetrics),
    Rl(RlStepRecord),
    InitialScoring(ScoringRecord),
    Eval(EvalRecord),
}

/// Adds the envelope keys (`phase`, `event`) to a serialized record.
fn tagged(body: impl Serialize, phase: &str, event: Option<&str>) -> Value {
    let mut v = serde_json::to_value(body).expect("metrics records serialize");
    let obj = v.as_object_mut().expect("metrics records are structs");
    obj.insert("phase".into(), phase.into());
    if let Some(e) = event {
        obj.insert("event".into(), e.into());
    }
    v
}

impl Record {
    pub fn to_json(&self) -> Value {
        match self {
            Record::Sft(m) => tagged(m, "sft", None),
            Record::Rl(m) => tagged(m, "rl", None),
            Record::InitialScoring(m) => tagged(m, "rl", Some("initial_scoring")),
            Record::Eval(m) => tagged(m, "eval", None),
        }
    }

    /// The record a line holds; None for a line of a kind this version does not know.
    pub fn from_json(v: &Value) -> Option<Record> {
        let phase = v.get("phase")?.as_str()?;
        let event = v.get("event").and_then(Value::as_str);
        fn of<T: serde::de::DeserializeOwned>(v: &Value) -> Option<T> {
            serde_json::from_value(v.clone()).ok()
        }
        match (phase, event) {
            ("sft", None) => of(v).map(Record::Sft),
            ("rl", None) => of(v).map(Record::Rl),
            ("rl", Some("initial_scoring")) => of(v).map(Record::InitialScoring),
            ("eval", None) => of(v).map(Record::Eval),
            _ => None,
        }
    }

    /// The phase and step of the work a record reports.
    fn position(&self) -> (Phase, u64) {
        match self {
            Record::Sft(m) => (Phase::Sft, m.step),
            Record::Rl(m) => (Phase::Rl, m.step),
            Record::InitialScoring(m) => (Phase::Rl, m.step),
            Record::Eval(m) => (m.of, m.step),
        }
    }

    /// True when the record reports work done after checkpoint `(phase, step)` was saved:
    /// a later phase, a later step, or the closing evaluation of the checkpoint's own step.
    /// The initial scoring precedes step 1 of RL and is saved only from step 1 on.
    pub fn after(&self, (phase, step): (Phase, u64)) -> bool {
        let (p, s) = self.position();
        let closing = matches!(self, Record::Eval(e) if e.label.closes_phase());
        p > phase || (p == phase && (s > step || (s == step && closing)))
    }
}

pub struct MetricsLog {
    path: PathBuf,
    /// None: the log of a data-parallel rank other than 0, which writes nothing.
    file: Option<File>,
    /// The run's wall time, saved with every record written.
    clock: Option<RunClock>,
}

impl MetricsLog {
    /// Opens `dir/metrics.jsonl` for appending. `keep_through`: resuming from that
    /// checkpoint, so every record of later work (see `Record::after`) and any torn last line
    /// is dropped first; `None`: a fresh run, the file starts empty.
    pub fn open(dir: &Path, keep_through: Option<(Phase, u64)>) -> Result<Self> {
        let path = dir.join("metrics.jsonl");
        let kept = match keep_through {
            Some(k) if path.exists() => kept_lines(&path, k)?,
            _ => String::new(),
        };
        if path.exists() || keep_through.is_none() {
            crate::fs::write_atomic(&path, kept.as_bytes())?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {} for writing", path.display()))?;
        Ok(MetricsLog { path, file: Some(file), clock: None })
    }

    /// The log of a data-parallel rank other than 0: every record is dropped (rank 0 writes
    /// each step once; the ranks compute the same records).
    pub fn discard() -> Self {
        MetricsLog { path: PathBuf::new(), file: None, clock: None }
    }

    /// Saves the run's time with every record, so a killed invocation's time counts.
    pub fn with_clock(mut self, clock: RunClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The run's wall time so far, over every invocation (0 without a clock).
    pub fn seconds(&self) -> f64 {
        self.clock.as_ref().map_or(0.0, |c| c.total())
    }

    pub fn write(&mut self, r: &Record) -> Result<()> {
        let Some(file) = self.file.as_mut() else { return Ok(()) };
        let mut line = serde_json::to_string(&r.to_json())?;
        line.push('\n');
        file.write_all(line.as_bytes())
            .and_then(|_| file.flush())
            .with_context(|| format!("cannot write {} (disk full?)", self.path.display()))?;
        if let Some(c) = &self.clock {
            c.mark()?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The lines of `path` up to checkpoint `k`, unchanged. A line this version cannot read as a
/// record is kept unless it is torn (not JSON at all).
fn kept_lines(path: &Path, k: (Phase, u64)) -> Result<String> {
    let f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut kept = String::new();
    for line in BufReader::new(f).split(b'\n') {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        let Ok(v) = serde_json::from_slice::<Value>(&line) else { continue };
        if Record::from_json(&v).is_none_or(|r| !r.after(k)) {
            kept.push_str(&serde_json::to_string(&v)?);
            kept.push('\n');
        }
    }
    Ok(kept)
}

/// A metrics file as read back: its records in order, and what of it was not a record.
#[derive(Debug, Default)]
pub struct MetricsFile {
    pub records: Vec<Record>,
    /// Non-blank lines.
    pub lines: usize,
    /// Lines that are not JSON (a torn last line after a crash).
    pub not_json: usize,
    /// JSON lines of a kind or shape this version does not read.
    pub unknown: usize,
}

/// Reads every record of a metrics file (see [`MetricsFile`] for what is left out).
pub fn read_metrics_file(path: &Path) -> Result<MetricsFile> {
    let f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = MetricsFile::default();
    for line in BufReader::new(f).split(b'\n') {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if line.trim_ascii().is_empty() {
            continue;
        }
        out.lines += 1;
        match serde_json::from_slice::<Value>(&line) {
            Err(_) => out.not_json += 1,
            Ok(v) => match Record::from_json(&v) {
                Some(r) => out.records.push(r),
                None => out.unknown += 1,
            },
        }
    }
    Ok(out)
}

/// The records of a metrics file, in order (lines of unknown kinds are left out).
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    Ok(read_metrics_file(path)?.records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(of: Phase, step: u64, label: EvalLabel) -> Record {
        Record::Eval(EvalRecord { of, step, label, accuracy: 0.5, format: 0.25, items: 3 })
    }

    #[test]
    fn records_round_trip_through_their_lines() {
        let recs = vec![
            eval(Phase::Sft, 0, EvalLabel::BeforeSft),
            Record::Rl(RlStepRecord { step: 3, loss: Some(0.5), lr: 1e-4, ..Default::default() }),
            Record::InitialScoring(ScoringRecord { items: 7, ..Default::default() }),
        ];
        for r in &recs {
            let line = serde_json::to_string(&r.to_json()).unwrap();
            let back = Record::from_json(&serde_json::from_str(&line).unwrap()).unwrap();
            assert_eq!(&back, r, "{line}");
        }
        let j = recs[0].to_json();
        assert_eq!((j["phase"].as_str(), j["label"].as_str()), (Some("eval"), Some("before SFT")));
        assert_eq!(recs[2].to_json()["event"], "initial_scoring");
    }

    #[test]
    fn resume_drops_later_work_and_the_closing_eval_of_the_checkpoint_step() {
        let k = (Phase::Sft, 10);
        assert!(!eval(Phase::Sft, 10, EvalLabel::Periodic).after(k));
        assert!(eval(Phase::Sft, 10, EvalLabel::AfterSft).after(k));
        assert!(!eval(Phase::Sft, 0, EvalLabel::BeforeSft).after(k));
        assert!(eval(Phase::Rl, 0, EvalLabel::Start).after(k));
        assert!(!eval(Phase::Sft, 10, EvalLabel::AfterSft).after((Phase::Rl, 0)));
        assert!(Record::InitialScoring(ScoringRecord::default()).after((Phase::Sft, 99)));
    }
}
