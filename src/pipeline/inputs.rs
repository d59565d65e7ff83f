//! What a run works from, prepared once before any training: the validated configuration,
//! the locked output directory, the tokenizer, the RL and eval items and their prompts. The
//! phases share it, and it evaluates a model on the eval items.

use super::config::TrainConfig;
use super::demo_setup::DemoKind;
use super::metrics::{EvalLabel, EvalRecord, MetricsLog, Phase, Record};
use super::rl_phase::grpo_settings;
use super::run_dir::{prepare_fresh, RunLock};
use super::run_policy::EvalModel;
use crate::backend::rl_ops::RlOps;
use crate::backend::Backend;
use crate::data::rl_items::{load_rl_items, load_rl_items_with_images, RlItem};
use crate::data::vl_sft_data::image_file_grid;
use crate::fs::write_atomic;
use crate::model::vision_preprocess::PreprocessorConfig;
use crate::model::vl_prompt::is_vl_checkpoint;
use crate::model::{Qwen2, Qwen2Config, Qwen2VlConfig};
use crate::progress::bar;
use crate::rl::evaluate::EvalParams;
use crate::rl::graded::{encode_prompts, stop_ids, stop_ids_of};
use crate::rl::trainer::GrpoSettings;
use crate::rl::vl_rollout::encode_vl_prompt;
use crate::tokenizer::Tokenizer;
use crate::train::checkpoint::complete_checkpoints;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Accuracy and format rate of one evaluation.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct EvalResult {
    pub accuracy: f64,
    pub format: f64,
    pub items: usize,
}

/// How a run meets its output directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// A new run; `overwrite` replaces another run's checkpoints found there.
    Fresh { overwrite: bool },
    /// Continue the run in the directory from its newest complete checkpoint.
    Resume,
}

/// Inputs of a run, loaded once.
pub struct RunInputs {
    pub cfg: TrainConfig,
    pub out: PathBuf,
    pub tok: Tokenizer,
    pub tokenizer_path: PathBuf,
    pub rl_items: Vec<RlItem>,
    pub rl_prompts: Vec<Vec<u32>>,
    pub eval_items: Vec<RlItem>,
    /// The decoder's configuration (of a Qwen2.5-VL checkpoint: its language model's); `None`
    /// for inputs made in code without a model directory.
    pub model_cfg: Option<Qwen2Config>,
    /// `model.dir` is a Qwen2.5-VL checkpoint: items may hold images, the phases train a
    /// `VlModel` (`pipeline::run_policy`).
    pub vl: bool,
    /// The image files of each RL item (resolved paths), in item order; empty lists for a
    /// text run.
    pub rl_images: Arc<Vec<Vec<PathBuf>>>,
    pub start: Start,
    /// This process's rank in a data-parallel run (0 alone: the one that writes the output
    /// directory and evaluates).
    pub rank: usize,
    /// Held for the run's life by rank 0: no second run writes into the same directory.
    _lock: Option<RunLock>,
}

/// Tokenized prompts of `items`; a prompt longer than `rl.max_prompt_len` is an error naming
/// the item.
fn prompts_of(
    model: &Qwen2Config,
    tok: &Tokenizer,
    items: &[RlItem],
    cfg: &TrainConfig,
) -> Result<Vec<Vec<u32>>> {
    let prompts = encode_prompts(model, tok, items, cfg.data.prompt_style, cfg.rl.max_new_tokens)?;
    if let Some((i, p)) = prompts.iter().enumerate().find(|(_, p)| p.len() > cfg.rl.max_prompt_len)
    {
        bail!(
            "item {:?}: prompt has {} tokens, over rl.max_prompt_len {}",
            items[i].id_or(i),
            p.len(),
            cfg.rl.max_prompt_len
        );
    }
    Ok(prompts)
}

/// [`prompts_of`] for a Qwen2.5-VL model: each item's prompt with one image block per image,
/// each placeholder expanded to the image's merged patch count (from the image header by the
/// smart-resize rule of `model_dir`'s `preprocessor_config.json`; the pixels are decoded when
/// a rollout or an update uses them). Errors name the item.
fn vl_prompts_of(
    vcfg: &Qwen2VlConfig,
    model_dir: &Path,
    tok: &Tokenizer,
    items: &[RlItem],
    cfg: &TrainConfig,
) -> Result<Vec<Vec<u32>>> {
    let any_images = items.iter().any(|it| !it.images.is_empty());
    let pc = if any_images { Some(PreprocessorConfig::load(model_dir)?) } else { None };
    let merge = vcfg.vision.spatial_merge_size;
    let limit = vcfg.text.max_position_embeddings;
    let max_new = cfg.rl.max_new_tokens;
    let mut out = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        let id = it.id_or(i);
        let ctx = || format!("item {id:?}");
        let counts: Vec<usize> = match &pc {
            Some(pc) => it
                .images
                .iter()
                .map(|p| image_file_grid(Path::new(p), pc))
                .map(|g| g.map(|g| g.iter().product::<usize>() / (merge * merge)))
                .collect::<Result<_>>()
                .with_context(ctx)?,
            None => vec![],
        };
        let ids = encode_vl_prompt(tok, it, cfg.data.prompt_style, &counts, vcfg.image_token_id)
            .with_context(ctx)?;
        vcfg.text.check_ids(&ids).with_context(ctx)?;
        if ids.len() > cfg.rl.max_prompt_len {
            bail!(
                "item {id:?}: prompt has {} tokens (images expanded), over rl.max_prompt_len {}",
                ids.len(),
                cfg.rl.max_prompt_len
            );
        }
        if ids.len() + max_new > limit {
            bail!(
                "item {id:?}: prompt of {} tokens (images expanded) + {max_new} new tokens exceeds the model's max_position_embeddings {limit}",
                ids.len()
            );
        }
        out.push(ids);
    }
    Ok(out)
}

/// A resume may lengthen RL (`rl.steps`) but not cut it below the steps already taken: the run
/// would stop with more steps done than its config.toml says.
fn refuse_fewer_rl_steps(out: &Path, cfg: &TrainConfig) -> Result<()> {
    if let Some((done, ck)) = complete_checkpoints(&out.join("rl")).pop() {
        if done > cfg.rl.steps as u64 {
            bail!(
                "rl.steps = {} is below the {done} RL steps this run has already taken ({}); a resume can only extend RL (rl.steps >= {done}). To train fewer steps, start a fresh run (--overwrite, or another --out)",
                cfg.rl.steps,
                ck.display()
            );
        }
    }
    Ok(())
}

impl RunInputs {
    /// Validates the config, locks the output directory (and, for a fresh run, checks it
    /// holds no other run), materializes the text demo when no model is given, loads the data,
    /// and writes `OUT/config.toml`: the configuration that runs.
    pub fn prepare(cfg: TrainConfig, start: Start) -> Result<Self> {
        Self::prepare_with_demo(cfg, start, DemoKind::Text)
    }

    /// [`RunInputs::prepare`], materializing `demo` when no model is given.
    pub fn prepare_with_demo(cfg: TrainConfig, start: Start, demo: DemoKind) -> Result<Self> {
        let (cfg, out, lock) = Self::claim(cfg, start, demo)?;
        let inputs = Self::load(cfg, out, start, Some(lock), 0)?;
        write_atomic(&inputs.out.join("config.toml"), inputs.cfg.to_toml().as_bytes())?;
        Ok(inputs)
    }

    /// The first half of [`RunInputs::prepare_with_demo`] alone: the output directory claimed,
    /// the demo materialized when no model is given, and `OUT/config.toml` written, without
    /// reading the data or training (`train --prepare-only`). Returns the configuration
    /// written.
    pub fn materialize_only(cfg: TrainConfig, start: Start, demo: DemoKind) -> Result<TrainConfig> {
        let (cfg, out, _lock) = Self::claim(cfg, start, demo)?;
        write_atomic(&out.join("config.toml"), cfg.to_toml().as_bytes())?;
        Ok(cfg)
    }

    /// Validates the config, creates and locks the output directory (for a fresh run, checks
    /// it holds no other run) and materializes `demo` when `model.dir` is empty.
    fn claim(
        mut cfg: TrainConfig,
        start: Start,
        demo: DemoKind,
    ) -> Result<(TrainConfig, PathBuf, RunLock)> {
        cfg.validate()?;
        let out = cfg.output.dir.clone();
        std::fs::create_dir_all(&out)
            .with_context(|| format!("cannot create output directory {}", out.display()))?;
        // Fail early on an unwritable output directory, not after an hour of training.
        write_atomic(&out.join(".write-test"), b"ok")
            .with_context(|| format!("output directory {} is not writable", out.display()))?;
        let _ = std::fs::remove_file(out.join(".write-test"));
        let lock = RunLock::acquire(&out)?;
        match start {
            Start::Fresh { overwrite } => prepare_fresh(&out, overwrite)?,
            Start::Resume => refuse_fewer_rl_steps(&out, &cfg)?,
        }
        if cfg.model.dir.as_os_str().is_empty() {
            if !cfg.data.rl.as_os_str().is_empty() || !cfg.data.sft.as_os_str().is_empty() {
                bail!("model.dir is empty but data was given: set model.dir to a Hugging Face Qwen2 model directory");
            }
            demo.materialize(&mut cfg, &out)?;
        }
        Ok((cfg, out, lock))
    }

    /// The inputs of rank `rank` > 0 of a data-parallel run, once rank 0 has prepared the
    /// output directory `out`: the configuration rank 0 wrote there (demo model included),
    /// and the same data. Writes nothing; the directory must be one every rank sees.
    pub fn follow(out: &Path, start: Start, rank: usize) -> Result<Self> {
        let p = out.join("config.toml");
        let cfg = TrainConfig::from_toml_file(&p)
            .with_context(|| format!("rank {rank}: the run's configuration {} (written by rank 0; is the output directory on a file system every rank sees?)", p.display()))?;
        Self::load(cfg, out.to_path_buf(), start, None, rank)
    }

    /// Tokenizer, items and prompts of a validated configuration.
    fn load(
        cfg: TrainConfig,
        out: PathBuf,
        start: Start,
        lock: Option<RunLock>,
        rank: usize,
    ) -> Result<Self> {
        let tokenizer_path = cfg.model.dir.join("tokenizer.json");
        let tok = Tokenizer::from_file(&tokenizer_path)?;
        let vl = is_vl_checkpoint(&cfg.model.dir)?;
        if vl {
            crate::rl::vl_policy::refuse_zero(cfg.dist.zero)?;
        }
        if vl && cfg.model.recompute {
            bail!("model.recompute: activation recomputation is not supported for a Qwen2.5-VL model yet ({}); set it to false", cfg.model.dir.display());
        }
        let load = |p: &Path| -> Result<Vec<RlItem>> {
            if p.as_os_str().is_empty() {
                Ok(vec![])
            } else if vl {
                // Every image exists and its header decodes, before any weight is read.
                load_rl_items_with_images(p, cfg.data.bad_lines)
            } else {
                load_rl_items(p, cfg.data.bad_lines)
            }
        };
        let rl_items = load(&cfg.data.rl)?;
        let mut eval_items = load(&cfg.data.eval)?;
        if cfg.eval.max_items > 0 {
            eval_items.truncate(cfg.eval.max_items);
        }
        if !rl_items.is_empty() && cfg.rl.batch_size > rl_items.len() {
            bail!(
                "rl.batch_size {} is larger than the {} RL items in {}",
                cfg.rl.batch_size,
                rl_items.len(),
                cfg.data.rl.display()
            );
        }
        // The model's config bounds ids and prompt lengths; its weights are loaded by the phases.
        let (mcfg, rl_prompts) = if vl {
            let vcfg = Qwen2VlConfig::load(&cfg.model.dir)?;
            tok.check_matches(&tokenizer_path, &vcfg.text)?;
            let rl_prompts = vl_prompts_of(&vcfg, &cfg.model.dir, &tok, &rl_items, &cfg)?;
            vl_prompts_of(&vcfg, &cfg.model.dir, &tok, &eval_items, &cfg)?;
            (vcfg.text, rl_prompts)
        } else {
            let mcfg = Qwen2Config::load(&cfg.model.dir)?;
            tok.check_matches(&tokenizer_path, &mcfg)?;
            let rl_prompts = prompts_of(&mcfg, &tok, &rl_items, &cfg)?;
            prompts_of(&mcfg, &tok, &eval_items, &cfg)?;
            (mcfg, rl_prompts)
        };
        let rl_images = Arc::new(
            rl_items.iter().map(|it| it.images.iter().map(PathBuf::from).collect()).collect(),
        );
        Ok(RunInputs {
            cfg,
            out,
            tok,
            tokenizer_path,
            rl_items,
            rl_prompts,
            eval_items,
            model_cfg: Some(mcfg),
            vl,
            rl_images,
            start,
            rank,
            _lock: lock,
        })
    }

    /// Inputs made in code (tests, embedders): the items and prompts as given, the output
    /// directory `cfg.output.dir` locked for the value's life. Nothing is read or written.
    pub fn from_parts(
        cfg: TrainConfig,
        tok: Tokenizer,
        tokenizer_path: PathBuf,
        rl_items: Vec<RlItem>,
        rl_prompts: Vec<Vec<u32>>,
        eval_items: Vec<RlItem>,
    ) -> Result<Self> {
        cfg.validate()?;
        let out = cfg.output.dir.clone();
        std::fs::create_dir_all(&out)
            .with_context(|| format!("cannot create output directory {}", out.display()))?;
        let lock = RunLock::acquire(&out)?;
        let model_cfg = Qwen2Config::load(&cfg.model.dir).ok();
        let rl_images = Arc::new(vec![vec![]; rl_items.len()]);
        Ok(RunInputs {
            cfg,
            out,
            tok,
            tokenizer_path,
            rl_items,
            rl_prompts,
            eval_items,
            model_cfg,
            vl: false,
            rl_images,
            start: Start::Fresh { overwrite: false },
            rank: 0,
            _lock: Some(lock),
        })
    }

    pub fn settings(&self, model: &Qwen2<impl Backend>) -> GrpoSettings {
        grpo_settings(&self.cfg, stop_ids(model, &self.tok))
    }

    /// The GRPO settings of this run's model (its stop ids from the config; no weights).
    pub fn run_settings(&self) -> Result<GrpoSettings> {
        let Some(mcfg) = &self.model_cfg else {
            bail!("the run's inputs hold no model configuration (model.dir is not set)");
        };
        Ok(grpo_settings(&self.cfg, stop_ids_of(mcfg, &self.tok)))
    }

    /// Accuracy of `model` on the eval items (greedy unless eval.temperature > 0). Rank 0
    /// alone evaluates in a data-parallel run (the others have the same model).
    pub fn evaluate<B: RlOps, P: EvalModel<B>>(
        &self,
        be: &B,
        model: &P,
    ) -> Result<Option<EvalResult>> {
        if self.eval_items.is_empty() || self.rank != 0 {
            return Ok(None);
        }
        let params = EvalParams {
            k: 1,
            temperature: self.cfg.eval.temperature,
            top_p: 1.0,
            max_new_tokens: self.cfg.rl.max_new_tokens,
            prompt_style: self.cfg.data.prompt_style,
            seed: self.cfg.seed ^ 0xe7a1,
            max_items: 0,
            batch_items: 64,
        };
        let pb = bar(self.eval_items.len() as u64, "evaluating");
        let r = model.evaluate(be, &self.tok, &self.eval_items, &params, |done| {
            pb.set_position(done as u64)
        })?;
        pb.finish_and_clear();
        Ok(Some(EvalResult { accuracy: r.accuracy, format: r.format_rate, items: r.items }))
    }

    /// Evaluates `model` at `step` of phase `of`, prints and logs the result.
    pub fn eval_and_log<B: RlOps, P: EvalModel<B>>(
        &self,
        be: &B,
        model: &P,
        log: &mut MetricsLog,
        of: Phase,
        step: u64,
        label: EvalLabel,
    ) -> Result<Option<EvalResult>> {
        let r = self.evaluate(be, model)?;
        if let Some(r) = &r {
            let name = match label {
                EvalLabel::BeforeSft => "before SFT".to_string(),
                EvalLabel::Start => "start".to_string(),
                EvalLabel::AfterSft => "after SFT".to_string(),
                EvalLabel::AfterRl => "after RL".to_string(),
                EvalLabel::Periodic => {
                    format!("{} {step}", if of == Phase::Sft { "sft" } else { "rl" })
                }
            };
            eprintln!(
                "eval {name:>10}: accuracy {:.3}  format {:.3}  ({} items)",
                r.accuracy, r.format, r.items
            );
            log.write(&Record::Eval(EvalRecord {
                of,
                step,
                label,
                accuracy: r.accuracy,
                format: r.format,
                items: r.items,
            }))?;
        }
        Ok(r)
    }

    /// `eval.every` says an evaluation is due after `step` (not after a phase's last step:
    /// the phase's closing evaluation covers it).
    pub fn periodic_eval_due(&self, step: u64, last: u64) -> bool {
        let every = self.cfg.eval.every as u64;
        every > 0 && step.is_multiple_of(every) && step < last && !self.eval_items.is_empty()
    }
}
