//! The numeric loops of mmr1-fast's CPU reference backend, on plain slices: GEMM, norms,
//! rotary embedding, SwiGLU, attention, the vocabulary head's log-probs and AdamW. The main
//! crate's `backend::cpu::Cpu` implements the `Backend` trait by calling these.
//!
//! Why a crate of its own: Cargo sets optimization per package, and the main crate builds at
//! opt-level 0 in dev/test (it compiles four times over in a test build; see its Cargo.toml),
//! where these loops made a short demo run take 120 s instead of 39 s. Here they build once,
//! at opt-level 3.
//! Floats are the same bits at every optimization level (Rust contracts no multiply-add and
//! reorders no float sum), so nothing a test compares moves.

pub mod adamw;
pub mod attention;
pub mod attention_ref;
pub mod elementwise;
pub mod gemm;
pub mod logprob;
pub mod norm;
pub mod rope;
pub mod softmax_row;
pub mod vision_ops;

/// One sequence of a packed batch, as attention sees it.
///
/// Queries are rows `q_start .. q_start + q_len` of `q`/`out`; keys and values are rows
/// `kv_start .. kv_start + kv_len` of `k`/`v`. The queries are the LAST `q_len` positions of
/// the sequence, so query `i` sits at position `kv_len - q_len + i` and sees keys `0..=` that.
/// A full forward has `q_len == kv_len`; a decode step against a KV cache has `q_len == 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnSpan {
    pub q_start: usize,
    pub q_len: usize,
    pub kv_start: usize,
    pub kv_len: usize,
}

/// Head geometry of grouped-query attention: query head `h` reads kv head `h / (n_heads / n_kv_heads)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// Hyper-parameters of one AdamW step; `step` counts from 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamwStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub step: u64,
    pub grad_scale: f32,
}
