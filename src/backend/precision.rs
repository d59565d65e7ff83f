//! `--precision bf16|f32`: the arithmetic of a command's matmuls and attention.
//!
//! - `bf16` (mixed precision as llm.c and Megatron do it): GEMM operands rounded to bf16 on
//!   the tensor cores with f32 accumulation and f32 output (cuBLAS GemmEx, CUBLAS_COMPUTE_32F),
//!   and the flash attention kernels (Q, K, V, P, dO, dS in bf16; scores, softmax statistics
//!   and accumulators f32). Everything else (norms, log-softmax, the loss, AdamW and its
//!   moments, the master weights) stays f32.
//! - `f32`: SGEMM and the per-query f32 reference attention; matches the CPU reference to f32
//!   rounding.
//!
//! Defaults: bf16 on a GPU, f32 on the CPU (the CPU reference computes only f32; asking it
//! for bf16 is an error), bf16 on the emulator, so that `--device emu` runs what a GPU runs
//! and CI checks the bf16 path end to end (the emulator rounds GEMM operands to bf16 as
//! GemmEx does). `MMR1_GEMM=f32|bf16` and `MMR1_ATTENTION=reference|flash` override the GEMM
//! and attention parts of the choice separately (benches).

use super::select::DeviceChoice;
use anyhow::{bail, Result};
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Bf16,
    F32,
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "bf16" => Ok(Precision::Bf16),
            "f32" => Ok(Precision::F32),
            _ => Err(format!("unknown precision {s:?}: use bf16 or f32")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Bf16 => "bf16",
            Precision::F32 => "f32",
        })
    }
}

// In configuration files a precision is the string a user types on the command line.
crate::serde_via_str!(Precision);

/// What a user asks for: `auto` (the device's default), `bf16` or `f32`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PrecisionChoice {
    #[default]
    Auto,
    Fixed(Precision),
}

impl FromStr for PrecisionChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(PrecisionChoice::Auto),
            _ => s
                .parse()
                .map(PrecisionChoice::Fixed)
                .map_err(|_| format!("unknown precision {s:?}: use auto, bf16 or f32")),
        }
    }
}

impl std::fmt::Display for PrecisionChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrecisionChoice::Auto => f.write_str("auto"),
            PrecisionChoice::Fixed(p) => p.fmt(f),
        }
    }
}

crate::serde_via_str!(PrecisionChoice);

/// The precision a command runs at on the (resolved) device `dev`: what was asked, or the
/// device's default. bf16 on the CPU is an error that says what to do instead.
pub fn resolve(dev: DeviceChoice, choice: PrecisionChoice) -> Result<Precision> {
    let asked = match choice {
        PrecisionChoice::Auto => None,
        PrecisionChoice::Fixed(p) => Some(p),
    };
    match (dev, asked) {
        (DeviceChoice::Cpu, Some(Precision::Bf16)) => bail!(
            "--precision bf16 needs a CUDA device (--device cuda[:N], or emu in a build with \
             `--features emu`): the CPU backend is the f32 reference. Use --precision f32 on the CPU"
        ),
        (DeviceChoice::Cpu, _) => Ok(Precision::F32),
        (_, Some(p)) => Ok(p),
        (_, None) => Ok(Precision::Bf16),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_device_and_the_cpu_refuses_bf16() {
        let (auto, bf16, f32) = (
            PrecisionChoice::Auto,
            PrecisionChoice::Fixed(Precision::Bf16),
            PrecisionChoice::Fixed(Precision::F32),
        );
        assert_eq!(resolve(DeviceChoice::Cpu, auto).unwrap(), Precision::F32);
        assert_eq!(resolve(DeviceChoice::Cpu, f32).unwrap(), Precision::F32);
        assert_eq!(resolve(DeviceChoice::Cuda(0), auto).unwrap(), Precision::Bf16);
        assert_eq!(resolve(DeviceChoice::Emu, auto).unwrap(), Precision::Bf16);
        assert_eq!(resolve(DeviceChoice::Emu, f32).unwrap(), Precision::F32);
        let e = resolve(DeviceChoice::Cpu, bf16).unwrap_err().to_string();
        assert!(e.contains("--precision f32") && e.contains("CPU"), "{e}");
        assert_eq!("bf16".parse::<PrecisionChoice>().unwrap(), bf16);
        assert_eq!("auto".parse::<PrecisionChoice>().unwrap(), auto);
        assert_eq!(f32.to_string(), "f32");
        assert!("fp16".parse::<PrecisionChoice>().unwrap_err().contains("auto, bf16 or f32"));
    }
}
