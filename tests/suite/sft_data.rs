//! SFT data: the three JSONL forms, the assistant-only mask, error messages, packing.

use crate::sft_common;
use mmr1_fast::data::sft_data::{load_jsonl, load_sft_dataset, parse_record, tokenize};
use mmr1_fast::tokenizer::{apply_chat_template, Message, Tokenizer, QWEN25_DEFAULT_SYSTEM};
use mmr1_fast::train::sft::pack_micro_batches;
use sft_common::*;

fn tok() -> Tokenizer {
    Tokenizer::from_file(&tokenizer_path()).unwrap()
}

#[test]
fn three_forms_give_the_same_conversation() {
    let a = parse_record(&serde_json::json!({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]})).unwrap();
    let b = parse_record(&serde_json::json!({"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}], "images": ["x.png"]})).unwrap();
    let c = parse_record(&serde_json::json!({"problem": "Q", "solution": "A"})).unwrap();
    assert_eq!(a, vec![Message::new("user", "Q"), Message::new("assistant", "A")]);
    assert_eq!(a, b);
    assert_eq!(a, c);
    let s = parse_record(&serde_json::json!({"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]})).unwrap();
    assert_eq!(s[0], Message::new("system", "S"));
}

/// Content lists (transformers' and TRL's form) and TRL's conversational prompt-completion
/// records read as the string forms do; image parts stand where they are as `<image>` markers.
#[test]
fn content_parts_and_prompt_completion_read_as_messages() {
    use mmr1_fast::data::sft_data::parse_conversation;
    let strings = parse_record(&serde_json::json!({"messages": [
        {"role": "system", "content": "S"}, {"role": "user", "content": "What is 2+2? Think."},
        {"role": "assistant", "content": "4"}]}))
    .unwrap();
    let parts = parse_record(&serde_json::json!({"messages": [
        {"role": "system", "content": [{"type": "text", "text": "S"}]},
        {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"},
            {"text": " Think."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "4", "index": null}]}]}))
    .unwrap();
    assert_eq!(parts, strings);
    let pc = parse_record(&serde_json::json!({
        "prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "What is 2+2? Think."}],
        "completion": [{"role": "assistant", "content": "4"}]}))
    .unwrap();
    assert_eq!(pc, strings);

    // TRL's vision rows: image parts without files (the files come from "images", in order).
    let trl = parse_conversation(&serde_json::json!({"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Compare ", "index": null},
            {"type": "image", "text": null, "index": 0}, {"type": "text", "text": " and "},
            {"type": "image", "text": null, "index": 1}, {"type": "text", "text": "."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "same"}]}],
        "images": ["a.png", "b.png"]}))
    .unwrap();
    assert_eq!(trl.messages[0].content, "Compare <image> and <image>.");
    assert_eq!((trl.image_parts, trl.inline_images.len()), (2, 0));
    // Qwen's and transformers' inline forms: the part names its file.
    let inline = parse_conversation(&serde_json::json!({"messages": [
        {"role": "user", "content": [{"type": "image", "image": "file:///data/a.png"},
            {"type": "image_url", "image_url": {"url": "b.jpg"}}, {"type": "image", "path": "c.png"},
            {"image": "d.png"}, {"type": "text", "text": "Which?"}]},
        {"role": "assistant", "content": "a"}]}))
    .unwrap();
    assert_eq!(inline.messages[0].content, "<image><image><image><image>Which?");
    assert_eq!(inline.inline_images, vec!["/data/a.png", "b.jpg", "c.png", "d.png"]);

    let err = |v: serde_json::Value| format!("{:#}", parse_conversation(&v).unwrap_err());
    let user = |content: serde_json::Value| {
        serde_json::json!({"messages": [{"role": "user", "content": content},
            {"role": "assistant", "content": "x"}]})
    };
    let e = err(user(serde_json::json!([{"type": "image", "image": "a.png"}, {"type": "image"}])));
    assert!(e.contains("1 of 2 image parts name their file"), "{e}");
    let e = err(user(serde_json::json!([{"type": "image", "url": "https://x.org/a.png"}])));
    assert!(e.contains("messages[0]: content[0]") && e.contains("remote and inline"), "{e}");
    let e = err(user(
        serde_json::json!([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]),
    ));
    assert!(e.contains("remote and inline"), "{e}");
    let e = err(user(serde_json::json!([{"type": "video", "video": "v.mp4"}])));
    assert!(e.contains("content[0]: type \"video\" is not read"), "{e}");
    let e = err(user(serde_json::json!([{"type": "text", "text": null}])));
    assert!(e.contains("a text part without a \"text\" string"), "{e}");
    let e = err(serde_json::json!({"messages": [{"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "image"}]}]}));
    assert!(e.contains("messages[1]: an image in an assistant turn"), "{e}");
    let e = err(serde_json::json!({"prompt": "Q", "completion": "A"}));
    assert!(e.contains("TRL's raw-text form"), "{e}");
    let e = err(serde_json::json!({"prompt": [{"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"}],
        "completion": [{"role": "assistant", "content": "a2"}]}));
    assert!(e.contains("prompt[1] is an assistant turn"), "{e}");
    let e = err(serde_json::json!({"prompt": [{"role": "user", "content": "q"}],
        "completion": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"}]}));
    assert!(e.contains("completion[1] is a user turn"), "{e}");
}

/// The text path refuses image parts as it refuses listed images; the image path refuses
/// files named twice (in parts and in "images").
#[test]
fn image_parts_are_refused_where_images_are() {
    use mmr1_fast::data::sft_data::load_jsonl_with_images;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.jsonl");
    std::fs::write(dir.path().join("a.png"), b"x").unwrap();
    let parts = r#"{"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}, {"role": "assistant", "content": "a"}]}"#;
    std::fs::write(&p, format!("{parts}\n")).unwrap();
    let e = format!("{:#}", load_jsonl(&p).unwrap_err());
    assert!(e.contains(":1: the example has images (image parts); a text model"), "{e}");
    let named = r#"{"messages": [{"role": "user", "content": [{"type": "image", "image": "a.png"}]}, {"role": "assistant", "content": "a"}]}"#;
    std::fs::write(&p, format!("{named}\n")).unwrap();
    let e = format!("{:#}", load_jsonl(&p).unwrap_err());
    assert!(e.contains("the example has images (a.png)"), "{e}");
    let recs = load_jsonl_with_images(&p).unwrap();
    assert_eq!(recs[0].images, vec![dir.path().join("a.png")]);
    let twice = r#"{"messages": [{"role": "user", "content": [{"type": "image", "image": "a.png"}]}, {"role": "assistant", "content": "a"}], "images": ["a.png"]}"#;
    std::fs::write(&p, format!("{named}\n{twice}\n")).unwrap();
    let e = format!("{:#}", load_jsonl_with_images(&p).unwrap_err());
    assert!(e.contains(":2: images are named both"), "{e}");
}

#[test]
fn only_assistant_turns_are_trained() {
    let t = tok();
    let msgs = vec![
        Message::new("user", "Hi there"),
        Message::new("assistant", "<think>x</think><answer>\\boxed{2}</answer>"),
        Message::new("user", "again"),
        Message::new("assistant", "ok"),
    ];
    let ex = tokenize(&t, &msgs, Some(QWEN25_DEFAULT_SYSTEM), 10_000).unwrap();
    // Token ids are exactly those of the rendered template.
    let text = apply_chat_template(&msgs, Some(QWEN25_DEFAULT_SYSTEM), false);
    assert_eq!(ex.ids, t.encode(&text).unwrap());
    // The trained tokens, decoded run by run, are each assistant turn's content + <|im_end|>\n.
    let mut runs: Vec<Vec<u32>> = vec![];
    for (i, (&id, &tr)) in ex.ids.iter().zip(&ex.trained).enumerate() {
        if tr {
            if i == 0 || !ex.trained[i - 1] {
                runs.push(vec![]);
            }
            runs.last_mut().unwrap().push(id);
        }
    }
    let texts: Vec<String> = runs.iter().map(|r| t.decode(r, true).unwrap()).collect();
    assert_eq!(
        texts,
        vec![
            "<think>x</think><answer>\\boxed{2}</answer><|im_end|>\n".to_string(),
            "ok<|im_end|>\n".to_string()
        ]
    );
    // Truncation keeps the head.
    let short = tokenize(&t, &msgs, Some(QWEN25_DEFAULT_SYSTEM), 20).unwrap();
    assert_eq!(short.ids, ex.ids[..20]);
    assert_eq!(short.trained_targets(), 0, "the first 20 tokens are all system prompt");
}

#[test]
fn bad_lines_are_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.jsonl");
    let cases = [
        ("{\"problem\": \"a\", \"solution\": \"b\"}\n\n{not json}\n", ":3: not valid JSON"),
        ("{\"problem\": \"a\", \"solution\": \"b\"}\n{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}]}\n", ":2: the conversation has no assistant turn"),
        ("{\"conversations\": [{\"from\": \"bot\", \"value\": \"q\"}]}\n", ":1: conversations[0]: \"from\" is \"bot\""),
        ("{\"messages\": [{\"role\": \"user\", \"content\": 1}]}\n", ":1: messages[0]: field \"content\" must be a string or a list of parts, found a number"),
        ("{\"messages\": [{\"role\": \"user\", \"content\": [1]}]}\n", ":1: messages[0]: content[0] must be a text or image part (an object), found a number"),
        ("{\"text\": \"x\"}\n", ":1: expected a \"messages\""),
        ("[1, 2]\n", ":1: expected a JSON object"),
    ];
    for (text, want) in cases {
        std::fs::write(&p, text).unwrap();
        let err = format!("{:#}", load_jsonl(&p).unwrap_err());
        assert!(err.contains(&format!("{}{want}", p.display())), "got: {err}\nwant: {want}");
    }
    std::fs::write(&p, "\n").unwrap();
    assert!(format!("{:#}", load_jsonl(&p).unwrap_err()).contains("no examples"));
    assert!(format!("{:#}", load_jsonl(&dir.path().join("missing.jsonl")).unwrap_err())
        .contains("cannot read"));
}

#[test]
fn dataset_loads_and_drops_examples_without_targets() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.jsonl");
    std::fs::write(&p, synthetic_jsonl(6)).unwrap();
    let (ex, dropped) = load_sft_dataset(&p, &tok(), None, 4096).unwrap();
    assert_eq!((ex.len(), dropped), (6, 0));
    assert!(ex.iter().all(|e| e.trained_targets() >= 3));
    let err = load_sft_dataset(&p, &tok(), None, 5).unwrap_err();
    assert!(format!("{err:#}").contains("no example has a trained token"), "{err:#}");
}

#[test]
fn micro_batches_pack_greedily_in_order() {
    assert_eq!(pack_micro_batches(&[3, 4, 2, 9, 1], 8), vec![0..2, 2..3, 3..4, 4..5]);
    assert_eq!(pack_micro_batches(&[3, 4, 1], 8), vec![0..3]);
    assert_eq!(pack_micro_batches(&[20], 8), vec![0..1], "a long sequence goes alone");
    assert!(pack_micro_batches(&[], 8).is_empty());
}

/// A `.json` file holding one array of records (LLaMA-Factory's and MMR1's cold-start files)
/// reads as the same records written one per line; errors name the line a record starts on.
#[test]
fn a_json_array_file_reads_as_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let records = [
        serde_json::json!({"conversations": [{"from": "human", "value": "Q1 [x], {y}"},
            {"from": "gpt", "value": "A \"quoted\" ]},"}]}),
        serde_json::json!({"problem": "2+2?\n", "solution": "4"}),
        serde_json::json!({"messages": [{"role": "user", "content": "é ü 中"},
            {"role": "assistant", "content": "ok"}]}),
    ];
    let lines: Vec<String> = records.iter().map(|r| r.to_string()).collect();
    let jsonl = dir.path().join("d.jsonl");
    std::fs::write(&jsonl, lines.join("\n") + "\n").unwrap();
    let want = load_jsonl(&jsonl).unwrap();
    assert_eq!(want.len(), 3);
    let pretty = dir.path().join("pretty.json");
    let text = serde_json::to_string_pretty(&records).unwrap();
    std::fs::write(&pretty, format!("\u{feff}\n  {text}\n")).unwrap();
    assert_eq!(load_jsonl(&pretty).unwrap(), want);
    let compact = dir.path().join("compact.json");
    std::fs::write(&compact, serde_json::to_string(&records).unwrap()).unwrap();
    assert_eq!(load_jsonl(&compact).unwrap(), want);

    let bad = dir.path().join("bad.json");
    let err = |text: &str| {
        std::fs::write(&bad, text).unwrap();
        format!("{:#}", load_jsonl(&bad).unwrap_err())
    };
    let ok = r#"{"problem": "a", "solution": "b"}"#;
    let e = err(&format!("[\n  {ok},\n\n  {{\"problem\": \"a\"\n  }}\n]"));
    assert!(e.contains("bad.json:4: missing field \"solution\""), "{e}");
    let e = err(&format!("[{ok},\n{ok}"));
    assert!(e.contains("bad.json: the JSON array is not closed"), "{e}");
    let e = err(&format!("[{ok}]\n{ok}"));
    assert!(e.contains("bad.json: line 2: text after the closing ]"), "{e}");
    let e = err(&format!("[{ok},\n , {ok}]"));
    assert!(e.contains("line 2: an empty element"), "{e}");
    assert!(err("[]").contains("no examples"));
}

/// LLaMA-Factory's alpaca records read as its converter reads them (history pairs, then
/// instruction and input joined by a newline, then output); a record-level `system` opens the
/// conversation unless the conversation has its own system turn.
#[test]
fn alpaca_records_and_a_record_level_system() {
    let m = |r: &str, c: &str| Message::new(r, c);
    let a = parse_record(&serde_json::json!({"instruction": "Add.", "input": "2 and 3",
        "output": "5", "history": [["hi", "hello"]], "system": "Be brief."}))
    .unwrap();
    assert_eq!(
        a,
        vec![
            m("system", "Be brief."),
            m("user", "hi"),
            m("assistant", "hello"),
            m("user", "Add.\n2 and 3"),
            m("assistant", "5")
        ]
    );
    let b = parse_record(&serde_json::json!({"instruction": "Add 2 and 3.", "input": "",
        "output": "5"}))
    .unwrap();
    assert_eq!(b, vec![m("user", "Add 2 and 3."), m("assistant", "5")]);
    let own = parse_record(&serde_json::json!({"system": "ignored", "conversations": [
        {"from": "system", "value": "S"}, {"from": "human", "value": "q"},
        {"from": "gpt", "value": "a"}]}))
    .unwrap();
    assert_eq!(own[0], m("system", "S"));
    assert_eq!(own.len(), 3);
    let err = |v: serde_json::Value| format!("{:#}", parse_record(&v).unwrap_err());
    assert!(err(serde_json::json!({"instruction": "q"})).contains("missing field \"output\""));
    assert!(err(serde_json::json!({"input": "", "output": "a"})).contains("neither"));
    let e = err(serde_json::json!({"instruction": "q", "output": "a", "history": [["q"]]}));
    assert!(e.contains("history[0] must be a [question, answer] pair"), "{e}");
    let e = err(serde_json::json!({"problem": "q", "solution": "a", "system": 3}));
    assert!(e.contains("field \"system\" must be a string"), "{e}");
}

/// Image entries: paths, `file://` URLs and `{"path"}` objects (Hugging Face datasets' Image
/// feature in JSON) name files; remote URLs, embedded bytes and empty paths are refused by name.
#[test]
fn image_entries_name_files_or_are_refused_by_name() {
    use mmr1_fast::data::sft_data::record_images;
    let r = |v: serde_json::Value| record_images(&v);
    let got = r(serde_json::json!({"image": {"bytes": null, "path": "a.png"},
        "images": ["b.png", "file:///abs/c.jpg", {"path": "d.webp", "bytes": null}]}))
    .unwrap();
    assert_eq!(got, vec!["a.png", "b.png", "/abs/c.jpg", "d.webp"]);
    assert!(r(serde_json::json!({"images": null})).unwrap().is_empty());
    let err = |v: serde_json::Value| format!("{:#}", r(v).unwrap_err());
    let e = err(serde_json::json!({"images": ["a.png", {"bytes": "iVBORw0", "path": null}]}));
    assert!(e.contains("images[1]: an image given as bytes embedded in JSON"), "{e}");
    let e = err(serde_json::json!({"image": "https://example.org/a.png"}));
    assert!(e.contains("image: image \"https://example.org/a.png\"...: remote"), "{e}");
    let e = err(serde_json::json!({"images": [3]}));
    assert!(e.contains("images[0]: an image must be a path"), "{e}");
    let e = err(serde_json::json!({"images": [""]}));
    assert!(e.contains("images[0]: an image path is empty"), "{e}");
    let e = err(serde_json::json!({"image": {"url": "a.png"}}));
    assert!(e.contains("must name its file"), "{e}");
}
