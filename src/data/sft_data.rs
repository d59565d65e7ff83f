//! Supervised fine-tuning data: JSONL conversations, rendered with the Qwen chat template
//! and tokenized with a per-token mask of what is trained (assistant turns only).
//!
//! Accepted line forms (one JSON object per line, blank lines skipped):
//! - `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`; a
//!   `content` may also be a list of parts, as transformers' processors and TRL's vision
//!   datasets write it: `{"type": "text", "text": "..."}` and `{"type": "image"}` (the file
//!   named in the part by `image`, `path` or `url`, or else taken in order from `images`),
//!   or `{"type": "image_url", "image_url": {"url": "..."}}`. Text parts are joined with
//!   nothing between them and each image part stands where it is, as Qwen2.5-VL's chat
//!   template renders a list (an `<image>` marker here; `data::vl_sft_data` places them).
//! - TRL's conversational prompt-completion form: `{"prompt": [messages], "completion":
//!   [assistant messages]}` (the prompt's turns are not trained, as TRL trains them).
//! - ShareGPT, MMR1's cold-start form: `{"conversations": [{"from": "human"|"gpt"|"system",
//!   "value": "..."}, ...]}`
//! - `{"problem": "...", "solution": "..."}`: one user turn, one assistant turn.
//! - LLaMA-Factory's alpaca form: `{"instruction", "input", "output", "history": [[q, a]...]}`.
//!
//! A record-level `"system"` string (LLaMA-Factory's system column) is the system turn when
//! the conversation does not open with one of its own.
//!
//! Any form may carry images, `"image": "a.png"` or `"images": [...]` (paths relative to the
//! JSONL file): [`load_jsonl_with_images`] reads them for a Qwen2.5-VL model
//! (`data::vl_sft_data`); [`load_jsonl`], the text path, refuses a record with images, naming
//! the file and line. Other keys are ignored.

use super::jsonl::json_kind;
use crate::tokenizer::{apply_chat_template, Message, Tokenizer};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::path::Path;

/// A tokenized conversation: `ids`, and `trained[i]` true when token `i` is a target of the
/// loss (it lies in an assistant turn: the content and its closing `<|im_end|>\n`, as
/// LLaMA-Factory's Qwen template trains; the `<|im_start|>assistant\n` header is prompt).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SftExample {
    pub ids: Vec<u32>,
    pub trained: Vec<bool>,
}

impl SftExample {
    /// Trained targets: positions 1.. whose token is trained (token 0 is never predicted).
    pub fn trained_targets(&self) -> usize {
        self.trained.iter().skip(1).filter(|&&b| b).count()
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    match v.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => bail!("field {key:?} must be a string, found {}", json_kind(other)),
        None => bail!("missing field {key:?}"),
    }
}

/// The conversation of one JSON record, in any of the accepted forms.
pub fn parse_record(v: &Value) -> Result<Vec<Message>> {
    Ok(parse_conversation(v)?.messages)
}

/// A record's conversation and what its messages say of images.
#[derive(Clone, Debug, PartialEq)]
pub struct Conversation {
    pub messages: Vec<Message>,
    /// Image parts of the messages' content lists (each an `<image>` marker in `messages`).
    pub image_parts: usize,
    /// The files those parts name, in order (empty when none names one).
    pub inline_images: Vec<String>,
}

/// [`parse_record`] with the image parts of content lists counted and their files collected.
pub fn parse_conversation(v: &Value) -> Result<Conversation> {
    if !v.is_object() {
        bail!("expected a JSON object, found {}", json_kind(v));
    }
    let mut parts = ImageParts::default();
    let mut msgs: Vec<Message> = if let Some(list) = v.get("messages") {
        messages_of(list, "messages", &mut parts)?
    } else if let (Some(p), Some(c)) = (v.get("prompt"), v.get("completion")) {
        if p.is_string() || c.is_string() {
            bail!(
                "\"prompt\"/\"completion\" as strings is TRL's raw-text form (trained without a \
                 chat template); this engine trains conversations: write \"problem\"/\"solution\" \
                 or lists of messages"
            );
        }
        let prompt = messages_of(p, "prompt", &mut parts)?;
        let completion = messages_of(c, "completion", &mut parts)?;
        if let Some(i) = prompt.iter().position(|m| m.role == "assistant") {
            bail!(
                "prompt[{i}] is an assistant turn, which TRL would not train and this engine \
                 would: write the record as \"messages\""
            );
        }
        if let Some(i) = completion.iter().position(|m| m.role != "assistant") {
            bail!(
                "completion[{i}] is a {} turn; the completion holds assistant turns only",
                completion[i].role
            );
        }
        prompt.into_iter().chain(completion).collect()
    } else if let Some(list) = v.get("conversations") {
        let list = list.as_array().ok_or_else(|| anyhow!("\"conversations\" must be a list"))?;
        list.iter()
            .enumerate()
            .map(|(i, m)| {
                let from = str_field(m, "from").with_context(|| format!("conversations[{i}]"))?;
                let role = match from {
                    "human" | "user" => "user",
                    "gpt" | "assistant" => "assistant",
                    "system" => "system",
                    other => bail!(
                        "conversations[{i}]: \"from\" is {other:?}; expected human, gpt or system"
                    ),
                };
                Ok(Message::new(
                    role,
                    str_field(m, "value").with_context(|| format!("conversations[{i}]"))?,
                ))
            })
            .collect::<Result<_>>()?
    } else if v.get("problem").is_some() || v.get("solution").is_some() {
        vec![
            Message::new("user", str_field(v, "problem")?),
            Message::new("assistant", str_field(v, "solution")?),
        ]
    } else if v.get("instruction").is_some() || v.get("output").is_some() {
        alpaca(v)?
    } else {
        bail!(
            "expected a \"messages\", \"prompt\"/\"completion\", \"conversations\", \
             \"problem\"/\"solution\" or \"instruction\"/\"output\" record"
        );
    };
    // A record-level system prompt (LLaMA-Factory's `system` column) opens the conversation
    // unless the conversation has its own system turn first, which wins, as there.
    match v.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            if !s.is_empty() && msgs.first().is_none_or(|m| m.role != "system") {
                msgs.insert(0, Message::new("system", s));
            }
        }
        Some(other) => bail!("field \"system\" must be a string, found {}", json_kind(other)),
    }
    if !msgs.iter().any(|m| m.role == "assistant") {
        bail!("the conversation has no assistant turn: nothing to train on");
    }
    let named = parts.names.iter().filter(|n| n.is_some()).count();
    if named != 0 && named != parts.names.len() {
        bail!(
            "{named} of {} image parts name their file: name all of them, or none (and list \
             the files in \"images\")",
            parts.names.len()
        );
    }
    Ok(Conversation {
        messages: msgs,
        image_parts: parts.names.len(),
        inline_images: parts.names.into_iter().flatten().collect(),
    })
}

/// LLaMA-Factory's alpaca record (its `AlpacaDatasetConverter`): the `history` pairs as
/// user/assistant turns, then one user turn of `instruction` and `input` joined by a newline
/// (the empty ones left out), then `output`.
fn alpaca(v: &Value) -> Result<Vec<Message>> {
    let mut msgs = Vec::new();
    match v.get("history") {
        None | Some(Value::Null) => {}
        Some(Value::Array(pairs)) => {
            for (i, pair) in pairs.iter().enumerate() {
                match pair.as_array().map(Vec::as_slice) {
                    Some([Value::String(q), Value::String(a)]) => {
                        msgs.push(Message::new("user", q));
                        msgs.push(Message::new("assistant", a));
                    }
                    _ => bail!("history[{i}] must be a [question, answer] pair of strings"),
                }
            }
        }
        Some(other) => {
            bail!("field \"history\" must be a list of pairs, found {}", json_kind(other))
        }
    }
    let mut query = Vec::new();
    for key in ["instruction", "input"] {
        match v.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(Value::String(s)) => query.push(s.as_str()),
            Some(other) => bail!("field {key:?} must be a string, found {}", json_kind(other)),
        }
    }
    if query.is_empty() {
        bail!("the record has neither an \"instruction\" nor an \"input\"");
    }
    msgs.push(Message::new("user", &query.join("\n")));
    msgs.push(Message::new("assistant", str_field(v, "output")?));
    Ok(msgs)
}

/// A prompt given as chat messages (verl's RL `prompt` column): one user turn, after an
/// optional system turn; returns the system text, if any, and the user text, image parts as
/// `<image>` markers. Parts that name their file are refused (an item lists its files in
/// `images`), and so is any other shape (an assistant turn: RL prompts end before the reply).
pub fn system_and_user_prompt(list: &Value) -> Result<(Option<String>, String)> {
    let mut parts = ImageParts::default();
    let msgs = messages_of(list, "prompt", &mut parts)?;
    if parts.names.iter().any(Option::is_some) {
        bail!("prompt: image parts name their files; list the files in \"images\" instead");
    }
    match msgs.as_slice() {
        [m] if m.role == "user" => Ok((None, m.content.clone())),
        [s, m] if s.role == "system" && m.role == "user" => {
            if s.content.contains("<image>") {
                bail!("prompt: an image in the system turn (images go in the user turn)");
            }
            Ok((Some(s.content.clone()), m.content.clone()))
        }
        _ => {
            let roles: Vec<&str> = msgs.iter().map(|m| m.role.as_str()).collect();
            bail!(
                "prompt: a list of messages must be one user turn, after an optional system \
                 turn (got {roles:?})"
            )
        }
    }
}

/// The image parts met so far: the file each names, if any.
#[derive(Default)]
struct ImageParts {
    names: Vec<Option<String>>,
}

/// A list of `{"role", "content"}` messages (`what` names it in errors).
fn messages_of(list: &Value, what: &str, parts: &mut ImageParts) -> Result<Vec<Message>> {
    let list = list.as_array().ok_or_else(|| anyhow!("{what:?} must be a list of messages"))?;
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let at = || format!("{what}[{i}]");
            let role = str_field(m, "role").with_context(at)?;
            if !matches!(role, "system" | "user" | "assistant") {
                bail!("{}: role {role:?} is not system, user or assistant", at());
            }
            let before = parts.names.len();
            let content = content_of(m.get("content"), parts).with_context(at)?;
            if role == "assistant" && parts.names.len() > before {
                bail!(
                    "{}: an image in an assistant turn (images go in user or system turns)",
                    at()
                );
            }
            Ok(Message::new(role, &content))
        })
        .collect()
}

/// A message's `content`: a string, or a list of text and image parts joined as Qwen2.5-VL's
/// chat template joins them (text as is, nothing between parts; an image part where it
/// stands, written here as an `<image>` marker), with the file each image part names noted.
fn content_of(content: Option<&Value>, parts: &mut ImageParts) -> Result<String> {
    let list = match content {
        Some(Value::String(s)) => return Ok(s.clone()),
        Some(Value::Array(list)) => list,
        None => bail!("missing field \"content\""),
        Some(other) => {
            bail!(
                "field \"content\" must be a string or a list of parts, found {}",
                json_kind(other)
            )
        }
    };
    let mut text = String::new();
    for (j, part) in list.iter().enumerate() {
        if !part.is_object() {
            bail!(
                "content[{j}] must be a text or image part (an object), found {}",
                json_kind(part)
            );
        }
        let ty = part.get("type").and_then(Value::as_str);
        let has = |k: &str| part.get(k).is_some_and(|x| !x.is_null());
        if matches!(ty, Some("image" | "image_url"))
            || (ty.is_none() && (has("image") || has("image_url")))
        {
            parts.names.push(image_part_file(part).with_context(|| format!("content[{j}]"))?);
            text.push_str("<image>");
        } else if ty == Some("text") || (ty.is_none() && has("text")) {
            match part.get("text") {
                Some(Value::String(s)) => text.push_str(s),
                _ => bail!("content[{j}]: a text part without a \"text\" string"),
            }
        } else {
            let what = ty.map_or_else(|| "an untyped part".to_string(), |t| format!("type {t:?}"));
            bail!("content[{j}]: {what} is not read (parts: text, image, image_url)");
        }
    }
    Ok(text)
}

/// The file an image part names (`image`, `path`, `url`, or `image_url.url`, a path or a
/// `file://` URL), or `None`. Remote and inline (`data:`) images are refused by name.
fn image_part_file(part: &Value) -> Result<Option<String>> {
    let url = part.get("image_url").map(|u| u.get("url").unwrap_or(u));
    let found = ["image", "path", "url"].iter().map(|k| part.get(*k)).chain([url]);
    for v in found.flatten() {
        match v {
            Value::Null => continue,
            Value::String(s) => return super::image_ref::path_of(s).map(Some),
            other => {
                bail!("an image part's file must be a path (a string), found {}", json_kind(other))
            }
        }
    }
    Ok(None)
}

/// The image files a record names: `"image": "a.png"` or `"images": ["a.png", ...]` (null or
/// absent: none; entries as `data::image_ref` reads them), not yet resolved.
pub fn record_images(v: &Value) -> Result<Vec<String>> {
    let mut out = super::image_ref::image_paths(v.get("image"), "image")?;
    out.extend(super::image_ref::image_paths(v.get("images"), "images")?);
    Ok(out)
}

/// One conversation and its image files (resolved relative to the JSONL file's folder).
#[derive(Clone, Debug, PartialEq)]
pub struct SftRecord {
    pub messages: Vec<Message>,
    pub images: Vec<std::path::PathBuf>,
    /// 1-based line of the JSONL file, for error messages.
    pub line: usize,
}

/// Reads a JSONL file of conversations (text only). A record naming images is an error
/// naming the file and line: a text model cannot train on them. Errors name the file and the
/// 1-based line.
pub fn load_jsonl(path: &Path) -> Result<Vec<Vec<Message>>> {
    Ok(load_records(path, false)?.into_iter().map(|r| r.messages).collect())
}

/// [`load_jsonl`] for a Qwen2.5-VL model: records may name images, each resolved relative to
/// the JSONL file's folder (absolute paths stay) and required to be an existing file; a
/// missing one is an error naming the file, the line and the path, before any model time.
pub fn load_jsonl_with_images(path: &Path) -> Result<Vec<SftRecord>> {
    load_records(path, true)
}

fn load_records(path: &Path, allow_images: bool) -> Result<Vec<SftRecord>> {
    let mut out = Vec::new();
    let folder = path.parent().unwrap_or(Path::new(""));
    for (n, line) in crate::data::jsonl::text_lines(path)? {
        let line = line.map_err(|e| anyhow!("{}:{n}: {e}", path.display()))?;
        let v: Value = serde_json::from_str(&line)
            .map_err(|e| anyhow!("{}:{n}: not valid JSON ({e})", path.display()))?;
        let at = |e: anyhow::Error| anyhow!("{}:{n}: {e:#}", path.display());
        let conv = parse_conversation(&v).map_err(at)?;
        let listed = record_images(&v).map_err(at)?;
        let names = match (conv.inline_images.is_empty(), listed.is_empty()) {
            (true, _) => listed,
            (false, true) => conv.inline_images,
            (false, false) => {
                return Err(at(anyhow!(
                    "images are named both in the messages' image parts and in \"images\": \
                     name them in one place"
                )))
            }
        };
        if (!names.is_empty() || conv.image_parts > 0) && !allow_images {
            let what = if names.is_empty() { "image parts".to_string() } else { names.join(", ") };
            bail!(
                "{}:{n}: the example has images ({what}); a text model cannot train on them (give a Qwen2.5-VL checkpoint, model_type \"qwen2_5_vl\")",
                path.display(),
            );
        }
        let messages = conv.messages;
        let mut images = Vec::with_capacity(names.len());
        for im in &names {
            let p = folder.join(im);
            if !p.is_file() {
                bail!(
                    "{}:{n}: image {im:?} not found (looked for {})",
                    path.display(),
                    p.display()
                );
            }
            images.push(p);
        }
        out.push(SftRecord { messages, images, line: n });
    }
    if out.is_empty() {
        bail!("{}: no examples", path.display());
    }
    Ok(out)
}

/// Renders `messages` exactly as `apply_chat_template(messages, default_system, false)` and
/// returns the text with the byte ranges of the assistant turns (content + `<|im_end|>\n`).
pub fn render_with_spans(
    messages: &[Message],
    default_system: Option<&str>,
) -> (String, Vec<std::ops::Range<usize>>) {
    let mut s = String::new();
    let mut spans = Vec::new();
    if let Some(sys) = default_system {
        if messages.first().map(|m| m.role.as_str()) != Some("system") {
            s.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
        }
    }
    for m in messages {
        s.push_str(&format!("<|im_start|>{}\n", m.role));
        let start = s.len();
        s.push_str(&m.content);
        s.push_str("<|im_end|>\n");
        if m.role == "assistant" {
            spans.push(start..s.len());
        }
    }
    // One renderer is the truth; this one only adds the spans.
    debug_assert_eq!(s, apply_chat_template(messages, default_system, false));
    (s, spans)
}

/// Tokenizes a conversation and marks the trained tokens: a token is trained when its first
/// byte lies in an assistant span. Rendered by the checkpoint's chat template when the
/// tokenizer has one (which then decides the system turn), else by the built-in ChatML with
/// `default_system`. Truncates to `max_len` tokens (the tail goes).
pub fn tokenize(
    tok: &Tokenizer,
    messages: &[Message],
    default_system: Option<&str>,
    max_len: usize,
) -> Result<SftExample> {
    let (text, spans) = match tok.chat_template() {
        Some(t) => t.render_with_spans(messages)?,
        None => render_with_spans(messages, default_system),
    };
    let enc =
        tok.inner().encode(text.as_str(), false).map_err(|e| anyhow!("tokenizing failed: {e}"))?;
    let mut ids = enc.get_ids().to_vec();
    let mut trained: Vec<bool> =
        enc.get_offsets().iter().map(|&(a, _)| spans.iter().any(|r| r.contains(&a))).collect();
    ids.truncate(max_len);
    trained.truncate(max_len);
    Ok(SftExample { ids, trained })
}

/// Loads, renders and tokenizes a JSONL file. Examples left with no trained target after
/// truncation are dropped; the count dropped is returned beside the examples. Rendering and
/// tokenizing run on all cores (a cold-start set of a million conversations otherwise takes
/// minutes at every start and resume); the result, and the first error in file order, are
/// those of a sequential pass.
pub fn load_sft_dataset(
    path: &Path,
    tok: &Tokenizer,
    default_system: Option<&str>,
    max_len: usize,
) -> Result<(Vec<SftExample>, usize)> {
    use rayon::prelude::*;
    let records = load_records(path, false)?;
    let tokenized: Vec<Result<SftExample>> = records
        .par_iter()
        .map(|r| {
            tokenize(tok, &r.messages, default_system, max_len)
                .with_context(|| format!("{}:{}", path.display(), r.line))
        })
        .collect();
    let mut out = Vec::with_capacity(tokenized.len());
    let mut dropped = 0;
    for ex in tokenized {
        let ex = ex?;
        if ex.trained_targets() == 0 {
            dropped += 1;
        } else {
            out.push(ex);
        }
    }
    if out.is_empty() {
        bail!("{}: no example has a trained token within --max-len {max_len}", path.display());
    }
    Ok((out, dropped))
}

/// A fingerprint of a tokenized dataset (FNV-1a over ids and masks), stored in checkpoints
/// so a resumed run can check it sees the same data in the same order.
pub fn fingerprint(examples: &[SftExample]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut eat = |x: u64| {
        for b in x.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    };
    eat(examples.len() as u64);
    for e in examples {
        eat(e.ids.len() as u64);
        for (&id, &t) in e.ids.iter().zip(&e.trained) {
            eat(((id as u64) << 1) | t as u64);
        }
    }
    format!("{h:016x}")
}
