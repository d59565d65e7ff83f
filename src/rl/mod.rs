//! Reinforcement learning: rollouts, rewards, GRPO, Variance-Aware Sampling.

pub mod advantage;
pub mod grpo;
pub mod reward;
pub mod rollout;
pub mod vas;
pub mod trainer;
