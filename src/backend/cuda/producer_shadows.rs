//! Producers that write the bf16 operand of the GEMMs that read their output.
//!
//! In bf16 mode every matmul reads bf16 operands. An activation is an f32 buffer; the first
//! bf16 GEMM that reads one converts it (`f32_to_bf16_x8`, a launch that reads the buffer
//! again) and keeps the conversion as the buffer's bf16 shadow (`Pool::bf16_operand`). The
//! kernel that wrote the activation had each value in a register: writing its bf16 rounding
//! beside it costs 2 bytes a value and saves the launch and its 4-byte read. The backend then
//! adopts that copy as the output's shadow, as `adamw` does for weights, and the GEMM finds it.
//!
//! Only when the device keeps activation shadows (`Device::wants_act_shadow`: bf16 GEMM,
//! `MMR1_BF16_SHADOWS` and `MMR1_ACT_SHADOWS` on): then the first GEMM reading the buffer
//! would have kept the same bits anyway. Otherwise the plain kernels run, as before. Both
//! kernels of a pair share the element code, so the f32 output is the same bits either way.
//! `MMR1_PRODUCER_SHADOWS=0` (or `set_producer_shadows(false)`) runs the plain kernels and
//! leaves the conversions to the GEMMs, to measure what this saves.
//!
//! The producers here are those that feed the model's GEMMs (src/model/forward.rs,
//! backward.rs): RMSNorm (each layer's xn1 for q, k, v and xn2 for gate, up), SwiGLU (the
//! down projection's act), SwiGLU's backward (d gate, d up for the gate and up projections'
//! backward GEMMs), causal flash attention, forward and decode (att for the o projection;
//! `attention::attend` asks here, when one launch writes every row of `att`), and the
//! log-prob backward (a head chunk's d logits, rows x vocab, for d hidden and d lm_head: at
//! a real vocabulary the largest operand a step converts). A shadow ends as any other does:
//! when a launch names its buffer as a possibly written argument, a GEMM writes it, or it is
//! freed. The residual gradient's copy is written by the RMSNorm backward that adds into it
//! (`rmsnorm_backward_add`, in fused_layer_ops.rs), but for the top layer's, which the final
//! norm's plain backward writes; dq's, dk's and dv's by RoPE's backward
//! (`qkv_backward_epilogue`); and q's, k's and v's, which the flash kernels read, by the
//! forward's q/k/v epilogue. Still converted by their GEMMs (docs/perf.md): the top layer's
//! residual gradient and the head's gathered rows. Buffers that only GEMMs read are stored as
//! their bf16 values alone (bf16_operands.rs), with no f32 values beside them.

use super::device::{Arg, Device};
use super::{CudaBackend, DevBuf};
use crate::backend::{AttnShape, AttnSpan};

type Buf<D> = DevBuf<<D as Device>::Mem>;

/// The rows `0..rows` that the query rows of `spans` cover exactly once, or None if they
/// leave a gap or overlap (then some rows of the output are not written by the launch).
pub(super) fn covered_rows(spans: &[AttnSpan]) -> Option<usize> {
    let mut q: Vec<(usize, usize)> = spans.iter().map(|s| (s.q_start, s.q_len)).collect();
    q.sort_unstable();
    let mut next = 0;
    for (start, len) in q {
        if start != next {
            return None;
        }
        next += len;
    }
    (next > 0).then_some(next)
}

/// Whether producers write the bf16 copy of their output, from `MMR1_PRODUCER_SHADOWS`
/// (`1`/unset: on, `0`: off). Panics on another value, naming it.
pub(super) fn from_env() -> bool {
    super::device::switch_from_env(
        "MMR1_PRODUCER_SHADOWS",
        true,
        "the kernels that write a GEMM operand write its bf16 copy too",
    )
}

impl<D: Device> CudaBackend<D> {
    /// Producers of GEMM operands write their bf16 copy (on, the default from
    /// `MMR1_PRODUCER_SHADOWS`, whenever the device keeps activation shadows) or leave the
    /// conversion to the first GEMM that reads the output (off).
    pub fn set_producer_shadows(&mut self, on: bool) {
        self.producer_shadows = on;
    }
    /// `set_producer_shadows` by value.
    pub fn with_producer_shadows(mut self, on: bool) -> Self {
        self.producer_shadows = on;
        self
    }

    /// Pooled memory for the bf16 rounding of `out` (`n` values), when producers write it and
    /// the device keeps activation shadows (else None: the producer writes f32 alone). `out`'s
    /// old shadow, which the launch would end anyway, is freed first, so the two never live at
    /// once: a head chunk's d logits is rewritten chunk after chunk, and its two shadows side by
    /// side were the 0.5B step's peak (+0.5 GiB at 1,766 x 151,936; H100, 2026-11-27).
    pub(super) fn producer_shadow(&self, out: &D::Mem, n: usize) -> Option<D::Mem> {
        (n > 0 && self.producer_shadows && self.dev.wants_act_shadow()).then(|| {
            self.dev.forget_bf16_shadow(out);
            self.dev.alloc(n * 2)
        })
    }

    /// `producer_shadow` of several outputs of one launch (each by its first `n` values): all
    /// of them, or None when producers write none (the same conditions decide each).
    pub(super) fn producer_shadows_of<const N: usize>(
        &self,
        outs: [(&Buf<D>, usize); N],
    ) -> Option<[D::Mem; N]> {
        let shadows = outs.map(|(out, n)| self.producer_shadow(out.mem(), n));
        shadows.iter().all(Option::is_some).then(|| shadows.map(|s| s.expect("all are some")))
    }

    /// Makes `shadows` (from `producer_shadows_of` the same outputs) their shadows, after the
    /// launch that wrote them (which ends the old ones).
    pub(super) fn adopt_shadows<const N: usize>(
        &self,
        outs: [(&Buf<D>, usize); N],
        shadows: Option<[D::Mem; N]>,
    ) {
        for ((out, n), s) in outs.into_iter().zip(shadows.into_iter().flatten()) {
            self.dev.adopt_bf16_shadow(out.mem(), s, n);
        }
    }

    /// Runs `launch`, a launch that writes the first `n` values of `out`, given where to write
    /// them: the f32 values (`out`'s memory, or null when `out` is stored as bf16 alone:
    /// bf16_operands.rs) and their bf16 roundings (`out` itself then; else the memory for its
    /// shadow when producers write it, `producer_shadow`; None: the plain kernel). A shadow
    /// becomes `out`'s after the launch, which ends the old one. Every single-output producer
    /// goes through here, so the order (old shadow freed, new memory, launch, adoption) is
    /// written once.
    pub(super) fn produce<'a>(
        &self,
        out: &'a Buf<D>,
        n: usize,
        launch: impl FnOnce(Arg<'a, D::Mem>, Option<&D::Mem>),
    ) {
        if let Some(bits) = out.bf16_mem() {
            return launch(Arg::Null, Some(bits));
        }
        let shadow = self.producer_shadow(out.mem(), n);
        launch(Arg::Ptr(out.mem()), shadow.as_ref());
        if let Some(s) = shadow {
            self.dev.adopt_bf16_shadow(out.mem(), s, n);
        }
    }

    /// Memory for the bf16 rounding of an attention output (`[rows, n_heads * head_dim]`)
    /// that one launch writes for `spans`, if it writes every row `0..rows` of it: the
    /// shadow must be the conversion of the whole buffer a GEMM then reads. (A span with no
    /// keys gets no shadow: the flash-decode launcher has no work items for it.)
    pub(super) fn attention_out_shadow(
        &self,
        out: &Buf<D>,
        spans: &[AttnSpan],
        shape: AttnShape,
    ) -> Option<D::Mem> {
        if spans.iter().any(|s| s.kv_len == 0) {
            return None;
        }
        let rows = covered_rows(spans)?;
        self.producer_shadow(out.mem(), rows * shape.n_heads * shape.head_dim)
    }

    /// Adopts `out16` (from `attention_out_shadow` for the same spans), after the launch
    /// that wrote `out` and it, as `out`'s bf16 shadow.
    pub(super) fn adopt_attention_out_shadow(
        &self,
        out: &Buf<D>,
        out16: Option<D::Mem>,
        spans: &[AttnSpan],
        shape: AttnShape,
    ) {
        if let (Some(s), Some(rows)) = (out16, covered_rows(spans)) {
            self.dev.adopt_bf16_shadow(out.mem(), s, rows * shape.n_heads * shape.head_dim);
        }
    }

    /// `Backend::logprobs_backward`: `logprobs_bwd_bf16shadow_f32` when activation shadows are
    /// kept (d logits feeds the head's d hidden and d lm_head GEMMs), writing the roundings
    /// alone into a bf16-stored operand buffer; with `fwd` (`lp`, `entropy`) the same launch
    /// writes each row's log-prob and entropy too (`Backend::logprobs_and_backward`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn logprobs_bwd(
        &self,
        dlogits: &mut Buf<D>,
        fwd: Option<(&mut Buf<D>, &mut Buf<D>)>,
        logits: &Buf<D>,
        targets: &[u32],
        dlp: &Buf<D>,
        dent: &Buf<D>,
        rows: usize,
        vocab: usize,
        inv_temp: f32,
    ) {
        if rows == 0 {
            return;
        }
        if let Some((lp, ent)) = &fwd {
            assert!(
                lp.len >= rows && ent.len >= rows,
                "logprobs_and_backward: lp, entropy: one a row"
            );
        }
        let t = self.upload_u32(&targets[..rows]);
        let (lp, ent) = match &fwd {
            Some((lp, ent)) => (Arg::Ptr(lp.mem()), Arg::Ptr(ent.mem())),
            None => (Arg::Null, Arg::Null),
        };
        self.produce(dlogits, rows * vocab, |y, shadow| {
            let (name, mut args) = match shadow {
                Some(s) => ("logprobs_bwd_bf16shadow_f32", vec![y, Arg::Ptr(s)]),
                None => ("logprobs_bwd_f32", vec![y]),
            };
            args.extend([
                lp,
                ent,
                Arg::Ptr(logits.mem()),
                Arg::Ptr(&t),
                Arg::Ptr(dlp.mem()),
                Arg::Ptr(dent.mem()),
                Arg::I32(rows as i32),
                Arg::I32(vocab as i32),
                Arg::F32(inv_temp),
            ]);
            let block = super::logprob_block(vocab);
            self.dev.launch(name, [rows as u32, 1, 1], [block, 1, 1], 0, &args);
        });
    }

    /// `Backend::rmsnorm`: `rmsnorm_bf16shadow_f32` when activation shadows are kept.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rmsnorm_fwd(
        &self,
        out: &mut Buf<D>,
        rstd: &mut Buf<D>,
        x: &Buf<D>,
        w: &Buf<D>,
        rows: usize,
        dim: usize,
        eps: f32,
    ) {
        if rows == 0 {
            return;
        }
        self.produce(out, rows * dim, |y, shadow| {
            let (name, mut args) = match shadow {
                Some(s) => ("rmsnorm_bf16shadow_f32", vec![y, Arg::Ptr(s)]),
                None => ("rmsnorm_f32", vec![y]),
            };
            args.extend([
                Arg::Ptr(rstd.mem()),
                Arg::Ptr(x.mem()),
                Arg::Ptr(w.mem()),
                Arg::I32(rows as i32),
                Arg::I32(dim as i32),
                Arg::F32(eps),
            ]);
            self.dev.launch(name, [rows as u32, 1, 1], [super::BLOCK, 1, 1], 0, &args);
        });
    }

    /// `Backend::swiglu`: `swiglu_bf16shadow_f32` when activation shadows are kept.
    /// `up` None: `gate` is one stacked GEMM's output, rows of `width` gate columns then
    /// `width` up columns (`Backend::swiglu_stacked`); else `width` is 0.
    pub(super) fn swiglu_fwd(
        &self,
        out: &mut Buf<D>,
        gate: &Buf<D>,
        up: Option<&Buf<D>>,
        width: usize,
    ) {
        let n = out.len;
        self.produce(out, n, |y, shadow| {
            let (name, mut args) = match shadow {
                Some(s) => ("swiglu_bf16shadow_f32", vec![y, Arg::Ptr(s)]),
                None => ("swiglu_f32", vec![y]),
            };
            let up = up.map_or(Arg::Null, |u| Arg::Ptr(u.mem()));
            args.extend([Arg::Ptr(gate.mem()), up, Arg::I64(n as i64), Arg::I32(width as i32)]);
            self.elementwise(name, n, &args);
        });
    }

    /// `Backend::swiglu_backward`: `swiglu_bwd_bf16shadow_f32` when activation shadows are
    /// kept (d gate and d up each get their shadow), or when both outputs are stored as bf16
    /// alone (bf16_operands.rs: the kernel writes their roundings into them and no f32 values).
    pub(super) fn swiglu_bwd(
        &self,
        dgate: &mut Buf<D>,
        dup: &mut Buf<D>,
        dout: &Buf<D>,
        gate: &Buf<D>,
        up: &Buf<D>,
    ) {
        let n = dgate.len;
        // Both outputs bf16 alone (the model plans them together; one alone fails at `mem`).
        let stored = dgate.bf16_mem().zip(dup.bf16_mem());
        // Else both shadows or neither.
        let outs = [(&*dgate, n), (&*dup, n)];
        let shadows = match stored {
            Some(_) => None,
            None => self.producer_shadows_of(outs),
        };
        let (name, mut args) = match (stored, &shadows) {
            (Some((g16, u16)), _) => (
                "swiglu_bwd_bf16shadow_f32",
                vec![Arg::Null, Arg::Null, Arg::Ptr(g16), Arg::Ptr(u16)],
            ),
            (None, Some([g16, u16])) => (
                "swiglu_bwd_bf16shadow_f32",
                vec![Arg::Ptr(dgate.mem()), Arg::Ptr(dup.mem()), Arg::Ptr(g16), Arg::Ptr(u16)],
            ),
            (None, None) => ("swiglu_bwd_f32", vec![Arg::Ptr(dgate.mem()), Arg::Ptr(dup.mem())]),
        };
        args.extend([
            Arg::Ptr(dout.mem()),
            Arg::Ptr(gate.mem()),
            Arg::Ptr(up.mem()),
            Arg::I64(n as i64),
        ]);
        self.elementwise(name, n, &args);
        self.adopt_shadows(outs, shadows);
    }
}

#[cfg(test)]
mod tests {
    use super::covered_rows;
    use crate::backend::AttnSpan;

    fn span(q_start: usize, q_len: usize) -> AttnSpan {
        AttnSpan { q_start, q_len, kv_start: 0, kv_len: q_len }
    }

    #[test]
    fn attention_rows_are_covered_only_without_gaps_or_overlaps() {
        assert_eq!(covered_rows(&[span(0, 3), span(3, 1), span(4, 17)]), Some(21));
        assert_eq!(covered_rows(&[span(4, 17), span(0, 3), span(3, 1)]), Some(21), "any order");
        assert_eq!(covered_rows(&[span(0, 3), span(4, 1)]), None, "row 3 is a gap");
        assert_eq!(covered_rows(&[span(1, 3)]), None, "row 0 is a gap");
        assert_eq!(covered_rows(&[span(0, 3), span(2, 2)]), None, "row 2 twice");
        assert_eq!(covered_rows(&[]), None);
    }
}
