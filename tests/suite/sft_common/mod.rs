//! Helpers of the SFT tests: a tiny model directory with the fixture tokenizer, and
//! synthetic conversation data.
#![allow(dead_code)]

use mmr1_fast::model::init::{init_params, Init};
use mmr1_fast::model::safetensors_io::write_model_files;
use mmr1_fast::model::safetensors_io::SaveDtype;
use mmr1_fast::model::{ParamLayout, Qwen2Config};
use std::path::{Path, PathBuf};

pub fn tokenizer_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer.json")
}

/// A 2-layer GQA config over the fixture tokenizer's 400 ids.
pub fn small_config(hidden: usize) -> Qwen2Config {
    serde_json::from_value(serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 400,
        "tie_word_embeddings": true, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 512, "bos_token_id": 397, "eos_token_id": 399
    }))
    .unwrap()
}

/// Writes a fresh Hugging Face directory (HF init) with the fixture tokenizer.
pub fn write_tiny_model(dir: &Path, hidden: usize, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = small_config(hidden);
    let layout = ParamLayout::new(&cfg);
    let host = init_params(&layout, Init::HuggingFace { std: 0.02 }, seed);
    write_model_files(dir, &cfg, &layout, &host, SaveDtype::F32, Some(&tokenizer_path())).unwrap();
}

/// A memorizable synthetic task: "reverse <word>" -> the word reversed, in the three
/// accepted JSONL forms in turn.
pub fn synthetic_jsonl(n: usize) -> String {
    let words = [
        "cat", "dog", "bird", "fish", "lion", "wolf", "bear", "frog", "crab", "duck", "goat",
        "mole",
    ];
    let mut s = String::new();
    for i in 0..n {
        let w = words[i % words.len()];
        let r: String = w.chars().rev().collect();
        let line = match i % 3 {
            0 => {
                serde_json::json!({"messages": [{"role": "user", "content": format!("reverse {w}")}, {"role": "assistant", "content": r}]})
            }
            1 => {
                serde_json::json!({"conversations": [{"from": "human", "value": format!("reverse {w}")}, {"from": "gpt", "value": r}], "images": []})
            }
            _ => serde_json::json!({"problem": format!("reverse {w}"), "solution": r}),
        };
        s.push_str(&line.to_string());
        s.push('\n');
    }
    s
}
