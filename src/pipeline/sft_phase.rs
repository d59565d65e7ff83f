//! The cold-start SFT phase of a run: train (or continue training) the starting model on
//! `data.sft`, one named stage per optimizer step: step, finite check, log, periodic eval,
//! checkpoint. The loop itself is `train::sft::SftTrainer`; this file is what the pipeline
//! does around it.

use super::config::TrainConfig;
use super::diverged::{diverged, unless_weights_diverged};
use super::inputs::RunInputs;
use super::metrics::{EvalLabel, MetricsLog, Phase, Record};
use super::run_policy::VlEval;
use crate::backend::rl_ops::RlOps;
use crate::data::sft_data::load_sft_dataset;
use crate::data::vl_sft_data::load_vl_sft_dataset;
use crate::dist::{sync_replicas, zero, Collective};
use crate::model::vl_forward::VlModel;
use crate::model::Qwen2;
use crate::optim::AdamwConfig;
use crate::progress::bar;
use crate::train::checkpoint::prune_checkpoints;
use crate::train::sft::{SftConfig, SftStepMetrics, SftTrainer};
use crate::train::vl_sft::VlSftTrainer;
use anyhow::{bail, Result};
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};

/// The run configuration's SFT section as trainer settings.
pub fn sft_config(cfg: &TrainConfig) -> SftConfig {
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
            max_grad_norm: (s.grad_clip > 0.0).then_some(s.grad_clip),
            ..AdamwConfig::default()
        },
        seed: cfg.seed,
    }
}

pub struct SftPhase<'a, B: RlOps> {
    pub be: &'a B,
    pub inputs: &'a RunInputs,
    /// `OUT/sft`: checkpoints of this phase.
    pub dir: PathBuf,
    /// The data-parallel group (`Single` in one process): rank 0 writes the checkpoints.
    pub comm: &'a dyn Collective<B>,
}

impl<'a, B: RlOps> SftPhase<'a, B> {
    /// Trains `model` from the start, or continues from checkpoint `ck`, to the end of the
    /// phase; the phase always ends on a checkpoint. Returns the trainer (its model is the
    /// phase's result).
    pub fn run(
        &self,
        model: Qwen2<B>,
        ck: Option<&Path>,
        log: &mut MetricsLog,
    ) -> Result<SftTrainer<B>> {
        let cfg = &self.inputs.cfg;
        let (data, dropped) =
            load_sft_dataset(&cfg.data.sft, &self.inputs.tok, None, cfg.sft.max_len)?;
        if dropped > 0 {
            eprintln!("note: {dropped} SFT example(s) had no trained token within sft.max_len and were dropped");
        }
        let mut tr = match ck {
            Some(ck) => SftTrainer::resume_ranked(self.be, ck, data, self.comm, cfg.dist.zero)?,
            None => SftTrainer::new_ranked(
                self.be,
                model,
                data,
                sft_config(cfg),
                self.comm,
                cfg.dist.zero,
            )?,
        };
        tr.ws.recompute = cfg.model.recompute;
        tr.grad_buckets = cfg.dist.grad_buckets;
        sync_replicas(self.be, self.comm, &mut tr.model, &mut tr.opt)?;
        let pb = bar(tr.state.total_steps, "cold-start SFT");
        pb.set_position(tr.state.step);
        while !tr.done() {
            let m = tr.step_with(self.be, self.comm)?;
            self.check_finite(&m)?;
            log.write(&Record::Sft(m.clone()))?;
            self.show(&pb, &m, tr.state.step, tr.state.total_steps, tr.done());
            let total = tr.state.total_steps;
            if self.inputs.periodic_eval_due(m.step, total) {
                let (be, model) = (self.be, &tr.model);
                self.inputs.eval_and_log(
                    be,
                    model,
                    log,
                    Phase::Sft,
                    m.step,
                    EvalLabel::Periodic,
                )?;
            }
            // After the periodic eval: a checkpoint at a step means its records are all written.
            let cfg = &self.inputs.cfg;
            let dir = &self.dir;
            let save = || {
                // Sharded moments are gathered first (every rank takes part); rank 0 writes.
                let full = zero::consolidated(self.be, self.comm, &tr.opt)?;
                if self.comm.rank() != 0 {
                    return Ok(None);
                }
                let (dtype, tok) =
                    (cfg.output.save_dtype, Some(self.inputs.tokenizer_path.as_path()));
                tr.save_with(self.be, dir, dtype, tok, zero::for_save(&tr.opt, &full)).map(Some)
            };
            self.checkpoint_if_due(save, m.step, tr.done())?;
        }
        pb.finish_and_clear();
        Ok(tr)
    }

    /// [`SftPhase::run`] for a Qwen2.5-VL model (`data.sft` lines may name images; the vision
    /// tower frozen unless `model.freeze_vision = false`): the same steps, logs, evaluations
    /// and checkpoints, through `VlSftTrainer`. One process only.
    pub fn run_vl(
        &self,
        model: VlModel<B>,
        ck: Option<&Path>,
        log: &mut MetricsLog,
    ) -> Result<VlSftTrainer<B>> {
        if self.comm.world() > 1 {
            bail!("data-parallel SFT of a Qwen2.5-VL model is not supported yet: run `train` in one process");
        }
        let cfg = &self.inputs.cfg;
        let model_dir = &cfg.model.dir;
        // The same renderer as the RL and eval prompts (`data::prompt`): the checkpoint's own
        // template, else the built-in ChatML with no system turn.
        let (data, dropped) = load_vl_sft_dataset(
            &cfg.data.sft,
            &self.inputs.tok,
            None,
            cfg.sft.max_len,
            model_dir,
            &model.cfg,
        )?;
        if dropped > 0 {
            eprintln!("note: {dropped} SFT example(s) had no trained token within sft.max_len and were dropped");
        }
        let mut tr = match ck {
            Some(ck) => VlSftTrainer::resume(self.be, ck, data)?,
            None => {
                let freeze = cfg.model.freeze_vision;
                VlSftTrainer::new(self.be, model, model_dir, data, sft_config(cfg), freeze)?
            }
        };
        let pb = bar(tr.state.total_steps, "cold-start SFT");
        pb.set_position(tr.state.step);
        while !tr.done() {
            let m = tr.step(self.be)?;
            self.check_finite(&m)?;
            log.write(&Record::Sft(m.clone()))?;
            self.show(&pb, &m, tr.state.step, tr.state.total_steps, tr.done());
            if self.inputs.periodic_eval_due(m.step, tr.state.total_steps) {
                let model = VlEval(&tr.model, &tr.model_dir);
                self.inputs.eval_and_log(
                    self.be,
                    &model,
                    log,
                    Phase::Sft,
                    m.step,
                    EvalLabel::Periodic,
                )?;
            }
            let save = || tr.save(self.be, &self.dir, cfg.output.save_dtype).map(Some);
            self.checkpoint_if_due(save, m.step, tr.done())?;
        }
        pb.finish_and_clear();
        Ok(tr)
    }

    fn check_finite(&self, m: &SftStepMetrics) -> Result<()> {
        if m.loss.is_finite() && !m.skipped {
            return Ok(());
        }
        let what = if m.loss.is_finite() {
            format!("the gradient norm is not finite ({})", m.grad_norm)
        } else {
            format!("the loss is not finite ({})", m.loss)
        };
        if self.comm.rank() != 0 {
            // Rank 0 sets the checkpoint aside and says which one to resume from.
            return Err(anyhow::anyhow!("SFT step {}: {what}", m.step));
        }
        Err(diverged("SFT", &self.dir, &self.inputs.out, m.step, &what))
    }

    fn show(&self, pb: &ProgressBar, m: &SftStepMetrics, step: u64, total: u64, done: bool) {
        pb.set_position(step);
        if self.comm.rank() == 0 && (m.step.is_multiple_of(10) || done) {
            pb.suspend(|| {
                eprintln!(
                    "sft {:>4}/{}  loss {:.4}  lr {:.2e}  grad {:.3}  {:.0} tok/s{}",
                    m.step,
                    total,
                    m.loss,
                    m.lr,
                    m.grad_norm,
                    m.tokens_per_s,
                    super::metrics::peak_note(m.device_memory)
                )
            });
        }
    }

    /// Saves when a checkpoint is due after `step`: every `output.checkpoint_every` steps and
    /// at the end of the phase (`done`). Every rank calls `save` (it may gather sharded state);
    /// rank 0's writes the checkpoint and returns its path, the others return `None`.
    fn checkpoint_if_due(
        &self,
        save: impl FnOnce() -> Result<Option<PathBuf>>,
        step: u64,
        done: bool,
    ) -> Result<()> {
        let cfg = &self.inputs.cfg;
        let every = cfg.output.checkpoint_every as u64;
        if (every > 0 && step.is_multiple_of(every)) || done {
            let written = save()
                .map_err(|e| unless_weights_diverged("SFT", &self.dir, &self.inputs.out, e))?;
            if written.is_some() {
                prune_checkpoints(&self.dir, cfg.output.keep_checkpoints)?;
            }
            // No rank goes on before the checkpoint is complete.
            self.comm.barrier()?;
        }
        Ok(())
    }
}
