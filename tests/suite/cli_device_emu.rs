//! `--device emu` through the CLI: `logprobs` runs the CUDA kernels on the emulator and
//! matches the transformers goldens (`--precision f32`: 1e-4; `--precision bf16`, bf16 GEMM
//! operands and flash attention: 1e-2, the documented bf16 tolerance; MMR1_ATTENTION=flash
//! alone, bf16 attention in an f32 run: 1e-2). `generate` and `eval`-style commands share the
//! dispatch (`with_backend!`), so one command end to end proves the wiring.
#![cfg(feature = "emu")]

use crate::common;
use common::*;

/// Runs `logprobs --device emu` on a fixture's golden sequences; returns the worst relative
/// L2 error against the goldens at temperature 0.7.
fn emu_logprobs(name: &str, precision: &str, flash: bool) -> f64 {
    let dir = fixture(name);
    let g = Golden::open(&dir.join("golden.safetensors"));
    let seqs: Vec<Vec<u32>> = (0..3).map(|i| g.ids(&format!("tokens.{i}"))).collect();
    let tmp = tempfile::tempdir().unwrap();
    let toks = tmp.path().join("tokens.json");
    std::fs::write(&toks, serde_json::to_string(&seqs).unwrap()).unwrap();
    let out = tmp.path().join("lp.safetensors");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_mmr1-fast"))
        .args(["logprobs", "--model", dir.to_str().unwrap(), "--tokens", toks.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap(), "--temperature", "0.7", "--device", "emu"])
        .args(["--precision", precision])
        .envs(flash.then_some(("MMR1_ATTENTION", "flash")))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("CUDA emulator"), "did not say it runs on the emulator: {err}");
    assert!(err.contains(&format!("precision {precision}")), "did not say its precision: {err}");
    let got = Golden::open(&out);
    (0..3)
        .map(|i| rel_l2(&got.f32(&format!("logprobs.{i}")), &g.f32(&format!("logprobs_t07.{i}"))))
        .fold(0.0, f64::max)
}

#[test]
fn logprobs_on_the_emulator_match_transformers() {
    for name in ["tiny-tied", "tiny-gqa"] {
        let e = emu_logprobs(name, "f32", false);
        println!("ERR emu f32 logprobs {name}: {e:.3e}");
        assert!(e <= 1e-4, "{name}: rel L2 {e:.2e}");
        // tiny-tied has head dim 16: the flash kernels run (tiny-gqa's 10 falls back to the
        // f32 attention; its GEMMs are still bf16).
        let e = emu_logprobs(name, "bf16", false);
        println!("ERR emu bf16 logprobs {name}: {e:.3e}");
        assert!(e <= 1e-2, "{name} bf16: rel L2 {e:.2e}");
        assert!(e > 1e-6, "{name}: --precision bf16 gave the f32 numbers ({e:.1e})");
    }
    // The attention override alone: flash attention in an otherwise f32 run.
    let e = emu_logprobs("tiny-tied", "f32", true);
    println!("ERR emu f32 + flash logprobs tiny-tied: {e:.3e}");
    assert!(e <= 1e-2, "flash: rel L2 {e:.2e}");
}

#[test]
fn bf16_on_the_cpu_is_an_error_that_says_what_to_do() {
    let dir = fixture("tiny-tied");
    let e = cli_err(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "hi",
        "--device",
        "cpu",
        "--precision",
        "bf16",
    ]);
    assert!(e.contains("--precision f32") && e.contains("CPU"), "{e}");
    let e = cli_err(&["generate", "--model", "x", "--prompt", "hi", "--precision", "fp16"]);
    assert!(e.contains("auto, bf16 or f32"), "{e}");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let e = cli_err(&[
        "train",
        "--device",
        "cpu",
        "--precision",
        "bf16",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(e.contains("--precision f32"), "{e}");
    assert!(!out.join("metrics.jsonl").exists(), "refused before anything ran");
}

#[test]
fn unknown_attention_kernel_is_an_error() {
    let e =
        cli_err(&["logprobs", "--model", "x", "--tokens", "y", "--out", "z", "--device", "emu"]);
    assert!(!e.is_empty());
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_mmr1-fast"))
        .args(["generate", "--model", fixture("tiny-tied").to_str().unwrap(), "--prompt", "hi"])
        .args(["--device", "emu"])
        .env("MMR1_ATTENTION", "fast")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !err.contains("panicked"), "{err}");
    assert!(err.contains("MMR1_ATTENTION") && err.contains("flash"), "{err}");
    // The flash kernels' variant switches are read on the emulator too, and named when wrong.
    for (var, choice) in [("MMR1_FLASH_FWD", "wide"), ("MMR1_FLASH_IO", "bf16")] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_mmr1-fast"))
            .args(["generate", "--model", fixture("tiny-tied").to_str().unwrap(), "--prompt", "hi"])
            .args(["--device", "emu"])
            .env(var, "fast")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && !err.contains("panicked"), "{var}: {err}");
        assert!(err.contains(var) && err.contains(choice), "{var}: {err}");
    }
}

#[test]
fn unknown_device_names_the_choices() {
    let e = cli_err(&["generate", "--model", "x", "--prompt", "hi", "--device", "tpu"]);
    assert!(e.contains("emu") && e.contains("cuda:N"), "{e}");
}
