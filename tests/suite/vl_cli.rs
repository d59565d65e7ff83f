//! `logprobs` and `generate` with `--image` on a Qwen2.5-VL checkpoint (tests/fixtures/tiny-vl,
//! scripts/make_golden_vl.py): images read from PNG/WebP files and preprocessed, placeholders
//! expanded as transformers' Qwen2_5_VLProcessor does, against transformers' log-probs
//! (vl_logits.safetensors) and greedy generation (generate.safetensors); and the errors.

use crate::common;

use common::{cli, cli_err, cli_ok, fixture, rel_l2, Golden};
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::model::vl_forward::VlModel;
use mmr1_fast::model::vl_prompt::VlImages;
use mmr1_fast::rl::rollout::{generate, SamplingParams};
use mmr1_fast::rl::vl_rollout::generate_vl;
use mmr1_fast::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

const IMAGE: u32 = 410;

fn img(name: &str) -> String {
    fixture("tiny-vl/images").join(name).to_str().unwrap().to_string()
}

/// The golden sequence with each image's placeholder run collapsed to one `<|image_pad|>`, as
/// a user writes it.
fn collapsed(ids: &[u32]) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    for &t in ids {
        if !(t == IMAGE && out.last() == Some(&IMAGE)) {
            out.push(t);
        }
    }
    out
}

fn write_tokens(dir: &Path, seqs: &[Vec<u32>]) -> String {
    let p = dir.join("tokens.json");
    std::fs::write(&p, serde_json::to_string(seqs).unwrap()).unwrap();
    p.to_str().unwrap().to_string()
}

/// `logprobs --image A --image B` on the collapsed golden sequence (transformers ran img0.png
/// then img2.webp); returns (rel L2 of logprobs.0 against transformers, its length).
fn logprobs_vs_golden(device: &str, images: [&str; 2]) -> (f64, usize) {
    let g = Golden::open(&fixture("tiny-vl/vl_logits.safetensors"));
    let ids = g.ids("input_ids");
    let dir = tempfile::tempdir().unwrap();
    let tokens = write_tokens(dir.path(), &[collapsed(&ids)]);
    let out = dir.path().join("lp.safetensors");
    let model = fixture("tiny-vl");
    cli_ok(&[
        "logprobs",
        "--model",
        model.to_str().unwrap(),
        "--tokens",
        &tokens,
        "--image",
        &img(images[0]),
        "--image",
        &img(images[1]),
        "--out",
        out.to_str().unwrap(),
        "--device",
        device,
        "--precision",
        "f32",
    ]);
    let got = Golden::open(&out).f32("logprobs.0");
    let want = g.f32("logprobs");
    assert_eq!(got.len(), ids.len() - 1, "placeholders expanded to the golden's total length");
    let e = rel_l2(&got, &want);
    println!("{device}: logprobs rel L2 vs transformers {e:.3e}");
    (e, got.len())
}

#[test]
fn cpu_logprobs_with_images_match_transformers() {
    let (e, _) = logprobs_vs_golden("cpu", ["img0.png", "img2.webp"]);
    assert!(e < 1e-5, "rel L2 {e:.2e}");
    // The images fill the placeholders in the order given: swapped, the log-probs move.
    let (e, _) = logprobs_vs_golden("cpu", ["img2.webp", "img0.png"]);
    assert!(e > 1e-2, "image order makes no difference: rel L2 {e:.2e}");
}

#[cfg(feature = "emu")]
#[test]
fn emu_logprobs_with_images_match_transformers() {
    let (e, _) = logprobs_vs_golden("emu", ["img0.png", "img2.webp"]);
    assert!(e < 1e-5, "rel L2 {e:.2e}");
}

/// Without images a VL checkpoint runs as text: the tokens before the first image give the
/// golden's first log-probs (the causal prefix, text positions 0..3 on all M-RoPE axes).
#[test]
fn vl_checkpoint_without_images_runs_as_text() {
    let g = Golden::open(&fixture("tiny-vl/vl_logits.safetensors"));
    let ids = g.ids("input_ids");
    let first = ids.iter().position(|&t| t == IMAGE).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tokens = write_tokens(dir.path(), &[ids[..first].to_vec()]);
    let out = dir.path().join("lp.safetensors");
    let model = fixture("tiny-vl");
    let args = ["logprobs", "--model", model.to_str().unwrap(), "--tokens", &tokens];
    cli_ok(&[&args[..], &["--out", out.to_str().unwrap(), "--device", "cpu"]].concat());
    let got = Golden::open(&out).f32("logprobs.0");
    let want = &g.f32("logprobs")[..first - 1];
    let e = rel_l2(&got, want);
    assert!(e < 1e-5, "rel L2 {e:.2e}");
}

#[test]
fn logprobs_image_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let vl = fixture("tiny-vl");
    let vl = vl.to_str().unwrap();
    let out = dir.path().join("lp.safetensors");
    let out = out.to_str().unwrap();
    let one = write_tokens(dir.path(), &[vec![3, 408, IMAGE, 409, 5]]);
    // A text-only checkpoint refuses images.
    let text = fixture("tiny-tied");
    let err = cli_err(&[
        "logprobs",
        "--model",
        text.to_str().unwrap(),
        "--tokens",
        &one,
        "--image",
        &img("img0.png"),
        "--out",
        out,
    ]);
    assert!(err.contains("not a vision-language checkpoint"), "{err}");
    // A missing image file is named.
    let missing = dir.path().join("nope.png");
    let args = ["logprobs", "--model", vl, "--tokens", &one, "--out", out, "--device", "cpu"];
    let err = cli_err(&[&args[..], &["--image", missing.to_str().unwrap()]].concat());
    assert!(err.contains("nope.png"), "{err}");
    // Not an image.
    let err = cli_err(&[&args[..], &["--image", &one]].concat());
    assert!(err.contains("tokens.json"), "{err}");
    // More images than placeholders, and placeholders without images.
    let err =
        cli_err(&[&args[..], &["--image", &img("img0.png"), "--image", &img("img1.png")]].concat());
    assert!(err.contains("1 image placeholder(s)") && err.contains("2 image(s)"), "{err}");
    let err = cli_err(&args);
    assert!(err.contains("0 image(s)") || err.contains("no pixel"), "{err}");
}

fn golden_generation() -> (Vec<u32>, Vec<u32>) {
    let g = Golden::open(&fixture("tiny-vl/generate.safetensors"));
    (g.ids("prompt_ids"), g.ids("tokens"))
}

fn greedy(n: usize) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        max_new_tokens: n,
        stop_ids: vec![397, 399],
        ..SamplingParams::default()
    }
}

/// The KV-cache generation with an image gives transformers' greedy tokens for the prompt the
/// processor built.
#[test]
fn generate_vl_matches_transformers_greedy() {
    let (prompt, want) = golden_generation();
    let m = VlModel::load(&Cpu, &fixture("tiny-vl")).unwrap();
    let imgs =
        VlImages::load(&[PathBuf::from(img("img0.png"))], &fixture("tiny-vl"), &m.cfg.vision)
            .unwrap();
    let r = generate_vl(&m, &Cpu, &prompt, &imgs.grids, Some(&imgs.pixels), &greedy(8), 0).unwrap();
    assert_eq!(r.tokens, want);
}

/// Without images the VL generation is the text model's (same seed mixing, same tokens).
#[test]
fn generate_vl_without_images_equals_text_generation() {
    let m = VlModel::load(&Cpu, &fixture("tiny-vl")).unwrap();
    let prompt: Vec<u32> = vec![398, 371, 198, 39, 72, 399, 198, 398, 100];
    let p = SamplingParams { temperature: 0.9, max_new_tokens: 6, ..SamplingParams::default() };
    let vl = generate_vl(&m, &Cpu, &prompt, &[], None, &p, 11).unwrap();
    let text = generate(&m.text, &Cpu, &[prompt], 1, &p, 11, None, |_| {}).unwrap();
    assert_eq!(vl.tokens, text[0].tokens);
}

/// `generate --image`: the chat template with the image block before the text, the processor's
/// expansion, then greedy decoding print transformers' tokens.
#[test]
fn generate_cli_with_image_prints_transformers_tokens() {
    let (_, want) = golden_generation();
    let tok = Tokenizer::from_dir(&fixture("tiny-vl")).unwrap();
    let want_text = tok.decode(&want, false).unwrap();
    let model = fixture("tiny-vl");
    for device in ["cpu", "emu"] {
        if device == "emu" && !cfg!(feature = "emu") {
            continue;
        }
        let o = cli(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--image",
            &img("img0.png"),
            "--prompt",
            "Describe it.",
            "--max-new-tokens",
            "8",
            "--device",
            device,
            "--precision",
            "f32",
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{device}: {err}");
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim_end_matches('\n'),
            want_text,
            "{device}"
        );
        assert!(err.contains("[8 tokens"), "{device}: {err}");
    }
    // A text-only checkpoint with --image is an error.
    let text = fixture("tiny-tied");
    let err = cli_err(&[
        "generate",
        "--model",
        text.to_str().unwrap(),
        "--image",
        &img("img0.png"),
        "--prompt",
        "hi",
    ]);
    assert!(err.contains("not a vision-language checkpoint"), "{err}");
}

/// `eval` of a Qwen2.5-VL checkpoint reads `image` / `images` relative to the JSONL file; an
/// item's response is what `generate` gives for the same prompt.
#[test]
fn eval_reads_image_items_relative_to_the_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("imgs")).unwrap();
    std::fs::copy(img("img0.png"), dir.path().join("imgs/a.png")).unwrap();
    std::fs::copy(img("img2.webp"), dir.path().join("imgs/b.webp")).unwrap();
    let data = common::write_lines(
        dir.path(),
        "items.jsonl",
        &[
            r#"{"id": "one", "problem": "Describe it.", "answer": "4", "image": "imgs/a.png"}"#,
            r#"{"id": "two", "problem": "<image> or <image>?", "answer": "5", "images": ["imgs/a.png", "imgs/b.webp"]}"#,
            r#"{"id": "text", "problem": "hi", "answer": "1"}"#,
        ],
    );
    let out = dir.path().join("res.jsonl");
    let model = fixture("tiny-vl");
    let model = model.to_str().unwrap();
    let common_args = ["--max-new-tokens", "8", "--device", "cpu"];
    let args = ["eval", "--model", model, "--data", &data, "--prompt-style", "plain"];
    let so = cli_ok(&[&args[..], &common_args, &["--out", out.to_str().unwrap()]].concat());
    assert!(so.contains("3 items x 1 responses"), "{so}");
    let res = common::read_lines(&out);
    assert_eq!(res.len(), 3);
    let raw = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe it.<|im_end|>\n<|im_start|>assistant\n";
    let gen = ["generate", "--model", model, "--raw", "--prompt", raw, "--image", &img("img0.png")];
    let want = cli_ok(&[&gen[..], &common_args].concat());
    assert!(!want.trim().is_empty(), "an empty response compares nothing");
    assert_eq!(res[0]["responses"][0].as_str().unwrap(), want.trim_end_matches('\n'));
    // Two images in one item, <image> markers in place: a different prompt, its own response.
    assert_eq!(res[1]["id"], "two");

    // A missing image names its line; markers must match the images.
    let bad = common::write_lines(
        dir.path(),
        "bad.jsonl",
        &[
            r#"{"problem": "x", "answer": "1", "image": "imgs/a.png"}"#,
            r#"{"problem": "y", "answer": "2", "images": ["imgs/a.png", "imgs/gone.png"]}"#,
        ],
    );
    let err = cli_err(&["eval", "--model", model, "--data", &bad, "--device", "cpu"]);
    assert!(err.contains("bad.jsonl:2") && err.contains("gone.png"), "{err}");
    let marks = common::write_lines(
        dir.path(),
        "marks.jsonl",
        &[r#"{"id": "m", "problem": "<image><image>", "answer": "1", "image": "imgs/a.png"}"#],
    );
    let err = cli_err(&[&["eval", "--model", model, "--data", &marks][..], &common_args].concat());
    assert!(err.contains("\"m\"") && err.contains("2 <image> marker(s)"), "{err}");
    // A text-only checkpoint refuses image items.
    let text = fixture("tiny-tied");
    let err = cli_err(&["eval", "--model", text.to_str().unwrap(), "--data", &data]);
    assert!(err.contains("items.jsonl:1") && err.contains("text-only"), "{err}");
}

/// `score` of a Qwen2.5-VL checkpoint on items with images: N rollouts per item through
/// `rl::vl_rollout` (the same tokens as `sample_and_grade_vl` called directly with the same
/// seed), scored as `score --from-rollouts` scores the written rollouts; the images reach the
/// model (swapping the two images of an item changes its rollouts). A text checkpoint refuses.
#[test]
fn score_reads_image_items_and_scores_vl_rollouts() {
    use mmr1_fast::data::jsonl::BadLines;
    use mmr1_fast::data::prompt::PromptStyle;
    use mmr1_fast::data::rl_items::load_rl_items_with_images;
    use mmr1_fast::rl::graded::GradeParams;
    use mmr1_fast::rl::reward::RewardConfig;
    use mmr1_fast::rl::vl_rollout::sample_and_grade_vl;

    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(img("img0.png"), dir.path().join("a.png")).unwrap();
    std::fs::copy(img("img2.webp"), dir.path().join("b.webp")).unwrap();
    let items = [
        r#"{"id": "one", "problem": "Describe it.", "answer": "4", "image": "a.png"}"#,
        r#"{"id": "two", "problem": "<image> or <image>?", "answer": "5", "images": ["a.png", "b.webp"]}"#,
        r#"{"id": "swapped", "problem": "<image> or <image>?", "answer": "5", "images": ["b.webp", "a.png"]}"#,
    ];
    let data = common::write_lines(dir.path(), "items.jsonl", &items);
    let (out, ro) = (dir.path().join("s.jsonl"), dir.path().join("r.jsonl"));
    let model = fixture("tiny-vl");
    let m = model.to_str().unwrap();
    #[rustfmt::skip]
    let so = cli_ok(&[
        "score", "--model", m, "--data", &data, "--out", out.to_str().unwrap(),
        "--rollouts-out", ro.to_str().unwrap(), "--rollouts-per-item", "4", "--temperature", "1.0",
        "--max-new-tokens", "6", "--seed", "7", "--prompt-style", "plain", "--device", "cpu",
    ]);
    assert!(so.contains("3 items, 12 rollouts"), "{so}");
    let scores = common::read_lines(&out);
    let rollouts = common::read_lines(&ro);
    assert_eq!(scores.iter().map(|s| s["n"].as_u64().unwrap()).collect::<Vec<_>>(), [4, 4, 4]);

    // The same rollouts from the library call.
    let vl = VlModel::load(&Cpu, &model).unwrap();
    let tok = Tokenizer::from_dir(&model).unwrap();
    let its = load_rl_items_with_images(Path::new(&data), BadLines::Stop).unwrap();
    let params = GradeParams {
        sampling: SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: 6,
            stop_ids: vec![],
            stop_strings: vec![],
            kv_slots: 0,
        },
        per_item: 4,
        prompt_style: PromptStyle::Plain,
        batch_items: 8,
        seed: 7,
        reward: RewardConfig::default(),
    };
    let graded = sample_and_grade_vl(&vl, &model, &Cpu, &tok, &its, &params, |_| {}).unwrap();
    let want: Vec<Vec<u32>> = graded.iter().flatten().map(|r| r.tokens.clone()).collect();
    let got: Vec<Vec<u32>> =
        rollouts.iter().map(|r| serde_json::from_value(r["tokens"].clone()).unwrap()).collect();
    assert_eq!(got, want);
    assert_ne!(got[4..8], got[8..12], "swapping the images changed nothing");

    // Re-scoring the written rollouts gives the same scores.
    let again = dir.path().join("s2.jsonl");
    cli_ok(&[
        "score",
        "--from-rollouts",
        ro.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert_eq!(common::read_lines(&again), scores);

    // A text-only checkpoint refuses image items, naming the line.
    let text = fixture("tiny-tied");
    let err = cli_err(&[
        "score",
        "--model",
        text.to_str().unwrap(),
        "--data",
        &data,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("items.jsonl:1") && err.contains("text-only"), "{err}");
}
