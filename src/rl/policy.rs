//! What the GRPO trainer (`rl::trainer`) needs of the model it trains, so that one trainer
//! runs a text model (`Qwen2`, implemented here with exactly the calls the trainer made
//! before the trait existed) and a vision-language one (`rl::vl_policy::VlPolicy`, whose
//! sequences carry images): rollouts for a batch of prompts, a packed micro-batch of
//! prompt + response sequences, per-row log-probs on it, a micro-step that backprops a
//! `TokenLoss` into the workspace's gradients, and the optimizer step over the trained
//! parameters.

use super::decode_scheduler::Rollouts;
use super::rollout::{generate_scheduled, SamplingParams};
use crate::backend::rl_ops::RlOps;
use crate::dist::{zero, Collective};
use crate::model::GradHook;
use crate::model::{Packed, Qwen2};
use crate::optim::{AdamW, AdamwConfig, StepReport};
use crate::tokenizer::Tokenizer;
use crate::train::{forward_logprobs_of_rows, micro_step_hooked, LossBatch, TokenLoss, Workspace};
use anyhow::Result;

pub trait Policy<B: RlOps> {
    /// The packed micro-batch the policy's forward takes.
    type Micro;

    /// The language model (token ids, positions, end-of-turn ids).
    fn text(&self) -> &Qwen2<B>;

    /// Activations and one zeroed gradient accumulator per trained parameter, in the
    /// optimizer's order.
    fn workspace(&self, be: &B) -> Workspace<B>;

    /// [`Policy::workspace`] with the gradient buffers released (ZeRO 2, which allocates them
    /// per mini-batch or per bucket: the whole gradient is never allocated up front).
    fn workspace_without_grads(&self, be: &B) -> Workspace<B> {
        let mut ws = self.workspace(be);
        ws.release_grads(be);
        ws
    }

    /// Zero AdamW moments for the trained parameters (a frozen part gets none), this rank's
    /// block of them under ZeRO `zero` (1 or 2; 0: replicated).
    fn new_optimizer(
        &self,
        be: &B,
        comm: &dyn Collective<B>,
        cfg: AdamwConfig,
        zero: u8,
    ) -> Result<AdamW<B>>;

    /// `group` responses for each prompt (`items[i]`: the RL item prompt `i` is, by which a
    /// VL policy finds its images), response `g` of `prompts[i]` seeded as prompt `first + i`
    /// of the whole batch (`rollout::generate_at`'s rule); `prompt_index` is local to
    /// `prompts`. The rollouts come with the decode scheduler's account of its KV slots.
    #[allow(clippy::too_many_arguments)]
    fn roll_out(
        &self,
        be: &B,
        tok: &Tokenizer,
        prompts: &[Vec<u32>],
        items: &[usize],
        group: usize,
        sampling: &SamplingParams,
        seed: u64,
        first: usize,
        on_token: impl FnMut(usize),
    ) -> Result<Rollouts>;

    /// Packs `seqs` (sequence `j` belongs to RL item `items[j]`) back to back; `trained(j, pos)` says whether
    /// token `pos` of sequence `j` is a loss target. Returns the micro-batch and the packed
    /// rows that predict trained targets (`LossBatch::rows`).
    fn pack(
        &self,
        be: &B,
        seqs: &[Vec<u32>],
        items: &[usize],
        trained: impl Fn(usize, usize) -> bool,
    ) -> Result<(Self::Micro, Vec<usize>)>;

    /// Per packed row of `rows` (the rows `pack` returned), the target's log-prob and the
    /// entropy at `inv_temp`; other rows may hold junk. The same forward and head as
    /// [`Policy::micro_step`]'s with a loss on those rows: the first PPO epoch's ratio is
    /// exactly 1.
    fn forward_logprobs(
        &self,
        be: &B,
        m: &Self::Micro,
        rows: &[usize],
        inv_temp: f32,
        ws: &mut Workspace<B>,
    ) -> Result<(Vec<f32>, Vec<f32>)>;

    /// Forward, `loss`, backward; gradients ACCUMULATE into `ws.grads`, and with a `hook`
    /// each finished bucket of them is reported to it (ZeRO-2's bucketed reduce-scatter,
    /// `dist::buckets`, in the order of `self.text().layout.backward_buckets()`). Returns the
    /// loss contribution.
    fn micro_step(
        &self,
        be: &B,
        m: &Self::Micro,
        loss: &mut dyn TokenLoss<B>,
        ws: &mut Workspace<B>,
        hook: Option<&mut dyn GradHook<B>>,
    ) -> Result<f64>;

    /// The data-parallel optimizer step of the trained parameters: the ranks' `grads` (the
    /// workspace's) summed, then one AdamW step (`dist::zero::reduce_and_step`).
    fn optimizer_step(
        &mut self,
        be: &B,
        comm: &dyn Collective<B>,
        opt: &mut AdamW<B>,
        grads: &mut [B::Buf],
        lr: f32,
    ) -> Result<StepReport>;

    /// The sharded optimizer step from this rank's gradient block, already reduced during
    /// the backward (`dist::zero::step_block`).
    fn optimizer_step_block(
        &mut self,
        be: &B,
        comm: &dyn Collective<B>,
        opt: &mut AdamW<B>,
        block: B::Buf,
        lr: f32,
    ) -> Result<StepReport>;
}

impl<B: RlOps> Policy<B> for Qwen2<B> {
    type Micro = Packed;

    fn text(&self) -> &Qwen2<B> {
        self
    }

    fn workspace(&self, be: &B) -> Workspace<B> {
        Workspace::new(self, be)
    }

    fn workspace_without_grads(&self, be: &B) -> Workspace<B> {
        Workspace::without_grads(self, be)
    }

    fn new_optimizer(
        &self,
        be: &B,
        comm: &dyn Collective<B>,
        cfg: AdamwConfig,
        zero: u8,
    ) -> Result<AdamW<B>> {
        zero::fresh_optimizer(be, comm, &self.params, cfg, zero)
    }

    fn roll_out(
        &self,
        be: &B,
        tok: &Tokenizer,
        prompts: &[Vec<u32>],
        _items: &[usize],
        group: usize,
        sampling: &SamplingParams,
        seed: u64,
        first: usize,
        on_token: impl FnMut(usize),
    ) -> Result<Rollouts> {
        generate_scheduled(self, be, prompts, group, sampling, seed, first, Some(tok), on_token)
    }

    fn pack(
        &self,
        _be: &B,
        seqs: &[Vec<u32>],
        _items: &[usize],
        trained: impl Fn(usize, usize) -> bool,
    ) -> Result<(Packed, Vec<usize>)> {
        let lb = LossBatch::pack(seqs, trained);
        Ok((lb.batch, lb.rows))
    }

    fn forward_logprobs(
        &self,
        be: &B,
        m: &Packed,
        rows: &[usize],
        inv_temp: f32,
        ws: &mut Workspace<B>,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let (_, lp, ent) = forward_logprobs_of_rows(be, self, m, Some(rows), inv_temp, ws)?;
        Ok((lp, ent))
    }

    fn micro_step(
        &self,
        be: &B,
        m: &Packed,
        loss: &mut dyn TokenLoss<B>,
        ws: &mut Workspace<B>,
        hook: Option<&mut dyn GradHook<B>>,
    ) -> Result<f64> {
        micro_step_hooked(be, self, m, loss, ws, hook)
    }

    fn optimizer_step(
        &mut self,
        be: &B,
        comm: &dyn Collective<B>,
        opt: &mut AdamW<B>,
        grads: &mut [B::Buf],
        lr: f32,
    ) -> Result<StepReport> {
        zero::reduce_and_step(be, comm, opt, &mut self.params, grads, lr)
    }

    fn optimizer_step_block(
        &mut self,
        be: &B,
        comm: &dyn Collective<B>,
        opt: &mut AdamW<B>,
        block: B::Buf,
        lr: f32,
    ) -> Result<StepReport> {
        zero::step_block(be, comm, opt, &mut self.params, block, lr)
    }
}
