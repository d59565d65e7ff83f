//! Materializes the built-in demo as an ordinary run: a tiny Qwen2 model made from scratch
//! (config.json, model.safetensors, tokenizer.json), SFT data, RL items and eval items, all
//! written under `OUT/demo/`. The pipeline then runs on those files like on any user's.

use super::config::TrainConfig;
use crate::data::demo::{demo_config, demo_tokenizer, teacher_solution, DemoTask};
use crate::data::jsonl::write_jsonl;
use crate::data::rl_items::RlItem;
use crate::model::init::{init_params, Init};
use crate::model::{ParamLayout, Qwen2};
use anyhow::{Context, Result};
use std::path::Path;

/// Sizes of the demo's data: SFT examples (one epoch = examples / batch steps), RL items,
/// eval items (disjoint seeds).
pub const DEMO_SFT_EXAMPLES: usize = 4800;
pub const DEMO_RL_ITEMS: usize = 256;
pub const DEMO_EVAL_ITEMS: usize = 200;
/// How often the demo's SFT teacher drops a carry (see `teacher_solution`).
pub const DEMO_TEACHER_SLIP: f64 = 0.5;

/// Writes the demo's model and data under `out/demo` and points `cfg` at them.
pub fn materialize_demo(cfg: &mut TrainConfig, out: &Path) -> Result<()> {
    let dir = out.join("demo");
    let model_dir = dir.join("model");
    std::fs::create_dir_all(&model_dir)
        .with_context(|| format!("cannot create {}", model_dir.display()))?;
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
    write_jsonl(&dir.join("sft.jsonl"), &sft)?;
    write_jsonl(&dir.join("rl.jsonl"), &rl)?;
    write_jsonl(&dir.join("eval.jsonl"), &eval)?;
    cfg.model.dir = model_dir;
    cfg.data.sft = dir.join("sft.jsonl");
    cfg.data.rl = dir.join("rl.jsonl");
    cfg.data.eval = dir.join("eval.jsonl");
    Ok(())
}
