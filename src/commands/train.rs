//! `mmr1-fast train`: the whole MMR1 pipeline. With no arguments it runs the built-in demo.

use crate::dist::launch::World;
use crate::dist::Collective;
use crate::pipeline::config::TrainConfig;
use crate::pipeline::demo_setup::DemoKind;
use crate::pipeline::inputs::{RunInputs, Start};
use crate::pipeline::run::{format_report, run_pipeline_with};
use anyhow::{bail, Result};
use std::path::PathBuf;

/// Seeds per setting of `--demo-ablation` by default: 3 settings x 4 seeds of the demo took
/// 443 s of CPU time on two cores (about 8 minutes wall when idle; 36 minutes at load ~20),
/// docs/demo-ablation.md.
pub const DEFAULT_ABLATION_SEEDS: usize = 4;

#[derive(clap::Args, Debug)]
#[command(after_help = "EXAMPLES:
  mmr1-fast train                                  # the built-in demo: tiny model, SFT then GRPO+VAS
  mmr1-fast train --demo visual                    # the visual demo: a tiny Qwen2.5-VL counts shapes
  mmr1-fast train --demo visual --prepare-only     # write its model, pictures and data; no training
  mmr1-fast train --print-config > run.toml        # every key with its default
  mmr1-fast train --config run.toml --set rl.group_size=16 --set vas.lambda=0.8
  mmr1-fast train --resume runs/mmr1               # continue a stopped run
  mmr1-fast train --demo-ablation --seeds 4 --out runs/ablation   # uniform vs VAS, over seeds")]
pub struct TrainArgs {
    /// Run configuration (TOML). Without it: the built-in demo's configuration.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The built-in demo run when no model is configured (model.dir empty): text (sums of
    /// single digits, a tiny Qwen2 made from scratch) or visual (counting coloured shapes in
    /// pictures drawn in code, a tiny Qwen2.5-VL made from scratch; written under
    /// OUT/demo-visual). Without --config it also picks that demo's configuration.
    #[arg(long, value_enum, default_value_t = DemoKind::Text)]
    pub demo: DemoKind,
    /// Prepare the output directory and stop: materialize the demo when no model is given
    /// (model, pictures, sft/rl/eval JSONL) and write OUT/config.toml, without training. To
    /// look at or edit the data first; then `mmr1-fast train --config OUT/config.toml`.
    #[arg(long, conflicts_with_all = ["resume", "demo_ablation"])]
    pub prepare_only: bool,
    /// Override any key, e.g. --set rl.lr=1e-6 --set model.dir=/models/qwen (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub sets: Vec<String>,
    /// auto | cpu | cuda | cuda:N | emu (same as --set model.device=...).
    #[arg(long)]
    pub device: Option<String>,
    /// auto | bf16 | f32 (same as --set model.precision=...): the arithmetic of matmuls and
    /// attention; auto is bf16 on a GPU and on emu, f32 on the CPU (which runs f32 only).
    #[arg(long)]
    pub precision: Option<String>,
    /// Activation recomputation (same as --set model.recompute=true): keep only each layer's
    /// input in the forward and re-run the layer in the backward; less device memory, about
    /// 20-25% more compute, the same results.
    #[arg(long)]
    pub recompute: bool,
    /// ZeRO stage of a data-parallel run (same as --set dist.zero=...): 0 every rank holds
    /// the whole AdamW state; 1 each of N ranks holds the moments of 1/N of the parameters;
    /// 2 also shards the gradients (reduce-scattered in buckets during the backward unless
    /// --set dist.grad_buckets=false). Same results; see docs/distributed.md.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub zero: Option<u8>,
    /// auto | mpi | nccl (same as --set dist.collective=...): the collective of a
    /// data-parallel run's device buffers. auto: NCCL for N > 1 ranks on GPUs, MPI otherwise;
    /// mpi: GPU buffers staged through host memory; nccl: NCCL also in a world of one.
    #[arg(long)]
    pub collective: Option<String>,
    /// Output directory (same as --set output.dir=...).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this output directory from its newest complete checkpoint, with
    /// its config.toml. --set may change only what does not alter the checkpoints' meaning
    /// (model.device, output.*, eval.*, rl.steps); other changes are refused.
    #[arg(long, value_name = "OUT_DIR", conflicts_with = "config")]
    pub resume: Option<PathBuf>,
    /// Replace the run (checkpoints, metrics, report) already in the output directory.
    /// Without it, a fresh run into a directory holding another run's checkpoints is refused.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Print the full default configuration as TOML and exit. Each key is described in
    /// src/pipeline/config.rs; the data-parallel ones in docs/distributed.md: dist.zero (0,
    /// 1, 2), dist.grad_buckets (ZeRO 2: reduce-scatter the gradients in buckets during the
    /// backward, true by default; false holds the whole gradient until the step), and
    /// dist.collective (auto, mpi, nccl).
    #[arg(long)]
    pub print_config: bool,
    /// MMR1's Figure 2 in miniature: one cold-start SFT, then GRPO from that checkpoint with
    /// lambda = 0 (uniform), 0.5 and 1.0 (VAS), each over --seeds seeds, validating every
    /// eval.every steps (5 if 0). Writes ablation.md (means, 95% intervals, paired
    /// differences VAS minus uniform), ablation.json and ablation.png under --out.
    #[arg(long)]
    pub demo_ablation: bool,
    /// Seeds per setting for --demo-ablation (seed, seed+1, ...).
    #[arg(long, default_value_t = DEFAULT_ABLATION_SEEDS, requires = "demo_ablation")]
    pub seeds: usize,
}

/// The command as rank `world.rank()` of the launched world (a world of one without mpirun).
pub fn run(args: &TrainArgs, world: &World) -> Result<()> {
    if args.print_config {
        print!("{}", TrainConfig::default().to_toml());
        return Ok(());
    }
    let mut cfg = match &args.config {
        Some(p) => TrainConfig::from_toml_file(p)?,
        None => args.demo.train_config(),
    };
    let saved = match &args.resume {
        Some(dir) => {
            let p = dir.join("config.toml");
            if !p.exists() {
                bail!("{}: no config.toml; is this the output directory of a run?", dir.display());
            }
            let saved = TrainConfig::from_toml_file(&p)?;
            cfg = saved.clone();
            Some(saved)
        }
        None => None,
    };
    cfg.apply_overrides(&args.sets)?;
    if let Some(d) = &args.device {
        cfg.model.device =
            d.parse().map_err(|e: String| anyhow::anyhow!("--device (model.device): {e}"))?;
    }
    if let Some(p) = &args.precision {
        cfg.model.precision =
            p.parse().map_err(|e: String| anyhow::anyhow!("--precision (model.precision): {e}"))?;
    }
    if args.recompute {
        cfg.model.recompute = true;
    }
    if let Some(z) = args.zero {
        cfg.dist.zero = z;
    }
    if let Some(c) = &args.collective {
        cfg.dist.collective = c
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--collective (dist.collective): {e}"))?;
    }
    if let Some(o) = &args.out {
        cfg.output.dir = o.clone();
    }
    if let (Some(d), Some(saved)) = (&args.resume, &saved) {
        // A resumed run continues where its checkpoints are; another place would be ignored.
        if cfg.output.dir != saved.output.dir && cfg.output.dir != *d {
            bail!(
                "--out / output.dir {}: a resumed run continues in its own directory {}; to train into another directory, start a fresh run there",
                cfg.output.dir.display(),
                d.display()
            );
        }
        cfg.output.dir = d.clone();
        // The directory may have moved since the run started: where it is now is no change.
        let mut saved = saved.clone();
        saved.output.dir = d.clone();
        cfg = saved.resumed_with(cfg)?;
    }
    cfg.validate()?;
    if args.demo_ablation && args.demo != DemoKind::Text {
        bail!("--demo-ablation runs the text demo; it does not take --demo {:?}", args.demo);
    }
    if args.prepare_only {
        if world.size() > 1 {
            bail!("--prepare-only runs in one process; launch it without mpirun");
        }
        let cfg = RunInputs::materialize_only(
            cfg,
            Start::Fresh { overwrite: args.overwrite },
            args.demo,
        )?;
        let out = &cfg.output.dir;
        println!("prepared {} (nothing trained)", out.display());
        println!("  model: {}", cfg.model.dir.display());
        for (name, p) in [("sft", &cfg.data.sft), ("rl", &cfg.data.rl), ("eval", &cfg.data.eval)] {
            if !p.as_os_str().is_empty() {
                println!("  {name}: {}", p.display());
            }
        }
        println!("run it: mmr1-fast train --config {}", out.join("config.toml").display());
        return Ok(());
    }
    if args.demo_ablation && world.size() > 1 {
        bail!("--demo-ablation runs in one process; launch it without mpirun (or with -np 1)");
    }
    let device = world.device(crate::backend::select::resolve(cfg.model.device)?)?;
    let collective = cfg.dist.collective;
    crate::with_backend!(device, precision = cfg.model.precision, be => {
        run_on(be, cfg, args, &*world.comm_for(be, collective)?)
    })
}

fn run_on<B: crate::backend::rl_ops::RlOps>(
    be: &B,
    cfg: TrainConfig,
    args: &TrainArgs,
    comm: &dyn Collective<B>,
) -> Result<()> {
    if args.demo_ablation {
        return crate::pipeline::ablation::run_ablation(be, cfg, args.seeds, args.overwrite)
            .map(|_| ());
    }
    let start = if args.resume.is_some() {
        Start::Resume
    } else {
        Start::Fresh { overwrite: args.overwrite }
    };
    // Rank 0 prepares the output directory (lock, demo model, config.toml); the other ranks
    // then read the configuration it wrote there.
    let lead = comm.rank() == 0;
    let out = cfg.output.dir.clone();
    let inputs =
        if lead { Some(RunInputs::prepare_with_demo(cfg, start, args.demo)?) } else { None };
    comm.barrier()?;
    let inputs = match inputs {
        Some(i) => i,
        None => RunInputs::follow(&out, start, comm.rank())?,
    };
    if lead {
        eprintln!("output: {}", inputs.out.display());
        if comm.world() > 1 {
            eprintln!("data parallel: {} ranks", comm.world());
        }
        if comm.world() > 1 || inputs.cfg.dist.zero > 0 {
            eprintln!(
                "{}",
                crate::dist::zero::state_note(
                    comm.world(),
                    inputs.cfg.dist.zero,
                    if inputs.cfg.dist.grad_buckets {
                        crate::dist::zero::GradLayout::Buckets { in_flight: None }
                    } else {
                        crate::dist::zero::GradLayout::Whole
                    },
                    None
                )
            );
        }
    }
    let report = run_pipeline_with(be, &inputs, comm)?;
    if lead {
        println!("{}", format_report(&report));
        println!("metrics: {}", inputs.out.join("metrics.jsonl").display());
    }
    Ok(())
}
