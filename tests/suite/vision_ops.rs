//! The vision tower's Backend ops (bidirectional span attention, rotary embedding from an angle
//! table, exact GELU; forward and backward) on the CUDA backend against the CPU reference, and
//! the CPU reference against independent oracles: random inputs at ragged shapes, outputs
//! poisoned with NaN first.
//!
//! The CUDA side runs on the emulator with `--features emu` (every launch under each schedule
//! of `Schedule::CI`, bit-identical results demanded) and on a real GPU with `--features cuda`
//! (those tests are `#[ignore]`d; scripts/gpu-check.sh runs them with `--include-ignored`).

use mmr1_fast::backend::cpu::{attention_ref, vision_ops, Cpu};
use mmr1_fast::backend::{AttnShape, AttnSpan, Backend};
use rand_chacha::ChaCha8Rng;

use crate::kernel_check;
use kernel_check::*;

const TOL: f64 = 1e-5;

/// Spans of full sequences of the given lengths, back to back, starting at row `first`
/// (rows before it belong to no span).
fn packed(first: usize, lens: &[usize]) -> Vec<AttnSpan> {
    let mut at = first;
    lens.iter()
        .map(|&l| {
            let s = AttnSpan { q_start: at, q_len: l, kv_start: at, kv_len: l };
            at += l;
            s
        })
        .collect()
}

struct Case {
    spans: Vec<AttnSpan>,
    shape: AttnShape,
    rows: usize,
}

/// Window-like spans (ragged, a one-row span, lengths around the kernels' 128-row tile, a
/// span starting after an uncovered row), head dims from 8 to 80 (Qwen2.5-VL's vision head
/// dim), and grouped-query heads (the op allows them, the vision tower has none).
fn cases() -> Vec<Case> {
    let sh = |h, hkv, d| AttnShape { n_heads: h, n_kv_heads: hkv, head_dim: d };
    vec![
        Case { spans: packed(0, &[16, 1, 7, 33]), shape: sh(2, 2, 16), rows: 57 },
        Case { spans: packed(1, &[130, 4]), shape: sh(3, 3, 8), rows: 136 },
        Case { spans: packed(0, &[5, 12]), shape: sh(4, 2, 24), rows: 17 },
        Case { spans: packed(0, &[9, 3]), shape: sh(2, 2, 80), rows: 12 },
    ]
}

type AttnOut = [Vec<f32>; 5];

/// Bidirectional forward then backward on a backend: (out, lse, dq, dk, dv).
fn run_bidir<B: Backend>(b: &B, c: &Case, inputs: &[Vec<f32>; 4]) -> AttnOut {
    let AttnShape { n_heads: h, n_kv_heads: hkv, head_dim: d } = c.shape;
    let [q, k, v, dout] = inputs;
    let (qg, kg, vg) = (b.upload(q), b.upload(k), b.upload(v));
    let (mut og, mut lg) = (poisoned(b, c.rows * h * d), poisoned(b, c.rows * h));
    b.attention_bidir(&mut og, &mut lg, &qg, &kg, &vg, &c.spans, c.shape);
    let (mut dq, mut dk, mut dv) =
        (poisoned(b, c.rows * h * d), poisoned(b, c.rows * hkv * d), poisoned(b, c.rows * hkv * d));
    b.attention_bidir_backward(
        &mut dq,
        &mut dk,
        &mut dv,
        &b.upload(dout),
        &qg,
        &kg,
        &vg,
        &og,
        &lg,
        &c.spans,
        c.shape,
    );
    [b.download(&og), b.download(&lg), b.download(&dq), b.download(&dk), b.download(&dv)]
}

fn inputs(r: &mut ChaCha8Rng, c: &Case) -> [Vec<f32>; 4] {
    let AttnShape { n_heads: h, n_kv_heads: hkv, head_dim: d } = c.shape;
    [
        rand_vec(r, c.rows * h * d, 1.0),
        rand_vec(r, c.rows * hkv * d, 1.0),
        rand_vec(r, c.rows * hkv * d, 1.0),
        rand_vec(r, c.rows * h * d, 1.0),
    ]
}

/// Elements of the rows covered by spans (rows of `width`).
fn covered(c: &Case, v: &[f32], width: usize) -> Vec<f32> {
    c.spans
        .iter()
        .flat_map(|s| v[s.q_start * width..(s.q_start + s.q_len) * width].to_vec())
        .collect()
}

fn check_bidir(what: &str, c: &Case, got: &AttnOut, want: &AttnOut) {
    let AttnShape { n_heads: h, n_kv_heads: hkv, head_dim: d } = c.shape;
    let widths = [h * d, h, h * d, hkv * d, hkv * d];
    for (i, name) in ["out", "lse", "dq", "dk", "dv"].iter().enumerate() {
        let tag = format!(
            "{what} {name} {:?} {:?}",
            c.shape,
            c.spans.iter().map(|s| s.q_len).collect::<Vec<_>>()
        );
        assert_close(&tag, &covered(c, &got[i], widths[i]), &covered(c, &want[i], widths[i]), TOL);
    }
    // A row no span covers is left as it was (the poison).
    if c.spans[0].q_start > 0 {
        assert!(got[0][..h * d].iter().all(|x| x.is_nan()), "{what}: wrote an uncovered row");
    }
}

/// The CPU backend's bidirectional attention against the scalar f64 oracle, and the oracle
/// against a direct softmax over every key of the span (so the mask is really off: the causal
/// result differs).
#[test]
fn cpu_bidir_attention_matches_oracles() {
    let mut r = rng(21);
    for c in cases() {
        let inp = inputs(&mut r, &c);
        let got = run_bidir(&Cpu, &c, &inp);
        let AttnShape { n_heads: h, n_kv_heads: hkv, head_dim: d } = c.shape;
        let [q, k, v, dout] = &inp;
        let mut want: AttnOut = std::array::from_fn(|i| {
            vec![f32::NAN; c.rows * [h * d, h, h * d, hkv * d, hkv * d][i]]
        });
        let [o, l, dq, dk, dv] = &mut want;
        attention_ref::forward_masked(o, l, q, k, v, &c.spans, c.shape, false);
        attention_ref::backward_masked(dq, dk, dv, dout, q, k, v, o, l, &c.spans, c.shape, false);
        check_bidir("cpu vs f64", &c, &got, &want);
        // Direct: one (row, head), softmax over all keys of its span, in f64.
        let sp = c.spans[c.spans.len() - 1];
        let (row, hh) = (sp.q_start + sp.q_len / 2, h - 1);
        let kvh = hh / (h / hkv);
        let qv = &q[(row * h + hh) * d..][..d];
        let scores: Vec<f64> = (sp.kv_start..sp.kv_start + sp.kv_len)
            .map(|j| {
                let kk = &k[(j * hkv + kvh) * d..][..d];
                qv.iter().zip(kk).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>()
                    / (d as f64).sqrt()
            })
            .collect();
        let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = scores.iter().map(|s| (s - mx).exp()).sum();
        for ch in [0, d - 1] {
            let o: f64 = (0..sp.kv_len)
                .map(|j| {
                    (scores[j] - mx).exp() / z * v[((sp.kv_start + j) * hkv + kvh) * d + ch] as f64
                })
                .sum();
            let g = got[0][(row * h + hh) * d + ch] as f64;
            assert!((g - o).abs() < 1e-5 * (1.0 + o.abs()), "direct softmax: {g} vs {o}");
        }
        if sp.q_len > 2 {
            let (mut oc, mut lc) = (vec![f32::NAN; c.rows * h * d], vec![f32::NAN; c.rows * h]);
            Cpu.attention(
                &mut oc,
                &mut lc,
                &Cpu.upload(q),
                &Cpu.upload(k),
                &Cpu.upload(v),
                &c.spans,
                c.shape,
            );
            let at = (sp.q_start * h) * d;
            assert!(
                oc[at..at + h * d] != got[0][at..at + h * d],
                "the first row of a span sees only itself under the causal mask"
            );
        }
    }
}

/// `rope_table` against a direct evaluation of transformers' `q * cos + rotate_half(q) * sin`
/// with cos/sin tables `[rows, head_dim]` (each half repeated), and its inverse round trip.
#[test]
fn cpu_rope_table_matches_rotate_half() {
    let mut r = rng(22);
    for (rows, heads, hd) in [(1usize, 1usize, 2usize), (9, 2, 16), (5, 3, 80)] {
        let half = hd / 2;
        let x = rand_vec(&mut r, rows * heads * hd, 1.0);
        let ang = rand_vec(&mut r, rows * half, 40.0);
        let mut want = vec![0.0f32; x.len()];
        for t in 0..rows {
            for h in 0..heads {
                let base = (t * heads + h) * hd;
                for j in 0..hd {
                    let a = ang[t * half + j % half] as f64;
                    let rot =
                        if j < half { -x[base + j + half] } else { x[base + j - half] } as f64;
                    want[base + j] = (x[base + j] as f64 * a.cos() + rot * a.sin()) as f32;
                }
            }
        }
        let mut got = x.clone();
        Cpu.rope_table(&mut got, &ang, rows, heads, hd, false);
        assert_close("cpu rope_table", &got, &want, 1e-6);
        Cpu.rope_table(&mut got, &ang, rows, heads, hd, true);
        assert_close("cpu rope_table round trip", &got, &x, 1e-6);
    }
}

/// GELU and its gradient on the CPU against f64 evaluations and finite differences.
#[test]
fn cpu_gelu_matches_f64_and_finite_differences() {
    let mut r = rng(23);
    let x = rand_vec(&mut r, 999, 6.0);
    let (dout, mut out, mut dx) =
        (rand_vec(&mut r, 999, 1.0), vec![f32::NAN; 999], vec![f32::NAN; 999]);
    Cpu.gelu(&mut out, &x);
    Cpu.gelu_backward(&mut dx, &dout, &x);
    for i in 0..x.len() {
        let v = x[i] as f64;
        assert!((out[i] as f64 - vision_ops::gelu_f64(v)).abs() <= 1e-6 * (1.0 + v.abs()));
        let h = 1e-4;
        let fd = (vision_ops::gelu_f64(v + h) - vision_ops::gelu_f64(v - h)) / (2.0 * h);
        assert!((dx[i] as f64 - dout[i] as f64 * fd).abs() < 1e-5, "gelu' at {v}");
    }
    // Negative inputs give small negative outputs (not ReLU, not the tanh approximation's).
    assert!(out.iter().zip(&x).all(|(o, v)| if *v < 0.0 {
        *o <= 0.0 && *o > -0.17
    } else {
        *o >= 0.0
    }));
}

// ---- CUDA vs CPU ------------------------------------------------------------------------------

fn bidir_vs_cpu<B: Backend>(b: &B) {
    let mut r = rng(31);
    for c in cases() {
        let inp = inputs(&mut r, &c);
        let want = run_bidir(&Cpu, &c, &inp);
        let got = run_bidir(b, &c, &inp);
        check_bidir("attention_bidir", &c, &got, &want);
    }
}

fn rope_table_vs_cpu<B: Backend>(b: &B) {
    let mut r = rng(32);
    for (rows, heads, hd) in [(1usize, 1usize, 2usize), (7, 2, 16), (65, 3, 80), (3, 4, 128)] {
        let x = rand_vec(&mut r, rows * heads * hd, 1.0);
        // Angles as large as real positions give (position up to ~4k times inv_freq <= 1).
        let ang = rand_vec(&mut r, rows * hd / 2, 500.0);
        let angles = b.upload(&ang);
        for inverse in [false, true] {
            let mut xc = x.clone();
            Cpu.rope_table(&mut xc, &ang, rows, heads, hd, inverse);
            let mut xg = b.upload(&x);
            b.rope_table(&mut xg, &angles, rows, heads, hd, inverse);
            assert_close(
                &format!("rope_table {rows}x{heads}x{hd} inverse={inverse}"),
                &b.download(&xg),
                &xc,
                TOL,
            );
        }
    }
}

fn gelu_vs_cpu<B: Backend>(b: &B) {
    let mut r = rng(33);
    for n in [1usize, 7, 257, 3001] {
        let (x, dout) = (rand_vec(&mut r, n, 5.0), rand_vec(&mut r, n, 1.0));
        let (mut oc, mut dc) = (vec![0.0; n], vec![0.0; n]);
        Cpu.gelu(&mut oc, &x);
        Cpu.gelu_backward(&mut dc, &dout, &x);
        let xg = b.upload(&x);
        let mut og = poisoned(b, n);
        b.gelu(&mut og, &xg);
        assert_close(&format!("gelu n={n}"), &b.download(&og), &oc, TOL);
        let mut dg = poisoned(b, n);
        b.gelu_backward(&mut dg, &b.upload(&dout), &xg);
        assert_close(&format!("gelu_backward n={n}"), &b.download(&dg), &dc, TOL);
    }
}

backend_suite!(bidir_vs_cpu, rope_table_vs_cpu, gelu_vs_cpu);
