//! Rotation angles of Qwen2.5-VL's two rotary embeddings, per row and frequency pair, in the
//! "rotate half" layout (pair `i` rotates elements `i` and `i + head_dim/2`), computed in f32 as
//! transformers does (inverse frequencies `1 / theta^(2i/dim)` in f32, angle = position * inv_freq
//! in f32). A row's `cos`/`sin` are those of its angles, repeated for both halves.
//!
//! - Vision (`Qwen2_5_VLVisionRotaryEmbedding`, "axial"): frequencies of dimension `head_dim/2`;
//!   the first `head_dim/4` pairs turn with the patch row, the next `head_dim/4` with its column.
//! - Text (`Qwen2_5_VLRotaryEmbedding`, M-RoPE): ordinary frequencies of `head_dim`; the pairs
//!   are cut into `mrope_section` = [t, h, w] sections, each turned by that axis's position.

use super::mrope::MropePositions;

fn inv_freqs(n: usize, dim: usize, theta: f64) -> Vec<f32> {
    // torch: 1.0 / (base ** (arange(0, dim, 2, float32) / dim)), all in f32.
    (0..n).map(|i| 1.0f32 / (theta as f32).powf((2 * i) as f32 / dim as f32)).collect()
}

/// `[rows, head_dim/2]` angles of the vision tower's 2D rotary embedding for patches at
/// `positions` (row, column), e.g. from `vision_windows::position_ids`.
pub fn vision_rope_angles(positions: &[[u32; 2]], head_dim: usize, theta: f64) -> Vec<f32> {
    let quarter = head_dim / 4;
    let inv = inv_freqs(quarter, head_dim / 2, theta);
    let mut out = Vec::with_capacity(positions.len() * 2 * quarter);
    for &[h, w] in positions {
        out.extend(inv.iter().map(|&f| h as f32 * f));
        out.extend(inv.iter().map(|&f| w as f32 * f));
    }
    out
}

/// `[len, head_dim/2]` angles of the language model's M-RoPE for `pos`.
pub fn mrope_angles(
    pos: &MropePositions,
    head_dim: usize,
    theta: f64,
    section: [usize; 3],
) -> Vec<f32> {
    let half = head_dim / 2;
    let inv = inv_freqs(half, head_dim, theta);
    let axis_of: Vec<usize> = (0..3).flat_map(|a| std::iter::repeat_n(a, section[a])).collect();
    assert_eq!(axis_of.len(), half, "mrope_section must sum to head_dim / 2");
    let len = pos.axes[0].len();
    let mut out = Vec::with_capacity(len * half);
    for r in 0..len {
        out.extend((0..half).map(|i| pos.axes[axis_of[i]][r] as f32 * inv[i]));
    }
    out
}
