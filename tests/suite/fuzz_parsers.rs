//! Bounded fuzzing (proptest) of the parsers that read what users and other programs write:
//! safetensors headers, JSONL item files, and the run configuration (TOML and --set). Each
//! must answer any input with a value or an error, never a panic, and what it accepts must be
//! consistent (counted lines, configurations that round-trip). Case counts are small so the
//! suite runs in seconds.

use crate::common;
use mmr1_fast::data::jsonl::BadLines;
use mmr1_fast::data::rl_items::load_rl_items;
use mmr1_fast::model::safetensors_io::load_params;
use mmr1_fast::model::{ParamLayout, Qwen2Config};
use mmr1_fast::pipeline::config::TrainConfig;
use proptest::prelude::*;
use std::path::Path;

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig { cases: n, failure_persistence: None, ..ProptestConfig::default() }
}

/// A model directory whose single weight file is `bytes`, with the fixture's config.
fn model_dir_with(dir: &Path, bytes: &[u8]) -> ParamLayout {
    let cfg_text = std::fs::read(common::fixture("tiny-gqa/config.json")).unwrap();
    std::fs::write(dir.join("config.json"), cfg_text).unwrap();
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    ParamLayout::new(&Qwen2Config::load(dir).unwrap())
}

/// A header as JSON text, with tensors whose fields are drawn at random (names, dtypes,
/// shapes and offsets that may or may not fit the data).
fn header_strategy() -> impl Strategy<Value = String> {
    let dtype = prop::sample::select(vec!["F32", "F16", "BF16", "I64", "F64", "X"]);
    let tensor = (
        prop::sample::select(vec!["model.norm.weight", "lm_head.weight", "a", ""]),
        dtype,
        prop::collection::vec(0usize..100, 0..3),
        (0u64..5000, 0u64..5000),
    );
    prop::collection::vec(tensor, 0..4).prop_map(|ts| {
        let mut m = serde_json::Map::new();
        for (name, dt, shape, (a, b)) in ts {
            m.insert(
                name.to_string(),
                serde_json::json!({"dtype": dt, "shape": shape, "data_offsets": [a, b]}),
            );
        }
        serde_json::Value::Object(m).to_string()
    })
}

proptest! {
    #![proptest_config(cases(48))]

    #[test]
    fn safetensors_header_parser_never_panics(
        header in header_strategy(),
        lie in prop::option::of(any::<u64>()),
        data in prop::collection::vec(any::<u8>(), 0..600),
        cut in any::<prop::sample::Index>(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let len = lie.unwrap_or(header.len() as u64);
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&data);
        let cut = cut.index(bytes.len() + 1);
        let layout = model_dir_with(tmp.path(), &bytes[..cut]);
        // Never a whole model, so always an error; it must name the directory or the file.
        let e = load_params(tmp.path(), &layout).unwrap_err();
        let msg = format!("{e:#}");
        prop_assert!(msg.contains(tmp.path().to_str().unwrap()), "{}", msg);
    }

    #[test]
    fn jsonl_reader_counts_every_line_and_never_panics(
        lines in prop::collection::vec(
            prop_oneof![
                Just(br#"{"problem": "1+1", "answer": "2"}"#.to_vec()),
                Just(br#"{"problem": "x", "answer": ""}"#.to_vec()),
                Just(b"\xEF\xBB\xBF{\"problem\": 1}".to_vec()),
                // A file opening with [ is read as a JSON array: its scanner is fuzzed too.
                Just(b"[".to_vec()),
                Just(b"],".to_vec()),
                prop::collection::vec(any::<u8>(), 0..40)
                    .prop_filter("no newline inside a line", |l| !l.contains(&b'\n')),
            ],
            0..12,
        ),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("items.jsonl");
        std::fs::write(&p, lines.join(&b'\n')).unwrap();
        let blank = |l: &Vec<u8>| std::str::from_utf8(l).is_ok_and(|s| s.trim().is_empty());
        let non_blank = lines.iter().filter(|l| !blank(l)).count();
        match load_rl_items(&p, BadLines::Skip) {
            // Every non-blank line is an item or a skipped line; a bad line with skip is
            // never an error (an empty result is: the file has no items).
            Ok(items) => prop_assert!(items.len() <= non_blank),
            Err(e) => {
                let m = format!("{e:#}");
                prop_assert!(m.contains("items.jsonl"), "{}", m);
            }
        }
        if let Err(e) = load_rl_items(&p, BadLines::Stop) {
            let m = format!("{e:#}");
            prop_assert!(m.contains("items.jsonl"), "{}", m);
        }
    }

    #[test]
    fn config_parsers_never_panic_and_what_validates_round_trips(
        key in prop::sample::select(vec![
            "seed", "sft.lr", "sft.grad_clip", "sft.min_lr_ratio", "sft.epochs", "rl.lr",
            "rl.group_size", "rl.top_p", "rl.dual_clip", "rl.grad_clip", "vas.lambda",
            "vas.alpha", "eval.temperature", "output.save_dtype", "model.device",
            "data.bad_lines", "rl.nope", "nosection.x", "sft",
        ]),
        value in prop_oneof![
            prop::sample::select(vec![
                "nan", "inf", "-inf", "-1", "0", "1e-5", "2", "1e40", "\"bf16\"", "\"F32\"",
                "cuda:3", "\"skip\"", "true", "[1, 2]", "{a = 1}", "",
            ]).prop_map(String::from),
            "[ -~]{0,12}",
            any::<f64>().prop_map(|x| format!("{x:?}")),
        ],
        toml_text in "[ -~\n]{0,60}",
    ) {
        let mut c = TrainConfig::default();
        if c.apply_overrides(&[format!("{key}={value}")]).is_ok() && c.validate().is_ok() {
            let back: TrainConfig = toml::from_str(&c.to_toml()).unwrap();
            prop_assert_eq!(back, c);
        }
        if let Ok(c) = toml::from_str::<TrainConfig>(&toml_text) {
            if c.validate().is_ok() {
                let back: TrainConfig = toml::from_str(&c.to_toml()).unwrap();
                prop_assert_eq!(back, c);
            }
        }
    }
}
