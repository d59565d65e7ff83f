//! Datasets: RL items in the MMR1 schema, SFT conversations, the built-in demo tasks (text and visual).

pub mod demo;
pub mod image_ref;
pub mod jsonl;
pub mod parquet_rows;
pub mod prompt;
pub mod rl_items;
pub mod sft_data;
pub mod visual_demo;
pub mod vl_sft_data;
