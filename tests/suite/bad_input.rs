//! Bad model directories and token files give clear errors naming the file and the tensor
//! or field, a non-zero exit from the CLI, and never a panic.

use crate::common;
use common::*;
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::model::safetensors_io::SaveDtype;
use mmr1_fast::model::Qwen2;
use std::path::Path;
use std::process::Command;

fn saved_model(dir: &Path) {
    let m = random_model(tiny_config(40, false), 3);
    m.save_pretrained(&Cpu, dir, SaveDtype::F32).unwrap();
}

fn load_err(dir: &Path) -> String {
    match Qwen2::load(&Cpu, dir) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn round_trip_f32_and_bf16() {
    let tmp = tempfile::tempdir().unwrap();
    let m = random_model(tiny_config(40, false), 3);
    m.save_pretrained(&Cpu, tmp.path(), SaveDtype::F32).unwrap();
    let back = Qwen2::load(&Cpu, tmp.path()).unwrap();
    assert_eq!(back.params, m.params, "f32 round trip must be exact");
    m.save_pretrained(&Cpu, tmp.path(), SaveDtype::Bf16).unwrap();
    let back = Qwen2::load(&Cpu, tmp.path()).unwrap();
    let err = rel_l2(&back.params[1], &m.params[1]);
    assert!(err > 0.0 && err < 1e-2, "bf16 round trip error {err}");
}

#[test]
fn missing_or_malformed_config() {
    let tmp = tempfile::tempdir().unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("config.json"), "{e}");
    std::fs::write(tmp.path().join("config.json"), "{ not json").unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("config.json") && e.contains("not a valid Qwen2 config"), "{e}");
    std::fs::write(tmp.path().join("config.json"), r#"{"hidden_size": 64}"#).unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("intermediate_size"), "a missing field is named: {e}");
    saved_model(tmp.path());
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("config.json")).unwrap()).unwrap();
    cfg["num_key_value_heads"] = 4.into(); // 6 heads are not a multiple of 4
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("num_key_value_heads"), "{e}");
    cfg["num_key_value_heads"] = 2.into();
    cfg["model_type"] = "llama".into();
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("model_type"), "{e}");
}

#[test]
fn missing_wrong_shape_and_truncated_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    saved_model(tmp.path());
    // A config that implies a bigger intermediate size: every MLP tensor has the wrong shape.
    let path = tmp.path().join("config.json");
    let orig = std::fs::read_to_string(&path).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&orig).unwrap();
    cfg["intermediate_size"] = 70.into();
    std::fs::write(&path, cfg.to_string()).unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("model.layers.0.mlp.gate_proj.weight") && e.contains("shape"), "{e}");
    // Untied config over a file that lacks lm_head: the tensor is named as missing.
    cfg["intermediate_size"] = 67.into();
    cfg["num_hidden_layers"] = 3.into();
    std::fs::write(&path, cfg.to_string()).unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("model.layers.2.") && e.contains("missing"), "{e}");
    std::fs::write(&path, &orig).unwrap();
    // Truncated weights file.
    let wpath = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&wpath).unwrap();
    std::fs::write(&wpath, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("model.safetensors") && e.contains("not a valid safetensors"), "{e}");
    std::fs::remove_file(&wpath).unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("no model.safetensors"), "{e}");
}

#[test]
fn wrong_dtype_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    saved_model(tmp.path());
    let wpath = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&wpath).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    // Rewrite one tensor as int32: same byte size, unsupported dtype.
    let mut views = std::collections::BTreeMap::new();
    for (name, v) in st.tensors() {
        let dt = if name == "model.norm.weight" { safetensors::Dtype::I32 } else { v.dtype() };
        views.insert(
            name.clone(),
            safetensors::tensor::TensorView::new(dt, v.shape().to_vec(), v.data()).unwrap(),
        );
    }
    std::fs::write(&wpath, safetensors::serialize(views, None).unwrap()).unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("model.norm.weight") && e.contains("I32"), "{e}");
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mmr1-fast")).args(args).output().unwrap()
}

#[test]
fn cli_errors_exit_nonzero_without_panic() {
    let tmp = tempfile::tempdir().unwrap();
    saved_model(tmp.path());
    let model = tmp.path().to_str().unwrap();
    let toks = tmp.path().join("toks.json");
    let out = tmp.path().join("out.safetensors");
    std::fs::write(&toks, "[[1, 2, 3], [4, 40]]").unwrap();
    let o = cli(&[
        "logprobs",
        "--model",
        model,
        "--tokens",
        toks.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "out-of-range id must fail");
    assert!(
        err.contains("token id 40") && err.contains("sequence 1") && !err.contains("panicked"),
        "{err}"
    );
    std::fs::write(&toks, "[[1, 2], \"x\"]").unwrap();
    let o = cli(&[
        "logprobs",
        "--model",
        model,
        "--tokens",
        toks.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("toks.json") && !err.contains("panicked"), "{err}");
    let o = cli(&["generate", "--model", "/nonexistent/dir", "--prompt", "hi"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("/nonexistent/dir") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn f16_weights_load() {
    let tmp = tempfile::tempdir().unwrap();
    let m = random_model(tiny_config(40, false), 3);
    m.save_pretrained(&Cpu, tmp.path(), SaveDtype::F32).unwrap();
    let wpath = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&wpath).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let halves: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            let f = mmr1_fast::model::safetensors_io::to_f32(&v).unwrap();
            (
                name,
                v.shape().to_vec(),
                f.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: std::collections::BTreeMap<_, _> = halves
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F16, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    std::fs::write(&wpath, safetensors::serialize(views, None).unwrap()).unwrap();
    let back = Qwen2::load(&Cpu, tmp.path()).unwrap();
    for (a, b) in back.params.iter().zip(&m.params) {
        let e = rel_l2(a, b);
        assert!(e > 0.0 && e < 1e-3, "f16 round trip error {e}");
    }
}
