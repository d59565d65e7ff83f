//! The whole MMR1 pipeline as one run: (demo setup,) evaluation, cold-start SFT, evaluation,
//! GRPO + VAS, evaluation, report. Every phase checkpoints under the output directory, and
//! `resume` continues a killed run from its newest complete checkpoint with nothing lost and
//! nothing logged twice.

use super::inputs::{EvalResult, RunInputs, Start};
use super::metrics::{read_records, EvalLabel, MetricsLog, Phase, Record};
use super::rl_phase::{RlPhase, RlStepSummary};
use super::run_dir::RunClock;
use super::run_policy::RunPolicy;
use super::sft_phase::SftPhase;
use crate::backend::memory::MemoryStats;
use crate::backend::rl_ops::RlOps;
use crate::dist::{Collective, Single};
use crate::fs::write_atomic;
use crate::model::Qwen2;
use crate::rl::vl_policy::VlPolicy;
use crate::train::checkpoint::{resume_checkpoint, step_of};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What a run reports at the end (also `OUT/report.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunReport {
    pub before_sft: Option<EvalResult>,
    pub after_sft: Option<EvalResult>,
    pub after_rl: Option<EvalResult>,
    pub rl_steps: Vec<RlStepSummary>,
    /// Wall time of the whole run, summed over every invocation that worked on it.
    pub seconds: f64,
    /// The device allocator's counters at the end of the run (peaks of this invocation; a
    /// resumed run reports its own); absent on the CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_memory: Option<MemoryStats>,
}

/// Runs (or, when `inputs.start` is `Resume`, continues) the pipeline on backend `be`.
pub fn run_pipeline<B: RlOps>(be: &B, inputs: &RunInputs) -> Result<RunReport> {
    run_pipeline_with(be, inputs, &Single)
}

/// [`run_pipeline`] as rank `comm.rank()` of a data-parallel run: every rank trains (its
/// shard of each step), rank 0 alone (`inputs.rank`) writes the metrics, checkpoints, time
/// and report and evaluates; the other ranks' report holds only the RL steps.
pub fn run_pipeline_with<B: RlOps>(
    be: &B,
    inputs: &RunInputs,
    comm: &dyn Collective<B>,
) -> Result<RunReport> {
    if inputs.vl {
        run_with::<B, VlPolicy<B>>(be, inputs, comm)
    } else {
        run_with::<B, Qwen2<B>>(be, inputs, comm)
    }
}

/// The pipeline on a text model or a Qwen2.5-VL one (`run_policy::RunPolicy`).
fn run_with<B: RlOps, P: RunPolicy<B>>(
    be: &B,
    inputs: &RunInputs,
    comm: &dyn Collective<B>,
) -> Result<RunReport> {
    let resume = inputs.start == Start::Resume;
    let lead = comm.rank() == 0;
    let cfg = &inputs.cfg;
    let out = &inputs.out;
    let (sft_dir, rl_dir) = (out.join("sft"), out.join("rl"));
    let rl_ck = if resume { resume_checkpoint(&rl_dir)? } else { None };
    let sft_ck = if resume && rl_ck.is_none() { resume_checkpoint(&sft_dir)? } else { None };
    let keep = match (&rl_ck, &sft_ck) {
        (Some(p), _) => Some((Phase::Rl, step_of(p))),
        (None, Some(p)) => Some((Phase::Sft, step_of(p))),
        (None, None) if resume => {
            bail!("{}: nothing to resume (no complete checkpoint under sft/ or rl/)", out.display())
        }
        _ => None,
    };
    let mut log = if lead {
        MetricsLog::open(out, keep)?.with_clock(RunClock::start(out, resume)?)
    } else {
        MetricsLog::discard()
    };
    // The metrics log is the record of what already happened: a resumed run's report is
    // rebuilt from it (it was just trimmed to the checkpoint).
    let mut report = if resume && lead {
        report_from_records(&read_records(log.path())?)
    } else {
        RunReport::default()
    };

    // ---- cold-start SFT ---------------------------------------------------------------
    let want_sft = cfg.sft.epochs > 0 && !cfg.data.sft.as_os_str().is_empty();
    let mut policy: Option<(P, PathBuf)> = None;
    if rl_ck.is_none() {
        let model = P::load_start(be, inputs)?;
        if sft_ck.is_none() {
            // Without an SFT phase the starting model is what RL starts from: report it so.
            let label = if want_sft { EvalLabel::BeforeSft } else { EvalLabel::Start };
            let e = inputs.eval_and_log(be, &model, &mut log, Phase::Sft, 0, label)?;
            if want_sft {
                report.before_sft = e;
            } else {
                report.after_sft = e;
            }
        }
        policy = Some(if want_sft {
            let phase = SftPhase { be, inputs, dir: sft_dir.clone(), comm };
            let (model, step) = model.run_sft(&phase, sft_ck.as_deref(), &mut log)?;
            report.after_sft =
                inputs.eval_and_log(be, &model, &mut log, Phase::Sft, step, EvalLabel::AfterSft)?;
            let dir = resume_checkpoint(&sft_dir)?.context("SFT finished without a checkpoint")?;
            (model, dir)
        } else {
            (model, cfg.model.dir.clone())
        });
    }

    // ---- GRPO + VAS ------------------------------------------------------------------
    if cfg.rl.steps > 0 && !inputs.rl_items.is_empty() {
        let settings = match &policy {
            Some((p, _)) => inputs.settings(p.text()),
            None => inputs.run_settings()?,
        };
        let phase = RlPhase { be, inputs, settings, dir: rl_dir.clone(), comm };
        let mut run = match (&rl_ck, policy) {
            (Some(ck), _) => phase.resume::<P>(ck)?,
            (None, Some((model, start_dir))) => phase.start(model, &start_dir)?,
            (None, None) => unreachable!("the policy is loaded when there is no RL checkpoint"),
        };
        report.rl_steps.extend(phase.run(&mut run, &mut log)?);
        report.after_rl = inputs.eval_and_log(
            be,
            &run.policy,
            &mut log,
            Phase::Rl,
            run.state.step,
            EvalLabel::AfterRl,
        )?;
    }
    report.seconds = log.seconds();
    report.device_memory = be.memory_stats();
    if lead {
        write_atomic(&out.join("report.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    comm.barrier()?;
    Ok(report)
}

/// Rebuilds a report from metrics records (evaluations by label, RL step records).
pub fn report_from_records(records: &[Record]) -> RunReport {
    let mut r = RunReport::default();
    for rec in records {
        match rec {
            Record::Eval(e) => {
                let v = Some(EvalResult { accuracy: e.accuracy, format: e.format, items: e.items });
                match e.label {
                    EvalLabel::BeforeSft => r.before_sft = v,
                    EvalLabel::AfterSft | EvalLabel::Start => r.after_sft = v,
                    EvalLabel::AfterRl => r.after_rl = v,
                    EvalLabel::Periodic => {}
                }
            }
            Record::Rl(m) => r.rl_steps.push(RlStepSummary {
                step: m.step,
                accuracy: m.accuracy,
                zero_var_frac: m.zero_var_frac,
                grad_norm: m.grad_norm,
            }),
            Record::Sft(_) | Record::InitialScoring(_) => {}
        }
    }
    r
}

/// The report as text: accuracy per phase and the zero-variance fraction over RL steps.
pub fn format_report(r: &RunReport) -> String {
    let f =
        |e: &Option<EvalResult>| e.map_or("   -  ".to_string(), |e| format!("{:.3}", e.accuracy));
    let mut s = String::new();
    s.push_str("| stage | eval accuracy |\n|---|---|\n");
    s.push_str(&format!(
        "| before SFT | {} |\n| after SFT (RL start) | {} |\n| after RL | {} |\n",
        f(&r.before_sft),
        f(&r.after_sft),
        f(&r.after_rl)
    ));
    if !r.rl_steps.is_empty() {
        let zv: Vec<String> =
            r.rl_steps.iter().map(|x| format!("{:.2}", x.zero_var_frac)).collect();
        s.push_str(&format!("\nzero-variance-group fraction per RL step: {}\n", zv.join(" ")));
    }
    s.push_str(&format!("\ntotal time {:.0} s\n", r.seconds));
    if let Some(m) = &r.device_memory {
        s.push_str(&format!("device memory: {}\n", m.summary()));
    }
    s
}
