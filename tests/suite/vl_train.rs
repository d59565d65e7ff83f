//! `train` (the whole pipeline: cold-start SFT, then GRPO + VAS, evaluations, checkpoints,
//! resume) on a Qwen2.5-VL model with image items: the tiny fixture model
//! (tests/fixtures/tiny-vl) and small images of three sizes made here. A short run writes its
//! metrics and Qwen2.5-VL checkpoints; a frozen vision tower stays bit-identical and a
//! trained one moves in RL; the KL term's reference is the frozen starting policy (KL 0 at
//! step 1, > 0 once the policy moved); a run stopped and resumed ends bit-identical to one
//! that never stopped; the emulated CUDA backend trains as the CPU; a missing or broken
//! image is an error naming the item and the path before any model time (or, with
//! `--bad-lines skip`, a skipped and counted item).

use crate::common;

#[cfg(feature = "emu")]
use common::rel_l2;
use common::{cli_err, fixture, read_lines};
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::backend::rl_ops::RlOps;
use mmr1_fast::backend::select::DeviceChoice;
use mmr1_fast::data::prompt::PromptStyle;
use mmr1_fast::model::safetensors_io::SaveDtype;
use mmr1_fast::model::vl::VlHost;
use mmr1_fast::pipeline::config::TrainConfig;
use mmr1_fast::pipeline::inputs::{RunInputs, Start};
use mmr1_fast::pipeline::run::{run_pipeline, RunReport};
use serde_json::json;
use std::path::{Path, PathBuf};

/// A PNG of `w x h` with a pattern that depends on `seed` (never flat: the tower sees it).
fn write_png(path: &Path, w: u32, h: u32, seed: u32) {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let v = |k: u32| ((x * (3 + k + seed) + y * (5 + 2 * k) + seed * 37) % 256) as u8;
        image::Rgb([v(0), v(1), v(2)])
    });
    img.save(path).unwrap();
}

/// Images of three sizes (4, 6 and 8 merged tokens), RL / eval items naming them (one with
/// two images, one text-only) and SFT conversations whose answers the images tell apart.
fn write_data(dir: &Path) {
    std::fs::create_dir_all(dir.join("img")).unwrap();
    write_png(&dir.join("img/a.png"), 56, 56, 1);
    write_png(&dir.join("img/b.png"), 84, 56, 2);
    write_png(&dir.join("img/c.png"), 56, 112, 3);
    let lines = |name: &str, v: &[serde_json::Value]| {
        let text: Vec<String> = v.iter().map(|l| l.to_string()).collect();
        std::fs::write(dir.join(name), text.join("\n") + "\n").unwrap();
    };
    lines(
        "rl.jsonl",
        &[
            json!({"id": "a", "problem": "<image>How many?", "answer": "3", "image": "img/a.png"}),
            json!({"id": "b", "problem": "<image>How many?", "answer": "5", "images": ["img/b.png"]}),
            json!({"id": "c", "problem": "<image> or <image>?", "answer": "3",
                   "images": ["img/c.png", "img/a.png"]}),
            json!({"id": "d", "problem": "Two plus one?", "answer": "3"}),
        ],
    );
    lines(
        "eval.jsonl",
        &[
            json!({"id": "e1", "problem": "<image>How many?", "answer": "5", "image": "img/b.png"}),
            json!({"id": "e2", "problem": "<image>How many?", "answer": "3", "image": "img/c.png"}),
        ],
    );
    lines(
        "sft.jsonl",
        &[
            json!({"conversations": [{"from": "human", "value": "<image>How many?"},
                   {"from": "gpt", "value": "3"}], "images": ["img/a.png"]}),
            json!({"conversations": [{"from": "human", "value": "<image>How many?"},
                   {"from": "gpt", "value": "5"}], "images": ["img/b.png"]}),
            json!({"conversations": [{"from": "human", "value": "<image>How many?"},
                   {"from": "gpt", "value": "3"}], "images": ["img/c.png"]}),
            json!({"problem": "Two plus one?", "solution": "3"}),
        ],
    );
}

/// 2 SFT steps, then `rl_steps` GRPO steps of 2 prompts x 4 responses with KL on, VAS with
/// initial scoring and a refresh every step, evaluations every step, a checkpoint every step.
fn config(data: &Path, out: &Path, rl_steps: usize) -> TrainConfig {
    let mut c = TrainConfig { seed: 7, ..Default::default() };
    c.model.dir = fixture("tiny-vl");
    c.model.device = DeviceChoice::Cpu;
    c.data.sft = data.join("sft.jsonl");
    c.data.rl = data.join("rl.jsonl");
    c.data.eval = data.join("eval.jsonl");
    c.data.prompt_style = PromptStyle::Plain;
    c.output.dir = out.to_path_buf();
    c.output.checkpoint_every = 1;
    c.output.keep_checkpoints = 100;
    c.output.save_dtype = SaveDtype::F32;
    c.sft.epochs = 1;
    c.sft.batch_size = 2;
    c.sft.lr = 2e-2;
    c.sft.warmup_ratio = 0.0;
    c.sft.max_len = 256;
    c.rl.steps = rl_steps;
    c.rl.batch_size = 2;
    c.rl.group_size = 4;
    c.rl.lr = 2e-2;
    c.rl.max_new_tokens = 3;
    c.rl.max_prompt_len = 256;
    c.rl.micro_batch_tokens = 64;
    c.rl.temperature = 1.0;
    c.rl.kl_coef = 0.05;
    c.vas.t_update = 1;
    c.vas.score_rollouts = 2;
    c.eval.every = 1;
    c
}

fn run(c: TrainConfig, start: Start) -> RunReport {
    run_on(&Cpu, c, start)
}

fn run_on<B: RlOps>(be: &B, c: TrainConfig, start: Start) -> RunReport {
    let inputs = RunInputs::prepare(c, start).unwrap();
    run_pipeline(be, &inputs).unwrap()
}

/// Every tensor of a VL checkpoint directory, `visual.*` apart from the decoder's.
fn tensors(dir: &Path) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let h = VlHost::load(dir).unwrap();
    (h.text, h.vision)
}

fn rl_records(out: &Path) -> Vec<serde_json::Value> {
    read_lines(&out.join("metrics.jsonl"))
        .into_iter()
        .filter(|v| v["phase"] == "rl" && v.get("event").is_none())
        .collect()
}

fn latest(phase_dir: &Path) -> PathBuf {
    phase_dir.join(std::fs::read_to_string(phase_dir.join("latest")).unwrap().trim())
}

#[test]
fn sft_then_grpo_with_images_frozen_tower_and_reference_kl() {
    let d = tempfile::tempdir().unwrap();
    write_data(d.path());
    let out = d.path().join("out");
    let report = run(config(d.path(), &out, 3), Start::Fresh { overwrite: false });
    assert!(report.before_sft.is_some() && report.after_sft.is_some() && report.after_rl.is_some());
    assert_eq!(report.rl_steps.len(), 3);

    let lines = read_lines(&out.join("metrics.jsonl"));
    let count = |f: &dyn Fn(&serde_json::Value) -> bool| lines.iter().filter(|v| f(v)).count();
    assert_eq!(count(&|v| v["phase"] == "sft"), 2, "two SFT steps");
    assert_eq!(count(&|v| v["event"] == "initial_scoring"), 1, "VAS scored the items first");
    // before SFT, periodic after SFT step 1, after SFT, periodic after RL steps 1 and 2, after RL.
    assert_eq!(count(&|v| v["phase"] == "eval"), 6);
    let rl = rl_records(&out);
    assert_eq!(rl.len(), 3);
    let kl: Vec<f64> = rl.iter().map(|r| r["kl"].as_f64().unwrap()).collect();
    let std: Vec<f64> = rl.iter().map(|r| r["reward_std"].as_f64().unwrap()).collect();
    println!("kl per step {kl:?}, reward std {std:?}");
    // The reference is the RL starting point (the SFT result): identical at step 1 ...
    assert_eq!(kl[0], 0.0, "KL against the reference at step 1 must be exactly 0");
    // ... and apart once a step with reward variance moved the policy.
    assert!(std[..2].iter().any(|&s| s > 0.0), "no group had reward variance: {std:?}");
    assert!(kl[2] > 0.0, "KL after the policy moved must be positive: {kl:?}");

    // Checkpoints are Qwen2.5-VL directories with the processor and tokenizer files.
    let sft_ck = latest(&out.join("sft"));
    let rl_ck = latest(&out.join("rl"));
    assert!(rl_ck.ends_with("checkpoint-3"), "{}", rl_ck.display());
    for f in ["config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"] {
        assert!(rl_ck.join(f).is_file(), "{} lacks {f}", rl_ck.display());
    }
    let (text0, vision0) = tensors(&fixture("tiny-vl"));
    let (text_sft, vision_sft) = tensors(&sft_ck);
    let (text_rl, vision_rl) = tensors(&rl_ck);
    // Frozen (the default): every visual.* tensor bit-identical, through both phases.
    assert_eq!(vision_sft, vision0, "the frozen tower moved in SFT");
    assert_eq!(vision_rl, vision0, "the frozen tower moved in RL");
    assert_ne!(text_sft, text0, "SFT did not train the decoder");
    assert_ne!(text_rl, text_sft, "RL did not train the decoder");
    // No optimizer state for a frozen tower.
    let opt = std::fs::read(rl_ck.join("optimizer.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&opt).unwrap();
    assert!(st.names().iter().all(|n| !n.contains("visual.")), "optimizer state for the tower");
}

#[test]
fn a_trained_tower_moves_in_rl() {
    let d = tempfile::tempdir().unwrap();
    write_data(d.path());
    let out = d.path().join("out");
    let mut c = config(d.path(), &out, 2);
    c.model.freeze_vision = false;
    c.eval.every = 0;
    c.data.eval = PathBuf::new();
    run(c, Start::Fresh { overwrite: false });
    let (_, vision0) = tensors(&fixture("tiny-vl"));
    let (_, vision_sft) = tensors(&latest(&out.join("sft")));
    let (_, vision_rl) = tensors(&latest(&out.join("rl")));
    let moved = |a: &[Vec<f32>], b: &[Vec<f32>]| a.iter().zip(b).filter(|(x, y)| x != y).count();
    let n = vision0.len();
    assert_eq!(moved(&vision_sft, &vision0), n, "every tower tensor moves in SFT");
    let in_rl = moved(&vision_rl, &vision_sft);
    println!("tower tensors moved by RL: {in_rl} of {n}");
    assert_eq!(in_rl, n, "every tower tensor moves in RL when trained");
    let opt = std::fs::read(latest(&out.join("rl")).join("optimizer.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&opt).unwrap();
    assert!(st.names().iter().any(|n| n.starts_with("exp_avg.visual.")));
}

#[test]
fn a_run_stopped_and_resumed_ends_bit_identical() {
    let d = tempfile::tempdir().unwrap();
    write_data(d.path());
    let (whole, parts) = (d.path().join("whole"), d.path().join("parts"));
    let mut c = config(d.path(), &whole, 3);
    c.eval.every = 0;
    // The tower trained too, so the resumed optimizer state covers it.
    c.model.freeze_vision = false;
    run(c.clone(), Start::Fresh { overwrite: false });
    // Stopped after RL step 1, then continued (a resume may lengthen rl.steps).
    let mut first = c.clone();
    first.output.dir = parts.clone();
    first.rl.steps = 1;
    run(first, Start::Fresh { overwrite: false });
    let mut rest = c;
    rest.output.dir = parts.clone();
    run(rest, Start::Resume);
    let a = std::fs::read(whole.join("rl/checkpoint-3/model.safetensors")).unwrap();
    let b = std::fs::read(parts.join("rl/checkpoint-3/model.safetensors")).unwrap();
    assert!(a == b, "the resumed run's weights differ from the uninterrupted run's");
    let a = std::fs::read(whole.join("rl/checkpoint-3/optimizer.safetensors")).unwrap();
    let b = std::fs::read(parts.join("rl/checkpoint-3/optimizer.safetensors")).unwrap();
    assert!(a == b, "the resumed run's optimizer state differs");
    let steps: Vec<u64> = rl_records(&parts).iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [1, 2, 3], "every RL step logged once");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

/// Killed after SFT step 1 (its later checkpoints and the RL phase never written), with the
/// tower frozen and bf16 model files (the f32 masters come from the optimizer file): the
/// resumed run ends byte-identical to the uninterrupted one, reference policy included (it
/// is the SFT result the resumed run makes itself).
#[test]
fn a_run_killed_in_sft_resumes_bit_identical_with_bf16_files() {
    let d = tempfile::tempdir().unwrap();
    write_data(d.path());
    let (whole, parts) = (d.path().join("whole"), d.path().join("parts"));
    let mut c = config(d.path(), &whole, 2);
    c.eval.every = 0;
    c.output.save_dtype = SaveDtype::Bf16;
    run(c.clone(), Start::Fresh { overwrite: false });
    copy_dir(&whole, &parts);
    std::fs::remove_dir_all(parts.join("rl")).unwrap();
    std::fs::remove_dir_all(parts.join("sft/checkpoint-2")).unwrap();
    std::fs::write(parts.join("sft/latest"), "checkpoint-1\n").unwrap();
    let mut rest = c;
    rest.output.dir = parts.clone();
    run(rest, Start::Resume);
    for f in ["sft/checkpoint-2/model.safetensors", "rl/checkpoint-2/model.safetensors"] {
        let a = std::fs::read(whole.join(f)).unwrap();
        let b = std::fs::read(parts.join(f)).unwrap();
        assert!(a == b, "{f}: the resumed run differs from the uninterrupted one");
    }
    let a = std::fs::read(whole.join("rl/checkpoint-2/optimizer.safetensors")).unwrap();
    let b = std::fs::read(parts.join("rl/checkpoint-2/optimizer.safetensors")).unwrap();
    assert!(a == b, "the resumed run's optimizer state differs");
    let (_, vision) = tensors(&latest(&parts.join("rl")));
    let (_, vision0) = tensors(&fixture("tiny-vl"));
    let bf16 = |v: &[Vec<f32>]| -> Vec<Vec<u16>> {
        v.iter().map(|t| t.iter().map(|x| half::bf16::from_f32(*x).to_bits()).collect()).collect()
    };
    assert_eq!(bf16(&vision), bf16(&vision0), "the frozen tower, as rounded to bf16");
}

/// The emulated CUDA backend (f32 precision: the emulator's default) runs the same pipeline
/// as the CPU: the same rollouts and rewards, and weights within AdamW's amplification of
/// f32 rounding (measured: see the printed distances). One SFT step and one RL step: the
/// emulator is slow.
#[cfg(feature = "emu")]
#[test]
fn the_emulator_trains_as_the_cpu() {
    use mmr1_fast::backend::cuda::CudaBackend;
    let d = tempfile::tempdir().unwrap();
    write_data(d.path());
    let small = |out: &Path| {
        let mut c = config(d.path(), out, 1);
        c.sft.batch_size = 4;
        c.eval.every = 0;
        c.data.eval = PathBuf::new();
        c.vas.initial_scoring = false;
        c
    };
    let (cpu, emu) = (d.path().join("cpu"), d.path().join("emu"));
    run(small(&cpu), Start::Fresh { overwrite: false });
    run_on(&CudaBackend::emulator(), small(&emu), Start::Fresh { overwrite: false });
    let (a, b) = (rl_records(&cpu), rl_records(&emu));
    for k in ["reward_mean", "accuracy", "response_len"] {
        assert_eq!(a[0][k], b[0][k], "{k}: the emulator's rollouts differ from the CPU's");
    }
    let (ta, _) = tensors(&latest(&cpu.join("rl")));
    let (tb, _) = tensors(&latest(&emu.join("rl")));
    let flat = |t: &[Vec<f32>]| t.concat();
    let e = rel_l2(&flat(&tb), &flat(&ta));
    let (la, lb) = (a[0]["loss"].as_f64().unwrap(), b[0]["loss"].as_f64().unwrap());
    println!("after 1 SFT + 1 RL step: weights rel L2 {e:.2e}; RL loss cpu {la:.6e} emu {lb:.6e}");
    assert!(e < 1e-3, "emulator weights {e:.2e} from the CPU's");
    assert!((la - lb).abs() <= 1e-4 * la.abs().max(1e-3), "loss cpu {la} emu {lb}");
}

#[test]
fn a_missing_or_broken_image_names_the_item_and_the_path() {
    let d = tempfile::tempdir().unwrap();
    write_data(d.path());
    let bad = d.path().join("bad.jsonl");
    let good = std::fs::read_to_string(d.path().join("rl.jsonl")).unwrap();
    std::fs::write(d.path().join("img/broken.png"), b"not a png").unwrap();
    let add = |extra: &str| std::fs::write(&bad, format!("{good}{extra}\n")).unwrap();
    let out = d.path().join("out");
    let out_s = out.to_str().unwrap();
    let (model, bad_s) = (fixture("tiny-vl"), bad.to_str().unwrap().to_string());
    let model_set = format!("model.dir={:?}", model.to_str().unwrap());
    let rl_set = format!("data.rl={bad_s:?}");
    let args = |more: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["train", "--out", out_s, "--device", "cpu", "--set", &model_set]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(["--set".into(), rl_set.clone(), "--set".into(), "rl.batch_size=2".into()]);
        a.extend(["--set".into(), "rl.steps=0".into(), "--set".into(), "sft.epochs=0".into()]);
        a.extend(["--set".into(), "rl.mini_batches=1".into()]);
        a.extend(more.iter().map(|s| s.to_string()));
        a
    };
    let call = |more: &[&str]| {
        let a = args(more);
        common::cli(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let fails = |more: &[&str]| {
        let o = call(more);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success() && !err.contains("panicked"), "{err}");
        err
    };
    add(r#"{"id": "lost", "problem": "<image>?", "answer": "1", "image": "img/nope.png"}"#);
    let e = fails(&[]);
    assert!(e.contains("\"lost\"") && e.contains("nope.png") && e.contains("bad.jsonl:5"), "{e}");
    add(r#"{"id": "broken", "problem": "<image>?", "answer": "1", "image": "img/broken.png"}"#);
    let e = fails(&["--overwrite"]);
    assert!(
        e.contains("\"broken\"") && e.contains("broken.png") && e.contains("bad.jsonl:5"),
        "{e}"
    );
    // Skipped and counted with data.bad_lines = "skip": the run goes on.
    let o = call(&["--overwrite", "--set", "data.bad_lines=\"skip\""]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("skipped 1 bad line"), "{err}");
    // A text checkpoint given image items refuses them by line.
    let text_model = d.path().join("text-model");
    common::demo_model_dir(&text_model, 1);
    let rl_good = format!("data.rl={:?}", d.path().join("rl.jsonl").to_str().unwrap());
    let text_set = format!("model.dir={:?}", text_model.to_str().unwrap());
    let e = cli_err(&[
        "train",
        "--out",
        out_s,
        "--overwrite",
        "--device",
        "cpu",
        "--set",
        &text_set,
        "--set",
        &rl_good,
        "--set",
        "rl.batch_size=2",
        "--set",
        "rl.mini_batches=1",
    ]);
    assert!(e.contains("rl.jsonl:1") && e.contains("Qwen2.5-VL"), "{e}");
}

/// The RL rollouts decode a batch's responses together (`generate_vl_scheduled`: the rollout
/// scheduler's KV-cache slots, a finished response's slot prefilled with the next waiting
/// prompt and its images beside the other slots' decodes); on the CPU and on the emulator
/// each response is, bit for bit, the one decoded alone with its seed, for 1, 2, 3, n - 1 and
/// n slots and groups of 1 and 4. No response holds the image placeholder.
fn check_vl_slot_counts<B: RlOps>(be: &B, name: &str, alone_every: usize) {
    use mmr1_fast::model::vl_forward::VlModel;
    use mmr1_fast::model::vl_prompt::{expand_image_placeholders, VlImages, IMAGE_PLACEHOLDER};
    use mmr1_fast::rl::rollout::SamplingParams;
    use mmr1_fast::rl::vl_rollout::{generate_vl_scheduled, generate_vl_seeded};
    use mmr1_fast::tokenizer::Tokenizer;
    let d = tempfile::tempdir().unwrap();
    write_data(d.path());
    let dir = fixture("tiny-vl");
    let m = VlModel::load(be, &dir).unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let img = |names: &[&str]| {
        let paths: Vec<PathBuf> = names.iter().map(|n| d.path().join("img").join(n)).collect();
        VlImages::load(&paths, &dir, &m.cfg.vision).unwrap()
    };
    let images = [img(&["b.png"]), img(&[]), img(&["c.png", "a.png"])];
    let prompts: Vec<Vec<u32>> = images
        .iter()
        .map(|im| {
            let blocks = IMAGE_PLACEHOLDER.repeat(im.grids.len());
            let ids = tok.encode(&format!("<|im_start|>user\n{blocks}How many?")).unwrap();
            let counts = im.token_counts(m.cfg.vision.spatial_merge_size);
            expand_image_placeholders(&[ids], m.cfg.image_token_id, &counts).unwrap().seqs.remove(0)
        })
        .collect();
    let p = |slots: usize| SamplingParams {
        temperature: 1.0,
        top_p: 1.0,
        top_k: 0,
        max_new_tokens: 10,
        // Many stop ids: responses end at different steps (ragged slots).
        stop_ids: (0..60).chain([399]).collect(),
        stop_strings: vec![],
        kv_slots: slots,
    };
    let batch: Vec<(&[u32], &VlImages)> =
        prompts.iter().zip(&images).map(|(p, im)| (p.as_slice(), im)).collect();
    let bits = |r: &[mmr1_fast::rl::rollout::Rollout]| -> Vec<(Vec<u32>, Vec<u32>, _)> {
        r.iter()
            .map(|o| (o.tokens.clone(), o.logprobs.iter().map(|x| x.to_bits()).collect(), o.stop))
            .collect()
    };
    for group in [1, 4] {
        let n = 3 * group;
        let seeds: Vec<u64> = (0..n as u64).map(|s| 1000 + s).collect();
        let all = generate_vl_scheduled(&m, be, &batch, group, &p(n), &seeds).unwrap();
        assert_eq!(all.rollouts.len(), n);
        let mut lens = Vec::new();
        for (s, r) in all.rollouts.iter().enumerate() {
            let i = s / group;
            assert_eq!(r.prompt_index, i);
            lens.push(r.tokens.len());
            if s % alone_every != 0 {
                continue;
            }
            let pixels = (!images[i].grids.is_empty()).then(|| be.upload(&images[i].pixels));
            let one = generate_vl_seeded(
                &m,
                be,
                &prompts[i],
                &images[i].grids,
                pixels.as_ref(),
                &p(0),
                seeds[s],
            )
            .unwrap();
            assert_eq!(r.tokens, one.tokens, "{name} group {group}: response {s}");
            assert_eq!(
                bits(std::slice::from_ref(r)),
                bits(&[one]),
                "{name} group {group}: response {s}"
            );
        }
        assert!(all.rollouts.iter().all(|r| !r.tokens.contains(&m.cfg.image_token_id)));
        assert!(lens.iter().any(|&l| l < 10), "{name}: no response stopped early: {lens:?}");
        println!("{name} group {group}: response lengths {lens:?}");
        for slots in [1, 2, 3, n - 1] {
            let got = generate_vl_scheduled(&m, be, &batch, group, &p(slots), &seeds).unwrap();
            assert_eq!(
                bits(&got.rollouts),
                bits(&all.rollouts),
                "{name} group {group}: {slots} slots"
            );
            assert_eq!(got.stats.slots, slots);
            assert_eq!(got.stats.sampled, lens.iter().sum::<usize>());
        }
    }
}

#[test]
fn batched_rollouts_equal_single_ones() {
    check_vl_slot_counts(&Cpu, "cpu", 1);
}

/// The emulator (f32, its default) decodes the VL rollouts as the CPU reference does: the
/// same identity over slot counts.
#[cfg(feature = "emu")]
#[test]
fn emulator_batched_rollouts_equal_single_ones() {
    check_vl_slot_counts(&mmr1_fast::backend::cuda::CudaBackend::emulator(), "emu", 5);
}

/// Rollout speed of the RL step's shape in the text demo (16 prompts x 8 responses, 32 new
/// tokens) on the fixture model: all prompts batched (what `train` does), one prompt per
/// call, one response per call. A measurement, not a check:
/// `cargo test --features emu --test vl_train rollout_speed -- --ignored --nocapture` (the
/// test profile is optimized).
#[test]
#[ignore = "a timing measurement; prints, asserts nothing about speed"]
fn rollout_speed() {
    use mmr1_fast::backend::Backend;
    use mmr1_fast::model::vl_forward::VlModel;
    use mmr1_fast::model::vl_prompt::{expand_image_placeholders, VlImages, IMAGE_PLACEHOLDER};
    use mmr1_fast::rl::rollout::SamplingParams;
    use mmr1_fast::rl::vl_rollout::{generate_vl_batch, generate_vl_seeded};
    use mmr1_fast::tokenizer::Tokenizer;
    use std::time::Instant;
    let d = tempfile::tempdir().unwrap();
    write_data(d.path());
    let dir = fixture("tiny-vl");
    let m = VlModel::load(&Cpu, &dir).unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let names = ["a.png", "b.png", "c.png"];
    let images: Vec<VlImages> = (0..16)
        .map(|i| {
            let p = d.path().join("img").join(names[i % 3]);
            VlImages::load(&[p], &dir, &m.cfg.vision).unwrap()
        })
        .collect();
    let prompts: Vec<Vec<u32>> = images
        .iter()
        .map(|im| {
            let ids =
                tok.encode(&format!("<|im_start|>user\n{IMAGE_PLACEHOLDER}How many?")).unwrap();
            let counts = im.token_counts(m.cfg.vision.spatial_merge_size);
            expand_image_placeholders(&[ids], m.cfg.image_token_id, &counts).unwrap().seqs.remove(0)
        })
        .collect();
    let p = SamplingParams {
        temperature: 1.0,
        top_p: 1.0,
        top_k: 0,
        max_new_tokens: 32,
        stop_ids: vec![],
        stop_strings: vec![],
        kv_slots: 0,
    };
    let g = 8;
    let seeds: Vec<u64> = (0..16 * g as u64).collect();
    let batch: Vec<(&[u32], &VlImages)> =
        prompts.iter().zip(&images).map(|(p, im)| (p.as_slice(), im)).collect();
    let t = Instant::now();
    generate_vl_batch(&m, &Cpu, &batch, g, &p, &seeds).unwrap();
    let all = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for (i, b) in batch.iter().enumerate() {
        generate_vl_batch(&m, &Cpu, &[*b], g, &p, &seeds[i * g..(i + 1) * g]).unwrap();
    }
    let per_prompt = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for (s, &seed) in seeds.iter().enumerate() {
        let im = &images[s / g];
        let px = Cpu.upload(&im.pixels);
        generate_vl_seeded(&m, &Cpu, &prompts[s / g], &im.grids, Some(&px), &p, seed).unwrap();
    }
    let single = t.elapsed().as_secs_f64();
    println!(
        "128 responses x 32 tokens: batched {all:.3} s, per prompt {per_prompt:.3} s, one by one {single:.3} s"
    );
}

/// What a VL run does not support is refused by name before any work (nothing is trained and
/// no checkpoint is written): ZeRO sharding and activation recomputation.
#[test]
fn zero_sharding_and_recompute_are_refused_up_front_for_a_vl_model() {
    let d = tempfile::tempdir().unwrap();
    write_data(d.path());
    for (key, set) in [
        ("dist.zero", (|c: &mut TrainConfig| c.dist.zero = 1) as fn(&mut TrainConfig)),
        ("model.recompute", |c: &mut TrainConfig| c.model.recompute = true),
    ] {
        let out = d.path().join(key);
        let mut c = config(d.path(), &out, 1);
        set(&mut c);
        let e = format!(
            "{:#}",
            RunInputs::prepare(c, Start::Fresh { overwrite: false }).err().unwrap()
        );
        assert!(e.contains(key), "{key}: {e}");
        assert!(!out.join("sft").exists(), "{key}: a phase directory was written");
    }
}
