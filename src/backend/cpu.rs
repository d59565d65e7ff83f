//! The CPU reference backend: f32 storage, f64 where a reduction needs it. Written to be
//! obviously right (it is the oracle every kernel is checked against), with a SIMD GEMM
//! (the `gemm` crate) and rayon threads so tests and the demo stay quick.

use super::{AdamwStep, AttnShape, AttnSpan, Backend, Tr};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

mod attention;
pub mod attention_ref;
pub mod softmax_row;
pub mod vision_ops;

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

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

impl Backend for Cpu {
    type Buf = Vec<f32>;

    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn zeros(&self, n: usize) -> Vec<f32> {
        vec![0.0; n]
    }
    fn upload(&self, host: &[f32]) -> Vec<f32> {
        host.to_vec()
    }
    fn upload_vec(&self, host: Vec<f32>) -> Vec<f32> {
        host
    }
    fn download(&self, buf: &Vec<f32>) -> Vec<f32> {
        buf.clone()
    }
    fn len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn copy(&self, dst: &mut Vec<f32>, dst_off: usize, src: &Vec<f32>, src_off: usize, n: usize) {
        dst[dst_off..dst_off + n].copy_from_slice(&src[src_off..src_off + n]);
    }
    fn fill(&self, dst: &mut Vec<f32>, value: f32) {
        dst.fill(value);
    }
    fn scatter_rows(&self, dst: &mut Vec<f32>, rows: &[usize], src: &Vec<f32>, width: usize) {
        super::row_moves::check_rows("scatter_rows dst", rows, width, dst.len(), src.len(), true);
        for (t, &r) in rows.iter().enumerate() {
            dst[r * width..(r + 1) * width].copy_from_slice(&src[t * width..(t + 1) * width]);
        }
    }
    fn copy_rows_within(&self, buf: &mut Vec<f32>, src: &[usize], dst: &[usize], width: usize) {
        super::row_moves::check_rows_within(src, dst, width, buf.len());
        for (&s, &d) in src.iter().zip(dst) {
            buf.copy_within(s * width..(s + 1) * width, d * width);
        }
    }
    fn add_into(&self, out: &mut Vec<f32>, x: &Vec<f32>, y: &Vec<f32>) {
        assert!(out.len() == x.len() && x.len() == y.len(), "add_into: length mismatch");
        out.iter_mut().zip(x.iter().zip(y)).for_each(|(o, (a, b))| *o = a + b);
    }
    fn gather_rows(&self, dst: &mut Vec<f32>, src: &Vec<f32>, rows: &[usize], width: usize) {
        super::row_moves::check_rows("gather_rows src", rows, width, src.len(), dst.len(), false);
        for (t, &r) in rows.iter().enumerate() {
            dst[t * width..(t + 1) * width].copy_from_slice(&src[r * width..(r + 1) * width]);
        }
    }

    fn matmul(
        &self,
        out: &mut Vec<f32>,
        a: &Vec<f32>,
        ta: Tr,
        b: &Vec<f32>,
        tb: Tr,
        m: usize,
        n: usize,
        k: usize,
        beta: f32,
    ) {
        assert!(
            a.len() >= m * k && b.len() >= k * n && out.len() >= m * n,
            "matmul: buffer too small"
        );
        let sa = match ta {
            Tr::N => (k, 1),
            Tr::T => (1, m),
        };
        let sb = match tb {
            Tr::N => (n, 1),
            Tr::T => (1, k),
        };
        sgemm(out, n, beta, a, sa, b, sb, (m, n, k), rayon::current_num_threads());
    }

    fn add_bias(&self, x: &mut Vec<f32>, bias: &Vec<f32>, rows: usize, n: usize) {
        for row in x[..rows * n].chunks_mut(n) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    }
    fn bias_backward(&self, dbias: &mut Vec<f32>, dy: &Vec<f32>, rows: usize, n: usize) {
        for j in 0..n {
            let s: f64 = (0..rows).map(|r| dy[r * n + j] as f64).sum();
            dbias[j] += s as f32;
        }
    }
    fn add_assign(&self, x: &mut Vec<f32>, y: &Vec<f32>) {
        assert_eq!(x.len(), y.len(), "add_assign: length mismatch");
        x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
    }
    fn scale(&self, x: &mut Vec<f32>, s: f32) {
        x.iter_mut().for_each(|a| *a *= s);
    }
    fn sum_squares(&self, x: &Vec<f32>) -> f64 {
        // Fixed chunks, their sums added in chunk order: the result does not depend on the
        // thread count (a rayon `sum` would add in whatever tree the work split into).
        let parts: Vec<f64> = x.par_chunks(SUM_CHUNK).map(sum_squares_lanes).collect();
        parts.iter().sum()
    }

    fn embedding(&self, out: &mut Vec<f32>, table: &Vec<f32>, ids: &[u32], dim: usize) {
        for (t, &id) in ids.iter().enumerate() {
            let id = id as usize;
            out[t * dim..(t + 1) * dim].copy_from_slice(&table[id * dim..(id + 1) * dim]);
        }
    }
    fn embedding_backward(&self, dtable: &mut Vec<f32>, dout: &Vec<f32>, ids: &[u32], dim: usize) {
        for (t, &id) in ids.iter().enumerate() {
            let id = id as usize;
            for j in 0..dim {
                dtable[id * dim + j] += dout[t * dim + j];
            }
        }
    }

    fn rmsnorm(
        &self,
        out: &mut Vec<f32>,
        rstd: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &Vec<f32>,
        rows: usize,
        dim: usize,
        eps: f32,
    ) {
        out[..rows * dim]
            .par_chunks_mut(dim)
            .zip(rstd[..rows].par_iter_mut())
            .enumerate()
            .for_each(|(r, (o, rs))| {
                let xr = &x[r * dim..(r + 1) * dim];
                let ms = xr.iter().map(|&a| (a as f64) * (a as f64)).sum::<f64>() / dim as f64;
                let s = (1.0 / (ms + eps as f64).sqrt()) as f32;
                *rs = s;
                for j in 0..dim {
                    o[j] = xr[j] * s * w[j];
                }
            });
    }
    fn rmsnorm_backward(
        &self,
        dx: &mut Vec<f32>,
        dw: &mut Vec<f32>,
        dout: &Vec<f32>,
        x: &Vec<f32>,
        w: &Vec<f32>,
        rstd: &Vec<f32>,
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

    fn rope(
        &self,
        x: &mut Vec<f32>,
        positions: &[u32],
        n_heads: usize,
        head_dim: usize,
        inv: &[f32],
        inverse: bool,
    ) {
        let half = head_dim / 2;
        assert_eq!(inv.len(), half, "rope: head_dim / 2 frequencies");
        let sign = if inverse { -1.0f32 } else { 1.0 };
        x[..positions.len() * n_heads * head_dim]
            .par_chunks_mut(n_heads * head_dim)
            .zip(positions.par_iter())
            .for_each(|(row, &pos)| {
                for (i, &f) in inv.iter().enumerate() {
                    // Angle in f32 like HF (positions.float() @ inv_freq), cos/sin of it.
                    let ang = pos as f32 * f;
                    let (s, c) = ang.sin_cos();
                    let s = s * sign;
                    for h in 0..n_heads {
                        let base = h * head_dim;
                        let (a, b) = (row[base + i], row[base + i + half]);
                        row[base + i] = a * c - b * s;
                        row[base + i + half] = b * c + a * s;
                    }
                }
            });
    }

    fn attention(
        &self,
        out: &mut Vec<f32>,
        lse: &mut Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        spans: &[AttnSpan],
        shape: AttnShape,
    ) {
        attention::forward(out, lse, q, k, v, spans, shape)
    }

    fn attention_backward(
        &self,
        dq: &mut Vec<f32>,
        dk: &mut Vec<f32>,
        dv: &mut Vec<f32>,
        dout: &Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        out: &Vec<f32>,
        lse: &Vec<f32>,
        spans: &[AttnSpan],
        shape: AttnShape,
    ) {
        attention::backward(dq, dk, dv, dout, q, k, v, out, lse, spans, shape)
    }

    fn attention_bidir(
        &self,
        out: &mut Vec<f32>,
        lse: &mut Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        spans: &[AttnSpan],
        shape: AttnShape,
    ) {
        attention::forward_masked(out, lse, q, k, v, spans, shape, false)
    }
    fn attention_bidir_backward(
        &self,
        dq: &mut Vec<f32>,
        dk: &mut Vec<f32>,
        dv: &mut Vec<f32>,
        dout: &Vec<f32>,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        out: &Vec<f32>,
        lse: &Vec<f32>,
        spans: &[AttnSpan],
        shape: AttnShape,
    ) {
        attention::backward_masked(dq, dk, dv, dout, q, k, v, out, lse, spans, shape, false)
    }
    fn rope_table(
        &self,
        x: &mut Vec<f32>,
        angles: &Vec<f32>,
        rows: usize,
        n_heads: usize,
        head_dim: usize,
        inverse: bool,
    ) {
        vision_ops::rope_table(x, angles, rows, n_heads, head_dim, inverse)
    }
    fn gelu(&self, out: &mut Vec<f32>, x: &Vec<f32>) {
        vision_ops::gelu(out, x)
    }
    fn gelu_backward(&self, dx: &mut Vec<f32>, dout: &Vec<f32>, x: &Vec<f32>) {
        vision_ops::gelu_backward(dx, dout, x)
    }

    fn swiglu(&self, out: &mut Vec<f32>, gate: &Vec<f32>, up: &Vec<f32>) {
        out.par_iter_mut()
            .zip(gate.par_iter().zip(up.par_iter()))
            .for_each(|(o, (g, u))| *o = silu(*g) * u);
    }
    fn swiglu_backward(
        &self,
        dgate: &mut Vec<f32>,
        dup: &mut Vec<f32>,
        dout: &Vec<f32>,
        gate: &Vec<f32>,
        up: &Vec<f32>,
    ) {
        // Zipped chunks rather than indexing by element: no bounds check per value.
        const TASK: usize = 1 << 14;
        let n = dgate.len();
        dgate
            .par_chunks_mut(TASK)
            .zip(dup[..n].par_chunks_mut(TASK))
            .zip(dout[..n].par_chunks(TASK).zip(gate[..n].par_chunks(TASK)))
            .zip(up[..n].par_chunks(TASK))
            .for_each(|(((dg, du), (d, g)), u)| {
                for ((((dg, du), &d), &g), &u) in dg.iter_mut().zip(du).zip(d).zip(g).zip(u) {
                    let sig = 1.0 / (1.0 + (-g).exp());
                    *du = d * g * sig;
                    // d silu(g)/dg = sig * (1 + g (1 - sig))
                    *dg = d * u * sig * (1.0 + g * (1.0 - sig));
                }
            });
    }

    fn logprobs(
        &self,
        lp: &mut Vec<f32>,
        entropy: &mut Vec<f32>,
        logits: &Vec<f32>,
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
    fn logprobs_backward(
        &self,
        dlogits: &mut Vec<f32>,
        logits: &Vec<f32>,
        targets: &[u32],
        dlp: &Vec<f32>,
        dent: &Vec<f32>,
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

    fn adamw(
        &self,
        p: &mut Vec<f32>,
        g: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        hp: AdamwStep,
    ) {
        let bc1 = 1.0 - (hp.beta1 as f64).powi(hp.step as i32);
        let bc2 = 1.0 - (hp.beta2 as f64).powi(hp.step as i32);
        p.par_iter_mut().zip(g.par_iter()).zip(m.par_iter_mut().zip(v.par_iter_mut())).for_each(
            |((p, &g), (m, v))| {
                let g = g * hp.grad_scale;
                *p -= hp.lr * hp.weight_decay * *p;
                *m = hp.beta1 * *m + (1.0 - hp.beta1) * g;
                *v = hp.beta2 * *v + (1.0 - hp.beta2) * g * g;
                let mhat = *m as f64 / bc1;
                let vhat = *v as f64 / bc2;
                *p -= (hp.lr as f64 * mhat / (vhat.sqrt() + hp.eps as f64)) as f32;
            },
        );
    }
}

/// Elements per task of `sum_squares` (the clip norm reads every gradient once).
const SUM_CHUNK: usize = 1 << 15;

/// Sum of squares in f64 over 8 interleaved accumulators, so the loop is not one long chain
/// of dependent adds and vectorizes; the lanes are then added in order.
fn sum_squares_lanes(x: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += (v as f64) * (v as f64);
        }
    }
    let mut s: f64 = acc.iter().sum();
    for &v in it.remainder() {
        s += (v as f64) * (v as f64);
    }
    s
}

/// Log-sum-exp and entropy of `softmax(row * inv_temp)`, in f64.
///
/// -inf logits (masked or banned tokens) have probability 0 and add nothing, with
/// 0 log 0 = 0 in the entropy; a row of only -inf logits gives (-inf, 0). kernels/logprob.cu
/// follows the same conventions.
pub fn row_lse_entropy(row: &[f32], inv_temp: f32) -> (f64, f64) {
    let r = softmax_row::row_softmax(row, inv_temp, &mut Vec::new());
    (r.lse, r.entropy)
}

/// `dst[m, n] = alpha * dst + A @ B` with `dst` rows `dst_rs` apart, `A[i, p]` at
/// `a[i * rsa + p * csa]` and `B[p, j]` at `b[p * rsb + j * csb]` (so a transpose is a swap of
/// strides). With `alpha == 0` the old `dst` is never read: NaN poison does not leak. On more
/// than one thread the `gemm` crate splits rows/columns of `dst`; its k loop stays sequential,
/// so an element's sum order does not depend on the thread count.
#[allow(clippy::too_many_arguments)]
fn sgemm(
    dst: &mut [f32],
    dst_rs: usize,
    alpha: f32,
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    (m, n, k): (usize, usize, usize),
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * dst_rs + n <= dst.len(), "sgemm: output too small");
    if k == 0 {
        for row in dst.chunks_mut(dst_rs).take(m) {
            row[..n].iter_mut().for_each(|x| *x = if alpha == 0.0 { 0.0 } else { *x * alpha });
        }
        return;
    }
    assert!((m - 1) * rsa + (k - 1) * csa < a.len(), "sgemm: A too small");
    assert!((k - 1) * rsb + (n - 1) * csb < b.len(), "sgemm: B too small");
    // Batch invariance: the gemm crate sends small products (m * n <= 256, m and n <= 64, or
    // a single row) to other kernels (horizontal dot products, gemv, another k blocking) that
    // round differently from its main kernel, so a row's result would depend on how many rows
    // came with it (a sequence's log-probs on its neighbours). Pad such products with zero rows
    // up to a size the main kernel takes; they are small, so the copies cost nothing.
    let min_rows = (256 / n + 1).max(if n <= 64 { 65 } else { 2 });
    if m < min_rows {
        let mp = min_rows;
        let mut ap = vec![0.0f32; mp * k];
        for (i, row) in ap.chunks_mut(k).take(m).enumerate() {
            for (p, x) in row.iter_mut().enumerate() {
                *x = a[i * rsa + p * csa];
            }
        }
        let mut dp = vec![0.0f32; mp * n];
        if alpha != 0.0 {
            for i in 0..m {
                dp[i * n..(i + 1) * n].copy_from_slice(&dst[i * dst_rs..i * dst_rs + n]);
            }
        }
        sgemm(&mut dp, n, alpha, &ap, (k, 1), b, (rsb, csb), (mp, n, k), threads);
        for i in 0..m {
            dst[i * dst_rs..i * dst_rs + n].copy_from_slice(&dp[i * n..(i + 1) * n]);
        }
        return;
    }
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the asserts above keep every addressed element inside its slice; `dst` is
    // exclusively borrowed and does not overlap `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            alpha != 0.0,
            a.as_ptr(),
            csa as isize,
            rsa as isize,
            b.as_ptr(),
            csb as isize,
            rsb as isize,
            alpha,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// Single-threaded `sgemm` for work already split over rayon tasks: `dst = A @ B`, or
/// `dst += A @ B` when `acc`. Arguments in the order dst, its row stride, acc, A and its
/// (row, column) strides, B and its strides, then m, n, k.
#[allow(clippy::too_many_arguments)]
fn gemm_st(
    dst: &mut [f32],
    dst_rs: usize,
    acc: bool,
    a: &[f32],
    rsa: usize,
    csa: usize,
    b: &[f32],
    rsb: usize,
    csb: usize,
    m: usize,
    n: usize,
    k: usize,
) {
    let alpha = if acc { 1.0 } else { 0.0 };
    sgemm(dst, dst_rs, alpha, a, (rsa, csa), b, (rsb, csb), (m, n, k), 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The clip norm's sum of squares: the same bits on 1 and 3 threads (fixed chunks added in
    /// order), and the exact sum to 1e-13 relative, over a length with a ragged last chunk.
    #[test]
    fn sum_squares_is_thread_count_invariant_and_accurate() {
        let x: Vec<f32> =
            (0..3 * SUM_CHUNK + 1001).map(|i| ((i * 7919) % 3001) as f32 * 1e-3 - 1.5).collect();
        // Kahan-compensated reference: a plain serial sum is itself off by ~1e-13 here.
        let (mut want, mut comp) = (0.0f64, 0.0f64);
        for &a in &x {
            let y = (a as f64) * (a as f64) - comp;
            let t = want + y;
            comp = (t - want) - y;
            want = t;
        }
        let on = |t: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
            pool.install(|| Cpu.sum_squares(&x))
        };
        let (a, b) = (on(1), on(3));
        assert_eq!(a.to_bits(), b.to_bits());
        assert!((a - want).abs() <= 1e-13 * want, "{a} vs {want}");
    }

    /// d(log-prob, entropy)/d logits from one exp per logit against the formula evaluated
    /// directly with libm's exp per element (the code before): a row with masked logits, a
    /// temperature, both gradient terms, a row whose target is masked-adjacent.
    #[test]
    fn logprobs_backward_matches_the_direct_formula() {
        let (rows, vocab) = (3, 1031);
        let logits: Vec<f32> = (0..rows * vocab)
            .map(|i| {
                if i % 211 == 7 {
                    f32::NEG_INFINITY
                } else {
                    ((i * 7919) % 977) as f32 * 0.02 - 9.0
                }
            })
            .collect();
        let targets = [5u32, 1030, 8];
        let (dlp, dent) = (vec![0.7f32, -1.3, 0.2], vec![-0.4f32, 0.9, 0.0]);
        let inv_temp = 1.0 / 0.8f32;
        let mut got = vec![f32::NAN; rows * vocab];
        Cpu.logprobs_backward(&mut got, &logits, &targets, &dlp, &dent, rows, vocab, inv_temp);
        for r in 0..rows {
            let row = &logits[r * vocab..(r + 1) * vocab];
            let z: Vec<f64> = row.iter().map(|&x| (x * inv_temp) as f64).collect();
            let mx = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = mx + z.iter().map(|&v| (v - mx).exp()).sum::<f64>().ln();
            let ent: f64 = -z
                .iter()
                .filter(|v| v.is_finite())
                .map(|&v| (v - lse).exp() * (v - lse))
                .sum::<f64>();
            for j in 0..vocab {
                let p = (z[j] - lse).exp();
                let onehot = if j == targets[r] as usize { 1.0 } else { 0.0 };
                let dh = if p > 0.0 { -p * ((z[j] - lse) + ent) } else { 0.0 };
                let want =
                    ((dlp[r] as f64 * (onehot - p) + dent[r] as f64 * dh) * inv_temp as f64) as f32;
                let g = got[r * vocab + j];
                assert!(
                    (g - want).abs() <= 1e-6 * want.abs() + 1e-12,
                    "row {r} col {j}: {g} vs {want}"
                );
            }
        }
    }
}
