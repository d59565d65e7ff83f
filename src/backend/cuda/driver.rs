//! The real GPU through cudarc: driver API for memory and launches (PTX embedded by build.rs,
//! or compiled at first use by NVRTC when the build had none), cuBLAS for GEMM.

use super::alloc::{self, Bf16Operand, Pool};
use super::device::{Arg, Device};
use super::CudaBackend;
use crate::backend::memory::MemoryStats;
use crate::backend::Tr;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig,
    PushKernelArg,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
    /// Per-kernel times when `MMR1_PROFILE=1`.
    profile: Option<GpuProfile>,
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
    pub fn new(ordinal: usize) -> Result<Self, String> {
        let name = probe(ordinal)?;
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| format!("cannot create a CUDA context: {e:?}"))?;
        let (major, _) = ctx.compute_capability().map_err(|e| format!("{e:?}"))?;
        if major < 8 {
            return Err(format!(
                "{name}: compute capability {major}.x is below the 8.0 the kernels need"
            ));
        }
        let arch = if major >= 9 { "compute_90" } else { "compute_80" };
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
        Ok(CudaDevice {
            ctx,
            stream,
            module,
            funcs: Mutex::new(HashMap::new()),
            blas,
            gemm_bf16,
            pool: Pool::new(alloc::caching_from_env()),
            bf16_shadows: super::device::shadows_from_env(),
            act_shadows: super::device::act_shadows_from_env(),
            name,
            profile: crate::backend::profile::enabled().then(|| GpuProfile {
                pending: Mutex::new(Vec::new()),
                totals: Default::default(),
            }),
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
        let alpha = 1.0f32;
        let (pa, _ga) = a.device_ptr(&self.stream);
        let (pb, _gb) = b.device_ptr(&self.stream);
        let (pc, _gc) = out.device_ptr(&self.stream);
        let name = || super::device::gemm_name(true, m, n, k, ta, tb);
        // SAFETY: callers pass buffers of at least m*k, k*n bf16 and m*n outputs on this stream.
        self.timed(name, || unsafe {
            cudarc::cublas::result::gemm_ex(
                *blas.handle(),
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
        })
        .map_err(|e| format!("cublasGemmEx (bf16): {e:?}"))
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
    fn alloc(&self, bytes: usize) -> CudaMem {
        let class = alloc::size_class(bytes);
        let (slice, class, _cached) = self.pool.take(class, |c| {
            // SAFETY: callers treat the contents as unspecified.
            let fresh = || unsafe { self.stream.alloc::<u8>(c) };
            // Out of memory with blocks cached: give them back to the device and try again.
            match fresh().or_else(|_| {
                let _ = self.stream.synchronize();
                self.pool.empty_cache();
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
        let addr = {
            let (addr, _sync) = slice.device_ptr(&self.stream);
            addr
        };
        CudaMem { slice: Some(slice), class, pool: self.pool.clone(), addr }
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
        self.pool.note_upload(host.len());
        self.pool.shadow_forget(mem.addr);
        let mut view = mem.slice_mut(0..host.len());
        self.stream.memcpy_htod(host, &mut view).expect("cuda write");
    }
    fn download(&self, mem: &CudaMem, bytes: usize) -> Vec<u8> {
        self.pool.note_download(bytes);
        self.stream.clone_dtoh(&mem.slice(0..bytes)).expect("cuda download")
    }
    fn set_max_dynamic_shared(&self, name: &str, bytes: u32) {
        use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
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
        // Device addresses first, so the builder can borrow them.
        // A buffer the kernel may write loses its bf16 shadow.
        let written = args.iter().filter_map(|a| if let Arg::Ptr(m) = a { Some(m) } else { None });
        for (i, m) in written.enumerate() {
            if super::device::may_write(name, i) {
                self.pool.shadow_forget(m.addr);
            }
        }
        let mut guards = Vec::new();
        let ptrs: Vec<u64> = args
            .iter()
            .map(|a| match a {
                Arg::Ptr(m) => {
                    let (p, g) = m.device_ptr(&self.stream);
                    guards.push(g);
                    p
                }
                _ => 0,
            })
            .collect();
        let mut b = self.stream.launch_builder(&f);
        for (a, p) in args.iter().zip(&ptrs) {
            match a {
                Arg::Ptr(_) | Arg::Null => b.arg(p),
                Arg::I32(v) => b.arg(v),
                Arg::U32(v) => b.arg(v),
                Arg::I64(v) => b.arg(v),
                Arg::F32(v) => b.arg(v),
                Arg::F64(v) => b.arg(v),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: (grid[0], grid[1], grid[2]),
            block_dim: (block[0], block[1], block[2]),
            shared_mem_bytes: shared_bytes,
        };
        // SAFETY: argument lists match the kernels' signatures (checked by the test suite).
        self.timed(|| name.to_string(), || unsafe { b.launch(cfg) })
            .unwrap_or_else(|e| panic!("launch of kernel {name} [{}] failed: {e:?}", shape()));
        drop(guards);
        if check_launches() {
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
        a: &CudaMem,
        ta: Tr,
        b: &CudaMem,
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
            // an activation since a GEMM converted it); `Pool::bf16_operand` decides.
            let keys = [(a.addr, m * k), (b.addr, k * n)];
            let mut temps = [None, None];
            for (i, (mem, len)) in [(a, m * k), (b, k * n)].into_iter().enumerate() {
                match self.pool.bf16_operand(mem.addr, len, self.bf16_shadows && self.act_shadows) {
                    Bf16Operand::Shadow => {}
                    Bf16Operand::ConvertAndKeep => self.make_bf16_shadow(mem, len),
                    Bf16Operand::Convert => temps[i] = Some(self.to_bf16(mem, len)),
                }
            }
            let [a16, b16] = &temps;
            self.pool
                .with_shadows(keys, |[ha, hb]| {
                    let a = a16.as_deref().or(ha).expect("a converted or shadowed operand");
                    let b = b16.as_deref().or(hb).expect("a converted or shadowed operand");
                    self.gemm_bf16(out, false, a, ta, b, tb, m, n, k, beta)
                })
                .unwrap_or_else(|e| panic!("{e}"));
            return true;
        }
        // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
        let ((opa, lda_), (opb, ldb_)) = (blas_op(ta, k, m), blas_op(tb, n, k));
        let alpha = 1.0f32;
        let (pa, _ga) = a.device_ptr(&self.stream);
        let (pb, _gb) = b.device_ptr(&self.stream);
        let (pc, _gc) = out.device_ptr(&self.stream);
        let name = || super::device::gemm_name(false, m, n, k, ta, tb);
        // SAFETY: the backend checked the buffer sizes; the pointers live on this stream.
        self.timed(name, || unsafe {
            cudarc::cublas::result::sgemm(
                *blas.handle(),
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
        })
        .expect("cublasSgemm");
        true
    }
    fn synchronize(&self) {
        self.stream.synchronize().expect("cuda synchronize");
    }
    fn memory_stats(&self) -> Option<MemoryStats> {
        Some(self.pool.stats())
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
        self.pool.shadow_insert(mem.addr, block, shadow.class, n);
    }
    fn forget_bf16_shadow(&self, mem: &CudaMem) {
        self.pool.shadow_forget(mem.addr);
    }
    fn bf16_shadow_bits(&self, mem: &CudaMem, n: usize) -> Option<Vec<u16>> {
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
