//! CPU reference of the vision tower's ops (Qwen2.5-VL): rotary embedding from an angle table
//! and the exact GELU. Bidirectional attention is `attention::forward_masked` with
//! `causal == false`.

use rayon::prelude::*;

/// See `Backend::rope_table`. cos/sin of each angle in f32, as transformers takes them
/// (`freqs.cos()` on an f32 tensor), then the "rotate half" turn of `apply_rotary_pos_emb`.
pub fn rope_table(
    x: &mut [f32],
    angles: &[f32],
    rows: usize,
    n_heads: usize,
    head_dim: usize,
    inverse: bool,
) {
    let half = head_dim / 2;
    if rows == 0 || half == 0 {
        return;
    }
    assert!(angles.len() >= rows * half, "rope_table: angle table smaller than rows * head_dim/2");
    assert!(
        x.len() >= rows * n_heads * head_dim,
        "rope_table: x smaller than rows * heads * head_dim"
    );
    let sign = if inverse { -1.0f32 } else { 1.0 };
    x[..rows * n_heads * head_dim].par_chunks_mut(n_heads * head_dim).enumerate().for_each(
        |(t, row)| {
            for (i, &ang) in angles[t * half..(t + 1) * half].iter().enumerate() {
                let (s, c) = ang.sin_cos();
                crate::rope::rotate_pair(row, n_heads, head_dim, i, c, s * sign);
            }
        },
    );
}

/// Exact GELU in f64 (the oracle): `x / 2 * (1 + erf(x / sqrt 2))` (torch `nn.GELU()`,
/// approximate="none").
pub fn gelu_f64(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2))
}

/// d gelu / dx = Phi(x) + x phi(x), with Phi the normal CDF and phi its density.
pub fn gelu_grad_f64(x: f64) -> f64 {
    let cdf = 0.5 * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2));
    let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
    cdf + x * pdf
}

pub fn gelu(out: &mut [f32], x: &[f32]) {
    assert_eq!(out.len(), x.len(), "gelu: length mismatch");
    out.par_iter_mut().zip(x.par_iter()).for_each(|(o, &v)| *o = gelu_f64(v as f64) as f32);
}

pub fn gelu_backward(dx: &mut [f32], dout: &[f32], x: &[f32]) {
    assert!(dx.len() == x.len() && dout.len() == x.len(), "gelu_backward: length mismatch");
    dx.par_iter_mut()
        .zip(dout.par_iter().zip(x.par_iter()))
        .for_each(|(d, (&g, &v))| *d = (g as f64 * gelu_grad_f64(v as f64)) as f32);
}
