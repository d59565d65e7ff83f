//! DAPO's overlong reward shaping (arXiv 2503.14476, Sec. 3.4 "Soft Overlong Punishment"), as
//! verl 0.9.1 `verl/workers/reward_manager/dapo.py` computes it:
//!
//! ```text
//! expected = max_response_len - buffer_len
//! penalty  = min(-(len - expected) / buffer_len * penalty_factor, 0)      added to the reward
//! ```
//!
//! Zero up to `expected` tokens, falling linearly to `-penalty_factor` at the maximum length.

use serde::{Deserialize, Serialize};

/// verl `reward_model.overlong_buffer.{len, penalty_factor}` (DAPO: 4096, 1.0).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OverlongPenalty {
    /// Tokens before the maximum length where the penalty ramps (> 0).
    pub buffer_len: usize,
    pub penalty_factor: f32,
    /// The maximum response length (`max_new_tokens`).
    pub max_response_len: usize,
}

impl OverlongPenalty {
    /// The (non-positive) reward added to a response of `len` tokens.
    pub fn penalty(&self, len: usize) -> f64 {
        let expected = self.max_response_len as f64 - self.buffer_len as f64;
        let exceed = len as f64 - expected;
        (-exceed / self.buffer_len as f64 * self.penalty_factor as f64).min(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramps_linearly_over_the_buffer() {
        let p = OverlongPenalty { buffer_len: 4, penalty_factor: 1.0, max_response_len: 10 };
        let got: Vec<f64> = [0, 6, 7, 8, 10].iter().map(|&l| p.penalty(l)).collect();
        assert_eq!(got, vec![0.0, 0.0, -0.25, -0.5, -1.0]);
    }
}
