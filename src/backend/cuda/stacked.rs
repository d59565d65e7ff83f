//! Stacked weights (`Backend::stack_rows`, `matmul_stacked`, `swiglu_stacked`): a layer's q, k
//! and v weights as one GEMM operand, and its gate and up weights as another, so that a
//! forward against a KV cache runs 4 GEMMs a layer instead of 7. A decode step's GEMMs are a
//! few rows each, where a launch costs what the product does (8-12 us each at 64 rows on the
//! H100, ~1.6 ms of a ~5 ms step: docs/perf.md); the stacked products read the same weights.
//! The q/k/v epilogue reads its three projections from the stacked output
//! (`qkv_epilogue_f32`'s `stacked`), and SwiGLU its two (`swiglu_f32`'s `width`).
//!
//! The stack holds the bf16 roundings the GEMMs read (`f32_to_bf16_at`, the conversion the
//! weights' shadows are made with), so only in bf16 GEMM mode; a copy, made per rollout by
//! the KV cache that uses it (src/model/kv_cache.rs). On the emulator a stacked product is
//! each part's own product (`Device::gemm_stacked`): the same bits as the separate GEMMs.

use super::device::{Arg, Device};
use super::{CudaBackend, DevBuf};

type Buf<D> = DevBuf<<D as Device>::Mem>;

/// Whether `stack_rows` makes stacks, from `MMR1_STACKED_GEMMS` (`1`/unset: on, `0`: a GEMM
/// per matrix, to measure what stacking saves). Panics on another value, naming it.
pub(super) fn from_env() -> bool {
    super::device::switch_from_env(
        "MMR1_STACKED_GEMMS",
        true,
        "a forward against a KV cache multiplies by q, k and v's weights in one GEMM, and by gate and up's in one",
    )
}

impl<D: Device> CudaBackend<D> {
    /// Stacked weights on (the default from `MMR1_STACKED_GEMMS`, in bf16 GEMM mode) or off.
    pub fn with_stacked_gemms(mut self, on: bool) -> Self {
        self.stacked_gemms = on;
        self
    }

    /// `Backend::stack_rows`: the parts' bf16 roundings, row on row, in one bf16 buffer.
    pub(super) fn stack_rows_bf16(&self, parts: &[&Buf<D>]) -> Option<Buf<D>> {
        if !self.stacked_gemms || !self.dev.gemm_precision_bf16() {
            return None;
        }
        let total: usize = parts.iter().map(|p| p.len).sum();
        // Whole f32 words, as every allocation here (an odd total leaves one bf16 unused).
        let mem = self.dev.alloc(total.div_ceil(2).max(1) * 4);
        let mut at = 0;
        for p in parts {
            assert!(!p.is_bf16(), "stack_rows: a part stored as bf16");
            self.elementwise(
                "f32_to_bf16_at",
                p.len,
                &[Arg::Ptr(&mem), Arg::I64(at as i64), Arg::Ptr(p.mem()), Arg::I64(p.len as i64)],
            );
            at += p.len;
        }
        Some(DevBuf { stored: mem, len: total, bf16: true })
    }

    /// `Backend::matmul_stacked`.
    pub(super) fn matmul_stacked_bf16(
        &self,
        out: &mut Buf<D>,
        x: &Buf<D>,
        stack: &Buf<D>,
        m: usize,
        ns: &[usize],
        k: usize,
    ) {
        let n: usize = ns.iter().sum();
        assert!(stack.is_bf16(), "matmul_stacked: not a stack of stack_rows");
        assert!(
            x.len >= m * k && stack.len >= n * k && out.len >= m * n,
            "matmul_stacked: buffer too small"
        );
        if m == 0 || n == 0 {
            return;
        }
        let done = self.dev.gemm_stacked(out.mem_mut(), x.gemm_in(), stack.gemm_in(), m, ns, k);
        assert!(done, "matmul_stacked: the device has no bf16 GEMM");
    }
}
