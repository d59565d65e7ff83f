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
                let s = s * sign;
                for h in 0..n_heads {
                    let base = h * head_dim;
                    let (a, b) = (row[base + i], row[base + i + half]);
                    row[base + i] = a * c - b * s;
                    row[base + i + half] = b * c + a * s;
                }
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

#[cfg(test)]
mod tests {
    use super::super::{attention, attention_ref};
    use super::*;
    use crate::backend::{AttnShape, AttnSpan};
    use rand::{Rng, SeedableRng};

    fn rand_vec(r: &mut rand_chacha::ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| r.gen_range(0.05f32..1.0) * if r.gen() { 1.0 } else { -1.0 }).collect()
    }

    fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
        assert!(got.iter().all(|x| x.is_finite()), "non-finite output");
        let num: f64 = got.iter().zip(want).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
        let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
        num.sqrt() / den.sqrt()
    }

    /// The blocked f32 bidirectional attention against the scalar f64 one, forward and
    /// backward, on ragged spans around the block size (64) with outputs poisoned; and it
    /// differs from the causal one (the mask is really off).
    #[test]
    fn bidir_blocked_matches_f64_reference() {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let shape = AttnShape { n_heads: 4, n_kv_heads: 2, head_dim: 12 };
        let lens = [1usize, 65, 16, 7];
        let mut spans = Vec::new();
        let mut at = 0;
        for &l in &lens {
            spans.push(AttnSpan { q_start: at, q_len: l, kv_start: at, kv_len: l });
            at += l;
        }
        let n = at;
        let (h, hkv, d) = (4, 2, 12);
        let (q, k, v, dout) = (
            rand_vec(&mut r, n * h * d),
            rand_vec(&mut r, n * hkv * d),
            rand_vec(&mut r, n * hkv * d),
            rand_vec(&mut r, n * h * d),
        );
        let run = |f: &dyn Fn(&mut [f32], &mut [f32])| {
            let (mut o, mut l) = (vec![f32::NAN; n * h * d], vec![f32::NAN; n * h]);
            f(&mut o, &mut l);
            (o, l)
        };
        let want =
            run(&|o, l| attention_ref::forward_masked(o, l, &q, &k, &v, &spans, shape, false));
        let got = run(&|o, l| attention::forward_masked(o, l, &q, &k, &v, &spans, shape, false));
        assert!(rel_l2(&got.0, &want.0) < 1e-5 && rel_l2(&got.1, &want.1) < 1e-6);
        let causal = run(&|o, l| attention::forward(o, l, &q, &k, &v, &spans, shape));
        assert!(rel_l2(&causal.0, &want.0) > 1e-2, "bidirectional equals causal");
        let grads = |blocked: bool| {
            let (mut dq, mut dk, mut dv) =
                (vec![f32::NAN; q.len()], vec![f32::NAN; k.len()], vec![f32::NAN; v.len()]);
            let f =
                if blocked { attention::backward_masked } else { attention_ref::backward_masked };
            f(&mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &want.0, &want.1, &spans, shape, false);
            [dq, dk, dv]
        };
        for (g, w) in grads(true).iter().zip(grads(false).iter()) {
            assert!(rel_l2(g, w) < 1e-5);
        }
    }

    /// GELU's derivative against central differences of the f64 forward, and known values.
    #[test]
    fn gelu_values_and_gradient() {
        // 0.5 * x * (1 + math.erf(x / math.sqrt(2))) in Python, for x in (-2, -0.5, 1, 3)
        let want =
            [-0.04550026389635842, -0.15426876936299344, 0.8413447460685429, 2.99595030590511];
        for (x, w) in [-2.0, -0.5, 1.0, 3.0].iter().zip(want) {
            assert!((gelu_f64(*x) - w).abs() < 1e-7, "gelu({x}) = {} vs {w}", gelu_f64(*x));
        }
        for x in [-3.1, -1.0, -0.2, 0.0, 0.7, 2.5] {
            let h = 1e-5;
            let fd = (gelu_f64(x + h) - gelu_f64(x - h)) / (2.0 * h);
            assert!((gelu_grad_f64(x) - fd).abs() < 1e-8, "gelu'({x})");
        }
    }

    /// `rope_table` with the angle table of plain positions is the 1D `rope`.
    #[test]
    fn rope_table_with_position_angles_is_rope() {
        use crate::backend::{cpu::Cpu, Backend};
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (rows, heads, hd) = (7, 3, 16);
        let x = rand_vec(&mut r, rows * heads * hd);
        let pos: Vec<u32> = (0..rows).map(|_| r.gen_range(0..3000)).collect();
        let inv = crate::backend::cpu::rope_inv_freq(hd, 1e4);
        let angles: Vec<f32> =
            pos.iter().flat_map(|&p| inv.iter().map(move |&f| p as f32 * f)).collect();
        let mut a = x.clone();
        Cpu.rope(&mut a, &pos, heads, hd, &crate::backend::cpu::rope_inv_freq(hd, 1e4), false);
        let mut b = x.clone();
        rope_table(&mut b, &angles, rows, heads, hd, false);
        assert_eq!(a, b);
        rope_table(&mut b, &angles, rows, heads, hd, true);
        assert!(rel_l2(&b, &x) < 1e-6);
    }
}
