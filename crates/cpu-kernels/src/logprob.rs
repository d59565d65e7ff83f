//! The vocabulary head's per-token log-prob and entropy of `softmax(logits * inv_temp)`, and
//! their gradient with respect to the logits. Row statistics: `softmax_row`.

use crate::softmax_row;
use rayon::prelude::*;

/// Row `r`: `lp[r] = log p(targets[r])`, `entropy[r] = H(p)`; a row of only -inf logits gives
/// (-inf, 0).
#[allow(clippy::too_many_arguments)]
pub fn logprobs(
    lp: &mut [f32],
    entropy: &mut [f32],
    logits: &[f32],
    targets: &[u32],
    rows: usize,
    vocab: usize,
    inv_temp: f32,
) {
    // One row per task, each with its own scratch of exp(z - max) (one exp per logit).
    lp[..rows].par_iter_mut().zip(entropy[..rows].par_iter_mut()).enumerate().for_each_init(
        Vec::new,
        |e, (r, (l, h))| {
            let row = &logits[r * vocab..(r + 1) * vocab];
            let sm = softmax_row::row_softmax(row, inv_temp, e);
            let (lse, ent) = (sm.lse, sm.entropy);
            (*l, *h) = if lse == f64::NEG_INFINITY {
                (f32::NEG_INFINITY, 0.0) // no token is possible
            } else {
                (((row[targets[r] as usize] * inv_temp) as f64 - lse) as f32, ent as f32)
            };
        },
    );
}

/// Writes `dlogits` from the gradients `dlp` and `dent` of `logprobs`' two outputs.
#[allow(clippy::too_many_arguments)]
pub fn logprobs_backward(
    dlogits: &mut [f32],
    logits: &[f32],
    targets: &[u32],
    dlp: &[f32],
    dent: &[f32],
    rows: usize,
    vocab: usize,
    inv_temp: f32,
) {
    dlogits[..rows * vocab].par_chunks_mut(vocab).enumerate().for_each_init(
        Vec::new,
        |e, (r, dl)| {
            let row = &logits[r * vocab..(r + 1) * vocab];
            let sm = softmax_row::row_softmax(row, inv_temp, e);
            let (lse, ent, zsum) = (sm.lse, sm.entropy, sm.sum);
            if lse == f64::NEG_INFINITY {
                dl.fill(0.0); // no distribution, no gradient
                return;
            }
            let (g, ge) = (dlp[r] as f64, dent[r] as f64);
            let t = inv_temp as f64;
            let inv_z = 1.0 / zsum;
            for ((o, &x), &ej) in dl.iter_mut().zip(row).zip(e.iter()) {
                let zj = (x * inv_temp) as f64;
                let p = ej * inv_z;
                // d H / d z_j = -p_j (log p_j + H); p log p -> 0 as p -> 0: a -inf logit
                // adds nothing to dH (not 0 * -inf).
                let dh = if p > 0.0 { -p * ((zj - lse) + ent) } else { 0.0 };
                *o = ((ge * dh - g * p) * t) as f32;
            }
            // d lp / d z_j = [j == target] - p_j: the one-hot term, added once.
            let j = targets[r] as usize;
            let zj = (row[j] * inv_temp) as f64;
            let p = e[j] * inv_z;
            let dh = if p > 0.0 { -p * ((zj - lse) + ent) } else { 0.0 };
            dl[j] = ((g * (1.0 - p) + ge * dh) * t) as f32;
        },
    );
}
