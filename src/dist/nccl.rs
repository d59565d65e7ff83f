//! NCCL as the collective of a data-parallel run on GPUs (feature `cuda`; cudarc's NCCL
//! bindings, `libnccl` opened at run time): the device buffers of the CUDA backend are summed,
//! broadcast, scattered and gathered GPU to GPU, on the backend's one stream, with nothing
//! staged through host memory. The small host-side values (token counts, metrics, rollouts,
//! a ZeRO checkpoint's moments) go over the MPI communicator the run was launched with, as
//! with `MpiComm`; a world of one needs no MPI.
//!
//! Bootstrap (`NcclComm::over_mpi`): every rank checks that it can open libnccl and the ranks
//! compare (so a rank without NCCL fails every rank by name instead of leaving them waiting in
//! `ncclCommInitRank`); rank 0 creates the unique id (`ncclGetUniqueId`), MPI carries its 128
//! bytes to every rank, and each rank joins with `ncclCommInitRank` on its own GPU (the GPU of
//! its local rank: `World::device`).
//!
//! Operations: `all_reduce_sum` and `broadcast` run in place on each buffer, grouped
//! (`ncclGroupStart/End`, up to `GROUP_OPS` calls a group) so a model's hundreds of tensors
//! cost a few launches and no extra memory. ZeRO's `reduce_scatter_sum` and `all_gather`
//! use the padded rounds of `dist::padded` (why padding: see there).
//!
//! Determinism (docs/distributed.md). NCCL does not sum in rank order: the order of a ring or
//! tree reduction depends on the algorithm, protocol, channel count and topology NCCL picks
//! for the message size. For a fixed world size, topology, NCCL version and buffer sizes the
//! choices are the same from run to run, and NCCL documents its reductions as deterministic
//! then; pin them with `NCCL_ALGO` (e.g. `Ring`) and `NCCL_PROTO` (e.g. `Simple`) to keep them
//! across NCCL versions or tuning changes. Every rank receives the same bits from an
//! all-reduce. What is NOT guaranteed, unlike `MpiComm` and `ThreadGroup`: the bits of the
//! rank-order sum (NCCL equals them to f32 rounding only), and that a reduce-scatter's block
//! holds the same bits as that slice of an all-reduce (the two calls may cut the sum
//! differently), so ZeRO 1/2 over NCCL equals ZeRO 0 to rounding, not bit for bit. A world of
//! one is exact: every operation is a copy.

use super::padded::{offset_in_block, pack_round, padded_rounds, unpack_round};
use super::{block_in_piece, flat_len, flat_slice, piece_of, shard, Collective, Single};
use crate::backend::cpu::Cpu;
use crate::backend::cuda::driver::{CudaDevice, CudaMem};
use crate::backend::cuda::{CudaBackend, DevBuf};
use crate::backend::Backend;
use anyhow::{bail, ensure, Result};
use cudarc::nccl::result::{self as nccl, NcclError, NcclStatus};
use cudarc::nccl::sys;
use std::ffi::{c_void, CStr};
use std::path::PathBuf;

type Cuda = CudaBackend<CudaDevice>;
type Buf = DevBuf<CudaMem>;

/// Values per rank in one padded round of a reduce-scatter or all-gather: 16M f32 = 64 MB per
/// rank, so a round's staging holds `world * 64 MB`.
const CHUNK: usize = 1 << 24;

/// Calls in one NCCL group (all-reduce and broadcast of many tensors).
const GROUP_OPS: usize = 64;

/// Whether NCCL can be opened here: `Err` names the library and what to do. Never panics
/// (cudarc panics when it calls into a library it cannot open, so this runs first).
pub fn probe() -> Result<(), String> {
    // SAFETY: only tries to open the library by the names cudarc uses.
    if unsafe { sys::is_culib_present() } {
        return Ok(());
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    dirs.extend(SYSTEM_LIB_DIRS.iter().map(PathBuf::from));
    Err(missing_nccl(&cudarc::get_lib_name_candidates("nccl"), &dirs))
}

/// Where a system's libnccl usually is, besides LD_LIBRARY_PATH.
const SYSTEM_LIB_DIRS: [&str; 4] =
    ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/local/lib", "/usr/lib"];

/// The error of a missing NCCL: the names cudarc tried, and the fix. NCCL's own packages and
/// the pip wheels (`nvidia-nccl-cu12`, `-cu13`) install `libnccl.so.2`, a name cudarc does not
/// try; when one is found in `dirs`, the message gives the symlink that makes it found.
pub fn missing_nccl(tried: &[String], dirs: &[PathBuf]) -> String {
    let found = dirs.iter().map(|d| d.join("libnccl.so.2")).find(|p| p.is_file());
    let fix = match found {
        Some(p) => format!(
            "{} is there, but cudarc does not open that name: make a link named libnccl.so to \
             it in a directory on LD_LIBRARY_PATH (mkdir -p ~/nccl-lib && ln -sf {} \
             ~/nccl-lib/libnccl.so && export LD_LIBRARY_PATH=~/nccl-lib:$LD_LIBRARY_PATH)",
            p.display(),
            p.display()
        ),
        None => "install NCCL (e.g. `pip install nvidia-nccl-cu12`, then link libnccl.so to \
                 its lib/libnccl.so.2) and put its directory on LD_LIBRARY_PATH"
            .into(),
    };
    format!(
        "NCCL library not found (tried {}): {fix}; or run with dist.collective = mpi \
         (--collective mpi), which stages the collectives through host memory",
        tried.join(", ")
    )
}

/// A rank's NCCL communicator, on the backend's stream.
pub struct NcclComm {
    comm: sys::ncclComm_t,
    stream: sys::cudaStream_t,
    rank: usize,
    world: usize,
    /// The MPI world the communicator was bootstrapped over (host-side operations); `None`
    /// in a world of one.
    #[cfg(feature = "mpi")]
    mpi: Option<std::rc::Rc<super::MpiComm>>,
}

impl NcclComm {
    /// A world of one on `be`'s GPU (no MPI): the NCCL path checked against the plain one on
    /// a single GPU (`dist.collective = nccl`).
    pub fn single(be: &Cuda) -> Result<NcclComm> {
        probe().map_err(|e| anyhow::anyhow!(e))?;
        let id = nccl::get_uniqueid().map_err(|e| nccl_error(e, "ncclGetUniqueId"))?;
        Self::join(be, id, 0, 1)
    }

    /// This rank's communicator in the MPI world `mpi` (see the module comment). Every rank of
    /// the world calls it, each with the backend of its own GPU.
    #[cfg(feature = "mpi")]
    pub fn over_mpi(be: &Cuda, mpi: std::rc::Rc<super::MpiComm>) -> Result<NcclComm> {
        let host: &dyn Collective<Cpu> = &*mpi;
        let (rank, world) = (host.rank(), host.world());
        let id = bootstrap_id(host, probe(), || {
            let id = nccl::get_uniqueid().map_err(|e| nccl_error(e, "ncclGetUniqueId"))?;
            Ok(id.internal.map(|c| c as u8))
        })?;
        let mut c = Self::join(
            be,
            sys::ncclUniqueId { internal: id.map(|b| b as std::ffi::c_char) },
            rank,
            world,
        )?;
        c.mpi = Some(mpi);
        Ok(c)
    }

    fn join(be: &Cuda, id: sys::ncclUniqueId, rank: usize, world: usize) -> Result<NcclComm> {
        let stream = be.device().stream();
        // ncclCommInitRank takes the GPU of the thread's current context.
        stream.context().bind_to_thread().map_err(|e| anyhow::anyhow!("CUDA context: {e:?}"))?;
        let mut comm = std::mem::MaybeUninit::uninit();
        // SAFETY: `comm` is written by a successful call, which is checked before it is read.
        let comm = unsafe {
            nccl::comm_init_rank(comm.as_mut_ptr(), world as i32, id, rank as i32)
                .map_err(|e| nccl_error(e, "ncclCommInitRank"))?;
            comm.assume_init()
        };
        Ok(NcclComm {
            comm,
            stream: stream.cu_stream() as sys::cudaStream_t,
            rank,
            world,
            #[cfg(feature = "mpi")]
            mpi: None,
        })
    }

    /// The host-side collective: the MPI world, or the trivial one of a world of one.
    fn host(&self) -> &dyn Collective<Cpu> {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.mpi {
            return &**m;
        }
        &Single
    }

    /// Fails on every rank alike unless every rank passed buffers of the same lengths (NCCL
    /// would read or write past a buffer, or wait forever).
    fn same_layout(&self, lens: &[usize], what: &str) -> Result<()> {
        if self.world == 1 {
            return Ok(());
        }
        let mine: Vec<f64> = lens.iter().map(|&n| n as f64).collect();
        let all = self.host().all_gather_host(&mine)?;
        if let Some((r, v)) = all.iter().enumerate().find(|(_, v)| *v != &all[0]) {
            bail!(
                "{what}: rank {r} passed buffers of {} values in all ({} buffers), rank 0 {} ({})",
                v.iter().sum::<f64>(),
                v.len(),
                all[0].iter().sum::<f64>(),
                all[0].len()
            );
        }
        Ok(())
    }

    /// Runs `op` on each non-empty buffer, `GROUP_OPS` calls to an NCCL group.
    fn grouped(
        &self,
        what: &str,
        bufs: &[Buf],
        op: impl Fn(*mut c_void, usize) -> Result<NcclStatus, NcclError>,
    ) -> Result<()> {
        let live: Vec<&Buf> = bufs.iter().filter(|b| !b.is_empty()).collect();
        for part in live.chunks(GROUP_OPS) {
            nccl::group_start().map_err(|e| nccl_error(e, "ncclGroupStart"))?;
            let mut first = Ok(());
            for b in part {
                if first.is_ok() {
                    first = op(ptr(b), b.len()).map(|_| ()).map_err(|e| nccl_error(e, what));
                }
            }
            // The group is closed whatever happened inside it.
            let end = nccl::group_end().map_err(|e| nccl_error(e, what));
            first?;
            end?;
        }
        Ok(())
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // Abort, not destroy: destroy waits for queued operations, and after an error on
        // another rank one of them may wait for that rank forever, so this rank would never
        // reach `World::finish`, whose MPI abort ends the job. A run that ends well has
        // downloaded its results (which waits for the stream), so nothing is in flight here.
        // SAFETY: the communicator is valid and used by no other handle.
        let _ = unsafe { nccl::comm_abort(self.comm) };
    }
}

/// NCCL's bootstrap over the host collective `host`, before `ncclCommInitRank`: every rank
/// says whether it can open NCCL (`probed`) and all fail alike, naming the ranks that cannot,
/// unless all can (a rank failing alone would leave the others waiting in the init); then rank
/// 0 makes the unique id (`make_id`, called there only) and every rank receives its 128 bytes.
/// A rank 0 that cannot make one fails with its reason, the others saying so.
pub fn bootstrap_id(
    host: &dyn Collective<Cpu>,
    probed: Result<(), String>,
    make_id: impl FnOnce() -> Result<[u8; 128]>,
) -> Result<[u8; 128]> {
    let world = host.world();
    let mine = probed.err().unwrap_or_default();
    let all = host.all_gather_bytes(mine.as_bytes())?;
    let bad: Vec<String> = all
        .iter()
        .enumerate()
        .filter(|(_, e)| !e.is_empty())
        .map(|(r, e)| format!("rank {r}: {}", String::from_utf8_lossy(e)))
        .collect();
    if !bad.is_empty() {
        bail!("NCCL is not usable on {} of {world} rank(s): {}", bad.len(), bad.join("; "));
    }
    // An empty message: rank 0 could not make an id (and says why itself).
    let made = (host.rank() == 0).then(make_id);
    let bytes: &[u8] = match &made {
        Some(Ok(id)) => id,
        _ => &[],
    };
    let got = host.all_gather_bytes(bytes)?.swap_remove(0);
    if let Some(Err(e)) = made {
        return Err(e.context("rank 0 could not create the NCCL unique id"));
    }
    got.try_into()
        .map_err(|_| anyhow::anyhow!("rank 0 could not create the NCCL unique id (see its error)"))
}

/// The device address of a buffer, as NCCL takes it.
fn ptr(b: &Buf) -> *mut c_void {
    b.mem().addr() as *mut c_void
}

fn nccl_error(e: NcclError, what: &str) -> anyhow::Error {
    // SAFETY: ncclGetErrorString returns a static string for every result code.
    let s = unsafe { CStr::from_ptr(sys::ncclGetErrorString(e.0)) };
    anyhow::anyhow!("{what} failed: {:?} ({})", e.0, s.to_string_lossy())
}

const F32: sys::ncclDataType_t = sys::ncclDataType_t::ncclFloat32;
const SUM: sys::ncclRedOp_t = sys::ncclRedOp_t::ncclSum;

impl Collective<Cuda> for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn all_reduce_sum(&self, be: &Cuda, bufs: &mut [Buf]) -> Result<()> {
        let lens: Vec<usize> = bufs.iter().map(|b| b.len()).collect();
        self.same_layout(&lens, "all-reduce")?;
        // SAFETY: in place on live device buffers of `n` f32, on the backend's stream.
        self.grouped("ncclAllReduce", bufs, |p, n| unsafe {
            nccl::all_reduce(p, p, n, F32, SUM, self.comm, self.stream)
        })?;
        for b in bufs.iter() {
            be.device().replaced(b.mem());
        }
        Ok(())
    }
    fn broadcast(&self, be: &Cuda, bufs: &mut [Buf], root: usize) -> Result<()> {
        ensure!(root < self.world, "broadcast from rank {root} in a world of {}", self.world);
        let lens: Vec<usize> = bufs.iter().map(|b| b.len()).collect();
        self.same_layout(&lens, "broadcast")?;
        // SAFETY: as above.
        self.grouped("ncclBroadcast", bufs, |p, n| unsafe {
            nccl::broadcast(p, p, n, F32, root as i32, self.comm, self.stream)
        })?;
        for b in bufs.iter() {
            be.device().replaced(b.mem());
        }
        Ok(())
    }
    fn all_reduce_sum_host(&self, xs: &mut [f64]) -> Result<()> {
        self.host().all_reduce_sum_host(xs)
    }
    fn all_gather_host(&self, xs: &[f64]) -> Result<Vec<Vec<f64>>> {
        self.host().all_gather_host(xs)
    }
    fn all_gather_bytes(&self, xs: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.host().all_gather_bytes(xs)
    }
    fn barrier(&self) -> Result<()> {
        self.host().barrier()
    }
    fn reduce_scatter_sum(&self, be: &Cuda, bufs: &[Buf]) -> Result<Buf> {
        let total = flat_len(be, bufs);
        self.same_layout(&[total], "reduce-scatter")?;
        let block = shard(total, self.rank, self.world);
        let mut out = be.zeros(block.len());
        for round in padded_rounds(total, self.world, CHUNK) {
            let send = pack_round(be, bufs, &round);
            let recv = be.zeros(round.count);
            // SAFETY: `send` holds world * count f32, `recv` count, on the backend's stream.
            unsafe {
                nccl::reduce_scatter(
                    ptr(&send),
                    ptr(&recv),
                    round.count,
                    F32,
                    SUM,
                    self.comm,
                    self.stream,
                )
            }
            .map_err(|e| nccl_error(e, "ncclReduceScatter"))?;
            let at = offset_in_block(&round, self.rank, block.start);
            be.copy(&mut out, at.start, &recv, 0, at.len());
        }
        Ok(out)
    }
    fn reduce_scatter_range(
        &self,
        be: &Cuda,
        bufs: &[Buf],
        start: usize,
        total: usize,
    ) -> Result<Buf> {
        // Not the padded ncclReduceScatter: a bucket (one decoder layer, a fraction of the
        // flat vector) meets one or two ranks' blocks, not all of them, so padding every
        // rank's part to the largest would stage world x the bucket. Instead one ncclReduce
        // per rank whose block meets the piece, rooted at that rank, in one NCCL group: the
        // staging is one copy of the piece. NCCL's addition order (not the rank order).
        let n = flat_len(be, bufs);
        let piece = piece_of(start, n, total)?;
        self.same_layout(&[start, n, total], "reduce-scatter of a bucket")?;
        let mine = block_in_piece(total, self.rank, self.world, piece.clone());
        let out = be.zeros(mine.len());
        let sends: Vec<(usize, Buf)> = (0..self.world)
            .map(|q| (q, block_in_piece(total, q, self.world, piece.clone())))
            .filter(|(_, r)| !r.is_empty())
            .map(|(q, r)| (q, flat_slice(be, bufs, r)))
            .collect();
        nccl::group_start().map_err(|e| nccl_error(e, "ncclGroupStart"))?;
        let mut first = Ok(());
        for (q, send) in &sends {
            // The root receives into `out`; the others' receive buffer is not read by NCCL.
            let recv = if *q == self.rank { ptr(&out) } else { ptr(send) };
            if first.is_ok() {
                // SAFETY: `send` holds len f32 on every rank (the same parts everywhere),
                // `out` as many on the root, on the backend's stream.
                first = unsafe {
                    nccl::reduce(
                        ptr(send),
                        recv,
                        send.len(),
                        F32,
                        SUM,
                        *q as i32,
                        self.comm,
                        self.stream,
                    )
                }
                .map(|_| ())
                .map_err(|e| nccl_error(e, "ncclReduce"));
            }
        }
        let end = nccl::group_end().map_err(|e| nccl_error(e, "ncclReduce"));
        first?;
        end?;
        Ok(out)
    }
    fn all_gather(&self, be: &Cuda, mine: &Buf, bufs: &mut [Buf]) -> Result<()> {
        let total = flat_len(be, bufs);
        self.same_layout(&[total], "all-gather")?;
        let block = shard(total, self.rank, self.world);
        ensure!(
            mine.len() == block.len(),
            "all-gather: rank {} passed {} values, its block of {total} holds {}",
            self.rank,
            mine.len(),
            block.len()
        );
        for round in padded_rounds(total, self.world, CHUNK) {
            let at = offset_in_block(&round, self.rank, block.start);
            let mut send = be.zeros(round.count);
            be.copy(&mut send, 0, mine, at.start, at.len());
            let recv = be.zeros(self.world * round.count);
            // SAFETY: `send` holds count f32, `recv` world * count, on the backend's stream.
            unsafe {
                nccl::all_gather(ptr(&send), ptr(&recv), round.count, F32, self.comm, self.stream)
            }
            .map_err(|e| nccl_error(e, "ncclAllGather"))?;
            unpack_round(be, &recv, &round, bufs);
        }
        // The replicas' weights were rewritten whole (by copies): as after MpiComm's upload,
        // each gets a bf16 shadow at its next bf16 GEMM.
        for b in bufs.iter() {
            be.device().replaced(b.mem());
        }
        Ok(())
    }
    fn gather_to_root(&self, xs: &[f32], root: usize) -> Result<Vec<Vec<f32>>> {
        self.host().gather_to_root(xs, root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_nccl_is_named_with_the_fix() {
        let tried = cudarc::get_lib_name_candidates("nccl");
        assert!(tried.iter().any(|n| n == "libnccl.so"), "{tried:?}");
        // Nowhere: install it.
        let none = tempfile::tempdir().unwrap();
        let e = missing_nccl(&tried, &[none.path().to_path_buf()]);
        assert!(e.contains("NCCL library not found (tried libnccl.so, "), "{e}");
        assert!(
            e.contains("pip install nvidia-nccl-cu12") && e.contains("--collective mpi"),
            "{e}"
        );
        // A pip wheel's libnccl.so.2 only: the link to make, with its path.
        let wheel = tempfile::tempdir().unwrap();
        std::fs::write(wheel.path().join("libnccl.so.2"), b"").unwrap();
        let dirs = [none.path().to_path_buf(), wheel.path().to_path_buf()];
        let e = missing_nccl(&tried, &dirs);
        let so2 = wheel.path().join("libnccl.so.2");
        assert!(e.contains(&format!("{} is there", so2.display())), "{e}");
        assert!(e.contains("link named libnccl.so"), "{e}");
    }

    /// The bootstrap on thread ranks: rank 0's id reaches every rank; a rank without NCCL
    /// fails every rank by name; rank 0 failing to make an id fails every rank.
    #[test]
    fn the_unique_id_reaches_every_rank_and_failures_fail_all() {
        use crate::dist::thread_group::on_ranks;
        let id: [u8; 128] = std::array::from_fn(|i| (i * 7 + 3) as u8);
        for world in [1, 2, 3] {
            let made = std::sync::atomic::AtomicUsize::new(0);
            let got = on_ranks(world, |g| {
                bootstrap_id(&g, Ok(()), || {
                    made.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Ok(id)
                })
                .unwrap()
            });
            assert!(got.iter().all(|g| *g == id), "world {world}");
            assert_eq!(made.into_inner(), 1, "only rank 0 makes the id");
        }
        // Rank 1 of 3 has no libnccl: every rank fails, naming it.
        let errs = on_ranks(3, |g| {
            let r = Collective::<Cpu>::rank(&g);
            let probed = if r == 1 { Err("NCCL library not found".into()) } else { Ok(()) };
            bootstrap_id(&g, probed, || Ok(id)).unwrap_err().to_string()
        });
        for e in &errs {
            assert!(e.contains("1 of 3 rank(s): rank 1: NCCL library not found"), "{e}");
        }
        // Rank 0 cannot make an id: it gives its reason, the others point at it.
        let errs = on_ranks(2, |g| {
            bootstrap_id(&g, Ok(()), || anyhow::bail!("ncclGetUniqueId failed: ncclSystemError"))
                .unwrap_err()
        });
        assert!(format!("{:#}", errs[0]).contains("ncclSystemError"), "{:#}", errs[0]);
        assert!(errs[1].to_string().contains("see its error"), "{}", errs[1]);
    }

    /// On this machine: no panic either way, and without NCCL the error names it; with NCCL
    /// (no GPU needed), it makes a unique id, the bootstrap's first call.
    #[test]
    fn probing_never_panics() {
        match probe() {
            Ok(()) => {
                let id = nccl::get_uniqueid().map_err(|e| nccl_error(e, "ncclGetUniqueId"));
                let id = id.unwrap();
                assert!(id.internal.iter().any(|&c| c != 0), "an id of zeros");
                let mut v = 0;
                // SAFETY: writes one int.
                unsafe { sys::ncclGetVersion(&mut v) };
                eprintln!("libnccl is present here: version code {v}, a unique id made");
            }
            Err(e) => {
                eprintln!("{e}");
                assert!(e.starts_with("NCCL library not found (tried libnccl.so"), "{e}")
            }
        }
    }
}
