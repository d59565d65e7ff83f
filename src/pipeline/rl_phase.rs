//! The GRPO + Variance-Aware Sampling phase (MMR1 Algorithm 1): score the items with the
//! starting policy, then each step draw a batch (lambda*B by VPS, the rest uniform), roll out
//! G responses per prompt, grade, update the policy, and refresh VPS every T_update steps.
//! Its whole state (step, sampler RNG, VPS table, pending scores) is saved in checkpoints.

use super::config::TrainConfig;
use super::metrics::MetricsLog;
use crate::backend::Backend;
use crate::data::rl_items::RlItem;
use crate::model::Qwen2;
use crate::optim::{AdamW, AdamwConfig};
use crate::progress::bar;
use crate::rl::advantage::{AdvantageConfig, Convention};
use crate::rl::grpo::{informative_groups, Aggregation, KlConfig, KlEstimator, LossConfig};
use crate::rl::reward::RewardConfig;
use crate::rl::rollout::{mix_seed, SamplingParams};
use crate::rl::trainer::{collect, update, Experience, GrpoSettings, UpdateState};
use crate::rl::vas::{TdsMetric, UnscoredPrior, VasSampler, VpsTable};
use crate::tokenizer::Tokenizer;
use crate::train::checkpoint::{load_checkpoint, save_checkpoint};
use anyhow::{bail, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
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
    pub kind: String,
    /// RL steps done.
    pub step: u64,
    pub sampler_rng: ChaCha8Rng,
    pub table: VpsTable,
    pub pending: Vec<PendingScore>,
    /// Where the frozen reference policy (the RL starting point) is, for the KL term.
    pub reference_dir: PathBuf,
    pub items: usize,
}

/// Resolves the run configuration into GRPO settings.
pub fn grpo_settings(cfg: &TrainConfig, stop_ids: Vec<u32>) -> GrpoSettings {
    let r = &cfg.rl;
    let convention = if r.convention == "trl" { Convention::Trl } else { Convention::Verl };
    let mut adv = if convention == Convention::Trl {
        AdvantageConfig::trl()
    } else {
        AdvantageConfig::verl()
    };
    adv.norm_by_std = r.norm_adv_by_std;
    let agg = match r.loss_agg.as_str() {
        "seq-mean-token-mean" => Aggregation::SeqMeanTokenMean,
        "seq-mean-token-sum-norm" => Aggregation::SeqMeanTokenSumNorm,
        _ => Aggregation::TokenMean,
    };
    let estimator = if r.kl_estimator == "k1" { KlEstimator::K1 } else { KlEstimator::K3 };
    let mut loss = LossConfig::mmr1();
    loss.clip_eps_low = r.clip_eps_low;
    loss.clip_eps_high = r.clip_eps_high;
    loss.dual_clip_c = (r.dual_clip > 0.0).then_some(r.dual_clip);
    loss.kl = (r.kl_coef > 0.0).then_some(KlConfig { estimator, coef: r.kl_coef });
    loss.entropy_coef = r.entropy_coef;
    loss.agg = agg;
    loss.convention = convention;
    if convention == Convention::Trl {
        loss.log_ratio_clamp = None;
        loss.k3_clamp = None;
    }
    GrpoSettings {
        group_size: r.group_size,
        sampling: SamplingParams {
            temperature: r.temperature,
            top_p: r.top_p,
            top_k: r.top_k,
            max_new_tokens: r.max_new_tokens,
            stop_ids,
            stop_strings: vec![],
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
    }
}

/// Everything the RL phase works on.
pub struct RlPhase<'a, B: Backend> {
    pub be: &'a B,
    pub cfg: &'a TrainConfig,
    pub tok: &'a Tokenizer,
    pub tokenizer_path: &'a Path,
    pub items: &'a [RlItem],
    pub prompt_ids: &'a [Vec<u32>],
    pub settings: GrpoSettings,
    /// `OUT/rl`: checkpoints of this phase.
    pub dir: PathBuf,
}

/// The state of a phase in progress: policy, optimizer, reference, sampler state.
pub struct RlRun<B: Backend> {
    pub policy: Qwen2<B>,
    pub opt: AdamW<B>,
    pub reference: Option<Qwen2<B>>,
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

impl<'a, B: Backend> RlPhase<'a, B> {
    fn adamw(&self) -> AdamwConfig {
        let r = &self.cfg.rl;
        AdamwConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: r.weight_decay,
            max_grad_norm: Some(r.grad_clip),
        }
    }

    /// A fresh phase starting from `policy` (whose files are in `start_dir`).
    pub fn start(&self, policy: Qwen2<B>, start_dir: &Path) -> Result<RlRun<B>> {
        let v = &self.cfg.vas;
        let table = VpsTable::with_params(
            self.items.len(),
            v.alpha,
            v.beta,
            TdsMetric::default(),
            UnscoredPrior::Optimistic,
        );
        let reference = self.settings.loss.kl.is_some().then(|| {
            Qwen2::from_host(
                self.be,
                policy.cfg.clone(),
                policy.layout.clone(),
                &policy.to_host(self.be),
            )
        });
        let opt = AdamW::new(self.be, &policy.params, self.adamw());
        let state = RlState {
            kind: "rl".into(),
            step: 0,
            sampler_rng: ChaCha8Rng::seed_from_u64(mix_seed(self.cfg.seed, 0x5a4d)),
            table,
            pending: vec![],
            reference_dir: start_dir.to_path_buf(),
            items: self.items.len(),
        };
        Ok(RlRun { policy, opt, reference, state })
    }

    /// Continues the phase from checkpoint directory `ck`.
    pub fn resume(&self, ck: &Path) -> Result<RlRun<B>> {
        let loaded = load_checkpoint::<B, RlState>(self.be, ck)?;
        let state = loaded.state;
        if state.kind != "rl" || state.items != self.items.len() {
            bail!(
                "{}: not an RL checkpoint of this data ({} items expected, state has {})",
                ck.display(),
                self.items.len(),
                state.items
            );
        }
        let reference = if self.settings.loss.kl.is_some() {
            Some(load_reference(self.be, &state.reference_dir)?)
        } else {
            None
        };
        Ok(RlRun { policy: loaded.model, opt: loaded.opt, reference, state })
    }

    /// Rollouts of every listed item (`score_rollouts` each) with the current policy, graded,
    /// applied to the VPS table.
    pub fn score_items(&self, run: &mut RlRun<B>, indices: &[usize], label: &str) -> Result<f64> {
        let t0 = Instant::now();
        let mut s = self.settings.clone();
        s.group_size = self.cfg.vas.score_rollouts;
        let chunk = self.cfg.rl.batch_size.max(1);
        let pb = bar(indices.len() as u64, label);
        for (c, part) in indices.chunks(chunk).enumerate() {
            let seed = mix_seed(self.cfg.seed, 0x5c0e_0000 + run.state.step * 1000 + c as u64);
            let (exp, _) = collect(
                &run.policy,
                self.be,
                self.tok,
                self.items,
                self.prompt_ids,
                part,
                &s,
                seed,
                |_| {},
            )?;
            apply_scores(&mut run.state.table, &exp, run.state.step);
            pb.inc(part.len() as u64);
        }
        pb.finish_and_clear();
        Ok(t0.elapsed().as_secs_f64())
    }

    /// Runs steps until `rl.steps`, checkpointing and logging; returns per-step summaries.
    pub fn run(
        &self,
        run: &mut RlRun<B>,
        log: &mut MetricsLog,
        mut on_eval: impl FnMut(&Qwen2<B>, u64) -> Result<()>,
    ) -> Result<Vec<RlStepSummary>> {
        let c = self.cfg;
        let total = c.rl.steps as u64;
        let sampler = VasSampler::new(if c.vas.enabled { c.vas.lambda } else { 0.0 });
        let mut st = UpdateState::new(&run.policy, self.be);
        let mut summaries = Vec::new();
        if run.state.step == 0
            && c.vas.enabled
            && c.vas.initial_scoring
            && run.state.table.num_scored() == 0
        {
            let all: Vec<usize> = (0..self.items.len()).collect();
            let secs = self.score_items(run, &all, "initial VPS scoring")?;
            log.write(&json!({"phase": "rl", "step": 0, "event": "initial_scoring", "items": all.len(), "seconds": secs, "vps": vps_summary(&run.state.table)}))?;
        }
        let pb = bar(total, "GRPO + VAS");
        pb.set_position(run.state.step);
        while run.state.step < total {
            let step = run.state.step;
            let t_step = Instant::now();
            let b = c.rl.batch_size.min(self.items.len());
            let parts = sampler.sample_batch_parts(&run.state.table, b, &mut run.state.sampler_rng);
            let (n_weighted, n_uniform) = (parts.weighted.len(), parts.uniform.len());
            let mut indices = parts.weighted;
            indices.extend(parts.uniform);
            let t0 = Instant::now();
            let seed = mix_seed(c.seed, 0x9000_0000 + step);
            let (mut exp, stats) = collect(
                &run.policy,
                self.be,
                self.tok,
                self.items,
                self.prompt_ids,
                &indices,
                &self.settings,
                seed,
                |_| {},
            )?;
            let rollout_secs = t0.elapsed().as_secs_f64();
            let raw_acc: Vec<f32> = exp.accuracy();
            let acc_mean = mean(&raw_acc);
            let fmt_mean = mean(&exp.verdicts.iter().map(|v| v.format).collect::<Vec<_>>());
            let (reward_mean, reward_std) = (stats.reward_mean, stats.reward_std);
            let zero_var_frac = stats.num_zero_variance as f64 / stats.num_groups.max(1) as f64;
            // Scores from this step's rollouts wait for the next refresh (Algorithm 1).
            for (g, &item) in exp.items.iter().enumerate() {
                let r = g * exp.group_size..(g + 1) * exp.group_size;
                run.state.pending.push(PendingScore {
                    item,
                    correctness: raw_acc[r.clone()].to_vec(),
                    tokens: exp.responses[r].to_vec(),
                });
            }
            let mut filtered = 0;
            if c.rl.dynamic_filter {
                let keep = informative_groups(&raw_acc, exp.group_size);
                filtered = keep.iter().filter(|k| !**k).count();
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
                    let (mut e2, _) = collect(
                        &run.policy,
                        self.be,
                        self.tok,
                        self.items,
                        self.prompt_ids,
                        &more,
                        &self.settings,
                        seed,
                        |_| {},
                    )?;
                    let keep = informative_groups(&e2.accuracy(), e2.group_size);
                    filtered += keep.iter().filter(|k| !**k).count();
                    e2.retain_groups(&keep);
                    exp.extend(e2);
                }
            }
            let t1 = Instant::now();
            let tokens = exp.response_tokens();
            let report = if exp.items.is_empty() {
                None
            } else {
                Some(update(
                    &mut run.policy,
                    run.reference.as_ref(),
                    &mut run.opt,
                    self.be,
                    &exp,
                    &self.settings,
                    c.rl.lr,
                    &mut st,
                )?)
            };
            let update_secs = t1.elapsed().as_secs_f64();
            if let Some(rep) = &report {
                let bad = rep.steps.iter().find(|s| s.skipped || !s.grad_norm.is_finite());
                if !rep.loss.is_finite() || bad.is_some() {
                    bail!(
                        "RL step {}: the loss or gradient is not finite (loss {}, grad norm {:?}); stopping. The last good checkpoint is {}",
                        step + 1,
                        rep.loss,
                        bad.map(|s| s.grad_norm),
                        crate::train::checkpoint::latest_checkpoint(&self.dir)?.map_or("none (no RL checkpoint yet)".into(), |p| p.display().to_string())
                    );
                }
            }
            run.state.step += 1;
            let mut scoring_secs = 0.0;
            if c.vas.enabled && run.state.step.is_multiple_of(c.vas.t_update as u64) {
                let t2 = Instant::now();
                for p in std::mem::take(&mut run.state.pending) {
                    let toks: Vec<&[u32]> = p.tokens.iter().map(|t| t.as_slice()).collect();
                    run.state.table.refresh(p.item, &p.correctness, &toks, run.state.step);
                }
                scoring_secs = t2.elapsed().as_secs_f64();
                if c.vas.score_unseen {
                    let unseen: Vec<usize> = (0..self.items.len())
                        .filter(|&i| run.state.table.item(i).vps.is_none())
                        .collect();
                    if !unseen.is_empty() {
                        scoring_secs += self.score_items(run, &unseen, "scoring unseen items")?;
                    }
                }
            }
            let grad_norm =
                report.as_ref().and_then(|r| r.steps.last()).map_or(0.0, |s| s.grad_norm);
            let m = report.as_ref().map(|r| r.metrics).unwrap_or_default();
            let secs = t_step.elapsed().as_secs_f64();
            log.write(&json!({
                "phase": "rl", "step": run.state.step,
                "reward_mean": reward_mean, "reward_std": reward_std, "accuracy": acc_mean, "format": fmt_mean,
                "zero_var_frac": zero_var_frac, "groups": stats.num_groups, "filtered_groups": filtered,
                "weighted_prompts": n_weighted, "uniform_prompts": n_uniform, "vps": vps_summary(&run.state.table),
                "loss": report.as_ref().map(|r| r.loss), "pg_loss": m.pg_loss, "kl": m.kl, "approx_kl": m.approx_kl,
                "entropy": m.entropy, "clip_frac": m.clip_frac, "clip_frac_low": m.clip_frac_low, "clip_frac_high": m.clip_frac_high,
                "mean_ratio": m.mean_ratio, "grad_norm": grad_norm, "lr": c.rl.lr,
                "response_len": tokens as f64 / exp.responses.len().max(1) as f64,
                "tokens_per_s": tokens as f64 / (rollout_secs + update_secs).max(1e-9),
                "time": {"rollout_and_reward": rollout_secs, "update": update_secs, "scoring": scoring_secs, "step": secs},
            }))?;
            pb.set_position(run.state.step);
            pb.suspend(|| eprintln!(
                "rl {:>4}/{total}  reward {reward_mean:.3}  acc {acc_mean:.3}  zero-var {zero_var_frac:.2}  grad {grad_norm:.3}  clip {:.3}  {secs:.1}s",
                run.state.step, m.clip_frac
            ));
            summaries.push(RlStepSummary {
                step: run.state.step,
                accuracy: acc_mean,
                zero_var_frac,
                grad_norm,
            });
            let every = c.output.checkpoint_every as u64;
            if (every > 0 && run.state.step.is_multiple_of(every)) || run.state.step == total {
                save_checkpoint(
                    self.be,
                    &self.dir,
                    run.state.step,
                    &run.policy,
                    &run.opt,
                    &run.state,
                    c.output.save_dtype,
                    Some(self.tokenizer_path),
                )?;
                crate::train::checkpoint::prune_checkpoints(&self.dir, c.output.keep_checkpoints)?;
            }
            if c.eval.every > 0
                && run.state.step.is_multiple_of(c.eval.every as u64)
                && run.state.step < total
            {
                on_eval(&run.policy, run.state.step)?;
            }
        }
        pb.finish_and_clear();
        Ok(summaries)
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

/// The reference policy: a checkpoint (f32 master weights when present) or a model dir.
fn load_reference<B: Backend>(be: &B, dir: &Path) -> Result<Qwen2<B>> {
    if dir.join("trainer_state.json").exists() {
        Ok(load_checkpoint::<B, serde_json::Value>(be, dir)?.model)
    } else {
        Qwen2::load(be, dir)
    }
}

fn vps_summary(t: &VpsTable) -> serde_json::Value {
    let w = t.weights();
    let n = w.len().max(1) as f64;
    let mean = w.iter().map(|&x| x as f64).sum::<f64>() / n;
    let min = w.iter().cloned().fold(f32::INFINITY, f32::min);
    let max = w.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    json!({"scored": t.num_scored(), "mean": mean, "min": min, "max": max})
}

fn mean(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64).sum::<f64>() / x.len().max(1) as f64
}
