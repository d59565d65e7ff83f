//! One GRPO step, in two halves: `collect` (rollouts, rewards, group advantages) and
//! `update` (old/reference log-probs, then PPO epochs of the clipped policy loss, backward and
//! AdamW). The sampler, VPS refreshes, checkpoints and metrics live in the pipeline above.
//!
//! Batch invariance is what makes `logp_old` exact: it is computed by the same forward, on
//! the same micro-batches, as the first PPO epoch, so the first epoch's ratio is exactly 1.

use super::advantage::{advantages_f64, broadcast_to_tokens, AdvantageConfig, GroupStats};
use super::graded::{grade_tokens, reward_item};
use super::grpo::{
    cov_selection, high_entropy_mask, policy_loss, LossConfig, LossInputs, LossMetrics, Normalizer,
};
use super::overlong::OverlongPenalty;
use super::reward::{RewardConfig, Verdict};
use super::rollout::{generate, SamplingParams};
use crate::backend::Backend;
use crate::data::rl_items::RlItem;
use crate::model::backward::GradScratch;
use crate::model::{Acts, Packed, Qwen2};
use crate::optim::{AdamW, StepReport};
use crate::tokenizer::Tokenizer;
use crate::train::pack_ranges;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Everything a GRPO step needs to know, resolved from the run configuration.
#[derive(Clone, Debug)]
pub struct GrpoSettings {
    pub group_size: usize,
    pub sampling: SamplingParams,
    pub loss: LossConfig,
    pub adv: AdvantageConfig,
    pub reward: RewardConfig,
    pub ppo_epochs: usize,
    pub mini_batches: usize,
    pub micro_batch_tokens: usize,
    /// Reward shaping and token selection beyond the loss itself.
    pub extras: GrpoExtras,
}

/// Optional DAPO / TRL additions to a GRPO step.
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpoExtras {
    /// DAPO overlong reward shaping (added to the reward before the advantages).
    pub overlong: Option<OverlongPenalty>,
    /// TRL `top_entropy_quantile`: the policy term only sees the top fraction of tokens by
    /// entropy (1 or 0 = off). The threshold is taken over the whole mini-batch, from the
    /// entropies of the `logp_old` pass (equal to the first epoch's on-policy).
    pub top_entropy_quantile: Option<f32>,
    /// Seed of Clip-Cov's random choice of tokens.
    pub seed: u64,
}

/// The rollouts of one step: `G` responses for each of the batch's prompts, group-major.
#[derive(Clone, Debug, Default)]
pub struct Experience {
    /// Item index of each group.
    pub items: Vec<usize>,
    /// Prompt ids of each group.
    pub prompts: Vec<Vec<u32>>,
    pub responses: Vec<Vec<u32>>,
    pub verdicts: Vec<Verdict>,
    pub rewards: Vec<f32>,
    pub advantages: Vec<f32>,
    pub group_size: usize,
}

impl Experience {
    pub fn accuracy(&self) -> Vec<f32> {
        self.verdicts.iter().map(|v| v.accuracy).collect()
    }
    pub fn response_tokens(&self) -> usize {
        self.responses.iter().map(|r| r.len()).sum()
    }
    /// Keeps only the groups with `keep[g]` (dynamic filtering), then recomputes nothing:
    /// advantages are per group, so they stay valid.
    pub fn retain_groups(&mut self, keep: &[bool]) {
        let g = self.group_size;
        retain_indexed(&mut self.items, |i| keep[i]);
        retain_indexed(&mut self.prompts, |i| keep[i]);
        retain_indexed(&mut self.responses, |i| keep[i / g]);
        retain_indexed(&mut self.verdicts, |i| keep[i / g]);
        retain_indexed(&mut self.rewards, |i| keep[i / g]);
        retain_indexed(&mut self.advantages, |i| keep[i / g]);
    }
    /// Appends another step's groups (dynamic-filter refills).
    pub fn extend(&mut self, other: Experience) {
        self.items.extend(other.items);
        self.prompts.extend(other.prompts);
        self.responses.extend(other.responses);
        self.verdicts.extend(other.verdicts);
        self.rewards.extend(other.rewards);
        self.advantages.extend(other.advantages);
    }
}

fn retain_indexed<T>(v: &mut Vec<T>, keep: impl Fn(usize) -> bool) {
    let mut i = 0;
    v.retain(|_| {
        i += 1;
        keep(i - 1)
    });
}

/// Rollouts for `indices` (one group each), graded and turned into group advantages.
#[allow(clippy::too_many_arguments)]
pub fn collect<B: Backend>(
    policy: &Qwen2<B>,
    be: &B,
    tok: &Tokenizer,
    items: &[RlItem],
    prompt_ids: &[Vec<u32>],
    indices: &[usize],
    s: &GrpoSettings,
    seed: u64,
    on_token: impl FnMut(usize),
) -> Result<(Experience, GroupStats)> {
    let prompts: Vec<Vec<u32>> = indices.iter().map(|&i| prompt_ids[i].clone()).collect();
    let rollouts =
        generate(policy, be, &prompts, s.group_size, &s.sampling, seed, Some(tok), on_token)?;
    let mut verdicts = Vec::with_capacity(rollouts.len());
    let mut rewards = Vec::with_capacity(rollouts.len());
    for r in &rollouts {
        let reference = reward_item(&items[indices[r.prompt_index]]);
        let (_, verdict, reward) =
            grade_tokens(tok, &r.tokens, &s.sampling.stop_ids, &s.reward, &reference)?;
        verdicts.push(verdict);
        let shaped = match s.extras.overlong {
            Some(p) => (reward as f64 + p.penalty(r.tokens.len())) as f32,
            None => reward,
        };
        rewards.push(shaped);
    }
    let r64: Vec<f64> = rewards.iter().map(|&r| r as f64).collect();
    let lens: Vec<usize> = rollouts.iter().map(|r| r.tokens.len()).collect();
    let offsets: Vec<usize> =
        (0..=rewards.len() / s.group_size).map(|g| g * s.group_size).collect();
    let (adv, stats) = advantages_f64(&r64, &offsets, Some(&lens), &s.adv);
    let advantages: Vec<f32> = adv.iter().map(|&a| a as f32).collect();
    let exp = Experience {
        items: indices.to_vec(),
        prompts,
        responses: rollouts.into_iter().map(|r| r.tokens).collect(),
        verdicts,
        rewards,
        advantages,
        group_size: s.group_size,
    };
    Ok((exp, stats))
}

/// What one `update` did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UpdateReport {
    pub loss: f64,
    pub metrics: LossMetrics,
    /// Per optimizer step.
    pub steps: Vec<StepReport>,
    /// Largest |ratio - 1| over the first mini-batch of the first epoch (before any optimizer
    /// step; later mini-batches see a moved policy): 0 when the log-prob path is
    /// batch-invariant (it must be).
    pub first_epoch_max_ratio_dev: f64,
}

/// Model-side buffers reused across micro-batches and steps.
pub struct UpdateState<B: Backend> {
    pub grads: Vec<B::Buf>,
    acts: Option<Acts<B>>,
    scratch: Option<GradScratch<B>>,
}

impl<B: Backend> UpdateState<B> {
    pub fn new(policy: &Qwen2<B>, be: &B) -> Self {
        UpdateState { grads: policy.zero_grads(be), acts: None, scratch: None }
    }
}

/// Prompt + response of response `r`, and the packed rows that predict its tokens.
fn sequence(exp: &Experience, r: usize) -> Vec<u32> {
    let mut s = exp.prompts[r / exp.group_size].clone();
    s.extend_from_slice(&exp.responses[r]);
    s
}

/// Tokens of response `r`'s sequence: the size the micro-batches are packed by. It changes
/// only how the work is split (and the memory each forward takes), never the result: the
/// update is invariant to the micro-batching (`tests/grpo_learns.rs`). Its mutants are
/// excluded in `.cargo/mutants.toml` for that reason.
fn sequence_len(exp: &Experience, r: usize) -> usize {
    exp.prompts[r / exp.group_size].len() + exp.responses[r].len()
}

/// Forward of responses `rs`; returns the packed batch, per-row targets, and the packed row
/// of every response token (in response order).
fn forward_responses<B: Backend>(
    model: &Qwen2<B>,
    be: &B,
    exp: &Experience,
    rs: Range<usize>,
    acts: &mut Option<Acts<B>>,
) -> Result<(Packed, Vec<u32>, Vec<usize>)> {
    let seqs: Vec<Vec<u32>> = rs.clone().map(|r| sequence(exp, r)).collect();
    let batch = Packed::new(&seqs);
    model.forward(be, &batch, acts)?;
    let (targets, _) = batch.next_token_targets();
    let mut rows = Vec::new();
    for (j, r) in rs.enumerate() {
        let sp = batch.spans[j];
        let p = exp.prompts[r / exp.group_size].len();
        // Row p-1 predicts the first response token.
        rows.extend((sp.q_start + p - 1)..(sp.q_start + sp.q_len - 1));
    }
    Ok((batch, targets, rows))
}

/// Log-probs (at `inv_temp`) of every response token of the experience, response order.
pub fn response_logprobs<B: Backend>(
    model: &Qwen2<B>,
    be: &B,
    exp: &Experience,
    micro: &[Range<usize>],
    inv_temp: f32,
    acts: &mut Option<Acts<B>>,
) -> Result<Vec<f32>> {
    Ok(response_logprobs_entropy(model, be, exp, micro, inv_temp, acts)?.0)
}

/// [`response_logprobs`] and the entropies of the same distributions.
pub fn response_logprobs_entropy<B: Backend>(
    model: &Qwen2<B>,
    be: &B,
    exp: &Experience,
    micro: &[Range<usize>],
    inv_temp: f32,
    acts: &mut Option<Acts<B>>,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let mut out = Vec::with_capacity(exp.response_tokens());
    let mut ents = Vec::with_capacity(exp.response_tokens());
    for rs in micro {
        let (_, targets, rows) = forward_responses(model, be, exp, rs.clone(), acts)?;
        let (lp, ent) =
            model.token_logprobs(be, acts.as_ref().expect("forward ran"), &targets, inv_temp);
        out.extend(rows.iter().map(|&r| lp[r]));
        ents.extend(rows.iter().map(|&r| ent[r]));
    }
    Ok((out, ents))
}

/// The policy update of one rollout batch: old and reference log-probs, then `ppo_epochs`
/// passes over `mini_batches` mini-batches, one AdamW step each.
#[allow(clippy::too_many_arguments)]
pub fn update<B: Backend>(
    policy: &mut Qwen2<B>,
    reference: Option<&Qwen2<B>>,
    opt: &mut AdamW<B>,
    be: &B,
    exp: &Experience,
    s: &GrpoSettings,
    lr: f32,
    st: &mut UpdateState<B>,
) -> Result<UpdateReport> {
    let n = exp.responses.len();
    let inv_temp = 1.0 / s.sampling.temperature;
    let lens: Vec<usize> = (0..n).map(|r| sequence_len(exp, r)).collect();
    let mut offsets = vec![0usize];
    for r in &exp.responses {
        offsets.push(offsets.last().unwrap() + r.len());
    }
    // Mini-batches are whole groups; micro-batches split them by token budget.
    let groups = n / exp.group_size;
    let per_mini = groups.div_ceil(s.mini_batches.max(1));
    let minis: Vec<Range<usize>> = (0..groups)
        .step_by(per_mini.max(1))
        .map(|g0| g0 * exp.group_size..((g0 + per_mini).min(groups)) * exp.group_size)
        .collect();
    let micro_of: Vec<Vec<Range<usize>>> =
        minis.iter().map(|m| pack_ranges(&lens, m.clone(), s.micro_batch_tokens)).collect();
    let all_micro: Vec<Range<usize>> = micro_of.iter().flatten().cloned().collect();

    let (logp_old, ent_old) =
        response_logprobs_entropy(policy, be, exp, &all_micro, inv_temp, &mut st.acts)?;
    let ref_logp = match (reference, &s.loss.kl) {
        (Some(m), Some(_)) => {
            Some(response_logprobs(m, be, exp, &all_micro, inv_temp, &mut st.acts)?)
        }
        _ => None,
    };
    let adv_tok = broadcast_to_tokens(&exp.advantages, &offsets);
    let mask = vec![1.0f32; logp_old.len()];
    let max_len = s.sampling.max_new_tokens;
    let mut report = UpdateReport::default();
    let mut all_metrics = Vec::new();
    for epoch in 0..s.ppo_epochs {
        for (mi, mini) in minis.iter().enumerate() {
            let (t0, t1) = (offsets[mini.start], offsets[mini.end]);
            let norm =
                Normalizer::count(&mask[t0..t1], &rebase(&offsets[mini.start..=mini.end]), max_len);
            for g in st.grads.iter_mut() {
                be.fill(g, 0.0);
            }
            // Batch-level selections, once per mini-batch (see GrpoExtras and cov_selection).
            let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
            let selected: Option<Vec<bool>> = s.loss.policy.needs_selection().then(|| {
                let old = f64s(&logp_old[t0..t1]);
                cov_selection(
                    s.loss.policy,
                    &s.loss.cov,
                    &f64s(&adv_tok[t0..t1]),
                    &old,
                    &old,
                    &f64s(&mask[t0..t1]),
                    s.loss.clip_eps_low,
                    s.loss.clip_eps_high,
                    s.extras.seed ^ ((epoch * minis.len() + mi) as u64),
                )
            });
            let pg_mask: Option<Vec<f32>> =
                s.extras.top_entropy_quantile.filter(|&q| q > 0.0 && q < 1.0).map(|q| {
                    high_entropy_mask(&f64s(&ent_old[t0..t1]), &f64s(&mask[t0..t1]), q as f64)
                        .iter()
                        .map(|&x| x as f32)
                        .collect()
                });
            for rs in &micro_of[mi] {
                let (batch, targets, rows) =
                    forward_responses(policy, be, exp, rs.clone(), &mut st.acts)?;
                let acts = st.acts.as_ref().expect("forward ran");
                let (lp, ent) = policy.token_logprobs(be, acts, &targets, inv_temp);
                let (a, b) = (offsets[rs.start], offsets[rs.end]);
                let logp: Vec<f32> = rows.iter().map(|&r| lp[r]).collect();
                let entropy: Vec<f32> = rows.iter().map(|&r| ent[r]).collect();
                if epoch == 0 && mi == 0 {
                    let dev = logp
                        .iter()
                        .zip(&logp_old[a..b])
                        .map(|(x, y)| ((x - y) as f64).exp() - 1.0)
                        .fold(0.0f64, |m, d| m.max(d.abs()));
                    report.first_epoch_max_ratio_dev = report.first_epoch_max_ratio_dev.max(dev);
                }
                let local_off = rebase(&offsets[rs.start..=rs.end]);
                let inputs = LossInputs {
                    logp: &logp,
                    logp_old: &logp_old[a..b],
                    advantages: &adv_tok[a..b],
                    mask: &mask[a..b],
                    ref_logp: ref_logp.as_ref().map(|r| &r[a..b]),
                    entropy: (s.loss.entropy_coef != 0.0).then_some(entropy.as_slice()),
                    pg_mask: pg_mask.as_ref().map(|p| &p[a - t0..b - t0]),
                    selected: selected.as_ref().map(|p| &p[a - t0..b - t0]),
                    offsets: &local_off,
                };
                let out = policy_loss(&inputs, &s.loss, norm);
                report.loss += out.loss;
                let mut dlp = vec![0.0f32; batch.tokens()];
                for (k, &r) in rows.iter().enumerate() {
                    dlp[r] = out.dlogp[k];
                }
                let dent = out.dentropy.as_ref().map(|de| {
                    let mut v = vec![0.0f32; batch.tokens()];
                    for (k, &r) in rows.iter().enumerate() {
                        v[r] = de[k];
                    }
                    v
                });
                policy.backward_with(
                    be,
                    &batch,
                    acts,
                    &targets,
                    &dlp,
                    dent.as_deref(),
                    inv_temp,
                    &mut st.grads,
                    &mut st.scratch,
                );
                all_metrics.push(out.metrics);
            }
            report.steps.push(opt.step(be, &mut policy.params, &st.grads, lr));
        }
    }
    report.loss /= (s.ppo_epochs * minis.len()).max(1) as f64;
    report.metrics = LossMetrics::merge(&all_metrics);
    Ok(report)
}

/// Offsets shifted to start at 0.
fn rebase(offsets: &[usize]) -> Vec<usize> {
    offsets.iter().map(|o| o - offsets[0]).collect()
}
