//! The real GPU through cudarc: driver API for memory and launches (PTX embedded by build.rs,
//! or compiled at first use by NVRTC when the build had none), cuBLAS for GEMM.

use super::alloc::{self, Bf16Operand, Pool};
use super::device::{Arg, Device, GemmIn};
use super::replay::{self, GraphHost, Op, Replay, ReplayStats, Run};
use super::CudaBackend;
use crate::backend::memory::MemoryStats;
use crate::backend::Tr;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

mod kernels {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// Checks for a driver and a device without panicking (cudarc panics when libcuda is absent).
pub fn probe(ordinal: usize) -> Result<String, String> {
    // SAFETY: only tries to open the library.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("no CUDA driver (libcuda.so not found)".into());
    }
    cudarc::driver::result::init()
        .map_err(|e| format!("CUDA driver failed to initialize: {e:?}"))?;
    let n = cudarc::driver::result::device::get_count()
        .map_err(|e| format!("cannot count CUDA devices: {e:?}"))?;
    if ordinal >= n as usize {
        return Err(if n == 0 {
            "no CUDA device".into()
        } else {
            format!("no CUDA device {ordinal} ({n} present)")
        });
    }
    let dev = cudarc::driver::result::device::get(ordinal as i32).map_err(|e| format!("{e:?}"))?;
    let name = cudarc::driver::result::device::get_name(dev).map_err(|e| format!("{e:?}"))?;
    Ok(format!("cuda:{ordinal} ({name})"))
}

/// Device memory from the caching allocator: derefs to the cudarc slice (of the size class's
/// length, at least the bytes asked for) and goes back to the device's free lists when dropped.
pub struct CudaMem {
    slice: Option<CudaSlice<u8>>,
    class: usize,
    pool: Arc<Pool<CudaSlice<u8>>>,
    /// The device address (the key of this memory's bf16 shadow, if it gets one).
    addr: u64,
}

impl CudaMem {
    /// The device address of the first byte.
    pub fn addr(&self) -> u64 {
        self.addr
    }
}

impl std::ops::Deref for CudaMem {
    type Target = CudaSlice<u8>;
    fn deref(&self) -> &CudaSlice<u8> {
        self.slice.as_ref().expect("CudaMem holds its slice until dropped")
    }
}

impl std::ops::DerefMut for CudaMem {
    fn deref_mut(&mut self) -> &mut CudaSlice<u8> {
        self.slice.as_mut().expect("CudaMem holds its slice until dropped")
    }
}

impl Drop for CudaMem {
    fn drop(&mut self) {
        if let Some(s) = self.slice.take() {
            self.pool.shadow_forget(self.addr);
            // Every op runs on the device's one stream, so work queued on this memory is
            // ordered before any later user's: no event is needed before reuse.
            self.pool.give_back(self.class, s);
        }
    }
}

pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    funcs: Mutex<HashMap<String, CudaFunction>>,
    /// The dynamic shared memory limit each kernel has been given (`set_max_dynamic_shared`
    /// sets it once, not at every launch: a driver call per flash launch otherwise).
    dyn_smem: Mutex<HashMap<String, u32>>,
    blas: Option<cudarc::cublas::CudaBlas>,
    /// Matmuls as bf16 tensor-core GEMMs (operands rounded to bf16, f32 accumulation and
    /// output) instead of f32 SGEMM. From `MMR1_GEMM=bf16`; `set_gemm_bf16` overrides.
    gemm_bf16: bool,
    /// The caching allocator of this device's memory.
    pool: Arc<Pool<CudaSlice<u8>>>,
    /// Keep bf16 shadows of weights (`refresh_bf16_shadow`; `MMR1_BF16_SHADOWS`).
    bf16_shadows: bool,
    /// Keep every bf16 GEMM operand's conversion as its shadow (`MMR1_ACT_SHADOWS`; needs
    /// `bf16_shadows`; see `device::act_shadows_from_env`).
    act_shadows: bool,
    name: String,
    /// Compute capability 9.0 (H100, H200): the module is the compute_90a PTX, whose kernels
    /// may use wgmma (`Device::has_wgmma`).
    sm90: bool,
    /// Per-kernel times when `MMR1_PROFILE=1`.
    profile: Option<GpuProfile>,
    /// Repeated stretches (decode steps) replayed as CUDA graphs (`replay`): every kernel
    /// launch, GEMM and upload goes through it.
    replay: Replay<Arc<CudaStream>, GpuGraph>,
    /// The stream graphs are captured on (the device's own is the legacy default stream, on
    /// which capture is not allowed); made at the first capture.
    capture_stream: OnceLock<Arc<CudaStream>>,
    /// The pools replayed stretches allocate from (`alloc::StretchPools`).
    stretch: alloc::StretchPools<CudaSlice<u8>>,
    /// cuBLAS's workspace when graphs are on (set on the handle; dropped after it).
    _blas_workspace: Option<CudaSlice<u8>>,
}

/// A captured decode step: the executable graph, the pinned host memory its copies read the
/// step's uploads from (one range per write, in order), and the event after its last launch
/// (the next launch rewrites that memory only once the graph has read it).
pub(crate) struct GpuGraph {
    graph: cudarc::driver::CudaGraph,
    staging: Pinned,
    offsets: Vec<usize>,
    done: Option<cudarc::driver::CudaEvent>,
}

// SAFETY: the graph and its memory are used by the device's single thread of launches at a
// time (under the replay lock).
unsafe impl Send for GpuGraph {}

/// Page-locked host memory (a captured copy's source must be pinned to be captured).
struct Pinned {
    ptr: *mut u8,
    len: usize,
}

impl Pinned {
    fn new(len: usize) -> Result<Self, String> {
        // SAFETY: a plain allocation; freed in Drop.
        let ptr = unsafe { cudarc::driver::result::malloc_host(len.max(16), 0) }
            .map_err(|e| format!("cuMemHostAlloc of {len} bytes: {e:?}"))?;
        Ok(Pinned { ptr: ptr as *mut u8, len })
    }
    fn range(&self, off: usize, len: usize) -> &[u8] {
        assert!(off + len <= self.len, "pinned range out of bounds");
        // SAFETY: in bounds (checked), owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.add(off), len) }
    }
    fn fill(&mut self, off: usize, bytes: &[u8]) {
        assert!(off + bytes.len() <= self.len, "pinned range out of bounds");
        // SAFETY: in bounds (checked), owned by self; no copy reads it now (the caller waited).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(off), bytes.len()) };
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: allocated by cuMemHostAlloc in `new`.
        let _ = unsafe { cudarc::driver::result::free_host(self.ptr as *mut _) };
    }
}

/// A cuBLAS handle moved into a unit of work (the handle outlives the device's graphs).
#[derive(Clone, Copy)]
struct BlasHandle(cudarc::cublas::sys::cublasHandle_t);
// SAFETY: cuBLAS handles may be used from any thread, one call at a time (the replay lock).
unsafe impl Send for BlasHandle {}
unsafe impl Sync for BlasHandle {}

impl BlasHandle {
    // A method, so that a closure captures the whole (Send) wrapper, not its raw field.
    fn raw(self) -> cudarc::cublas::sys::cublasHandle_t {
        self.0
    }
}

/// A loaded kernel moved into a unit of work (its module stays loaded with the device).
#[derive(Clone, Copy)]
struct KernelFn(cudarc::driver::sys::CUfunction);
// SAFETY: CUfunction handles may be launched from any thread.
unsafe impl Send for KernelFn {}
unsafe impl Sync for KernelFn {}

impl KernelFn {
    fn raw(self) -> cudarc::driver::sys::CUfunction {
        self.0
    }
}

/// CUDA events recorded around each launch and GEMM, read (and summed per name) only when
/// the profile is asked for, so profiling adds no synchronization to the step.
struct GpuProfile {
    pending: Mutex<Vec<(String, cudarc::driver::CudaEvent, cudarc::driver::CudaEvent)>>,
    totals: crate::backend::profile::Totals,
}

// SAFETY: the cuBLAS handle is only used on this device's single stream; the CUDA driver API
// and cuBLAS are thread-safe for that use.
unsafe impl Send for CudaDevice {}
unsafe impl Sync for CudaDevice {}

fn cache_dir() -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("MMR1_CACHE_DIR") {
        return d.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("mmr1-fast")
}

/// Whether each launch is checked and waited for: always in debug and test builds, in
/// release builds when MMR1_SYNC_LAUNCHES=1 (it costs the overlap of host and device).
fn check_launches() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        cfg!(debug_assertions) || std::env::var("MMR1_SYNC_LAUNCHES").is_ok_and(|v| v == "1")
    })
}

/// PTX for `arch`: embedded at build time, else compiled now by NVRTC and cached on disk.
fn ptx_for(arch: &'static str) -> Result<String, String> {
    if let Some((_, p)) = kernels::PTX.iter().find(|(a, _)| *a == arch) {
        return Ok(p.to_string());
    }
    // FNV-1a of the source: a stable cache key across builds.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in kernels::SOURCE.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    let path = cache_dir().join(format!("kernels-{h:016x}-{arch}.ptx"));
    if let Ok(p) = std::fs::read_to_string(&path) {
        return Ok(p);
    }
    // SAFETY: only tries to open the library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err("the binary holds no PTX (built without NVRTC) and NVRTC is not available to compile the kernels".into());
    }
    let include: Vec<String> = std::env::var("CUDA_INCLUDE_DIR")
        .ok()
        .into_iter()
        .chain(["/usr/local/cuda/include".to_string()])
        .filter(|d| std::path::Path::new(d).is_dir())
        .collect();
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch),
        include_paths: include,
        options: vec!["--std=c++17".into()],
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(kernels::SOURCE, opts)
        .map_err(|e| format!("NVRTC failed: {e:?}"))?;
    let text = ptx.to_src();
    let _ = std::fs::create_dir_all(path.parent().unwrap());
    let _ = std::fs::write(&path, &text);
    Ok(text)
}

impl CudaDevice {
    /// GPU `ordinal`, replaying repeated decode steps as CUDA graphs where they measure
    /// faster than op by op (`MMR1_GRAPHS=auto`, the default; `1` always, `0` never; never
    /// with `MMR1_PROFILE`, whose events time each launch).
    pub fn new(ordinal: usize) -> Result<Self, String> {
        // Graphs where they measure faster (`ReplayMode::Auto`); none while profiling, whose
        // per-kernel events a graph would hide.
        let mode = if crate::backend::profile::enabled() {
            replay::ReplayMode::Off
        } else {
            replay::mode_from_env(replay::ReplayMode::Auto)
        };
        Self::with_replay_mode(ordinal, mode)
    }
    /// GPU `ordinal` with graph replay always on or off, whatever the environment says (a
    /// test compares both in one process).
    pub fn with_replay(ordinal: usize, replay_on: bool) -> Result<Self, String> {
        let mode = if replay_on { replay::ReplayMode::Always } else { replay::ReplayMode::Off };
        Self::with_replay_mode(ordinal, mode)
    }
    /// GPU `ordinal` with graph replay in `mode`, whatever the environment says.
    pub fn with_replay_mode(ordinal: usize, mode: replay::ReplayMode) -> Result<Self, String> {
        let name = probe(ordinal)?;
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| format!("cannot create a CUDA context: {e:?}"))?;
        // Every operation runs in order on one stream (graphs are captured on a second one,
        // which runs nothing): cudarc's per-buffer events would only add driver calls, the
        // more so once a second stream exists.
        // SAFETY: no buffer is shared between streams that run work.
        unsafe { ctx.disable_event_tracking() };
        let (major, _) = ctx.compute_capability().map_err(|e| format!("{e:?}"))?;
        if major < 8 {
            return Err(format!(
                "{name}: compute capability {major}.x is below the 8.0 the kernels need"
            ));
        }
        // compute_90a PTX (wgmma: kernels/wgmma.cuh) runs on sm_90 alone; every other
        // architecture from 8.0 on (Blackwell included) JIT-compiles the compute_80 PTX.
        let sm90 = major == 9;
        let arch = if sm90 { "compute_90a" } else { "compute_80" };
        let ptx = ptx_for(arch)?;
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .map_err(|e| format!("cannot load the kernels ({arch}) on {name}: {e:?}"))?;
        let stream = ctx.default_stream();
        // SAFETY: only tries to open the library.
        let blas = if unsafe { cudarc::cublas::sys::is_culib_present() } {
            cudarc::cublas::CudaBlas::new(stream.clone()).ok()
        } else {
            None
        };
        let gemm_bf16 = super::precision::gemm_override()?.unwrap_or(false);
        // With graphs, cuBLAS gets a workspace of its own up front (32 MiB, its default size
        // on Hopper), so that no call inside a capture allocates one.
        let blas_workspace = match (&blas, mode != replay::ReplayMode::Off) {
            (Some(b), true) => {
                const BYTES: usize = 32 << 20;
                // SAFETY: scratch memory cuBLAS owns the contents of.
                let ws = unsafe { stream.alloc::<u8>(BYTES) }
                    .map_err(|e| format!("cannot allocate cuBLAS's workspace: {e:?}"))?;
                let p = raw_addr(&ws, &stream);
                // SAFETY: the handle is this device's; the workspace outlives it (a field).
                let rc = unsafe {
                    cudarc::cublas::sys::cublasSetWorkspace_v2(*b.handle(), p as *mut _, BYTES)
                };
                if rc != cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                    return Err(format!("cublasSetWorkspace: {rc:?}"));
                }
                Some(ws)
            }
            _ => None,
        };
        Ok(CudaDevice {
            ctx,
            stream,
            module,
            funcs: Mutex::new(HashMap::new()),
            dyn_smem: Mutex::new(HashMap::new()),
            blas,
            gemm_bf16,
            pool: Pool::new(alloc::caching_from_env()),
            bf16_shadows: super::device::shadows_from_env(),
            act_shadows: super::device::act_shadows_from_env(),
            name,
            sm90,
            profile: crate::backend::profile::enabled().then(|| GpuProfile {
                pending: Mutex::new(Vec::new()),
                totals: Default::default(),
            }),
            replay: Replay::with_mode(mode),
            _blas_workspace: blas_workspace,
            capture_stream: OnceLock::new(),
            stretch: Default::default(),
        })
    }
    /// The one stream every operation of this device runs on (NCCL's collectives are queued
    /// on it too, so they are ordered with the kernels without events).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    /// Says that `mem`'s contents were replaced wholesale, as by an upload, by something other
    /// than this device's kernels (an NCCL collective) or by a collective's copies: its bf16
    /// shadow, if it has one, is stale and is dropped, and (as after `upload`) the buffer is
    /// marked pristine, so a weight gets a fresh shadow at its next bf16 GEMM instead of being
    /// converted at every one.
    pub fn replaced(&self, mem: &CudaMem) {
        self.pool.shadow_forget(mem.addr);
        if self.gemm_bf16 && self.bf16_shadows {
            self.pool.mark_pristine(mem.addr);
        }
    }
    /// Runs `Backend::matmul` as bf16 GEMMs (see the field) or f32 SGEMM.
    pub fn set_gemm_bf16(&mut self, on: bool) {
        self.gemm_bf16 = on;
    }
    pub fn gemm_bf16_enabled(&self) -> bool {
        self.gemm_bf16
    }

    /// `x` (f32, `n` values) as bf16 bits in new device memory.
    pub fn to_bf16(&self, x: &CudaMem, n: usize) -> CudaMem {
        let out = self.alloc(n * 2);
        super::device::launch_f32_to_bf16(self, &out, x, n);
        out
    }

    /// Row-major `out = op(A) op(B) + beta out` with bf16 `a`, `b` through cublasGemmEx,
    /// CUBLAS_COMPUTE_32F (f32 accumulation); `out` is f32, or bf16 when `out_bf16`.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_bf16(
        &self,
        out: &mut CudaSlice<u8>,
        out_bf16: bool,
        a: &CudaSlice<u8>,
        ta: Tr,
        b: &CudaSlice<u8>,
        tb: Tr,
        m: usize,
        n: usize,
        k: usize,
        beta: f32,
    ) -> Result<(), String> {
        let blas = self.blas.as_ref().ok_or("cuBLAS is not available")?;
        use cudarc::cublas::sys::{
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
            cudaDataType_t::{CUDA_R_16BF, CUDA_R_32F},
        };
        // Column-major view, operands swapped, as in `gemm`.
        let ((opa, lda_), (opb, ldb_)) = (blas_op(ta, k, m), blas_op(tb, n, k));
        let (pa, pb, pc) =
            (raw_addr(a, &self.stream), raw_addr(b, &self.stream), raw_addr(out, &self.stream));
        let handle = BlasHandle(*blas.handle());
        let key = gemm_key(true, out_bf16, pa, pb, pc, ta, tb, m, n, k, beta);
        let run = move |_: &Arc<CudaStream>| {
            let alpha = 1.0f32;
            // SAFETY: callers pass buffers of at least m*k, k*n bf16 and m*n outputs on this
            // device; the handle runs on the stream the device set (its own, or the capture's).
            unsafe {
                cudarc::cublas::result::gemm_ex(
                    handle.raw(),
                    opb,
                    opa,
                    n as i32,
                    m as i32,
                    k as i32,
                    &alpha as *const f32 as *const _,
                    pb as *const _,
                    CUDA_R_16BF,
                    ldb_ as i32,
                    pa as *const _,
                    CUDA_R_16BF,
                    lda_ as i32,
                    &beta as *const f32 as *const _,
                    pc as *mut _,
                    if out_bf16 { CUDA_R_16BF } else { CUDA_R_32F },
                    n as i32,
                    CUBLAS_COMPUTE_32F,
                    CUBLAS_GEMM_DFALT,
                )
            }
            .map_err(|e| format!("cublasGemmEx (bf16): {e:?}"))
        };
        let name = || super::device::gemm_name(true, m, n, k, ta, tb);
        self.timed(name, || self.replay.submit(self, Op::Work { key, run: Arc::new(run) }))
    }
    /// Converts the first `n` values of `mem` into pooled memory that the shadow registry
    /// then owns as `mem`'s bf16 shadow.
    fn make_bf16_shadow(&self, mem: &CudaMem, n: usize) {
        let tmp = self.to_bf16(mem, n);
        self.adopt_bf16_shadow(mem, tmp, n);
    }
    /// Runs `f` (which queues device work) between two timing events when profiling.
    fn timed<R>(&self, name: impl FnOnce() -> String, f: impl FnOnce() -> R) -> R {
        let Some(p) = &self.profile else { return f() };
        use cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT;
        let start = self.stream.record_event(Some(CU_EVENT_DEFAULT)).expect("profile event");
        let r = f();
        let end = self.stream.record_event(Some(CU_EVENT_DEFAULT)).expect("profile event");
        p.pending.lock().expect("profile").push((name(), start, end));
        r
    }
    fn func(&self, name: &str) -> CudaFunction {
        let mut f = self.funcs.lock().unwrap();
        if let Some(func) = f.get(name) {
            return func.clone(); // no key allocated per launch
        }
        f.entry(name.to_string())
            .or_insert_with(|| {
                self.module
                    .load_function(name)
                    .unwrap_or_else(|e| panic!("no kernel {name}: {e:?}"))
            })
            .clone()
    }
}

impl Device for CudaDevice {
    type Mem = CudaMem;
    fn name(&self) -> String {
        let blas = match (&self.blas, self.gemm_bf16) {
            (Some(_), true) => "cuBLAS bf16 GemmEx",
            (Some(_), false) => "cuBLAS sgemm",
            (None, _) => "gemm_f32 kernel",
        };
        format!("{} [{blas}]", self.name)
    }
    fn has_wgmma(&self) -> bool {
        self.sm90
    }
    fn alloc(&self, bytes: usize) -> CudaMem {
        let class = alloc::size_class(bytes);
        let prefer = self.replay.preferred_alloc();
        let pool = self.stretch.current().unwrap_or_else(|| self.pool.clone());
        let (slice, class, _cached) = pool.take_preferring(class, &prefer, |c| {
            // SAFETY: callers treat the contents as unspecified.
            let fresh = || unsafe { self.stream.alloc::<u8>(c) };
            // Out of memory with blocks cached: give them back to the device and try again.
            match fresh().or_else(|_| {
                self.flush(); // held work may use cached blocks
                let _ = self.stream.synchronize();
                self.pool.empty_cache();
                self.stretch.empty_caches();
                fresh()
            }) {
                Ok(s) => s,
                Err(e) => {
                    let st = self.pool.stats();
                    panic!(
                        "cuda alloc of {} failed ({e:?}); {} in use, {} reserved by this process",
                        crate::backend::memory::human_bytes(c as u64),
                        crate::backend::memory::human_bytes(st.in_use_bytes),
                        crate::backend::memory::human_bytes(st.reserved_bytes)
                    )
                }
            }
        });
        let addr = raw_addr(&slice, &self.stream);
        self.replay.note_alloc(addr);
        CudaMem { slice: Some(slice), class, pool, addr }
    }
    fn upload(&self, host: &[u8]) -> CudaMem {
        let mut m = self.alloc(host.len());
        self.write(&mut m, host);
        if self.gemm_bf16 && self.bf16_shadows {
            // Maybe a weight: its first bf16 GEMM keeps the converted copy.
            self.pool.mark_pristine(m.addr);
        }
        m
    }
    fn write(&self, mem: &mut CudaMem, host: &[u8]) {
        assert!(host.len() <= mem.len(), "cuda write past the end of a buffer");
        self.pool.note_upload(host.len());
        self.pool.shadow_forget(mem.addr);
        self.replay.submit_write(self, mem.addr, host).unwrap_or_else(|e| panic!("{e}"));
    }
    fn download(&self, mem: &CudaMem, bytes: usize) -> Vec<u8> {
        self.flush();
        self.pool.note_download(bytes);
        self.stream.clone_dtoh(&mem.slice(0..bytes)).expect("cuda download")
    }
    fn set_max_dynamic_shared(&self, name: &str, bytes: u32) {
        use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        let mut set = self.dyn_smem.lock().unwrap();
        if set.get(name).is_some_and(|&b| b >= bytes) {
            return;
        }
        set.insert(name.to_string(), bytes);
        self.func(name)
            .set_attribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes as i32)
            .unwrap_or_else(|e| {
                panic!("kernel {name}: cannot allow {bytes} bytes of dynamic shared memory: {e:?}")
            });
    }
    fn launch(
        &self,
        name: &str,
        grid: [u32; 3],
        block: [u32; 3],
        shared_bytes: u32,
        args: &[Arg<'_, CudaMem>],
    ) {
        let f = self.func(name);
        // Formatted only for a message: a decode step launches hundreds of kernels, and the
        // host's time per launch is what bounds it.
        let shape = || {
            format!(
                "grid ({},{},{}) block ({},{},{}) shared {shared_bytes} B",
                grid[0], grid[1], grid[2], block[0], block[1], block[2]
            )
        };
        if check_launches() {
            // The register-limited block size of this kernel (what __launch_bounds__ or its
            // absence left): a larger block fails as "too many resources" otherwise.
            if let Ok(max) = f.max_threads_per_block() {
                let threads = block[0] * block[1] * block[2];
                if threads as i64 > max as i64 {
                    panic!(
                        "kernel {name} [{}]: {threads} threads per block, but the compiled \
                         kernel allows at most {max} (registers); give it __launch_bounds__({threads})",
                        shape()
                    );
                }
            }
        }
        // A buffer the kernel may write loses its bf16 shadow.
        for m in super::device::written_buffers(name, args) {
            self.pool.shadow_forget(m.addr);
        }
        // Each argument's bits in an 8-byte slot: cuLaunchKernel reads the width of each
        // parameter from the front of its slot (little-endian).
        let func = KernelFn(f.cu_function());
        let shadow = |m: &CudaMem, n: usize| {
            self.pool.with_shadows([(m.addr, n)], |[b]| b.map(|b| raw_addr(b, &self.stream)))
        };
        let slots = args.iter().map(|a| a.slot(|m| m.addr, shadow));
        let submitted = if !self.replay.in_stretch() {
            // The common case (training, prefill): straight to the driver, no unit built.
            let mut vals: Vec<u64> = slots.map(|(_, v)| v).collect();
            self.timed(
                || name.to_string(),
                || {
                    self.bind()?;
                    launch_raw(func, grid, block, shared_bytes, &self.stream, &mut vals)
                },
            )
        } else {
            let (key, vals) =
                replay::kernel_key(func.raw() as u64, grid, block, shared_bytes, slots);
            let run = move |stream: &Arc<CudaStream>| {
                let _keep = &f; // the module stays loaded while a graph may launch the kernel
                launch_raw(func, grid, block, shared_bytes, stream, &mut vals.clone())
            };
            self.timed(
                || name.to_string(),
                || self.replay.submit(self, Op::Work { key, run: Arc::new(run) }),
            )
        };
        submitted.unwrap_or_else(|e| panic!("launch of kernel {name} [{}] failed: {e}", shape()));
        if check_launches() && !self.replay.deferring() {
            // A fault inside the kernel (illegal address, trap from DEVICE_CHECK) surfaces here
            // with the kernel's name instead of at some later download.
            self.stream
                .synchronize()
                .unwrap_or_else(|e| panic!("kernel {name} [{}] faulted: {e:?}", shape()));
        }
    }
    fn gemm(
        &self,
        out: &mut CudaMem,
        a: GemmIn<'_, CudaMem>,
        ta: Tr,
        b: GemmIn<'_, CudaMem>,
        tb: Tr,
        m: usize,
        n: usize,
        k: usize,
        beta: f32,
    ) -> bool {
        let Some(blas) = &self.blas else { return false };
        self.pool.shadow_forget(out.addr);
        if self.gemm_bf16 {
            // Operands rounded to bf16 on the way in (a pass each while storage is f32),
            // unless the operand has a bf16 shadow (a weight since the last optimizer step,
            // an activation since a GEMM converted it), `Pool::bf16_operand` decides, or is
            // stored as bf16 (read as it is).
            let keys = [(a.mem().addr, m * k), (b.mem().addr, k * n)];
            let mut temps = [None, None];
            for (i, (x, len)) in [(a, m * k), (b, k * n)].into_iter().enumerate() {
                let GemmIn::F32(mem) = x else { continue };
                match self.pool.bf16_operand(mem.addr, len, self.bf16_shadows && self.act_shadows) {
                    Bf16Operand::Shadow => {}
                    Bf16Operand::ConvertAndKeep => self.make_bf16_shadow(mem, len),
                    Bf16Operand::Convert => temps[i] = Some(self.to_bf16(mem, len)),
                }
            }
            let [a16, b16] = &temps;
            self.pool
                .with_shadows(keys, |[ha, hb]| {
                    let (a, b) = (pick_bf16(a, a16, ha), pick_bf16(b, b16, hb));
                    self.gemm_bf16(out, false, a, ta, b, tb, m, n, k, beta)
                })
                .unwrap_or_else(|e| panic!("{e}"));
            return true;
        }
        let (a, b) = (a.f32(), b.f32());
        // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
        let ((opa, lda_), (opb, ldb_)) = (blas_op(ta, k, m), blas_op(tb, n, k));
        let (pa, pb, pc) =
            (raw_addr(a, &self.stream), raw_addr(b, &self.stream), raw_addr(out, &self.stream));
        let handle = BlasHandle(*blas.handle());
        let key = gemm_key(false, false, pa, pb, pc, ta, tb, m, n, k, beta);
        let run = move |_: &Arc<CudaStream>| {
            let alpha = 1.0f32;
            // SAFETY: the backend checked the buffer sizes; the pointers live on this device.
            unsafe {
                cudarc::cublas::result::sgemm(
                    handle.raw(),
                    opb,
                    opa,
                    n as i32,
                    m as i32,
                    k as i32,
                    &alpha,
                    pb as *const f32,
                    ldb_ as i32,
                    pa as *const f32,
                    lda_ as i32,
                    &beta,
                    pc as *mut f32,
                    n as i32,
                )
            }
            .map_err(|e| format!("cublasSgemm: {e:?}"))
        };
        let name = || super::device::gemm_name(false, m, n, k, ta, tb);
        self.timed(name, || self.replay.submit(self, Op::Work { key, run: Arc::new(run) }))
            .unwrap_or_else(|e| panic!("{e}"));
        true
    }
    fn synchronize(&self) {
        self.flush();
        self.stream.synchronize().expect("cuda synchronize");
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
    fn memory_stats(&self) -> Option<MemoryStats> {
        Some(self.stretch.stats_with(self.pool.stats()))
    }
    fn kernel_profile(&self) -> Vec<crate::backend::profile::KernelTime> {
        let Some(p) = &self.profile else { return Vec::new() };
        let pending = std::mem::take(&mut *p.pending.lock().expect("profile"));
        for (name, start, end) in pending {
            // elapsed_ms waits for both events.
            let ms = start.elapsed_ms(&end).expect("profile event timing");
            p.totals.add(&name, ms as f64 * 1e-3);
        }
        p.totals.sorted()
    }
    fn set_gemm_precision(&mut self, bf16: bool) -> Result<(), String> {
        if bf16 && self.blas.is_none() {
            return Err("bf16 GEMM needs cuBLAS (libcublas.so), which did not load".into());
        }
        self.gemm_bf16 = bf16;
        Ok(())
    }
    fn gemm_precision_bf16(&self) -> bool {
        self.gemm_bf16
    }
    fn refresh_bf16_shadow(&self, mem: &CudaMem, n: usize) {
        if self.wants_bf16_shadow() && n > 0 {
            self.make_bf16_shadow(mem, n);
        }
    }
    fn addr(&self, mem: &CudaMem) -> u64 {
        mem.addr
    }
    fn wants_bf16_shadow(&self) -> bool {
        self.gemm_bf16 && self.bf16_shadows
    }
    fn wants_act_shadow(&self) -> bool {
        self.gemm_bf16 && self.bf16_shadows && self.act_shadows
    }
    fn adopt_bf16_shadow(&self, mem: &CudaMem, mut shadow: CudaMem, n: usize) {
        let block = shadow.slice.take().expect("live memory holds its slice");
        self.pool.shadow_insert_from(mem.addr, block, shadow.class, n, shadow.pool.clone());
    }
    fn forget_bf16_shadow(&self, mem: &CudaMem) {
        self.pool.shadow_forget(mem.addr);
    }
    fn has_bf16_shadow(&self, mem: &CudaMem, n: usize) -> bool {
        self.pool.with_shadows([(mem.addr, n)], |[b]| b.is_some())
    }
    fn bf16_shadow_bits(&self, mem: &CudaMem, n: usize) -> Option<Vec<u16>> {
        self.flush();
        let bytes = self.pool.with_shadows([(mem.addr, n)], |[s]| {
            s.map(|b| self.stream.clone_dtoh(&b.slice(0..2 * n)).expect("cuda download"))
        })?;
        Some(bytemuck::pod_collect_to_vec(&bytes))
    }
}

impl CudaBackend<CudaDevice> {
    /// The backend on GPU `ordinal` (attention kernels from `MMR1_ATTENTION`, GEMM precision
    /// from `MMR1_GEMM`), or a one-line reason why there is none.
    pub fn new(ordinal: usize) -> Result<Self, String> {
        CudaBackend::with_device(CudaDevice::new(ordinal)?).attention_from_env()
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        let _ = self.ctx.synchronize();
    }
}

impl CudaDevice {
    /// Makes this device's context current on the calling thread. cudarc's safe calls do this
    /// themselves; the raw driver and cuBLAS calls here (launches, uploads, graphs, GEMMs) do
    /// not, and fail with CUDA_ERROR_INVALID_CONTEXT on a thread that has made no safe call
    /// yet (a backend made on one thread and used on another: every test harness thread, a
    /// rank's worker). A driver query when already current: nanoseconds a call.
    fn bind(&self) -> Result<(), String> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| format!("cannot make the CUDA context current: {e:?}"))
    }
    /// Device work is about to be read by the host: held units run first.
    fn flush(&self) {
        self.replay.flush(self).unwrap_or_else(|e| panic!("{e}"));
    }
    fn capture_stream(&self) -> Result<&Arc<CudaStream>, String> {
        if let Some(s) = self.capture_stream.get() {
            return Ok(s);
        }
        let s =
            self.ctx.new_stream().map_err(|e| format!("cannot create a capture stream: {e:?}"))?;
        Ok(self.capture_stream.get_or_init(|| s))
    }
    fn set_blas_stream(&self, stream: &CudaStream) -> Result<(), String> {
        if let Some(blas) = &self.blas {
            // SAFETY: the handle is this device's; no cuBLAS call is in progress.
            unsafe { cudarc::cublas::result::set_stream(*blas.handle(), stream.cu_stream() as _) }
                .map_err(|e| format!("cublasSetStream: {e:?}"))?;
        }
        Ok(())
    }
}

impl GraphHost for CudaDevice {
    type Stream = Arc<CudaStream>;
    type Graph = GpuGraph;
    fn run_now(&self, run: &Run<Arc<CudaStream>>) -> Result<(), String> {
        self.bind()?;
        run(&self.stream)
    }
    fn write_now(&self, dst: u64, bytes: &[u8]) {
        self.bind().unwrap_or_else(|e| panic!("cuda write: {e}"));
        // SAFETY: `write` checked the length against the buffer at `dst`; a pageable source is
        // copied out before the call returns.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, bytes, self.stream.cu_stream()) }
            .expect("cuda write");
    }
    fn capture(&self, ops: &[Op<Arc<CudaStream>>]) -> Result<GpuGraph, String> {
        use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
        self.bind()?;
        let cs = self.capture_stream()?.clone();
        // The writes' bytes come from pinned memory at fixed offsets (16-byte aligned).
        let mut offsets = Vec::new();
        let mut total = 0usize;
        for op in ops {
            if let Op::Write { bytes, .. } = op {
                offsets.push(total);
                total += bytes.len().next_multiple_of(16);
            }
        }
        let staging = Pinned::new(total)?;
        self.set_blas_stream(&cs)?;
        cs.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(|e| format!("cuStreamBeginCapture: {e:?}"))?;
        let mut failed = None;
        let mut w = 0;
        for op in ops {
            let r = match op {
                Op::Work { run, .. } => run(&cs),
                Op::Write { dst, bytes } => {
                    let src = staging.range(offsets[w], bytes.len());
                    w += 1;
                    // SAFETY: a pinned source the graph keeps; `dst` as `write` checked.
                    unsafe { cudarc::driver::result::memcpy_htod_async(*dst, src, cs.cu_stream()) }
                        .map_err(|e| format!("{e:?}"))
                }
            };
            if let Err(e) = r {
                failed = Some(e);
                break;
            }
        }
        // Always end the capture, so the stream is usable whatever happened.
        let graph = cs.end_capture(CUgraphInstantiate_flags(0));
        self.set_blas_stream(&self.stream)?;
        if let Some(e) = failed {
            return Err(format!("a unit failed under capture: {e}"));
        }
        let graph = graph
            .map_err(|e| format!("cuStreamEndCapture / instantiate: {e:?}"))?
            .ok_or("the capture recorded nothing")?;
        Ok(GpuGraph { graph, staging, offsets, done: None })
    }
    fn launch(&self, g: &mut GpuGraph, ops: &[Op<Arc<CudaStream>>]) -> Result<(), String> {
        if let Some(ev) = g.done.take() {
            // The last launch has read the pinned bytes before they are rewritten.
            ev.synchronize().map_err(|e| format!("{e:?}"))?;
        }
        let mut w = 0;
        for op in ops {
            if let Op::Write { bytes, .. } = op {
                g.staging.fill(g.offsets[w], bytes);
                w += 1;
            }
        }
        // On the device's own stream, in order with everything else it runs.
        self.bind()?;
        // SAFETY: an instantiated graph of this context.
        unsafe {
            cudarc::driver::result::graph::launch(g.graph.cu_graph_exec(), self.stream.cu_stream())
        }
        .map_err(|e| format!("cuGraphLaunch: {e:?}"))?;
        g.done = Some(self.stream.record_event(None).map_err(|e| format!("{e:?}"))?);
        Ok(())
    }
}

impl alloc::Block for CudaSlice<u8> {
    fn addr(&self) -> u64 {
        raw_addr(self, self.stream())
    }
}

/// Launches `func` on `stream` with argument slots `vals` (each argument's bits in 8 bytes).
fn launch_raw(
    func: KernelFn,
    grid: [u32; 3],
    block: [u32; 3],
    shared_bytes: u32,
    stream: &CudaStream,
    vals: &mut [u64],
) -> Result<(), String> {
    let mut params: Vec<*mut std::ffi::c_void> =
        vals.iter_mut().map(|v| v as *mut u64 as *mut std::ffi::c_void).collect();
    // SAFETY: argument lists match the kernels' signatures (checked by the test suite); the
    // slots outlive the call, which copies them.
    unsafe {
        cudarc::driver::result::launch_kernel(
            func.raw(),
            (grid[0], grid[1], grid[2]),
            (block[0], block[1], block[2]),
            shared_bytes,
            stream.cu_stream(),
            &mut params,
        )
    }
    .map_err(|e| format!("{e:?}"))
}

/// The device address of `mem` (no event bookkeeping: one stream runs everything).
/// Where a bf16 GEMM reads operand `x`: its own memory if it is stored as bf16, else its
/// conversion `temp` or its shadow.
fn pick_bf16<'a>(
    x: GemmIn<'a, CudaMem>,
    temp: &'a Option<CudaMem>,
    shadow: Option<&'a CudaSlice<u8>>,
) -> &'a CudaSlice<u8> {
    match x {
        GemmIn::Bf16(mem) => mem,
        GemmIn::F32(_) => temp.as_deref().or(shadow).expect("a converted or shadowed operand"),
    }
}

fn raw_addr(mem: &CudaSlice<u8>, stream: &CudaStream) -> u64 {
    let (p, _sync) = mem.device_ptr(stream);
    p
}

/// A library GEMM's replay key: everything the call depends on.
#[allow(clippy::too_many_arguments)]
fn gemm_key(
    bf16: bool,
    out_bf16: bool,
    a: u64,
    b: u64,
    out: u64,
    ta: Tr,
    tb: Tr,
    m: usize,
    n: usize,
    k: usize,
    beta: f32,
) -> Vec<u64> {
    vec![
        replay::KEY_GEMM,
        bf16 as u64,
        out_bf16 as u64,
        a,
        b,
        out,
        (ta == Tr::T) as u64,
        (tb == Tr::T) as u64,
        m as u64,
        n as u64,
        k as u64,
        beta.to_bits() as u64,
    ]
}

/// cuBLAS's view of a row-major operand stored `[rows, cols]` as given (`Tr::N`, leading
/// dimension `cols`) or transposed (`Tr::T`, stored `[cols, rows]`, leading dimension `rows`).
/// Shared by the f32 and bf16 GEMMs, which both run row-major C = op(A) op(B) as column-major
/// C^T = op(B)^T op(A)^T with the operands swapped.
fn blas_op(t: Tr, cols: usize, rows: usize) -> (cudarc::cublas::sys::cublasOperation_t, usize) {
    use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
    match t {
        Tr::N => (CUBLAS_OP_N, cols),
        Tr::T => (CUBLAS_OP_T, rows),
    }
}
