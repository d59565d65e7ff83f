//! Datasets: JSONL readers and their tokenization.

pub mod sft_data;
