//! The integration tests, as one test binary: one crate to compile and lint, one link, and one
//! process whose two test threads share all the work (a binary per file left a core idle
//! behind each file's slowest test). Each file is a module named as the file was; run one
//! with a filter, e.g. `cargo test --features emu --test suite flash_attention::`.
//! Tests in one process share its environment, so none sets a variable the library reads
//! (each switch has a setter for tests: `CudaDevice::with_replay`, `with_kv_cache_storage`...).

#[macro_use]
#[path = "common/kernel_check.rs"]
mod kernel_check;
mod common;
mod sft_common;

mod backward_golden;
mod backward_model;
mod backward_ops;
mod bad_input;
mod checkpoint_faults;
mod cli_device_emu;
mod cli_eval;
mod cli_help;
mod cli_plot;
mod cli_reward;
mod cli_score;
mod cli_train_errors;
mod cli_visual_demo;
mod continuous_batching;
mod cpu_kernels;
mod decode_replay;
mod demo_ablation;
mod demo_learns;
mod device_decode;
mod device_memory;
mod dp_grpo;
mod dp_mpi;
mod dp_sft;
mod emu_strict;
mod flash_attention;
mod flash_model;
mod fused_layer_ops;
mod fuzz_parsers;
mod golden_forward;
mod grpo_device_update;
mod grpo_learns;
mod head_chunk;
mod hostile_inputs;
mod kernel_profile;
mod kernels_real_vocab;
mod kernels_vs_cpu;
mod kv_cache;
mod nccl;
mod optim_adamw;
mod parity_upstream;
mod parquet_data;
mod philox;
mod precision_bf16;
mod recompute;
mod reward_cases;
mod rl_kernels;
mod rl_update;
mod sample_kernel;
mod sampling;
mod sft_data;
mod sft_train;
mod tensor_core;
mod vas_in_loop;
mod vision_ops;
mod vl_backward;
mod vl_cli;
mod vl_config;
mod vl_logits;
mod vl_mrope;
mod vl_preprocess;
mod vl_rope_tables;
mod vl_save;
mod vl_sft;
mod vl_train;
mod vl_vision_backward;
mod vl_vision_forward;
mod vl_windows;
