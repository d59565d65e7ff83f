//! `tokenizer.json` through the `tokenizers` crate, and the Qwen chat template (ChatML)
//! applied in Rust, so no Python runtime is needed.

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
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot load tokenizer ({e})", path.display()))?;
        Ok(Tokenizer { inner })
    }

    /// Loads `dir/tokenizer.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_file(&dir.join("tokenizer.json"))
    }

    pub fn from_inner(inner: tokenizers::Tokenizer) -> Self {
        Tokenizer { inner }
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
