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
        ("{\"messages\": [{\"role\": \"user\", \"content\": [1]}]}\n", ":1: messages[0]: field \"content\" must be a string"),
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
