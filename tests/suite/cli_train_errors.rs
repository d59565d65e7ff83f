//! `train` refuses bad configurations and bad inputs with a message that names the key, file
//! or step, a non-zero exit, and no panic; a diverging run stops and says so.

use crate::common;
use std::process::{Command, Output};

fn train(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mmr1-fast")).arg("train").args(args).output().unwrap()
}

fn fails_with(o: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "should fail; stderr: {err}");
    assert!(!err.contains("panicked"), "must not panic: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr should name {n:?}: {err}");
    }
}

#[test]
fn bad_configs_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let toml = tmp.path().join("run.toml");
    std::fs::write(&toml, "[rl]\ngroup_sise = 8\n").unwrap();
    fails_with(&train(&["--config", toml.to_str().unwrap()]), &["run.toml", "group_sise"]);
    fails_with(&train(&["--set", "rl.group_size=1"]), &["rl.group_size"]);
    fails_with(
        &train(&["--set", "vas.lambda=1.5", "--set", "rl.batch_size=0"]),
        &["vas.lambda", "rl.batch_size"],
    );
    fails_with(&train(&["--set", "rl.nope=3"]), &["nope"]);
    fails_with(&train(&["--device", "gpu7"]), &["model.device"]);
    fails_with(
        &train(&["--resume", tmp.path().join("missing").to_str().unwrap()]),
        &["config.toml"],
    );
}

#[test]
fn bad_inputs_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    // Output "directory" that is a file: not writable as a directory.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    fails_with(&train(&["--out", file.to_str().unwrap()]), &["a-file"]);
    // A model directory that is not a Qwen2 model.
    let m = tmp.path().join("llama");
    std::fs::create_dir(&m).unwrap();
    std::fs::write(m.join("config.json"), r#"{"model_type": "llama", "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 10}"#).unwrap();
    std::fs::write(
        m.join("tokenizer.json"),
        std::fs::read(common::fixture("tokenizer.json")).unwrap(),
    )
    .unwrap();
    let items = tmp.path().join("rl.jsonl");
    std::fs::write(
        &items,
        "{\"problem\": \"1+1\", \"answer\": \"2\"}\n{\"problem\": \"no answer\"}\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    let (md, it, o) = (m.to_str().unwrap(), items.to_str().unwrap(), out.to_str().unwrap());
    // The item without an answer is named by its line first.
    fails_with(
        &train(&[
            "--out",
            o,
            "--set",
            &format!("model.dir={md}"),
            "--set",
            &format!("data.rl={it}"),
        ]),
        &["rl.jsonl:2", "answer"],
    );
    std::fs::write(
        &items,
        "{\"problem\": \"1+1\", \"answer\": \"2\"}\n{\"problem\": \"2+2\", \"answer\": \"4\"}\n",
    )
    .unwrap();
    fails_with(
        &train(&[
            "--out",
            o,
            "--set",
            &format!("model.dir={md}"),
            "--set",
            &format!("data.rl={it}"),
            "--set",
            "rl.batch_size=2",
            "--set",
            "rl.mini_batches=1",
        ]),
        &["config.json", "model_type"],
    );
    // Malformed JSONL: stop names the line; skip counts it.
    std::fs::write(&items, "{\"problem\": \"1+1\", \"answer\": \"2\"}\n{not json\n").unwrap();
    fails_with(
        &train(&[
            "--out",
            o,
            "--set",
            &format!("model.dir={md}"),
            "--set",
            &format!("data.rl={it}"),
        ]),
        &["rl.jsonl:2"],
    );
}

#[test]
fn a_diverging_run_stops_and_says_where() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    // A learning rate of 1e30 blows the weights up within a step or two of SFT.
    let o = train(&[
        "--out",
        out.to_str().unwrap(),
        "--set",
        "sft.lr=1e30",
        "--set",
        "rl.steps=0",
        "--set",
        "eval.max_items=4",
    ]);
    fails_with(&o, &["SFT step", "not finite"]);
}
