//! `train --demo-ablation`: uniform sampling (lambda = 0) against VAS (lambda = 1) from the
//! same SFT checkpoint with the same seeds, side by side.

use super::config::TrainConfig;
use anyhow::Result;

pub fn run_ablation(_cfg: TrainConfig) -> Result<()> {
    anyhow::bail!("--demo-ablation is not built yet")
}
