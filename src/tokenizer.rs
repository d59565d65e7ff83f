//! `tokenizer.json` through the `tokenizers` crate, and the chat template: the checkpoint's
//! own (Jinja, `chat_template.rs`) or the built-in Qwen ChatML, so no Python runtime is needed.

use crate::chat_template::ChatTemplate;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The system prompt Qwen2.5's template inserts when a conversation has none.
pub const QWEN25_DEFAULT_SYSTEM: &str =
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Message { role: role.into(), content: content.into() }
    }
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The checkpoint's own chat template, read from the files beside `tokenizer.json`
    /// (`chat_template::ChatTemplate::from_dir`); `None`: the built-in Qwen ChatML.
    chat: Option<ChatTemplate>,
}

/// The files beside `tokenizer.json` that carry its chat template and special tokens
/// (`special_tokens_map.json`: transformers 4's place for them); a checkpoint written from a
/// model takes them along ([`copy_tokenizer_files`]).
pub const TOKENIZER_SIDE_FILES: [&str; 4] = [
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "special_tokens_map.json",
];

/// Writes `src` (a `tokenizer.json`) into `dir` with the [`TOKENIZER_SIDE_FILES`] found
/// beside it, each atomically, so that transformers, vLLM and this engine render the
/// written checkpoint's conversations as they rendered the source's.
pub fn copy_tokenizer_files(src: &Path, dir: &Path) -> Result<()> {
    let data = std::fs::read(src).with_context(|| format!("cannot read {}", src.display()))?;
    crate::fs::write_atomic(&dir.join("tokenizer.json"), &data)?;
    crate::fs::copy_present(src.parent().unwrap_or(Path::new(".")), dir, TOKENIZER_SIDE_FILES)
}

/// Which chat template renders conversations: `MMR1_CHAT_TEMPLATE=auto` (the default: the
/// checkpoint's own when it has one, else the built-in Qwen ChatML) or `chatml` (always the
/// built-in one).
fn use_checkpoint_template() -> Result<bool> {
    match std::env::var("MMR1_CHAT_TEMPLATE").as_deref() {
        Err(_) | Ok("") | Ok("auto") => Ok(true),
        Ok("chatml") => Ok(false),
        Ok(other) => anyhow::bail!("MMR1_CHAT_TEMPLATE={other:?}: expected auto or chatml"),
    }
}

impl Tokenizer {
    /// Loads `path` (a `tokenizer.json`) and the chat template beside it, if any.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot load tokenizer ({e})", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let chat = if use_checkpoint_template()? { ChatTemplate::from_dir(dir)? } else { None };
        Ok(Tokenizer { inner, chat })
    }

    /// The checkpoint's chat template, when it has one (and `MMR1_CHAT_TEMPLATE` allows it).
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat.as_ref()
    }

    /// A conversation as text, as transformers' `apply_chat_template` renders it: with the
    /// checkpoint's template, or else the built-in Qwen ChatML ([`apply_chat_template`]), whose
    /// `default_system` turn is inserted when the conversation has none (a checkpoint's
    /// template decides that itself).
    pub fn render_chat(
        &self,
        messages: &[Message],
        default_system: Option<&str>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        match &self.chat {
            Some(t) => t.render(messages, add_generation_prompt),
            None => Ok(apply_chat_template(messages, default_system, add_generation_prompt)),
        }
    }

    /// The default system prompt a command gives the built-in ChatML: `dflt`, or none when
    /// `off` (`--no-default-system`). A checkpoint's own template decides that itself, so `off`
    /// then changes nothing, which is said once on stderr.
    pub fn builtin_default_system(&self, dflt: &'static str, off: bool) -> Option<&'static str> {
        if let (true, Some(t)) = (off, &self.chat) {
            eprintln!(
                "note: --no-default-system changes nothing: {} renders the conversations, with \
                 the system turn it writes (MMR1_CHAT_TEMPLATE=chatml: the built-in ChatML)",
                t.origin().display()
            );
        }
        (!off).then_some(dflt)
    }

    /// Loads `dir/tokenizer.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_file(&dir.join("tokenizer.json"))
    }

    /// A tokenizer made in code (the demos'): the built-in chat template.
    pub fn from_inner(inner: tokenizers::Tokenizer) -> Self {
        Tokenizer { inner, chat: None }
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Token ids of `text`; special tokens written in the text (`<|im_start|>`) map to their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("tokenizing failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens kept when `keep_special`.
    pub fn decode(&self, ids: &[u32], keep_special: bool) -> Result<String> {
        self.inner.decode(ids, !keep_special).map_err(|e| anyhow::anyhow!("decoding failed: {e}"))
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// `<|im_end|>` and `<|endoftext|>`, the ids that end an assistant turn.
    pub fn stop_ids(&self) -> Vec<u32> {
        ["<|im_end|>", "<|endoftext|>"].iter().filter_map(|t| self.token_id(t)).collect()
    }

    /// Refuses a tokenizer that cannot belong to `model`: one with ids past the model's
    /// vocabulary (a model may have more rows than its tokenizer has tokens, as Qwen2.5 pads
    /// to 151936; the reverse means some token has no embedding). `path` names the tokenizer.
    pub fn check_matches(&self, path: &Path, model: &crate::model::Qwen2Config) -> Result<()> {
        // The largest id, not the count: ids may have gaps.
        let n = self.inner.get_vocab(true).values().map(|&id| id as usize + 1).max().unwrap_or(0);
        if n > model.vocab_size {
            anyhow::bail!(
                "{}: the tokenizer has token ids up to {} but the model's vocab_size is {}: this tokenizer does not belong to this model",
                path.display(),
                n - 1,
                model.vocab_size
            );
        }
        Ok(())
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner
            .save(path, false)
            .map_err(|e| anyhow::anyhow!("{}: cannot save tokenizer ({e})", path.display()))
            .context("saving tokenizer")
    }
}

/// Renders a conversation with Qwen's ChatML template:
/// `<|im_start|>{role}\n{content}<|im_end|>\n` per turn, a default system turn first when
/// `default_system` is given and the conversation has none, and `<|im_start|>assistant\n`
/// at the end when `add_generation_prompt`. Matches `apply_chat_template` of Qwen2.5
/// (text-only turns, no tools).
pub fn apply_chat_template(
    messages: &[Message],
    default_system: Option<&str>,
    add_generation_prompt: bool,
) -> String {
    let mut s = String::new();
    if let Some(sys) = default_system {
        if messages.first().map(|m| m.role.as_str()) != Some("system") {
            s.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
        }
    }
    for m in messages {
        s.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content));
    }
    if add_generation_prompt {
        s.push_str("<|im_start|>assistant\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_template_matches_qwen25_layout() {
        let msgs = [Message::new("user", "What is 2+2?")];
        let s = apply_chat_template(&msgs, Some(QWEN25_DEFAULT_SYSTEM), true);
        assert_eq!(
            s,
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
             <|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
        );
        let with_sys = [Message::new("system", "Be brief."), Message::new("user", "Hi")];
        let s = apply_chat_template(&with_sys, Some(QWEN25_DEFAULT_SYSTEM), false);
        assert_eq!(s, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
    }
}
