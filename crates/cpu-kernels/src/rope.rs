//! Rotary position embedding of the language model (Qwen2: "rotate half").

use rayon::prelude::*;

/// Inverse frequencies of rotary embedding, as Hugging Face computes them:
/// `1 / theta^(2i/d)` with the exponent formed in f32 (`arange(0, d, 2).float() / d`).
pub fn rope_inv_freq(head_dim: usize, theta: f32) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let e = (2 * i) as f32 / head_dim as f32;
            1.0 / (theta as f64).powf(e as f64) as f32
        })
        .collect()
}

/// Rotates rows of `n_heads * head_dim` in place by their position times `inv` (one frequency
/// per pair `(i, i + head_dim / 2)`); `inverse` turns the other way (the backward).
pub fn rope(
    x: &mut [f32],
    positions: &[u32],
    n_heads: usize,
    head_dim: usize,
    inv: &[f32],
    inverse: bool,
) {
    assert_eq!(inv.len(), head_dim / 2, "rope: head_dim / 2 frequencies");
    let sign = if inverse { -1.0f32 } else { 1.0 };
    x[..positions.len() * n_heads * head_dim]
        .par_chunks_mut(n_heads * head_dim)
        .zip(positions.par_iter())
        .for_each(|(row, &pos)| {
            for (i, &f) in inv.iter().enumerate() {
                // Angle in f32 like HF (positions.float() @ inv_freq), cos/sin of it.
                let ang = pos as f32 * f;
                let (s, c) = ang.sin_cos();
                rotate_pair(row, n_heads, head_dim, i, c, s * sign);
            }
        });
}

/// Turns pair `(i, i + head_dim / 2)` of every head of `row` by the angle of cosine `c` and
/// sine `s` (transformers' "rotate half"); shared by `rope` and the vision tower's `rope_table`.
#[inline]
pub(crate) fn rotate_pair(
    row: &mut [f32],
    n_heads: usize,
    head_dim: usize,
    i: usize,
    c: f32,
    s: f32,
) {
    let half = head_dim / 2;
    for h in 0..n_heads {
        let base = h * head_dim;
        let (a, b) = (row[base + i], row[base + i + half]);
        row[base + i] = a * c - b * s;
        row[base + i + half] = b * c + a * s;
    }
}
