//! The whole MMR1 pipeline as one run: (demo setup,) evaluation, cold-start SFT, evaluation,
//! GRPO + VAS, evaluation, report. Every phase checkpoints under the output directory, and
//! `resume` continues a killed run from its last checkpoint with nothing lost.

use super::config::TrainConfig;
use super::demo_setup::materialize_demo;
use super::metrics::{read_metrics, MetricsLog};
use super::rl_phase::{grpo_settings, RlPhase, RlStepSummary};
use crate::backend::Backend;
use crate::data::rl_items::{load_rl_items, RlItem};
use crate::data::sft_data::load_sft_dataset;
use crate::fs::write_atomic;
use crate::model::{Qwen2, Qwen2Config};
use crate::optim::AdamwConfig;
use crate::progress::bar;
use crate::rl::evaluate::{evaluate_with_progress, EvalParams};
use crate::rl::graded::{encode_prompts, stop_ids};
use crate::rl::trainer::GrpoSettings;
use crate::tokenizer::Tokenizer;
use crate::train::checkpoint::{latest_checkpoint, prune_checkpoints, step_of};
use crate::train::sft::{SftConfig, SftTrainer};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Accuracy and format rate of one evaluation.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct EvalResult {
    pub accuracy: f64,
    pub format: f64,
    pub items: usize,
}

/// What a run reports at the end (also `OUT/report.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunReport {
    pub before_sft: Option<EvalResult>,
    pub after_sft: Option<EvalResult>,
    pub after_rl: Option<EvalResult>,
    pub rl_steps: Vec<RlStepSummary>,
    pub seconds: f64,
}

/// Inputs of a run, loaded once.
pub struct RunInputs {
    pub cfg: TrainConfig,
    pub out: PathBuf,
    pub tok: Tokenizer,
    pub tokenizer_path: PathBuf,
    pub rl_items: Vec<RlItem>,
    pub rl_prompts: Vec<Vec<u32>>,
    pub eval_items: Vec<RlItem>,
}

/// Tokenized prompts of `items`; a prompt longer than `rl.max_prompt_len` is an error naming
/// the item.
fn prompts_of(
    model: &Qwen2Config,
    tok: &Tokenizer,
    items: &[RlItem],
    cfg: &TrainConfig,
) -> Result<Vec<Vec<u32>>> {
    let prompts = encode_prompts(model, tok, items, cfg.data.prompt_style, cfg.rl.max_new_tokens)?;
    if let Some((i, p)) = prompts.iter().enumerate().find(|(_, p)| p.len() > cfg.rl.max_prompt_len)
    {
        bail!(
            "item {:?}: prompt has {} tokens, over rl.max_prompt_len {}",
            items[i].id_or(i),
            p.len(),
            cfg.rl.max_prompt_len
        );
    }
    Ok(prompts)
}

impl RunInputs {
    /// Validates the config, materializes the demo when no model is given, loads the data.
    pub fn prepare(mut cfg: TrainConfig) -> Result<Self> {
        cfg.validate()?;
        let out = cfg.output.dir.clone();
        std::fs::create_dir_all(&out)
            .with_context(|| format!("cannot create output directory {}", out.display()))?;
        // Fail early on an unwritable output directory, not after an hour of training.
        write_atomic(&out.join(".write-test"), b"ok")
            .with_context(|| format!("output directory {} is not writable", out.display()))?;
        let _ = std::fs::remove_file(out.join(".write-test"));
        if cfg.model.dir.as_os_str().is_empty() {
            if !cfg.data.rl.as_os_str().is_empty() || !cfg.data.sft.as_os_str().is_empty() {
                bail!("model.dir is empty but data was given: set model.dir to a Hugging Face Qwen2 model directory");
            }
            materialize_demo(&mut cfg, &out)?;
        }
        let tokenizer_path = cfg.model.dir.join("tokenizer.json");
        let tok = Tokenizer::from_file(&tokenizer_path)?;
        let load = |p: &Path| -> Result<Vec<RlItem>> {
            if p.as_os_str().is_empty() {
                Ok(vec![])
            } else {
                load_rl_items(p, cfg.data.bad_lines)
            }
        };
        let rl_items = load(&cfg.data.rl)?;
        let mut eval_items = load(&cfg.data.eval)?;
        if cfg.eval.max_items > 0 {
            eval_items.truncate(cfg.eval.max_items);
        }
        if !rl_items.is_empty() && cfg.rl.batch_size > rl_items.len() {
            bail!(
                "rl.batch_size {} is larger than the {} RL items in {}",
                cfg.rl.batch_size,
                rl_items.len(),
                cfg.data.rl.display()
            );
        }
        // The model's config bounds prompt lengths; its weights are loaded by the phases.
        let mcfg = Qwen2Config::load(&cfg.model.dir)?;
        let rl_prompts = prompts_of(&mcfg, &tok, &rl_items, &cfg)?;
        prompts_of(&mcfg, &tok, &eval_items, &cfg)?;
        write_atomic(&out.join("config.toml"), cfg.to_toml().as_bytes())?;
        Ok(RunInputs { cfg, out, tok, tokenizer_path, rl_items, rl_prompts, eval_items })
    }

    pub fn settings(&self, model: &Qwen2<impl Backend>) -> GrpoSettings {
        grpo_settings(&self.cfg, stop_ids(model, &self.tok))
    }

    /// Accuracy of `model` on the eval items (greedy unless eval.temperature > 0).
    pub fn evaluate<B: Backend>(&self, be: &B, model: &Qwen2<B>) -> Result<Option<EvalResult>> {
        if self.eval_items.is_empty() {
            return Ok(None);
        }
        let params = EvalParams {
            k: 1,
            temperature: self.cfg.eval.temperature,
            top_p: 1.0,
            max_new_tokens: self.cfg.rl.max_new_tokens,
            prompt_style: self.cfg.data.prompt_style,
            seed: self.cfg.seed ^ 0xe7a1,
            max_items: 0,
            batch_items: 64,
        };
        let pb = bar(self.eval_items.len() as u64, "evaluating");
        let r = evaluate_with_progress(model, be, &self.tok, &self.eval_items, &params, |done| {
            pb.set_position(done as u64)
        })?;
        pb.finish_and_clear();
        Ok(Some(EvalResult { accuracy: r.accuracy, format: r.format_rate, items: r.items }))
    }
}

fn log_eval(
    log: &mut MetricsLog,
    of: &str,
    step: u64,
    label: &str,
    r: &Option<EvalResult>,
) -> Result<()> {
    if let Some(r) = r {
        eprintln!(
            "eval {label:>10}: accuracy {:.3}  format {:.3}  ({} items)",
            r.accuracy, r.format, r.items
        );
        log.write(&json!({"phase": "eval", "of": of, "step": step, "label": label, "accuracy": r.accuracy, "format": r.format, "items": r.items}))?;
    }
    Ok(())
}

fn sft_config(cfg: &TrainConfig) -> SftConfig {
    let s = &cfg.sft;
    SftConfig {
        epochs: s.epochs,
        batch_size: s.batch_size,
        micro_batch_tokens: cfg.rl.micro_batch_tokens,
        max_len: s.max_len,
        lr: s.lr,
        min_lr: s.lr * s.min_lr_ratio,
        warmup_ratio: s.warmup_ratio as f64,
        cosine: true,
        adamw: AdamwConfig {
            weight_decay: s.weight_decay,
            max_grad_norm: Some(s.grad_clip),
            ..AdamwConfig::default()
        },
        seed: cfg.seed,
    }
}

/// Runs (or, with `resume`, continues) the pipeline on backend `be`.
pub fn run_pipeline<B: Backend>(be: &B, inputs: &RunInputs, resume: bool) -> Result<RunReport> {
    let t0 = Instant::now();
    let cfg = &inputs.cfg;
    let out = &inputs.out;
    let (sft_dir, rl_dir) = (out.join("sft"), out.join("rl"));
    let rl_ck = if resume { latest_checkpoint(&rl_dir)? } else { None };
    let sft_ck = if resume { latest_checkpoint(&sft_dir)? } else { None };
    let keep = match (&rl_ck, &sft_ck) {
        (Some(p), _) => Some(("rl", step_of(p))),
        (None, Some(p)) => Some(("sft", step_of(p))),
        (None, None) if resume => {
            bail!("{}: nothing to resume (no checkpoint under sft/ or rl/)", out.display())
        }
        _ => None,
    };
    let mut log = MetricsLog::open(out, if resume { keep } else { Some(("sft", 0)) })?;
    // The metrics log is the record of what already happened: a resumed run's report is
    // rebuilt from it (it was just trimmed to the checkpoint).
    let mut report =
        if resume { report_from_metrics(&read_metrics(log.path())?) } else { RunReport::default() };

    // ---- cold-start SFT ---------------------------------------------------------------
    let want_sft = cfg.sft.epochs > 0 && !cfg.data.sft.as_os_str().is_empty();
    let (mut policy, rl_start_dir) = if rl_ck.is_some() {
        (None, None)
    } else {
        let model = Qwen2::load(be, &cfg.model.dir)?;
        if sft_ck.is_none() {
            // Without an SFT phase the starting model is what RL starts from: report it so.
            let e = inputs.evaluate(be, &model)?;
            if want_sft {
                report.before_sft = e;
                log_eval(&mut log, "sft", 0, "before SFT", &report.before_sft)?;
            } else {
                report.after_sft = e;
                log_eval(&mut log, "sft", 0, "start", &report.after_sft)?;
            }
        }
        if want_sft {
            let (data, dropped) =
                load_sft_dataset(&cfg.data.sft, &inputs.tok, None, cfg.sft.max_len)?;
            if dropped > 0 {
                eprintln!("note: {dropped} SFT example(s) had no trained token within sft.max_len and were dropped");
            }
            let mut tr = match &sft_ck {
                Some(ck) => SftTrainer::resume(be, ck, data)?,
                None => SftTrainer::new(be, model, data, sft_config(cfg))?,
            };
            let pb = bar(tr.state.total_steps, "cold-start SFT");
            pb.set_position(tr.state.step);
            while !tr.done() {
                let m = tr.step(be)?;
                if !m.loss.is_finite() || m.skipped {
                    bail!("SFT step {}: the loss or gradient is not finite; stopping. Last good checkpoint: {:?}", m.step, latest_checkpoint(&sft_dir)?);
                }
                let mut v = serde_json::to_value(&m)?;
                v["phase"] = "sft".into();
                log.write(&v)?;
                pb.set_position(tr.state.step);
                if m.step % 10 == 0 || tr.done() {
                    pb.suspend(|| {
                        eprintln!(
                            "sft {:>4}/{}  loss {:.4}  lr {:.2e}  grad {:.3}  {:.0} tok/s",
                            m.step, tr.state.total_steps, m.loss, m.lr, m.grad_norm, m.tokens_per_s
                        )
                    });
                }
                let every = cfg.output.checkpoint_every as u64;
                if (every > 0 && m.step % every == 0) || tr.done() {
                    tr.save(be, &sft_dir, cfg.output.save_dtype, Some(&inputs.tokenizer_path))?;
                    prune_checkpoints(&sft_dir, cfg.output.keep_checkpoints)?;
                }
            }
            pb.finish_and_clear();
            report.after_sft = inputs.evaluate(be, &tr.model)?;
            log_eval(&mut log, "sft", tr.state.step, "after SFT", &report.after_sft)?;
            let dir = latest_checkpoint(&sft_dir)?.context("SFT finished without a checkpoint")?;
            (Some(tr.model), Some(dir))
        } else {
            (Some(model), Some(cfg.model.dir.clone()))
        }
    };

    // ---- GRPO + VAS ------------------------------------------------------------------
    if cfg.rl.steps > 0 && !inputs.rl_items.is_empty() {
        let settings = match &policy {
            Some(p) => inputs.settings(p),
            None => inputs.settings(&Qwen2::<B>::load(be, &cfg.model.dir)?),
        };
        let phase = RlPhase {
            be,
            cfg,
            tok: &inputs.tok,
            tokenizer_path: &inputs.tokenizer_path,
            items: &inputs.rl_items,
            prompt_ids: &inputs.rl_prompts,
            settings,
            dir: rl_dir.clone(),
        };
        let mut run = match &rl_ck {
            Some(ck) => phase.resume(ck)?,
            None => phase.start(
                policy.take().expect("policy loaded above"),
                rl_start_dir.as_deref().expect("start dir set above"),
            )?,
        };
        let steps = phase.run(&mut run, &mut log, |_m, _s| Ok(()))?;
        report.rl_steps.extend(steps);
        report.after_rl = inputs.evaluate(be, &run.policy)?;
        log_eval(&mut log, "rl", run.state.step, "after RL", &report.after_rl)?;
    }
    report.seconds += t0.elapsed().as_secs_f64();
    write_atomic(&out.join("report.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
    Ok(report)
}

/// Rebuilds a report from metrics records (evaluations by label, RL step records).
pub fn report_from_metrics(records: &[serde_json::Value]) -> RunReport {
    let mut r = RunReport::default();
    for v in records {
        let f = |k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(0.0);
        match v.get("phase").and_then(|p| p.as_str()) {
            Some("eval") => {
                let e = Some(EvalResult {
                    accuracy: f("accuracy"),
                    format: f("format"),
                    items: f("items") as usize,
                });
                match v.get("label").and_then(|l| l.as_str()) {
                    Some("before SFT") => r.before_sft = e,
                    Some("after SFT") | Some("start") => r.after_sft = e,
                    Some("after RL") => r.after_rl = e,
                    _ => {}
                }
            }
            Some("rl") if v.get("event").is_none() => r.rl_steps.push(RlStepSummary {
                step: f("step") as u64,
                accuracy: f("accuracy"),
                zero_var_frac: f("zero_var_frac"),
                grad_norm: f("grad_norm"),
            }),
            _ => {}
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
    s
}
