//! Activations stored as bf16 alone (`Backend::operand_buf`).
//!
//! In bf16 mode a layer's `xn1` (q, k, v), `xn2` (gate, up) and `act` (down) are read by
//! GEMMs only, forward and backward, and every one of those GEMMs reads the bf16 copy the
//! producer (RMSNorm, SwiGLU) writes beside the f32 values (producer_shadows.rs). The f32
//! values were written and never read: at Qwen2.5-0.5B and 4,096 tokens 2.6 GB a step, and as
//! much of the peak, since the workspace keeps every layer's activations for the backward.
//! The same holds for the backward's `dgate` and `dup` (SwiGLU's backward writes them, the
//! gate and up projections' dX and dW GEMMs read them): 3.8 GB a step at that shape.
//! Here such a buffer holds the bf16 bits alone: the producer writes no f32 values (a null
//! output pointer) and its roundings into the buffer itself, and `matmul` hands the memory
//! to the GEMM as a bf16 operand. The bits the GEMMs read are those the shadow held, so a
//! step gives the same bits either way.
//!
//! Only when producers write their bf16 copies (`Device::wants_act_shadow` and
//! `MMR1_PRODUCER_SHADOWS` on): then nothing reads the f32 values. `MMR1_BF16_OPERANDS=0` (or
//! `set_bf16_operands(false)`) keeps f32 storage with shadows, to measure what this saves.
//! Any other op given such a buffer panics (`DevBuf::mem`), rather than read values that do
//! not exist; a download widens the bf16 values.

use super::device::{Device, GemmIn};
use super::{CudaBackend, DevBuf};

/// Whether `operand_buf` stores bf16 alone, from `MMR1_BF16_OPERANDS` (`1`/unset: on, `0`:
/// f32 values with a bf16 shadow). Panics on another value, naming it.
pub(super) fn from_env() -> bool {
    super::device::switch_from_env(
        "MMR1_BF16_OPERANDS",
        true,
        "buffers that only GEMMs read (each layer's xn1, xn2, act; dgate, dup) stored as bf16 alone",
    )
}

impl<M> DevBuf<M> {
    /// The buffer as a GEMM reads it.
    pub(super) fn gemm_in(&self) -> GemmIn<'_, M> {
        if self.bf16 {
            GemmIn::Bf16(&self.stored)
        } else {
            GemmIn::F32(&self.stored)
        }
    }
    /// The memory of a bf16-stored buffer, for the producer that writes it.
    pub(super) fn bf16_mem(&self) -> Option<&M> {
        self.bf16.then_some(&self.stored)
    }
}

impl<D: Device> CudaBackend<D> {
    /// `Backend::operand_buf` stores bf16 alone (on, the default from `MMR1_BF16_OPERANDS`,
    /// whenever producers write bf16 copies) or f32 values (off). Decided when the buffer is
    /// made: plan activations after choosing the precision and switches.
    pub fn set_bf16_operands(&mut self, on: bool) {
        self.bf16_operands = on;
    }
    /// `set_bf16_operands` by value.
    pub fn with_bf16_operands(mut self, on: bool) -> Self {
        self.bf16_operands = on;
        self
    }

    /// Whether `operand_buf` gives bf16 storage now.
    pub(super) fn stores_bf16_operands(&self) -> bool {
        self.bf16_operands && self.producer_shadows && self.dev.wants_act_shadow()
    }

    /// `Backend::operand_buf`.
    pub(super) fn new_operand_buf(&self, n: usize) -> DevBuf<D::Mem> {
        if !self.stores_bf16_operands() {
            return self.new_buf(n);
        }
        DevBuf { stored: self.dev.alloc(n.max(1) * 2), len: n, bf16: true }
    }

    /// `Backend::download` of a bf16-stored buffer: its values widened to f32 (exact).
    pub(super) fn download_bf16(&self, buf: &DevBuf<D::Mem>) -> Vec<f32> {
        let bytes = self.dev.download(&buf.stored, buf.len * 2);
        bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect()
    }
}
