//! Fresh parameters for a model made from scratch (the built-in demo) or for tests.

use super::params::ParamLayout;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How to initialize a new model.
#[derive(Clone, Copy, Debug)]
pub enum Init {
    /// Hugging Face's Qwen2 initialization: weights N(0, std) (std = initializer_range,
    /// 0.02 by default), biases 0, norm weights 1.
    HuggingFace { std: f32 },
    /// Every tensor random (weights and biases N(0, std), norm weights 1 + N(0, std/2)), so
    /// that tests are sensitive to every parameter (see BUILD-NOTES on flat logits).
    Sensitive { std: f32 },
}

/// Standard normal draws by Box-Muller (two uniforms per pair).
pub fn normal(rng: &mut ChaCha8Rng, n: usize, std: f32) -> Vec<f32> {
    let mut v = Vec::with_capacity(n + 1);
    while v.len() < n {
        let u1: f64 = rng.gen::<f64>().max(1e-300);
        let u2: f64 = rng.gen();
        let r = (-2.0 * u1.ln()).sqrt();
        let a = 2.0 * std::f64::consts::PI * u2;
        v.push((r * a.cos()) as f32 * std);
        v.push((r * a.sin()) as f32 * std);
    }
    v.truncate(n);
    v
}

pub fn init_params(layout: &ParamLayout, init: Init, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    layout
        .specs
        .iter()
        .map(|s| {
            let n = s.numel();
            let is_norm = s.name.ends_with("norm.weight");
            let is_bias = s.name.ends_with(".bias");
            match init {
                Init::HuggingFace { .. } if is_norm => vec![1.0; n],
                Init::HuggingFace { .. } if is_bias => vec![0.0; n],
                Init::HuggingFace { std } => normal(&mut rng, n, std),
                Init::Sensitive { std } if is_norm => {
                    normal(&mut rng, n, std / 2.0).into_iter().map(|x| 1.0 + x).collect()
                }
                Init::Sensitive { std } => normal(&mut rng, n, std),
            }
        })
        .collect()
}
