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

/// `standardize_rope_params` (transformers 5.24): for llama3 and YaRN a top-level
/// `original_max_position_embeddings` (Phi3's place for it) wins over the rope dict's, in
/// either spelling of the settings; linear does not read it. Found by comparing against
/// transformers on configs written both ways (the engine used the dict's value).
#[test]
fn a_top_level_original_max_position_embeddings_wins() {
    let freqs = |top: Option<u64>, rope: Value, key: &str| {
        config_with(|c| {
            c.insert("max_position_embeddings".into(), json!(512));
            if let Some(t) = top {
                c.insert("original_max_position_embeddings".into(), json!(t));
            }
            c.insert(key.into(), rope);
        })
        .unwrap()
        .rope_scaling()
        .unwrap()
        .unwrap()
    };
    let yarn = |orig: Option<u64>| {
        let mut r = json!({"rope_type": "yarn", "factor": 4.0});
        if let Some(o) = orig {
            r["original_max_position_embeddings"] = json!(o);
        }
        r
    };
    let llama3 = |orig: Option<u64>| {
        let mut r = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0});
        if let Some(o) = orig {
            r["original_max_position_embeddings"] = json!(o);
        }
        r
    };
    for make in [&yarn as &dyn Fn(Option<u64>) -> Value, &llama3] {
        for key in ["rope_parameters", "rope_scaling"] {
            let want = freqs(None, make(Some(64)), key);
            assert_eq!(freqs(Some(64), make(Some(16)), key), want, "{key}: the top level wins");
            assert_eq!(freqs(Some(64), make(None), key), want, "{key}: the top level alone");
            // Without either, max_position_embeddings; and the value matters at all.
            assert_eq!(freqs(None, make(None), key), freqs(None, make(Some(512)), key));
            assert_ne!(freqs(None, make(Some(16)), key).inv_freq, want.inv_freq, "{key}");
        }
    }
    let lin = json!({"rope_type": "linear", "factor": 2.0});
    assert_eq!(
        freqs(Some(64), lin.clone(), "rope_parameters"),
        freqs(None, lin, "rope_parameters")
    );
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
        // transformers 5's per-layer-type nesting: Qwen2 has one rotary embedding.
        (
            json!({"full_attention": {"rope_type": "linear", "factor": 2.0}}),
            "nested by layer type (\"full_attention\")",
        ),
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

/// Log-probs of `seq` under the model saved in `dir`, loaded as a user's command loads it.
fn logprobs_of_dir(dir: &std::path::Path, seq: &[u32]) -> (Qwen2<Cpu>, Vec<f32>) {
    let model: Qwen2<Cpu> = Qwen2::load(&Cpu, dir).unwrap();
    let batch = Packed::new(&[seq]);
    let mut acts = None;
    model.forward(&Cpu, &batch, &mut acts).unwrap();
    let (targets, _) = batch.next_token_targets();
    let lp = model.token_logprobs(&Cpu, acts.as_ref().unwrap(), &targets, 1.0).0;
    (model, lp)
}

/// Sets `tie_word_embeddings` in `dir/config.json`, leaving the weight files as they are.
fn set_tied(dir: &std::path::Path, tied: bool) {
    let path = dir.join("config.json");
    let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    c["tie_word_embeddings"] = json!(tied);
    std::fs::write(&path, serde_json::to_string_pretty(&c).unwrap()).unwrap();
}

/// A config that ties the head while the files hold an `lm_head.weight` of their own, as
/// transformers 5 loads it (`tie_weights` in `from_pretrained`): a head unlike the embedding
/// is used (not tied: the engine used the embedding, 1.5 relative L2 off transformers' logits
/// before), one equal to it is tied; a save of the untied model says so in its config.
#[test]
fn a_tied_config_beside_a_different_lm_head_loads_untied_as_transformers_does() {
    use mmr1_fast::model::safetensors_io::SaveDtype;
    let seq = random_ids(13, 40, 3);
    let tmp = tempfile::tempdir().unwrap();
    let (untied, wrong_flag) = (tmp.path().join("untied"), tmp.path().join("wrong_flag"));
    let m = random_model(tiny_config(40, false), 7);
    for d in [&untied, &wrong_flag] {
        m.save_pretrained(&Cpu, d, SaveDtype::F32).unwrap();
    }
    set_tied(&wrong_flag, true);
    let (want_model, want) = logprobs_of_dir(&untied, &seq);
    let (got_model, got) = logprobs_of_dir(&wrong_flag, &seq);
    assert!(!got_model.cfg.tie_word_embeddings && got_model.layout.lm_head.is_some());
    assert_eq!(got, want, "the file's head, not the embedding");
    let host = |m: &Qwen2<Cpu>| m.to_host(&Cpu);
    assert_eq!(host(&got_model), host(&want_model));
    // Saved again: the config now matches the files, for loaders that trust the flag (vLLM).
    let resaved = tmp.path().join("resaved");
    got_model.save_pretrained(&Cpu, &resaved, SaveDtype::F32).unwrap();
    let c: Value =
        serde_json::from_str(&std::fs::read_to_string(resaved.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(c["tie_word_embeddings"], json!(false));
    assert_eq!(logprobs_of_dir(&resaved, &seq).1, want);

    // A head equal to the embedding (`.bin` conversions store both): tied, the same numbers.
    let mut h = host(&m);
    let (embed, head) = (m.layout.embed, m.layout.lm_head.unwrap());
    h[head] = h[embed].clone();
    let equal = tmp.path().join("equal");
    Qwen2::from_host(&Cpu, m.cfg.clone(), m.layout.clone(), &h)
        .save_pretrained(&Cpu, &equal, SaveDtype::F32)
        .unwrap();
    let (_, untied_equal) = logprobs_of_dir(&equal, &seq);
    set_tied(&equal, true);
    let (tied_model, tied) = logprobs_of_dir(&equal, &seq);
    assert!(tied_model.cfg.tie_word_embeddings && tied_model.layout.lm_head.is_none());
    assert_eq!(tied, untied_equal);
    assert_ne!(tied, want, "the two heads differ: the test can tell them apart");
}

/// generation_config.json's `eos_token_id` ends a response too, as it ends transformers'
/// `generate` (a probe found the engine running past it); a checkpoint saved with its
/// tokenizer carries the file along, so the stop ids survive SFT.
#[test]
fn generation_config_eos_ids_are_stop_ids_and_travel_with_checkpoints() {
    use mmr1_fast::model::safetensors_io::{write_model_files, SaveDtype};
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let m = random_model(tiny_config(40, false), 2);
    m.save_pretrained(&Cpu, &src, SaveDtype::F32).unwrap();
    let load = || Qwen2Config::load(&src);
    assert_eq!(load().unwrap().eos_ids(), Vec::<u32>::new());
    std::fs::write(src.join("generation_config.json"), r#"{"eos_token_id": [7, 3]}"#).unwrap();
    assert_eq!(load().unwrap().eos_ids(), vec![7, 3]);
    let mut c: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    c["eos_token_id"] = json!(3);
    std::fs::write(src.join("config.json"), c.to_string()).unwrap();
    let cfg = load().unwrap();
    assert_eq!(cfg.eos_ids(), vec![3, 7], "config.json's first, then the rest");
    // Not written into config.json: transformers reads each file for its own fields.
    assert!(!serde_json::to_string(&cfg).unwrap().contains("generation_eos"));

    std::fs::copy(fixture("tokenizer.json"), src.join("tokenizer.json")).unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let tok = src.join("tokenizer.json");
    write_model_files(&out, &cfg, &m.layout, &m.to_host(&Cpu), SaveDtype::F32, Some(&tok)).unwrap();
    assert_eq!(Qwen2Config::load(&out).unwrap().eos_ids(), vec![3, 7]);

    std::fs::write(src.join("generation_config.json"), "{eos").unwrap();
    let e = format!("{:#}", load().unwrap_err());
    assert!(e.contains("generation_config.json") && e.contains("not valid JSON"), "{e}");
}
