//! The visual demo (`mmr1-fast train --demo visual`) as an ordinary run: a tiny Qwen2.5-VL
//! made from scratch, pictures of coloured shapes drawn in code, SFT data from a slipping
//! teacher, RL and eval items, all under `OUT/demo-visual/` (`demo_setup` holds what both
//! demos share). Sizes are measured in docs/visual-demo.md.

use super::config::TrainConfig;
use super::demo_setup::{demo_dirs, write_demo_data};
use crate::data::visual_demo::{
    teacher_solution, visual_demo_config, visual_demo_tokenizer, write_images, VisualItem,
    VisualTask,
};
use crate::model::safetensors_io::SaveDtype;
use crate::model::vl_init::{published_preprocessor_config, write_random_vl_model};
use anyhow::Result;
use std::path::{Path, PathBuf};

/// SFT examples, RL items and eval items (disjoint seeds), one picture each.
pub const VISUAL_SFT_EXAMPLES: usize = 2000;
pub const VISUAL_RL_ITEMS: usize = 256;
pub const VISUAL_EVAL_ITEMS: usize = 400;
/// How often the SFT teacher overlooks a shape of a colour it counts (any count of one or
/// more: the demo task's `slip_from` is 1).
pub const VISUAL_TEACHER_SLIP: f64 = 0.5;

/// The task the demo draws from.
pub fn visual_demo_task() -> VisualTask {
    VisualTask::default()
}

/// The run configuration of the visual demo: the text demo's, resized for its sequences
/// (9 image tokens, prompts of ~60 tokens, solutions of ~35) and its data. SFT runs 5 epochs
/// of 2000 pictures at the text demo's learning rate: with the vision tower frozen (the
/// pipeline's default, `model.freeze_vision`), the decoder reads the colours after ~250 steps
/// (docs/visual-demo.md); with it trained, or at twice the learning rate, it was still blind
/// at 189. RL: 80 steps at 3x the text demo's learning rate (the rollout accuracy levels off
/// after ~60; in the earlier count/compare design the eval did not move at 1e-4 and fell at
/// 6e-4). Eval: 400 items, a standard error of at most 0.025. Measured per seed in
/// docs/visual-demo.md.
pub fn visual_demo_train_config() -> TrainConfig {
    let mut c = TrainConfig::demo();
    c.output.dir = PathBuf::from("runs/demo-visual");
    c.sft.epochs = 5;
    c.sft.max_len = 160;
    c.rl.steps = 80;
    c.rl.lr = 3e-4;
    c.rl.max_prompt_len = 96;
    c.rl.max_new_tokens = 96;
    c.eval.max_items = VISUAL_EVAL_ITEMS;
    c
}

/// Writes the visual demo's model and data under `out/demo-visual` and points `cfg` at them:
/// `model/` (config.json, model.safetensors, tokenizer.json, preprocessor_config.json),
/// `images/*.png`, and `sft.jsonl` (`problem`, `solution`, `images`), `rl.jsonl` and
/// `eval.jsonl` (MMR1 items with `images` relative to the JSONL files).
pub fn materialize_visual_demo(cfg: &mut TrainConfig, out: &Path) -> Result<()> {
    let (dir, model_dir) = demo_dirs(out, "demo-visual")?;
    let tok = visual_demo_tokenizer()?;
    let mcfg = visual_demo_config(&tok)?;
    write_random_vl_model(
        &model_dir,
        &mcfg,
        &published_preprocessor_config(),
        SaveDtype::F32,
        cfg.seed,
        None,
    )?;
    tok.save(&model_dir.join("tokenizer.json"))?;

    let task = visual_demo_task();
    let sft_items = task.items(VISUAL_SFT_EXAMPLES, cfg.seed.wrapping_add(1), "sft-");
    let rl = task.items(VISUAL_RL_ITEMS, cfg.seed.wrapping_add(2), "rl-");
    let eval = task.items(VISUAL_EVAL_ITEMS, cfg.seed.wrapping_add(3), "eval-");
    for items in [&sft_items, &rl, &eval] {
        write_images(items, &dir)?;
    }
    let sft: Vec<serde_json::Value> = sft_items
        .iter()
        .map(|it| {
            serde_json::json!({
                "problem": it.item.problem,
                "solution": teacher_solution(it, VISUAL_TEACHER_SLIP, cfg.seed),
                "images": it.item.images,
            })
        })
        .collect();
    let items = |v: Vec<VisualItem>| v.into_iter().map(|i| i.item).collect::<Vec<_>>();
    write_demo_data(cfg, &dir, model_dir, &sft, &items(rl), &items(eval))
}
