//! Hostile inputs, kept as a permanent suite: absurd settings, lying and truncated safetensors
//! headers, malformed JSONL and TOML, concurrent runs, runs killed mid-checkpoint, diverging
//! runs. Each must end with a clear message (naming the key, flag, file or line), a non-zero
//! exit, no panic and nothing lost; runs that resume must log every record exactly once.
//!
//! Training runs use the demo's tiny model on a few examples, so each takes seconds.

use crate::common;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mmr1-fast"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A clear refusal: exit code 1 (not a panic's 101 or an abort's 134), the needles named.
fn fails_with(o: &Output, needles: &[&str]) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "should fail with exit 1; stderr: {err}");
    assert!(!err.contains("panicked"), "must not panic: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr should name {n:?}: {err}");
    }
    err
}

fn succeeds(o: &Output) -> String {
    let err = stderr(o);
    assert!(o.status.success(), "should succeed; stderr: {err}");
    err
}

/// The demo's model, a few SFT examples, RL and eval items, and a config pointing at them
/// (made once, by materializing the demo with nothing to train).
struct Tiny {
    config: PathBuf,
    model: PathBuf,
    sft: PathBuf,
}

fn tiny() -> &'static Tiny {
    static T: OnceLock<Tiny> = OnceLock::new();
    T.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let base = dir.join("base");
        succeeds(&run(&[
            "train",
            "--out",
            base.to_str().unwrap(),
            "--set",
            "sft.epochs=0",
            "--set",
            "rl.steps=0",
            "--set",
            "eval.max_items=1",
        ]));
        let head = |name: &str, n: usize| -> PathBuf {
            let text = std::fs::read_to_string(base.join("demo").join(name)).unwrap();
            let p = dir.join(name);
            let lines: Vec<&str> = text.lines().take(n).collect();
            std::fs::write(&p, lines.join("\n") + "\n").unwrap();
            p
        };
        let (sft, rl, eval) = (head("sft.jsonl", 20), head("rl.jsonl", 8), head("eval.jsonl", 3));
        let mut cfg: toml::Table =
            toml::from_str(&std::fs::read_to_string(base.join("config.toml")).unwrap()).unwrap();
        let set = |cfg: &mut toml::Table, sec: &str, key: &str, v: toml::Value| {
            cfg.get_mut(sec).unwrap().as_table_mut().unwrap().insert(key.into(), v);
        };
        let s = |p: &Path| toml::Value::String(p.to_str().unwrap().into());
        set(&mut cfg, "data", "sft", s(&sft));
        set(&mut cfg, "data", "rl", s(&rl));
        set(&mut cfg, "data", "eval", s(&eval));
        set(&mut cfg, "sft", "epochs", 1.into());
        set(&mut cfg, "sft", "batch_size", 4.into());
        set(&mut cfg, "rl", "steps", 3.into());
        set(&mut cfg, "rl", "batch_size", 4.into());
        set(&mut cfg, "rl", "group_size", 2.into());
        set(&mut cfg, "rl", "max_new_tokens", 24.into());
        set(&mut cfg, "vas", "initial_scoring", false.into());
        set(&mut cfg, "vas", "t_update", 2.into());
        set(&mut cfg, "output", "checkpoint_every", 1.into());
        set(&mut cfg, "eval", "max_items", 0.into());
        let config = dir.join("tiny.toml");
        std::fs::write(&config, toml::to_string(&cfg).unwrap()).unwrap();
        let model = PathBuf::from(cfg["model"]["dir"].as_str().unwrap());
        Tiny { config, model, sft }
    })
}

/// `train --config tiny.toml --out OUT [extra...]`.
fn train_tiny(out: &Path, extra: &[&str]) -> Output {
    let mut a = vec!["train", "--config", tiny().config.to_str().unwrap(), "--out"];
    a.push(out.to_str().unwrap());
    a.extend_from_slice(extra);
    run(&a)
}

fn records(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn steps_of(recs: &[Value], phase: &str) -> Vec<u64> {
    recs.iter()
        .filter(|r| r["phase"] == phase && r.get("event").is_none())
        .map(|r| r["step"].as_u64().unwrap())
        .collect()
}

fn evals(recs: &[Value], label: &str) -> Vec<u64> {
    recs.iter()
        .filter(|r| r["phase"] == "eval" && r["label"] == label)
        .map(|r| r["step"].as_u64().unwrap())
        .collect()
}

/// Every record of a finished tiny run, exactly once.
fn assert_complete_once(out: &Path) {
    let recs = records(out);
    let sft_total = steps_of(&recs, "sft").len() as u64;
    assert_eq!(steps_of(&recs, "sft"), (1..=sft_total).collect::<Vec<_>>(), "SFT steps once");
    assert_eq!(steps_of(&recs, "rl"), vec![1, 2, 3], "RL steps once");
    assert_eq!(evals(&recs, "before SFT"), vec![0]);
    assert_eq!(evals(&recs, "after SFT"), vec![sft_total]);
    assert_eq!(evals(&recs, "after RL"), vec![3]);
}

fn tiny_model_dir(tmp: &Path) -> PathBuf {
    // The fixture model's weights with a tokenizer beside them, as a user's directory is.
    let m = tmp.join("model");
    std::fs::create_dir_all(&m).unwrap();
    for e in std::fs::read_dir(common::fixture("tiny-gqa")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, m.join(p.file_name().unwrap())).unwrap();
    }
    std::fs::copy(common::fixture("tokenizer.json"), m.join("tokenizer.json")).unwrap();
    m
}

#[test]
fn absurd_settings_are_refused_by_name_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().to_str().unwrap();
    let sft = |flag: &str, v: &str| {
        run(&[
            "sft",
            "--model",
            t,
            "--data",
            t,
            "--out",
            t,
            &format!("{flag}={v}"),
            "--device",
            "cpu",
        ])
    };
    fails_with(&sft("--grad-clip", "-1"), &["--grad-clip"]);
    fails_with(&sft("--beta1", "2"), &["--beta1"]);
    fails_with(&sft("--lr", "NaN"), &["--lr"]);
    fails_with(&sft("--warmup-ratio", "inf"), &["--warmup-ratio"]);
    // The keys config.rs's unit test does not list, through the command line.
    for (key, bad) in [
        ("rl.grad_clip", "-1"),
        ("sft.min_lr_ratio", "2"),
        ("sft.min_lr_ratio", "nan"),
        ("rl.lr", "nan"),
        ("rl.batch_size", "0"),
        ("rl.group_size", "1"),
        ("rl.ppo_epochs", "0"),
        ("rl.micro_batch_tokens", "0"),
        ("rl.max_new_tokens", "0"),
        ("rl.delta", "nan"),
        ("rl.tau_pos", "0"),
        ("rl.tau_neg", "nan"),
        ("rl.clip_cov_ratio", "0"),
        ("rl.kl_cov_ratio", "nan"),
        ("rl.ppo_kl_coef", "-1"),
        ("rl.clip_cov_lb", "nan"),
        ("rl.top_entropy_quantile", "0"),
        ("rl.overlong_penalty_factor", "nan"),
        ("rl.overlong_buffer_len", "100000"),
        ("vas.t_update", "0"),
        ("vas.score_rollouts", "1"),
    ] {
        fails_with(&run(&["train", "--set", &format!("{key}={bad}")]), &[key]);
    }
    let toks = tmp.path().join("t.json");
    std::fs::write(&toks, "[[1, 2, 3]]").unwrap();
    let model = tiny_model_dir(tmp.path());
    let m = model.to_str().unwrap();
    let out = tmp.path().join("lp.safetensors");
    fails_with(
        &run(&[
            "logprobs",
            "--model",
            m,
            "--tokens",
            toks.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--temperature",
            "inf",
        ]),
        &["--temperature"],
    );
    // An empty list of sequences is a mistake, not an empty output file.
    let none = tmp.path().join("none.json");
    std::fs::write(&none, "[]").unwrap();
    let (n, o) = (none.to_str().unwrap(), out.to_str().unwrap());
    fails_with(&run(&["logprobs", "--model", m, "--tokens", n, "--out", o]), &["no sequences"]);
    assert!(!out.exists(), "nothing written");
    // Sampling flags by name, before a model is loaded (here there is none to load).
    for (flag, bad) in [("--temperature", "NaN"), ("--top-p", "0"), ("--max-new-tokens", "0")] {
        let o = run(&["generate", "--model", t, "--prompt", "1+1", &format!("{flag}={bad}")]);
        fails_with(&o, &[flag]);
    }
    // Lengths are checked before any memory is sized by them.
    for n in ["1000000000", "18446744073709551615", "60"] {
        let o = run(&["generate", "--model", m, "--prompt", "1+1", "--max-new-tokens", n]);
        fails_with(&o, &["max_position_embeddings"]);
    }
}

#[test]
fn a_tokenizer_that_does_not_fit_the_model_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(tmp.path());
    let mut tok: Value =
        serde_json::from_slice(&std::fs::read(model.join("tokenizer.json")).unwrap()).unwrap();
    // Ids past the model's 517 rows: a tokenizer of some other model.
    let vocab = tok["model"]["vocab"].as_object_mut().unwrap();
    for i in 0..200 {
        vocab.insert(format!("extra{i}"), (600 + i).into());
    }
    std::fs::write(model.join("tokenizer.json"), serde_json::to_vec(&tok).unwrap()).unwrap();
    let o = run(&["generate", "--model", model.to_str().unwrap(), "--prompt", "hi"]);
    fails_with(&o, &["tokenizer.json", "vocab_size", "does not belong to this model"]);
}

#[test]
fn truncated_and_lying_safetensors_headers_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(tmp.path());
    let toks = tmp.path().join("t.json");
    std::fs::write(&toks, "[[1, 2, 3]]").unwrap();
    let shard = model.join("model-00001-of-00003.safetensors");
    let good = std::fs::read(&shard).unwrap();
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(good[8..8 + header_len].to_vec()).unwrap();
    let with_len = |len: u64, rest: &[u8]| [len.to_le_bytes().as_slice(), rest].concat();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("3 bytes", good[..3].to_vec()),
        ("header length u64::MAX", with_len(u64::MAX, &good[8..])),
        ("header longer than the file", with_len(header_len as u64 * 1000, &good[8..])),
        ("header not JSON", with_len(5, b"{\"a\":")),
        ("data cut short", good[..good.len() / 2].to_vec()),
        ("offsets past the data", {
            // Every offset pushed far past the end: the header lies about the data.
            let v: Value = serde_json::from_str(&header).unwrap();
            let mut v = v.as_object().unwrap().clone();
            for (k, t) in v.iter_mut() {
                if k != "__metadata__" {
                    t["data_offsets"] = serde_json::json!([1u64 << 40, (1u64 << 40) + 8]);
                }
            }
            let h = serde_json::to_vec(&v).unwrap();
            [with_len(h.len() as u64, &h), good[8 + header_len..].to_vec()].concat()
        }),
    ];
    for (what, bytes) in cases {
        std::fs::write(&shard, &bytes).unwrap();
        let out = tmp.path().join("lp.safetensors");
        let o = run(&[
            "logprobs",
            "--model",
            model.to_str().unwrap(),
            "--tokens",
            toks.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{what}: exit 1 expected: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert!(err.contains("model-00001-of-00003.safetensors"), "{what}: names the file: {err}");
        assert!(!out.exists(), "{what}: no output written");
    }
}

#[test]
fn malformed_jsonl_toml_and_a_directory_as_output() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    // A byte-order mark, a non-UTF-8 line, a line that is not JSON.
    let mut data =
        b"\xEF\xBB\xBF{\"id\": \"a\", \"problem\": \"1+1\", \"answer\": \"2\"}\n".to_vec();
    data.extend_from_slice(b"{\"id\": \"b\", \"problem\": \"\xFF\xFE\", \"answer\": \"3\"}\n");
    data.extend_from_slice(b"{not json\n");
    std::fs::write(p("items.jsonl"), &data).unwrap();
    std::fs::write(p("resp.jsonl"), "{\"id\": \"a\", \"response\": \"\\\\boxed{2}\"}\n").unwrap();
    let reward = |bad: &str, out: &Path| {
        run(&[
            "reward",
            "--data",
            p("items.jsonl").to_str().unwrap(),
            "--responses",
            p("resp.jsonl").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--bad-lines",
            bad,
        ])
    };
    fails_with(&reward("stop", &p("v.jsonl")), &["items.jsonl:2", "UTF-8"]);
    let err = succeeds(&reward("skip", &p("v.jsonl")));
    assert!(err.contains("skipped 2 bad line"), "{err}");
    // An output path that is a directory: refused, and no temporary file left beside it.
    std::fs::create_dir(p("outdir")).unwrap();
    fails_with(&reward("skip", &p("outdir")), &["outdir", "directory"]);
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    // TOML that does not parse names the file.
    std::fs::write(p("bad.toml"), "[rl\nsteps = 3\n").unwrap();
    fails_with(&run(&["train", "--config", p("bad.toml").to_str().unwrap()]), &["bad.toml"]);
    std::fs::write(p("bad2.toml"), "[rl]\nsteps = \"many\"\n").unwrap();
    fails_with(&run(&["train", "--config", p("bad2.toml").to_str().unwrap()]), &["steps"]);
}

#[test]
fn plot_finishes_on_metrics_spanning_the_f64_range() {
    let tmp = tempfile::tempdir().unwrap();
    let lines = [
        r#"{"phase":"sft","step":1,"loss":1e-308,"lr":5e-324}"#,
        r#"{"phase":"sft","step":2,"loss":1e308,"lr":1.7976931348623157e308}"#,
        r#"{"phase":"sft","step":3,"loss":-1e308,"lr":0.0}"#,
        r#"{"phase":"rl","step":1,"reward_mean":1e308,"accuracy":-1e308,"grad_norm":1e-320}"#,
        r#"{"phase":"rl","step":2,"reward_mean":1e308,"accuracy":1e308,"grad_norm":1e-320}"#,
    ];
    std::fs::write(tmp.path().join("metrics.jsonl"), lines.join("\n") + "\n").unwrap();
    let mut child = bin()
        .args(["plot", tmp.path().to_str().unwrap(), "--no-text"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            panic!("plot hangs on metrics spanning the f64 range");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    assert!(tmp.path().join("curves.png").exists());
}

#[test]
fn one_run_per_directory_and_stale_locks_are_taken_over() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    // Another live run holds the lock.
    let held = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(out.join(".lock"))
        .unwrap();
    held.try_lock().unwrap();
    std::fs::write(out.join(".lock"), "4242\n").unwrap();
    let o = train_tiny(&out, &["--set", "sft.epochs=0", "--set", "rl.steps=0"]);
    fails_with(&o, &["another run (pid 4242)"]);
    assert!(!out.join("metrics.jsonl").exists(), "the refused run wrote nothing");
    // The run died (its lock is released; the file with its pid stays): taken over.
    drop(held);
    succeeds(&train_tiny(&out, &["--set", "sft.epochs=0", "--set", "rl.steps=0"]));
}

#[test]
fn a_fresh_run_keeps_off_another_runs_checkpoints_and_resume_sets_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    succeeds(&train_tiny(&out, &["--set", "eval.every=2"]));
    assert_complete_once(&out);
    let recs = records(&out);
    let sft_total = steps_of(&recs, "sft").len() as u64;
    let periodic = evals(&recs, "periodic");
    let want: Vec<u64> = (2..sft_total).step_by(2).chain([2]).collect();
    assert_eq!(periodic, want, "eval.every=2 in SFT and RL (not on a phase's last step)");
    // A fresh run into it is refused; --overwrite replaces it.
    fails_with(&train_tiny(&out, &[]), &["checkpoints", "--overwrite", "--resume"]);
    succeeds(&train_tiny(&out, &["--overwrite"]));
    assert_complete_once(&out);
    let o = out.to_str().unwrap();
    // A resume may not change what the checkpoints were made with ...
    let e = fails_with(&run(&["train", "--resume", o, "--set", "sft.lr=0.5"]), &["sft.lr"]);
    assert!(e.contains("fresh run"), "{e}");
    // ... and what it may change is applied and written down.
    let r1: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    succeeds(&run(&["train", "--resume", o, "--set", "eval.every=1", "--set", "rl.steps=4"]));
    let cfg = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(cfg.contains("every = 1") && cfg.contains("steps = 4"), "{cfg}");
    let recs = records(&out);
    assert_eq!(steps_of(&recs, "rl"), vec![1, 2, 3, 4]);
    assert_eq!(evals(&recs, "after RL"), vec![4], "the closing eval once, at the new end");
    // Another output directory for a resumed run would be ignored: refused.
    let elsewhere = tmp.path().join("elsewhere");
    let e = elsewhere.to_str().unwrap();
    fails_with(&run(&["train", "--resume", o, "--out", e]), &["output.dir", "elsewhere"]);
    let set = format!("output.dir={e}");
    fails_with(&run(&["train", "--resume", o, "--set", &set]), &["output.dir", "elsewhere"]);
    assert!(!elsewhere.exists());
    // Fewer RL steps than already taken would leave config.toml saying 2 of a 4-step run.
    fails_with(&run(&["train", "--resume", o, "--set", "rl.steps=2"]), &["rl.steps", "4"]);
    let cfg: toml::Table =
        toml::from_str(&std::fs::read_to_string(out.join("config.toml")).unwrap()).unwrap();
    assert_eq!(cfg["rl"]["steps"].as_integer(), Some(4), "config.toml still says what ran");
    let r2: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert!(
        r2["seconds"].as_f64().unwrap() > r1["seconds"].as_f64().unwrap(),
        "run time sums over invocations: {} then {}",
        r1["seconds"],
        r2["seconds"]
    );
}

#[test]
fn a_kill_during_checkpoint_writes_loses_nothing_and_logs_nothing_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    succeeds(&train_tiny(&out, &[]));
    // Resuming a finished run changes nothing and logs nothing twice.
    succeeds(&run(&["train", "--resume", out.to_str().unwrap()]));
    assert_complete_once(&out);
    // The states a kill during the save of RL checkpoint 3 leaves: checkpoint 3 half-written
    // under its temporary name, `latest` not yet moved past 1 (the kill came between moving
    // checkpoint 2 into place and moving `latest`), a torn `latest` temp file, and metrics that
    // already hold step 3 and the closing eval.
    let rl = out.join("rl");
    std::fs::rename(rl.join("checkpoint-3"), rl.join(".checkpoint-3.tmp")).unwrap();
    std::fs::remove_file(rl.join(".checkpoint-3.tmp").join("trainer_state.json")).unwrap();
    std::fs::write(rl.join("latest"), "checkpoint-1\n").unwrap();
    std::fs::write(rl.join(".latest.tmp"), "checkp").unwrap();
    let mut m = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    m.push_str("{\"phase\":\"rl\",\"st"); // a torn last line
    std::fs::write(out.join("metrics.jsonl"), m).unwrap();
    let err = succeeds(&run(&["train", "--resume", out.to_str().unwrap()]));
    assert!(err.contains("newest complete checkpoint"), "{err}");
    assert!(err.contains("checkpoint-2"), "{err}");
    assert_complete_once(&out);
    // With no `latest` at all, the newest complete checkpoint still resumes.
    std::fs::remove_file(rl.join("latest")).unwrap();
    succeeds(&run(&["train", "--resume", out.to_str().unwrap()]));
    assert_complete_once(&out);
}

#[test]
fn the_sft_command_logs_each_step_once_across_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sft");
    let t = tiny();
    let base = [
        "sft",
        "--model",
        t.model.to_str().unwrap(),
        "--data",
        t.sft.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--batch-size",
        "4",
        "--save-every",
        "2",
        "--max-len",
        "256",
        "--no-default-system",
    ];
    succeeds(&run(&[&base[..], &["--max-steps", "3"]].concat()));
    // Killed before the save at step 3: checkpoint 2 is the newest.
    std::fs::remove_dir_all(out.join("checkpoint-3")).unwrap();
    std::fs::write(out.join("latest"), "checkpoint-2\n").unwrap();
    // A training flag that differs from the run's own is refused, not silently ignored.
    fails_with(&run(&[&base[..], &["--resume", "--lr", "0.5"]].concat()), &["lr", "0.5"]);
    succeeds(&run(&[&base[..], &["--resume"]].concat()));
    let steps = steps_of(&records(&out), "sft");
    assert_eq!(steps, (1..=5).collect::<Vec<u64>>(), "20 examples / 4 = 5 steps, each once");
    // A fresh run into it would truncate its metrics and leave checkpoint-4/5 for a later
    // resume to mix in: refused, nothing touched ...
    let metrics = std::fs::read(out.join("metrics.jsonl")).unwrap();
    fails_with(&run(&[&base[..], &["--max-steps", "1"]].concat()), &["checkpoints", "--overwrite"]);
    assert_eq!(std::fs::read(out.join("metrics.jsonl")).unwrap(), metrics, "metrics kept");
    // ... unless asked: --overwrite replaces the old run's checkpoints and metrics.
    succeeds(&run(&[&base[..], &["--max-steps", "1", "--overwrite"]].concat()));
    assert_eq!(steps_of(&records(&out), "sft"), vec![1], "only the new run's step");
    let mut left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    left.sort();
    assert_eq!(left, ["checkpoint-1"], "no checkpoint of the old run is left to resume from");
}

#[test]
fn a_diverging_run_names_the_checkpoint_to_resume_from() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = train_tiny(&out, &["--set", "sft.lr=1e30", "--set", "sft.warmup_ratio=0"]);
    let err = fails_with(&o, &["SFT step", "not finite"]);
    assert!(!err.contains("Some(") && !err.contains("None"), "plain words, not Debug: {err}");
    assert!(
        err.contains("The last good checkpoint is") || err.contains("No good SFT checkpoint"),
        "says what to resume from: {err}"
    );
    // Whatever checkpoint remains is one that passed the finite check.
    let sft = out.join("sft");
    for e in std::fs::read_dir(&sft).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("checkpoint-") && !name.ends_with(".diverged") {
            let ck = mmr1_fast::train::checkpoint::load_checkpoint::<_, Value>(
                &mmr1_fast::backend::cpu::Cpu,
                &p,
            );
            assert!(ck.is_ok(), "{name}: {:#}", ck.err().unwrap());
        }
    }
}
