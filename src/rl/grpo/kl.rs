//! KL estimators of the penalty to the reference policy, with their derivative in `logp`.
//!
//! Names and formulas of verl 0.9.1 `verl/trainer/ppo/core_algos.py::kl_penalty` /
//! `kl_penalty_forward` (J. Schulman, "Approximating KL divergence", 2020), with d = logp - ref:
//!
//! ```text
//! k1  ("kl")          d                                   d/dlogp = 1
//! abs                 |d|                                 sign(d)
//! k2  ("mse")         d^2 / 2                             d
//! k3  ("low_var_kl")  x = clamp(-d, -X, X); e^x - x - 1,  (1 - e^x) [|d| < X]
//!                     then clamp(., -K, K)                0 where the K clamp is active
//! k1+, abs+, k3+      the value of k1/abs/k3, the gradient of k2 (straight-through:
//!                     `backward - backward.detach() + forward.detach()`), so the expected
//!                     gradient is that of KL.
//! ```
//!
//! X (verl 20; none in MMR1's released code and TRL) and K (verl and MMR1 10; none in TRL) come
//! from [`super::LossConfig`]. TRL (1.16 `GRPOTrainer._compute_loss`) only has k3, unclamped.

use serde::{Deserialize, Serialize};

/// KL estimator (verl `kl_loss_type`; the serde names are verl's, aliases included).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KlEstimator {
    /// `logp - ref` (verl `kl` / `k1`). Unbiased, can be negative per token.
    #[serde(rename = "k1", alias = "kl")]
    K1,
    /// `|logp - ref|` (verl `abs`).
    #[serde(rename = "abs")]
    Abs,
    /// `(logp - ref)^2 / 2` (verl `mse` / `k2`); its gradient is the unbiased KL gradient.
    #[serde(rename = "k2", alias = "mse", alias = "k2+", alias = "mse+")]
    K2,
    /// `e^x - x - 1`, `x = ref - logp` (verl `low_var_kl` / `k3`, TRL's only form). >= 0.
    #[serde(rename = "k3", alias = "low_var_kl")]
    K3,
    /// k1 value, k2 gradient (verl `k1+` / `kl+`).
    #[serde(rename = "k1+", alias = "kl+")]
    K1Plus,
    /// abs value, k2 gradient (verl `abs+`).
    #[serde(rename = "abs+")]
    AbsPlus,
    /// k3 value, k2 gradient (verl `k3+` / `low_var_kl+`).
    #[serde(rename = "k3+", alias = "low_var_kl+")]
    K3Plus,
}

impl KlEstimator {
    /// Every accepted name, for help texts.
    pub const NAMES: &'static str =
        "k1 (kl), abs, k2 (mse), k3 (low_var_kl), k1+ (kl+), abs+, k3+ (low_var_kl+)";
}

/// Clamps of the k3 estimator (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct K3Clamps {
    /// X: clamp of `ref - logp` before exp (verl 20).
    pub inner: Option<f64>,
    /// K: clamp of the value (verl, MMR1 10).
    pub value: Option<f64>,
}

/// (value, d value / d logp) of one token's estimator.
pub fn kl_term(est: KlEstimator, logp: f64, reflp: f64, clamps: K3Clamps) -> (f64, f64) {
    let d = logp - reflp;
    let forward = |e: KlEstimator| -> (f64, f64) {
        match e {
            KlEstimator::K1 | KlEstimator::K1Plus => (d, 1.0),
            KlEstimator::Abs | KlEstimator::AbsPlus => (d.abs(), sign(d)),
            KlEstimator::K2 => (0.5 * d * d, d),
            KlEstimator::K3 | KlEstimator::K3Plus => {
                let x0 = -d;
                let (x, dx) = match clamps.inner {
                    Some(c) if x0 > c => (c, 0.0),
                    Some(c) if x0 < -c => (-c, 0.0),
                    _ => (x0, -1.0),
                };
                let ex = x.exp();
                let (k, dk) = (ex - x - 1.0, (ex - 1.0) * dx);
                match clamps.value {
                    Some(c) if k > c => (c, 0.0),
                    Some(c) if k < -c => (-c, 0.0),
                    _ => (k, dk),
                }
            }
        }
    };
    let (v, g) = forward(est);
    match est {
        // Straight-through: value of the base estimator, gradient of k2.
        KlEstimator::K1Plus | KlEstimator::AbsPlus | KlEstimator::K3Plus => (v, d),
        _ => (v, g),
    }
}

/// torch.sign / torch.abs backward: 0 at 0.
fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}
