//! The CPU reference's own loops (crates/cpu-kernels, which keeps its tests here: one test
//! binary fewer to build) against simpler oracles: the blocked f32 attention (causal and
//! bidirectional) against the scalar f64 one, the head's vectorized `exp` and row statistics
//! against libm, GELU against known values and central differences, the vision rotary table
//! against the 1D rotary embedding. Random inputs, ragged shapes, outputs poisoned with NaN.

use crate::common::rel_l2;
use crate::kernel_check::{rand_vec, rng};
use mmr1_cpu_kernels::vision_ops::{gelu_f64, gelu_grad_f64, rope_table};
use mmr1_cpu_kernels::{attention, attention_ref, softmax_row};
use mmr1_fast::backend::cpu::{rope_inv_freq, Cpu};
use mmr1_fast::backend::{AttnShape, AttnSpan, Backend};
use rand::Rng;

/// Packed spans of the given (q_len, kv_len), laid out back to back like the model does.
fn spans_of(lens: &[(usize, usize)]) -> (Vec<AttnSpan>, usize, usize) {
    let (mut qs, mut ks) = (0, 0);
    let mut spans = Vec::new();
    for &(q_len, kv_len) in lens {
        spans.push(AttnSpan { q_start: qs, q_len, kv_start: ks, kv_len });
        qs += q_len;
        ks += kv_len;
    }
    (spans, qs, ks)
}

/// The blocked f32 attention against the scalar f64 oracle, forward and backward, on
/// ragged packed spans (lengths around the block size, a one-token span, decode-style
/// spans with fewer queries than keys) and grouped-query heads; outputs poisoned with NaN,
/// and a row no span covers must stay as it was.
#[test]
fn blocked_matches_f64_reference() {
    let mut r = rng(7);
    let cases: [(AttnShape, &[(usize, usize)]); 3] = [
        (
            AttnShape { n_heads: 6, n_kv_heads: 2, head_dim: 24 },
            &[(1, 1), (63, 63), (130, 130), (5, 5)],
        ),
        (AttnShape { n_heads: 4, n_kv_heads: 4, head_dim: 8 }, &[(65, 65), (2, 2)]),
        (AttnShape { n_heads: 4, n_kv_heads: 1, head_dim: 16 }, &[(1, 9), (70, 100), (3, 3)]),
    ];
    for (shape, lens) in cases {
        let (spans, q_rows, kv_rows) = spans_of(lens);
        let AttnShape { n_heads: h, n_kv_heads: hkv, head_dim: d } = shape;
        // One extra query row no span covers.
        let (q, k, v) = (
            rand_vec(&mut r, (q_rows + 1) * h * d, 1.0),
            rand_vec(&mut r, kv_rows * hkv * d, 1.0),
            rand_vec(&mut r, kv_rows * hkv * d, 1.0),
        );
        let dout = rand_vec(&mut r, (q_rows + 1) * h * d, 1.0);
        let mut want_o = vec![f32::NAN; q.len()];
        let mut want_l = vec![f32::NAN; (q_rows + 1) * h];
        attention_ref::forward(&mut want_o, &mut want_l, &q, &k, &v, &spans, shape);
        let mut o = vec![f32::NAN; q.len()];
        let mut l = vec![f32::NAN; (q_rows + 1) * h];
        let tail = q_rows * h * d;
        o[tail..].fill(3.0);
        attention::forward(&mut o, &mut l, &q, &k, &v, &spans, shape);
        assert!(o[tail..].iter().all(|&x| x == 3.0), "a row outside every span was written");
        let (o, l) = (&o[..tail], &l[..q_rows * h]);
        let e = rel_l2(o, &want_o[..tail]);
        assert!(e < 1e-5, "{shape:?}: out rel L2 {e:.2e}");
        let e = rel_l2(l, &want_l[..q_rows * h]);
        assert!(e < 1e-6, "{shape:?}: lse rel L2 {e:.2e}");

        // Backward is only defined for full spans (every kv row belongs to one span's queries).
        if lens.iter().any(|(a, b)| a != b) {
            continue;
        }
        type Grads<'a> = &'a dyn Fn(&mut [f32], &mut [f32], &mut [f32]);
        let grads = |f: Grads<'_>| {
            let mut g = (vec![f32::NAN; q.len()], vec![f32::NAN; k.len()], vec![f32::NAN; v.len()]);
            f(&mut g.0, &mut g.1, &mut g.2);
            g
        };
        let want = grads(&|dq, dk, dv| {
            attention_ref::backward(dq, dk, dv, &dout, &q, &k, &v, &want_o, &want_l, &spans, shape)
        });
        let got = grads(&|dq, dk, dv| {
            attention::backward(dq, dk, dv, &dout, &q, &k, &v, &want_o, &want_l, &spans, shape)
        });
        for (name, g, w) in
            [("dq", &got.0, &want.0), ("dk", &got.1, &want.1), ("dv", &got.2, &want.2)]
        {
            let n = if name == "dq" { tail } else { w.len() };
            let e = rel_l2(&g[..n], &w[..n]);
            assert!(e < 1e-5, "{shape:?}: {name} rel L2 {e:.2e}");
        }
    }
}

/// The blocked f32 bidirectional attention against the scalar f64 one, forward and
/// backward, on ragged spans around the block size (64) with outputs poisoned; and it
/// differs from the causal one (the mask is really off).
#[test]
fn bidir_blocked_matches_f64_reference() {
    let mut r = rng(11);
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
        rand_vec(&mut r, n * h * d, 1.0),
        rand_vec(&mut r, n * hkv * d, 1.0),
        rand_vec(&mut r, n * hkv * d, 1.0),
        rand_vec(&mut r, n * h * d, 1.0),
    );
    let run = |f: &dyn Fn(&mut [f32], &mut [f32])| {
        let (mut o, mut l) = (vec![f32::NAN; n * h * d], vec![f32::NAN; n * h]);
        f(&mut o, &mut l);
        (o, l)
    };
    let want = run(&|o, l| attention_ref::forward_masked(o, l, &q, &k, &v, &spans, shape, false));
    let got = run(&|o, l| attention::forward_masked(o, l, &q, &k, &v, &spans, shape, false));
    assert!(rel_l2(&got.0, &want.0) < 1e-5 && rel_l2(&got.1, &want.1) < 1e-6);
    let causal = run(&|o, l| attention::forward(o, l, &q, &k, &v, &spans, shape));
    assert!(rel_l2(&causal.0, &want.0) > 1e-2, "bidirectional equals causal");
    let grads = |blocked: bool| {
        let (mut dq, mut dk, mut dv) =
            (vec![f32::NAN; q.len()], vec![f32::NAN; k.len()], vec![f32::NAN; v.len()]);
        let f = if blocked { attention::backward_masked } else { attention_ref::backward_masked };
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
    let want = [-0.04550026389635842, -0.15426876936299344, 0.8413447460685429, 2.99595030590511];
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
    let mut r = rng(5);
    let (rows, heads, hd) = (7, 3, 16);
    let x = rand_vec(&mut r, rows * heads * hd, 1.0);
    let pos: Vec<u32> = (0..rows).map(|_| r.gen_range(0..3000)).collect();
    let inv = rope_inv_freq(hd, 1e4);
    let angles: Vec<f32> =
        pos.iter().flat_map(|&p| inv.iter().map(move |&f| p as f32 * f)).collect();
    let mut a = x.clone();
    Cpu.rope(&mut a, &pos, heads, hd, &rope_inv_freq(hd, 1e4), false);
    let mut b = x.clone();
    rope_table(&mut b, &angles, rows, heads, hd, false);
    assert_eq!(a, b);
    rope_table(&mut b, &angles, rows, heads, hd, true);
    assert!(rel_l2(&b, &x) < 1e-6);
}

/// Against the platform's `exp` over the range the head uses (z - max <= 0) and beyond:
/// within 4 ulp where the result is normal, exactly 0 below -708 and at -inf, inf above
/// 709, NaN for NaN.
#[test]
fn exp_is_within_a_few_ulp_of_libm() {
    let mut worst = 0u64;
    for i in 0..200_001 {
        let x = -708.0 + i as f64 * (708.0 + 709.0) / 200_000.0;
        let x = x + (i % 7) as f64 * 1e-7; // off the grid
        let (got, want) = (softmax_row::exp(x), x.exp());
        if !(-708.0..=709.0).contains(&x) {
            continue;
        }
        worst = worst.max(got.to_bits().abs_diff(want.to_bits()));
    }
    for x in [0.0, -0.0, 1e-300, -1e-17, 0.5 * std::f64::consts::LN_2, -0.34657359] {
        worst = worst.max(softmax_row::exp(x).to_bits().abs_diff(x.exp().to_bits()));
    }
    assert!(worst <= 4, "{worst} ulp");
    assert_eq!(softmax_row::exp(-709.0), 0.0);
    assert_eq!(softmax_row::exp(f64::NEG_INFINITY), 0.0);
    assert_eq!(softmax_row::exp(710.0), f64::INFINITY);
    assert!(softmax_row::exp(f64::NAN).is_nan());
    // The dispatched slice version gives the scalar's bits.
    let xs: Vec<f64> = (0..1003).map(|i| -(i as f64) * 0.731 + 3.0).collect();
    let mut v = xs.clone();
    softmax_row::exp_shifted(&mut v, 3.0);
    for (x, y) in xs.iter().zip(&v) {
        assert_eq!(y.to_bits(), softmax_row::exp(x - 3.0).to_bits());
    }
}

/// The row statistics against a direct f64 evaluation with libm (two-pass, as the code
/// was before): a ragged row with masked logits and a temperature, an all-masked row.
#[test]
fn row_softmax_matches_the_two_pass_definition() {
    let row: Vec<f32> =
        (0..1037)
            .map(|i| {
                if i % 97 == 5 {
                    f32::NEG_INFINITY
                } else {
                    ((i * 7919) % 613) as f32 * 0.031 - 9.0
                }
            })
            .collect();
    for inv_temp in [1.0f32, 1.0 / 0.7] {
        let z: Vec<f64> = row.iter().map(|&x| (x * inv_temp) as f64).collect();
        let mx = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = z.iter().map(|&v| (v - mx).exp()).sum();
        let lse = mx + sum.ln();
        let ent: f64 =
            -z.iter().filter(|v| v.is_finite()).map(|&v| (v - lse).exp() * (v - lse)).sum::<f64>();
        let mut e = Vec::new();
        let got = softmax_row::row_softmax(&row, inv_temp, &mut e);
        assert!((got.lse - lse).abs() <= 1e-13 * lse.abs(), "{} vs {lse}", got.lse);
        assert!((got.entropy - ent).abs() <= 1e-12 * ent.abs(), "{} vs {ent}", got.entropy);
        assert!((got.sum - sum).abs() <= 1e-13 * sum, "{} vs {sum}", got.sum);
        assert_eq!(e.len(), row.len());
        assert!(e.iter().zip(&z).all(|(&ej, &v)| (v == f64::NEG_INFINITY) == (ej == 0.0)));
    }
    let masked = vec![f32::NEG_INFINITY; 13];
    let mut e = vec![7.0; 3];
    let got = softmax_row::row_softmax(&masked, 1.0, &mut e);
    assert_eq!((got.lse, got.entropy, got.sum), (f64::NEG_INFINITY, 0.0, 0.0));
    assert_eq!(e, vec![0.0; 13]);
}
