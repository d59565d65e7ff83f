//! The CPU reference backend: f32 storage, f64 where a reduction needs it. Written to be
//! obviously right (it is the oracle every kernel is checked against), with a SIMD GEMM
//! (the `gemm` crate) and rayon threads so tests and the demo stay quick. Its loops are the
//! `mmr1-cpu-kernels` crate (crates/cpu-kernels: built optimized even in test builds); this
//! file maps the `Backend` op set onto them.

use super::{AdamwStep, AttnShape, AttnSpan, Backend, Tr};
pub use mmr1_cpu_kernels::rope::rope_inv_freq;
use mmr1_cpu_kernels::{adamw, attention, elementwise as ew, gemm, logprob, norm, rope};
pub use mmr1_cpu_kernels::{attention_ref, softmax_row, vision_ops};

#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

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
        ew::add_into(out, x, y)
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
        gemm::sgemm(out, n, beta, a, sa, b, sb, (m, n, k), rayon::current_num_threads());
    }

    fn add_bias(&self, x: &mut Vec<f32>, bias: &Vec<f32>, rows: usize, n: usize) {
        ew::add_bias(x, bias, rows, n)
    }
    fn bias_backward(&self, dbias: &mut Vec<f32>, dy: &Vec<f32>, rows: usize, n: usize) {
        ew::bias_backward(dbias, dy, rows, n)
    }
    fn add_assign(&self, x: &mut Vec<f32>, y: &Vec<f32>) {
        ew::add_assign(x, y)
    }
    fn scale(&self, x: &mut Vec<f32>, s: f32) {
        ew::scale(x, s)
    }
    fn sum_squares(&self, x: &Vec<f32>) -> f64 {
        ew::sum_squares(x)
    }

    fn embedding(&self, out: &mut Vec<f32>, table: &Vec<f32>, ids: &[u32], dim: usize) {
        ew::embedding(out, table, ids, dim)
    }
    fn embedding_backward(&self, dtable: &mut Vec<f32>, dout: &Vec<f32>, ids: &[u32], dim: usize) {
        ew::embedding_backward(dtable, dout, ids, dim)
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
        norm::rmsnorm(out, rstd, x, w, rows, dim, eps)
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
        norm::rmsnorm_backward(dx, dw, dout, x, w, rstd, rows, dim)
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
        rope::rope(x, positions, n_heads, head_dim, inv, inverse)
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
        ew::swiglu(out, gate, up)
    }
    fn swiglu_backward(
        &self,
        dgate: &mut Vec<f32>,
        dup: &mut Vec<f32>,
        dout: &Vec<f32>,
        gate: &Vec<f32>,
        up: &Vec<f32>,
    ) {
        ew::swiglu_backward(dgate, dup, dout, gate, up)
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
        logprob::logprobs(lp, entropy, logits, targets, rows, vocab, inv_temp)
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
        logprob::logprobs_backward(dlogits, logits, targets, dlp, dent, rows, vocab, inv_temp)
    }

    fn adamw(
        &self,
        p: &mut Vec<f32>,
        g: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        hp: AdamwStep,
    ) {
        adamw::adamw(p, g, m, v, hp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The clip norm's sum of squares: the same bits on 1 and 3 threads (fixed chunks added in
    /// order), and the exact sum to 1e-13 relative, over a length with a ragged last chunk.
    #[test]
    fn sum_squares_is_thread_count_invariant_and_accurate() {
        let x: Vec<f32> = (0..3 * mmr1_cpu_kernels::elementwise::SUM_CHUNK + 1001)
            .map(|i| ((i * 7919) % 3001) as f32 * 1e-3 - 1.5)
            .collect();
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
