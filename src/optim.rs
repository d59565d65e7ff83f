//! The optimizer: AdamW over the whole parameter list, global gradient-norm clipping, the
//! non-finite-gradient skip, and learning-rate schedules as pure functions of the step.
//!
//! AdamW follows `torch.optim.AdamW` (decoupled weight decay, Loshchilov & Hutter 2019,
//! with Adam's bias correction, Kingma & Ba 2015); the per-tensor arithmetic is the
//! backend's `adamw` op, applied to the whole list by `adamw_many`. Clipping follows `torch.nn.utils.clip_grad_norm_`.

use crate::backend::{AdamwStep, Backend};
use serde::{Deserialize, Serialize};

/// AdamW hyper-parameters (the learning rate comes from the schedule, per step).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamwConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Applied to every parameter (verl's FSDP actor passes all parameters to one group).
    pub weight_decay: f32,
    /// Global L2 norm bound of the gradient; `None` disables clipping.
    pub max_grad_norm: Option<f32>,
}

impl Default for AdamwConfig {
    /// torch defaults except the grad clip of 1.0 that both MMR1 stages use.
    fn default() -> Self {
        AdamwConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: Some(1.0),
        }
    }
}

impl AdamwConfig {
    /// Range checks, keys named `{prefix}beta1` etc. A clip bound must be positive (`None`
    /// is how clipping is turned off); betas in [0, 1) (beta1 = 2 would amplify, not average).
    pub fn check(&self, c: &mut crate::ranges::Checks, prefix: &str) {
        c.closed_open(&format!("{prefix}beta1"), self.beta1 as f64, 0.0, 1.0);
        c.closed_open(&format!("{prefix}beta2"), self.beta2 as f64, 0.0, 1.0);
        c.positive(&format!("{prefix}eps"), self.eps as f64);
        c.non_negative(&format!("{prefix}weight_decay"), self.weight_decay as f64);
        if let Some(g) = self.max_grad_norm {
            c.positive(&format!("{prefix}grad_clip"), g as f64);
        }
    }
}

/// What one `AdamW::step` did.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Global L2 norm of the gradient before clipping (may be NaN/inf).
    pub grad_norm: f64,
    /// Factor the gradient was multiplied by (1 when not clipped).
    pub clip_scale: f32,
    /// True when the step was skipped because the gradient norm was not finite.
    pub skipped: bool,
}

/// AdamW state: first and second moments per parameter (layout order) and the step count.
pub struct AdamW<B: Backend> {
    pub cfg: AdamwConfig,
    pub m: Vec<B::Buf>,
    pub v: Vec<B::Buf>,
    /// Steps taken so far (skipped steps do not count, as torch's optimizer is not called).
    pub step: u64,
    /// `Some` when the state is this rank's ZeRO shard (`dist::zero`): `m` and `v` then hold
    /// one buffer each, the rank's block of the flat parameter vector, and the step is
    /// `dist::zero::reduce_and_step`'s.
    pub zero: Option<crate::dist::zero::ZeroShard>,
}

/// Global L2 norm of all gradients, accumulated in f64: per-tensor sums of squares added in
/// layout order (`Backend::sum_squares_many`: one pass and one download on the GPU).
pub fn grad_norm<B: Backend>(be: &B, grads: &[B::Buf]) -> f64 {
    let all: Vec<&B::Buf> = grads.iter().collect();
    be.sum_squares_many(&all).sqrt()
}

/// `torch.nn.utils.clip_grad_norm_`'s factor: `min(max_norm / (norm + 1e-6), 1)`.
pub fn clip_scale(norm: f64, max_norm: f32) -> f32 {
    (max_norm as f64 / (norm + 1e-6)).min(1.0) as f32
}

impl<B: Backend> AdamW<B> {
    /// Zero moments shaped like `params`.
    pub fn new(be: &B, params: &[B::Buf], cfg: AdamwConfig) -> Self {
        AdamW {
            cfg,
            m: params.iter().map(|p| be.zeros(be.len(p))).collect(),
            v: params.iter().map(|p| be.zeros(be.len(p))).collect(),
            step: 0,
            zero: None,
        }
    }

    /// One optimizer step with learning rate `lr`: clip by the global norm, then AdamW on
    /// every tensor. When the norm is NaN or infinite the parameters and moments are left as they
    /// are and the report says `skipped` (verl's `dp_actor` does the same). Gradients are
    /// not modified (clipping is folded into the update as `grad_scale`).
    pub fn step(&mut self, be: &B, params: &mut [B::Buf], grads: &[B::Buf], lr: f32) -> StepReport {
        let _r = crate::nvtx_ranges::range(c"optimizer");
        assert!(
            self.zero.is_none(),
            "AdamW::step on a ZeRO shard: use dist::zero::reduce_and_step"
        );
        assert_eq!(params.len(), grads.len(), "AdamW::step: params and grads differ in count");
        assert_eq!(params.len(), self.m.len(), "AdamW::step: optimizer state is for another model");
        let norm = grad_norm(be, grads);
        if !norm.is_finite() {
            return StepReport { grad_norm: norm, clip_scale: 1.0, skipped: true };
        }
        let scale = self.cfg.max_grad_norm.map_or(1.0, |mx| clip_scale(norm, mx));
        self.step += 1;
        let hp = AdamwStep {
            lr,
            beta1: self.cfg.beta1,
            beta2: self.cfg.beta2,
            eps: self.cfg.eps,
            weight_decay: self.cfg.weight_decay,
            step: self.step,
            grad_scale: scale,
        };
        // One launch on the GPU for every tensor (`Backend::adamw_many`), the per-tensor bits.
        be.adamw_many(params, grads, &mut self.m, &mut self.v, hp);
        StepReport { grad_norm: norm, clip_scale: scale, skipped: false }
    }
}

/// Learning-rate schedule: a pure function of the optimizer step (0-based), so a resumed
/// run needs nothing but the step number.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LrSchedule {
    /// `lr` after a linear warm-up of `warmup_steps` (MMR1's GRPO: constant, no warm-up).
    Constant { lr: f32, warmup_steps: u64 },
    /// Linear warm-up then half-cosine decay to `min_lr` at `total_steps`
    /// (MMR1's SFT: cosine, warm-up ratio 0.1).
    Cosine { lr: f32, warmup_steps: u64, total_steps: u64, min_lr: f32 },
}

impl LrSchedule {
    /// Warm-up steps for a ratio of the run, rounded up as Hugging Face's
    /// `TrainingArguments.get_warmup_steps` does (`ceil(total * ratio)`).
    pub fn warmup_steps_for(total_steps: u64, ratio: f64) -> u64 {
        (total_steps as f64 * ratio).ceil() as u64
    }

    /// The learning rate used by optimizer step `step` (0-based). Follows
    /// `transformers.get_cosine_with_min_lr_schedule_with_warmup` (and the constant-with-warmup
    /// one): warm-up factor `step / warmup` (so step 0 of a warm-up uses lr 0, as there),
    /// then `min + (lr - min) * 0.5 * (1 + cos(pi * progress))` with
    /// `progress = (step - warmup) / (total - warmup)`.
    pub fn lr_at(&self, step: u64) -> f32 {
        match *self {
            LrSchedule::Constant { lr, warmup_steps } => {
                if step < warmup_steps {
                    lr * step as f32 / warmup_steps.max(1) as f32
                } else {
                    lr
                }
            }
            LrSchedule::Cosine { lr, warmup_steps, total_steps, min_lr } => {
                if step < warmup_steps {
                    return (lr as f64 * step as f64 / warmup_steps.max(1) as f64) as f32;
                }
                let progress = (step - warmup_steps) as f64
                    / total_steps.saturating_sub(warmup_steps).max(1) as f64;
                let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos());
                (min_lr as f64 + (lr as f64 - min_lr as f64) * cos) as f32
            }
        }
    }
}
