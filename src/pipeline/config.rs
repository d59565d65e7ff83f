//! The configuration of a `train` run: every key with its default, read from TOML, overridden
//! by `--set section.key=value`, validated with messages that name the key.
//!
//! Defaults are the MMR1 paper's where it states one (../shared/MMR1.md, docs/algorithm.md);
//! the built-in demo starts from `TrainConfig::demo()` instead, sized for two CPU cores.

use crate::data::jsonl::BadLines;
use crate::data::prompt::PromptStyle;
use crate::model::safetensors_io::SaveDtype;
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
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// Hugging Face model directory. Empty: build the demo model from scratch.
    pub dir: PathBuf,
    /// auto | cpu | cuda | cuda:N
    pub device: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// Cold-start SFT data (JSONL: messages, conversations, or problem/solution). Empty: no SFT phase.
    pub sft: PathBuf,
    /// RL items (JSONL, MMR1 schema: problem/question, answer, optional id). Empty: no RL phase.
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
    pub clip_eps_low: f32,
    pub clip_eps_high: f32,
    /// Dual-clip constant for negative advantages (0: off).
    pub dual_clip: f32,
    /// KL penalty to the starting policy (0: off, and no reference model is kept).
    pub kl_coef: f32,
    /// "k3" (low_var_kl, MMR1/verl) or "k1".
    pub kl_estimator: String,
    pub entropy_coef: f32,
    /// "token-mean" | "seq-mean-token-mean" | "seq-mean-token-sum-norm"
    pub loss_agg: String,
    /// false = Dr. GRPO (no std normalization of advantages).
    pub norm_adv_by_std: bool,
    /// "verl" | "trl" numerical conventions.
    pub convention: String,
    /// DAPO-style: drop groups whose accuracy is all 0 or all 1 and refill the batch.
    pub dynamic_filter: bool,
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
    /// Evaluate every this many RL steps (0: only before and after).
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
            model: ModelSection { dir: PathBuf::new(), device: "auto".into() },
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
            // MMR1 cold start: lr 1e-5, cosine, warmup 0.1, weight decay 0, batch 32.
            sft: SftSection {
                epochs: 1,
                batch_size: 32,
                lr: 1e-5,
                warmup_ratio: 0.1,
                min_lr_ratio: 0.0,
                weight_decay: 0.0,
                grad_clip: 1.0,
                max_len: 16384,
            },
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
                clip_eps_low: 0.2,
                clip_eps_high: 0.2,
                dual_clip: 0.0,
                kl_coef: 0.01,
                kl_estimator: "k3".into(),
                entropy_coef: 0.0,
                loss_agg: "token-mean".into(),
                norm_adv_by_std: true,
                convention: "verl".into(),
                dynamic_filter: false,
            },
            // VPS = 0.8 OVS + 0.2 TDS, lambda 0.5, T_update 14 (ablation best), N = 8.
            vas: VasSection {
                enabled: true,
                lambda: 0.5,
                t_update: 14,
                alpha: 0.8,
                beta: 0.2,
                score_rollouts: 8,
                initial_scoring: true,
                score_unseen: false,
            },
            reward: RewardSection { accuracy_weight: 1.0, format_weight: 1.0 },
            eval: EvalSection { every: 0, max_items: 0, temperature: 0.0 },
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
    RlSection => rl, VasSection => vas, RewardSection => reward, EvalSection => eval);

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

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
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
        }
        *self = doc.try_into().map_err(|e| anyhow::anyhow!("--set: {e}"))?;
        Ok(())
    }

    /// Range checks; each message names the key.
    pub fn validate(&self) -> Result<()> {
        let r = &self.rl;
        let mut errs = Vec::new();
        let mut check = |ok: bool, msg: String| {
            if !ok {
                errs.push(msg)
            }
        };
        check(
            r.group_size >= 2,
            format!(
                "rl.group_size must be >= 2 (got {}): GRPO needs a group to compare",
                r.group_size
            ),
        );
        check(r.batch_size >= 1, format!("rl.batch_size must be >= 1 (got {})", r.batch_size));
        check(r.lr > 0.0 && r.lr.is_finite(), format!("rl.lr must be positive (got {})", r.lr));
        check(
            r.temperature > 0.0,
            format!("rl.temperature must be > 0 for sampling (got {})", r.temperature),
        );
        check(
            r.top_p > 0.0 && r.top_p <= 1.0,
            format!("rl.top_p must be in (0, 1] (got {})", r.top_p),
        );
        check(r.max_new_tokens >= 1, "rl.max_new_tokens must be >= 1".into());
        check(r.micro_batch_tokens >= 1, "rl.micro_batch_tokens must be >= 1".into());
        check(
            r.ppo_epochs >= 1 && r.mini_batches >= 1,
            "rl.ppo_epochs and rl.mini_batches must be >= 1".into(),
        );
        check(
            r.clip_eps_low > 0.0 && r.clip_eps_low < 1.0,
            format!("rl.clip_eps_low must be in (0, 1) (got {})", r.clip_eps_low),
        );
        check(
            r.clip_eps_high > 0.0,
            format!("rl.clip_eps_high must be > 0 (got {})", r.clip_eps_high),
        );
        check(
            r.dual_clip == 0.0 || r.dual_clip > 1.0,
            format!("rl.dual_clip must be 0 (off) or > 1 (got {})", r.dual_clip),
        );
        check(r.kl_coef >= 0.0, format!("rl.kl_coef must be >= 0 (got {})", r.kl_coef));
        check(
            matches!(r.kl_estimator.as_str(), "k1" | "k3"),
            format!("rl.kl_estimator must be \"k1\" or \"k3\" (got {:?})", r.kl_estimator),
        );
        check(
            matches!(r.loss_agg.as_str(), "token-mean" | "seq-mean-token-mean" | "seq-mean-token-sum-norm"),
            format!("rl.loss_agg must be token-mean, seq-mean-token-mean or seq-mean-token-sum-norm (got {:?})", r.loss_agg),
        );
        check(
            matches!(r.convention.as_str(), "verl" | "trl"),
            format!("rl.convention must be \"verl\" or \"trl\" (got {:?})", r.convention),
        );
        let v = &self.vas;
        check(
            (0.0..=1.0).contains(&v.lambda),
            format!("vas.lambda must be in [0, 1] (got {})", v.lambda),
        );
        check(v.t_update >= 1, "vas.t_update must be >= 1".into());
        check(
            v.alpha >= 0.0 && v.beta >= 0.0 && v.alpha + v.beta > 0.0,
            format!(
                "vas.alpha and vas.beta must be >= 0, not both 0 (got {}, {})",
                v.alpha, v.beta
            ),
        );
        check(
            v.score_rollouts >= 2,
            format!("vas.score_rollouts must be >= 2 (got {})", v.score_rollouts),
        );
        let s = &self.sft;
        check(s.batch_size >= 1, "sft.batch_size must be >= 1".into());
        check(s.lr > 0.0 && s.lr.is_finite(), format!("sft.lr must be positive (got {})", s.lr));
        check(
            (0.0..1.0).contains(&s.warmup_ratio),
            format!("sft.warmup_ratio must be in [0, 1) (got {})", s.warmup_ratio),
        );
        check(s.max_len >= 2, "sft.max_len must be >= 2".into());
        check(self.eval.temperature >= 0.0, "eval.temperature must be >= 0".into());
        check(
            self.model.device.parse::<crate::backend::select::DeviceChoice>().is_ok(),
            format!("model.device must be auto, cpu, cuda or cuda:N (got {:?})", self.model.device),
        );
        if errs.is_empty() {
            Ok(())
        } else {
            bail!("invalid configuration:\n  {}", errs.join("\n  "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml_and_validate() {
        for c in [TrainConfig::default(), TrainConfig::demo()] {
            c.validate().unwrap();
            let back: TrainConfig = toml::from_str(&c.to_toml()).unwrap();
            assert_eq!(back, c);
        }
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
