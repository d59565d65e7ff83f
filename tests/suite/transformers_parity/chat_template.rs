//! Checkpoints' own chat templates against transformers' `apply_chat_template`
//! (tests/fixtures/chat_templates.json, made by scripts/make_chat_fixtures.py), where the
//! engine finds them, and what they change downstream: RL prompts, SFT spans, the files a
//! written checkpoint carries.

use crate::common::fixture;
use mmr1_fast::chat_template::ChatTemplate;
use mmr1_fast::data::prompt::{render_prompt, render_prompt_chatml, PromptStyle};
use mmr1_fast::data::sft_data::{render_with_spans, tokenize};
use mmr1_fast::tokenizer::{copy_tokenizer_files, Message, Tokenizer};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixtures() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("chat_templates.json")).unwrap()).unwrap()
}

fn specials(f: &Value) -> Vec<(String, String)> {
    f["specials"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

fn template(f: &Value, name: &str) -> ChatTemplate {
    let src = f["templates"][name].as_str().unwrap().to_string();
    ChatTemplate::new(src, PathBuf::from(name), specials(f)).unwrap()
}

fn messages(v: &Value) -> Vec<Message> {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn renders_as_transformers_does() {
    let f = fixtures();
    let cases = f["cases"].as_array().unwrap();
    assert!(cases.len() >= 44, "{} cases", cases.len());
    let mut errors = 0;
    for (i, c) in cases.iter().enumerate() {
        let t = template(&f, c["template"].as_str().unwrap());
        let got =
            t.render(&messages(&c["messages"]), c["add_generation_prompt"].as_bool().unwrap());
        if c.get("error").is_some() {
            let e = format!("{:#}", got.expect_err("raise_exception must fail the render"));
            assert!(e.contains(c["message"].as_str().unwrap()), "case {i}: {e}");
            errors += 1;
        } else {
            assert_eq!(got.unwrap(), c["text"].as_str().unwrap(), "case {i} ({})", c["template"]);
        }
    }
    assert_eq!(errors, 1, "one template raises on an unknown role");
}

/// A model directory with `tokenizer.json` and the given side files.
fn model_dir(files: &[(&str, String)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("tokenizer.json"), d.path().join("tokenizer.json")).unwrap();
    for (name, text) in files {
        std::fs::write(d.path().join(name), text).unwrap();
    }
    d
}

fn tok_of(dir: &Path) -> Tokenizer {
    Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap()
}

#[test]
fn found_where_transformers_looks() {
    let f = fixtures();
    let src = |n: &str| f["templates"][n].as_str().unwrap().to_string();
    let user = [Message::new("user", "Hi")];
    let render = |d: &Path| tok_of(d).render_chat(&user, None, true).unwrap();
    let as_config = |t: Value| {
        serde_json::json!({"chat_template": t, "bos_token": {"content": "<|endoftext|>"},
                           "eos_token": "<|im_end|>"})
        .to_string()
    };
    let want = |n: &str| template(&f, n).render(&user, true).unwrap();

    // None at all: the built-in ChatML, no system turn.
    let d = model_dir(&[]);
    assert!(tok_of(d.path()).chat_template().is_none());
    assert_eq!(render(d.path()), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    // tokenizer_config.json, a string; special tokens as strings or added-token objects.
    let d = model_dir(&[("tokenizer_config.json", as_config(src("blocks_and_specials").into()))]);
    assert_eq!(render(d.path()), want("blocks_and_specials"));
    assert!(render(d.path()).starts_with("<|endoftext|>"), "bos_token from its object form");
    // A list of named templates: "default".
    let list = serde_json::json!([{"name": "tool_use", "template": "TOOLS"},
                                  {"name": "default", "template": src("chatml_default_system")}]);
    let d = model_dir(&[("tokenizer_config.json", as_config(list))]);
    assert_eq!(render(d.path()), want("chatml_default_system"));
    // chat_template.jinja wins over tokenizer_config.json; chat_template.json (a processor's)
    // is read when neither has one.
    let d = model_dir(&[
        ("tokenizer_config.json", as_config(src("blocks_and_specials").into())),
        ("chat_template.jinja", src("chatml_default_system")),
    ]);
    assert_eq!(render(d.path()), want("chatml_default_system"));
    let d = model_dir(&[
        ("tokenizer_config.json", r#"{"eos_token": "<|im_end|>"}"#.to_string()),
        (
            "chat_template.json",
            serde_json::json!({"chat_template": src("python_methods")}).to_string(),
        ),
    ]);
    assert_eq!(render(d.path()), want("python_methods"));
    // A template that does not compile, or a list without a default, is an error naming the file.
    let d = model_dir(&[("chat_template.jinja", "{% for m in messages %}".to_string())]);
    let e = Tokenizer::from_file(&d.path().join("tokenizer.json")).err().unwrap();
    assert!(format!("{e:#}").contains("chat_template.jinja"), "{e:#}");
    let d = model_dir(&[(
        "tokenizer_config.json",
        as_config(serde_json::json!([{"name": "rag", "template": "x"}])),
    )]);
    let e = Tokenizer::from_file(&d.path().join("tokenizer.json")).err().unwrap();
    assert!(format!("{e:#}").contains("default"), "{e:#}");
}

#[test]
fn rl_prompts_use_the_checkpoints_template() {
    let f = fixtures();
    let d = model_dir(&[(
        "chat_template.jinja",
        f["templates"]["chatml_default_system"].as_str().unwrap().to_string(),
    )]);
    let tok = tok_of(d.path());
    let p = render_prompt(&tok, "1+1?", None, PromptStyle::Plain).unwrap();
    // As verl renders it: the template's own default system turn, then the user turn.
    assert_eq!(
        p,
        "<|im_start|>system\nYou are a careful solver.<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_ne!(p, render_prompt_chatml("1+1?", PromptStyle::Plain));
    // An item's own system turn replaces the template's default one (the template's
    // `messages[0].role == 'system'` branch, as transformers renders it).
    assert_eq!(
        render_prompt(&tok, "1+1?", Some("Be brief."), PromptStyle::Plain).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"
    );
    let plain = tok_of(model_dir(&[]).path());
    assert_eq!(
        render_prompt(&plain, "1+1?", None, PromptStyle::Mmr1).unwrap(),
        render_prompt_chatml("1+1?", PromptStyle::Mmr1)
    );
}

#[test]
fn sft_spans_from_a_template_are_the_built_in_ones() {
    // The ChatML-shaped template with a default system turn renders what the built-in
    // renderer does with that system prompt: the same text and the same assistant spans.
    let f = fixtures();
    let t = template(&f, "chatml_default_system");
    for c in
        f["cases"].as_array().unwrap().iter().filter(|c| c["template"] == "chatml_default_system")
    {
        let msgs = messages(&c["messages"]);
        let (text, spans) = t.render_with_spans(&msgs).unwrap();
        let (want_text, want_spans) = render_with_spans(&msgs, Some("You are a careful solver."));
        assert_eq!(text, want_text);
        assert_eq!(spans, want_spans, "{msgs:?}");
    }
    // And through the tokenizer: the same ids and trained-token mask.
    let d = model_dir(&[(
        "tokenizer_config.json",
        serde_json::json!({"chat_template": f["templates"]["chatml_default_system"]}).to_string(),
    )]);
    let with_t = tok_of(d.path());
    let plain = tok_of(model_dir(&[]).path());
    let msgs = messages(&f["cases"][6]["messages"]);
    assert_eq!(msgs.len(), 5, "the two-reply conversation");
    let a = tokenize(&with_t, &msgs, None, 10_000).unwrap();
    let b = tokenize(&plain, &msgs, Some("You are a careful solver."), 10_000).unwrap();
    assert_eq!(a.ids, b.ids);
    assert_eq!(a.trained, b.trained);
    assert!(a.trained.iter().any(|&x| x) && a.trained.iter().any(|&x| !x));
    // A template whose earlier turns change once later ones follow cannot give spans.
    let t = template(&f, "python_methods");
    let long = f["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["template"].as_str().unwrap(), messages(&c["messages"])))
        .find(|(t, m)| *t == "python_methods" && m.len() >= 4)
        .unwrap()
        .1;
    let e = format!("{:#}", t.render_with_spans(&long).unwrap_err());
    assert!(e.contains("differently once later messages follow"), "{e}");
    // Also when only the whole conversation shows it: an ending written after a final reply.
    let src = "{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}\
               {% if messages[-1].role == 'assistant' %}END{% endif %}\
               {% if add_generation_prompt %}<assistant>{% endif %}";
    let t = ChatTemplate::new(src.into(), PathBuf::from("end"), vec![]).unwrap();
    let one = [Message::new("user", "a"), Message::new("assistant", "b")];
    let (text, spans) = t.render_with_spans(&one).unwrap();
    assert_eq!(&text[spans[0].clone()], "b</assistant>END");
    let two = [&one[..], &[Message::new("user", "c"), Message::new("assistant", "d")]].concat();
    let e = format!("{:#}", t.render_with_spans(&two).unwrap_err());
    assert!(e.contains("message 1 (assistant)"), "{e}");
}

#[test]
fn written_checkpoints_carry_the_template_files() {
    let src = model_dir(&[
        ("tokenizer_config.json", r#"{"chat_template": "X"}"#.to_string()),
        ("chat_template.jinja", "J".to_string()),
        ("chat_template.json", r#"{"chat_template": "P"}"#.to_string()),
        ("special_tokens_map.json", r#"{"pad_token": "<|endoftext|>"}"#.to_string()),
    ]);
    let out = tempfile::tempdir().unwrap();
    copy_tokenizer_files(&src.path().join("tokenizer.json"), out.path()).unwrap();
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "chat_template.json",
        "special_tokens_map.json",
    ] {
        assert_eq!(
            std::fs::read(out.path().join(name)).unwrap(),
            std::fs::read(src.path().join(name)).unwrap(),
            "{name}"
        );
    }
}
