//! `--device auto|cpu|cuda[:N]|emu`: which backend runs a command (named `DeviceChoice` so it is
//! not confused with the CUDA launch trait `backend::cuda::device::Device`).

use anyhow::{bail, Result};
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
    /// The CUDA backend on the host emulator (builds with `--features emu`): the GPU's
    /// kernels, slow and exact, for checking the GPU path end to end without a GPU.
    Emu,
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            "emu" => Ok(DeviceChoice::Emu),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(DeviceChoice::Cuda(n)),
                _ => Err(format!("unknown device {s:?}: use auto, cpu, cuda, cuda:N or emu")),
            },
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceChoice::Emu => f.write_str("emu"),
        }
    }
}

// In configuration files a device is the string a user types on the command line.
crate::serde_via_str!(DeviceChoice);

/// The backend a command will run on, said in one line. `auto` takes GPU 0 when this build
/// has the CUDA backend and a driver and device answer, else the CPU. `cuda[:N]` without a
/// usable GPU is an error (never a panic: the driver library is probed first).
pub fn resolve(dev: DeviceChoice) -> Result<DeviceChoice> {
    let gpu = |n: usize| crate::backend::cuda::available(n);
    match dev {
        DeviceChoice::Cpu => Ok(DeviceChoice::Cpu),
        DeviceChoice::Emu if cfg!(feature = "emu") => {
            eprintln!("note: running on the CUDA emulator (kernels on the host; slow)");
            Ok(DeviceChoice::Emu)
        }
        DeviceChoice::Emu => bail!("--device emu needs a build with `--features emu`"),
        DeviceChoice::Auto => match gpu(0) {
            Ok(name) => {
                eprintln!("note: running on {name}");
                Ok(DeviceChoice::Cuda(0))
            }
            Err(why) => {
                eprintln!("note: running on the CPU ({why})");
                Ok(DeviceChoice::Cpu)
            }
        },
        DeviceChoice::Cuda(n) => match gpu(n) {
            Ok(name) => {
                eprintln!("note: running on {name}");
                Ok(DeviceChoice::Cuda(n))
            }
            Err(why) => bail!("device cuda:{n} is not usable: {why}"),
        },
    }
}

/// Runs `$body` with `$be` bound to (a reference to) the backend `$dev` resolves to, one copy
/// of the body per backend type, so a command written once against `Backend` runs on each.
/// `precision = P` (a `PrecisionChoice`, see `backend::precision`) sets the arithmetic of
/// the CUDA backend; without it, the device's default. Evaluates to the body's value; errors
/// of resolution and device setup are returned with `?` (use it in a function returning
/// `anyhow::Result`).
#[macro_export]
macro_rules! with_backend {
    ($dev:expr, $be:ident => $body:expr) => {
        $crate::with_backend!($dev, precision = $crate::backend::precision::PrecisionChoice::Auto, $be => $body)
    };
    ($dev:expr, precision = $prec:expr, $be:ident => $body:expr) => {{
        let device = $crate::backend::select::resolve($dev)?;
        let precision = $crate::backend::precision::resolve(device, $prec)?;
        match device {
            #[cfg(feature = "cuda")]
            $crate::backend::select::DeviceChoice::Cuda(n) => {
                let backend = $crate::backend::cuda::CudaBackend::new(n)
                    .and_then(|b| b.with_precision(precision))
                    .map_err(|e| anyhow::anyhow!("cuda:{n}: {e}"))?;
                eprintln!("note: precision {precision}: {}", backend.precision_summary());
                let $be = &backend;
                $body
            }
            #[cfg(feature = "emu")]
            $crate::backend::select::DeviceChoice::Emu => {
                let backend = $crate::backend::cuda::CudaBackend::emulator()
                    .with_precision(precision)
                    .map_err(|e| anyhow::anyhow!(e))?;
                eprintln!("note: precision {precision}: {}", backend.precision_summary());
                let $be = &backend;
                $body
            }
            _ => {
                let _ = precision; // the CPU computes f32 (bf16 was refused above)
                let $be = &$crate::backend::cpu::Cpu;
                $body
            }
        }
    }};
}
