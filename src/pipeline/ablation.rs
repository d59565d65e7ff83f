//! `train --demo-ablation`: MMR1's Figure 2 in miniature, over seeds. One cold-start SFT
//! checkpoint; from it, GRPO with lambda = 0 (uniform sampling), 0.5 and 1.0 (VAS), each with
//! the same N seeds. Per setting: mean and 95% t-interval across seeds of the zero-variance
//! group fraction, gradient norm, clip fraction and validation accuracy against step; paired
//! differences (setting minus uniform, same seed) of per-run summaries with their intervals.
//! Writes `ablation.json` (everything), `ablation.md` (tables) and `ablation.png` (curves with
//! bands) under the output directory; each run keeps its own directory and metrics.

use super::config::TrainConfig;
use super::inputs::{RunInputs, Start};
use super::metrics::{read_records, Phase, Record};
use super::run::run_pipeline;
use crate::fs::write_atomic;
use crate::train::checkpoint::latest_checkpoint;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The settings compared, as in MMR1's Figure 2 (lambda 0 is uniform sampling).
pub const LAMBDAS: [f32; 3] = [0.0, 0.5, 1.0];
/// Validation every this many RL steps when the configuration asks for none.
pub const DEFAULT_EVAL_EVERY: usize = 5;

/// Curves of one RL run, read back from its metrics.jsonl.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArmRun {
    pub lambda: f32,
    pub seed: u64,
    pub dir: PathBuf,
    /// The model directory the run started from (its config.toml's model.dir).
    pub start: PathBuf,
    /// FNV-1a 64 of the start's model.safetensors, read when the run began.
    pub start_hash: String,
    /// RL step records: step, zero-variance group fraction, grad norm, clip fraction, batch
    /// accuracy.
    pub steps: Vec<u64>,
    pub zero_var_frac: Vec<f64>,
    pub grad_norm: Vec<f64>,
    pub clip_frac: Vec<f64>,
    pub batch_accuracy: Vec<f64>,
    /// Validation: step 0 is the start model, the last is after RL.
    pub eval_steps: Vec<u64>,
    pub eval_accuracy: Vec<f64>,
    pub seconds: f64,
}

/// A mean with its 95% t-interval across `n` seeds (lo = hi = mean when n < 2).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Interval {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
    pub n: usize,
}

/// One metric of one setting against step: mean and interval at each x.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Curve {
    pub metric: String,
    pub x: Vec<u64>,
    pub y: Vec<Interval>,
}

/// Per-run summaries, averaged over seeds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SettingSummary {
    pub lambda: f32,
    pub curves: Vec<Curve>,
    /// (summary name, interval across seeds); names in [`SUMMARIES`].
    pub summaries: Vec<(String, Interval)>,
}

/// Setting minus uniform, seed by seed, of one summary.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PairedDiff {
    pub lambda: f32,
    pub summary: String,
    pub diff: Interval,
}

/// Everything `--demo-ablation` measured (`ablation.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AblationReport {
    pub sft_checkpoint: PathBuf,
    pub sft_hash: String,
    pub sft_eval_accuracy: Option<f64>,
    pub seeds: Vec<u64>,
    pub lambdas: Vec<f32>,
    pub rl_steps: usize,
    pub eval_every: usize,
    pub eval_items: usize,
    pub runs: Vec<ArmRun>,
    pub settings: Vec<SettingSummary>,
    pub paired: Vec<PairedDiff>,
    /// /proc/loadavg at the start and the end (1, 5, 15 minute load), where readable.
    pub load_start: Option<String>,
    pub load_end: Option<String>,
    pub cpus: usize,
    pub seconds: f64,
}

/// Curves compared per step (metrics.jsonl keys of RL step records).
const STEP_METRICS: [&str; 4] = ["zero_var_frac", "grad_norm", "clip_frac", "batch_accuracy"];
/// Per-run numbers compared across settings.
pub const SUMMARIES: [&str; 5] = [
    "mean zero-var fraction",
    "mean grad norm",
    "mean clip fraction",
    "mean val accuracy (RL evals)",
    "final val accuracy",
];

/// Runs the ablation with `seeds` seeds (cfg.seed, cfg.seed + 1, ...) and writes the report.
/// `overwrite`: replace the checkpoints of an earlier ablation in the same directories.
pub fn run_ablation<B: crate::backend::rl_ops::RlOps>(
    be: &B,
    cfg: TrainConfig,
    seeds: usize,
    overwrite: bool,
) -> Result<AblationReport> {
    if seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    let t0 = Instant::now();
    let load_start = loadavg();
    let out = cfg.output.dir.clone();
    let mut sft_cfg = cfg.clone();
    sft_cfg.rl.steps = 0;
    let sft_inputs = RunInputs::prepare(sft_cfg, Start::Fresh { overwrite })?;
    eprintln!("ablation: cold-start SFT into {}", out.join("sft").display());
    let sft_report = run_pipeline(be, &sft_inputs)?;
    let start = latest_checkpoint(&out.join("sft"))?.context("the SFT phase left no checkpoint")?;
    let sft_hash = model_hash(&start)?;
    let eval_every = if cfg.eval.every == 0 { DEFAULT_EVAL_EVERY } else { cfg.eval.every };
    let seed_list: Vec<u64> = (0..seeds as u64).map(|i| cfg.seed + i).collect();
    let mut runs = Vec::new();
    for &seed in &seed_list {
        for lambda in LAMBDAS {
            let mut c = sft_inputs.cfg.clone();
            c.seed = seed;
            c.rl.steps = cfg.rl.steps;
            c.eval.every = eval_every;
            c.output.dir = out.join(format!("seed-{seed}")).join(format!("lambda-{lambda}"));
            c.model.dir = start.clone();
            c.data.sft = Default::default();
            c.vas.lambda = lambda;
            // With lambda 0 no draw reads VPS (the sampler skips the weighted part and its
            // random numbers), so scoring cannot change what the uniform run trains on: it
            // is skipped to save time.
            if lambda == 0.0 {
                c.vas.enabled = false;
            }
            eprintln!(
                "ablation: seed {seed}, lambda {lambda} into {} ({:.0} s so far)",
                c.output.dir.display(),
                t0.elapsed().as_secs_f64()
            );
            let start_hash = model_hash(&c.model.dir)?;
            let t = Instant::now();
            let inputs = RunInputs::prepare(c, Start::Fresh { overwrite })?;
            run_pipeline(be, &inputs)?;
            runs.push(read_run(&inputs.out, lambda, seed, start_hash, t.elapsed().as_secs_f64())?);
        }
    }
    let settings: Vec<SettingSummary> =
        LAMBDAS.iter().map(|&l| summarize(l, &runs_of(&runs, l))).collect();
    let paired = paired_diffs(&runs);
    let report = AblationReport {
        sft_checkpoint: start,
        sft_hash,
        sft_eval_accuracy: sft_report.after_sft.map(|e| e.accuracy),
        seeds: seed_list,
        lambdas: LAMBDAS.to_vec(),
        rl_steps: cfg.rl.steps,
        eval_every,
        eval_items: sft_inputs.eval_items.len(),
        runs,
        settings,
        paired,
        load_start,
        load_end: loadavg(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        seconds: t0.elapsed().as_secs_f64(),
    };
    write_atomic(&out.join("ablation.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
    let table = format_ablation(&report);
    write_atomic(&out.join("ablation.md"), table.as_bytes())?;
    let png = out.join("ablation.png");
    match super::plot::draw_ablation(&report, &png) {
        Ok(()) => println!("plot: {}", png.display()),
        Err(e) => eprintln!("note: no plot drawn: {e:#}"),
    }
    println!("{table}");
    println!("written to {}", out.join("ablation.md").display());
    Ok(report)
}

fn runs_of(runs: &[ArmRun], lambda: f32) -> Vec<&ArmRun> {
    runs.iter().filter(|r| r.lambda == lambda).collect()
}

/// Reads one run's curves back from its metrics.jsonl and config.toml.
fn read_run(dir: &Path, lambda: f32, seed: u64, start_hash: String, secs: f64) -> Result<ArmRun> {
    let cfg = TrainConfig::from_toml_file(&dir.join("config.toml"))?;
    let recs = read_records(&dir.join("metrics.jsonl"))?;
    let mut r = ArmRun {
        lambda,
        seed,
        dir: dir.to_path_buf(),
        start: cfg.model.dir,
        start_hash,
        steps: vec![],
        zero_var_frac: vec![],
        grad_norm: vec![],
        clip_frac: vec![],
        batch_accuracy: vec![],
        eval_steps: vec![],
        eval_accuracy: vec![],
        seconds: secs,
    };
    for rec in &recs {
        match rec {
            Record::Rl(m) => {
                r.steps.push(m.step);
                r.zero_var_frac.push(m.zero_var_frac);
                r.grad_norm.push(m.grad_norm);
                r.clip_frac.push(m.clip_frac);
                r.batch_accuracy.push(m.accuracy);
            }
            Record::Eval(e) => {
                // The start model is evaluated as step 0 of SFT; RL evaluations by RL step.
                r.eval_steps.push(if e.of == Phase::Rl { e.step } else { 0 });
                r.eval_accuracy.push(e.accuracy);
            }
            Record::Sft(_) | Record::InitialScoring(_) => {}
        }
    }
    if r.steps.is_empty() {
        bail!("{}: the run logged no RL step", dir.display());
    }
    Ok(r)
}

impl ArmRun {
    fn metric(&self, name: &str) -> &[f64] {
        match name {
            "zero_var_frac" => &self.zero_var_frac,
            "grad_norm" => &self.grad_norm,
            "clip_frac" => &self.clip_frac,
            "batch_accuracy" => &self.batch_accuracy,
            "val_accuracy" => &self.eval_accuracy,
            _ => unreachable!("unknown metric {name}"),
        }
    }

    /// The per-run summaries, in [`SUMMARIES`] order.
    fn summaries(&self) -> [f64; 5] {
        let rl_evals: Vec<f64> = self
            .eval_steps
            .iter()
            .zip(&self.eval_accuracy)
            .filter(|(s, _)| **s > 0)
            .map(|(_, a)| *a)
            .collect();
        [
            mean(&self.zero_var_frac),
            mean(&self.grad_norm),
            mean(&self.clip_frac),
            mean(&rl_evals),
            self.eval_accuracy.last().copied().unwrap_or(f64::NAN),
        ]
    }
}

fn summarize(lambda: f32, runs: &[&ArmRun]) -> SettingSummary {
    let mut curves = Vec::new();
    for m in STEP_METRICS.iter().chain(["val_accuracy"].iter()) {
        let xs: &[u64] = if *m == "val_accuracy" { &runs[0].eval_steps } else { &runs[0].steps };
        let y = (0..xs.len())
            .map(|i| {
                interval(
                    &runs.iter().filter_map(|r| r.metric(m).get(i).copied()).collect::<Vec<_>>(),
                )
            })
            .collect();
        curves.push(Curve { metric: m.to_string(), x: xs.to_vec(), y });
    }
    let summaries = SUMMARIES
        .iter()
        .enumerate()
        .map(|(k, name)| {
            (name.to_string(), interval(&runs.iter().map(|r| r.summaries()[k]).collect::<Vec<_>>()))
        })
        .collect();
    SettingSummary { lambda, curves, summaries }
}

/// Each setting but uniform minus uniform, paired by seed.
fn paired_diffs(runs: &[ArmRun]) -> Vec<PairedDiff> {
    let uniform = runs_of(runs, 0.0);
    let mut out = Vec::new();
    for &lambda in LAMBDAS.iter().filter(|&&l| l != 0.0) {
        let arm = runs_of(runs, lambda);
        for (k, name) in SUMMARIES.iter().enumerate() {
            let d: Vec<f64> = arm
                .iter()
                .filter_map(|a| {
                    let u = uniform.iter().find(|u| u.seed == a.seed)?;
                    Some(a.summaries()[k] - u.summaries()[k])
                })
                .collect();
            out.push(PairedDiff { lambda, summary: name.to_string(), diff: interval(&d) });
        }
    }
    out
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len().max(1) as f64
}

/// Mean and 95% Student-t interval (two-sided) of independent samples.
pub fn interval(x: &[f64]) -> Interval {
    let n = x.len();
    let m = mean(x);
    if n < 2 {
        return Interval { mean: m, lo: m, hi: m, n };
    }
    let var = x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (n - 1) as f64;
    let h = t975(n - 1) * (var / n as f64).sqrt();
    Interval { mean: m, lo: m - h, hi: m + h, n }
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom (standard tables).
pub fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => T[df - 1],
        31..=60 => 2.000,
        61..=120 => 1.980,
        _ => 1.960,
    }
}

/// FNV-1a 64 of `dir/model.safetensors`: which weights a run started from.
pub fn model_hash(dir: &Path) -> Result<String> {
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
    let h = bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3));
    Ok(format!("{h:016x}"))
}

fn loadavg() -> Option<String> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn fmt_iv(i: &Interval, digits: usize) -> String {
    if i.n < 2 {
        format!("{:.digits$}", i.mean)
    } else {
        format!("{:.digits$} [{:.digits$}, {:.digits$}]", i.mean, i.lo, i.hi)
    }
}

fn setting_name(lambda: f32) -> String {
    if lambda == 0.0 {
        "lambda 0 (uniform)".into()
    } else {
        format!("lambda {lambda} (VAS)")
    }
}

/// The report as Markdown: per-setting summaries, paired differences, validation curve.
pub fn format_ablation(r: &AblationReport) -> String {
    let mut s = format!(
        "Seeds {:?}, {} RL steps per run, validation every {} steps on {} held-out items \
         (greedy); every run starts from the SFT checkpoint {} (model.safetensors FNV-1a {}), \
         eval accuracy there {}. Intervals: 95% Student-t across seeds. Load average (1/5/15 min) \
         at start {}, at end {}, on {} CPUs; {:.0} s in all.\n\n",
        r.seeds,
        r.rl_steps,
        r.eval_every,
        r.eval_items,
        r.sft_checkpoint.display(),
        r.sft_hash,
        r.sft_eval_accuracy.map_or("-".into(), |a| format!("{a:.3}")),
        r.load_start.as_deref().unwrap_or("?"),
        r.load_end.as_deref().unwrap_or("?"),
        r.cpus,
        r.seconds
    );
    s.push_str("### Per setting (mean [95% interval] over seeds)\n\n| setting |");
    for name in SUMMARIES {
        s.push_str(&format!(" {name} |"));
    }
    s.push_str(&format!("\n|---|{}\n", "---|".repeat(SUMMARIES.len())));
    for st in &r.settings {
        s.push_str(&format!("| {} |", setting_name(st.lambda)));
        for (_, iv) in &st.summaries {
            s.push_str(&format!(" {} |", fmt_iv(iv, 3)));
        }
        s.push('\n');
    }
    s.push_str("\n### Paired differences, setting minus uniform (same seed)\n\n| setting |");
    for name in SUMMARIES {
        s.push_str(&format!(" Δ {name} |"));
    }
    s.push_str(&format!("\n|---|{}\n", "---|".repeat(SUMMARIES.len())));
    for &lambda in r.lambdas.iter().filter(|&&l| l != 0.0) {
        s.push_str(&format!("| {} |", setting_name(lambda)));
        for d in r.paired.iter().filter(|d| d.lambda == lambda) {
            s.push_str(&format!(" {} |", fmt_iv(&d.diff, 3)));
        }
        s.push('\n');
    }
    s.push_str("\n### Validation accuracy against RL step (mean [95% interval])\n\n| step |");
    for st in &r.settings {
        s.push_str(&format!(" {} |", setting_name(st.lambda)));
    }
    s.push_str(&format!("\n|---|{}\n", "---|".repeat(r.settings.len())));
    if let Some(c0) = r.settings[0].curves.iter().find(|c| c.metric == "val_accuracy") {
        for (i, x) in c0.x.iter().enumerate() {
            s.push_str(&format!("| {x} |"));
            for st in &r.settings {
                let c = st.curves.iter().find(|c| c.metric == "val_accuracy");
                s.push_str(&format!(
                    " {} |",
                    c.and_then(|c| c.y.get(i)).map_or("-".into(), |iv| fmt_iv(iv, 3))
                ));
            }
            s.push('\n');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_interval_matches_a_hand_computed_case() {
        // x = 1, 2, 3, 4: mean 2.5, s = 1.29099, se = 0.645497, t(3) = 3.182.
        let iv = interval(&[1.0, 2.0, 3.0, 4.0]);
        assert!((iv.mean - 2.5).abs() < 1e-12);
        assert!((iv.hi - (2.5 + 3.182 * 0.645_497)).abs() < 1e-5, "{iv:?}");
        assert!((iv.lo + iv.hi - 5.0).abs() < 1e-12);
        let one = interval(&[0.7]);
        assert_eq!((one.lo, one.hi, one.n), (0.7, 0.7, 1));
        assert_eq!(t975(1), 12.706);
        assert_eq!(t975(500), 1.96);
    }
}
