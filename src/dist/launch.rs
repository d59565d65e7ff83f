//! Launchers: `mpirun` (and `srun` with PMI) start N copies of the binary and tell each its rank
//! through the environment. [`World::from_env`] turns that into the collective the training
//! commands use: a plain process (no launcher, or `-np 1`) is a world of one, exactly the
//! single-process path; a launch of N > 1 ranks joins them over MPI (feature `mpi`), and a
//! build without MPI refuses it by name rather than train N independent models into one
//! output directory.
//!
//! Which collective carries the device buffers ([`CollectiveChoice`], `dist.collective`,
//! `--collective`): `auto` takes NCCL for a run of N > 1 ranks on GPUs (the CUDA backend) and
//! MPI otherwise (the CPU backend, the emulator); `mpi` stages GPU buffers through host memory
//! over MPI; `nccl` asks for NCCL also in a world of one (to check the NCCL path against the
//! plain one on a single GPU). See [`World::comm_for`].

use super::{Collective, Single};
use crate::backend::select::DeviceChoice;
use crate::backend::Backend;
use anyhow::{bail, Result};
use std::str::FromStr;

/// `auto | mpi | nccl`: the collective of the device buffers (see the module comment).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CollectiveChoice {
    #[default]
    Auto,
    Mpi,
    Nccl,
}

impl FromStr for CollectiveChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(CollectiveChoice::Auto),
            "mpi" => Ok(CollectiveChoice::Mpi),
            "nccl" => Ok(CollectiveChoice::Nccl),
            _ => Err(format!(
                "unknown collective {s:?}: use auto (NCCL for N > 1 ranks on GPUs, else MPI), \
                 mpi or nccl"
            )),
        }
    }
}

impl std::fmt::Display for CollectiveChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CollectiveChoice::Auto => "auto",
            CollectiveChoice::Mpi => "mpi",
            CollectiveChoice::Nccl => "nccl",
        })
    }
}

// In configuration files the choice is the string typed on the command line.
crate::serde_via_str!(CollectiveChoice);

/// The collective a command uses: the world's own (a world of one, MPI), or one built for the
/// backend (NCCL on a GPU). Dereferences to the trait object.
pub enum Comm<'a, B: Backend> {
    Borrowed(&'a dyn Collective<B>),
    Owned(Box<dyn Collective<B>>),
}

impl<'a, B: Backend> std::ops::Deref for Comm<'a, B> {
    type Target = dyn Collective<B> + 'a;
    fn deref(&self) -> &Self::Target {
        match self {
            Comm::Borrowed(c) => *c,
            Comm::Owned(c) => &**c,
        }
    }
}

/// Whether `nccl` is asked for, or `auto` picks it: `auto` does for N > 1 ranks on a GPU.
pub fn wants_nccl(choice: CollectiveChoice, world: usize, on_gpu: bool) -> bool {
    match choice {
        CollectiveChoice::Mpi => false,
        CollectiveChoice::Nccl => true,
        CollectiveChoice::Auto => world > 1 && on_gpu,
    }
}

/// Whether `be` is the CUDA backend of a real GPU (not the emulator, not the CPU).
fn on_gpu<B: Backend + 'static>(be: &B) -> bool {
    #[cfg(feature = "cuda")]
    {
        (be as &dyn std::any::Any)
            .is::<crate::backend::cuda::CudaBackend<crate::backend::cuda::driver::CudaDevice>>()
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = be;
        false
    }
}

/// Environment variables that carry the world size of a launched process: Open MPI's
/// `mpirun`, PMI (MPICH / Hydra, `srun --mpi=pmi2`), and Slurm's `srun` job step
/// (`SLURM_STEP_NUM_TASKS`: `srun --mpi=pmix`, with which Open MPI's ranks are direct-launched,
/// sets neither of the others). Not `SLURM_NTASKS`: it is also set for a plain process inside
/// a multi-task allocation (an `sbatch` script, `salloc`), which would be refused wrongly;
/// `SLURM_STEP_NUM_TASKS` exists only inside an `srun` step (checked on Slurm 22.05).
const WORLD_VARS: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"];

/// Environment variables that carry a rank's index among the ranks of its node (which GPU it
/// takes): Open MPI, Slurm (`srun`), MPICH / Hydra.
const LOCAL_RANK_VARS: [&str; 3] =
    ["OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"];

/// The world size a launcher announced, and the variable it came from; `None` without one.
/// `env` reads a variable (`std::env::var` in the binary; a map in tests).
pub fn launcher_world(env: impl Fn(&str) -> Option<String>) -> Option<(usize, &'static str)> {
    WORLD_VARS.iter().find_map(|&k| env(k).and_then(|v| v.trim().parse().ok()).map(|n| (n, k)))
}

/// This rank's index on its node (0 without a launcher).
pub fn local_rank(env: impl Fn(&str) -> Option<String>) -> usize {
    LOCAL_RANK_VARS.iter().find_map(|&k| env(k).and_then(|v| v.trim().parse().ok())).unwrap_or(0)
}

/// The device of a rank with local rank `local`: GPUs are numbered from the one asked for, so
/// `cuda` (and `auto` once it resolved to a GPU) on a node of 8 ranks gives ranks 0..8 GPUs
/// 0..8, and `cuda:4` gives them GPUs 4..12. Other devices are shared as they are.
pub fn rank_device(dev: DeviceChoice, local: usize) -> DeviceChoice {
    match dev {
        DeviceChoice::Cuda(n) => DeviceChoice::Cuda(n + local),
        d => d,
    }
}

/// Fails when a launcher started more than one rank and this build cannot join them.
pub fn check_launch(env: impl Fn(&str) -> Option<String>) -> Result<()> {
    if let Some((n, var)) = launcher_world(env) {
        if n > 1 && !cfg!(feature = "mpi") {
            bail!(
                "launched as {n} ranks ({var}={n}), but this build has no MPI: rebuild with \
                 `--features mpi` (docs/distributed.md), or run without mpirun/srun, or with -np 1"
            );
        }
    }
    Ok(())
}

/// The ranks of this run: a world of one, or (feature `mpi`) the MPI world a launcher started.
pub enum World {
    Single,
    /// Shared with an NCCL communicator bootstrapped over it (its host-side operations).
    #[cfg(feature = "mpi")]
    Mpi(std::rc::Rc<super::MpiComm>),
}

impl World {
    /// The world the environment describes (see the module comment). MPI is initialized only
    /// under a launcher with more than one rank: a plain process never touches it.
    pub fn from_env() -> Result<World> {
        let env = |k: &str| std::env::var(k).ok();
        check_launch(env)?;
        match launcher_world(env) {
            #[cfg(feature = "mpi")]
            Some((n, var)) if n > 1 => {
                let comm = super::MpiComm::init()?;
                let got = Collective::<crate::backend::cpu::Cpu>::world(&comm);
                if got != n {
                    // The usual cause: `srun` without an MPI plugin that Open MPI speaks,
                    // so every task initializes MPI as a world of its own.
                    bail!(
                        "{var}={n}, but the MPI world has {got} ranks: under Slurm launch with \
                         `srun --mpi=pmix` (or `mpirun` inside the allocation)"
                    );
                }
                Ok(World::Mpi(std::rc::Rc::new(comm)))
            }
            _ => Ok(World::Single),
        }
    }

    /// The world's own collective over backend `B`'s buffers (host-staged under MPI).
    pub fn comm<B: Backend>(&self) -> &dyn Collective<B> {
        match self {
            World::Single => &Single,
            #[cfg(feature = "mpi")]
            World::Mpi(c) => &**c,
        }
    }

    /// The collective a command on backend `be` uses, as `choice` says (see the module
    /// comment): NCCL is built here, on `be`'s GPU and stream, bootstrapped over this world's
    /// MPI; otherwise [`World::comm`]. Every rank calls it (NCCL's bootstrap is collective).
    pub fn comm_for<B: Backend + 'static>(
        &self,
        be: &B,
        choice: CollectiveChoice,
    ) -> Result<Comm<'_, B>> {
        if !wants_nccl(choice, self.size(), on_gpu(be)) {
            return Ok(Comm::Borrowed(self.comm()));
        }
        self.nccl(be, choice)
    }

    #[cfg(feature = "cuda")]
    fn nccl<B: Backend + 'static>(&self, be: &B, choice: CollectiveChoice) -> Result<Comm<'_, B>> {
        use crate::backend::cuda::{driver::CudaDevice, CudaBackend};
        use anyhow::Context;
        type Cuda = CudaBackend<CudaDevice>;
        let Some(cuda) = (be as &dyn std::any::Any).downcast_ref::<Cuda>() else {
            bail!(
                "dist.collective = nccl runs on GPUs (--device cuda); this run is on {}: use \
                 dist.collective = auto or mpi",
                be.name()
            );
        };
        let comm = match self {
            World::Single => super::NcclComm::single(cuda),
            #[cfg(feature = "mpi")]
            World::Mpi(m) => super::NcclComm::over_mpi(cuda, m.clone()),
        };
        let comm = comm.with_context(|| {
            format!("dist.collective = {choice}: NCCL over {} rank(s)", self.size())
        })?;
        if self.rank() == 0 {
            eprintln!("note: device collectives over NCCL ({} rank(s))", self.size());
        }
        // `B` is `Cuda` (the downcast above): the box is the one asked for.
        let boxed: Box<dyn Collective<Cuda>> = Box::new(comm);
        let any: Box<dyn std::any::Any> = Box::new(boxed);
        let own = any.downcast::<Box<dyn Collective<B>>>().expect("B is the CUDA backend");
        Ok(Comm::Owned(*own))
    }

    #[cfg(not(feature = "cuda"))]
    fn nccl<B: Backend + 'static>(&self, be: &B, choice: CollectiveChoice) -> Result<Comm<'_, B>> {
        bail!(
            "dist.collective = {choice}: NCCL runs on GPUs, and this build has no CUDA backend \
             (rebuild with --features cuda); this run is on {}",
            be.name()
        )
    }

    pub fn rank(&self) -> usize {
        self.comm::<crate::backend::cpu::Cpu>().rank()
    }

    pub fn size(&self) -> usize {
        self.comm::<crate::backend::cpu::Cpu>().world()
    }

    /// This rank's device for the device asked for (see [`rank_device`]).
    pub fn device(&self, dev: DeviceChoice) -> Result<DeviceChoice> {
        if self.size() == 1 {
            return Ok(dev);
        }
        let dev = crate::backend::select::resolve(dev)?;
        Ok(rank_device(dev, local_rank(|k| std::env::var(k).ok())))
    }

    /// Ends a failed command. In a world of N ranks one rank's error must end every rank (the
    /// others would wait for it in their next collective forever): the error is printed with
    /// the rank and the job aborted.
    pub fn finish(&self, r: Result<()>) -> Result<()> {
        match (self, r) {
            #[cfg(feature = "mpi")]
            (World::Mpi(c), Err(e)) => {
                eprintln!("error (rank {} of {}): {e:#}", self.rank(), self.size());
                if self.rank() != 0 {
                    // Ranks usually fail alike (they compute the same numbers): give rank 0
                    // the moment it needs to finish its own report (a diverged checkpoint
                    // set aside) before the abort ends it too.
                    std::thread::sleep(std::time::Duration::from_secs(3));
                }
                c.abort(1)
            }
            (_, r) => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{check_launch, launcher_world, local_rank, rank_device};
    use super::{wants_nccl, CollectiveChoice, World};
    use crate::backend::cpu::Cpu;
    use crate::backend::select::DeviceChoice;

    #[test]
    fn nccl_is_taken_for_gpu_worlds_or_when_asked_for() {
        use CollectiveChoice::*;
        assert_eq!("nccl".parse::<CollectiveChoice>(), Ok(Nccl));
        assert_eq!(Mpi.to_string(), "mpi");
        let e = "gloo".parse::<CollectiveChoice>().unwrap_err();
        assert!(e.contains("\"gloo\"") && e.contains("auto") && e.contains("nccl"), "{e}");
        // auto: NCCL for N > 1 ranks on a GPU only; a world of one stays the plain path.
        assert!(wants_nccl(Auto, 2, true) && !wants_nccl(Auto, 1, true));
        assert!(!wants_nccl(Auto, 8, false));
        assert!(wants_nccl(Nccl, 1, false) && !wants_nccl(Mpi, 8, true));
    }

    #[test]
    fn nccl_off_a_gpu_is_refused_by_name_and_auto_keeps_the_plain_path() {
        let w = World::Single;
        let c = w.comm_for(&Cpu, CollectiveChoice::Auto).unwrap();
        assert_eq!((c.rank(), c.world()), (0, 1));
        w.comm_for(&Cpu, CollectiveChoice::Mpi).unwrap();
        let e = w.comm_for(&Cpu, CollectiveChoice::Nccl).err().unwrap().to_string();
        assert!(e.contains("dist.collective = nccl") && e.contains("GPU"), "{e}");
        #[cfg(feature = "emu")]
        {
            // The emulator is the CUDA backend's code without a GPU: no NCCL there either.
            let emu = crate::backend::cuda::CudaBackend::emulator();
            w.comm_for(&emu, CollectiveChoice::Auto).unwrap();
            let e = w.comm_for(&emu, CollectiveChoice::Nccl).err().unwrap().to_string();
            assert!(e.contains("dist.collective = nccl"), "{e}");
        }
    }

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
        assert_eq!(launcher_world(env(&[("SLURM_NTASKS", "4")])), None);
        // An srun step is (`srun --mpi=pmix` sets no MPI variable of its own).
        let step = [("SLURM_NTASKS", "4"), ("SLURM_STEP_NUM_TASKS", "2")];
        assert_eq!(launcher_world(env(&step)), Some((2, "SLURM_STEP_NUM_TASKS")));
        // mpirun inside an srun step of one task: mpirun's world counts.
        let nested = [("SLURM_STEP_NUM_TASKS", "1"), ("OMPI_COMM_WORLD_SIZE", "4")];
        assert_eq!(launcher_world(env(&nested)), Some((4, "OMPI_COMM_WORLD_SIZE")));
        let r = check_launch(env(&[("PMI_SIZE", "2")]));
        if cfg!(feature = "mpi") {
            r.unwrap();
        } else {
            let e = r.unwrap_err().to_string();
            assert!(e.contains("2 ranks (PMI_SIZE=2)") && e.contains("--features mpi"), "{e}");
        }
        // A variable that is not a number is not a launch.
        assert_eq!(launcher_world(env(&[("OMPI_COMM_WORLD_SIZE", "x")])), None);
    }

    #[test]
    fn each_rank_takes_the_gpu_of_its_local_rank() {
        assert_eq!(local_rank(env(&[])), 0);
        assert_eq!(local_rank(env(&[("SLURM_LOCALID", "3")])), 3);
        let both = [("SLURM_LOCALID", "3"), ("OMPI_COMM_WORLD_LOCAL_RANK", "1")];
        assert_eq!(local_rank(env(&both)), 1);
        assert_eq!(rank_device(DeviceChoice::Cuda(0), 2), DeviceChoice::Cuda(2));
        assert_eq!(rank_device(DeviceChoice::Cuda(4), 3), DeviceChoice::Cuda(7));
        assert_eq!(rank_device(DeviceChoice::Cpu, 3), DeviceChoice::Cpu);
    }
}
