//! `--device auto|cpu|cuda[:N]`: which backend runs a command.

use anyhow::{bail, Result};
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(Device::Cuda(n)),
                _ => Err(format!("unknown device {s:?}: use auto, cpu, cuda or cuda:N")),
            },
        }
    }
}

/// The backend a command will run on. Until a GPU backend is compiled in, `auto` says in
/// one line that it runs on the CPU and `cuda` is an error.
pub fn resolve(dev: Device) -> Result<Device> {
    match dev {
        Device::Cpu => Ok(Device::Cpu),
        Device::Auto => {
            eprintln!("note: running on the CPU (no CUDA backend in this build)");
            Ok(Device::Cpu)
        }
        Device::Cuda(n) => bail!("device cuda:{n} requested, but this build has no CUDA backend (build with --features cuda)"),
    }
}
