//! `mmr1-fast reward`: exact verdicts for hand-made responses, and bad input named by line.

use crate::common;
use common::*;
use serde_json::json;

const ITEMS: &[&str] = &[
    r#"{"id": "a", "problem": "1+1?", "answer": "2"}"#,
    r#"{"id": "b", "problem": "Which is four? A. 3 B. 4", "answer": "B", "options": ["3", "4"]}"#,
    r#"{"problem": "Half?", "answer": "\\frac{1}{2}"}"#,
    r#"{"id": "d", "problem": "Never answered", "answer": "7"}"#,
];

/// `reward --data items --responses responses --out out` and `extra` flags, which must succeed:
/// the accuracy of each verdict line, in order.
fn accuracies(items: &str, responses: &str, out: &std::path::Path, extra: &[&str]) -> Vec<f64> {
    accuracies_env(items, responses, out, extra, &[])
}

/// [`accuracies`] with environment variables set for the run.
pub(crate) fn accuracies_env(
    items: &str,
    responses: &str,
    out: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &std::path::Path)],
) -> Vec<f64> {
    let out = out.to_str().unwrap();
    let mut args = vec!["reward", "--data", items, "--responses", responses, "--out", out];
    args.extend_from_slice(extra);
    let o = cli_env(&args, env);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    read_lines(std::path::Path::new(out)).iter().map(|l| l["accuracy"].as_f64().unwrap()).collect()
}

/// The error of a `reward` run over `items` that must fail.
fn reward_error(items: &str, responses: &str, out: &std::path::Path) -> String {
    let out = out.to_str().unwrap();
    cli_err(&["reward", "--data", items, "--responses", responses, "--out", out])
}

const RESPONSES: &[&str] = &[
    r#"{"id": "a", "response": "<think>one plus one</think><answer>\\boxed{2}</answer>"}"#,
    r#"{"id": "a", "text": "the answer is \\boxed{3}"}"#,
    r#"{"id": "b", "response": "<think>four</think><answer>\\boxed{4}</answer>"}"#,
    r#"{"id": 2, "response": "<think>h</think><answer>\\boxed{0.5}</answer>"}"#,
    r#"{"id": "a", "response": "<answer>\\boxed{2}</answer>"}"#,
];

#[test]
fn exact_verdicts_and_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let items = write_lines(tmp.path(), "items.jsonl", ITEMS);
    let resp = write_lines(tmp.path(), "responses.jsonl", RESPONSES);
    let out = tmp.path().join("verdicts.jsonl");
    let stdout =
        cli_ok(&["reward", "--data", &items, "--responses", &resp, "--out", out.to_str().unwrap()]);
    let v = read_lines(&out);
    let expect = [
        json!({"id": "a", "index": 0, "extracted": "2", "accuracy": 1.0, "format": 1.0, "reward": 2.0}),
        json!({"id": "a", "index": 1, "extracted": "3", "accuracy": 0.0, "format": 0.0, "reward": 0.0}),
        json!({"id": "b", "index": 0, "extracted": "4", "accuracy": 1.0, "format": 1.0, "reward": 2.0}),
        json!({"id": "2", "index": 0, "extracted": "0.5", "accuracy": 1.0, "format": 1.0, "reward": 2.0}),
        json!({"id": "a", "index": 2, "extracted": "2", "accuracy": 1.0, "format": 0.0, "reward": 1.0}),
    ];
    assert_eq!(v, expect);
    // a: 2 of 3 right (mixed); b and "2": all right; d: no responses.
    assert!(
        stdout.starts_with("5 responses: accuracy 0.8000, format 0.6000, reward 1.4000"),
        "{stdout}"
    );
    assert!(
        stdout.contains("0 pass rate 0, 1 in (0, 1), 2 pass rate 1, 1 without responses"),
        "{stdout}"
    );

    // Weights change the total only.
    cli_ok(&[
        "reward",
        "--data",
        &items,
        "--responses",
        &resp,
        "--out",
        out.to_str().unwrap(),
        "--format-weight",
        "0.5",
    ]);
    let rewards: Vec<f64> =
        read_lines(&out).iter().map(|l| l["reward"].as_f64().unwrap()).collect();
    assert_eq!(rewards, vec![1.5, 0.0, 1.5, 1.5, 1.0]);
}

#[test]
fn unknown_id_and_malformed_line_are_named_or_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let items = write_lines(tmp.path(), "items.jsonl", ITEMS);
    let out = tmp.path().join("verdicts.jsonl");
    let out_s = out.to_str().unwrap();
    let unknown = write_lines(
        tmp.path(),
        "unknown.jsonl",
        &[RESPONSES[0], RESPONSES[1], r#"{"id": "zz", "response": "x"}"#],
    );
    let e = reward_error(&items, &unknown, &out);
    assert!(e.contains("unknown.jsonl:3") && e.contains("unknown id \"zz\""), "{e}");
    assert!(!out.exists(), "no output on error");

    let broken = write_lines(
        tmp.path(),
        "broken.jsonl",
        &[RESPONSES[0], r#"{"id": "a", "response": "#, RESPONSES[2]],
    );
    let e = reward_error(&items, &broken, &out);
    assert!(e.contains("broken.jsonl:2"), "{e}");
    let no_text = write_lines(tmp.path(), "no_text.jsonl", &[r#"{"id": "a"}"#]);
    let e = reward_error(&items, &no_text, &out);
    assert!(e.contains("no_text.jsonl:1") && e.contains("response"), "{e}");
    let bad_id = write_lines(tmp.path(), "bad_id.jsonl", &[r#"{"id": [1], "response": "x"}"#]);
    let e = reward_error(&items, &bad_id, &out);
    assert!(
        e.contains("bad_id.jsonl:1") && e.contains("\"id\" must be a string or an integer"),
        "{e}"
    );

    let both = write_lines(
        tmp.path(),
        "both.jsonl",
        &[RESPONSES[0], "not json", RESPONSES[2], r#"{"id": "zz", "response": "x"}"#],
    );
    let o = cli(&[
        "reward",
        "--data",
        &items,
        "--responses",
        &both,
        "--out",
        out_s,
        "--bad-lines",
        "skip",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.starts_with("2 responses") && stdout.contains("2 line(s) skipped"), "{stdout}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("skipped 2 bad line(s)"));
    assert_eq!(read_lines(&out).len(), 2);
}

#[test]
fn bad_files_and_flags_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let items = write_lines(tmp.path(), "items.jsonl", ITEMS);
    let resp = write_lines(tmp.path(), "responses.jsonl", RESPONSES);
    let out = tmp.path().join("v.jsonl");
    let out_s = out.to_str().unwrap();
    let e = cli_err(&[
        "reward",
        "--data",
        "/nonexistent/items.jsonl",
        "--responses",
        &resp,
        "--out",
        out_s,
    ]);
    assert!(e.contains("/nonexistent/items.jsonl"), "{e}");
    let e = cli_err(&[
        "reward",
        "--data",
        &items,
        "--responses",
        "/nonexistent/r.jsonl",
        "--out",
        out_s,
    ]);
    assert!(e.contains("/nonexistent/r.jsonl"), "{e}");
    let e = cli_err(&[
        "reward",
        "--data",
        &items,
        "--responses",
        &resp,
        "--out",
        out_s,
        "--accuracy-weight",
        "nan",
    ]);
    assert!(e.contains("--accuracy-weight"), "{e}");
    let e = cli_err(&[
        "reward",
        "--data",
        &items,
        "--responses",
        &resp,
        "--out",
        out_s,
        "--bad-lines",
        "ignore",
    ]);
    assert!(e.contains("--bad-lines"), "{e}");
    let empty = write_lines(tmp.path(), "empty.jsonl", &[""]);
    let e = reward_error(&items, &empty, &out);
    assert!(e.contains("empty.jsonl") && e.contains("no responses"), "{e}");
    let e = cli_err(&[
        "reward",
        "--data",
        &items,
        "--responses",
        &resp,
        "--out",
        "/nonexistent/dir/v.jsonl",
    ]);
    assert!(e.contains("/nonexistent/dir"), "{e}");
}

/// Math-Verify-style answers through the command: a whole-solution reference (its box is the
/// answer), several boxed solutions, a relation, an unboxed "answer is" line, and near misses.
#[test]
fn whole_solution_references_and_several_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let items = write_lines(
        tmp.path(),
        "items.jsonl",
        &[
            r#"{"id": "sol", "problem": "p", "answer": "Thus $x-p=\\boxed{2-2p}$."}"#,
            r#"{"id": "roots", "problem": "p", "answer": "x = 2 \\text{ or } x = 3"}"#,
            r#"{"id": "rel", "problem": "p", "answer": "x \\leq 5"}"#,
        ],
    );
    let resp = write_lines(
        tmp.path(),
        "responses.jsonl",
        &[
            r#"{"id": "sol", "response": "<think>r</think><answer>\\boxed{2-2p}</answer>"}"#,
            r#"{"id": "sol", "response": "\\boxed{2+2p}"}"#,
            r#"{"id": "roots", "response": "\\(\\boxed{3}\\) and \\(\\boxed{2}\\)"}"#,
            r#"{"id": "roots", "response": "\\boxed{2}"}"#,
            r#"{"id": "rel", "response": "so the answer is $5 \\geq x$."}"#,
            r#"{"id": "rel", "response": "\\boxed{x < 5}"}"#,
        ],
    );
    let out = tmp.path().join("verdicts.jsonl");
    cli_ok(&["reward", "--data", &items, "--responses", &resp, "--out", out.to_str().unwrap()]);
    let got: Vec<(String, f64)> = read_lines(&out)
        .iter()
        .map(|l| {
            (l["extracted"].as_str().unwrap_or("").to_string(), l["accuracy"].as_f64().unwrap())
        })
        .collect();
    let want = [
        ("2-2p", 1.0),
        ("2+2p", 0.0),
        ("3, 2", 1.0),
        ("2", 0.0),
        (r"5 \geq x", 1.0),
        ("x < 5", 0.0),
    ];
    let want: Vec<(String, f64)> = want.iter().map(|(x, a)| (x.to_string(), *a)).collect();
    assert_eq!(got, want);
}

/// Items with integer ids and numeric answers (GSM8K-style tables converted to JSONL) grade as
/// their string forms do; responses name them by the same integers. Items with images grade.
#[test]
fn numeric_ids_and_answers_read_as_their_text() {
    let tmp = tempfile::tempdir().unwrap();
    let items = write_lines(
        tmp.path(),
        "items.jsonl",
        &[
            r#"{"id": 7, "problem": "p", "answer": 72}"#,
            r#"{"id": 8, "problem": "p", "answer": 3.5}"#,
            // Images of items are not opened to grade (the file is absent).
            r#"{"id": "9", "problem": "<image>p", "answer": -0.25, "image": {"bytes": null, "path": "gone.png"}}"#,
        ],
    );
    let responses = write_lines(
        tmp.path(),
        "r.jsonl",
        &[
            r#"{"id": 7, "response": "\\boxed{72}"}"#,
            r#"{"id": "8", "response": "\\boxed{\\frac{7}{2}}"}"#,
            r#"{"id": 9, "response": "\\boxed{-1/4}"}"#,
            r#"{"id": 7, "response": "\\boxed{73}"}"#,
        ],
    );
    let out = tmp.path().join("v.jsonl");
    let o = cli(&[
        "reward",
        "--data",
        &items,
        "--responses",
        &responses,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let acc: Vec<(String, f64)> = read_lines(&out)
        .iter()
        .map(|l| (l["id"].as_str().unwrap().to_string(), l["accuracy"].as_f64().unwrap()))
        .collect();
    let want = [("7", 1.0), ("8", 1.0), ("9", 1.0), ("7", 0.0)];
    assert_eq!(acc, want.map(|(i, a)| (i.to_string(), a)));
    let bad =
        write_lines(tmp.path(), "bad.jsonl", &[r#"{"id": 1, "problem": "p", "answer": true}"#]);
    let e = reward_error(&bad, &responses, &out);
    assert!(
        e.contains("bad.jsonl:1") && e.contains("\"answer\" must be a string or a number"),
        "{e}"
    );
}

/// Multiple-choice options as a list under `choices` (MathVista's name) or as an object keyed
/// by letters grade as the `options` list does: a letter reference accepts its option's text.
#[test]
fn options_as_choices_or_keyed_by_letters() {
    let tmp = tempfile::tempdir().unwrap();
    let items = write_lines(
        tmp.path(),
        "items.jsonl",
        &[
            r#"{"id": "a", "problem": "p", "answer": "B", "choices": ["3 cm", "5 cm", "7 cm"]}"#,
            r#"{"id": "b", "problem": "p", "answer": "B", "options": {"B": "5 cm", "A": "3 cm", "C": 7}}"#,
            r#"{"id": "c", "problem": "p", "answer": "C", "options": {"(a)": "3", "(b)": "5", "(c)": "7"}}"#,
        ],
    );
    let responses = write_lines(
        tmp.path(),
        "r.jsonl",
        &[
            r#"{"id": "a", "response": "\\boxed{5 cm}"}"#,
            r#"{"id": "b", "response": "\\boxed{5 cm}"}"#,
            r#"{"id": "b", "response": "\\boxed{7}"}"#,
            r#"{"id": "c", "response": "\\boxed{7}"}"#,
        ],
    );
    let out = tmp.path().join("v.jsonl");
    assert_eq!(accuracies(&items, &responses, &out, &[]), vec![1.0, 1.0, 0.0, 1.0]);
    for (line, want) in [
        (r#"{"problem": "p", "answer": "A", "options": {"A": "x", "C": "y"}}"#, "without a gap"),
        (r#"{"problem": "p", "answer": "A", "options": {"first": "x"}}"#, "keyed by \"first\""),
        (r#"{"problem": "p", "answer": "A", "options": "A. x B. y"}"#, "must be a list of texts"),
        (r#"{"problem": "p", "answer": "A", "options": [["x"]]}"#, "an option must be a text"),
    ] {
        let bad = write_lines(tmp.path(), "bad.jsonl", &[line]);
        let e = reward_error(&bad, &responses, &out);
        assert!(e.contains("bad.jsonl:1") && e.contains(want), "{e}");
    }
}

/// Items and responses as JSON array files; `--bad-lines skip` skips a bad element.
#[test]
fn json_array_files_are_read_element_by_element() {
    let tmp = tempfile::tempdir().unwrap();
    let items = tmp.path().join("items.json");
    std::fs::write(
        &items,
        "[\n  {\"id\": 1, \"problem\": \"p\", \"answer\": \"2\"},\n  {\"id\": 2, \"problem\": \"p\",\n   \"answer\": {}},\n  {\"id\": 3, \"problem\": \"p\", \"answer\": \"[3]\"}\n]\n",
    )
    .unwrap();
    let responses = tmp.path().join("r.json");
    std::fs::write(
        &responses,
        r#"[{"id": 1, "response": "\\boxed{2}"}, {"id": 3, "response": "\\boxed{[3]}"}]"#,
    )
    .unwrap();
    let out = tmp.path().join("v.jsonl");
    let (items, responses) = (items.to_str().unwrap(), responses.to_str().unwrap());
    let e = reward_error(items, responses, &out);
    assert!(e.contains("items.json:3") && e.contains("\"answer\" must be"), "{e}");
    let acc = accuracies(items, responses, &out, &["--bad-lines", "skip"]);
    assert_eq!(acc, vec![1.0, 1.0]);
}

/// verl's rows (`prompt` as chat messages, `reward_model.ground_truth`, extra columns) read as
/// MMR1 items, a system turn before the user's kept as the item's (a record-level `system`
/// too, unless the prompt has its own); a prompt that is not one user turn after an optional
/// system turn, or two different references, are errors.
#[test]
fn verl_rows_read_as_items() {
    let tmp = tempfile::tempdir().unwrap();
    let items = write_lines(
        tmp.path(),
        "verl.jsonl",
        &[
            r#"{"data_source": "gsm8k", "prompt": [{"role": "user", "content": "2+2?"}], "ability": "math", "reward_model": {"style": "rule", "ground_truth": 4}, "extra_info": {"index": 0}}"#,
            r#"{"id": "v", "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}], "images": [{"bytes": null, "path": "a.png"}], "reward_model": {"ground_truth": "3"}, "answer": "3"}"#,
            r#"{"id": "s", "prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}], "system": "ignored", "answer": "1"}"#,
            r#"{"id": "r", "problem": "q", "system": "R", "answer": "1"}"#,
        ],
    );
    let responses = write_lines(
        tmp.path(),
        "r.jsonl",
        &[
            r#"{"id": 0, "response": "\\boxed{4}"}"#,
            r#"{"id": "v", "response": "\\boxed{3}"}"#,
            r#"{"id": "s", "response": "\\boxed{1}"}"#,
        ],
    );
    let out = tmp.path().join("v.jsonl");
    assert_eq!(accuracies(&items, &responses, &out, &[]), vec![1.0, 1.0, 1.0]);
    let items = mmr1_fast::data::rl_items::load_rl_items_to_grade(
        std::path::Path::new(&items),
        mmr1_fast::data::jsonl::BadLines::Stop,
    )
    .unwrap();
    assert_eq!(items[1].problem, "<image>How many?");
    assert_eq!(items[0].answer.as_deref(), Some("4"));
    let systems: Vec<_> = items.iter().map(|it| it.system.as_deref()).collect();
    assert_eq!(systems, [None, None, Some("S"), Some("R")]);
    assert_eq!(items[2].problem, "q");
    for (line, want) in [
        (
            r#"{"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "answer": "1"}"#,
            "must be one user turn, after an optional system turn (got [\"user\", \"assistant\"])",
        ),
        (
            r#"{"prompt": [{"role": "system", "content": [{"type": "image"}]}, {"role": "user", "content": "q"}], "answer": "1"}"#,
            "an image in the system turn",
        ),
        (
            r#"{"problem": "q", "system": 3, "answer": "1"}"#,
            "\"system\" must be a string, not a number",
        ),
        (r#"{"problem": 7, "answer": "1"}"#, "not a number"),
        (
            r#"{"prompt": [{"role": "user", "content": "q"}], "answer": "1", "reward_model": {"ground_truth": "2"}}"#,
            "differ: keep one",
        ),
        (
            r#"{"prompt": [{"role": "user", "content": [{"type": "image", "image": "a.png"}]}], "answer": "1"}"#,
            "list the files in \"images\"",
        ),
    ] {
        let bad = write_lines(tmp.path(), "bad.jsonl", &[line]);
        let e = reward_error(&bad, &responses, &out);
        assert!(e.contains("bad.jsonl:1") && e.contains(want), "{e}");
    }
}
