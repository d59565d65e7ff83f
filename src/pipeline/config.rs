//! The configuration of a `train` run: every key with its default, read from TOML, overridden
//! by `--set section.key=value`, validated with messages that name the key.
//!
//! Defaults are the MMR1 paper's where it states one (../shared/MMR1.md, docs/algorithm.md);
//! the built-in demo starts from `TrainConfig::demo()` instead, sized for two CPU cores.

use crate::backend::precision::PrecisionChoice;
use crate::backend::select::DeviceChoice;
use crate::data::jsonl::BadLines;
use crate::data::prompt::PromptStyle;
use crate::model::safetensors_io::SaveDtype;
use crate::ranges::Checks;
use crate::rl::advantage::{AdvEstimator, Convention, ScaleRewards};
use crate::rl::grpo::{Aggregation, KlEstimator, PolicyLoss};
use crate::train::sft::SftConfig;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Seed of everything random in the run (data order, rollouts, the demo's model).
    pub seed: u64,
    pub model: ModelSection,
    pub data: DataSection,
    pub output: OutputSection,
    pub sft: SftSection,
    pub rl: RlSection,
    pub vas: VasSection,
    pub reward: RewardSection,
    pub eval: EvalSection,
    pub dist: DistSection,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DistSection {
    /// ZeRO stage of a data-parallel run (`mpirun -np N`): 0 = every rank holds the whole
    /// AdamW state; 1 = each rank holds the moments of its 1/N of the parameters; 2 = also
    /// shards the gradients (see `grad_buckets`). Same results (docs/distributed.md).
    pub zero: u8,
    /// ZeRO 2 only (ignored at 0 and 1): reduce-scatter the gradients in buckets (one decoder
    /// layer each) during the backward, so a rank holds its 1/N block of the f32 gradient plus
    /// the buckets in flight instead of the whole gradient. false: one reduce-scatter after
    /// the backward (the whole gradient at the peak, as ZeRO 1). Equal to rounding with
    /// several micro-batches per rank, bit for bit with one (docs/distributed.md).
    pub grad_buckets: bool,
    /// The collective of the device buffers: "auto" (NCCL for N > 1 ranks on GPUs, MPI
    /// otherwise), "mpi" (GPU buffers staged through host memory) or "nccl" (NCCL also in a
    /// world of one, to check it on one GPU against the plain path).
    pub collective: crate::dist::launch::CollectiveChoice,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// Hugging Face model directory. Empty: build the demo model from scratch.
    pub dir: PathBuf,
    /// auto | cpu | cuda | cuda:N
    pub device: DeviceChoice,
    /// auto | bf16 | f32: matmuls and attention in bf16 (tensor cores, f32 accumulation) or
    /// f32; auto is bf16 on a GPU and on emu, f32 on the CPU.
    pub precision: PrecisionChoice,
    /// Activation recomputation in SFT and GRPO updates: keep only each layer's input in the
    /// forward, re-run the layer in the backward. Less device memory (the activations of all
    /// layers but one), more compute, the same results.
    pub recompute: bool,
    /// Qwen2.5-VL models: keep the vision tower (merger included) frozen in both phases (no
    /// backward through it, no optimizer state for it; the usual RL setting and
    /// LLaMA-Factory's default for SFT). false trains it with the decoder (one AdamW step,
    /// one global gradient norm). Text models ignore it.
    pub freeze_vision: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// Cold-start SFT data (JSONL or a JSON array: messages, prompt/completion, conversations,
    /// problem/solution or alpaca records; docs/data.md). Empty: no SFT phase.
    pub sft: PathBuf,
    /// RL items (JSONL, MMR1 schema: problem/question, answer, optional id; verl's rows and
    /// JSON arrays too, docs/data.md). Empty: no RL phase.
    pub rl: PathBuf,
    /// Held-out items for evaluation (same schema as `rl`). Empty: no evaluation.
    pub eval: PathBuf,
    /// What a malformed JSONL line does: "stop" with its line number, or "skip" and count it.
    pub bad_lines: BadLines,
    /// How RL/eval items become prompts: "mmr1" (MMR1's instruction + problem), "mmr1-eval",
    /// or "plain" (the problem alone).
    pub prompt_style: PromptStyle,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutputSection {
    pub dir: PathBuf,
    /// Save a checkpoint every this many steps of each phase (0: only at the end).
    pub checkpoint_every: usize,
    /// Checkpoints kept per phase (older ones are deleted after a save).
    pub keep_checkpoints: usize,
    pub save_dtype: SaveDtype,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SftSection {
    /// Passes over the SFT data (0: no SFT phase).
    pub epochs: usize,
    /// Sequences per optimizer step.
    pub batch_size: usize,
    pub lr: f32,
    pub warmup_ratio: f32,
    pub min_lr_ratio: f32,
    pub weight_decay: f32,
    /// Global gradient-norm bound (0: no clipping).
    pub grad_clip: f32,
    pub max_len: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RlSection {
    pub steps: usize,
    /// Prompts per step (B).
    pub batch_size: usize,
    /// Responses per prompt (G).
    pub group_size: usize,
    pub lr: f32,
    pub weight_decay: f32,
    /// Global gradient-norm bound (0: no clipping).
    pub grad_clip: f32,
    /// Optimizer steps per rollout batch (PPO epochs x mini-batches); MMR1 uses 1.
    pub ppo_epochs: usize,
    pub mini_batches: usize,
    /// Tokens per forward/backward micro-batch (memory bound; never changes the result).
    pub micro_batch_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub max_prompt_len: usize,
    pub max_new_tokens: usize,
    /// KV-cache slots of the rollouts: responses decoded at once, a finished one's slot taken
    /// by the next waiting response (continuous batching). 0: one per response while their
    /// KV cache fits 8 GiB, else as many as fit. Changes speed and memory, not the responses.
    pub rollout_slots: usize,
    pub clip_eps_low: f32,
    pub clip_eps_high: f32,
    /// Dual-clip constant for negative advantages (0: off; verl's vanilla loss uses 3).
    pub dual_clip: f32,
    /// TRL `delta`: cap of the unclipped ratio, two-sided clipping (0: off; TRL recommends a
    /// value above 1 + clip_eps_high).
    pub delta: f32,
    /// Policy loss (verl `loss_mode`): vanilla (ppo, grpo), gspo, gpg, clip_cov, kl_cov,
    /// geo_mean (gmpo), cispo, sapo.
    pub policy_loss: PolicyLoss,
    /// KL penalty to the starting policy (0: off, and no reference model is kept).
    pub kl_coef: f32,
    /// verl `kl_loss_type`: k1 (kl), abs, k2 (mse), k3 (low_var_kl), k1+, abs+, k3+.
    pub kl_estimator: KlEstimator,
    /// TRL `use_bias_correction_kl`: weight the KL term by the importance ratio.
    pub use_bias_correction_kl: bool,
    pub entropy_coef: f32,
    /// verl `loss_agg_mode`: token-mean, token-sum, seq-mean-token-sum, seq-mean-token-mean,
    /// seq-mean-token-sum-norm; TRL `loss_type` names dapo, bnpo, grpo, dr_grpo also work.
    pub loss_agg: Aggregation,
    /// verl `adv_estimator`: grpo, rloo, reinforce_plus_plus_baseline, gpg.
    pub adv_estimator: AdvEstimator,
    /// false = Dr. GRPO (no std normalization of advantages; verl `norm_adv_by_std_in_grpo`).
    pub norm_adv_by_std: bool,
    /// TRL `scale_rewards`: group, batch or none (none = Dr. GRPO).
    pub scale_rewards: ScaleRewards,
    /// Whose code to match at rounding level: mmr1 (MMR1's released code), verl (0.9.1), trl
    /// (1.16). Picks clamps and denominators; every other loss setting is the keys here.
    pub convention: Convention,
    /// SAPO gate temperatures (verl `tau_pos`/`tau_neg`, TRL `sapo_temperature_pos/neg`).
    pub tau_pos: f32,
    pub tau_neg: f32,
    /// Clip-Cov: fraction of tokens detached, covariance window (verl defaults).
    pub clip_cov_ratio: f32,
    pub clip_cov_lb: f32,
    pub clip_cov_ub: f32,
    /// KL-Cov: fraction of tokens penalised and the coefficient of |log ratio|.
    pub kl_cov_ratio: f32,
    pub ppo_kl_coef: f32,
    /// TRL `top_entropy_quantile`: train the policy term on this top fraction of tokens by
    /// entropy only (1: all tokens).
    pub top_entropy_quantile: f32,
    /// DAPO overlong reward shaping: penalty ramp length in tokens before max_new_tokens
    /// (0: off) and its size (verl `overlong_buffer.len` / `penalty_factor`).
    pub overlong_buffer_len: usize,
    pub overlong_penalty_factor: f32,
    /// DAPO-style: drop groups whose accuracy is all 0 or all 1 and refill the batch.
    pub dynamic_filter: bool,
    /// Compute the old log-probs by a forward pass of their own even when the update is
    /// on-policy (one PPO epoch of one mini-batch), where the update's forward gives the same
    /// bits and the pass is skipped (as TRL does at num_iterations 1); the first-epoch ratio
    /// deviation then checks that identity (`first_epoch_max_ratio_dev`, 0 when it holds).
    pub old_logprob_pass: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VasSection {
    pub enabled: bool,
    /// Fraction of each batch drawn by VPS weight; the rest is uniform.
    pub lambda: f32,
    /// Refresh every item's VPS every this many steps.
    pub t_update: usize,
    pub alpha: f32,
    pub beta: f32,
    /// Rollouts per item when scoring.
    pub score_rollouts: usize,
    /// Score every item with the starting policy before the first step (Algorithm 1, line 1).
    /// Off: items start at the unscored prior and are scored from training rollouts.
    pub initial_scoring: bool,
    /// At each refresh, also score the items no training rollout has reached yet.
    pub score_unseen: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RewardSection {
    pub accuracy_weight: f32,
    pub format_weight: f32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSection {
    /// Also evaluate every this many steps of each phase, SFT and RL (0: only before and
    /// after each phase). Logged to metrics.jsonl with label "periodic" and plotted.
    pub every: usize,
    /// Items evaluated (0: all).
    pub max_items: usize,
    /// 0 = greedy.
    pub temperature: f32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            seed: 1,
            model: ModelSection {
                dir: PathBuf::new(),
                device: DeviceChoice::Auto,
                precision: PrecisionChoice::Auto,
                recompute: false,
                freeze_vision: true,
            },
            data: DataSection {
                sft: PathBuf::new(),
                rl: PathBuf::new(),
                eval: PathBuf::new(),
                bad_lines: BadLines::Stop,
                prompt_style: PromptStyle::Mmr1,
            },
            output: OutputSection {
                dir: PathBuf::from("runs/mmr1"),
                checkpoint_every: 50,
                keep_checkpoints: 2,
                save_dtype: SaveDtype::Bf16,
            },
            // MMR1 cold start (lr 1e-5, cosine, warmup 0.1, weight decay 0, batch 32): the
            // defaults of `SftConfig`, their one home.
            sft: SftSection::from(&SftConfig::default()),
            // MMR1 GRPO: 512 prompts x 8, lr 1e-6, wd 0.01, clip 0.2/0.2, k3 KL 0.01,
            // temperature 0.6, token-mean, one optimizer step per rollout batch.
            rl: RlSection {
                steps: 200,
                batch_size: 512,
                group_size: 8,
                lr: 1e-6,
                weight_decay: 0.01,
                grad_clip: 1.0,
                ppo_epochs: 1,
                mini_batches: 1,
                micro_batch_tokens: 16384,
                temperature: 0.6,
                top_p: 1.0,
                top_k: 0,
                max_prompt_len: 2048,
                max_new_tokens: 4096,
                rollout_slots: 0,
                clip_eps_low: 0.2,
                clip_eps_high: 0.2,
                dual_clip: 0.0,
                delta: 0.0,
                policy_loss: PolicyLoss::Vanilla,
                kl_coef: 0.01,
                kl_estimator: KlEstimator::K3,
                use_bias_correction_kl: false,
                entropy_coef: 0.0,
                loss_agg: Aggregation::TokenMean,
                adv_estimator: AdvEstimator::Grpo,
                norm_adv_by_std: true,
                scale_rewards: ScaleRewards::Group,
                convention: Convention::Mmr1,
                tau_pos: 1.0,
                tau_neg: 1.05,
                clip_cov_ratio: 0.0002,
                clip_cov_lb: 1.0,
                clip_cov_ub: 5.0,
                kl_cov_ratio: 0.0002,
                ppo_kl_coef: 0.1,
                top_entropy_quantile: 1.0,
                overlong_buffer_len: 0,
                overlong_penalty_factor: 1.0,
                dynamic_filter: false,
                old_logprob_pass: false,
            },
            // VPS = 0.8 OVS + 0.2 TDS, lambda 0.5, T_update 14 (ablation best), N = 8.
            vas: VasSection {
                enabled: true,
                lambda: 0.5,
                t_update: 14,
                alpha: crate::rl::vas::PAPER_ALPHA,
                beta: crate::rl::vas::PAPER_BETA,
                score_rollouts: 8,
                initial_scoring: true,
                score_unseen: false,
            },
            reward: RewardSection { accuracy_weight: 1.0, format_weight: 1.0 },
            eval: EvalSection { every: 0, max_items: 0, temperature: 0.0 },
            dist: DistSection { zero: 0, grad_buckets: true, collective: Default::default() },
        }
    }
}

impl From<&SftConfig> for SftSection {
    fn from(d: &SftConfig) -> Self {
        SftSection {
            epochs: d.epochs,
            batch_size: d.batch_size,
            lr: d.lr,
            warmup_ratio: d.warmup_ratio as f32,
            min_lr_ratio: if d.lr > 0.0 { d.min_lr / d.lr } else { 0.0 },
            weight_decay: d.adamw.weight_decay,
            grad_clip: d.adamw.max_grad_norm.unwrap_or(0.0),
            max_len: d.max_len,
        }
    }
}

// Each section's default is its part of `TrainConfig::default()`, so a TOML file may omit
// any key or section.
macro_rules! section_default {
    ($($ty:ident => $field:ident),*) => {$(
        impl Default for $ty {
            fn default() -> Self {
                TrainConfig::default().$field
            }
        }
    )*};
}
section_default!(ModelSection => model, DataSection => data, OutputSection => output, SftSection => sft,
    RlSection => rl, VasSection => vas, RewardSection => reward, EvalSection => eval,
    DistSection => dist);

/// One TOML value as written in a config file. Every float of the configuration is an f32, so
/// a float is printed through the f32's shortest round-trip form: 1e-5, 0.6, 0.2.
fn scalar(v: &toml::Value) -> String {
    match v {
        toml::Value::Float(x) if (*x as f32) as f64 == *x && x.is_finite() => {
            let f = *x as f32;
            let a = f.abs();
            if a != 0.0 && !(1e-3..1e6).contains(&a) {
                format!("{f:e}")
            } else {
                let s = format!("{f}");
                if s.contains(['.', 'e']) {
                    s
                } else {
                    s + ".0"
                }
            }
        }
        other => other.to_string(),
    }
}

/// Keys a resumed run may change: where it runs, how often it saves and evaluates, how long RL
/// goes on. Everything else is fixed by the checkpoints.
pub const RESUME_MAY_CHANGE: &[&str] = &[
    "model.device",
    "model.precision",
    "model.recompute",
    "output.checkpoint_every",
    "output.keep_checkpoints",
    "output.save_dtype",
    "eval.every",
    "eval.max_items",
    "eval.temperature",
    "rl.steps",
    "rl.rollout_slots",
    "dist.zero",
    "dist.grad_buckets",
    "dist.collective",
];

/// Every `section.key` (or top-level key) with its value.
fn flat(c: &TrainConfig) -> Vec<(String, toml::Value)> {
    let doc = toml::Value::try_from(c).expect("config serializes");
    let mut out = Vec::new();
    for (k, v) in doc.as_table().expect("config is a table") {
        match v {
            toml::Value::Table(t) => {
                out.extend(t.iter().map(|(k2, v2)| (format!("{k}.{k2}"), v2.clone())))
            }
            _ => out.push((k.clone(), v.clone())),
        }
    }
    out
}

impl TrainConfig {
    /// The built-in demo: a tiny model, sized to finish in minutes on two CPU cores.
    pub fn demo() -> Self {
        let mut c = TrainConfig::default();
        c.output.dir = PathBuf::from("runs/demo");
        c.output.checkpoint_every = 50;
        c.output.save_dtype = SaveDtype::F32;
        c.sft = SftSection {
            epochs: 3,
            batch_size: 32,
            lr: 3e-3,
            warmup_ratio: 0.1,
            min_lr_ratio: 0.1,
            weight_decay: 0.0,
            grad_clip: 1.0,
            max_len: 128,
        };
        c.rl.steps = 40;
        c.rl.batch_size = 16;
        c.rl.group_size = 8;
        c.rl.lr = 1e-4;
        c.rl.micro_batch_tokens = 4096;
        c.rl.max_prompt_len = 64;
        c.rl.max_new_tokens = 64;
        // Four optimizer steps per rollout batch (PPO mini-batches, as MMR1's verl setup
        // trains): after the first, the policy has moved, so the ratio leaves 1 and the
        // clip fraction measures something.
        c.rl.mini_batches = 4;
        c.rl.temperature = 1.0;
        c.rl.kl_coef = 0.0;
        c.vas.t_update = 10;
        c.data.prompt_style = PromptStyle::Plain;
        c.eval.max_items = 200;
        c
    }

    /// Reads a TOML file; unknown keys are errors naming the key.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let cfg: TrainConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(cfg)
    }

    /// The configuration as TOML, numbers as a person writes them (`lr = 1e-5`, not the f32's
    /// binary expansion `0.000009999999747378752`).
    pub fn to_toml(&self) -> String {
        let doc = toml::Value::try_from(self).expect("config serializes");
        let table = doc.as_table().expect("config is a table");
        let mut out = String::new();
        let mut sections = String::new();
        for (k, v) in table {
            match v {
                toml::Value::Table(t) => {
                    sections.push_str(&format!("\n[{k}]\n"));
                    for (k2, v2) in t {
                        sections.push_str(&format!("{k2} = {}\n", scalar(v2)));
                    }
                }
                _ => out.push_str(&format!("{k} = {}\n", scalar(v))),
            }
        }
        out + &sections
    }

    /// Applies `section.key=value` overrides; the value is parsed as TOML, falling back to a
    /// string (so `--set model.dir=/x` needs no quotes).
    pub fn apply_overrides(&mut self, sets: &[String]) -> Result<()> {
        let mut doc: toml::Value = toml::Value::try_from(&*self)?;
        for s in sets {
            let Some((key, raw)) = s.split_once('=') else {
                bail!("--set {s:?}: expected section.key=value");
            };
            let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(raw.to_string()));
            let (path, leaf) = key.rsplit_once('.').map_or(("", key), |(a, b)| (a, b));
            let mut table = doc.as_table_mut().expect("config is a table");
            for p in path.split('.').filter(|p| !p.is_empty()) {
                table = table.get_mut(p).and_then(|v| v.as_table_mut()).with_context(|| {
                    format!("--set {key}: unknown section {p:?} (see --print-config)")
                })?;
            }
            if !table.contains_key(leaf) {
                bail!("--set {key}: unknown key {leaf:?} (see --print-config)");
            }
            table.insert(leaf.to_string(), value);
            // Checked one at a time, so the error names the key that does not fit.
            doc.clone().try_into::<TrainConfig>().map_err(|e| anyhow::anyhow!("--set {s}: {e}"))?;
        }
        *self = doc.try_into().map_err(|e| anyhow::anyhow!("--set: {e}"))?;
        Ok(())
    }

    /// The configuration a resumed run trains with: `self` is what the run was started with
    /// (its config.toml), `wanted` the same with this invocation's overrides. A key that only
    /// steers what happens from now on may change; any other change is refused, naming the
    /// key, because the checkpoint was built with the old value (an optimizer, a schedule, a
    /// data order) and would quietly go on with it.
    pub fn resumed_with(&self, wanted: TrainConfig) -> Result<TrainConfig> {
        let (old, new) = (flat(self), flat(&wanted));
        let mut refused = Vec::new();
        for (key, v) in &new {
            let before = old.iter().find(|(k, _)| k == key).map(|(_, v)| v);
            if before != Some(v) && !RESUME_MAY_CHANGE.contains(&key.as_str()) {
                let was = before.map_or("unset".into(), scalar);
                refused.push(format!("{key} ({was} -> {})", scalar(v)));
            }
        }
        if !refused.is_empty() {
            bail!(
                "a resumed run keeps the settings its checkpoints were made with; cannot change {}. \
                 A resume may change only {}. To train with the new values, start a fresh run \
                 (--overwrite, or another --out)",
                refused.join(", "),
                RESUME_MAY_CHANGE.join(", ")
            );
        }
        Ok(wanted)
    }

    /// Range checks of every setting, before any work; each message names the key, and NaN
    /// is never valid.
    pub fn validate(&self) -> Result<()> {
        let mut c = Checks::new();
        let o = &self.output;
        c.at_least("output.keep_checkpoints", o.keep_checkpoints as u64, 1);
        c.closed("dist.zero", self.dist.zero as f64, 0.0, 2.0);
        let s = &self.sft;
        c.at_least("sft.batch_size", s.batch_size as u64, 1);
        c.positive("sft.lr", s.lr as f64);
        c.closed_open("sft.warmup_ratio", s.warmup_ratio as f64, 0.0, 1.0);
        c.closed("sft.min_lr_ratio", s.min_lr_ratio as f64, 0.0, 1.0);
        c.non_negative("sft.weight_decay", s.weight_decay as f64);
        c.non_negative("sft.grad_clip", s.grad_clip as f64);
        c.at_least("sft.max_len", s.max_len as u64, 2);
        let r = &self.rl;
        c.at_least("rl.batch_size", r.batch_size as u64, 1);
        c.require(
            r.group_size >= 2,
            format!(
                "rl.group_size must be >= 2 (got {}): GRPO needs a group to compare",
                r.group_size
            ),
        );
        c.positive("rl.lr", r.lr as f64);
        c.non_negative("rl.weight_decay", r.weight_decay as f64);
        c.non_negative("rl.grad_clip", r.grad_clip as f64);
        c.at_least("rl.ppo_epochs", r.ppo_epochs as u64, 1);
        c.at_least("rl.mini_batches", r.mini_batches as u64, 1);
        c.require(
            r.mini_batches <= r.batch_size.max(1),
            format!(
                "rl.mini_batches ({}) must not exceed rl.batch_size ({})",
                r.mini_batches, r.batch_size
            ),
        );
        c.at_least("rl.micro_batch_tokens", r.micro_batch_tokens as u64, 1);
        c.require(
            r.temperature > 0.0 && r.temperature.is_finite(),
            format!(
                "rl.temperature must be a finite number > 0 for sampling (got {})",
                r.temperature
            ),
        );
        c.open_closed("rl.top_p", r.top_p as f64, 0.0, 1.0);
        c.at_least("rl.max_prompt_len", r.max_prompt_len as u64, 1);
        c.at_least("rl.max_new_tokens", r.max_new_tokens as u64, 1);
        let responses = r.batch_size.saturating_mul(r.group_size);
        c.require(
            r.rollout_slots <= responses.max(1),
            format!(
                "rl.rollout_slots ({}) exceeds the responses of a step (rl.batch_size x rl.group_size = {responses}); 0 picks the slot count from the KV cache's memory",
                r.rollout_slots
            ),
        );
        c.open("rl.clip_eps_low", r.clip_eps_low as f64, 0.0, 1.0);
        c.positive("rl.clip_eps_high", r.clip_eps_high as f64);
        c.require(
            r.dual_clip == 0.0 || (r.dual_clip > 1.0 && r.dual_clip.is_finite()),
            format!("rl.dual_clip must be 0 (off) or a finite number > 1 (got {})", r.dual_clip),
        );
        c.non_negative("rl.kl_coef", r.kl_coef as f64);
        c.non_negative("rl.entropy_coef", r.entropy_coef as f64);
        c.non_negative("rl.delta", r.delta as f64);
        c.positive("rl.tau_pos", r.tau_pos as f64);
        c.positive("rl.tau_neg", r.tau_neg as f64);
        c.positive("rl.clip_cov_ratio", r.clip_cov_ratio as f64);
        c.positive("rl.kl_cov_ratio", r.kl_cov_ratio as f64);
        c.non_negative("rl.ppo_kl_coef", r.ppo_kl_coef as f64);
        c.require(
            r.clip_cov_lb < r.clip_cov_ub,
            format!(
                "rl.clip_cov_lb must be < rl.clip_cov_ub (got {} >= {})",
                r.clip_cov_lb, r.clip_cov_ub
            ),
        );
        c.open_closed("rl.top_entropy_quantile", r.top_entropy_quantile as f64, 0.0, 1.0);
        c.non_negative("rl.overlong_penalty_factor", r.overlong_penalty_factor as f64);
        c.require(
            r.overlong_buffer_len < r.max_new_tokens,
            format!(
                "rl.overlong_buffer_len must be < rl.max_new_tokens (got {} >= {})",
                r.overlong_buffer_len, r.max_new_tokens
            ),
        );
        let v = &self.vas;
        c.closed("vas.lambda", v.lambda as f64, 0.0, 1.0);
        c.at_least("vas.t_update", v.t_update as u64, 1);
        c.non_negative("vas.alpha", v.alpha as f64);
        c.non_negative("vas.beta", v.beta as f64);
        c.require(
            v.alpha + v.beta > 0.0,
            format!("vas.alpha and vas.beta must not both be 0 (got {}, {})", v.alpha, v.beta),
        );
        c.at_least("vas.score_rollouts", v.score_rollouts as u64, 2);
        let w = &self.reward;
        c.non_negative("reward.accuracy_weight", w.accuracy_weight as f64);
        c.non_negative("reward.format_weight", w.format_weight as f64);
        c.non_negative("eval.temperature", self.eval.temperature as f64);
        c.finish("configuration")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::launch::CollectiveChoice;

    #[test]
    fn defaults_round_trip_through_toml_and_validate() {
        for c in [TrainConfig::default(), TrainConfig::demo()] {
            c.validate().unwrap();
            let back: TrainConfig = toml::from_str(&c.to_toml()).unwrap();
            assert_eq!(back, c);
        }
    }

    #[test]
    fn print_config_writes_numbers_and_names_as_a_person_would() {
        let t = TrainConfig::default().to_toml();
        for line in [
            "lr = 1e-5",
            "lr = 1e-6",
            "temperature = 0.6",
            "alpha = 0.8",
            "beta = 0.2",
            "warmup_ratio = 0.1",
            "save_dtype = \"bf16\"",
            "device = \"auto\"",
            "grad_clip = 1.0",
            "batch_size = 512",
        ] {
            assert!(t.lines().any(|l| l == line), "{line:?} not in:\n{t}");
        }
        // Old files with the variant names still load.
        let c: TrainConfig = toml::from_str("[output]\nsave_dtype = \"Bf16\"\n").unwrap();
        assert_eq!(c.output.save_dtype, SaveDtype::Bf16);
    }

    #[test]
    fn every_numeric_setting_is_range_checked_by_name() {
        // (key, bad value): each alone must fail naming the key; NaN is never valid.
        let cases: &[(&str, &str)] = &[
            ("sft.grad_clip", "-1"),
            ("sft.min_lr_ratio", "2"),
            ("sft.lr", "nan"),
            ("sft.warmup_ratio", "1"),
            ("sft.weight_decay", "-0.1"),
            ("sft.batch_size", "0"),
            ("sft.max_len", "1"),
            ("rl.grad_clip", "-1"),
            ("rl.grad_clip", "nan"),
            ("rl.lr", "inf"),
            ("rl.weight_decay", "nan"),
            ("rl.temperature", "nan"),
            ("rl.top_p", "nan"),
            ("rl.clip_eps_low", "nan"),
            ("rl.clip_eps_high", "inf"),
            ("rl.dual_clip", "nan"),
            ("rl.kl_coef", "nan"),
            ("rl.entropy_coef", "-1"),
            ("rl.mini_batches", "0"),
            ("rl.max_prompt_len", "0"),
            ("rl.rollout_slots", "4097"),
            ("vas.lambda", "nan"),
            ("vas.alpha", "nan"),
            ("vas.beta", "-1"),
            ("reward.accuracy_weight", "nan"),
            ("reward.format_weight", "-1"),
            ("eval.temperature", "nan"),
            ("output.keep_checkpoints", "0"),
            ("dist.zero", "3"),
        ];
        for (key, bad) in cases {
            let mut c = TrainConfig::default();
            c.apply_overrides(&[format!("{key}={bad}")]).unwrap();
            let e = c.validate().expect_err(&format!("{key}={bad} must be refused")).to_string();
            assert!(e.contains(key), "{key}={bad}: {e}");
        }
        // 0 turns clipping off; it is not an error.
        let mut c = TrainConfig::default();
        c.apply_overrides(&["rl.grad_clip=0".into(), "sft.grad_clip=0".into()]).unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn dist_collective_takes_auto_mpi_or_nccl_and_names_the_key_otherwise() {
        let c = TrainConfig::default();
        assert_eq!(c.dist.collective, CollectiveChoice::Auto);
        let toml = c.to_toml();
        assert!(toml.contains("[dist]") && toml.contains("collective = \"auto\""), "{toml}");
        for (v, want) in [("nccl", CollectiveChoice::Nccl), ("\"mpi\"", CollectiveChoice::Mpi)] {
            let mut c = TrainConfig::default();
            c.apply_overrides(&[format!("dist.collective={v}")]).unwrap();
            assert_eq!(c.dist.collective, want);
            // What --print-config writes reads back.
            let back: TrainConfig = toml::from_str(&c.to_toml()).unwrap();
            assert_eq!(back.dist.collective, want);
        }
        for bad in ["gloo", "NCCL", "1"] {
            let mut c = TrainConfig::default();
            let e = c.apply_overrides(&[format!("dist.collective={bad}")]).unwrap_err().to_string();
            assert!(e.contains("dist.collective"), "{bad}: {e}");
            // A string names the accepted values (a number is refused as the wrong type).
            assert!(bad == "1" || e.contains("use auto"), "{bad}: {e}");
        }
        // Where the collective runs may change on a resume: the checkpoints do not depend on it.
        let saved = TrainConfig::demo();
        let mut wanted = saved.clone();
        wanted.apply_overrides(&["dist.collective=mpi".into()]).unwrap();
        saved.resumed_with(wanted).unwrap();
    }

    #[test]
    fn a_resume_applies_forward_looking_keys_and_refuses_the_rest_by_name() {
        let saved = TrainConfig::demo();
        let mut wanted = saved.clone();
        wanted
            .apply_overrides(&["eval.every=5".into(), "rl.steps=80".into(), "dist.zero=2".into()])
            .unwrap();
        let got = saved.resumed_with(wanted).unwrap();
        // The checkpoints are consolidated: a resumed run may shard its optimizer otherwise.
        assert_eq!((got.eval.every, got.rl.steps, got.dist.zero), (5, 80, 2));
        let mut wanted = saved.clone();
        wanted.apply_overrides(&["sft.lr=1e-3".into(), "vas.lambda=1".into()]).unwrap();
        let e = saved.resumed_with(wanted).unwrap_err().to_string();
        assert!(e.contains("sft.lr (0.003 -> 0.001)") && e.contains("vas.lambda"), "{e}");
    }

    #[test]
    fn overrides_and_errors_name_the_key() {
        let mut c = TrainConfig::default();
        c.apply_overrides(&[
            "rl.group_size=4".into(),
            "model.dir=/tmp/m".into(),
            "vas.lambda=0.8".into(),
        ])
        .unwrap();
        assert_eq!(
            (c.rl.group_size, c.model.dir.to_str().unwrap(), c.vas.lambda),
            (4, "/tmp/m", 0.8)
        );
        let e = c.apply_overrides(&["rl.grup_size=4".into()]).unwrap_err().to_string();
        assert!(e.contains("grup_size"), "{e}");
        let e = c.apply_overrides(&["rl.group_size=\"x\"".into()]).unwrap_err().to_string();
        assert!(e.contains("group_size") || e.contains("integer"), "{e}");
        let mut bad = TrainConfig::default();
        bad.rl.group_size = 1;
        bad.vas.lambda = 1.5;
        bad.rl.batch_size = 0;
        let e = bad.validate().unwrap_err().to_string();
        assert!(
            e.contains("rl.group_size") && e.contains("vas.lambda") && e.contains("rl.batch_size"),
            "{e}"
        );
        let e = toml::from_str::<TrainConfig>("[rl]\nbogus = 1\n").unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
    }
}
