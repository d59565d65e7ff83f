//! Materializes a built-in demo as an ordinary run: a tiny model made from scratch
//! (config.json, model.safetensors, tokenizer.json), SFT data, RL items and eval items, all
//! written under `OUT/demo/` (text) or `OUT/demo-visual/` (visual). The pipeline then runs on
//! those files like on any user's.

use super::config::TrainConfig;
use super::visual_demo_setup::{materialize_visual_demo, visual_demo_train_config};
use crate::data::demo::{demo_config, demo_tokenizer, teacher_solution, DemoTask};
use crate::data::jsonl::write_jsonl;
use crate::data::rl_items::RlItem;
use crate::model::init::{init_params, Init};
use crate::model::{ParamLayout, Qwen2};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Sizes of the demo's data: SFT examples (one epoch = examples / batch steps), RL items,
/// eval items (disjoint seeds).
pub const DEMO_SFT_EXAMPLES: usize = 4800;
pub const DEMO_RL_ITEMS: usize = 256;
pub const DEMO_EVAL_ITEMS: usize = 200;
/// How often the demo's SFT teacher drops a carry (see `teacher_solution`).
pub const DEMO_TEACHER_SLIP: f64 = 0.5;

/// Which built-in demo a run without a model builds.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum DemoKind {
    /// Sums of single digits, a tiny Qwen2 (`data::demo`).
    #[default]
    Text,
    /// Counting coloured shapes in pictures drawn in code, a tiny Qwen2.5-VL
    /// (`data::visual_demo`).
    Visual,
}

impl DemoKind {
    /// The run configuration the demo is sized for.
    pub fn train_config(self) -> TrainConfig {
        match self {
            DemoKind::Text => TrainConfig::demo(),
            DemoKind::Visual => visual_demo_train_config(),
        }
    }

    /// Writes the demo's model and data under `out` and points `cfg` at them.
    pub fn materialize(self, cfg: &mut TrainConfig, out: &Path) -> Result<()> {
        match self {
            DemoKind::Text => materialize_demo(cfg, out),
            DemoKind::Visual => materialize_visual_demo(cfg, out),
        }
    }
}

/// Creates `out/name/model/`; returns (`out/name`, `out/name/model`).
pub(super) fn demo_dirs(out: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
    let dir = out.join(name);
    let model_dir = dir.join("model");
    std::fs::create_dir_all(&model_dir)
        .with_context(|| format!("cannot create {}", model_dir.display()))?;
    Ok((dir, model_dir))
}

/// Writes a demo's `sft.jsonl`, `rl.jsonl` and `eval.jsonl` into `dir` and points `cfg` at
/// them and at the model in `model_dir`.
pub(super) fn write_demo_data<S: serde::Serialize>(
    cfg: &mut TrainConfig,
    dir: &Path,
    model_dir: PathBuf,
    sft: &[S],
    rl: &[RlItem],
    eval: &[RlItem],
) -> Result<()> {
    write_jsonl(&dir.join("sft.jsonl"), sft)?;
    write_jsonl(&dir.join("rl.jsonl"), rl)?;
    write_jsonl(&dir.join("eval.jsonl"), eval)?;
    cfg.model.dir = model_dir;
    cfg.data.sft = dir.join("sft.jsonl");
    cfg.data.rl = dir.join("rl.jsonl");
    cfg.data.eval = dir.join("eval.jsonl");
    Ok(())
}

/// Writes the text demo's model and data under `out/demo` and points `cfg` at them.
pub fn materialize_demo(cfg: &mut TrainConfig, out: &Path) -> Result<()> {
    let (dir, model_dir) = demo_dirs(out, "demo")?;
    let tok = demo_tokenizer()?;
    tok.save(&model_dir.join("tokenizer.json"))?;
    let mcfg = demo_config(tok.vocab_size());
    let layout = ParamLayout::new(&mcfg);
    let host = init_params(&layout, Init::HuggingFace { std: 0.02 }, cfg.seed);
    let model = Qwen2::from_host(&crate::backend::cpu::Cpu, mcfg, layout, &host);
    model.save_pretrained(
        &crate::backend::cpu::Cpu,
        &model_dir,
        crate::model::safetensors_io::SaveDtype::F32,
    )?;

    let task = DemoTask::default();
    let sft: Vec<serde_json::Value> = task
        .items(DEMO_SFT_EXAMPLES, cfg.seed.wrapping_add(1), "sft-")
        .iter()
        .map(|it| serde_json::json!({"problem": it.problem, "solution": teacher_solution(it, DEMO_TEACHER_SLIP, cfg.seed)}))
        .collect();
    let rl: Vec<RlItem> = task.items(DEMO_RL_ITEMS, cfg.seed.wrapping_add(2), "rl-");
    let eval: Vec<RlItem> = task.items(DEMO_EVAL_ITEMS, cfg.seed.wrapping_add(3), "eval-");
    write_demo_data(cfg, &dir, model_dir, &sft, &rl, &eval)
}
