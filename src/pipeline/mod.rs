//! The `train` pipeline: configuration, the cold-start SFT phase, the GRPO + VAS phase, the
//! demos (text and visual), evaluation and the run report.

pub mod ablation;
pub mod config;
pub mod demo_setup;
pub mod diverged;
pub mod inputs;
pub mod metrics;
pub mod plot;
pub mod rl_phase;
pub mod run;
pub mod run_dir;
pub mod run_policy;
pub mod sft_phase;
pub mod visual_demo_setup;
pub mod vps_log;
