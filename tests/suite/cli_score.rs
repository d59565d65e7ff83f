//! `mmr1-fast score`: VAS scores from given rollouts (exact values) and from a tiny model
//! (runs, in range, deterministic, and re-scoring its rollouts gives the same scores).

use crate::common;
use common::*;
use serde_json::{json, Value};

fn rollout(id: &str, tokens: &[u32], reward: f32) -> String {
    json!({"id": id, "tokens": tokens, "reward": reward}).to_string()
}

/// 1 - self-BLEU-4 of token sequences, written here from the definition `score` documents
/// (`rl::vas::TdsMetric::InverseSelfBleu`): each rollout is a hypothesis against all the others
/// as references; clipped n-gram counts against the largest count in any one reference;
/// precision p_1 unsmoothed, p_n = (matched + 1) / (total + 1) for n >= 2; geometric mean with
/// weights 1/4; brevity penalty exp(1 - r / c) when c <= r, r the closest reference length
/// (the shorter on ties); BLEU 0 when p_1 = 0. Naive O(K^2 L) loops.
fn tds_ref(rs: &[Vec<u32>]) -> f64 {
    let k = rs.len();
    if k < 2 {
        return 0.0;
    }
    let grams = |s: &[u32], n: usize| -> Vec<Vec<u32>> {
        if s.len() < n {
            vec![]
        } else {
            s.windows(n).map(|w| w.to_vec()).collect()
        }
    };
    let count = |v: &[Vec<u32>], g: &[u32]| v.iter().filter(|x| x.as_slice() == g).count();
    let mut total_bleu = 0.0;
    for i in 0..k {
        let mut log_sum = 0.0;
        let mut zero = false;
        for n in 1..=4 {
            let hyp = grams(&rs[i], n);
            let mut distinct: Vec<Vec<u32>> = hyp.clone();
            distinct.sort();
            distinct.dedup();
            let mut matched = 0usize;
            for g in &distinct {
                let best = (0..k).filter(|&j| j != i).map(|j| count(&grams(&rs[j], n), g)).max();
                matched += count(&hyp, g).min(best.unwrap_or(0));
            }
            // nltk `modified_precision` divides by max(1, number of n-grams): an order the
            // rollout is too short for has precision 0/1 (1/2 after method2 smoothing).
            let total = hyp.len().max(1);
            let p = if n == 1 {
                matched as f64 / total as f64
            } else {
                (matched as f64 + 1.0) / (total as f64 + 1.0)
            };
            if p == 0.0 {
                zero = true;
            } else {
                log_sum += p.ln() / 4.0;
            }
        }
        let c = rs[i].len();
        let mut best: Option<usize> = None;
        for j in (0..k).filter(|&j| j != i) {
            let l = rs[j].len();
            let d = (l as i64 - c as i64).abs();
            best = match best {
                Some(b) if ((b as i64 - c as i64).abs(), b) <= (d, l) => Some(b),
                _ => Some(l),
            };
        }
        let r = best.unwrap();
        let bp = if c > r {
            1.0
        } else if c == 0 {
            if r == 0 {
                1.0
            } else {
                0.0
            }
        } else {
            (1.0 - r as f64 / c as f64).exp()
        };
        total_bleu += if zero { 0.0 } else { bp * log_sum.exp() };
    }
    1.0 - total_bleu / k as f64
}

#[test]
fn tds_reference_hand_values() {
    // Identical rollouts of 4+ tokens: BLEU 1, TDS 0. Disjoint: p_1 = 0, TDS 1.
    assert!(tds_ref(&[vec![1, 2, 3, 4], vec![1, 2, 3, 4]]).abs() < 1e-12);
    assert!((tds_ref(&[vec![1, 2, 3], vec![4, 5, 6]]) - 1.0).abs() < 1e-12);
    // Identical 3-token rollouts have no 4-gram: p_4 = (0 + 1) / (max(1, 0) + 1) = 1/2, as in
    // nltk (and rl::vas), so BLEU = 2^(-1/4).
    assert!((tds_ref(&[vec![1, 2, 3], vec![1, 2, 3]]) - (1.0 - 0.5f64.powf(0.25))).abs() < 1e-12);
    // The "mixed" item below, by hand: p = 1/4, 1/4, 1/3, 1/2, BP 1 => BLEU = 96^(-1/4).
    let mixed: Vec<Vec<u32>> = (0..8u32).map(|i| vec![100 + i, 200 + i, 300 + i, 7]).collect();
    assert!((tds_ref(&mixed) - (1.0 - 96f64.powf(-0.25))).abs() < 1e-12);
}

fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn from_rollouts_exact_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lines = Vec::new();
    // "same": 4 identical rollouts, all correct: no variance of either kind.
    for _ in 0..4 {
        lines.push(rollout("same", &[5, 6, 7, 8, 9], 1.0));
    }
    // "mixed": 4 of 8 correct (interleaved with the other items' lines), all different.
    for i in 0..8u32 {
        lines.push(rollout(
            "mixed",
            &[100 + i, 200 + i, 300 + i, 7],
            if i % 2 == 0 { 1.0 } else { 0.0 },
        ));
        if i == 3 {
            lines.push(rollout("same", &[5, 6, 7, 8, 9], 1.0));
        }
    }
    // "explicit": accuracy wins over reward (a format-only reward of 1 is not correct). Two
    // identical rollouts of 4 tokens: self-BLEU-4 1, TDS 0 (nltk scores identical rollouts
    // shorter than 4 tokens below 1).
    lines
        .push(json!({"id": 3, "tokens": [1, 2, 3, 4], "reward": 1.0, "accuracy": 0.0}).to_string());
    lines.push(
        json!({"id": 3, "tokens": [1, 2, 3, 4], "reward": 2.0, "accuracy": 1.0, "response": "ignored"})
            .to_string(),
    );
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let r = write_lines(tmp.path(), "rollouts.jsonl", &refs);
    let out = tmp.path().join("scores.jsonl");
    let stdout = cli_ok(&["score", "--from-rollouts", &r, "--out", out.to_str().unwrap()]);
    let s = read_lines(&out);
    assert_eq!(s.len(), 3, "one line per item: {s:?}");
    let ids: Vec<&str> = s.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["same", "mixed", "3"], "order of first appearance");
    assert_eq!(
        s[0],
        json!({"id": "same", "n": 5, "pass_rate": 1.0, "ovs": 0.0, "tds": 0.0, "vps": 0.0})
    );
    assert_eq!((s[1]["n"].as_u64(), f(&s[1], "pass_rate"), f(&s[1], "ovs")), (Some(8), 0.5, 0.25));
    // Each "mixed" rollout shares only the token 7 with the others: by hand (see
    // tds_reference_hand_values) TDS = 1 - 96^(-1/4) = 0.680528...
    let tds = 1.0 - 96f64.powf(-0.25);
    assert!((f(&s[1], "tds") - tds).abs() < 1e-6, "tds {} vs {tds}", f(&s[1], "tds"));
    assert!((f(&s[1], "vps") - (0.8 * 0.25 + 0.2 * tds)).abs() < 1e-6);
    assert_eq!((f(&s[2], "pass_rate"), f(&s[2], "ovs"), f(&s[2], "tds")), (0.5, 0.25, 0.0));
    assert!((f(&s[2], "vps") - 0.2).abs() < 1e-6);
    assert!(
        stdout.starts_with("3 items, 15 rollouts")
            && stdout.contains("2 items with outcome variance"),
        "{stdout}"
    );

    // Other weights: VPS = alpha OVS + beta TDS.
    cli_ok(&[
        "score",
        "--from-rollouts",
        &r,
        "--out",
        out.to_str().unwrap(),
        "--alpha",
        "1",
        "--beta",
        "0.5",
    ]);
    let s = read_lines(&out);
    assert!((f(&s[1], "vps") - (0.25 + 0.5 * tds)).abs() < 1e-6);
}

#[test]
fn from_rollouts_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("scores.jsonl");
    let o = out.to_str().unwrap();
    let ok = rollout("a", &[1, 2], 1.0);
    let e = cli_err(&["score", "--from-rollouts", "/nonexistent/r.jsonl", "--out", o]);
    assert!(e.contains("/nonexistent/r.jsonl"), "{e}");
    let p = write_lines(tmp.path(), "no_tokens.jsonl", &[&ok, r#"{"id": "a", "reward": 1}"#]);
    let e = cli_err(&["score", "--from-rollouts", &p, "--out", o]);
    assert!(e.contains("no_tokens.jsonl:2") && e.contains("tokens"), "{e}");
    let p = write_lines(
        tmp.path(),
        "acc.jsonl",
        &[&ok, &ok, r#"{"id": "a", "tokens": [1], "accuracy": 2}"#],
    );
    let e = cli_err(&["score", "--from-rollouts", &p, "--out", o]);
    assert!(e.contains("acc.jsonl:3") && e.contains("accuracy"), "{e}");
    let p = write_lines(tmp.path(), "neither.jsonl", &[r#"{"id": "a", "tokens": [1]}"#]);
    let e = cli_err(&["score", "--from-rollouts", &p, "--out", o]);
    assert!(e.contains("neither.jsonl:1") && e.contains("neither"), "{e}");
    let p = write_lines(tmp.path(), "neg.jsonl", &[r#"{"id": "a", "tokens": [-1], "reward": 1}"#]);
    let e = cli_err(&["score", "--from-rollouts", &p, "--out", o]);
    assert!(e.contains("neg.jsonl:1"), "{e}");
    let p = write_lines(tmp.path(), "skip.jsonl", &[&ok, "{", &ok]);
    cli_ok(&["score", "--from-rollouts", &p, "--out", o, "--bad-lines", "skip"]);
    assert_eq!(f(&read_lines(&out)[0], "n"), 2.0);
    let e = cli_err(&["score", "--from-rollouts", &p, "--out", o, "--beta=-1"]);
    assert!(e.contains("--beta"), "{e}");
    let e = cli_err(&["score", "--out", o]);
    assert!(e.contains("--model"), "{e}");
}

const ITEMS: &[&str] = &[
    r#"{"id": "p0", "problem": "Add 1+2", "answer": "3"}"#,
    r#"{"id": "p1", "problem": "Add 4+4+1", "answer": "9"}"#,
    r#"{"id": "p2", "problem": "Add 7+5", "answer": "12"}"#,
];

#[test]
fn with_model_runs_in_range_deterministic_and_rescores_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    demo_model_dir(&model, 7);
    let items = write_lines(tmp.path(), "items.jsonl", ITEMS);
    let run = |tag: &str| {
        let out = tmp.path().join(format!("scores_{tag}.jsonl"));
        let ro = tmp.path().join(format!("rollouts_{tag}.jsonl"));
        #[rustfmt::skip]
        cli_ok(&["score", "--model", model.to_str().unwrap(), "--data", &items, "--rollouts-per-item", "4",
            "--out", out.to_str().unwrap(), "--rollouts-out", ro.to_str().unwrap(), "--temperature", "1",
            "--max-new-tokens", "12", "--prompt-style", "plain", "--batch-items", "2", "--seed", "5", "--device", "cpu"]);
        (out, ro)
    };
    let (out, ro) = run("a");
    let s = read_lines(&out);
    assert_eq!(s.len(), 3);
    for (l, id) in s.iter().zip(["p0", "p1", "p2"]) {
        assert_eq!(l["id"], id);
        assert_eq!(l["n"], 4);
        let (p, o, t, v) = (f(l, "pass_rate"), f(l, "ovs"), f(l, "tds"), f(l, "vps"));
        assert!(
            (0.0..=1.0).contains(&p) && (0.0..=0.25).contains(&o) && (0.0..=1.0).contains(&t),
            "{l}"
        );
        assert!((o - p * (1.0 - p)).abs() < 1e-6 && (v - (0.8 * o + 0.2 * t)).abs() < 1e-6, "{l}");
    }
    let r = read_lines(&ro);
    // Pass rate and TDS recomputed here from the rollouts the tool wrote.
    for (l, id) in s.iter().zip(["p0", "p1", "p2"]) {
        let mine: Vec<&Value> = r.iter().filter(|x| x["id"] == id).collect();
        let toks: Vec<Vec<u32>> = mine
            .iter()
            .map(|x| {
                x["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect()
            })
            .collect();
        let p = mine.iter().map(|x| f(x, "accuracy")).sum::<f64>() / mine.len() as f64;
        let t = tds_ref(&toks);
        assert!((f(l, "pass_rate") - p).abs() < 1e-6, "{id}: pass rate {l} vs {p}");
        assert!((f(l, "tds") - t).abs() < 1e-5, "{id}: tds {} vs {t}", f(l, "tds"));
        assert!(t > 0.0, "{id}: sampled rollouts should differ");
        assert!((f(l, "vps") - (0.8 * p * (1.0 - p) + 0.2 * t)).abs() < 1e-5, "{id}: vps");
    }
    assert_eq!(r.len(), 12, "4 rollouts per item");
    for (k, l) in r.iter().enumerate() {
        assert_eq!(l["id"], ["p0", "p1", "p2"][k / 4]);
        let n = l["tokens"].as_array().unwrap().len();
        assert!((1..=12).contains(&n), "{l}");
        assert!(l["response"].is_string() && (0.0..=1.0).contains(&f(l, "accuracy")), "{l}");
    }
    let distinct: std::collections::HashSet<String> =
        r.iter().map(|l| l["tokens"].to_string()).collect();
    assert!(distinct.len() > 1, "sampled rollouts differ");

    let (out2, ro2) = run("b");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&out2).unwrap(),
        "same seed, same scores"
    );
    assert_eq!(
        std::fs::read(&ro).unwrap(),
        std::fs::read(&ro2).unwrap(),
        "same seed, same rollouts"
    );

    let re = tmp.path().join("rescored.jsonl");
    cli_ok(&["score", "--from-rollouts", ro.to_str().unwrap(), "--out", re.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&re).unwrap(), "both modes score alike");
}

#[test]
fn with_model_bad_flags_and_files() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    demo_model_dir(&model, 7);
    let m = model.to_str().unwrap();
    let items = write_lines(tmp.path(), "items.jsonl", ITEMS);
    let out = tmp.path().join("s.jsonl");
    let o = out.to_str().unwrap();
    let base = [
        "score",
        "--model",
        m,
        "--data",
        &items,
        "--out",
        o,
        "--prompt-style",
        "plain",
        "--max-new-tokens",
        "4",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let err = |extra: &[&str]| {
        let a = with(extra);
        cli_err(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let e = err(&["--rollouts-per-item", "1"]);
    assert!(e.contains("--rollouts-per-item") && e.contains("at least 2"), "{e}");
    let e = err(&["--temperature=-0.5"]);
    assert!(e.contains("--temperature"), "{e}");
    let e = err(&["--temperature", "0"]);
    assert!(e.contains("--temperature"), "{e}");
    let e = err(&["--top-p", "1.5"]);
    assert!(e.contains("--top-p"), "{e}");
    let e = err(&["--batch-items", "0"]);
    assert!(e.contains("--batch-items"), "{e}");
    let e = err(&["--alpha", "inf"]);
    assert!(e.contains("--alpha"), "{e}");
    let e = err(&["--rollouts-per-item", "two"]);
    assert!(e.contains("--rollouts-per-item"), "{e}");
    let e = cli_err(&[
        "score",
        "--model",
        m,
        "--data",
        &items,
        "--out",
        o,
        "--prompt-style",
        "plain",
        "--max-new-tokens",
        "400",
    ]);
    assert!(e.contains("p0") && e.contains("max_position_embeddings"), "{e}");
    let e = cli_err(&[
        "score",
        "--model",
        "/nonexistent/model",
        "--data",
        &items,
        "--out",
        o,
        "--device",
        "cpu",
    ]);
    assert!(e.contains("/nonexistent/model"), "{e}");
    let e = cli_err(&[
        "score",
        "--model",
        m,
        "--data",
        "/nonexistent/items.jsonl",
        "--out",
        o,
        "--device",
        "cpu",
    ]);
    assert!(e.contains("/nonexistent/items.jsonl"), "{e}");
    let no_answer =
        write_lines(tmp.path(), "no_answer.jsonl", &[ITEMS[0], r#"{"problem": "Add 1+1"}"#]);
    let e = cli_err(&["score", "--model", m, "--data", &no_answer, "--out", o, "--device", "cpu"]);
    assert!(e.contains("no_answer.jsonl:2") && e.contains("answer"), "{e}");
    assert!(!out.exists());
}

/// `score --from-rollouts --device emu` runs the VAS scoring kernel (kernels/vas_score.cu on
/// the CUDA emulator) and writes the same scores as `--device cpu`: ids, n, pass rate and OVS
/// exactly, TDS and VPS within 1e-6 (the kernel's TDS is the same f64 formula of exact n-gram
/// counts; only the device's log/exp round differently, tests/suite/rl_kernels.rs).
#[cfg(feature = "emu")]
#[test]
fn from_rollouts_device_emu_equals_cpu() {
    use rand::{Rng, SeedableRng};
    let tmp = tempfile::tempdir().unwrap();
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut lines = Vec::new();
    for item in 0..12 {
        let k = [1usize, 2, 3, 8, 5, 16][item % 6];
        for j in 0..k {
            let len = if j == 2 { 2 } else { r.gen_range(0..30) };
            let toks: Vec<u32> = (0..len).map(|_| r.gen_range(0..(3 + item as u32))).collect();
            lines.push(rollout(&format!("item{item}"), &toks, r.gen_range(0..2) as f32));
        }
    }
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let p = write_lines(tmp.path(), "rollouts.jsonl", &refs);
    let run = |dev: &str| {
        let out = tmp.path().join(format!("scores-{dev}.jsonl"));
        cli_ok(&["score", "--from-rollouts", &p, "--out", out.to_str().unwrap(), "--device", dev]);
        read_lines(&out)
    };
    let (cpu, emu) = (run("cpu"), run("emu"));
    assert_eq!(cpu.len(), 12);
    assert_eq!(emu.len(), cpu.len());
    let mut varied = 0;
    for (c, e) in cpu.iter().zip(&emu) {
        assert_eq!(
            (&c["id"], &c["n"], &c["pass_rate"], &c["ovs"]),
            (&e["id"], &e["n"], &e["pass_rate"], &e["ovs"])
        );
        for k in ["tds", "vps"] {
            assert!((f(c, k) - f(e, k)).abs() <= 1e-6, "{k}: cpu {c} vs emu {e}");
        }
        varied += (f(c, "tds") > 0.0) as usize;
    }
    assert!(varied >= 6, "most items have diverse rollouts: {cpu:?}");
}

/// `score --model ... --device emu` generates on the emulator and scores with the VAS kernel;
/// re-scoring the rollouts it wrote on the CPU reference gives the same scores (n, pass rate
/// and OVS exactly, TDS and VPS within 1e-6).
#[cfg(feature = "emu")]
#[test]
fn with_model_on_emu_scores_like_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    demo_model_dir(&model, 7);
    let items = write_lines(tmp.path(), "items.jsonl", ITEMS);
    let (out, ro, re) =
        (tmp.path().join("s.jsonl"), tmp.path().join("r.jsonl"), tmp.path().join("re.jsonl"));
    #[rustfmt::skip]
    cli_ok(&["score", "--model", model.to_str().unwrap(), "--data", &items, "--rollouts-per-item", "4",
        "--out", out.to_str().unwrap(), "--rollouts-out", ro.to_str().unwrap(), "--temperature", "1",
        "--max-new-tokens", "8", "--prompt-style", "plain", "--seed", "5", "--device", "emu"]);
    #[rustfmt::skip]
    cli_ok(&["score", "--from-rollouts", ro.to_str().unwrap(), "--out", re.to_str().unwrap(), "--device", "cpu"]);
    let (d, c) = (read_lines(&out), read_lines(&re));
    assert_eq!(d.len(), 3);
    assert_eq!(d.len(), c.len());
    for (d, c) in d.iter().zip(&c) {
        assert_eq!(
            (&d["id"], &d["n"], &d["pass_rate"], &d["ovs"]),
            (&c["id"], &c["n"], &c["pass_rate"], &c["ovs"])
        );
        for k in ["tds", "vps"] {
            assert!((f(d, k) - f(c, k)).abs() <= 1e-6, "{k}: emu {d} vs cpu {c}");
        }
    }
}

/// Rollouts made elsewhere as text ({"id", "response"}, vLLM's outputs): --tokenizer gives
/// the token ids and --data grades them, and the scores equal those of the same rollouts
/// written with their ids and accuracies. Items may name images (not opened: grading only).
#[test]
fn from_rollouts_as_text_tokenized_and_graded() {
    let tmp = tempfile::tempdir().unwrap();
    let tok_path = fixture("tokenizer.json");
    let tok = mmr1_fast::tokenizer::Tokenizer::from_file(&tok_path).unwrap();
    let items = write_lines(
        tmp.path(),
        "items.jsonl",
        &[
            r#"{"id": "p0", "problem": "<image>Add 1+2", "answer": "3", "image": "not-here.png"}"#,
            r#"{"id": 1, "problem": "Add 4+5", "answer": 9}"#,
        ],
    );
    let texts = [
        ("p0", "So \\boxed{3}.", 1.0),
        ("p0", "I think it is \\boxed{4}", 0.0),
        ("p0", "<think>1+2</think> \\boxed{3}", 1.0),
        ("1", "\\boxed{9}", 1.0),
        ("1", "It is \\boxed{nine}? no, \\boxed{9}", 1.0),
        ("1", "\\boxed{10}", 0.0),
    ];
    let explicit: Vec<String> = texts
        .iter()
        .map(|(id, t, a)| {
            json!({"id": id, "tokens": tok.encode(t).unwrap(), "accuracy": a}).to_string()
        })
        .collect();
    let explicit: Vec<&str> = explicit.iter().map(String::as_str).collect();
    let explicit = write_lines(tmp.path(), "explicit.jsonl", &explicit);
    let as_text: Vec<String> =
        texts.iter().map(|(id, t, _)| json!({"id": id, "response": t}).to_string()).collect();
    let as_text: Vec<&str> = as_text.iter().map(String::as_str).collect();
    let as_text = write_lines(tmp.path(), "text.jsonl", &as_text);
    let (a, b) = (tmp.path().join("a.jsonl"), tmp.path().join("b.jsonl"));
    cli_ok(&["score", "--from-rollouts", &explicit, "--out", a.to_str().unwrap()]);
    let t = tok_path.to_str().unwrap();
    #[rustfmt::skip]
    cli_ok(&["score", "--from-rollouts", &as_text, "--tokenizer", t, "--data", &items, "--out", b.to_str().unwrap()]);
    let s = read_lines(&a);
    assert_eq!(s.len(), 2);
    assert!((f(&s[0], "pass_rate") - 2.0 / 3.0).abs() < 1e-6 && f(&s[0], "tds") > 0.0, "{s:?}");
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "text and ids score alike");

    let o = b.to_str().unwrap();
    let e = cli_err(&["score", "--from-rollouts", &as_text, "--data", &items, "--out", o]);
    assert!(e.contains("text.jsonl:1") && e.contains("give --tokenizer"), "{e}");
    let e = cli_err(&["score", "--from-rollouts", &as_text, "--tokenizer", t, "--out", o]);
    assert!(e.contains("text.jsonl:1") && e.contains("give --data"), "{e}");
    let stray = write_lines(tmp.path(), "stray.jsonl", &[r#"{"id": "zz", "response": "1"}"#]);
    #[rustfmt::skip]
    let e = cli_err(&["score", "--from-rollouts", &stray, "--tokenizer", t, "--data", &items, "--out", o]);
    assert!(e.contains("stray.jsonl:1") && e.contains("unknown id \"zz\""), "{e}");
    let e = cli_err(&["score", "--data", &items, "--tokenizer", t, "--out", o]);
    assert!(e.contains("--from-rollouts"), "{e}");
}

/// A scoring pass stopped at its second batch (a fault injected at the append) continues from
/// its partial file: the scores and rollouts of an uninterrupted pass. The command leaves no
/// partial file after a pass that ends, and refuses one of another run, untouched.
#[test]
fn an_interrupted_scoring_pass_continues_where_it_stopped() {
    use mmr1_fast::backend::cpu::Cpu;
    use mmr1_fast::data::prompt::PromptStyle;
    use mmr1_fast::data::rl_items::RlItem;
    use mmr1_fast::fs::fault;
    use mmr1_fast::model::Qwen2;
    use mmr1_fast::rl::graded::{GradeParams, GradedRollout};
    use mmr1_fast::rl::partial_results::{partial_path, Partial};
    use mmr1_fast::rl::reward::RewardConfig;
    use mmr1_fast::rl::rollout::SamplingParams;
    use mmr1_fast::rl::scoring::{score_with_model, score_with_model_resumable, VpsParams};
    use mmr1_fast::tokenizer::Tokenizer;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    demo_model_dir(&dir, 7);
    let model = Qwen2::load(&Cpu, &dir).unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let items: Vec<RlItem> = ITEMS.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let sampling = SamplingParams { temperature: 1.0, max_new_tokens: 10, ..Default::default() };
    let grade = GradeParams {
        sampling,
        per_item: 3,
        prompt_style: PromptStyle::Plain,
        batch_items: 2,
        seed: 9,
        reward: RewardConfig::default(),
    };
    let vps = VpsParams::default();
    let whole = score_with_model(&model, &Cpu, &tok, &items, &grade, vps, |_| {}).unwrap();
    let out = tmp.path().join("scores.jsonl");
    let run = |fail_at: Option<u64>, progress: &mut Vec<usize>| {
        let mut partial = Partial::<Vec<GradedRollout>>::open(&out, "fp", items.len(), 2)?;
        if let Some(n) = fail_at {
            fault::fail_at(n);
        }
        let on = |d| progress.push(d);
        let r =
            score_with_model_resumable(&model, &Cpu, &tok, &items, &grade, vps, &mut partial, on);
        fault::disarm();
        let r = r?;
        partial.finish()?;
        anyhow::Ok(r)
    };
    let e = run(Some(1), &mut vec![]).unwrap_err();
    assert!(format!("{e:#}").contains("injected fault"), "{e:#}");
    assert_eq!(read_lines(&partial_path(&out)).len(), 1 + 2, "the header and the first batch");
    let mut progress = vec![];
    let resumed = run(None, &mut progress).unwrap();
    assert_eq!(progress, vec![2, 3], "the first batch is not decoded again");
    assert_eq!(
        serde_json::to_string(&resumed).unwrap(),
        serde_json::to_string(&whole).unwrap(),
        "the scores and rollouts of an uninterrupted pass"
    );
    assert!(!partial_path(&out).exists());

    // The command: no partial file left behind; another run's partial file refused, untouched.
    let items_file = write_lines(tmp.path(), "items.jsonl", ITEMS);
    #[rustfmt::skip]
    let args = ["score", "--model", dir.to_str().unwrap(), "--data", &items_file, "--rollouts-per-item", "2",
        "--out", out.to_str().unwrap(), "--temperature", "1", "--max-new-tokens", "6", "--device", "cpu",
        "--prompt-style", "plain"];
    cli_ok(&args);
    assert!(out.exists() && !partial_path(&out).exists());
    // A partial file without results is started over whatever run it names.
    std::fs::write(
        partial_path(&out),
        "{\"mmr1_partial\": \"x\", \"items\": 3, \"batch_items\": 8}\n",
    )
    .unwrap();
    cli_ok(&args);
    assert!(!partial_path(&out).exists());
    let planted = "{\"mmr1_partial\": \"x\", \"items\": 3, \"batch_items\": 8}\n[]\n";
    std::fs::write(partial_path(&out), planted).unwrap();
    let e = cli_err(&args);
    assert!(e.contains("scores.jsonl.partial") && e.contains("another run"), "{e}");
    assert_eq!(std::fs::read_to_string(partial_path(&out)).unwrap(), planted);
}
