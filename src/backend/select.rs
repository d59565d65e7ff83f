//! `--device auto|cpu|cuda[:N]`: which backend runs a command (named `DeviceChoice` so it is
//! not confused with the CUDA launch trait `backend::cuda::device::Device`).

use anyhow::{bail, Result};
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(DeviceChoice::Cuda(n)),
                _ => Err(format!("unknown device {s:?}: use auto, cpu, cuda or cuda:N")),
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
        }
    }
}

// In configuration files a device is the string a user types on the command line.
impl serde::Serialize for DeviceChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DeviceChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The backend a command will run on, said in one line. `auto` takes GPU 0 when this build
/// has the CUDA backend and a driver and device answer, else the CPU. `cuda[:N]` without a
/// usable GPU is an error (never a panic: the driver library is probed first).
pub fn resolve(dev: DeviceChoice) -> Result<DeviceChoice> {
    let gpu = |n: usize| crate::backend::cuda::available(n);
    match dev {
        DeviceChoice::Cpu => Ok(DeviceChoice::Cpu),
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

/// For commands that run on the CPU only so far: `auto` quietly means the CPU, an explicit
/// `cuda` is an error that says so.
pub fn cpu_only(dev: DeviceChoice, command: &str) -> Result<()> {
    if let DeviceChoice::Cuda(n) = dev {
        bail!("`{command}` runs on the CPU in this version (asked for cuda:{n}); `train` runs on the GPU");
    }
    Ok(())
}
