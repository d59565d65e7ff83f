//! The emulator device: kernels compiled for the host with `kernels/emu/cuda_emu.h` (see
//! build.rs), memory in host allocations, launches run synchronously.
//!
//! The emulator is a hostile GPU (see the top of cuda_emu.h): each launch runs the threads of
//! a block in a [`Schedule`] chosen here, and a device with several schedules runs every
//! launch under each of them from the same inputs and fails unless all give the same bits.
//! `MMR1_EMU_SCHEDULE` (e.g. `forward`, `reverse,random:7`, `ci`) sets the schedules of
//! [`EmuDevice::from_env`]; without it, plain forward order.

mod reach;

use super::alloc::{self, Bf16Operand, Pool};
use super::device::{Arg, Device, GemmIn};
use super::replay::{self, GraphHost, Op, Replay, ReplayStats, Run};
use crate::backend::{cpu::Cpu, memory::MemoryStats, Backend, Tr};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::fmt;
use std::sync::{Arc, Mutex};

extern "C" {
    fn emu_launch(
        name: *const c_char,
        gx: u32,
        gy: u32,
        gz: u32,
        bx: u32,
        by: u32,
        bz: u32,
        shmem: usize,
        args: *mut *mut c_void,
        order: c_int,
        seed: u64,
        dyn_optin: usize,
        err: *mut c_char,
        errlen: usize,
    ) -> c_int;
}

/// Host memory standing in for device memory. Kernels write through raw pointers, so it is
/// held as a raw allocation rather than a Rust slice. Memory from an `EmuDevice` goes back to
/// the device's caching allocator when dropped (see `alloc`).
pub struct EmuMem {
    ptr: *mut u64,
    words: usize,
    /// The pool this memory returns to, and its size class; None: freed on drop.
    home: Option<(Arc<Pool<EmuBlock>>, usize)>,
}

// SAFETY: EmuMem owns its allocation; access goes through &/&mut like any buffer.
unsafe impl Send for EmuMem {}
unsafe impl Sync for EmuMem {}

/// A host allocation of `words` u64, as it sits in the allocator's free lists.
pub struct EmuBlock {
    ptr: *mut u64,
    words: usize,
}

// SAFETY: EmuBlock owns its allocation and nothing else refers to it while it is cached.
unsafe impl Send for EmuBlock {}

/// The alignment of emulated device memory: cuMemAlloc's 256 bytes, so kernels with 16-byte
/// vector accesses (which assume the allocator's alignment) see on the emulator what they
/// see on the GPU.
const EMU_ALIGN: usize = 256;

impl alloc::Block for EmuBlock {
    fn addr(&self) -> u64 {
        self.ptr as u64
    }
}

impl EmuBlock {
    fn layout(words: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(words * 8, EMU_ALIGN).expect("emu block layout")
    }
    fn new(bytes: usize) -> Self {
        let words = bytes.div_ceil(8).max(1);
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(Self::layout(words)) } as *mut u64;
        if ptr.is_null() {
            std::alloc::handle_alloc_error(Self::layout(words));
        }
        let mut b = EmuBlock { ptr, words };
        b.poison();
        b
    }
    /// All ones: every f32 reads as NaN, so an output an op did not write shows up.
    fn poison(&mut self) {
        // SAFETY: ptr holds `words` u64 owned by this block.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.words) }.fill(u64::MAX);
    }
}

impl Drop for EmuBlock {
    fn drop(&mut self) {
        // SAFETY: ptr came from `alloc` with this layout in `new`.
        unsafe { std::alloc::dealloc(self.ptr as *mut u8, Self::layout(self.words)) };
    }
}

impl EmuMem {
    fn bytes(&self) -> usize {
        self.words * 8
    }
}

impl Drop for EmuMem {
    fn drop(&mut self) {
        reach::note_free(self.ptr as u64);
        let block = EmuBlock { ptr: self.ptr, words: self.words };
        if let Some((pool, class)) = self.home.take() {
            pool.shadow_forget(self.ptr as u64);
            pool.give_back(class, block);
        } // else `block` frees the memory here
    }
}

/// The order in which the ready threads of a block run between two yields (barriers,
/// shuffles, votes). Race-free kernels give the same bits under every schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Thread 0 first: hides "thread 0 writes, the others read, no barrier".
    Forward,
    /// The last thread first: hides the same race with the writer above its readers.
    Reverse,
    /// A seeded permutation, new for every round of every block.
    Random(u64),
    /// One warp (`(seed + block index) mod warps`; in a block of one warp, one lane) held back
    /// until nothing else can run.
    Starve(u64),
}

impl Schedule {
    /// The schedules CI runs the kernel suite under: both directions, a random order and a
    /// starved warp.
    pub const CI: [Schedule; 4] =
        [Schedule::Forward, Schedule::Reverse, Schedule::Random(1), Schedule::Starve(0)];

    /// `forward`, `reverse`, `random[:SEED]`, `starve[:SEED]`.
    pub fn parse(s: &str) -> Result<Schedule, String> {
        let (kind, seed) = match s.trim().split_once(':') {
            Some((k, v)) => {
                let seed = v.trim().parse::<u64>().map_err(|_| {
                    format!("schedule `{s}`: `{v}` is not an unsigned integer seed")
                })?;
                (k.trim(), Some(seed))
            }
            None => (s.trim(), None),
        };
        match (kind, seed) {
            ("forward", None) => Ok(Schedule::Forward),
            ("reverse", None) => Ok(Schedule::Reverse),
            ("random", s) => Ok(Schedule::Random(s.unwrap_or(1))),
            ("starve", s) => Ok(Schedule::Starve(s.unwrap_or(0))),
            _ => Err(format!(
                "unknown emulator schedule `{s}`: expected forward, reverse, random[:SEED] or starve[:SEED]"
            )),
        }
    }

    /// A comma-separated list; `ci` stands for [`Schedule::CI`].
    pub fn parse_list(s: &str) -> Result<Vec<Schedule>, String> {
        let mut v = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            if part.trim() == "ci" {
                v.extend(Schedule::CI);
            } else {
                v.push(Schedule::parse(part)?);
            }
        }
        if v.is_empty() {
            return Err(format!("no emulator schedule in `{s}`"));
        }
        Ok(v)
    }

    fn code(self) -> (c_int, u64) {
        match self {
            Schedule::Forward => (0, 0),
            Schedule::Reverse => (1, 0),
            Schedule::Random(s) => (2, s),
            Schedule::Starve(s) => (3, s),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Forward => write!(f, "forward"),
            Schedule::Reverse => write!(f, "reverse"),
            Schedule::Random(s) => write!(f, "random:{s}"),
            Schedule::Starve(s) => write!(f, "starve:{s}"),
        }
    }
}

/// The CUDA execution-model emulator as a `Device`.
pub struct EmuDevice {
    schedules: Vec<Schedule>,
    /// Opted-in maximum dynamic shared memory per kernel (bytes), as the GPU's
    /// `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`.
    dyn_optin: Mutex<HashMap<String, usize>>,
    /// The caching allocator (reused memory is poisoned with NaN before it is handed out).
    pool: Arc<Pool<EmuBlock>>,
    /// `gemm` rounds its operands to bf16 as the GPU's GemmEx path does (`--precision bf16`).
    gemm_bf16: bool,
    /// Keep bf16 shadows of weights (`refresh_bf16_shadow`).
    bf16_shadows: bool,
    /// Keep every bf16 GEMM operand's conversion as its shadow (`MMR1_ACT_SHADOWS`; needs
    /// `bf16_shadows`; see `device::act_shadows_from_env`).
    act_shadows: bool,
    /// Host time per kernel and GEMM when `MMR1_PROFILE=1` (or `with_profile`).
    profile: Option<crate::backend::profile::Totals>,
    /// Repeated stretches (decode steps) replayed from kept units, as the GPU replays a CUDA
    /// graph (`replay`); every unit of device work goes through it.
    replay: Replay<(), EmuGraph>,
    /// The pools replayed stretches allocate from (`alloc::StretchPools`).
    stretch: alloc::StretchPools<EmuBlock>,
}

/// The emulator's stand-in for a CUDA graph: the units kept from the capture (None for a
/// write, whose bytes come from the replayed step).
pub(crate) type EmuGraph = Vec<Option<Run<()>>>;

impl Default for EmuDevice {
    fn default() -> Self {
        EmuDevice::from_env()
    }
}

impl EmuDevice {
    /// Every launch runs under each schedule, from the same inputs; results must agree bit
    /// for bit.
    pub fn with_schedules(schedules: &[Schedule]) -> Self {
        assert!(!schedules.is_empty(), "an emulator needs at least one schedule");
        EmuDevice {
            schedules: schedules.to_vec(),
            dyn_optin: Mutex::new(HashMap::new()),
            pool: Pool::new(alloc::caching_from_env()),
            gemm_bf16: false,
            bf16_shadows: super::device::shadows_from_env(),
            act_shadows: super::device::act_shadows_from_env(),
            profile: crate::backend::profile::enabled().then(Default::default),
            replay: Replay::with_mode(replay::mode_from_env(replay::ReplayMode::Always)),
            stretch: Default::default(),
        }
    }
    /// Schedules from `MMR1_EMU_SCHEDULE` (see [`Schedule::parse_list`]), forward without it.
    /// Panics on a malformed value, naming the variable.
    pub fn from_env() -> Self {
        match std::env::var("MMR1_EMU_SCHEDULE") {
            Ok(v) => EmuDevice::with_schedules(
                &Schedule::parse_list(&v).unwrap_or_else(|e| panic!("MMR1_EMU_SCHEDULE: {e}")),
            ),
            Err(_) => EmuDevice::with_schedules(&[Schedule::Forward]),
        }
    }
    /// With the caching allocator on or off (default: `MMR1_CACHING_ALLOCATOR`, on); call it
    /// before allocating anything.
    pub fn with_caching(mut self, on: bool) -> Self {
        self.pool = Pool::new(on);
        self
    }
    /// With bf16 shadows of weights on or off (default: `MMR1_BF16_SHADOWS`, on).
    pub fn with_bf16_shadows(mut self, on: bool) -> Self {
        self.bf16_shadows = on;
        self
    }
    /// With bf16 shadows of GEMM operands that are not weights (activations) on or off
    /// (default: `MMR1_ACT_SHADOWS`, on; they need `with_bf16_shadows(true)`).
    pub fn with_act_shadows(mut self, on: bool) -> Self {
        self.act_shadows = on;
        self
    }
    /// With repeated stretches replayed (`replay`) or every unit run as it comes (default:
    /// `MMR1_GRAPHS`, on).
    pub fn with_replay(mut self, on: bool) -> Self {
        self.replay = Replay::new(on);
        self
    }
    /// With replay in `mode` (`ReplayMode::Auto` times the host's steps, so which steps run
    /// as graphs varies from run to run; their results do not).
    pub fn with_replay_mode(mut self, mode: replay::ReplayMode) -> Self {
        self.replay = Replay::with_mode(mode);
        self
    }
    /// With per-kernel timing on (as `MMR1_PROFILE=1` turns it on); the emulator's times are
    /// the host's, useful to check what a step launches, not how fast a GPU runs it.
    pub fn with_profile(mut self) -> Self {
        self.profile = Some(Default::default());
        self
    }
    /// Runs `f` and adds its host time to `name` when profiling.
    fn timed<R>(&self, name: impl FnOnce() -> String, f: impl FnOnce() -> R) -> R {
        let Some(p) = &self.profile else { return f() };
        let t = std::time::Instant::now();
        let r = f();
        p.add(&name(), t.elapsed().as_secs_f64());
        r
    }
    /// Runs a unit of device work now, or holds it while a repeated stretch is replayed.
    fn submit(&self, op: Op<()>) {
        self.replay.submit(self, op).unwrap_or_else(|e| panic!("{e}"));
    }
    /// Device work is about to be read by the host: held units run first.
    fn flush(&self) {
        self.replay.flush(self).unwrap_or_else(|e| panic!("{e}"));
    }
    /// How many buffers have a bf16 shadow now.
    pub fn bf16_shadow_count(&self) -> usize {
        self.pool.shadow_count()
    }
    /// `x` (f32, `n` values) as bf16 bits in new memory, by the GPU's conversion kernel.
    fn to_bf16(&self, x: &EmuMem, n: usize) -> EmuMem {
        let out = self.alloc(n * 2);
        super::device::launch_f32_to_bf16(self, &out, x, n);
        out
    }
    /// Converts the first `n` values of `mem` into pooled memory that the shadow registry
    /// then owns as `mem`'s bf16 shadow.
    fn make_bf16_shadow(&self, mem: &EmuMem, n: usize) {
        let tmp = self.to_bf16(mem, n);
        self.adopt_bf16_shadow(mem, tmp, n);
    }
    /// This device as the owner of its allocations (`reach`).
    fn owner(&self) -> reach::Owner {
        Arc::as_ptr(&self.pool) as reach::Owner
    }
    pub fn schedules(&self) -> &[Schedule] {
        &self.schedules
    }

    fn launch_untimed(
        &self,
        name: &str,
        grid: [u32; 3],
        block: [u32; 3],
        shared_bytes: u32,
        args: &[Arg<'_, EmuMem>],
    ) {
        // A buffer the kernel may write loses its bf16 shadow.
        for m in super::device::written_buffers(name, args) {
            self.pool.shadow_forget(m.ptr as u64);
        }
        // Every value is stored in 8 little-endian bytes; the kernel thunk reads the width of
        // its parameter type from the front, as cuLaunchKernel's argument array is read.
        let shadow = |m: &EmuMem, n: usize| {
            self.pool.with_shadows([(m.ptr as u64, n)], |[b]| b.map(|b| b.ptr as u64))
        };
        let slots = args.iter().map(|a| a.slot(|m| m.ptr as u64, shadow));
        let (mut key, vals) =
            replay::kernel_key(replay::name_word(name), grid, block, shared_bytes, slots);
        let cname = CString::new(name).unwrap();
        let optin = self.dyn_optin.lock().unwrap().get(name).copied().unwrap_or(0);
        key.push(optin as u64);
        // The buffers a several-schedule run compares: every pointer argument, once each, and
        // (found when the unit runs, when a table's contents are there) those its device
        // tables point into (`reach`).
        let bufs = reach::arg_bufs(args);
        let owner = self.owner();
        let schedules = self.schedules.clone();
        let run = move |_: &()| {
            let name = cname.to_string_lossy();
            let shape = format!(
                "grid ({},{},{}) block ({},{},{}) shared {shared_bytes} B",
                grid[0], grid[1], grid[2], block[0], block[1], block[2]
            );
            let once = |s: Schedule| {
                launch_once(&cname, grid, block, shared_bytes, &vals, s, optin).map_err(|msg| {
                    format!("emulated kernel {name} failed [{shape}, schedule {s}]: {msg}")
                })
            };
            if schedules.len() == 1 {
                return once(schedules[0]);
            }
            // Several schedules: run each from the same inputs and compare every buffer the
            // kernel could write.
            let regions = reach::regions(&bufs, owner);
            let before = reach::snapshot(&regions);
            once(schedules[0])?;
            let first = reach::snapshot(&regions);
            for &s in &schedules[1..] {
                reach::restore(&regions, &before);
                once(s)?;
                let now = reach::snapshot(&regions);
                if let Some(d) = reach::first_difference(&regions, &first, &now) {
                    return Err(format!(
                        "emulated kernel {name} [{shape}] is schedule-dependent (a race?): schedule {} \
                         and schedule {s} differ in {d}",
                        schedules[0]
                    ));
                }
            }
            Ok(())
        };
        self.submit(Op::Work { key, run: Arc::new(run) });
    }
    /// `parts`: the output's column blocks, each computed as its own product with its rows of
    /// `b` (`Tr::T`: a stack of weights, `Device::gemm_stacked`); `[n]` for a plain GEMM.
    #[allow(clippy::too_many_arguments)]
    fn gemm_untimed(
        &self,
        out: &mut EmuMem,
        a: GemmIn<'_, EmuMem>,
        ta: Tr,
        b: GemmIn<'_, EmuMem>,
        tb: Tr,
        m: usize,
        parts: &[usize],
        k: usize,
        beta: f32,
    ) -> bool {
        let n: usize = parts.iter().sum();
        assert!(parts.len() == 1 || (tb == Tr::T && beta == 0.0), "emu gemm: a stack is Tr::T");
        let parts = parts.to_vec();
        // The emulator has no cuBLAS: the CPU GEMM on host copies stands in for it.
        self.pool.shadow_forget(out.ptr as u64);
        let bytes = |x: GemmIn<'_, EmuMem>, len: usize| match x {
            GemmIn::F32(mem) => mem.bytes() >= len * 4,
            GemmIn::Bf16(mem) => mem.bytes() >= len * 2,
        };
        assert!(
            bytes(a, m * k) && bytes(b, k * n) && out.bytes() >= m * n * 4,
            "emu gemm past the end of a buffer"
        );
        // Where each operand is read from: its f32 values, or bf16 bits (what GemmEx with bf16
        // A and B reads: a bf16-stored operand as it is; an f32 one converted by the GPU
        // path's conversion kernel, run here on the emulator so the profile counts its
        // launches as the GPU's does, or its bf16 shadow as it is, as `Pool::bf16_operand`
        // decides on both devices). Decided now (host bookkeeping); the memory is read when
        // the unit runs.
        let mut temps = Vec::new();
        let mut source = |x: GemmIn<'_, EmuMem>, len: usize| -> (u64, bool) {
            if !self.gemm_bf16 {
                return (x.f32().ptr as u64, false);
            }
            let mem = match x {
                GemmIn::Bf16(mem) => return (mem.ptr as u64, true),
                GemmIn::F32(mem) => mem,
            };
            let keep = self.bf16_shadows && self.act_shadows;
            match self.pool.bf16_operand(mem.ptr as u64, len, keep) {
                Bf16Operand::Shadow => {}
                Bf16Operand::ConvertAndKeep => self.make_bf16_shadow(mem, len),
                Bf16Operand::Convert => {
                    let t = self.to_bf16(mem, len);
                    let at = t.ptr as u64;
                    temps.push(t); // back to the pool after this call, as on the GPU
                    return (at, true);
                }
            }
            let blk = self.pool.with_shadows([(mem.ptr as u64, len)], |[sh]| {
                sh.expect("a shadowed operand").ptr as u64
            });
            (blk, true)
        };
        let (sa, sb) = (source(a, m * k), source(b, k * n));
        let o = out.ptr as u64;
        let key: Vec<u64> = vec![
            replay::KEY_GEMM,
            sa.0,
            sa.1 as u64,
            sb.0,
            sb.1 as u64,
            o,
            (ta == Tr::T) as u64,
            (tb == Tr::T) as u64,
            m as u64,
            n as u64,
            k as u64,
            beta.to_bits() as u64,
        ]
        .into_iter()
        .chain(parts.iter().skip(1).map(|&p| p as u64))
        .collect();
        let run = move |_: &()| {
            // SAFETY: the addresses are pool blocks of at least these many values (checked
            // above for f32 operands; a bf16 shadow or conversion covers `len` values), alive
            // while the unit can run (the pool keeps cached blocks).
            let read = |(at, bf16): (u64, bool), len: usize| -> Vec<f32> {
                if bf16 {
                    let bits = unsafe { std::slice::from_raw_parts(at as *const u16, len) };
                    bits.iter().map(|&b| half::bf16::from_bits(b).to_f32()).collect()
                } else {
                    unsafe { std::slice::from_raw_parts(at as *const f32, len) }.to_vec()
                }
            };
            let (av, bv) = (read(sa, m * k), read(sb, k * n));
            let outs = unsafe { std::slice::from_raw_parts_mut(o as *mut f32, m * n) };
            // The products and sums stay f32, as CUBLAS_COMPUTE_32F accumulates.
            let mut ov = if beta == 0.0 { vec![0.0; m * n] } else { outs.to_vec() };
            if parts.len() == 1 {
                Cpu.matmul(&mut ov, &av, ta, &bv, tb, m, n, k, beta);
            } else {
                let mut at = 0;
                for &nj in &parts {
                    let mut oj = vec![0.0; m * nj];
                    let bj = bv[at * k..(at + nj) * k].to_vec();
                    Cpu.matmul(&mut oj, &av, ta, &bj, tb, m, nj, k, 0.0);
                    for (row, part) in ov.chunks_mut(n).zip(oj.chunks(nj.max(1))) {
                        row[at..at + nj].copy_from_slice(part);
                    }
                    at += nj;
                }
            }
            outs.copy_from_slice(&ov);
            Ok(())
        };
        self.submit(Op::Work { key, run: Arc::new(run) });
        drop(temps);
        true
    }
}

/// Units of work only the emulator has: poisoning a reused block.
const KEY_POISON: u64 = 0x100;

impl GraphHost for EmuDevice {
    type Stream = ();
    type Graph = EmuGraph;
    fn run_now(&self, run: &Run<()>) -> Result<(), String> {
        run(&())
    }
    fn write_now(&self, dst: u64, bytes: &[u8]) {
        // SAFETY: `write` checked the length against the buffer at `dst`, a pool block.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst as *mut u8, bytes.len()) };
    }
    fn capture(&self, ops: &[Op<()>]) -> Result<EmuGraph, String> {
        Ok(ops
            .iter()
            .map(|op| match op {
                Op::Work { run, .. } => Some(run.clone()),
                Op::Write { .. } => None,
            })
            .collect())
    }
    fn launch(&self, graph: &mut EmuGraph, ops: &[Op<()>]) -> Result<(), String> {
        // The kept units, not the new ones: a key that missed something shows as wrong results.
        for (unit, op) in graph.iter().zip(ops) {
            match (unit, op) {
                (Some(run), Op::Work { .. }) => run(&())?,
                (None, Op::Write { dst, bytes }) => self.write_now(*dst, bytes),
                _ => return Err("a replayed graph and its step disagree".into()),
            }
        }
        Ok(())
    }
}

/// One launch under one schedule; Err(message) on a fault.
#[allow(clippy::too_many_arguments)]
fn launch_once(
    name: &CStr,
    grid: [u32; 3],
    block: [u32; 3],
    shared_bytes: u32,
    vals: &[u64],
    schedule: Schedule,
    dyn_optin: usize,
) -> Result<(), String> {
    // The kernel thunk reads each argument through a pointer to its 8-byte slot.
    let mut vals = vals.to_vec();
    let mut ptrs: Vec<*mut c_void> =
        vals.iter_mut().map(|v| v as *mut u64 as *mut c_void).collect();
    let mut err = vec![0 as c_char; 512];
    let (order, seed) = schedule.code();
    // SAFETY: args point at live values; buffers outlive the synchronous launch.
    let rc = unsafe {
        emu_launch(
            name.as_ptr(),
            grid[0],
            grid[1],
            grid[2],
            block[0],
            block[1],
            block[2],
            shared_bytes as usize,
            ptrs.as_mut_ptr(),
            order,
            seed,
            dyn_optin,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: the emulator wrote a NUL-terminated message into err.
    Err(unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned())
}

impl Device for EmuDevice {
    type Mem = EmuMem;
    fn name(&self) -> String {
        let s: Vec<String> = self.schedules.iter().map(|s| s.to_string()).collect();
        format!("cuda-emu (kernels on the host; schedules {})", s.join(","))
    }
    /// The emulator models wgmma (kernels/emu/wgmma.h).
    fn has_wgmma(&self) -> bool {
        true
    }
    fn alloc(&self, bytes: usize) -> EmuMem {
        let prefer = self.replay.preferred_alloc();
        let pool = self.stretch.current().unwrap_or_else(|| self.pool.clone());
        let (block, class, cached) =
            pool.take_preferring(alloc::size_class(bytes), &prefer, EmuBlock::new);
        self.replay.note_alloc(block.ptr as u64);
        let block = std::mem::ManuallyDrop::new(block);
        // Stale data must not leak into results: a reused block reads as NaN, like fresh
        // memory. A unit of work, so that it lands in order with work held for a replay; not
        // inside a replayed stretch (the GPU has no such unit: a stretch's units must not
        // depend on whether its pool had the block cached yet, and every step rewrites what
        // the step before wrote there).
        let in_stretch = !Arc::ptr_eq(&pool, &self.pool);
        if cached && !in_stretch {
            let (ptr, words) = (block.ptr as usize, block.words);
            self.submit(Op::Work {
                key: vec![KEY_POISON, ptr as u64, words as u64],
                run: Arc::new(move |_: &()| {
                    // SAFETY: a pool block of `words` u64, alive while the pool holds it.
                    unsafe { std::slice::from_raw_parts_mut(ptr as *mut u64, words) }
                        .fill(u64::MAX);
                    Ok(())
                }),
            });
        }
        let mem = EmuMem { ptr: block.ptr, words: block.words, home: Some((pool, class)) };
        reach::note_alloc(&mem, self.owner());
        mem
    }
    fn upload(&self, host: &[u8]) -> EmuMem {
        let mut m = self.alloc(host.len());
        self.write(&mut m, host);
        if self.gemm_bf16 && self.bf16_shadows {
            // Maybe a weight: its first bf16 GEMM keeps the converted copy.
            self.pool.mark_pristine(m.ptr as u64);
        }
        m
    }
    fn write(&self, mem: &mut EmuMem, host: &[u8]) {
        assert!(host.len() <= mem.bytes(), "emu write past the end of a buffer");
        self.pool.note_upload(host.len());
        self.pool.shadow_forget(mem.ptr as u64);
        self.replay.submit_write(self, mem.ptr as u64, host).unwrap_or_else(|e| panic!("{e}"));
    }
    fn download(&self, mem: &EmuMem, bytes: usize) -> Vec<u8> {
        assert!(bytes <= mem.bytes(), "emu read past the end of a buffer");
        self.flush();
        self.pool.note_download(bytes);
        // SAFETY: bounds checked above; no unit of work is held.
        unsafe { std::slice::from_raw_parts(mem.ptr as *const u8, bytes).to_vec() }
    }
    fn set_max_dynamic_shared(&self, name: &str, bytes: u32) {
        self.dyn_optin.lock().unwrap().insert(name.to_string(), bytes as usize);
    }
    fn launch(
        &self,
        name: &str,
        grid: [u32; 3],
        block: [u32; 3],
        shared_bytes: u32,
        args: &[Arg<'_, EmuMem>],
    ) {
        self.timed(
            || name.to_string(),
            || self.launch_untimed(name, grid, block, shared_bytes, args),
        )
    }
    fn gemm(
        &self,
        out: &mut EmuMem,
        a: GemmIn<'_, EmuMem>,
        ta: Tr,
        b: GemmIn<'_, EmuMem>,
        tb: Tr,
        m: usize,
        n: usize,
        k: usize,
        beta: f32,
    ) -> bool {
        let name = || super::device::gemm_name(self.gemm_bf16, m, n, k, ta, tb);
        self.timed(name, || self.gemm_untimed(out, a, ta, b, tb, m, &[n], k, beta))
    }
    fn gemm_stacked(
        &self,
        out: &mut EmuMem,
        a: GemmIn<'_, EmuMem>,
        b: GemmIn<'_, EmuMem>,
        m: usize,
        ns: &[usize],
        k: usize,
    ) -> bool {
        let n = ns.iter().sum();
        let name = || super::device::gemm_name(self.gemm_bf16, m, n, k, Tr::N, Tr::T);
        self.timed(name, || self.gemm_untimed(out, a, Tr::N, b, Tr::T, m, ns, k, 0.0))
    }
    fn synchronize(&self) {
        self.flush();
    }
    fn memory_stats(&self) -> Option<MemoryStats> {
        Some(self.stretch.stats_with(self.pool.stats()))
    }
    fn replay_begin(&self, tag: u64) {
        self.replay.begin_in(tag, &self.stretch, &self.pool);
    }
    fn replay_end(&self) {
        self.replay.end_in(self, &self.stretch);
    }
    fn replay_stats(&self) -> Option<ReplayStats> {
        self.replay.enabled().then(|| self.replay.stats())
    }
    fn kernel_profile(&self) -> Vec<crate::backend::profile::KernelTime> {
        self.profile.as_ref().map_or_else(Vec::new, |p| p.sorted())
    }
    fn set_gemm_precision(&mut self, bf16: bool) -> Result<(), String> {
        self.gemm_bf16 = bf16;
        Ok(())
    }
    fn gemm_precision_bf16(&self) -> bool {
        self.gemm_bf16
    }
    fn refresh_bf16_shadow(&self, mem: &EmuMem, n: usize) {
        if self.wants_bf16_shadow() && n > 0 {
            self.make_bf16_shadow(mem, n);
        }
    }
    fn addr(&self, mem: &EmuMem) -> u64 {
        mem.ptr as u64
    }
    fn wants_bf16_shadow(&self) -> bool {
        self.gemm_bf16 && self.bf16_shadows
    }
    fn wants_act_shadow(&self) -> bool {
        self.gemm_bf16 && self.bf16_shadows && self.act_shadows
    }
    fn adopt_bf16_shadow(&self, mem: &EmuMem, mut shadow: EmuMem, n: usize) {
        let (home, class) = shadow.home.take().expect("emulator memory comes from the pool");
        let block = EmuBlock { ptr: shadow.ptr, words: shadow.words };
        reach::note_free(shadow.ptr as u64);
        std::mem::forget(shadow); // its block now belongs to the registry
        self.pool.shadow_insert_from(mem.ptr as u64, block, class, n, home);
    }
    fn forget_bf16_shadow(&self, mem: &EmuMem) {
        self.pool.shadow_forget(mem.ptr as u64);
    }
    fn has_bf16_shadow(&self, mem: &EmuMem, n: usize) -> bool {
        self.pool.with_shadows([(mem.ptr as u64, n)], |[b]| b.is_some())
    }
    fn bf16_shadow_bits(&self, mem: &EmuMem, n: usize) -> Option<Vec<u16>> {
        self.flush();
        self.pool.with_shadows([(mem.ptr as u64, n)], |[s]| {
            // SAFETY: a shadow block that covers `n` values holds at least `n` bf16.
            s.map(|b| unsafe { std::slice::from_raw_parts(b.ptr as *const u16, n) }.to_vec())
        })
    }
}
