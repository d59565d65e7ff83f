//! The GRPO + Variance-Aware Sampling phase (MMR1 Algorithm 1): score the items with the
//! starting policy, then each step draw a batch (lambda*B by VPS, the rest uniform), roll out
//! G responses per prompt, grade, update the policy, and refresh VPS every T_update steps.
//! Its whole state (step, sampler RNG, VPS table, pending scores) is saved in checkpoints.

use super::config::TrainConfig;
use super::diverged::{diverged, unless_weights_diverged};
use super::inputs::RunInputs;
use super::metrics::{
    peak_note, EvalLabel, MetricsLog, Phase, Record, RlStepRecord, RlStepTimes, ScoringRecord,
    VpsSummary,
};
use super::run_policy::RunPolicy;
use super::vps_log::{item_bins, vps_record, VpsLog};
use crate::backend::rl_ops::RlOps;
use crate::backend::Backend;
use crate::data::rl_items::RlItem;
use crate::dist::{zero, Collective};
use crate::model::Qwen2;
use crate::optim::{AdamW, AdamwConfig};
use crate::progress::bar;
use crate::rl::advantage::{AdvantageConfig, Convention, GroupStats, ScaleRewards};
use crate::rl::grpo::{informative_groups, CovParams, KlConfig, LossConfig};
use crate::rl::overlong::OverlongPenalty;
use crate::rl::reward::RewardConfig;
use crate::rl::rollout::{mix_seed, SamplingParams};
use crate::rl::trainer::{
    collect_with, update_with, Experience, GrpoExtras, GrpoSettings, UpdateReport,
};
use crate::rl::vas::{TdsMetric, UnscoredPrior, VasSampler, VpsTable};
use crate::train::checkpoint::{prune_checkpoints, StateKind};
use crate::train::Workspace;
use anyhow::{bail, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Training rollouts of one item, waiting for the next VPS refresh.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PendingScore {
    pub item: usize,
    pub correctness: Vec<f32>,
    pub tokens: Vec<Vec<u32>>,
}

/// `trainer_state.json` of the RL phase.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RlState {
    pub kind: StateKind,
    /// RL steps done.
    pub step: u64,
    pub sampler_rng: ChaCha8Rng,
    pub table: VpsTable,
    pub pending: Vec<PendingScore>,
    /// Where the frozen reference policy (the RL starting point) is, for the KL term.
    pub reference_dir: PathBuf,
    pub items: usize,
}

/// Resolves the run configuration into GRPO settings: the convention's preset, then every
/// configured key on top.
pub fn grpo_settings(cfg: &TrainConfig, stop_ids: Vec<u32>) -> GrpoSettings {
    let r = &cfg.rl;
    let mut adv = match r.convention {
        Convention::Trl => AdvantageConfig::trl(),
        Convention::Verl | Convention::Mmr1 => AdvantageConfig::verl(),
    };
    adv.estimator = r.adv_estimator;
    adv.scale = if r.norm_adv_by_std { r.scale_rewards } else { ScaleRewards::None };
    let mut loss = match r.convention {
        Convention::Mmr1 => LossConfig::mmr1(),
        Convention::Verl => LossConfig::verl(),
        Convention::Trl => LossConfig::trl(),
    };
    loss.policy = r.policy_loss;
    loss.clip_eps_low = r.clip_eps_low as f64;
    loss.clip_eps_high = r.clip_eps_high as f64;
    loss.dual_clip_c = (r.dual_clip > 0.0).then_some(r.dual_clip as f64);
    loss.trl_delta = (r.delta > 0.0).then_some(r.delta as f64);
    loss.kl =
        (r.kl_coef > 0.0).then_some(KlConfig { estimator: r.kl_estimator, coef: r.kl_coef as f64 });
    loss.kl_ratio_weighted = r.use_bias_correction_kl;
    loss.entropy_coef = r.entropy_coef as f64;
    loss.agg = r.loss_agg;
    loss.sapo_tau_pos = r.tau_pos as f64;
    loss.sapo_tau_neg = r.tau_neg as f64;
    loss.cov = CovParams {
        clip_cov_ratio: r.clip_cov_ratio as f64,
        clip_cov_lb: r.clip_cov_lb as f64,
        clip_cov_ub: r.clip_cov_ub as f64,
        kl_cov_ratio: r.kl_cov_ratio as f64,
        ppo_kl_coef: r.ppo_kl_coef as f64,
    };
    let extras = GrpoExtras {
        overlong: (r.overlong_buffer_len > 0).then_some(OverlongPenalty {
            buffer_len: r.overlong_buffer_len,
            penalty_factor: r.overlong_penalty_factor,
            max_response_len: r.max_new_tokens,
        }),
        top_entropy_quantile: (r.top_entropy_quantile < 1.0).then_some(r.top_entropy_quantile),
        seed: mix_seed(cfg.seed, 0xc0f),
        grad_buckets: cfg.dist.grad_buckets,
        old_logprob_pass: r.old_logprob_pass,
    };
    GrpoSettings {
        group_size: r.group_size,
        sampling: SamplingParams {
            temperature: r.temperature,
            top_p: r.top_p,
            top_k: r.top_k,
            max_new_tokens: r.max_new_tokens,
            stop_ids,
            stop_strings: vec![],
            kv_slots: r.rollout_slots,
        },
        loss,
        adv,
        reward: RewardConfig {
            accuracy_weight: cfg.reward.accuracy_weight,
            format_weight: cfg.reward.format_weight,
        },
        ppo_epochs: r.ppo_epochs,
        mini_batches: r.mini_batches,
        micro_batch_tokens: r.micro_batch_tokens,
        extras,
    }
}

/// Everything the RL phase works on.
pub struct RlPhase<'a, B: RlOps> {
    pub be: &'a B,
    pub inputs: &'a RunInputs,
    pub settings: GrpoSettings,
    /// `OUT/rl`: checkpoints of this phase.
    pub dir: PathBuf,
    /// The data-parallel group (`Single` in one process): each rank decodes its share of a
    /// step's prompts and computes its share of the update; rank 0 writes checkpoints and logs.
    pub comm: &'a dyn Collective<B>,
}

/// The state of a phase in progress: policy, optimizer, reference, sampler state. The
/// policy is a text `Qwen2` or a Qwen2.5-VL `VlPolicy` (`run_policy::RunPolicy`).
pub struct RlRun<B: RlOps, P = Qwen2<B>> {
    pub policy: P,
    pub opt: AdamW<B>,
    pub reference: Option<P>,
    pub state: RlState,
}

/// Per-step numbers the run report keeps.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RlStepSummary {
    pub step: u64,
    pub accuracy: f64,
    pub zero_var_frac: f64,
    pub grad_norm: f64,
}

/// The prompts of one step: `weighted` drawn by VPS, then `uniform` ones.
struct Batch {
    indices: Vec<usize>,
    weighted: usize,
    uniform: usize,
}

/// One step's graded rollouts (after the dynamic filter, when on) and their numbers.
struct Rollouts {
    exp: Experience,
    stats: GroupStats,
    accuracy: f64,
    format: f64,
    filtered_groups: usize,
    seconds: f64,
}

/// What the policy update did (None: no group left to learn from).
struct Updated {
    report: Option<UpdateReport>,
    seconds: f64,
}

impl<'a, B: RlOps> RlPhase<'a, B> {
    fn cfg(&self) -> &TrainConfig {
        &self.inputs.cfg
    }

    fn adamw(&self) -> AdamwConfig {
        let r = &self.cfg().rl;
        AdamwConfig {
            weight_decay: r.weight_decay,
            max_grad_norm: (r.grad_clip > 0.0).then_some(r.grad_clip),
            ..AdamwConfig::default()
        }
    }

    fn items(&self) -> &[RlItem] {
        &self.inputs.rl_items
    }

    /// A fresh phase starting from `policy` (whose files are in `start_dir`).
    pub fn start<P: RunPolicy<B>>(&self, policy: P, start_dir: &Path) -> Result<RlRun<B, P>> {
        let v = &self.cfg().vas;
        let table = VpsTable::with_params(
            self.items().len(),
            v.alpha,
            v.beta,
            TdsMetric::default(),
            UnscoredPrior::Optimistic,
        );
        let reference = self.settings.loss.kl.is_some().then(|| policy.frozen_copy(self.be));
        let mut policy = policy;
        let mut opt =
            policy.new_optimizer(self.be, self.comm, self.adamw(), self.cfg().dist.zero)?;
        policy.sync_replicas(self.be, self.comm, &mut opt)?;
        let state = RlState {
            kind: StateKind::Rl,
            step: 0,
            sampler_rng: ChaCha8Rng::seed_from_u64(mix_seed(self.cfg().seed, 0x5a4d)),
            table,
            pending: vec![],
            reference_dir: start_dir.to_path_buf(),
            items: self.items().len(),
        };
        Ok(RlRun { policy, opt, reference, state })
    }

    /// Continues the phase from checkpoint directory `ck`.
    pub fn resume<P: RunPolicy<B>>(&self, ck: &Path) -> Result<RlRun<B, P>> {
        let (mut policy, mut opt, state) =
            P::load_checkpoint::<RlState>(self.be, ck, self.inputs, self.comm)?;
        if state.kind != StateKind::Rl || state.items != self.items().len() {
            bail!(
                "{}: not an RL checkpoint of this data ({} items expected, state has {})",
                ck.display(),
                self.items().len(),
                state.items
            );
        }
        let reference = if self.settings.loss.kl.is_some() {
            Some(P::load_reference(self.be, &state.reference_dir, self.inputs)?)
        } else {
            None
        };
        policy.sync_replicas(self.be, self.comm, &mut opt)?;
        Ok(RlRun { policy, opt, reference, state })
    }

    fn collect<P: RunPolicy<B>>(
        &self,
        run: &RlRun<B, P>,
        indices: &[usize],
        s: &GrpoSettings,
        seed: u64,
    ) -> Result<(Experience, GroupStats)> {
        collect_with(
            &run.policy,
            self.be,
            &self.inputs.tok,
            self.items(),
            &self.inputs.rl_prompts,
            indices,
            s,
            seed,
            |_| {},
            self.comm,
        )
    }

    /// Rollouts of every listed item (`score_rollouts` each) with the current policy, graded,
    /// applied to the VPS table.
    pub fn score_items<P: RunPolicy<B>>(
        &self,
        run: &mut RlRun<B, P>,
        indices: &[usize],
        label: &str,
    ) -> Result<f64> {
        let t0 = Instant::now();
        let mut s = self.settings.clone();
        s.group_size = self.cfg().vas.score_rollouts;
        let chunk = self.cfg().rl.batch_size.max(1);
        let pb = bar(indices.len() as u64, label);
        for (c, part) in indices.chunks(chunk).enumerate() {
            let seed = mix_seed(self.cfg().seed, 0x5c0e_0000 + run.state.step * 1000 + c as u64);
            let (exp, _) = self.collect(run, part, &s, seed)?;
            apply_scores(&mut run.state.table, &exp, run.state.step);
            pb.inc(part.len() as u64);
        }
        pb.finish_and_clear();
        Ok(t0.elapsed().as_secs_f64())
    }

    /// Runs steps until `rl.steps`, checkpointing and logging; returns per-step summaries.
    /// Each step: draw a batch, roll out and grade, update the policy, refresh VPS, log,
    /// evaluate when due, checkpoint when due.
    pub fn run<P: RunPolicy<B>>(
        &self,
        run: &mut RlRun<B, P>,
        log: &mut MetricsLog,
    ) -> Result<Vec<RlStepSummary>> {
        let c = self.cfg();
        let total = c.rl.steps as u64;
        let sampler = VasSampler::new(if c.vas.enabled { c.vas.lambda } else { 0.0 });
        let st = match c.dist.zero {
            2 => run.policy.workspace_without_grads(self.be),
            _ => run.policy.workspace(self.be),
        };
        let mut st = st.with_recompute(c.model.recompute);
        let mut summaries = Vec::new();
        // Figure 3's record (vps.jsonl beside metrics.jsonl) at the initial scoring and at
        // every refresh.
        let lead = self.comm.rank() == 0;
        let mut vps_log = (c.vas.enabled && lead)
            .then(|| VpsLog::open(&self.inputs.out, run.state.step))
            .transpose()?;
        self.initial_scoring(run, log, &mut vps_log)?;
        let pb = bar(total, "GRPO + VAS");
        pb.set_position(run.state.step);
        while run.state.step < total {
            let t_step = Instant::now();
            let batch = self.draw_batch(&sampler, run);
            let rolled = self.roll_out(&sampler, run, &batch)?;
            let updated = self.update_policy(run, &rolled.exp, &mut st)?;
            run.state.step += 1;
            let scoring_secs = self.refresh_vps(run, &mut vps_log)?;
            let rec = self.record(run, &batch, &rolled, &updated, scoring_secs, t_step);
            log.write(&Record::Rl(rec.clone()))?;
            pb.set_position(run.state.step);
            pb.suspend(|| if lead { eprintln!(
                "rl {:>4}/{total}  reward {:.3}  acc {:.3}  zero-var {:.2}  grad {:.3}  clip {:.3}  {:.1}s{}",
                rec.step, rec.reward_mean, rec.accuracy, rec.zero_var_frac, rec.grad_norm, rec.clip_frac, rec.time.step,
                peak_note(rec.device_memory)
            )});
            summaries.push(RlStepSummary {
                step: rec.step,
                accuracy: rec.accuracy,
                zero_var_frac: rec.zero_var_frac,
                grad_norm: rec.grad_norm,
            });
            if self.inputs.periodic_eval_due(run.state.step, total) {
                let step = run.state.step;
                self.inputs.eval_and_log(
                    self.be,
                    &run.policy,
                    log,
                    Phase::Rl,
                    step,
                    EvalLabel::Periodic,
                )?;
            }
            // After the periodic eval: a checkpoint at a step means its records are all written.
            self.checkpoint_if_due(run, total)?;
        }
        pb.finish_and_clear();
        Ok(summaries)
    }

    /// Algorithm 1, line 1: every item scored with the starting policy before step 1.
    fn initial_scoring<P: RunPolicy<B>>(
        &self,
        run: &mut RlRun<B, P>,
        log: &mut MetricsLog,
        vps_log: &mut Option<VpsLog>,
    ) -> Result<()> {
        let v = &self.cfg().vas;
        if run.state.step == 0
            && v.enabled
            && v.initial_scoring
            && run.state.table.num_scored() == 0
        {
            let all: Vec<usize> = (0..self.items().len()).collect();
            let before = item_bins(&run.state.table);
            let seconds = self.score_items(run, &all, "initial VPS scoring")?;
            self.check_same_table(run)?;
            if let Some(v) = vps_log.as_mut() {
                v.write(&vps_record(&run.state.table, &before, 0, "initial_scoring"))?;
            }
            log.write(&Record::InitialScoring(ScoringRecord {
                step: 0,
                items: all.len(),
                seconds,
                vps: vps_summary(&run.state.table),
            }))?;
        }
        Ok(())
    }

    /// lambda*B prompts by VPS weight, the rest uniform.
    fn draw_batch<P>(&self, sampler: &VasSampler, run: &mut RlRun<B, P>) -> Batch {
        let b = self.cfg().rl.batch_size.min(self.items().len());
        let parts = sampler.sample_batch_parts(&run.state.table, b, &mut run.state.sampler_rng);
        let (weighted, uniform) = (parts.weighted.len(), parts.uniform.len());
        let mut indices = parts.weighted;
        indices.extend(parts.uniform);
        Batch { indices, weighted, uniform }
    }

    /// G rollouts per prompt, graded; their scores wait for the next VPS refresh. With
    /// `rl.dynamic_filter`, groups without outcome variance are dropped and the batch refilled
    /// (up to 3 rounds).
    fn roll_out<P: RunPolicy<B>>(
        &self,
        sampler: &VasSampler,
        run: &mut RlRun<B, P>,
        batch: &Batch,
    ) -> Result<Rollouts> {
        let c = self.cfg();
        let step = run.state.step;
        let t0 = Instant::now();
        let seed = mix_seed(c.seed, 0x9000_0000 + step);
        let (mut exp, stats) = self.collect(run, &batch.indices, &self.settings, seed)?;
        let seconds = t0.elapsed().as_secs_f64();
        let raw_acc: Vec<f32> = exp.accuracy();
        let accuracy = mean(&raw_acc);
        let format = mean(&exp.verdicts.iter().map(|v| v.format).collect::<Vec<_>>());
        // Scores from this step's rollouts wait for the next refresh (Algorithm 1).
        for (g, &item) in exp.items.iter().enumerate() {
            let r = g * exp.group_size..(g + 1) * exp.group_size;
            run.state.pending.push(PendingScore {
                item,
                correctness: raw_acc[r.clone()].to_vec(),
                tokens: exp.responses[r].to_vec(),
            });
        }
        let mut filtered_groups = 0;
        if c.rl.dynamic_filter {
            let b = batch.indices.len();
            let keep = informative_groups(&raw_acc, exp.group_size);
            filtered_groups = keep.iter().filter(|k| !**k).count();
            exp.retain_groups(&keep);
            let mut refill_round = 0;
            while exp.items.len() < b && refill_round < 3 {
                refill_round += 1;
                let more = sampler.sample_batch(
                    &run.state.table,
                    b - exp.items.len(),
                    &mut run.state.sampler_rng,
                );
                let seed = mix_seed(c.seed, 0xA000_0000 + step * 8 + refill_round);
                let (mut e2, _) = self.collect(run, &more, &self.settings, seed)?;
                let keep = informative_groups(&e2.accuracy(), e2.group_size);
                filtered_groups += keep.iter().filter(|k| !**k).count();
                e2.retain_groups(&keep);
                exp.extend(e2);
            }
        }
        Ok(Rollouts { exp, stats, accuracy, format, filtered_groups, seconds })
    }

    /// The GRPO update on the step's rollouts; stops the run if the loss or a gradient is not
    /// finite.
    fn update_policy<P: RunPolicy<B>>(
        &self,
        run: &mut RlRun<B, P>,
        exp: &Experience,
        st: &mut Workspace<B>,
    ) -> Result<Updated> {
        let t0 = Instant::now();
        if exp.items.is_empty() {
            return Ok(Updated { report: None, seconds: 0.0 });
        }
        let rep = update_with(
            &mut run.policy,
            run.reference.as_ref(),
            &mut run.opt,
            self.be,
            exp,
            &self.settings,
            self.cfg().rl.lr,
            st,
            self.comm,
        )?;
        let bad = rep.steps.iter().find(|s| s.skipped || !s.grad_norm.is_finite());
        if !rep.loss.is_finite() || bad.is_some() {
            let what = match bad {
                Some(s) if rep.loss.is_finite() => {
                    format!("the gradient norm is not finite ({})", s.grad_norm)
                }
                _ => format!("the loss is not finite ({})", rep.loss),
            };
            let step = run.state.step + 1;
            if self.comm.rank() != 0 {
                // Rank 0 sets the checkpoint aside and says which one to resume from.
                bail!("RL step {step}: {what}");
            }
            return Err(diverged("RL", &self.dir, &self.inputs.out, step, &what));
        }
        Ok(Updated { report: Some(rep), seconds: t0.elapsed().as_secs_f64() })
    }

    /// Every `vas.t_update` steps: the pending rollout scores go into the VPS table (and,
    /// with `vas.score_unseen`, items never rolled out are scored). Returns the seconds spent.
    fn refresh_vps<P: RunPolicy<B>>(
        &self,
        run: &mut RlRun<B, P>,
        vps_log: &mut Option<VpsLog>,
    ) -> Result<f64> {
        let v = &self.cfg().vas;
        if !(v.enabled && run.state.step.is_multiple_of(v.t_update as u64)) {
            return Ok(0.0);
        }
        let _r = crate::nvtx_ranges::range(c"scoring");
        let t0 = Instant::now();
        let before = item_bins(&run.state.table);
        for p in std::mem::take(&mut run.state.pending) {
            let toks: Vec<&[u32]> = p.tokens.iter().map(|t| t.as_slice()).collect();
            run.state.table.refresh(p.item, &p.correctness, &toks, run.state.step);
        }
        let mut secs = t0.elapsed().as_secs_f64();
        if v.score_unseen {
            let unseen: Vec<usize> = (0..self.items().len())
                .filter(|&i| run.state.table.item(i).vps.is_none())
                .collect();
            if !unseen.is_empty() {
                secs += self.score_items(run, &unseen, "scoring unseen items")?;
            }
        }
        if let Some(l) = vps_log.as_mut() {
            l.write(&vps_record(&run.state.table, &before, run.state.step, "refresh"))?;
        }
        self.check_same_table(run)?;
        Ok(secs)
    }

    /// Every rank applied the same scores (gathered from every rank's rollouts) in the same
    /// order, so every rank holds the same VPS table, which is what makes them draw the same
    /// batches. Checked after each refresh by comparing a hash of the table across ranks
    /// (a few bytes): drift fails the run by name instead of training on different batches.
    fn check_same_table<P>(&self, run: &RlRun<B, P>) -> Result<()> {
        same_table_on_every_rank(self.comm, &run.state.table, run.state.step)
    }

    /// The step's metrics line.
    fn record<P>(
        &self,
        run: &RlRun<B, P>,
        batch: &Batch,
        r: &Rollouts,
        u: &Updated,
        scoring: f64,
        t_step: Instant,
    ) -> RlStepRecord {
        let report = u.report.as_ref();
        let m = report.map(|r| r.metrics).unwrap_or_default();
        let tokens = r.exp.response_tokens();
        RlStepRecord {
            step: run.state.step,
            reward_mean: r.stats.reward_mean,
            reward_std: r.stats.reward_std,
            accuracy: r.accuracy,
            format: r.format,
            zero_var_frac: r.stats.num_zero_variance as f64 / r.stats.num_groups.max(1) as f64,
            groups: r.stats.num_groups,
            filtered_groups: r.filtered_groups,
            weighted_prompts: batch.weighted,
            uniform_prompts: batch.uniform,
            vps: vps_summary(&run.state.table),
            loss: report.map(|r| r.loss),
            pg_loss: m.pg_loss,
            kl: m.kl,
            approx_kl: m.approx_kl,
            entropy: m.entropy,
            clip_frac: m.clip_frac,
            clip_frac_low: m.clip_frac_low,
            clip_frac_high: m.clip_frac_high,
            mean_ratio: m.mean_ratio,
            first_epoch_max_ratio_dev: report.map_or(0.0, |r| r.first_epoch_max_ratio_dev),
            grad_norm: report.and_then(|r| r.steps.last()).map_or(0.0, |s| s.grad_norm),
            lr: self.cfg().rl.lr,
            device_memory: self.be.memory_stats(),
            response_len: tokens as f64 / r.exp.responses.len().max(1) as f64,
            tokens_per_s: tokens as f64 / (r.seconds + u.seconds).max(1e-9),
            rollout_occupancy: r.exp.rollout.occupancy(),
            rollout_tokens_per_s: r.exp.rollout.tokens_per_s(),
            time: RlStepTimes {
                rollout_and_reward: r.seconds,
                update: u.seconds,
                scoring,
                step: t_step.elapsed().as_secs_f64(),
            },
        }
    }

    fn checkpoint_if_due<P: RunPolicy<B>>(&self, run: &RlRun<B, P>, total: u64) -> Result<()> {
        let o = &self.cfg().output;
        let every = o.checkpoint_every as u64;
        if (every > 0 && run.state.step.is_multiple_of(every)) || run.state.step == total {
            // Sharded moments are gathered first (every rank takes part); rank 0 writes.
            let full = zero::consolidated(self.be, self.comm, &run.opt)?;
            if self.comm.rank() != 0 {
                // Rank 0 writes; no rank goes on before the checkpoint is complete.
                return self.comm.barrier();
            }
            run.policy
                .save_checkpoint(
                    self.be,
                    &self.dir,
                    run.state.step,
                    zero::for_save(&run.opt, &full),
                    &run.state,
                    o.save_dtype,
                    self.inputs,
                )
                .map_err(|e| unless_weights_diverged("RL", &self.dir, &self.inputs.out, e))?;
            prune_checkpoints(&self.dir, o.keep_checkpoints)?;
            self.comm.barrier()?;
        }
        Ok(())
    }
}

/// Applies a scoring pass's rollouts (one group per item) to the table.
fn apply_scores(table: &mut VpsTable, exp: &Experience, step: u64) {
    let acc = exp.accuracy();
    for (g, &item) in exp.items.iter().enumerate() {
        let r = g * exp.group_size..(g + 1) * exp.group_size;
        let toks: Vec<&[u32]> = exp.responses[r.clone()].iter().map(|t| t.as_slice()).collect();
        table.refresh(item, &acc[r], &toks, step);
    }
}

/// Fails on every rank alike unless every rank's `table` hashes as rank 0's (see
/// `RlPhase::check_same_table`).
pub fn same_table_on_every_rank<B: Backend>(
    comm: &dyn Collective<B>,
    table: &VpsTable,
    step: u64,
) -> Result<()> {
    if comm.world() == 1 {
        return Ok(());
    }
    let h = table_hash(table)?;
    let all = comm.all_gather_host(&[(h >> 32) as f64, (h & 0xffff_ffff) as f64])?;
    if let Some(r) = all.iter().position(|x| x != &all[0]) {
        bail!("step {step}: the VPS table of rank {r} differs from rank 0's after the refresh");
    }
    Ok(())
}

/// FNV-1a (64 bit) of the table as serialized: equal tables, equal hashes.
pub fn table_hash(t: &VpsTable) -> Result<u64> {
    let bytes = serde_json::to_vec(t)?;
    Ok(bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)))
}

fn vps_summary(t: &VpsTable) -> VpsSummary {
    let w = t.weights();
    let n = w.len().max(1) as f64;
    let mean = w.iter().map(|&x| x as f64).sum::<f64>() / n;
    let min = w.iter().cloned().fold(f32::INFINITY, f32::min);
    let max = w.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    VpsSummary { scored: t.num_scored(), mean, min, max }
}

fn mean(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64).sum::<f64>() / x.len().max(1) as f64
}
