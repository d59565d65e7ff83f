//! RMSNorm, forward and backward (Qwen2RMSNorm: the mean square and its inverse root in f64).

use rayon::prelude::*;

/// `out = x * rstd * w` per row of `dim`, with `rstd = (mean x^2 + eps)^-1/2` saved for the
/// backward.
pub fn rmsnorm(
    out: &mut [f32],
    rstd: &mut [f32],
    x: &[f32],
    w: &[f32],
    rows: usize,
    dim: usize,
    eps: f32,
) {
    out[..rows * dim].par_chunks_mut(dim).zip(rstd[..rows].par_iter_mut()).enumerate().for_each(
        |(r, (o, rs))| {
            let xr = &x[r * dim..(r + 1) * dim];
            let ms = xr.iter().map(|&a| (a as f64) * (a as f64)).sum::<f64>() / dim as f64;
            let s = (1.0 / (ms + eps as f64).sqrt()) as f32;
            *rs = s;
            for j in 0..dim {
                o[j] = xr[j] * s * w[j];
            }
        },
    );
}

/// Writes `dx`, adds into `dw`.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward(
    dx: &mut [f32],
    dw: &mut [f32],
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
    rows: usize,
    dim: usize,
) {
    // y_j = x_j s w_j with s = (mean x^2 + eps)^-1/2:
    // dx_j = s (g_j w_j) - x_j s^3 / dim * sum_i g_i w_i x_i ;  dw_j += g_j x_j s.
    let mut dwacc = vec![0.0f64; dim];
    for r in 0..rows {
        let (xr, gr) = (&x[r * dim..(r + 1) * dim], &dout[r * dim..(r + 1) * dim]);
        let s = rstd[r] as f64;
        let dot: f64 = (0..dim).map(|i| (gr[i] * w[i] * xr[i]) as f64).sum();
        for j in 0..dim {
            let gw = (gr[j] * w[j]) as f64;
            dx[r * dim + j] = (s * gw - xr[j] as f64 * s * s * s * dot / dim as f64) as f32;
            dwacc[j] += (gr[j] * xr[j]) as f64 * s;
        }
    }
    for j in 0..dim {
        dw[j] += dwacc[j] as f32;
    }
}
