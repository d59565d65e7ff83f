//! The scalar f64 causal attention: one (query row, head) at a time, every dot product and
//! softmax sum in f64. Slow and obviously right; it is the oracle the blocked f32 version
//! (`attention`) and the CUDA kernels are tested against.

use crate::{AttnShape, AttnSpan};
use rayon::prelude::*;

/// Rows of a span's queries/keys for one head, as (row, head) -> flat offset.
#[inline]
fn at(row: usize, head: usize, heads: usize, hd: usize) -> usize {
    (row * heads + head) * hd
}

/// Same contract as `Backend::attention`.
pub fn forward(
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    spans: &[AttnSpan],
    shape: AttnShape,
) {
    forward_masked(out, lse, q, k, v, spans, shape, true)
}

/// `forward` with the mask chosen: `causal == false` is `Backend::attention_bidir` (every
/// query of a span sees all of its keys).
#[allow(clippy::too_many_arguments)]
pub fn forward_masked(
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    spans: &[AttnSpan],
    shape: AttnShape,
    causal: bool,
) {
    let AttnShape { n_heads: h, n_kv_heads: hkv, head_dim: d } = shape;
    let group = h / hkv;
    let scale = 1.0 / (d as f64).sqrt();
    // Work items: one (query row, head) each; results gathered then written.
    let items: Vec<(usize, usize, usize)> = spans
        .iter()
        .flat_map(|sp| {
            (0..sp.q_len).flat_map(move |i| {
                (0..h).map(move |hh| {
                    let last = if causal { sp.kv_len - sp.q_len + i } else { sp.kv_len - 1 };
                    (sp.q_start + i, hh, sp.kv_start + last)
                })
            })
        })
        .collect();
    let span_of_row = |qrow: usize| {
        spans.iter().find(|s| qrow >= s.q_start && qrow < s.q_start + s.q_len).unwrap()
    };
    let results: Vec<(usize, usize, Vec<f32>, f32)> = items
        .par_iter()
        .map(|&(qrow, hh, last_kv)| {
            let sp = span_of_row(qrow);
            let kvh = hh / group;
            let qv = &q[at(qrow, hh, h, d)..at(qrow, hh, h, d) + d];
            let scores: Vec<f64> = (sp.kv_start..=last_kv)
                .map(|kr| {
                    let kk = &k[at(kr, kvh, hkv, d)..at(kr, kvh, hkv, d) + d];
                    qv.iter().zip(kk).map(|(a, b)| (*a as f64) * (*b as f64)).sum::<f64>() * scale
                })
                .collect();
            let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = scores.iter().map(|s| (s - mx).exp()).sum();
            let mut o = vec![0.0f64; d];
            for (j, kr) in (sp.kv_start..=last_kv).enumerate() {
                let p = (scores[j] - mx).exp() / z;
                let vv = &v[at(kr, kvh, hkv, d)..at(kr, kvh, hkv, d) + d];
                for c in 0..d {
                    o[c] += p * vv[c] as f64;
                }
            }
            (qrow, hh, o.into_iter().map(|x| x as f32).collect(), (mx + z.ln()) as f32)
        })
        .collect();
    for (qrow, hh, o, l) in results {
        out[at(qrow, hh, h, d)..at(qrow, hh, h, d) + d].copy_from_slice(&o);
        lse[qrow * h + hh] = l;
    }
}

/// Same contract as `Backend::attention_backward`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    spans: &[AttnSpan],
    shape: AttnShape,
) {
    backward_masked(dq, dk, dv, dout, q, k, v, out, lse, spans, shape, true)
}

/// `backward` with the mask chosen (see `forward_masked`).
#[allow(clippy::too_many_arguments)]
pub fn backward_masked(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    spans: &[AttnSpan],
    shape: AttnShape,
    causal: bool,
) {
    let AttnShape { n_heads: h, n_kv_heads: hkv, head_dim: d } = shape;
    let group = h / hkv;
    let scale = 1.0 / (d as f64).sqrt();
    // One work item per (span, kv head): it owns its dk/dv rows and the dq rows of its
    // query heads, so items never write the same element.
    struct Grad {
        sp: AttnSpan,
        kvh: usize,
        dq: Vec<f64>, // [q_len, group, d]
        dk: Vec<f64>, // [kv_len, d]
        dv: Vec<f64>,
    }
    let items: Vec<(AttnSpan, usize)> =
        spans.iter().flat_map(|&sp| (0..hkv).map(move |g| (sp, g))).collect();
    let grads: Vec<Grad> = items
        .par_iter()
        .map(|&(sp, kvh)| {
            let mut gq = vec![0.0f64; sp.q_len * group * d];
            let mut gk = vec![0.0f64; sp.kv_len * d];
            let mut gv = vec![0.0f64; sp.kv_len * d];
            for gi in 0..group {
                let hh = kvh * group + gi;
                for i in 0..sp.q_len {
                    let qrow = sp.q_start + i;
                    let n_keys = if causal { sp.kv_len - sp.q_len + i + 1 } else { sp.kv_len };
                    let qv = &q[at(qrow, hh, h, d)..][..d];
                    let dov = &dout[at(qrow, hh, h, d)..][..d];
                    let ov = &out[at(qrow, hh, h, d)..][..d];
                    let l = lse[qrow * h + hh] as f64;
                    // D = dO . O  (= sum_j P_j dP_j)
                    let dd: f64 = dov.iter().zip(ov).map(|(a, b)| (*a as f64) * (*b as f64)).sum();
                    for j in 0..n_keys {
                        let kr = sp.kv_start + j;
                        let kk = &k[at(kr, kvh, hkv, d)..][..d];
                        let vv = &v[at(kr, kvh, hkv, d)..][..d];
                        let s: f64 =
                            qv.iter().zip(kk).map(|(a, b)| (*a as f64) * (*b as f64)).sum::<f64>()
                                * scale;
                        let p = (s - l).exp();
                        let dp: f64 =
                            dov.iter().zip(vv).map(|(a, b)| (*a as f64) * (*b as f64)).sum();
                        let ds = p * (dp - dd) * scale;
                        for c in 0..d {
                            gv[j * d + c] += p * dov[c] as f64;
                            gk[j * d + c] += ds * qv[c] as f64;
                            gq[(i * group + gi) * d + c] += ds * kk[c] as f64;
                        }
                    }
                }
            }
            Grad { sp, kvh, dq: gq, dk: gk, dv: gv }
        })
        .collect();
    for g in grads {
        let sp = g.sp;
        for i in 0..sp.q_len {
            for gi in 0..group {
                let hh = g.kvh * group + gi;
                let dst = at(sp.q_start + i, hh, h, d);
                for c in 0..d {
                    dq[dst + c] = g.dq[(i * group + gi) * d + c] as f32;
                }
            }
        }
        for j in 0..sp.kv_len {
            let dst = at(sp.kv_start + j, g.kvh, hkv, d);
            for c in 0..d {
                dk[dst + c] = g.dk[j * d + c] as f32;
                dv[dst + c] = g.dv[j * d + c] as f32;
            }
        }
    }
}
