//! Config settings of real Qwen2 checkpoints beyond the released base models: the rope
//! settings (where rope_theta is read from, which scaling types run and which are refused by
//! name), sliding-window attention (run where it equals full attention, refused past the
//! window) and a `head_dim` field; the scaled frequencies against transformers' own
//! (rope_frequencies.json). Whole scaled-RoPE models against transformers: golden_forward.rs
//! (this binary's root) and backward_golden.rs (fixtures tests/fixtures/tiny-rope).

use crate::common::*;
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::model::{Packed, Qwen2, Qwen2Config};
use serde_json::{json, Value};

/// `tiny_config` with `edit` applied to its JSON form, validated as `Qwen2Config::load` does.
fn config_with(
    edit: impl FnOnce(&mut serde_json::Map<String, Value>),
) -> anyhow::Result<Qwen2Config> {
    let mut v = serde_json::to_value(tiny_config(40, false)).unwrap();
    edit(v.as_object_mut().unwrap());
    let cfg: Qwen2Config = serde_json::from_value(v)?;
    cfg.validate()?;
    Ok(cfg)
}

fn err_of(r: anyhow::Result<Qwen2Config>) -> String {
    format!("{:#}", r.expect_err("the config should be refused"))
}

#[test]
fn rope_theta_is_read_where_transformers_reads_it() {
    // transformers 5: the rope dict's own rope_theta; the top level fills in when it has none.
    let cfg = config_with(|c| {
        c.insert("rope_theta".into(), json!(10_000.0));
        c.insert("rope_parameters".into(), json!({"rope_type": "default", "rope_theta": 1e6}));
    })
    .unwrap();
    assert_eq!(cfg.rope_theta(), 1e6);
    let cfg = config_with(|c| {
        c.insert("rope_theta".into(), json!(5e5));
        c.insert("rope_parameters".into(), json!({"rope_type": "default"}));
    })
    .unwrap();
    assert_eq!(cfg.rope_theta(), 5e5);
    // A non-empty legacy rope_scaling replaces rope_parameters whole (its theta included).
    let cfg = config_with(|c| {
        c.insert("rope_theta".into(), json!(2e4));
        c.insert("rope_parameters".into(), json!({"rope_type": "default", "rope_theta": 1e6}));
        c.insert("rope_scaling".into(), json!({"type": "linear", "factor": 2.0}));
    })
    .unwrap();
    assert_eq!(cfg.rope_theta(), 2e4);
    assert_eq!(cfg.rope_scaling().unwrap().unwrap().rope_type, "linear");
    // Null or empty rope_scaling is no scaling.
    for v in [Value::Null, json!({})] {
        let cfg = config_with(|c| {
            c.insert("rope_scaling".into(), v.clone());
        })
        .unwrap();
        assert!(cfg.rope_scaling().unwrap().is_none(), "{v}");
    }
}

#[test]
fn scaled_rope_frequencies_follow_their_definitions() {
    let hd = tiny_config(40, false).head_dim();
    let plain = mmr1_fast::backend::cpu::rope_inv_freq(hd, 10_000.0);
    let sc = |r: Value| {
        config_with(|c| {
            c.insert("rope_theta".into(), json!(10_000.0));
            c.insert("rope_scaling".into(), r);
        })
        .unwrap()
        .rope_scaling()
        .unwrap()
        .unwrap()
    };
    let lin = sc(json!({"type": "linear", "factor": 4.0}));
    for (a, b) in lin.inv_freq.iter().zip(&plain) {
        assert_eq!(*a, b / 4.0);
    }
    // YaRN: the fastest pair extrapolates (unchanged), the slowest interpolates (/ factor);
    // the attention factor is 0.1 ln(factor) + 1, or the one given.
    let y = sc(json!({"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 4096}));
    assert_eq!(y.inv_freq[0], plain[0]);
    let last = plain.len() - 1;
    assert!((y.inv_freq[last] / (plain[last] / 8.0) - 1.0).abs() < 1e-6);
    assert!((y.attention_factor - (0.1 * 8f32.ln() + 1.0)).abs() < 1e-6);
    let y = sc(json!({"type": "yarn", "factor": 8.0, "attention_factor": 1.25}));
    assert_eq!(y.attention_factor, 1.25);
}

/// transformers' own `ROPE_INIT_FUNCTIONS` on settings that reach every option
/// (tests/fixtures/rope_frequencies.json, scripts/make_golden_rope.py): YaRN's betas, truncate,
/// mscale pair, given attention factor, inferred factor, singular and clamped ramp ends;
/// llama3 with other frequency factors; linear.
#[test]
fn scaled_rope_frequencies_match_transformers() {
    let f: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("rope_frequencies.json")).unwrap())
            .unwrap();
    let cases = f["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 12);
    for (i, c) in cases.iter().enumerate() {
        let hd = c["head_dim"].as_u64().unwrap() as usize;
        let cfg = config_with(|m| {
            m.insert("hidden_size".into(), json!(hd * 4));
            m.insert("num_attention_heads".into(), json!(4));
            m.insert("num_key_value_heads".into(), json!(2));
            m.insert("max_position_embeddings".into(), c["max_position_embeddings"].clone());
            m.insert("rope_parameters".into(), c["rope_parameters"].clone());
        })
        .unwrap();
        let sc = cfg.rope_scaling().unwrap().expect("a scaled case");
        let want: Vec<f32> =
            c["inv_freq"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert_eq!(sc.inv_freq.len(), want.len(), "case {i}");
        for (j, (a, b)) in sc.inv_freq.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 2e-6 * b.abs(), "case {i} pair {j}: {a} vs {b}");
        }
        let af = c["attention_factor"].as_f64().unwrap() as f32;
        assert!(
            (sc.attention_factor - af).abs() <= 1e-6 * af,
            "case {i}: {} vs {af}",
            sc.attention_factor
        );
    }
}

#[test]
fn unsupported_rope_settings_are_refused_by_name() {
    for (r, want) in [
        (json!({"type": "dynamic", "factor": 2.0}), "\"dynamic\" is not supported"),
        (json!({"rope_type": "longrope", "short_factor": [1.0]}), "\"longrope\" is not supported"),
        (json!({"rope_type": "ntk-by-parts"}), "\"ntk-by-parts\" is not supported"),
        (json!({"type": "linear"}), "needs the field factor"),
        (json!({"type": "linear", "factor": "two"}), "factor"),
        (json!({"type": "linear", "factor": -1.0}), "must be positive"),
        (json!({"type": "linear", "factor": 0.0}), "must be positive"),
        (json!({"type": "yarn", "factor": 0.0}), "must be positive"),
        (
            json!({"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 0}),
            "must be positive",
        ),
        (json!({"type": "yarn", "factor": 2.0, "truncate": "no"}), "truncate"),
        (
            json!({"type": "llama3", "factor": 8.0, "low_freq_factor": 2.0, "high_freq_factor": 2.0,
                "original_max_position_embeddings": 64}),
            "both 2",
        ),
        (json!({"type": "llama3", "factor": 8.0, "high_freq_factor": 4.0}), "low_freq_factor"),
        (json!({"type": "default", "partial_rotary_factor": 0.5}), "partial_rotary_factor"),
        (json!({"type": 3}), "rope_type"),
    ] {
        let e = err_of(config_with(|c| {
            c.insert("rope_scaling".into(), r.clone());
        }));
        assert!(e.contains(want), "{r}: {e}");
        assert!(e.contains("rope"), "{r}: the error names the rope settings: {e}");
    }
}

#[test]
fn head_dim_field_must_match_the_heads() {
    let hd = tiny_config(40, false).head_dim();
    assert!(config_with(|c| {
        c.insert("head_dim".into(), json!(hd));
    })
    .is_ok());
    let e = err_of(config_with(|c| {
        c.insert("head_dim".into(), json!(hd * 2));
    }));
    assert!(e.contains("head_dim"), "{e}");
}

/// Log-probs of `seq` under `cfg` with the weights of seed 5 (the same for every config).
fn logprobs(cfg: Qwen2Config, seq: &[u32]) -> anyhow::Result<Vec<f32>> {
    let model: Qwen2<Cpu> = random_model(cfg, 5);
    let batch = Packed::new(&[seq]);
    let mut acts = None;
    model.forward(&Cpu, &batch, &mut acts)?;
    let (targets, _) = batch.next_token_targets();
    Ok(model.token_logprobs(&Cpu, acts.as_ref().unwrap(), &targets, 1.0).0)
}

#[test]
fn sliding_window_runs_within_the_window_and_is_refused_past_it() {
    let layers = tiny_config(40, false).num_hidden_layers;
    let sliding = |on: bool, types: Option<Value>| {
        config_with(|c| {
            c.insert("use_sliding_window".into(), json!(on));
            c.insert("sliding_window".into(), json!(8));
            c.insert("max_window_layers".into(), json!(layers - 1));
            if let Some(t) = types {
                c.insert("layer_types".into(), t);
            }
        })
        .unwrap()
    };
    assert_eq!(sliding(true, None).sliding_window().unwrap(), Some(8));
    assert_eq!(sliding(false, None).sliding_window().unwrap(), None);
    // layer_types decides over max_window_layers (transformers 5 writes it).
    let full = json!(vec!["full_attention"; layers]);
    assert_eq!(sliding(true, Some(full)).sliding_window().unwrap(), None);

    let plain = tiny_config(40, false);
    let seq = random_ids(8, 40, 9);
    // Within the window, windowed attention is full attention: the same bits.
    assert_eq!(
        logprobs(sliding(true, None), &seq).unwrap(),
        logprobs(plain.clone(), &seq).unwrap()
    );
    let long = random_ids(9, 40, 9);
    let e = format!("{:#}", logprobs(sliding(true, None), &long).unwrap_err());
    assert!(e.contains("sliding_window 8") && e.contains("9 tokens"), "{e}");
    // Without use_sliding_window the window is not in force (transformers sets it to None).
    assert!(logprobs(sliding(false, None), &long).is_ok());

    // Decoding checks the keys a step attends to (prefill 6, then 2 more pass, the 9th fails).
    let model = random_model(sliding(true, None), 5);
    let mut cache = model.new_cache(&Cpu, 1, 16);
    model.decode_step(&Cpu, &mut cache, &[(0, &long[..6])]).unwrap();
    model.decode_step(&Cpu, &mut cache, &[(0, &long[6..8])]).unwrap();
    let e = format!("{:#}", model.decode_step(&Cpu, &mut cache, &[(0, &long[8..9])]).unwrap_err());
    assert!(e.contains("sliding_window"), "{e}");
}
