//! Reinforcement learning: rollouts, rewards, GRPO, Variance-Aware Sampling.
pub mod reward;
