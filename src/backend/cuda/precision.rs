//! `--precision` on the CUDA backend (GPU and emulator alike): which GEMM and which attention
//! kernels run. See `backend::precision` for what each choice means.

use super::device::{env_choice, Device};
use super::{AttnKernel, CudaBackend};
use crate::backend::precision::Precision;

/// `MMR1_GEMM` (`f32` or `bf16`) when set: bf16 GEMMs or not. Overrides the GEMM part of a
/// precision (benches) and sets a fresh GPU device's default.
pub(super) fn gemm_override() -> Result<Option<bool>, String> {
    env_choice("MMR1_GEMM", &[("f32", false), ("bf16", true)])
}

impl<D: Device> CudaBackend<D> {
    /// The backend at precision `p` (bf16: bf16 GEMM + flash attention; f32: SGEMM + the
    /// reference attention), with `MMR1_GEMM` / `MMR1_ATTENTION` overriding either part, and
    /// the flash kernels' variants from the environment (`flash_variants_from_env`; on the
    /// emulator too, so `--device emu` runs whichever a GPU would).
    pub fn with_precision(mut self, p: Precision) -> Result<Self, String> {
        let bf16 = p == Precision::Bf16;
        let gemm = gemm_override()?.unwrap_or(bf16);
        self.device_mut().set_gemm_precision(gemm)?;
        let attn = AttnKernel::override_from_env()?.unwrap_or(if bf16 {
            AttnKernel::Flash
        } else {
            AttnKernel::Reference
        });
        self.set_attention(attn);
        self.flash_variants_from_env()?;
        Ok(self)
    }

    /// What runs, in words: `"bf16 GEMM, flash attention"`.
    pub fn precision_summary(&self) -> String {
        let gemm = if self.device().gemm_precision_bf16() { "bf16 GEMM" } else { "f32 GEMM" };
        let attn = match self.attention_kernel() {
            AttnKernel::Flash => {
                "flash attention (bf16 tensor cores; f32 where the head dim has no flash kernel)"
            }
            AttnKernel::Reference => "f32 reference attention",
        };
        format!("{gemm}, {attn}")
    }
}
