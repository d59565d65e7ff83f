//! mmr1-fast: the MMR1 recipe (cold-start SFT, then GRPO with Variance-Aware Sampling) for
//! Qwen2-family models. See `../shared/DESIGN.md` for the map; `docs/` for the details.

pub mod backend;
pub mod chat_template;
pub mod commands;
pub mod data;
pub mod dist;
pub mod fs;
pub mod model;
pub mod nvtx_ranges;
pub mod optim;
pub mod pipeline;
pub mod progress;
pub mod ranges;
pub mod rl;
pub mod serde_float;
pub mod serde_str;
pub mod tokenizer;
pub mod train;
