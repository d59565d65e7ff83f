//! The `train` pipeline: configuration, the cold-start SFT phase, the GRPO + VAS phase, the
//! demo, evaluation and the run report.

pub mod config;
