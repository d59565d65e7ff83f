//! Training: the token-level loss interface that SFT and GRPO share (`token_loss`), the one
//! micro-batch step both run (`step`: packing, forward, log-probs, loss, backward,
//! accumulation), the SFT loop, and checkpoints.

pub mod checkpoint;
pub mod sft;
mod step;
mod token_loss;
pub mod vl_checkpoint;
pub mod vl_sft;
pub mod vl_step;

pub use step::{
    forward_logprobs, forward_logprobs_of_rows, micro_step, micro_step_hooked, pack_ranges,
    LossBatch, Workspace,
};
pub use token_loss::{LossGrad, SftLoss, TokenLoss};
