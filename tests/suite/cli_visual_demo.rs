//! `mmr1-fast train --demo visual --prepare-only` and `init-model --arch qwen2.5-vl-*`: the
//! visual demo's directory is materialized whole (a tiny Qwen2.5-VL that loads, one PNG per
//! item, JSONL that the VL loaders read), and `eval` runs on it. The full `train --demo visual`
//! needs the VL GRPO pipeline and is not run here.

use crate::common;
use common::*;
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::data::jsonl::BadLines;
use mmr1_fast::data::prompt::render_prompt_with_images;
use mmr1_fast::data::rl_items::load_rl_items_with_images;
use mmr1_fast::data::vl_sft_data::load_vl_sft_dataset;
use mmr1_fast::model::vl_forward::VlModel;
use mmr1_fast::model::Qwen2VlConfig;
use mmr1_fast::pipeline::config::TrainConfig;
use mmr1_fast::pipeline::visual_demo_setup::{
    VISUAL_EVAL_ITEMS, VISUAL_RL_ITEMS, VISUAL_SFT_EXAMPLES,
};
use mmr1_fast::tokenizer::Tokenizer;

#[test]
fn prepare_only_materializes_the_visual_demo() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = out.to_str().unwrap();
    let stdout = cli_ok(&["train", "--demo", "visual", "--prepare-only", "--out", o]);
    assert!(stdout.contains("nothing trained"), "{stdout}");

    // config.toml points at what was written.
    let cfg = TrainConfig::from_toml_file(&out.join("config.toml")).unwrap();
    let dir = out.join("demo-visual");
    assert_eq!(cfg.model.dir, dir.join("model"));
    assert_eq!(cfg.data.sft, dir.join("sft.jsonl"));
    assert_eq!(cfg.data.rl, dir.join("rl.jsonl"));
    assert_eq!(cfg.data.eval, dir.join("eval.jsonl"));
    assert!(!out.join("sft").exists() && !out.join("metrics.jsonl").exists(), "nothing trained");

    // One picture per item, every one a decodable 84 x 84 PNG.
    let pngs: Vec<_> =
        std::fs::read_dir(dir.join("images")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(pngs.len(), VISUAL_SFT_EXAMPLES + VISUAL_RL_ITEMS + VISUAL_EVAL_ITEMS);
    for p in pngs.iter().step_by(97) {
        assert_eq!(image::image_dimensions(p).unwrap(), (84, 84), "{}", p.display());
    }

    // The model loads, its tokenizer matches it, and the VL loaders read the data.
    let model_dir = &cfg.model.dir;
    let vl = Qwen2VlConfig::load(model_dir).unwrap();
    let m = VlModel::load(&Cpu, model_dir).unwrap();
    assert_eq!(m.cfg, vl);
    let tok = Tokenizer::from_file(&model_dir.join("tokenizer.json")).unwrap();
    tok.check_matches(model_dir, &vl.text).unwrap();
    let (sft, dropped) =
        load_vl_sft_dataset(&cfg.data.sft, &tok, None, cfg.sft.max_len, model_dir, &vl).unwrap();
    assert_eq!((sft.len(), dropped), (VISUAL_SFT_EXAMPLES, 0), "nothing cut at sft.max_len");
    for ex in &sft {
        assert!(ex.ex.ids.len() < cfg.sft.max_len, "an SFT example is cut at sft.max_len");
        assert_eq!(ex.grids, vec![[1, 6, 6]]);
        let image_tokens = ex.ex.ids.iter().filter(|&&t| t == vl.image_token_id).count();
        assert_eq!(image_tokens, 9, "one token per 28 px cell");
    }
    let rl = load_rl_items_with_images(&cfg.data.rl, BadLines::Stop).unwrap();
    let eval = load_rl_items_with_images(&cfg.data.eval, BadLines::Stop).unwrap();
    assert_eq!((rl.len(), eval.len()), (VISUAL_RL_ITEMS, VISUAL_EVAL_ITEMS));
    for it in rl.iter().chain(&eval) {
        assert_eq!(it.images.len(), 1);
        assert!(std::path::Path::new(&it.images[0]).is_file(), "{:?}", it.images);
        assert!(it.answer.is_some());
    }
    // Every prompt, its image expanded to 9 tokens, fits rl.max_prompt_len with room for
    // rl.max_new_tokens in the model's positions.
    for it in rl.iter().chain(&eval) {
        let p =
            render_prompt_with_images(&tok, &it.problem, None, cfg.data.prompt_style, 1).unwrap();
        let n = tok.encode(&p).unwrap().len() + 8;
        assert!(n <= cfg.rl.max_prompt_len, "{n} prompt tokens: {}", it.problem);
        assert!(n + cfg.rl.max_new_tokens <= vl.text.max_position_embeddings);
    }
    assert!(cfg.rl.batch_size <= rl.len());
    // Items of the three sets are drawn from different seeds.
    let problems = |v: &[mmr1_fast::data::rl_items::RlItem]| {
        v.iter().map(|i| i.images[0].clone()).collect::<std::collections::HashSet<_>>()
    };
    assert!(problems(&rl).is_disjoint(&problems(&eval)));

    // eval runs the VL model on the demo's items (a few, short answers).
    let res = tmp.path().join("eval.jsonl");
    #[rustfmt::skip]
    let stdout = cli_ok(&["eval", "--model", model_dir.to_str().unwrap(), "--data", cfg.data.eval.to_str().unwrap(),
        "--prompt-style", "plain", "--max-items", "3", "--max-new-tokens", "8", "--device", "cpu",
        "--out", res.to_str().unwrap()]);
    assert!(stdout.starts_with("accuracy "), "{stdout}");
    assert_eq!(read_lines(&res).len(), 3);

    // A second fresh prepare into the same directory is refused only when it holds a run's
    // checkpoints; the materialized demo alone is not one, so it is rewritten identically.
    let before = std::fs::read(dir.join("sft.jsonl")).unwrap();
    cli_ok(&["train", "--demo", "visual", "--prepare-only", "--out", o]);
    assert_eq!(std::fs::read(dir.join("sft.jsonl")).unwrap(), before, "reproducible");
}

#[test]
fn text_demo_prepare_only_and_bad_combinations() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = out.to_str().unwrap();
    cli_ok(&["train", "--prepare-only", "--out", o]);
    let cfg = TrainConfig::from_toml_file(&out.join("config.toml")).unwrap();
    assert_eq!(cfg.model.dir, out.join("demo").join("model"));
    assert!(!out.join("demo-visual").exists());

    let err = cli_err(&["train", "--demo", "visual", "--demo-ablation", "--out", o]);
    assert!(err.contains("--demo-ablation runs the text demo"), "{err}");
    let err = cli_err(&["train", "--demo", "pictures"]);
    assert!(err.contains("text") && err.contains("visual"), "{err}");
}

#[test]
fn init_model_writes_a_tiny_qwen25_vl() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny-vl");
    let d = dir.to_str().unwrap();
    let stdout = cli_ok(&["init-model", "--arch", "qwen2.5-vl-tiny", "--out", d, "--dtype", "f32"]);
    assert!(stdout.contains("(qwen2.5-vl-tiny, 2 layers, 0.46M parameters, f32)"), "{stdout}");
    for f in ["config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    let m = VlModel::load(&Cpu, &dir).unwrap();
    assert_eq!(m.cfg.vision.depth, 2);
    // The same shape as the visual demo's model.
    let demo = mmr1_fast::data::visual_demo::visual_demo_config(
        &mmr1_fast::data::visual_demo::visual_demo_tokenizer().unwrap(),
    )
    .unwrap();
    assert_eq!(m.cfg, demo);

    let err = cli_err(&["init-model", "--arch", "qwen2.5-vl-tiny", "--out", d]);
    assert!(err.contains("already holds a model.safetensors"), "{err}");
    let other = tmp.path().join("x");
    let tokf = dir.join("tokenizer.json");
    #[rustfmt::skip]
    let err = cli_err(&["init-model", "--arch", "qwen2.5-vl-tiny", "--out", other.to_str().unwrap(),
        "--tokenizer", tokf.to_str().unwrap()]);
    assert!(err.contains("writes its own"), "{err}");
}
