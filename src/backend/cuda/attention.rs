//! Launchers of the attention kernels (kernels/attention.cu, the flash kernels through
//! `flash`), causal for the decoder and bidirectional for the vision tower: one set of kernels,
//! the mask is in the host's work lists.

use super::device::{Arg, Device};
use super::{attn_check, flash, AttnKernel, CudaBackend, DevBuf};
use crate::backend::{AttnShape, AttnSpan};

type Buf<D> = DevBuf<<D as Device>::Mem>;

/// Per query row: (row, first kv row, number of visible keys, 0). A causal query sees the keys
/// up to its own position; a bidirectional one all `kv_len` keys of its span.
fn q_items(spans: &[AttnSpan], causal: bool) -> Vec<i32> {
    let mut v = Vec::new();
    for s in spans {
        for i in 0..s.q_len {
            let seen = if causal { s.kv_len - s.q_len + i + 1 } else { s.kv_len };
            v.extend_from_slice(&[(s.q_start + i) as i32, s.kv_start as i32, seen as i32, 0]);
        }
    }
    v
}

impl<D: Device> CudaBackend<D> {
    /// `Backend::attention` (`causal`) and `Backend::attention_bidir`. The flash kernels are
    /// causal only: bidirectional attention always runs the reference kernels, which take the
    /// mask from the host's work lists (visible keys per query, first query per key).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attend(
        &self,
        out: &mut Buf<D>,
        lse: &mut Buf<D>,
        q: &Buf<D>,
        k: &Buf<D>,
        v: &Buf<D>,
        spans: &[AttnSpan],
        shape: AttnShape,
        causal: bool,
    ) {
        self.attend_spans(out, lse, q, k, v, spans, shape, causal, true)
    }

    /// `attend`; `whole` when `spans` are all the call's spans, so that a flash launch over
    /// them may write `out`'s bf16 copy (`producer_shadows`), not when they are the prefills
    /// of a step whose decodes another launch writes.
    #[allow(clippy::too_many_arguments)]
    fn attend_spans(
        &self,
        out: &mut Buf<D>,
        lse: &mut Buf<D>,
        q: &Buf<D>,
        k: &Buf<D>,
        v: &Buf<D>,
        spans: &[AttnSpan],
        shape: AttnShape,
        causal: bool,
        whole: bool,
    ) {
        attn_check(shape);
        if causal && self.attn == AttnKernel::Flash && flash::decode_supports(spans, shape) {
            let out16 = if whole { self.attention_out_shadow(out, spans, shape) } else { None };
            self.flash_decode(out, out16.as_ref(), lse, q, k, v, spans, shape);
            self.adopt_attention_out_shadow(out, out16, spans, shape);
            return;
        }
        // A step that mixes prefills with single-token decodes (continuous batching,
        // `rl::decode_scheduler`): each kind of span runs the kernel it runs alone, so a
        // sequence's numbers do not depend on what shares its step (each kernel writes only
        // the rows of its own spans).
        let (one, many): (Vec<AttnSpan>, Vec<AttnSpan>) = spans.iter().partition(|s| s.q_len == 1);
        if causal
            && self.attn == AttnKernel::Flash
            && !many.is_empty()
            && flash::decode_supports(&one, shape)
        {
            // Two launches write `out`: no bf16 copy (the second would end the first's).
            self.flash_decode(out, None, lse, q, k, v, &one, shape);
            self.attend_spans(out, lse, q, k, v, &many, shape, causal, false);
            return;
        }
        if causal && self.use_flash(shape) {
            let out16 = if whole { self.attention_out_shadow(out, spans, shape) } else { None };
            self.flash_forward(out, out16.as_ref(), lse, q, k, v, spans, shape);
            self.adopt_attention_out_shadow(out, out16, spans, shape);
            return;
        }
        let items = q_items(spans, causal);
        if items.is_empty() {
            return;
        }
        // Every layer of a step has the same work items: uploaded once (the upload cache).
        let d_items = self.upload_index_i32(&items);
        let scale = (1.0 / (shape.head_dim as f64).sqrt()) as f32;
        self.dev.launch(
            "attn_fwd_f32",
            [(items.len() / 4) as u32, shape.n_heads as u32, 1],
            [128, 1, 1],
            0,
            &[
                Arg::Ptr(out.mem()),
                Arg::Ptr(lse.mem()),
                Arg::Ptr(q.mem()),
                Arg::Ptr(k.mem()),
                Arg::Ptr(v.mem()),
                Arg::Ptr(&*d_items),
                Arg::I32(shape.n_heads as i32),
                Arg::I32(shape.n_kv_heads as i32),
                Arg::I32(shape.head_dim as i32),
                Arg::F32(scale),
            ],
        );
    }
    /// `Backend::attention_backward` (`causal`) and `Backend::attention_bidir_backward`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attend_backward(
        &self,
        dq: &mut Buf<D>,
        dk: &mut Buf<D>,
        dv: &mut Buf<D>,
        dout: &Buf<D>,
        q: &Buf<D>,
        k: &Buf<D>,
        v: &Buf<D>,
        out: &Buf<D>,
        lse: &Buf<D>,
        spans: &[AttnSpan],
        shape: AttnShape,
        causal: bool,
    ) {
        attn_check(shape);
        let items = q_items(spans, causal);
        if items.is_empty() {
            return;
        }
        let (h, hkv, d) = (shape.n_heads, shape.n_kv_heads, shape.head_dim);
        let nq = (items.len() / 4) as u32;
        let d_items = self.upload_i32(&items);
        let scale = (1.0 / (d as f64).sqrt()) as f32;
        let dsum = self.dev.alloc(lse.len.max(1) * 4);
        let flash = causal && self.use_flash(shape);
        // The flash kernels' bf16 copy of dO, written by the dot kernel that reads dO anyway,
        // when they read bf16 copies and the spans' query rows are every row of dO (the copy
        // holds the rows the items name; the flash kernels' tiles may load others).
        let rows = dout.len / (h * d).max(1);
        let dout16 = (flash
            && self.call_io(spans, shape, q, k) == flash::FlashIo::Bf16
            && super::producer_shadows::covered_rows(spans) == Some(rows))
        .then(|| self.dev.alloc(dout.len.max(1) * 2));
        self.dev.launch(
            "attn_bwd_dot_f32",
            [nq.div_ceil(8), h as u32, 1],
            [256, 1, 1],
            0,
            &[
                Arg::Ptr(&dsum),
                super::opt_arg(dout16.as_ref()),
                Arg::Ptr(dout.mem()),
                Arg::Ptr(out.mem()),
                Arg::Ptr(&d_items),
                Arg::I32(nq as i32),
                Arg::I32(h as i32),
                Arg::I32(d as i32),
            ],
        );
        if flash {
            self.flash_backward(dq, dk, dv, dout, dout16, q, k, v, lse, &dsum, spans, shape);
            return;
        }
        // The per-key items of the reference dK/dV kernel (the flash kernels build their own).
        let mut kv_items = Vec::new();
        for s in spans {
            // Keys every query sees (all of them without the causal mask).
            let off = if causal { s.kv_len - s.q_len } else { s.kv_len };
            for j in 0..s.kv_len {
                kv_items.extend_from_slice(&[
                    (s.kv_start + j) as i32,
                    s.q_start as i32,
                    s.q_len as i32,
                    j.saturating_sub(off) as i32,
                ]);
            }
        }
        let d_kv = self.upload_i32(&kv_items);
        let common = |a: &mut Vec<Arg<'_, D::Mem>>| {
            a.extend([
                Arg::I32(h as i32),
                Arg::I32(hkv as i32),
                Arg::I32(d as i32),
                Arg::F32(scale),
            ]);
        };
        let mut a = vec![
            Arg::Ptr(dq.mem()),
            Arg::Ptr(dout.mem()),
            Arg::Ptr(q.mem()),
            Arg::Ptr(k.mem()),
            Arg::Ptr(v.mem()),
            Arg::Ptr(lse.mem()),
            Arg::Ptr(&dsum),
            Arg::Ptr(&d_items),
        ];
        common(&mut a);
        self.dev.launch("attn_bwd_dq_f32", [nq, h as u32, 1], [128, 1, 1], 0, &a);
        if !kv_items.is_empty() {
            let mut a = vec![
                Arg::Ptr(dk.mem()),
                Arg::Ptr(dv.mem()),
                Arg::Ptr(dout.mem()),
                Arg::Ptr(q.mem()),
                Arg::Ptr(k.mem()),
                Arg::Ptr(v.mem()),
                Arg::Ptr(lse.mem()),
                Arg::Ptr(&dsum),
                Arg::Ptr(&d_kv),
            ];
            common(&mut a);
            self.dev.launch(
                "attn_bwd_dkv_f32",
                [(kv_items.len() / 4) as u32, hkv as u32, 1],
                [128, 1, 1],
                0,
                &a,
            );
        }
    }
}
