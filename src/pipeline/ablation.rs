//! `train --demo-ablation`: uniform sampling (lambda = 0) against VAS (lambda = 1) from the
//! same SFT checkpoint with the same seeds, side by side: mean gradient norm, zero-variance
//! group fraction and accuracy per step (MMR1's Figure 2 in miniature).

use super::config::TrainConfig;
use super::inputs::{EvalResult, RunInputs, Start};
use super::run::{run_pipeline, RunReport};
use crate::fs::write_atomic;
use crate::train::checkpoint::latest_checkpoint;
use anyhow::{Context, Result};

/// `overwrite`: replace the checkpoints of an earlier ablation in the same directories.
pub fn run_ablation<B: crate::backend::Backend>(
    be: &B,
    cfg: TrainConfig,
    overwrite: bool,
) -> Result<()> {
    let out = cfg.output.dir.clone();
    // One SFT run shared by both arms.
    let mut sft_cfg = cfg.clone();
    sft_cfg.rl.steps = 0;
    let sft_inputs = RunInputs::prepare(sft_cfg, Start::Fresh { overwrite })?;
    eprintln!("ablation: cold-start SFT into {}", out.display());
    let sft_report = run_pipeline(be, &sft_inputs)?;
    let start = latest_checkpoint(&out.join("sft"))?.context("the SFT phase left no checkpoint")?;
    let mut arms: Vec<(f32, RunReport)> = Vec::new();
    for lambda in [0.0f32, 1.0] {
        let mut c = sft_inputs.cfg.clone();
        c.rl.steps = cfg.rl.steps;
        c.output.dir = out.join(format!("lambda-{lambda}"));
        c.model.dir = start.clone();
        c.data.sft = Default::default();
        c.vas.lambda = lambda;
        eprintln!("ablation: GRPO with lambda = {lambda} into {}", c.output.dir.display());
        let inputs = RunInputs::prepare(c, Start::Fresh { overwrite })?;
        arms.push((lambda, run_pipeline(be, &inputs)?));
    }
    let table = format_ablation(&sft_report, &arms);
    write_atomic(&out.join("ablation.md"), table.as_bytes())?;
    println!("{table}");
    println!("written to {}", out.join("ablation.md").display());
    Ok(())
}

fn format_ablation(sft: &RunReport, arms: &[(f32, RunReport)]) -> String {
    let (u, v) = (&arms[0].1, &arms[1].1);
    let mut s = String::from("| step | accuracy (uniform) | accuracy (VAS) | zero-var groups (uniform) | zero-var groups (VAS) | grad norm (uniform) | grad norm (VAS) |\n|---|---|---|---|---|---|---|\n");
    for (a, b) in u.rl_steps.iter().zip(&v.rl_steps) {
        s.push_str(&format!(
            "| {} | {:.3} | {:.3} | {:.2} | {:.2} | {:.3} | {:.3} |\n",
            a.step,
            a.accuracy,
            b.accuracy,
            a.zero_var_frac,
            b.zero_var_frac,
            a.grad_norm,
            b.grad_norm
        ));
    }
    let mean = |r: &RunReport, f: fn(&super::rl_phase::RlStepSummary) -> f64| {
        r.rl_steps.iter().map(f).sum::<f64>() / r.rl_steps.len().max(1) as f64
    };
    s.push_str(&format!(
        "| **mean** | {:.3} | {:.3} | {:.2} | {:.2} | {:.3} | {:.3} |\n",
        mean(u, |x| x.accuracy),
        mean(v, |x| x.accuracy),
        mean(u, |x| x.zero_var_frac),
        mean(v, |x| x.zero_var_frac),
        mean(u, |x| x.grad_norm),
        mean(v, |x| x.grad_norm)
    ));
    let acc = |r: &Option<EvalResult>| r.map_or("-".into(), |e| format!("{:.3}", e.accuracy));
    s.push_str(&format!(
        "\neval accuracy: after SFT {}; after RL uniform (lambda 0) {}; after RL VAS (lambda 1) {}\n",
        acc(&sft.after_sft),
        acc(&u.after_rl),
        acc(&v.after_rl)
    ));
    s
}
