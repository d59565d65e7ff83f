//! Reinforcement learning: rollouts, rewards, GRPO, Variance-Aware Sampling.

pub mod advantage;
pub mod decode_scheduler;
pub mod evaluate;
pub mod graded;
pub mod grpo;
pub mod grpo_token_loss;
pub mod overlong;
pub mod partial_results;
pub mod philox;
pub mod policy;
pub mod reward;
pub mod rollout;
pub mod sampling;
pub mod scoring;
pub mod trainer;
pub mod vas;
pub mod vl_policy;
pub mod vl_rollout;
