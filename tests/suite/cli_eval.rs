//! `mmr1-fast eval` and `rl::evaluate` on a tiny random model: runs, sane numbers, one result
//! line per item, deterministic when greedy; bad flags and files fail cleanly.

use crate::common;
use common::*;
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::data::prompt::PromptStyle;
use mmr1_fast::data::rl_items::RlItem;
use mmr1_fast::model::Qwen2;
use mmr1_fast::rl::evaluate::{evaluate, EvalParams};
use mmr1_fast::tokenizer::Tokenizer;

const ITEMS: &[&str] = &[
    r#"{"id": "e0", "problem": "Add 1+2", "answer": "3"}"#,
    r#"{"id": "e1", "problem": "Add 4+4+1", "answer": "9"}"#,
    r#"{"problem": "Add 7+5", "answer": "12"}"#,
];

fn setup() -> (tempfile::TempDir, String, String) {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    demo_model_dir(&model, 11);
    let items = write_lines(tmp.path(), "items.jsonl", ITEMS);
    let m = model.to_str().unwrap().to_string();
    (tmp, m, items)
}

#[test]
fn greedy_eval_runs_and_is_deterministic() {
    let (tmp, m, items) = setup();
    let run = |tag: &str| {
        let out = tmp.path().join(format!("results_{tag}.jsonl"));
        #[rustfmt::skip]
        let stdout = cli_ok(&["eval", "--model", &m, "--data", &items, "--out", out.to_str().unwrap(),
            "--max-new-tokens", "16", "--prompt-style", "plain", "--batch-items", "2", "--device", "cpu"]);
        (out, stdout)
    };
    let (out, stdout) = run("a");
    let acc: f64 = stdout
        .strip_prefix("accuracy ")
        .and_then(|s| s.split(',').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!((0.0..=1.0).contains(&acc), "{stdout}");
    assert!(stdout.contains("3 items x 1 responses"), "{stdout}");
    let r = read_lines(&out);
    assert_eq!(r.len(), 3, "one line per item");
    for (l, id) in r.iter().zip(["e0", "e1", "2"]) {
        assert_eq!(l["id"], id);
        assert_eq!(l["responses"].as_array().unwrap().len(), 1);
        assert_eq!(l["correct"].as_array().unwrap().len(), 1);
        assert_eq!(l["pass"], l["correct"][0]);
    }
    let (out2, _) = run("b");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&out2).unwrap(),
        "greedy is deterministic"
    );

    // --max-items, and no --out: summary only.
    let s = cli_ok(&[
        "eval",
        "--model",
        &m,
        "--data",
        &items,
        "--max-new-tokens",
        "4",
        "--prompt-style",
        "plain",
        "--max-items",
        "2",
    ]);
    assert!(s.contains("2 items x 1 responses") && !s.contains("wrote"), "{s}");
}

#[test]
fn library_pass_at_k_with_sampling() {
    let (_tmp, m, _) = setup();
    let dir = std::path::Path::new(&m);
    let model = Qwen2::load(&Cpu, dir).unwrap();
    let tok = Tokenizer::from_dir(dir).unwrap();
    let items: Vec<RlItem> = ITEMS.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let p = EvalParams {
        k: 3,
        temperature: 1.0,
        max_new_tokens: 8,
        prompt_style: PromptStyle::Plain,
        seed: 3,
        ..EvalParams::default()
    };
    let a = evaluate(&model, &Cpu, &tok, &items, &p).unwrap();
    assert_eq!((a.items, a.k, a.results.len()), (3, 3, 3));
    for r in &a.results {
        assert_eq!(
            (r.responses.len(), r.extracted.len(), r.correct.len(), r.format_ok.len()),
            (3, 3, 3, 3)
        );
        assert_eq!(r.pass, r.correct.iter().any(|&c| c));
    }
    assert!(a.response_accuracy <= a.accuracy && (0.0..=1.0).contains(&a.format_rate));
    let b = evaluate(&model, &Cpu, &tok, &items, &p).unwrap();
    assert_eq!(a.results, b.results, "fixed seed, same samples");
    let all: std::collections::HashSet<&String> =
        a.results.iter().flat_map(|r| &r.responses).collect();
    assert!(all.len() > 3, "sampling gives different responses");
    assert!(
        evaluate(&model, &Cpu, &tok, &items, &EvalParams { k: 2, ..EvalParams::default() })
            .is_err(),
        "greedy k > 1"
    );
}

#[test]
fn bad_flags_and_files_fail_cleanly() {
    let (tmp, m, items) = setup();
    let out = tmp.path().join("r.jsonl");
    let o = out.to_str().unwrap();
    // Both spellings reach the command's own check (clap took a separate `-1` for a flag).
    for t in [&["--temperature=-1"][..], &["--temperature", "-1"]] {
        let e = cli_err(&[&["eval", "--model", &m, "--data", &items, "--out", o][..], t].concat());
        assert!(e.contains("--temperature must be"), "{t:?}: {e}");
    }
    let e = cli_err(&["eval", "--model", &m, "--data", &items, "--out", o, "--k", "0"]);
    assert!(e.contains("--k"), "{e}");
    let e = cli_err(&["eval", "--model", &m, "--data", &items, "--out", o, "--k", "4"]);
    assert!(e.contains("--k 4") && e.contains("--temperature"), "{e}");
    let e = cli_err(&["eval", "--model", &m, "--data", &items, "--out", o, "--top-p", "0"]);
    assert!(e.contains("--top-p"), "{e}");
    let e =
        cli_err(&["eval", "--model", &m, "--data", &items, "--out", o, "--max-new-tokens", "0"]);
    assert!(e.contains("--max-new-tokens"), "{e}");
    let e =
        cli_err(&["eval", "--model", &m, "--data", &items, "--out", o, "--prompt-style", "chat"]);
    assert!(e.contains("--prompt-style"), "{e}");
    let e = cli_err(&["eval", "--model", &m, "--data", &items, "--out", o, "--device", "tpu"]);
    assert!(e.contains("tpu"), "{e}");
    let e =
        cli_err(&["eval", "--model", "/nonexistent/model", "--data", &items, "--device", "cpu"]);
    assert!(e.contains("/nonexistent/model"), "{e}");
    let e = cli_err(&["eval", "--model", &m, "--data", "/nonexistent/items.jsonl"]);
    assert!(e.contains("/nonexistent/items.jsonl"), "{e}");
    let dup = write_lines(tmp.path(), "dup.jsonl", &[ITEMS[0], ITEMS[0]]);
    let e = cli_err(&["eval", "--model", &m, "--data", &dup]);
    assert!(e.contains("dup.jsonl:2") && e.contains("e0"), "{e}");
    // A model directory without a tokenizer is named.
    std::fs::remove_file(std::path::Path::new(&m).join("tokenizer.json")).unwrap();
    let e = cli_err(&["eval", "--model", &m, "--data", &items, "--device", "cpu"]);
    assert!(e.contains("tokenizer.json"), "{e}");
    assert!(!out.exists());
}

/// A demo-vocabulary model whose greedy answer to any chat prompt is `\boxed{7}<|im_end|>`:
/// attention and MLP outputs are zeroed (the residual stream is the current token's
/// embedding), the tied embedding holds a chain `\n -> \boxed{ -> 7 -> } -> <|im_end|>` whose
/// rows grow so that each row's dot product with its predecessor beats the predecessor's own
/// norm, and every other row is zero (logit 0).
fn boxed_seven_model(dir: &std::path::Path) {
    use mmr1_fast::data::demo::{demo_config, demo_tokenizer};
    use mmr1_fast::model::safetensors_io::SaveDtype;
    let tok = demo_tokenizer().unwrap();
    let m = random_model(demo_config(tok.vocab_size()), 3);
    let (d, l) = (m.cfg.hidden_size, &m.layout);
    let mut host = m.to_host(&Cpu);
    for ly in &l.layers {
        host[ly.o_w].iter_mut().for_each(|x| *x = 0.0);
        host[ly.down_w].iter_mut().for_each(|x| *x = 0.0);
    }
    host[l.final_norm].iter_mut().for_each(|x| *x = 1.0);
    let e = &mut host[l.embed];
    e.iter_mut().for_each(|x| *x = 0.0);
    let chain = ["\n", "\\boxed{", "7", "}", "<|im_end|>"].map(|t| tok.token_id(t).unwrap());
    // row k = alpha_k e_k + e_{k+1}: self score alpha_k^2 + 1 < next score alpha_{k+1}.
    let alpha = [1.0f32, 3.0, 11.0, 130.0, 17_000.0];
    for (k, &t) in chain.iter().enumerate() {
        let row = &mut e[t as usize * d..(t as usize + 1) * d];
        row[k] = alpha[k];
        if k + 1 < chain.len() {
            row[k + 1] = 1.0;
        }
    }
    let m = Qwen2::from_host(&Cpu, m.cfg.clone(), m.layout.clone(), &host);
    m.save_pretrained(&Cpu, dir, SaveDtype::F32).unwrap();
    tok.save(&dir.join("tokenizer.json")).unwrap();
}

/// The accuracy `eval` prints and writes equals a count made here: the model answers 7 to
/// everything, so exactly the items whose reference is 7 (in any equivalent spelling) pass.
#[test]
fn eval_accuracy_equals_an_independent_count() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    boxed_seven_model(&model);
    let lines = [
        r#"{"id": "a", "problem": "Add 3+4", "answer": "7"}"#,
        r#"{"id": "b", "problem": "Add 4+5", "answer": "9"}"#,
        r#"{"id": "c", "problem": "Add 1+6", "answer": "7.0"}"#,
        r#"{"id": "d", "problem": "Add 2+2", "answer": "4"}"#,
        r#"{"id": "e", "problem": "Add 5+2", "answer": "$7$"}"#,
    ];
    let items = write_lines(tmp.path(), "items.jsonl", &lines);
    let out = tmp.path().join("r.jsonl");
    #[rustfmt::skip]
    let stdout = cli_ok(&["eval", "--model", model.to_str().unwrap(), "--data", &items,
        "--out", out.to_str().unwrap(), "--max-new-tokens", "8", "--prompt-style", "plain", "--device", "cpu"]);
    let r = read_lines(&out);
    let want_pass = [true, false, true, false, true];
    for (l, want) in r.iter().zip(want_pass) {
        assert_eq!(l["responses"][0], "\\boxed{7}", "the rigged model answers 7: {l}");
        assert_eq!(l["pass"], want, "{l}");
    }
    let acc: f64 = stdout
        .strip_prefix("accuracy ")
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("{stdout}"))
        .parse()
        .unwrap();
    assert_eq!(acc, 3.0 / 5.0, "{stdout}");
}

/// An evaluation stopped after its first batch (a fault injected at the second batch's append)
/// continues from the partial file: the same results as an uninterrupted run, the first batch
/// not decoded again; a torn last line is dropped with its batch; another evaluation's partial
/// file is refused, not overwritten.
#[test]
fn an_interrupted_evaluation_continues_where_it_stopped() {
    use mmr1_fast::fs::fault;
    use mmr1_fast::rl::evaluate::{evaluate_resumable, ItemResult};
    use mmr1_fast::rl::partial_results::{partial_path, Partial};
    let (tmp, m, _) = setup();
    let dir = std::path::Path::new(&m);
    let model = Qwen2::load(&Cpu, dir).unwrap();
    let tok = Tokenizer::from_dir(dir).unwrap();
    let mut lines = ITEMS.to_vec();
    lines.push(r#"{"id": "e3", "problem": "Add 2+2", "answer": "4"}"#);
    lines.push(r#"{"id": "e4", "problem": "Add 3+3", "answer": "6"}"#);
    let items: Vec<RlItem> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let p = EvalParams {
        k: 2,
        temperature: 1.0,
        max_new_tokens: 8,
        prompt_style: PromptStyle::Plain,
        seed: 5,
        batch_items: 2,
        ..EvalParams::default()
    };
    let whole = evaluate(&model, &Cpu, &tok, &items, &p).unwrap();
    let out = tmp.path().join("results.jsonl");
    let partial_path = partial_path(&out);
    // `fail_at`: the append (counted from 0) that fails; armed after the partial file is opened,
    // so that its own writes are not counted.
    let run = |progress: &mut Vec<usize>, fail_at: Option<u64>| {
        let mut partial = Partial::open(&out, "fp", items.len(), 2)?;
        if let Some(n) = fail_at {
            fault::fail_at(n);
        }
        let r =
            evaluate_resumable(&model, &Cpu, &tok, &items, &p, &mut partial, |d| progress.push(d))?;
        mmr1_fast::data::jsonl::write_jsonl(&out, &r.results)?;
        partial.finish()?;
        anyhow::Ok(r)
    };
    // Stopped at the second batch's append: the first batch is on disk.
    let e = run(&mut vec![], Some(1)).unwrap_err();
    fault::disarm();
    assert!(format!("{e:#}").contains("injected fault"), "{e:#}");
    assert_eq!(read_lines(&partial_path).len(), 1 + 2, "the header and the first batch");
    assert!(!out.exists());
    // A batch the crash cut (one whole line of it, then a torn one) is dropped, whole.
    let mut text = std::fs::read_to_string(&partial_path).unwrap();
    text += &(serde_json::to_string(&whole.results[2]).unwrap() + "\n");
    text += "{\"id\": \"e3\", \"answ";
    std::fs::write(&partial_path, &text).unwrap();
    let mut progress = vec![];
    let resumed = run(&mut progress, None).unwrap();
    assert_eq!(progress.first(), Some(&2), "started after the first batch");
    assert_eq!(progress.last(), Some(&5));
    assert_eq!(resumed.results, whole.results, "the results of an uninterrupted run");
    assert_eq!(
        (resumed.accuracy, resumed.response_accuracy, resumed.format_rate),
        (whole.accuracy, whole.response_accuracy, whole.format_rate)
    );
    assert!(!partial_path.exists(), "the partial file goes when the evaluation ends");
    let written: Vec<serde_json::Value> = read_lines(&out);
    assert_eq!(written.len(), 5);
    // Another evaluation's partial file is an error, and is left as it was.
    let other = "{\"mmr1_partial\": \"other\", \"items\": 5, \"batch_items\": 2}\n{}\n";
    std::fs::write(&partial_path, other).unwrap();
    let e = Partial::<ItemResult>::open(&out, "fp", 5, 2).err().unwrap();
    assert!(format!("{e:#}").contains("another run"), "{e:#}");
    assert!(std::fs::read_to_string(&partial_path).unwrap().contains("other"));
}

/// `eval --out`: no partial file is left after a run that ends, a rerun writes the same file,
/// and a partial file of another evaluation stops the command, untouched (the continuation
/// itself: `an_interrupted_evaluation_continues_where_it_stopped`).
#[test]
fn eval_command_keeps_and_guards_its_partial_file() {
    let (tmp, m, items) = setup();
    let out = tmp.path().join("r.jsonl");
    let o = out.to_str().unwrap();
    #[rustfmt::skip]
    let args = ["eval", "--model", &m, "--data", &items, "--out", o, "--max-new-tokens", "8",
        "--prompt-style", "plain", "--batch-items", "1", "--device", "cpu"];
    cli_ok(&args);
    let partial = tmp.path().join("r.jsonl.partial");
    assert!(!partial.exists(), "the partial file goes when the evaluation ends");
    let first = std::fs::read(&out).unwrap();
    cli_ok(&args);
    assert_eq!(std::fs::read(&out).unwrap(), first);
    let planted = "{\"mmr1_partial\": \"x\", \"items\": 3, \"batch_items\": 1}\n{}\n";
    std::fs::write(&partial, planted).unwrap();
    let e = cli_err(&args);
    assert!(e.contains("r.jsonl.partial") && e.contains("another run"), "{e}");
    assert_eq!(std::fs::read_to_string(&partial).unwrap(), planted);
}
