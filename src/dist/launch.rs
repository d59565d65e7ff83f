//! Launchers: `mpirun` (and `srun` with PMI) start N copies of the binary and tell each its rank through
//! the environment. This build has no multi-process collective yet (docs/distributed.md), so
//! the training commands refuse a launch with more than one rank: N copies would otherwise
//! train N independent models into one output directory.

use anyhow::{bail, Result};

/// Environment variables that carry the world size of a launched process: Open MPI's
/// `mpirun`, and PMI (MPICH / Hydra, `srun --mpi=pmi2`). Not Slurm's `SLURM_NTASKS`: it is
/// also set for a plain process inside a multi-task allocation (an `sbatch` script), which
/// would be refused wrongly; a bare `srun -n N` without PMI is therefore not detected.
const WORLD_VARS: [&str; 2] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"];

/// The world size a launcher announced, and the variable it came from; `None` without one.
/// `env` reads a variable (`std::env::var` in the binary; a map in tests).
pub fn launcher_world(env: impl Fn(&str) -> Option<String>) -> Option<(usize, &'static str)> {
    WORLD_VARS.iter().find_map(|&k| env(k).and_then(|v| v.trim().parse().ok()).map(|n| (n, k)))
}

/// Fails when a launcher started more than one rank (this build trains single-process only).
pub fn check_launch(env: impl Fn(&str) -> Option<String>) -> Result<()> {
    if let Some((n, var)) = launcher_world(env) {
        if n > 1 {
            bail!(
                "launched as {n} ranks ({var}={n}), but this build trains in one process only: \
                 multi-process data parallelism (MPI, NCCL) is not built yet \
                 (docs/distributed.md); run without mpirun/srun, or with -np 1"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{check_launch, launcher_world};

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn a_multi_rank_launch_is_refused_by_name() {
        assert_eq!(launcher_world(env(&[])), None);
        check_launch(env(&[])).unwrap();
        check_launch(env(&[("OMPI_COMM_WORLD_SIZE", "1")])).unwrap();
        assert_eq!(launcher_world(env(&[("PMI_SIZE", "4")])), Some((4, "PMI_SIZE")));
        // Inside an sbatch allocation of 4 tasks, a plain process is not a launch.
        check_launch(env(&[("SLURM_NTASKS", "4")])).unwrap();
        let e = check_launch(env(&[("PMI_SIZE", "2")])).unwrap_err().to_string();
        assert!(e.contains("2 ranks (PMI_SIZE=2)") && e.contains("docs/distributed.md"), "{e}");
        // A variable that is not a number is not a launch.
        check_launch(env(&[("OMPI_COMM_WORLD_SIZE", "x")])).unwrap();
    }
}
