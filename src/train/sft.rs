//! Cold-start supervised fine-tuning: epochs over a shuffled dataset, `batch_size` sequences
//! per optimizer step packed padding-free into micro-batches of at most `micro_batch_tokens`,
//! gradients accumulated, loss normalized by the step's response-token count (so the result
//! does not depend on the micro-batching), AdamW with clipping and a schedule.
//!
//! Everything the next step depends on is in `SftState` + the model + the optimizer, so a
//! run saved after step k and resumed is bit-identical to one that never stopped (CPU).

use super::checkpoint::{load_checkpoint_sharded, save_checkpoint, OptState, StateKind};
use super::{micro_step_hooked, LossBatch, SftLoss, Workspace};
use crate::backend::memory::MemoryStats;
use crate::backend::Backend;
use crate::data::sft_data::{fingerprint, SftExample};
use crate::dist::buckets::{agreed_rounds, BucketReducer};
use crate::dist::{shard, zero, Collective, Single};
use crate::model::safetensors_io::SaveDtype;
use crate::model::GradHook;
use crate::model::Qwen2;
use crate::optim::{AdamW, AdamwConfig, LrSchedule};
use crate::ranges::Checks;
use crate::serde_float::nan_if_null;
use anyhow::{bail, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Hyper-parameters of an SFT run. Defaults: MMR1's cold-start recipe (lr 1e-5, cosine,
/// warm-up ratio 0.1, weight decay 0, effective batch 32; see ../shared/MMR1.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SftConfig {
    pub epochs: usize,
    /// Sequences per optimizer step.
    pub batch_size: usize,
    /// Upper bound on the tokens of one packed micro-batch (a longer sequence goes alone).
    pub micro_batch_tokens: usize,
    pub max_len: usize,
    pub lr: f32,
    pub min_lr: f32,
    pub warmup_ratio: f64,
    /// Cosine decay after warm-up (true) or constant.
    pub cosine: bool,
    pub adamw: AdamwConfig,
    pub seed: u64,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            epochs: 1,
            batch_size: 32,
            micro_batch_tokens: 16384,
            max_len: 16384,
            lr: 1e-5,
            min_lr: 0.0,
            warmup_ratio: 0.1,
            cosine: true,
            adamw: AdamwConfig { weight_decay: 0.0, ..AdamwConfig::default() },
            seed: 0,
        }
    }
}

impl SftConfig {
    /// Range checks of every field (the `train` and `sft` commands check their own keys and
    /// flags first, by the names users write; this guards every other caller).
    pub fn validate(&self) -> Result<()> {
        let mut c = Checks::new();
        c.at_least("epochs", self.epochs as u64, 1);
        c.at_least("batch_size", self.batch_size as u64, 1);
        c.at_least("micro_batch_tokens", self.micro_batch_tokens as u64, 1);
        c.at_least("max_len", self.max_len as u64, 2);
        c.positive("lr", self.lr as f64);
        c.closed("min_lr", self.min_lr as f64, 0.0, self.lr as f64);
        c.closed_open("warmup_ratio", self.warmup_ratio, 0.0, 1.0);
        self.adamw.check(&mut c, "");
        c.finish("SFT settings")
    }
}

/// The dataset a state belongs to, checked on resume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    pub examples: usize,
    pub fingerprint: String,
}

/// `trainer_state.json` of an SFT run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SftState {
    pub kind: StateKind,
    /// Optimizer steps done (skipped non-finite steps included).
    pub step: u64,
    pub total_steps: u64,
    pub skipped_steps: u64,
    /// Current epoch (0-based) and the next position in its shuffled order.
    pub epoch: usize,
    pub cursor: usize,
    /// The RNG as it was before shuffling the current epoch: order = shuffle(clone of it).
    pub epoch_rng: ChaCha8Rng,
    pub schedule: LrSchedule,
    pub config: SftConfig,
    pub data: DataInfo,
}

impl SftState {
    /// The state of a fresh run of `cfg` over `data` (any trainer: text or vision-language).
    pub fn fresh(data: &[SftExample], cfg: &SftConfig) -> SftState {
        let steps_per_epoch = data.len().div_ceil(cfg.batch_size) as u64;
        let total_steps = steps_per_epoch * cfg.epochs as u64;
        let warmup_steps = LrSchedule::warmup_steps_for(total_steps, cfg.warmup_ratio);
        let schedule = if cfg.cosine {
            LrSchedule::Cosine { lr: cfg.lr, warmup_steps, total_steps, min_lr: cfg.min_lr }
        } else {
            LrSchedule::Constant { lr: cfg.lr, warmup_steps }
        };
        let epoch_rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        SftState {
            kind: StateKind::Sft,
            step: 0,
            total_steps,
            skipped_steps: 0,
            epoch: 0,
            cursor: 0,
            epoch_rng,
            schedule,
            data: DataInfo { examples: data.len(), fingerprint: fingerprint(data) },
            config: cfg.clone(),
        }
    }
}

/// What one optimizer step did (also one line of metrics.jsonl). `step`, `loss` and `lr` are
/// required when read back; the rest default, so a hand-written or older file still reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SftStepMetrics {
    pub step: u64,
    #[serde(deserialize_with = "nan_if_null", default)]
    pub epoch: f64,
    /// Mean token cross-entropy over the step's response tokens.
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub lr: f32,
    #[serde(deserialize_with = "nan_if_null", default)]
    pub grad_norm: f64,
    #[serde(deserialize_with = "nan_if_null", default)]
    pub clip_scale: f32,
    #[serde(default)]
    pub skipped: bool,
    #[serde(default)]
    pub sequences: usize,
    #[serde(default)]
    pub tokens: usize,
    #[serde(default)]
    pub trained_tokens: usize,
    #[serde(default)]
    pub micro_batches: usize,
    #[serde(deserialize_with = "nan_if_null", default)]
    pub seconds: f64,
    #[serde(deserialize_with = "nan_if_null", default)]
    pub tokens_per_s: f64,
    /// The device allocator's counters after the step (peak bytes since the run started);
    /// absent on the CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_memory: Option<MemoryStats>,
}

pub struct SftTrainer<B: Backend> {
    pub model: Qwen2<B>,
    pub opt: AdamW<B>,
    pub data: Vec<SftExample>,
    pub state: SftState,
    /// Activations, gradient scratch and the gradients of the current step.
    pub ws: Workspace<B>,
    /// ZeRO-2 only (ignored at stages 0 and 1): reduce-scatter the gradients in buckets
    /// during the backward, so a rank never holds the whole f32 gradient (`dist::buckets`;
    /// `dist.grad_buckets`, on by default). Off: one reduce-scatter per step, as ZeRO-1 does.
    pub grad_buckets: bool,
    /// The most f32 gradient values the last step held at once on this rank (gradient
    /// buffers plus the ZeRO block; `dist::buckets::BucketReducer::peak_values` when
    /// bucketed): what the gradients cost at the step's peak.
    pub grad_peak_values: usize,
    order: Vec<usize>,
    next_epoch_rng: ChaCha8Rng,
}

/// Shuffled order of an epoch from the RNG state at its start; returns the advanced RNG.
pub(crate) fn epoch_order(n: usize, rng: &ChaCha8Rng) -> (Vec<usize>, ChaCha8Rng) {
    let mut r = rng.clone();
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut r);
    (order, r)
}

/// The positions `cursor..end` of the epoch order that the next step trains on (at most
/// `batch_size`, fewer at the epoch's end), first starting the next epoch when the current one
/// is used up: its order is shuffled from `next_rng`, which then advances. The text and the
/// vision-language trainers walk their data this way.
pub(crate) fn next_step_range(
    state: &mut SftState,
    order: &mut Vec<usize>,
    next_rng: &mut ChaCha8Rng,
    n: usize,
) -> std::ops::Range<usize> {
    if state.cursor >= n {
        state.epoch += 1;
        state.cursor = 0;
        state.epoch_rng = next_rng.clone();
        let (o, next) = epoch_order(n, &state.epoch_rng);
        *order = o;
        *next_rng = next;
    }
    state.cursor..(state.cursor + state.config.batch_size).min(n)
}

/// What a finished step trained on, for its metrics.
pub(crate) struct StepDone {
    pub loss: f64,
    pub sequences: usize,
    pub tokens: usize,
    pub trained_tokens: usize,
    pub micro_batches: usize,
    pub started: std::time::Instant,
    pub device_memory: Option<MemoryStats>,
}

impl SftState {
    /// Moves past an optimizer step (`rep`) that trained on epoch positions up to `end` of `n`,
    /// and returns its metrics. Call it right after the optimizer step: the learning rate
    /// reported is the schedule's at the step just taken.
    pub(crate) fn finish_step(
        &mut self,
        end: usize,
        n: usize,
        rep: &crate::optim::StepReport,
        done: StepDone,
    ) -> SftStepMetrics {
        let lr = self.schedule.lr_at(self.step);
        self.step += 1;
        self.cursor = end;
        if rep.skipped {
            self.skipped_steps += 1;
        }
        let secs = done.started.elapsed().as_secs_f64();
        SftStepMetrics {
            step: self.step,
            epoch: self.epoch as f64 + end as f64 / n as f64,
            loss: done.loss,
            lr,
            grad_norm: rep.grad_norm,
            clip_scale: rep.clip_scale,
            skipped: rep.skipped,
            sequences: done.sequences,
            tokens: done.tokens,
            trained_tokens: done.trained_tokens,
            micro_batches: done.micro_batches,
            seconds: secs,
            tokens_per_s: done.tokens as f64 / secs.max(1e-9),
            device_memory: done.device_memory,
        }
    }
}

/// Splits sequences (in order) into packed micro-batches of at most `max_tokens` tokens.
pub fn pack_micro_batches(lens: &[usize], max_tokens: usize) -> Vec<std::ops::Range<usize>> {
    super::pack_ranges(lens, 0..lens.len(), max_tokens)
}

impl<B: Backend> SftTrainer<B> {
    /// A fresh run on `model`.
    pub fn new(be: &B, model: Qwen2<B>, data: Vec<SftExample>, cfg: SftConfig) -> Result<Self> {
        Self::new_ranked(be, model, data, cfg, &Single, 0)
    }

    /// [`SftTrainer::new`] for rank `comm.rank()` of a run at ZeRO `stage`: the optimizer
    /// holds only the rank's block from the start (`dist::zero::fresh_optimizer`).
    pub fn new_ranked(
        be: &B,
        model: Qwen2<B>,
        data: Vec<SftExample>,
        cfg: SftConfig,
        comm: &dyn Collective<B>,
        stage: u8,
    ) -> Result<Self> {
        cfg.validate()?;
        if data.is_empty() {
            bail!("the SFT dataset is empty");
        }
        for (i, e) in data.iter().enumerate() {
            model.check_ids(&e.ids).map_err(|err| anyhow::anyhow!("example {}: {err}", i + 1))?;
        }
        let state = SftState::fresh(&data, &cfg);
        let opt = crate::dist::zero::fresh_optimizer(be, comm, &model.params, cfg.adamw, stage)?;
        Ok(Self::assemble(be, model, opt, data, state))
    }

    fn assemble(
        be: &B,
        model: Qwen2<B>,
        opt: AdamW<B>,
        data: Vec<SftExample>,
        state: SftState,
    ) -> Self {
        let (order, next_epoch_rng) = epoch_order(data.len(), &state.epoch_rng);
        // ZeRO 2 holds no whole gradient between steps (and, bucketed, not during them).
        let ws = match &opt.zero {
            Some(z) if z.stage == 2 => Workspace::without_grads(&model, be),
            _ => Workspace::new(&model, be),
        };
        SftTrainer {
            model,
            opt,
            data,
            state,
            ws,
            grad_buckets: true,
            grad_peak_values: 0,
            order,
            next_epoch_rng,
        }
    }

    /// Continues the run saved in checkpoint directory `dir`; `data` must be the dataset it
    /// was trained on (same examples, same tokenization), which is checked.
    pub fn resume(be: &B, dir: &Path, data: Vec<SftExample>) -> Result<Self> {
        Self::resume_ranked(be, dir, data, &Single, 0)
    }

    /// [`SftTrainer::resume`] for rank `comm.rank()` of a run at ZeRO `stage` (any stage and
    /// world size: checkpoints are consolidated); only the rank's block of the optimizer state
    /// is uploaded.
    pub fn resume_ranked(
        be: &B,
        dir: &Path,
        data: Vec<SftExample>,
        comm: &dyn Collective<B>,
        stage: u8,
    ) -> Result<Self> {
        let ck = load_checkpoint_sharded::<B, SftState>(be, dir, comm, stage)?;
        let st = ck.state;
        if st.kind != StateKind::Sft {
            bail!("{}: trainer state is of kind {:?}, not an SFT run", dir.display(), st.kind);
        }
        let info = DataInfo { examples: data.len(), fingerprint: fingerprint(&data) };
        if info != st.data {
            bail!(
                "{}: the checkpoint was trained on other data ({} examples, fingerprint {}) than given now ({} examples, fingerprint {}); \
                 resume needs the same file, --max-len and chat settings",
                dir.display(),
                st.data.examples,
                st.data.fingerprint,
                info.examples,
                info.fingerprint
            );
        }
        if st.cursor > data.len() || st.step > st.total_steps {
            bail!(
                "{}: trainer state is inconsistent (cursor {}, step {} of {})",
                dir.display(),
                st.cursor,
                st.step,
                st.total_steps
            );
        }
        Ok(Self::assemble(be, ck.model, ck.opt, data, st))
    }

    pub fn done(&self) -> bool {
        self.state.step >= self.state.total_steps
    }

    /// The model-state line a data-parallel or sharded run prints at its start.
    pub fn state_note(&self, be: &B, world: usize) -> String {
        let total: usize = self.model.params.iter().map(|p| be.len(p)).sum();
        let stage = self.opt.zero.as_ref().map_or(0, |z| z.stage);
        let grads = if self.grad_buckets {
            let f = self.model.layout.bucketed_grad_peak() as f64 / total.max(1) as f64;
            zero::GradLayout::Buckets { in_flight: Some(f) }
        } else {
            zero::GradLayout::Whole
        };
        zero::state_note(world, stage, grads, Some(total))
    }

    /// Whether this trainer's steps reduce-scatter the gradients in buckets during the
    /// backward: ZeRO-2 with `grad_buckets` on.
    pub fn bucketed(&self) -> bool {
        self.grad_buckets && self.opt.zero.as_ref().is_some_and(|z| z.stage == 2)
    }

    /// One optimizer step: the next `batch_size` sequences of the epoch (fewer at its end).
    pub fn step(&mut self, be: &B) -> Result<SftStepMetrics> {
        self.step_with(be, &Single)
    }

    /// One optimizer step as rank `comm.rank()` of a data-parallel group: every rank walks
    /// the same epoch order (same data, same seed), takes its contiguous shard of the step's
    /// sequences (`dist::shard`), normalizes by the trained-token count of the WHOLE step,
    /// and the ranks sum their gradients before the (identical) optimizer step. With
    /// [`Single`] this is exactly the single-process step.
    pub fn step_with(&mut self, be: &B, comm: &dyn Collective<B>) -> Result<SftStepMetrics> {
        let t0 = std::time::Instant::now();
        let n = self.data.len();
        let range = next_step_range(&mut self.state, &mut self.order, &mut self.next_epoch_rng, n);
        let (cfg, end) = (&self.state.config, range.end);
        let idx: Vec<usize> = self.order[range].to_vec();
        let seqs: Vec<&SftExample> = idx.iter().map(|&i| &self.data[i]).collect();
        // The loss of the step is the mean over ALL its response tokens: normalize globally
        // (over every rank's shard: each rank sees the whole step's sequences).
        let step_tokens: usize = seqs.iter().map(|e| e.trained_targets()).sum();
        let lens: Vec<usize> = seqs.iter().map(|e| e.ids.len()).collect();
        let mine = shard(seqs.len(), comm.rank(), comm.world());
        let micro = super::pack_ranges(&lens, mine.clone(), cfg.micro_batch_tokens);
        // ZeRO-2 with buckets: each finished layer is reduce-scattered during the backward
        // and only this rank's block is kept (`dist::buckets`); every rank takes part in as
        // many micro-batch rounds as the rank with the most.
        let mut buckets = self.bucketed().then(|| {
            self.ws.release_grads(be);
            let lens = self.model.params.iter().map(|p| be.len(p)).collect();
            BucketReducer::new(be, comm, self.model.layout.backward_buckets(), lens)
        });
        let rounds = match buckets {
            Some(_) => agreed_rounds(comm, micro.len())?,
            None => {
                self.ws.zero_grads(be);
                0
            }
        };
        let mut loss = 0.0;
        for r in &micro {
            let part = &seqs[r.clone()];
            let ids: Vec<&[u32]> = part.iter().map(|e| e.ids.as_slice()).collect();
            let lb = LossBatch::pack(&ids, |j, pos| part[j].trained[pos]);
            let mut lossfn = SftLoss::new(&lb.row_mask(), step_tokens);
            let hook = buckets.as_mut().map(|b| b as &mut dyn GradHook<B>);
            loss += micro_step_hooked(be, &self.model, &lb.batch, &mut lossfn, &mut self.ws, hook)?;
        }
        if let Some(b) = buckets.as_mut() {
            for _ in micro.len()..rounds {
                b.pad_round(be)?;
            }
        }
        // Sum over ranks: the loss, the trained tokens the shards saw (which must add up to
        // the normalizer: ranks that disagree on the data would silently train on a wrong
        // gradient), the micro-batches; then the gradients.
        let my_tokens: usize = seqs[mine].iter().map(|e| e.trained_targets()).sum();
        let mut sums = [loss, my_tokens as f64, micro.len() as f64];
        comm.all_reduce_sum_host(&mut sums)?;
        if sums[1] != step_tokens as f64 {
            bail!(
                "step {}: the ranks' shards hold {} trained tokens, this rank expected {step_tokens}; \
                 every rank needs the same dataset, settings and seed",
                self.state.step + 1,
                sums[1]
            );
        }
        let [loss, _, micro_batches] = sums;
        let lr = self.state.schedule.lr_at(self.state.step);
        let (params, opt) = (&mut self.model.params, &mut self.opt);
        let rep = match buckets {
            Some(b) => {
                self.grad_peak_values = b.peak_values();
                zero::step_block(be, comm, opt, params, b.finish()?, lr)?
            }
            None => {
                // The whole gradient, and (sharded) the block the reduce-scatter returns
                // while it is still held.
                let block = opt.zero.as_ref().map_or(0, |z| z.range.len());
                self.grad_peak_values =
                    self.ws.grads.iter().map(|g| be.len(g)).sum::<usize>() + block;
                zero::reduce_and_step(be, comm, opt, params, &mut self.ws.grads, lr)?
            }
        };
        let done = StepDone {
            loss,
            sequences: seqs.len(),
            tokens: lens.iter().sum(),
            trained_tokens: step_tokens,
            micro_batches: micro_batches as usize,
            started: t0,
            device_memory: be.memory_stats(),
        };
        Ok(self.state.finish_step(end, n, &rep, done))
    }

    /// Saves `out/checkpoint-{step}` (and moves `out/latest`).
    pub fn save(
        &self,
        be: &B,
        out: &Path,
        dtype: SaveDtype,
        tokenizer: Option<&Path>,
    ) -> Result<PathBuf> {
        self.save_with(be, out, dtype, tokenizer, &self.opt)
    }

    /// [`SftTrainer::save`] with the optimizer state `opt` (a ZeRO run's state gathered from
    /// its shards by `dist::zero::consolidated`).
    pub fn save_with<'a>(
        &self,
        be: &B,
        out: &Path,
        dtype: SaveDtype,
        tokenizer: Option<&Path>,
        opt: impl Into<OptState<'a, B>>,
    ) -> Result<PathBuf>
    where
        B: 'a,
    {
        save_checkpoint(be, out, self.state.step, &self.model, opt, &self.state, dtype, tokenizer)
    }
}
