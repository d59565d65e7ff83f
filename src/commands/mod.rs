//! One file per CLI command; `main.rs` only parses arguments and dispatches here.

pub mod eval;
pub mod generate;
pub mod init_model;
pub mod logprobs;
pub mod plot;
pub mod reward;
pub mod score;
pub mod sft;
mod sft_vl;
pub mod train;
