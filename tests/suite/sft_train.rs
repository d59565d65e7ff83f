//! SFT end to end: the loss falls on a learnable task, a resumed run is bit-identical to an
//! uninterrupted one, checkpoints survive interrupted saves, and the CLI path works.

use crate::sft_common;
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::commands::sft::{run_on, SftArgs};
use mmr1_fast::data::sft_data::{load_sft_dataset, SftExample};
use mmr1_fast::model::safetensors_io::SaveDtype;
use mmr1_fast::model::Qwen2;
use mmr1_fast::optim::AdamwConfig;
use mmr1_fast::tokenizer::Tokenizer;
use mmr1_fast::train::checkpoint::{latest_checkpoint, load_checkpoint};
use mmr1_fast::train::sft::{SftConfig, SftState, SftTrainer};
use sft_common::*;
use std::path::Path;

fn dataset(dir: &Path, n: usize) -> (std::path::PathBuf, Vec<SftExample>) {
    let p = dir.join("data.jsonl");
    std::fs::write(&p, synthetic_jsonl(n)).unwrap();
    let tok = Tokenizer::from_file(&tokenizer_path()).unwrap();
    let (ex, _) = load_sft_dataset(&p, &tok, None, 512).unwrap();
    (p, ex)
}

fn cfg(epochs: usize, batch: usize, lr: f32) -> SftConfig {
    SftConfig {
        epochs,
        batch_size: batch,
        micro_batch_tokens: 64,
        max_len: 512,
        lr,
        min_lr: 0.0,
        warmup_ratio: 0.1,
        cosine: true,
        adamw: AdamwConfig { weight_decay: 0.01, ..AdamwConfig::default() },
        seed: 7,
    }
}

#[test]
fn sft_lowers_the_loss() {
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_model(&tmp.path().join("m"), 32, 1);
    let (_, data) = dataset(tmp.path(), 12);
    let model = Qwen2::load(&Cpu, &tmp.path().join("m")).unwrap();
    let mut t = SftTrainer::new(&Cpu, model, data, cfg(200, 6, 3e-3)).unwrap();
    let mut losses = vec![];
    while !t.done() {
        let m = t.step(&Cpu).unwrap();
        assert!(m.loss.is_finite() && !m.skipped);
        losses.push(m.loss);
    }
    assert_eq!(losses.len(), 400);
    // Smoothed over 40-step windows, the loss falls window after window until it is small,
    // and ends far below where it started (ln 400 = 6.0 for a fresh model).
    let win: Vec<f64> = losses.chunks(40).map(|c| c.iter().sum::<f64>() / c.len() as f64).collect();
    eprintln!("windowed loss: {win:.3?}");
    assert!(losses[0] > 5.0, "a fresh model is near uniform: {}", losses[0]);
    for w in win.windows(2) {
        assert!(w[1] < w[0] || w[1] < 0.1, "smoothed loss rose: {win:?}");
    }
    assert!(
        *win.last().unwrap() < 0.2 * losses[0],
        "final {:?} vs initial {}",
        win.last(),
        losses[0]
    );
}

#[test]
fn resumed_run_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_model(&tmp.path().join("m"), 16, 2);
    let (_, data) = dataset(tmp.path(), 10);
    // 10 examples, 4 per step: 3 steps per epoch; 3 epochs. Stop at step 4 (mid epoch 1).
    let c = cfg(3, 4, 1e-2);
    let load = || Qwen2::load(&Cpu, &tmp.path().join("m")).unwrap();
    let mut straight = SftTrainer::new(&Cpu, load(), data.clone(), c.clone()).unwrap();
    while !straight.done() {
        straight.step(&Cpu).unwrap();
    }
    for dtype in [SaveDtype::F32, SaveDtype::Bf16] {
        let out = tmp.path().join(format!("out-{dtype:?}"));
        let mut first = SftTrainer::new(&Cpu, load(), data.clone(), c.clone()).unwrap();
        for _ in 0..4 {
            first.step(&Cpu).unwrap();
        }
        let dir = first.save(&Cpu, &out, dtype, Some(&tokenizer_path())).unwrap();
        drop(first);
        assert_eq!(latest_checkpoint(&out).unwrap().unwrap(), dir);
        let mut second = SftTrainer::resume(&Cpu, &dir, data.clone()).unwrap();
        assert_eq!(second.state.step, 4);
        while !second.done() {
            second.step(&Cpu).unwrap();
        }
        assert_eq!(second.state.step, 9);
        assert_eq!(second.opt.step, straight.opt.step);
        for i in 0..straight.model.params.len() {
            let name = &straight.model.layout.specs[i].name;
            assert!(
                second.model.params[i] == straight.model.params[i],
                "{dtype:?}: {name} differs after resume"
            );
            assert!(
                second.opt.m[i] == straight.opt.m[i] && second.opt.v[i] == straight.opt.v[i],
                "{dtype:?}: moments of {name}"
            );
        }
    }
    // Other data is refused.
    let out = tmp.path().join("out-F32");
    let dir = latest_checkpoint(&out).unwrap().unwrap();
    let mut other = data.clone();
    other.pop();
    let err = SftTrainer::<Cpu>::resume(&Cpu, &dir, other).err().unwrap();
    assert!(format!("{err:#}").contains("trained on other data"), "{err:#}");
}

#[test]
fn checkpoints_survive_interrupted_saves_and_bad_files_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    write_tiny_model(&tmp.path().join("m"), 16, 3);
    let (_, data) = dataset(tmp.path(), 6);
    let out = tmp.path().join("out");
    let model = Qwen2::load(&Cpu, &tmp.path().join("m")).unwrap();
    let mut t = SftTrainer::new(&Cpu, model, data, cfg(2, 3, 1e-2)).unwrap();
    t.step(&Cpu).unwrap();
    let good = t.save(&Cpu, &out, SaveDtype::F32, Some(&tokenizer_path())).unwrap();
    // A save killed half way leaves a temporary directory; `latest` still names the good one.
    let stale = out.join(".checkpoint-2.tmp");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("model.safetensors"), b"truncated").unwrap();
    assert_eq!(latest_checkpoint(&out).unwrap().unwrap(), good);
    load_checkpoint::<Cpu, SftState>(&Cpu, &good).unwrap();
    // The next save of that step cleans the leftover up.
    t.step(&Cpu).unwrap();
    let next = t.save(&Cpu, &out, SaveDtype::F32, None).unwrap();
    assert!(!stale.exists() && latest_checkpoint(&out).unwrap().unwrap() == next);
    // The model directory is a Hugging Face directory: it loads as a model.
    let m = Qwen2::load(&Cpu, &next).unwrap();
    assert_eq!(m.params, t.model.params);
    assert!(good.join("tokenizer.json").exists() && good.join("config.json").exists());

    // Damaged checkpoints are refused with a message naming the problem.
    let bad = tmp.path().join("bad");
    let copy = |name: &str| {
        std::fs::create_dir_all(&bad).unwrap();
        for f in ["config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json"]
        {
            std::fs::copy(good.join(f), bad.join(f)).unwrap();
        }
        std::fs::write(bad.join(name), b"{").unwrap();
    };
    copy("trainer_state.json");
    let e = format!("{:#}", load_checkpoint::<Cpu, SftState>(&Cpu, &bad).err().unwrap());
    assert!(e.contains("trainer_state.json: not a valid trainer state"), "{e}");
    copy("optimizer.safetensors");
    let e = format!("{:#}", load_checkpoint::<Cpu, SftState>(&Cpu, &bad).err().unwrap());
    assert!(e.contains("optimizer.safetensors: not a valid safetensors file"), "{e}");
    std::fs::write(out.join("latest"), "checkpoint-99\n").unwrap();
    let e = format!("{:#}", latest_checkpoint(&out).unwrap_err());
    assert!(e.contains("does not exist"), "{e}");
}

#[test]
fn sft_command_trains_saves_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let mdir = tmp.path().join("m");
    write_tiny_model(&mdir, 16, 4);
    let (data, _) = dataset(tmp.path(), 8);
    let out = tmp.path().join("out");
    let mut args = SftArgs {
        model: mdir.clone(),
        data,
        out: out.clone(),
        epochs: 2,
        lr: 1e-2,
        min_lr: 0.0,
        constant_lr: false,
        batch_size: 4,
        micro_batch_tokens: 64,
        max_len: 512,
        warmup_ratio: 0.1,
        weight_decay: 0.0,
        grad_clip: 1.0,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        seed: 0,
        save_every: 1,
        save_dtype: SaveDtype::Bf16,
        no_default_system: true,
        freeze_vision: true,
        resume: None,
        overwrite: false,
        max_steps: Some(2),
        device: "cpu".parse().unwrap(),
        precision: Default::default(),
        recompute: false,
        zero: 0,
        grad_buckets: true,
        collective: Default::default(),
    };
    run_on(&Cpu, &args).unwrap();
    assert!(out.join("checkpoint-1").is_dir() && out.join("checkpoint-2").is_dir());
    assert!(!out.join("model.safetensors").exists(), "not finished: no final model yet");
    args.resume = Some("latest".into());
    args.max_steps = None;
    // Recomputation changes no result, so a resumed run may switch it on.
    args.recompute = true;
    run_on(&Cpu, &args).unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.iter().map(|l| l["step"].as_u64().unwrap()).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert!(lines
        .iter()
        .all(|l| l["loss"].as_f64().unwrap() > 0.0 && l["grad_norm"].as_f64().unwrap() > 0.0));
    // The finished model is written to OUT itself (bf16) and loads.
    let m = Qwen2::load(&Cpu, &out).unwrap();
    let mut want = small_config(16);
    want.extra.insert("torch_dtype".into(), "bfloat16".into()); // says what the file holds
    assert_eq!(m.cfg, want);
    assert_eq!(std::fs::read_to_string(out.join("latest")).unwrap().trim(), "checkpoint-4");
}
