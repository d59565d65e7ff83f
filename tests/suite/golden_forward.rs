//! The CPU reference against Hugging Face `transformers` (fixtures made by
//! scripts/make_golden.py): full-forward logits and log-probs, KV-cache decode, and the
//! tokenizer, on a tied model (f32 on disk) and a GQA-4 model with odd sizes (bf16, sharded),
//! and on three scaled-RoPE models (scripts/make_golden_rope.py). Its submodules: config
//! settings of real checkpoints and chat templates (tests/suite/transformers_parity/).

use crate::common;
use common::*;
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::model::{Packed, Qwen2};
use mmr1_fast::tokenizer::Tokenizer;

// More of the same judge, in this test binary to spare CI a link of its own each: config
// settings of real checkpoints (rope, sliding windows, head_dim), and chat templates.
#[path = "transformers_parity/chat_template.rs"]
mod chat_template;
#[path = "transformers_parity/config_variants.rs"]
mod config_variants;

/// Relative L2 error allowed against transformers. Measured clean: <= 1.8e-6 (logits and
/// decode; log-probs <= 3.1e-7) on both fixtures; a 1% rope_theta error gives 1.7e-3.
const TOL: f64 = 1e-5;

fn sequences(g: &Golden) -> Vec<Vec<u32>> {
    (0..3).map(|i| g.ids(&format!("tokens.{i}"))).collect()
}

/// Log-probs (at `inv_temp`) and all logits of the packed sequences.
fn run(model: &Qwen2<Cpu>, seqs: &[Vec<u32>], inv_temp: f32) -> (Packed, Vec<f32>, Vec<f32>) {
    let batch = Packed::new(seqs);
    let mut acts = None;
    model.forward(&Cpu, &batch, &mut acts).unwrap();
    let acts = acts.unwrap();
    let (targets, _) = batch.next_token_targets();
    let (lp, _) = model.token_logprobs(&Cpu, &acts, &targets, inv_temp);
    let rows: Vec<usize> = (0..batch.tokens()).collect();
    let logits = model.logits_of_rows(&Cpu, &acts.xn_f, &rows);
    (batch, lp, logits)
}

fn check_model(name: &str) {
    let dir = fixture(name);
    let model = Qwen2::load(&Cpu, &dir).unwrap();
    let e = worst_error(name, &model);
    assert!(e <= TOL, "{name}: worst rel L2 {e:.2e} > {TOL:.0e}");
}

/// The largest relative L2 error of `model` over every golden log-prob and logit tensor.
fn worst_error(name: &str, model: &Qwen2<Cpu>) -> f64 {
    let dir = fixture(name);
    let g = Golden::open(&dir.join("golden.safetensors"));
    let v = model.cfg.vocab_size;
    let mut worst = 0f64;
    let seqs = sequences(&g);
    for (inv_temp, key) in [(1.0f32, "logprobs"), (1.0 / 0.7, "logprobs_t07")] {
        let (batch, lp, logits) = run(model, &seqs, inv_temp);
        for (i, sp) in batch.spans.iter().enumerate() {
            let want = g.f32(&format!("{key}.{i}"));
            let got = &lp[sp.q_start..sp.q_start + sp.q_len - 1];
            let e = rel_l2(got, &want);
            println!("ERR {name} {key}.{i}: {e:.2e}");
            worst = worst.max(e);
            let want = g.f32(&format!("logits.{i}"));
            let got = &logits[sp.q_start * v..(sp.q_start + sp.q_len) * v];
            let e = rel_l2(got, &want);
            println!("ERR {name} logits.{i}: {e:.2e}");
            worst = worst.max(e);
        }
    }
    worst
}

#[test]
fn tied_f32_model_matches_transformers() {
    check_model("tiny-tied");
}

#[test]
fn gqa_bf16_sharded_model_matches_transformers() {
    check_model("tiny-gqa");
}

/// Scaled RoPE from the config (scripts/make_golden_rope.py): `rope_parameters` linear and
/// llama3 as transformers 5 writes them, and YaRN in the older `rope_scaling` spelling that
/// Qwen2.5's long-context instructions give (its attention factor included).
#[test]
fn scaled_rope_models_match_transformers() {
    for name in ROPE_FIXTURES {
        check_model(name);
    }
}

#[test]
fn kv_cache_decode_matches_transformers() {
    for name in ["tiny-tied", "tiny-gqa"].into_iter().chain(ROPE_FIXTURES) {
        let dir = fixture(name);
        let g = Golden::open(&dir.join("golden.safetensors"));
        let model = Qwen2::load(&Cpu, &dir).unwrap();
        let v = model.cfg.vocab_size;
        let seqs = sequences(&g);
        let cap = seqs.iter().map(Vec::len).max().unwrap();
        let mut cache = model.new_cache(&Cpu, seqs.len(), cap);
        let want: Vec<Vec<f32>> = (0..seqs.len()).map(|i| g.f32(&format!("logits.{i}"))).collect();
        // Prefill two tokens, then one at a time; all sequences decode together.
        let mut pos = vec![0usize; seqs.len()];
        loop {
            let inputs: Vec<(usize, &[u32])> = (0..seqs.len())
                .filter(|&s| pos[s] < seqs[s].len())
                .map(|s| (s, &seqs[s][pos[s]..pos[s] + if pos[s] == 0 { 2 } else { 1 }]))
                .collect();
            if inputs.is_empty() {
                break;
            }
            let logits = model.decode_step(&Cpu, &mut cache, &inputs).unwrap();
            for (j, &(s, toks)) in inputs.iter().enumerate() {
                pos[s] += toks.len();
                let r = pos[s] - 1;
                let e = rel_l2(&logits[j * v..(j + 1) * v], &want[s][r * v..(r + 1) * v]);
                assert!(e <= TOL, "{name} seq {s} position {r}: rel L2 {e:.2e}");
            }
        }
    }
}

/// The fixtures and the tolerance are sensitive: plausible small bugs fail `check_model`'s
/// bound (a 1% rope_theta error by 170x, the wrong base or rms_norm_eps by 1000x and more).
#[test]
fn broken_variants_fail_the_golden_test() {
    for (theta, factor) in [(10_100.0, 30.0), (1e6, 1000.0)] {
        let mut model = Qwen2::load(&Cpu, &fixture("tiny-tied")).unwrap();
        model.cfg.rope_parameters = None;
        model.cfg.rope_theta = Some(theta);
        let e = worst_error("tiny-tied", &model);
        println!("BROKEN rope_theta {theta}: {e:.2e}");
        assert!(e > factor * TOL, "rope_theta {theta} instead of 1e4 only reached {e:.2e}");
    }
    // And a wrong rms_norm_eps (1e-5 -> 1e-3).
    let mut model = Qwen2::load(&Cpu, &fixture("tiny-gqa")).unwrap();
    model.cfg.rms_norm_eps = 1e-3;
    let e = worst_error("tiny-gqa", &model);
    println!("BROKEN rms_norm_eps: {e:.2e}");
    assert!(e > 3.0 * TOL, "rms_norm_eps 1e-3 only reached {e:.2e}");
    // And YaRN without its attention factor, YaRN from another original length, linear in
    // YaRN's place: each misses.
    for (edit, label) in [
        (
            serde_json::json!({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                            "attention_factor": 1.0}),
            "no attention factor",
        ),
        (
            serde_json::json!({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}),
            "another original length",
        ),
        (serde_json::json!({"type": "linear", "factor": 4.0}), "linear instead"),
    ] {
        let mut model = Qwen2::load(&Cpu, &fixture("tiny-rope/yarn")).unwrap();
        model.cfg.extra.insert("rope_scaling".into(), edit);
        let e = worst_error("tiny-rope/yarn", &model);
        println!("BROKEN yarn, {label}: {e:.2e}");
        assert!(e > 100.0 * TOL, "yarn with {label} only reached {e:.2e}");
    }
}

#[test]
fn tokenizer_matches_python() {
    let tok = Tokenizer::from_file(&fixture("tokenizer.json")).unwrap();
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture("tokenizer_cases.json")).unwrap())
            .unwrap();
    assert!(cases.len() >= 8);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> =
            c["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(text).unwrap(), want, "ids of {text:?}");
        assert_eq!(tok.decode(&want, true).unwrap(), text, "decode of {text:?}");
    }
}

#[test]
fn chat_template_tokens_match_python() {
    // Sequence 0 of tiny-tied is transformers' encoding of a one-turn chat.
    let dir = fixture("tiny-tied");
    let g = Golden::open(&dir.join("golden.safetensors"));
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let text = "<|im_start|>user\nHi<|im_end|>\n";
    assert_eq!(tok.encode(text).unwrap(), g.ids("tokens.0"));
}
