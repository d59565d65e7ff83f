//! `sft` of a Qwen2.5-VL model on conversations with images (src/train/vl_sft.rs,
//! src/data/vl_sft_data.rs, src/commands/sft_vl.rs) on the tiny fixture model
//! (tests/fixtures/tiny-vl): a few steps lower the loss; the trainer equals a hand-rolled loop
//! through `VlModel` directly, bit for bit on the CPU; `--freeze-vision` leaves every
//! `visual.*` tensor bit-identical (and trained, they move); the emulated CUDA backend agrees
//! with the CPU; the CLI writes a Qwen2.5-VL checkpoint; bad input is a clear error.

use crate::common;

#[cfg(feature = "emu")]
use common::rel_l2;
use common::{cli_err, cli_ok, fixture};
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::backend::Backend;
use mmr1_fast::data::vl_sft_data::{load_vl_sft_dataset, VlSftExample};
use mmr1_fast::model::vl::VlHost;
use mmr1_fast::model::vl_forward::VlModel;
use mmr1_fast::model::vl_prompt::{VlImages, QWEN25_VL_DEFAULT_SYSTEM};
use mmr1_fast::model::Qwen2VlConfig;
use mmr1_fast::optim::{AdamW, AdamwConfig};
use mmr1_fast::tokenizer::Tokenizer;
use mmr1_fast::train::sft::SftConfig;
use mmr1_fast::train::vl_sft::VlSftTrainer;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

const IMAGE: u32 = 410;

fn img(name: &str) -> String {
    fixture("tiny-vl/images").join(name).to_str().unwrap().to_string()
}

/// A tiny image dataset: the answer names the image, so the images matter. Four forms:
/// ShareGPT with a marker, `messages` without markers (blocks go first), two images with
/// markers, and one text-only conversation.
fn write_data(dir: &Path) -> PathBuf {
    let lines = [
        serde_json::json!({"conversations": [{"from": "human", "value": "<image>What is it?"},
            {"from": "gpt", "value": "a red ring"}], "images": [img("img0.png")]}),
        serde_json::json!({"messages": [{"role": "user", "content": "Name it."},
            {"role": "assistant", "content": "grey stripes"}], "image": img("img1.png")}),
        serde_json::json!({"conversations": [{"from": "human", "value": "Compare <image> and <image>."},
            {"from": "gpt", "value": "the left one is brighter"}],
            "images": [img("img3.jpg"), img("img4.png")]}),
        serde_json::json!({"problem": "2+2?", "solution": "4"}),
    ];
    let p = dir.join("data.jsonl");
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::fs::write(&p, text.join("\n") + "\n").unwrap();
    p
}

fn cfg(batch: usize, epochs: usize, lr: f32) -> SftConfig {
    SftConfig {
        epochs,
        batch_size: batch,
        // Small enough that a step holds several micro-batches.
        micro_batch_tokens: 40,
        max_len: 256,
        lr,
        min_lr: 0.0,
        warmup_ratio: 0.0,
        cosine: false,
        adamw: AdamwConfig { weight_decay: 0.01, max_grad_norm: Some(1.0), ..Default::default() },
        seed: 3,
    }
}

fn load_data(dir: &Path) -> Vec<VlSftExample> {
    let model = fixture("tiny-vl");
    let vl = Qwen2VlConfig::load(&model).unwrap();
    let tok = Tokenizer::from_dir(&model).unwrap();
    let p = write_data(dir);
    load_vl_sft_dataset(&p, &tok, Some(QWEN25_VL_DEFAULT_SYSTEM), 256, &model, &vl).unwrap().0
}

fn trainer<B: Backend>(
    be: &B,
    data: Vec<VlSftExample>,
    c: SftConfig,
    freeze: bool,
) -> VlSftTrainer<B> {
    let dir = fixture("tiny-vl");
    VlSftTrainer::new(be, VlModel::load(be, &dir).unwrap(), &dir, data, c, freeze).unwrap()
}

fn host<B: Backend>(be: &B, bufs: &[B::Buf]) -> Vec<Vec<f32>> {
    bufs.iter().map(|b| be.download(b)).collect()
}

#[test]
fn data_places_and_expands_images() {
    let d = tempfile::tempdir().unwrap();
    let data = load_data(d.path());
    assert_eq!(data.len(), 4);
    let counts: Vec<usize> = data.iter().map(|e| e.images.len()).collect();
    assert_eq!(counts, vec![1, 1, 2, 0]);
    for e in &data {
        // Each image is one run of its merged patch count, never trained.
        let runs: Vec<usize> =
            e.ex.ids
                .chunk_by(|a, b| (*a == IMAGE) == (*b == IMAGE))
                .filter(|r| r[0] == IMAGE)
                .map(|r| r.len())
                .collect();
        let want: Vec<usize> = e.grids.iter().map(|g| g.iter().product::<usize>() / 4).collect();
        assert_eq!(runs, want);
        assert!(e.ex.ids.iter().zip(&e.ex.trained).all(|(&t, &tr)| !(t == IMAGE && tr)));
        assert!(e.ex.trained_targets() > 0);
        // The grids from the headers are the ones preprocessing gives.
        let imgs = VlImages::load(&e.images, &fixture("tiny-vl"), &{
            Qwen2VlConfig::load(&fixture("tiny-vl")).unwrap().vision
        })
        .unwrap();
        assert_eq!(imgs.grids, e.grids);
    }
    // Without markers the block opens the user turn.
    let tok = Tokenizer::from_dir(&fixture("tiny-vl")).unwrap();
    let text = tok.decode(&data[1].ex.ids, true).unwrap();
    assert!(text.contains("<|im_start|>user\n<|vision_start|><|image_pad|>"), "{text}");
    assert!(text.starts_with(&format!("<|im_start|>system\n{QWEN25_VL_DEFAULT_SYSTEM}")), "{text}");

    // --max-len never splits an image's run: a cut inside the second image of the two-image
    // conversation moves to that run's start and drops the image; the first stays whole.
    use mmr1_fast::data::sft_data::load_jsonl_with_images;
    use mmr1_fast::data::vl_sft_data::tokenize_vl;
    let recs = load_jsonl_with_images(&d.path().join("data.jsonl")).unwrap();
    let (two, full) = (&recs[2], &data[2]);
    let vl = Qwen2VlConfig::load(&fixture("tiny-vl")).unwrap();
    let second = full.ex.ids.iter().rposition(|&t| t == IMAGE).unwrap(); // last image token
    let run2 = full.grids[1].iter().product::<usize>() / 4;
    let start2 = second + 1 - run2;
    let sys = Some(QWEN25_VL_DEFAULT_SYSTEM);
    for cut in [start2 + 1, second] {
        let e = tokenize_vl(&tok, &two.messages, &two.images, &full.grids, sys, cut, &vl).unwrap();
        assert_eq!(e.ex.ids, full.ex.ids[..start2], "cut at {cut}");
        assert_eq!((e.images.len(), e.grids.len()), (1, 1));
    }
    let e =
        tokenize_vl(&tok, &two.messages, &two.images, &full.grids, sys, second + 1, &vl).unwrap();
    assert_eq!((e.ex.ids.len(), e.images.len()), (second + 1, 2), "a whole run stays");
}

/// Content lists, TRL's (parts without files, files in "images") and Qwen's (each part names
/// its file), give the example the ShareGPT form with `<image>` markers gives.
#[test]
fn content_parts_give_the_marker_forms_example() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (img("img3.jpg"), img("img4.png"));
    let reply = "the left one is brighter";
    let lines = [
        serde_json::json!({"conversations": [{"from": "human", "value": "Compare <image> and <image>."},
            {"from": "gpt", "value": reply}], "images": [a, b]}),
        serde_json::json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "Compare ", "index": null}, {"type": "image", "text": null, "index": 0},
            {"type": "text", "text": " and "}, {"type": "image", "text": null, "index": 1},
            {"type": "text", "text": "."}]},
            {"role": "assistant", "content": [{"type": "text", "text": reply}]}], "images": [a, b]}),
        serde_json::json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "Compare "}, {"type": "image", "image": a},
            {"type": "text", "text": " and "},
            {"type": "image_url", "image_url": {"url": format!("file://{b}")}},
            {"type": "text", "text": "."}]}, {"role": "assistant", "content": reply}]}),
    ];
    let p = d.path().join("parts.jsonl");
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::fs::write(&p, text.join("\n") + "\n").unwrap();
    let model = fixture("tiny-vl");
    let vl = Qwen2VlConfig::load(&model).unwrap();
    let tok = Tokenizer::from_dir(&model).unwrap();
    let sys = Some(QWEN25_VL_DEFAULT_SYSTEM);
    let (data, dropped) = load_vl_sft_dataset(&p, &tok, sys, 256, &model, &vl).unwrap();
    assert_eq!((data.len(), dropped), (3, 0));
    assert_eq!(data[0].images.len(), 2);
    assert_eq!(data[0].ex.ids.iter().filter(|&&t| t == IMAGE).count(), {
        data[0].grids.iter().map(|g| g.iter().product::<usize>() / 4).sum::<usize>()
    });
    assert_eq!(data[1], data[0], "TRL's parts");
    assert_eq!(data[2], data[0], "parts naming their files");
}

/// Full-data mean token cross-entropy of a model (one forward).
fn data_loss(m: &VlModel<Cpu>, data: &[VlSftExample]) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for e in data {
        let imgs = VlImages::load(&e.images, &fixture("tiny-vl"), &m.cfg.vision).unwrap();
        let batch = m.pack(&[(&e.ex.ids, &e.grids)]).unwrap();
        let pixels = (!e.images.is_empty()).then(|| Cpu.upload(&imgs.pixels));
        let mut acts = None;
        m.forward(&Cpu, &batch, pixels.as_ref(), &mut acts).unwrap();
        let (targets, _) = batch.packed.next_token_targets();
        let (lp, _) = m.text.token_logprobs(&Cpu, acts.as_ref().unwrap(), &targets, 1.0);
        for pos in 1..e.ex.ids.len() {
            if e.ex.trained[pos] {
                sum -= lp[pos - 1] as f64;
                n += 1;
            }
        }
    }
    sum / n as f64
}

/// The trainer's steps, redone by hand through `VlModel` (pack, forward, log-probs, the SFT
/// gradient -1/N on trained rows, backward, one AdamW over the trained parameters): the same
/// parameters bit for bit. Training lowers the loss on the data.
#[test]
fn steps_lower_the_loss_and_equal_a_hand_rolled_loop() {
    let d = tempfile::tempdir().unwrap();
    let data = load_data(d.path());
    let c = cfg(3, 4, 2e-2);
    for freeze in [false, true] {
        let mut t = trainer(&Cpu, data.clone(), c.clone(), freeze);
        let before = data_loss(&t.model, &data);
        let mut micro = 0;
        while !t.done() {
            let m = t.step(&Cpu).unwrap();
            assert!(m.loss.is_finite() && !m.skipped);
            micro += m.micro_batches;
        }
        let after = data_loss(&t.model, &data);
        println!("freeze {freeze}: loss {before:.4} -> {after:.4}, {micro} micro-batches");
        assert!(after < before - 0.5, "loss {before:.4} -> {after:.4}");
        assert!(micro > t.state.total_steps as usize, "every step was one micro-batch");

        // By hand.
        let be = Cpu;
        let mut m = VlModel::load(&be, &fixture("tiny-vl")).unwrap();
        let n_text = m.text.params.len();
        let (tg, vg) = m.zero_grads(&be);
        let mut grads = tg;
        if !freeze {
            grads.extend(vg);
        }
        let mut opt = AdamW::new(&be, &grads, c.adamw);
        let mut rng = ChaCha8Rng::seed_from_u64(c.seed);
        for _ in 0..c.epochs {
            // Each epoch's order continues the one seeded RNG (train::sft::epoch_order).
            let mut order: Vec<usize> = (0..data.len()).collect();
            order.shuffle(&mut rng);
            for step in order.chunks(c.batch_size) {
                let seqs: Vec<&VlSftExample> = step.iter().map(|&i| &data[i]).collect();
                let n_tok: usize = seqs.iter().map(|e| e.ex.trained_targets()).sum();
                grads.iter_mut().for_each(|g| be.fill(g, 0.0));
                let lens: Vec<usize> = seqs.iter().map(|e| e.ex.ids.len()).collect();
                for r in mmr1_fast::train::pack_ranges(&lens, 0..seqs.len(), c.micro_batch_tokens) {
                    let part = &seqs[r];
                    let paths: Vec<PathBuf> =
                        part.iter().flat_map(|e| e.images.iter().cloned()).collect();
                    let imgs = VlImages::load(&paths, &fixture("tiny-vl"), &m.cfg.vision).unwrap();
                    let pixels = (!paths.is_empty()).then(|| be.upload(&imgs.pixels));
                    let s: Vec<(&[u32], &[[usize; 3]])> =
                        part.iter().map(|e| (e.ex.ids.as_slice(), e.grids.as_slice())).collect();
                    let batch = m.pack(&s).unwrap();
                    let mut acts = None;
                    let va = m.forward(&be, &batch, pixels.as_ref(), &mut acts).unwrap();
                    let (targets, _) = batch.packed.next_token_targets();
                    let mut dlp = vec![0.0f32; targets.len()];
                    for (sp, e) in batch.packed.spans.iter().zip(part) {
                        for pos in 1..sp.q_len {
                            if e.ex.trained[pos] {
                                dlp[sp.q_start + pos - 1] = -1.0 / n_tok as f32;
                            }
                        }
                    }
                    let (tgr, vgr) = grads.split_at_mut(n_text);
                    m.backward(
                        &be,
                        &batch,
                        pixels.as_ref(),
                        acts.as_ref().unwrap(),
                        va.as_ref(),
                        &targets,
                        &dlp,
                        None,
                        1.0,
                        tgr,
                        (!freeze).then_some(vgr),
                    )
                    .unwrap();
                }
                let mut params = std::mem::take(&mut m.text.params);
                if !freeze {
                    params.append(&mut m.vision.params);
                    opt.step(&be, &mut params, &grads, c.lr);
                    m.vision.params = params.split_off(n_text);
                } else {
                    opt.step(&be, &mut params, &grads, c.lr);
                }
                m.text.params = params;
            }
        }
        assert!(host(&be, &m.text.params) == host(&be, &t.model.text.params), "decoder differs");
        assert!(host(&be, &m.vision.params) == host(&be, &t.model.vision.params), "tower differs");

        // Frozen: every visual.* tensor is the loaded one, bit for bit; trained, they move.
        let start = VlHost::load(&fixture("tiny-vl")).unwrap();
        let now = host(&be, &t.model.vision.params);
        for ((spec, a), b) in start.vision_layout.specs.iter().zip(&start.vision).zip(&now) {
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert_eq!(same, freeze, "{} (freeze {freeze})", spec.name);
        }
        assert_eq!(t.opt.m.len(), n_text + if freeze { 0 } else { start.vision.len() });
    }
}

/// The emulated CUDA backend (f32 GEMMs and attention: the emulator's default precision)
/// trains as the CPU does: same losses and gradient norms, parameters within AdamW's
/// amplification of rounding. Its steps run the head in one pass (SFT's gradient is known
/// before its log-probs): no forward log-prob kernel ran.
#[cfg(feature = "emu")]
#[test]
fn emulator_steps_equal_the_cpu() {
    use mmr1_fast::backend::cuda::{emu::EmuDevice, CudaBackend};
    let d = tempfile::tempdir().unwrap();
    let data = load_data(d.path());
    let c = cfg(2, 1, 1e-2);
    let emu = CudaBackend::with_device(EmuDevice::from_env().with_profile());
    let mut a = trainer(&Cpu, data.clone(), c.clone(), false);
    let mut b = trainer(&emu, data, c, false);
    while !a.done() {
        let (ma, mb) = (a.step(&Cpu).unwrap(), b.step(&emu).unwrap());
        let e = (ma.loss - mb.loss).abs() / ma.loss.abs();
        println!("step {}: loss cpu {:.6} emu {:.6} (rel {e:.2e})", ma.step, ma.loss, mb.loss);
        assert!(e < 1e-5, "loss differs: rel {e:.2e}");
        assert!((ma.grad_norm - mb.grad_norm).abs() < 1e-4 * ma.grad_norm);
    }
    let ran = emu.kernel_profile();
    let calls = |pre: &str| ran.iter().filter(|k| k.name.starts_with(pre)).map(|k| k.calls).sum();
    let (fwd, bwd): (u64, u64) = (calls("logprobs_f32"), calls("logprobs_bwd"));
    assert!(fwd == 0 && bwd > 0, "head launches: {fwd} forward, {bwd} backward");
    let ha = host(&Cpu, &a.model.text.params).into_iter().chain(host(&Cpu, &a.model.vision.params));
    let hb = host(&emu, &b.model.text.params).into_iter().chain(host(&emu, &b.model.vision.params));
    let (fa, fb): (Vec<f32>, Vec<f32>) = (ha.flatten().collect(), hb.flatten().collect());
    let e = rel_l2(&fb, &fa);
    println!("parameters after training, emu vs cpu: rel L2 {e:.2e}");
    // AdamW divides each gradient entry by its own magnitude: entries near zero turn f32
    // rounding differences into updates of order lr, so the parameters agree less closely
    // than the losses and gradient norms above (seen: 6.7e-5).
    assert!(e < 1e-3, "rel L2 {e:.2e}");
}

/// `mmr1-fast sft` on the VL fixture: trains, saves a Qwen2.5-VL checkpoint (processor files
/// with it, optimizer state only for the decoder when frozen) and the final model in OUT,
/// both loadable as Qwen2.5-VL; the vision tower is unchanged by default.
#[test]
fn cli_sft_writes_a_vl_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let data = write_data(d.path());
    let out = d.path().join("out");
    let model = fixture("tiny-vl");
    let args = |out: &Path, extra: &[&str]| {
        let mut a = vec![
            "sft".to_string(),
            "--model".into(),
            model.to_str().unwrap().into(),
            "--data".into(),
            data.to_str().unwrap().into(),
            "--out".into(),
            out.to_str().unwrap().into(),
            "--batch-size".into(),
            "2".into(),
            "--lr".into(),
            "1e-2".into(),
            "--device".into(),
            "cpu".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let a = args(&out, &[]);
    cli_ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let ck = out.join("checkpoint-2");
    for dir in [&ck, &out] {
        let h = VlHost::load(dir).unwrap();
        let start = VlHost::load(&model).unwrap();
        assert!(h.vision == start.vision, "{}: the frozen tower changed", dir.display());
        assert!(h.text != start.text, "{}: the decoder did not train", dir.display());
        assert!(dir.join("preprocessor_config.json").is_file());
        assert!(dir.join("tokenizer.json").is_file());
    }
    let opt = std::fs::read(ck.join("optimizer.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&opt).unwrap();
    assert!(st.names().iter().all(|n| !n.contains("visual.")), "state for frozen tensors");
    assert!(st.names().contains(&"exp_avg.model.embed_tokens.weight"));

    // Stopped after step 1 and resumed: the same checkpoint-2, bit for bit.
    let out3 = d.path().join("out3");
    let a = args(&out3, &["--max-steps", "1"]);
    cli_ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out3.join("checkpoint-2").exists());
    let a = args(&out3, &["--resume"]);
    cli_ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let (x, y) = (VlHost::load(&ck).unwrap(), VlHost::load(&out3.join("checkpoint-2")).unwrap());
    assert!(x.text == y.text && x.vision == y.vision, "the resumed run differs");
    let a = args(&out3, &["--resume", "--freeze-vision", "false"]);
    let err = cli_err(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("froze the vision tower"), "{err}");

    // --freeze-vision false trains the tower too.
    let out2 = d.path().join("out2");
    let a = args(&out2, &["--freeze-vision", "false", "--max-steps", "1", "--warmup-ratio", "0"]);
    cli_ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let h = VlHost::load(&out2.join("checkpoint-1")).unwrap();
    assert!(h.vision != VlHost::load(&model).unwrap().vision, "the tower did not train");
}

#[test]
fn bad_image_data_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let model = fixture("tiny-vl");
    let run = |lines: &[&str], model: &Path| {
        let p = common::write_lines(d.path(), "bad.jsonl", lines);
        let out = d.path().join("o");
        cli_err(&[
            "sft",
            "--model",
            model.to_str().unwrap(),
            "--data",
            &p,
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cpu",
        ])
    };
    let ok = r#"{"problem": "hi", "solution": "yo"}"#;
    let missing = r#"{"problem": "<image>hi", "solution": "yo", "image": "nope.png"}"#;
    let err = run(&[ok, missing], &model);
    assert!(err.contains("bad.jsonl:2") && err.contains("nope.png"), "{err}");
    let two = format!(
        r#"{{"problem": "<image>hi", "solution": "yo", "images": [{:?}, {:?}]}}"#,
        img("img0.png"),
        img("img1.png")
    );
    let err = run(&[ok, ok, &two], &model);
    assert!(
        err.contains("bad.jsonl:3") && err.contains("1 <image> marker(s) but 2 image(s)"),
        "{err}"
    );
    std::fs::write(d.path().join("junk.png"), b"not an image").unwrap();
    let junk = r#"{"problem": "hi", "solution": "yo", "image": "junk.png"}"#;
    let err = run(&[junk], &model);
    assert!(err.contains("bad.jsonl:1") && err.contains("junk.png"), "{err}");
    // A text checkpoint given images names the file and line.
    let text_model = d.path().join("text-model");
    common::demo_model_dir(&text_model, 1);
    let with_image =
        format!(r#"{{"problem": "hi", "solution": "yo", "image": {:?}}}"#, img("img0.png"));
    let err = run(&[ok, &with_image], &text_model);
    assert!(
        err.contains("bad.jsonl:2") && err.contains("a text model cannot train on them"),
        "{err}"
    );
}

/// A run saved after step k and resumed equals one that never stopped, bit for bit: trained
/// tower with f32 files, frozen tower with bf16 files (the f32 masters of frozen tensors are
/// kept too, so the tower comes back exactly).
#[test]
fn resumed_run_equals_an_uninterrupted_one() {
    use mmr1_fast::model::safetensors_io::SaveDtype;
    let d = tempfile::tempdir().unwrap();
    let data = load_data(d.path());
    let c = cfg(2, 2, 1e-2);
    for (freeze, dtype) in [(false, SaveDtype::F32), (true, SaveDtype::Bf16)] {
        let mut straight = trainer(&Cpu, data.clone(), c.clone(), freeze);
        while !straight.done() {
            straight.step(&Cpu).unwrap();
        }
        let out = d.path().join(format!("run-{freeze}"));
        let mut first = trainer(&Cpu, data.clone(), c.clone(), freeze);
        for _ in 0..3 {
            first.step(&Cpu).unwrap();
        }
        let dir = first.save(&Cpu, &out, dtype).unwrap();
        drop(first);
        let mut second = VlSftTrainer::resume(&Cpu, &dir, data.clone()).unwrap();
        assert_eq!((second.state.step, second.freeze_vision), (3, freeze));
        while !second.done() {
            second.step(&Cpu).unwrap();
        }
        assert!(host(&Cpu, &straight.model.text.params) == host(&Cpu, &second.model.text.params));
        assert!(
            host(&Cpu, &straight.model.vision.params) == host(&Cpu, &second.model.vision.params)
        );
        // Other data is refused.
        let err = VlSftTrainer::<Cpu>::resume(&Cpu, &dir, data[1..].to_vec()).err().unwrap();
        assert!(format!("{err:#}").contains("other data"), "{err:#}");
    }
}
