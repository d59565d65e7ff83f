//! One GRPO step, in two halves: `collect` (rollouts, rewards, group advantages) and
//! `update` (old/reference log-probs, then PPO epochs of the clipped policy loss, backward and
//! AdamW; on-policy the old log-probs are the update's own forward's). The sampler, VPS refreshes, checkpoints and metrics live in the pipeline above.
//! The model is any [`Policy`]: a text `Qwen2`, or a Qwen2.5-VL model whose sequences carry
//! their item's images (`rl::vl_policy`).
//!
//! Batch invariance is what makes `logp_old` exact: it is computed by the same forward, on
//! the same micro-batches, as the first PPO epoch, so the first epoch's ratio is exactly 1.

use super::advantage::{broadcast_to_tokens, AdvantageConfig, GroupStats};
use super::decode_scheduler::{Rollouts, SlotStats};
use super::graded::{grade_tokens, reward_item};
use super::grpo::{
    cov_seed, cov_selection, high_entropy_mask, LossConfig, LossInputs, LossMetrics, Normalizer,
};
use super::grpo_token_loss::GrpoTokenLoss;
use super::overlong::OverlongPenalty;
use super::policy::Policy;
use super::reward::{RewardConfig, Verdict};
use super::rollout::SamplingParams;
use crate::backend::rl_ops::RlOps;
use crate::backend::Backend;
use crate::data::rl_items::RlItem;
use crate::dist::buckets::{agreed_rounds, BucketReducer};
use crate::dist::{shard, Collective, Single};
use crate::model::GradHook;
use crate::optim::{AdamW, StepReport};
use crate::tokenizer::Tokenizer;
use crate::train::{pack_ranges, Workspace};
use anyhow::{ensure, Result};
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
    /// ZeRO 2 only: reduce-scatter each mini-batch's gradients in buckets during the
    /// backward (`dist::buckets`). The `train` pipeline sets it from `dist.grad_buckets`
    /// (on by default there); off, one reduce-scatter per optimizer step.
    pub grad_buckets: bool,
    /// Run the old log-probs' own forward pass even on-policy, where `update` otherwise takes
    /// them from the update's forward (`rl.old_logprob_pass`).
    pub old_logprob_pass: bool,
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
    /// How the rollouts used their KV-cache slots (every rank's and every refill's work).
    pub rollout: SlotStats,
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
        self.rollout.absorb(&other.rollout);
    }
}

fn retain_indexed<T>(v: &mut Vec<T>, keep: impl Fn(usize) -> bool) {
    let mut i = 0;
    v.retain(|_| {
        i += 1;
        keep(i - 1)
    });
}

/// Rollouts for `indices` (one group each), graded and turned into group advantages
/// (`RlOps::rl_advantages`: the advantage kernel on CUDA, the `rl/` reference on the CPU).
#[allow(clippy::too_many_arguments)]
pub fn collect<B: RlOps, P: Policy<B>>(
    policy: &P,
    be: &B,
    tok: &Tokenizer,
    items: &[RlItem],
    prompt_ids: &[Vec<u32>],
    indices: &[usize],
    s: &GrpoSettings,
    seed: u64,
    on_token: impl FnMut(usize),
) -> Result<(Experience, GroupStats)> {
    let graded =
        roll_out_graded(policy, be, tok, items, prompt_ids, indices, 0, s, seed, on_token)?;
    Ok(with_advantages(be, graded, s))
}

/// [`collect`] as rank `comm.rank()` of a data-parallel group: the rank decodes and grades
/// the groups of its contiguous shard of `indices` (a prompt's responses stay on one rank),
/// seeded as the single process seeds them, and every rank receives every rank's graded
/// responses in rank order, so each holds the whole experience. Advantages (and the batch
/// statistics) are then computed from the whole batch on every rank, as one process does:
/// the result is the single-process one wherever decoding is batch-invariant.
#[allow(clippy::too_many_arguments)]
pub fn collect_with<B: RlOps, P: Policy<B>>(
    policy: &P,
    be: &B,
    tok: &Tokenizer,
    items: &[RlItem],
    prompt_ids: &[Vec<u32>],
    indices: &[usize],
    s: &GrpoSettings,
    seed: u64,
    on_token: impl FnMut(usize),
    comm: &dyn Collective<B>,
) -> Result<(Experience, GroupStats)> {
    if comm.world() == 1 {
        return collect(policy, be, tok, items, prompt_ids, indices, s, seed, on_token);
    }
    let mine = shard(indices.len(), comm.rank(), comm.world());
    let part = &indices[mine.clone()];
    let graded =
        roll_out_graded(policy, be, tok, items, prompt_ids, part, mine.start, s, seed, on_token)?;
    let bytes = serde_json::to_vec(&graded)?;
    let mut whole = Graded::default();
    for (r, b) in comm.all_gather_bytes(&bytes)?.iter().enumerate() {
        let g: Graded = serde_json::from_slice(b)
            .map_err(|e| anyhow::anyhow!("rollouts from rank {r} do not read: {e}"))?;
        whole.items.extend(g.items);
        whole.prompts.extend(g.prompts);
        whole.responses.extend(g.responses);
        whole.verdicts.extend(g.verdicts);
        whole.rewards.extend(g.rewards);
        whole.slots.absorb(&g.slots);
    }
    ensure!(
        whole.items == indices,
        "the ranks rolled out other prompts than this rank drew: every rank needs the same \
         data, settings and seed"
    );
    Ok(with_advantages(be, whole, s))
}

/// Graded responses of some groups, before advantages (what ranks exchange).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Graded {
    items: Vec<usize>,
    prompts: Vec<Vec<u32>>,
    responses: Vec<Vec<u32>>,
    verdicts: Vec<Verdict>,
    rewards: Vec<f32>,
    #[serde(default)]
    slots: SlotStats,
}

/// Rollouts of `indices`, graded (rewards shaped). `first` is the position of `indices[0]`
/// in the whole batch: response `g` of the batch's prompt `i` is seeded `i * G + g` whatever
/// part of the batch a call decodes.
#[allow(clippy::too_many_arguments)]
fn roll_out_graded<B: RlOps, P: Policy<B>>(
    policy: &P,
    be: &B,
    tok: &Tokenizer,
    items: &[RlItem],
    prompt_ids: &[Vec<u32>],
    indices: &[usize],
    first: usize,
    s: &GrpoSettings,
    seed: u64,
    on_token: impl FnMut(usize),
) -> Result<Graded> {
    let prompts: Vec<Vec<u32>> = indices.iter().map(|&i| prompt_ids[i].clone()).collect();
    let Rollouts { rollouts, stats: slots } = {
        let _r = crate::nvtx_ranges::range(c"rollout");
        policy.roll_out(
            be,
            tok,
            &prompts,
            indices,
            s.group_size,
            &s.sampling,
            seed,
            first,
            on_token,
        )?
    };
    let reward_range = crate::nvtx_ranges::range(c"reward");
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
    drop(reward_range);
    Ok(Graded {
        items: indices.to_vec(),
        prompts,
        responses: rollouts.into_iter().map(|r| r.tokens).collect(),
        verdicts,
        rewards,
        slots,
    })
}

/// Group advantages of `rewards`, groups of `group_size` consecutive responses whose token
/// counts are `lens` (`RlOps::rl_advantages`: the kernel on CUDA, the `rl/` reference on the
/// CPU), and the groups' statistics.
pub fn group_advantages<B: RlOps>(
    be: &B,
    rewards: &[f32],
    lens: &[usize],
    group_size: usize,
    cfg: &AdvantageConfig,
) -> (Vec<f32>, GroupStats) {
    let offsets: Vec<usize> = (0..=rewards.len() / group_size).map(|k| k * group_size).collect();
    let mut adv = be.zeros(rewards.len());
    let stats = be.rl_advantages(&be.upload(rewards), &offsets, Some(lens), cfg, &mut adv);
    (be.download(&adv)[..rewards.len()].to_vec(), stats)
}

/// Group advantages of graded responses: the experience of a step.
fn with_advantages<B: RlOps>(be: &B, g: Graded, s: &GrpoSettings) -> (Experience, GroupStats) {
    let lens: Vec<usize> = g.responses.iter().map(|r| r.len()).collect();
    let (advantages, stats) = group_advantages(be, &g.rewards, &lens, s.group_size, &s.adv);
    let exp = Experience {
        items: g.items,
        prompts: g.prompts,
        responses: g.responses,
        verdicts: g.verdicts,
        rewards: g.rewards,
        advantages,
        group_size: s.group_size,
        rollout: g.slots,
    };
    (exp, stats)
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

/// Prompt + response of response `r`.
fn sequence(exp: &Experience, r: usize) -> Vec<u32> {
    let mut s = exp.prompts[r / exp.group_size].clone();
    s.extend_from_slice(&exp.responses[r]);
    s
}

/// Tokens of response `r`'s sequence: the size the micro-batches are packed by. It changes
/// only how the work is split (and the memory each forward takes), never the result: the
/// update is invariant to the micro-batching (`tests/suite/grpo_learns.rs`). Its mutants are
/// excluded in `.cargo/mutants.toml` for that reason.
fn sequence_len(exp: &Experience, r: usize) -> usize {
    exp.prompts[r / exp.group_size].len() + exp.responses[r].len()
}

/// Responses `rs` packed by the policy as prompt + response each (with their item, whose
/// images a VL policy reads); the loss rows are those that predict the response tokens (in
/// response order).
fn pack_responses<B: RlOps, P: Policy<B>>(
    policy: &P,
    be: &B,
    exp: &Experience,
    rs: Range<usize>,
) -> Result<(P::Micro, Vec<usize>)> {
    let seqs: Vec<Vec<u32>> = rs.clone().map(|r| sequence(exp, r)).collect();
    let items: Vec<usize> = rs.clone().map(|r| exp.items[r / exp.group_size]).collect();
    let prompt_len = |j: usize| exp.prompts[(rs.start + j) / exp.group_size].len();
    policy.pack(be, &seqs, &items, |j, pos| pos >= prompt_len(j))
}

/// Log-probs (at `inv_temp`) of every response token of the experience, response order.
pub fn response_logprobs<B: RlOps, P: Policy<B>>(
    model: &P,
    be: &B,
    exp: &Experience,
    micro: &[Range<usize>],
    inv_temp: f32,
    ws: &mut Workspace<B>,
) -> Result<Vec<f32>> {
    Ok(response_logprobs_entropy(model, be, exp, micro, inv_temp, ws)?.0)
}

/// [`response_logprobs`] and the entropies of the same distributions.
pub fn response_logprobs_entropy<B: RlOps, P: Policy<B>>(
    model: &P,
    be: &B,
    exp: &Experience,
    micro: &[Range<usize>],
    inv_temp: f32,
    ws: &mut Workspace<B>,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let mut out = Vec::with_capacity(exp.response_tokens());
    let mut ents = Vec::with_capacity(exp.response_tokens());
    for rs in micro {
        let (micro, rows) = pack_responses(model, be, exp, rs.clone())?;
        let (lp, ent) = model.forward_logprobs(be, &micro, &rows, inv_temp, ws)?;
        out.extend(rows.iter().map(|&r| lp[r]));
        ents.extend(rows.iter().map(|&r| ent[r]));
    }
    Ok((out, ents))
}

/// The policy update of one rollout batch: old and reference log-probs, then `ppo_epochs`
/// passes over `mini_batches` mini-batches, one AdamW step each.
#[allow(clippy::too_many_arguments)]
pub fn update<B: RlOps, P: Policy<B>>(
    policy: &mut P,
    reference: Option<&P>,
    opt: &mut AdamW<B>,
    be: &B,
    exp: &Experience,
    s: &GrpoSettings,
    lr: f32,
    ws: &mut Workspace<B>,
) -> Result<UpdateReport> {
    update_with(policy, reference, opt, be, exp, s, lr, ws, &Single)
}

/// [`update`] as rank `comm.rank()` of a data-parallel group. Every rank holds the whole
/// experience (rollouts are small next to the model); of each mini-batch, a rank computes
/// the groups of its contiguous shard (`dist::shard` over the mini-batch's groups, so a
/// prompt's responses stay on one rank). The per-token old / reference log-probs and
/// entropies are all-gathered, so the mini-batch-wide choices (normalizer counts, Clip-Cov
/// and top-entropy selections) are made on the whole mini-batch, identically on every rank;
/// gradients are summed over ranks before each (identical) optimizer step. With [`Single`]
/// this is exactly the single-process update.
#[allow(clippy::too_many_arguments)]
pub fn update_with<B: RlOps, P: Policy<B>>(
    policy: &mut P,
    reference: Option<&P>,
    opt: &mut AdamW<B>,
    be: &B,
    exp: &Experience,
    s: &GrpoSettings,
    lr: f32,
    ws: &mut Workspace<B>,
    comm: &dyn Collective<B>,
) -> Result<UpdateReport> {
    let n = exp.responses.len();
    let inv_temp = 1.0 / s.sampling.temperature;
    let lens: Vec<usize> = (0..n).map(|r| sequence_len(exp, r)).collect();
    let mut offsets = vec![0usize];
    for r in &exp.responses {
        offsets.push(offsets.last().unwrap() + r.len());
    }
    // Mini-batches are whole groups; a rank takes a shard of each mini-batch's groups, and
    // micro-batches split the shard by token budget.
    let g_size = exp.group_size;
    let groups = n / g_size;
    let per_mini = groups.div_ceil(s.mini_batches.max(1));
    let minis: Vec<Range<usize>> = (0..groups)
        .step_by(per_mini.max(1))
        .map(|g0| g0 * g_size..((g0 + per_mini).min(groups)) * g_size)
        .collect();
    let world = comm.world();
    let micro_of_rank = |rank: usize| -> Vec<Vec<Range<usize>>> {
        minis
            .iter()
            .map(|m| {
                let sh = shard(m.len() / g_size, rank, world);
                let mine = m.start + sh.start * g_size..m.start + sh.end * g_size;
                pack_ranges(&lens, mine, s.micro_batch_tokens)
            })
            .collect()
    };
    let micro_of = micro_of_rank(comm.rank());
    let all_micro: Vec<Range<usize>> = micro_of.iter().flatten().cloned().collect();

    // On-policy (one PPO epoch of one mini-batch: the defaults) the old log-probs are the
    // update's own forward's, bit for bit (batch invariance, above), so the loss takes them
    // from that forward and their pass is skipped, as TRL does at num_iterations 1; unless a
    // batch-level selection reads them before the forward (Clip-Cov / KL-Cov, TRL's entropy
    // quantile) or `old_logprob_pass` asks for the pass.
    let top_quantile = s.extras.top_entropy_quantile.filter(|&q| q > 0.0 && q < 1.0);
    let reads_old_first = s.loss.policy.needs_selection() || top_quantile.is_some();
    let old_from_forward =
        s.ppo_epochs == 1 && minis.len() == 1 && !reads_old_first && !s.extras.old_logprob_pass;
    let (mut logp_old, mut ent_old) = if old_from_forward {
        (Vec::new(), Vec::new())
    } else {
        response_logprobs_entropy(policy, be, exp, &all_micro, inv_temp, ws)?
    };
    let mut ref_logp = match (reference, &s.loss.kl) {
        (Some(m), Some(_)) => Some(response_logprobs(m, be, exp, &all_micro, inv_temp, ws)?),
        _ => None,
    };
    if world > 1 {
        let order: Vec<Vec<Range<usize>>> =
            (0..world).map(|q| micro_of_rank(q).into_iter().flatten().collect()).collect();
        if !old_from_forward {
            logp_old = gather_tokens(comm, &logp_old, &order, &offsets)?;
            ent_old = gather_tokens(comm, &ent_old, &order, &offsets)?;
        }
        if let Some(r) = ref_logp.as_mut() {
            *r = gather_tokens(comm, r, &order, &offsets)?;
        }
    }
    let adv_tok = broadcast_to_tokens(&exp.advantages, &offsets);
    let mask = vec![1.0f32; offsets[n]];
    let max_len = s.sampling.max_new_tokens;
    let mut report = UpdateReport::default();
    let mut all_metrics = Vec::new();
    for epoch in 0..s.ppo_epochs {
        for (mi, mini) in minis.iter().enumerate() {
            let (t0, t1) = (offsets[mini.start], offsets[mini.end]);
            let norm =
                Normalizer::count(&mask[t0..t1], &rebase(&offsets[mini.start..=mini.end]), max_len);
            // ZeRO-2 with buckets: each finished layer is reduce-scattered during the
            // backward into this rank's block; every rank takes part in as many micro-batch
            // rounds as the rank with the most (a rank may have no group of this mini-batch).
            let bucketed = s.extras.grad_buckets && opt.zero.as_ref().is_some_and(|z| z.stage == 2);
            let mut buckets = bucketed.then(|| {
                ws.release_grads(be);
                let text = policy.text();
                let lens = text.params.iter().map(|p| be.len(p)).collect();
                BucketReducer::new(be, comm, text.layout.backward_buckets(), lens)
            });
            let rounds = match buckets {
                Some(_) => agreed_rounds(comm, micro_of[mi].len())?,
                None => {
                    ws.zero_grads(be);
                    0
                }
            };
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
                    cov_seed(s.extras.seed, epoch, minis.len(), mi),
                )
            });
            let pg_mask: Option<Vec<f32>> = top_quantile.map(|q| {
                high_entropy_mask(&f64s(&ent_old[t0..t1]), &f64s(&mask[t0..t1]), q as f64)
                    .iter()
                    .map(|&x| x as f32)
                    .collect()
            });
            for rs in &micro_of[mi] {
                let (micro, rows) = pack_responses(&*policy, be, exp, rs.clone())?;
                let (a, b) = (offsets[rs.start], offsets[rs.end]);
                let local_off = rebase(&offsets[rs.start..=rs.end]);
                let old: &[f32] = if old_from_forward { &[] } else { &logp_old[a..b] };
                let inputs = LossInputs {
                    ref_logp: ref_logp.as_ref().map(|r| &r[a..b]),
                    pg_mask: pg_mask.as_ref().map(|p| &p[a - t0..b - t0]),
                    selected: selected.as_ref().map(|p| &p[a - t0..b - t0]),
                    ..LossInputs::new(&[], old, &adv_tok[a..b], &mask[a..b], &local_off)
                };
                let mut lossfn = if old_from_forward {
                    GrpoTokenLoss::on_policy(&rows, inputs, &s.loss, norm, inv_temp)
                } else {
                    GrpoTokenLoss::new(&rows, inputs, &s.loss, norm, inv_temp)
                };
                if epoch == 0 && mi == 0 && !old_from_forward {
                    lossfn = lossfn.tracking_ratio_dev();
                }
                let hook = buckets.as_mut().map(|b| b as &mut dyn GradHook<B>);
                report.loss += policy.micro_step(be, &micro, &mut lossfn, ws, hook)?;
                if epoch == 0 && mi == 0 {
                    report.first_epoch_max_ratio_dev =
                        report.first_epoch_max_ratio_dev.max(lossfn.max_ratio_dev);
                }
                all_metrics.push(lossfn.metrics);
            }
            let rep = match buckets {
                Some(mut b) => {
                    for _ in micro_of[mi].len()..rounds {
                        b.pad_round(be)?;
                    }
                    policy.optimizer_step_block(be, comm, opt, b.finish()?, lr)?
                }
                None => policy.optimizer_step(be, comm, opt, &mut ws.grads, lr)?,
            };
            report.steps.push(rep);
        }
    }
    if world > 1 {
        // Every rank reports the whole update: losses add up, the ratio deviation is the
        // largest of any rank, and the metrics merge every rank's micro-batches.
        let mut loss = [report.loss];
        comm.all_reduce_sum_host(&mut loss)?;
        report.loss = loss[0];
        let devs = comm.all_gather_host(&[report.first_epoch_max_ratio_dev])?;
        report.first_epoch_max_ratio_dev = devs.iter().map(|d| d[0]).fold(0.0, f64::max);
        all_metrics = gather_metrics(comm, &all_metrics)?;
    }
    report.loss /= (s.ppo_epochs * minis.len()).max(1) as f64;
    report.metrics = LossMetrics::merge(&all_metrics);
    Ok(report)
}

/// Every rank's loss metrics, each rank's micro-batches merged first (a rank without
/// micro-batches contributes nothing, so an absent entropy is not invented).
fn gather_metrics<B: Backend>(
    comm: &dyn Collective<B>,
    parts: &[LossMetrics],
) -> Result<Vec<LossMetrics>> {
    let m = LossMetrics::merge(parts);
    let mine = [
        parts.len() as f64,
        m.active_tokens,
        m.pg_loss,
        m.kl_loss,
        m.entropy_loss,
        m.clip_frac_low,
        m.clip_frac_high,
        m.clip_frac,
        m.dual_clip_frac,
        m.approx_kl,
        m.kl,
        m.mean_ratio,
        f64::from(u8::from(m.entropy.is_some())),
        m.entropy.unwrap_or(0.0),
    ];
    let all = comm.all_gather_host(&mine)?;
    Ok(all
        .iter()
        .filter(|v| v[0] > 0.0)
        .map(|v| LossMetrics {
            active_tokens: v[1],
            pg_loss: v[2],
            kl_loss: v[3],
            entropy_loss: v[4],
            clip_frac_low: v[5],
            clip_frac_high: v[6],
            clip_frac: v[7],
            dual_clip_frac: v[8],
            approx_kl: v[9],
            kl: v[10],
            mean_ratio: v[11],
            entropy: (v[12] != 0.0).then_some(v[13]),
        })
        .collect())
}

/// Per-response-token values computed by every rank on its micro-batches (`order[q]`: rank
/// q's micro-batches, in the order it computed them) gathered into response-token order.
fn gather_tokens<B: Backend>(
    comm: &dyn Collective<B>,
    mine: &[f32],
    order: &[Vec<Range<usize>>],
    offsets: &[usize],
) -> Result<Vec<f32>> {
    let got = comm.all_gather_host(&mine.iter().map(|&x| x as f64).collect::<Vec<f64>>())?;
    let mut out = vec![f32::NAN; *offsets.last().unwrap_or(&0)];
    for (q, vals) in got.iter().enumerate() {
        let mut k = 0;
        for rs in &order[q] {
            let (a, b) = (offsets[rs.start], offsets[rs.end]);
            let src = vals.get(k..k + (b - a));
            let src = src.ok_or_else(|| anyhow::anyhow!("rank {q} sent too few token values"))?;
            for (o, v) in out[a..b].iter_mut().zip(src) {
                *o = *v as f32;
            }
            k += b - a;
        }
        ensure!(k == vals.len(), "rank {q} sent {} token values, its shard has {k}", vals.len());
    }
    Ok(out)
}

/// Offsets shifted to start at 0.
fn rebase(offsets: &[usize]) -> Vec<usize> {
    offsets.iter().map(|o| o - offsets[0]).collect()
}
