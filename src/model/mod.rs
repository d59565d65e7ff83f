//! The Qwen2 decoder, written once against `Backend`.
