//! The launch interface the CUDA backend is written against, so the same buffer management,
//! launch configurations and argument packing run on the real GPU (cudarc) and on the CUDA
//! emulator (kernels compiled for the host).

use crate::backend::{memory::MemoryStats, Tr};

/// Kernel arguments that a kernel only reads although they may have a bf16 shadow (weights,
/// GEMM operands; by kernel name and argument position, counting every argument, pointers or
/// not): passing them does not end the shadow (`refresh_bf16_shadow`). Every other pointer
/// argument is treated as possibly written. Each must be a `const` parameter of the kernel
/// (a unit test reads kernels/*.cu for it).
pub const READ_ONLY_ARGS: &[(&str, usize)] = &[
    ("embedding_f32", 1),
    ("f32_to_bf16", 1),
    ("f32_to_bf16_x8", 1),
    // The column reduction's inputs: the bias gradients read dq, dk, dv between the
    // backward epilogue that writes their bf16 copies and the GEMMs that read them.
    ("col_reduce_f32", 2),
    ("col_reduce_f32", 3),
    ("col_reduce_f32", 4),
];

/// Whether argument `position` of kernel `name` may be written (see `READ_ONLY_ARGS`).
pub fn may_write(name: &str, position: usize) -> bool {
    !READ_ONLY_ARGS.contains(&(name, position))
}

/// The buffers a launch of `name` with `args` may write (their bf16 shadows end): every
/// pointer argument but the read-only ones. Positions count every argument, so a null or
/// scalar argument before a pointer does not shift which one an entry names.
pub fn written_buffers<'a, M>(
    name: &'a str,
    args: &'a [Arg<'a, M>],
) -> impl Iterator<Item = &'a M> + 'a {
    args.iter().enumerate().filter_map(move |(i, a)| match a {
        Arg::Ptr(m) if may_write(name, i) => Some(*m),
        _ => None,
    })
}

/// A kernel-choice variable `var` (`MMR1_GEMM`, `MMR1_ATTENTION`, `MMR1_DECODE`): the value
/// of the choice it names, None when unset or empty, or an error naming the accepted values.
pub fn env_choice<T: Copy>(var: &str, choices: &[(&str, T)]) -> Result<Option<T>, String> {
    match std::env::var(var).as_deref() {
        Err(_) | Ok("") => Ok(None),
        Ok(v) => match choices.iter().find(|(name, _)| *name == v) {
            Some((_, t)) => Ok(Some(*t)),
            None => {
                let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
                Err(format!("{var}={v:?}: expected {}", names.join(" or ")))
            }
        },
    }
}

/// A switch from environment variable `var`: `1` on, `0` off, unset or empty `default`.
/// Panics on another value, naming the variable and what `1` means (`on_means`).
pub fn switch_from_env(var: &str, default: bool, on_means: &str) -> bool {
    switch_value(var, std::env::var(var).ok().as_deref(), default, on_means)
}

/// `switch_from_env` of the value `v` of `var` (None: unset).
pub fn switch_value(var: &str, v: Option<&str>, default: bool, on_means: &str) -> bool {
    match v {
        None | Some("") => default,
        Some("1") => true,
        Some("0") => false,
        Some(v) => panic!("{var}={v:?}: expected 1 ({on_means}) or 0"),
    }
}

/// Whether bf16 shadows of weights are kept, from `MMR1_BF16_SHADOWS` (`1`/unset: on, `0`:
/// off, every bf16 GEMM converts both operands). Panics on another value, naming it.
pub fn shadows_from_env() -> bool {
    switch_from_env("MMR1_BF16_SHADOWS", true, "keep bf16 copies of weights")
}

/// Whether bf16 GEMMs keep the conversion of an f32 operand that has no shadow as that
/// buffer's shadow (an activation read by several GEMMs, e.g. the norm output feeding q, k
/// and v, or a saved activation the backward's weight gradient reads again), from
/// `MMR1_ACT_SHADOWS` (`1`/unset: on, `0`: off, such an operand is converted into a temporary
/// at every GEMM). Needs weight shadows on (`MMR1_BF16_SHADOWS`): it is the same registry.
/// Panics on another value, naming it.
pub fn act_shadows_from_env() -> bool {
    switch_from_env(
        "MMR1_ACT_SHADOWS",
        true,
        "keep bf16 copies of GEMM operands until they are written",
    )
}

/// The f32 -> bf16 conversion kernel (round to nearest even) over the first `n` values of
/// `x` into `out` (`2 n` bytes): eight values a thread with 16-byte loads and stores
/// (kernels/convert.cu `f32_to_bf16_x8`), which needs both buffers 16-byte aligned, as the
/// caching allocator's blocks are (cuMemAlloc's 256-byte alignment on the GPU, the
/// emulator's blocks likewise). The one launch both devices convert GEMM operands with.
pub fn launch_f32_to_bf16<D: Device + ?Sized>(dev: &D, out: &D::Mem, x: &D::Mem, n: usize) {
    if n == 0 {
        return;
    }
    // A thread per group of 8 (grid-stride beyond 4096 blocks); the first n % 8 threads of
    // the grid also convert one tail value each (a block has 256 > 7 threads).
    let threads = (n / 8).max(1);
    dev.launch(
        "f32_to_bf16_x8",
        [threads.div_ceil(256).clamp(1, 4096) as u32, 1, 1],
        [256, 1, 1],
        0,
        &[Arg::Ptr(out), Arg::Ptr(x), Arg::I64(n as i64)],
    );
}

/// One operand of a library GEMM (`Device::gemm`).
pub enum GemmIn<'a, M> {
    /// f32 values: a bf16 GEMM reads their bf16 shadow or rounds them on the way in.
    F32(&'a M),
    /// bf16 bits stored as such (`DevBuf::is_bf16`), which only a bf16 GEMM can read.
    Bf16(&'a M),
}

// By hand: a derive would ask `M: Copy` of the memory a reference points to.
impl<M> Clone for GemmIn<'_, M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M> Copy for GemmIn<'_, M> {}

impl<'a, M> GemmIn<'a, M> {
    /// The memory, whichever its element type.
    pub fn mem(self) -> &'a M {
        match self {
            GemmIn::F32(m) | GemmIn::Bf16(m) => m,
        }
    }
    /// Panics on a bf16 operand: an f32 GEMM (`set_gemm_precision(false)`) has no f32 values
    /// to read there.
    pub fn f32(self) -> &'a M {
        match self {
            GemmIn::F32(m) => m,
            GemmIn::Bf16(_) => panic!(
                "an f32 GEMM was given an operand stored as bf16 alone (Backend::operand_buf \
                 allocated it while GEMMs were bf16; plan activations after choosing the precision)"
            ),
        }
    }
}

/// One kernel argument, in the order of the kernel's parameters.
pub enum Arg<'a, M> {
    /// Device memory (the kernel receives its base address), which the kernel may write: the
    /// launch ends its bf16 shadow (unless `READ_ONLY_ARGS` names the position).
    Ptr(&'a M),
    /// Device memory the kernel only reads (a `const` parameter): its bf16 shadow stays.
    In(&'a M),
    /// The bf16 shadow of this memory, covering its first `n` values: the kernel receives the
    /// shadow's address (a bf16 input a producer wrote beside the f32 values; see
    /// `Device::has_bf16_shadow`). A launch with no such shadow panics.
    Bf16Of(&'a M, usize),
    /// A null pointer (optional inputs).
    Null,
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
}

// By hand: a derive would ask `M: Copy` of the memory a reference points to.
impl<M> Clone for Arg<'_, M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M> Copy for Arg<'_, M> {}

impl<M> Arg<'_, M> {
    /// The argument as a launch passes it: a type code (so that a u32 5 is not an i32 5 in a
    /// replay key, `replay`) and its bits in the low bytes of an 8-byte slot, from which
    /// cuLaunchKernel (and the emulator's thunk) reads the width of its parameter. `addr`
    /// gives a buffer's device address, `shadow` the address of its bf16 shadow covering `n`
    /// values.
    pub fn slot(
        &self,
        addr: impl Fn(&M) -> u64,
        shadow: impl Fn(&M, usize) -> Option<u64>,
    ) -> (u8, u64) {
        match self {
            Arg::Ptr(m) | Arg::In(m) => (0, addr(m)),
            Arg::Bf16Of(m, n) => {
                (0, shadow(m, *n).expect("Arg::Bf16Of of a buffer with no bf16 shadow"))
            }
            Arg::Null => (1, 0),
            Arg::I32(v) => (2, *v as u32 as u64),
            Arg::U32(v) => (3, *v as u64),
            Arg::I64(v) => (4, *v as u64),
            Arg::F32(v) => (5, v.to_bits() as u64),
            Arg::F64(v) => (6, v.to_bits()),
        }
    }
}

/// A device that can hold memory and run the kernels of `kernels/`.
pub trait Device {
    /// Raw device memory.
    type Mem;
    fn name(&self) -> String;
    /// Memory of `bytes` bytes with unspecified contents.
    fn alloc(&self, bytes: usize) -> Self::Mem;
    fn upload(&self, host: &[u8]) -> Self::Mem;
    /// Overwrites the first `host.len()` bytes of `mem`.
    fn write(&self, mem: &mut Self::Mem, host: &[u8]);
    /// The first `bytes` bytes of `mem` (waits for queued work).
    fn download(&self, mem: &Self::Mem, bytes: usize) -> Vec<u8>;
    /// Lets kernel `name` take up to `bytes` of dynamic shared memory: above 48 KB a launch
    /// needs this opt-in (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES on the GPU; the
    /// emulator refuses such a launch without it). Call it once, before the first launch.
    fn set_max_dynamic_shared(&self, name: &str, bytes: u32);
    /// Queues kernel `name` over `grid` blocks of `block` threads. Panics on launch errors
    /// (they are bugs, not conditions to recover from), naming the kernel and its shape; in
    /// debug and test builds it also waits for the kernel, so a fault inside it is reported
    /// the same way (release builds: set MMR1_SYNC_LAUNCHES=1).
    fn launch(
        &self,
        name: &str,
        grid: [u32; 3],
        block: [u32; 3],
        shared_bytes: u32,
        args: &[Arg<'_, Self::Mem>],
    );
    /// A library GEMM (row-major, f32 output, see `Backend::matmul`); returns false when the
    /// device has none, and the backend then runs its own kernel (f32 operands only).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        out: &mut Self::Mem,
        a: GemmIn<'_, Self::Mem>,
        ta: Tr,
        b: GemmIn<'_, Self::Mem>,
        tb: Tr,
        m: usize,
        n: usize,
        k: usize,
        beta: f32,
    ) -> bool;
    /// `gemm` of `a [m, k]` by a stack of weights `b [sum ns, k]` (`Tr::T`; beta 0) into
    /// `out [m, sum ns]` (`Backend::matmul_stacked`): one library GEMM. The emulator, whose
    /// stand-in for the library is the CPU's GEMM, computes each part as its own product, so
    /// that a stacked product has the bits of the separate ones there.
    fn gemm_stacked(
        &self,
        out: &mut Self::Mem,
        a: GemmIn<'_, Self::Mem>,
        b: GemmIn<'_, Self::Mem>,
        m: usize,
        ns: &[usize],
        k: usize,
    ) -> bool {
        self.gemm(out, a, Tr::N, b, Tr::T, m, ns.iter().sum(), k, 0.0)
    }
    /// Waits for all queued work.
    fn synchronize(&self);
    /// Whether kernels may use Hopper's warpgroup MMA (kernels/wgmma.cuh): an sm_90 GPU (the
    /// kernels' compute_90a PTX), or the emulator.
    fn has_wgmma(&self) -> bool {
        false
    }
    /// Makes `gemm` a bf16 GEMM (operands rounded to bf16 round-to-nearest-even, f32
    /// accumulation and f32 output, as cuBLAS GemmEx with CUBLAS_COMPUTE_32F) or f32 again.
    /// Err when the device has no bf16 GEMM.
    fn set_gemm_precision(&mut self, bf16: bool) -> Result<(), String> {
        if bf16 {
            Err("this device has no bf16 GEMM".into())
        } else {
            Ok(())
        }
    }
    /// Whether `gemm` rounds its operands to bf16 (see `set_gemm_precision`).
    fn gemm_precision_bf16(&self) -> bool {
        false
    }
    /// Keeps a bf16 copy of the first `n` f32 values of `mem`, which `gemm` in bf16 then reads
    /// instead of converting `mem` on every call, until `mem` is next passed to a kernel (any
    /// argument but a known read-only one), written or freed. The optimizer calls it right
    /// after updating a weight, so each weight is converted once a step; an uploaded buffer
    /// that no kernel has written since (a loaded weight) gets its shadow at its first bf16
    /// GEMM. A no-op unless the GEMM is bf16 (and shadows are on: `MMR1_BF16_SHADOWS=0` turns
    /// them off).
    fn refresh_bf16_shadow(&self, mem: &Self::Mem, n: usize) {
        let _ = (mem, n);
    }
    /// The device address of `mem`'s first byte, as a kernel sees it (entries of the device
    /// tables of multi-buffer launches, `multi`).
    fn addr(&self, mem: &Self::Mem) -> u64;
    /// Whether a weight the optimizer has just written should get a bf16 shadow (bf16 GEMM
    /// and shadows on): then the backend's AdamW writes the shadow in its own pass and hands
    /// it over with `adopt_bf16_shadow` instead of calling `refresh_bf16_shadow`.
    fn wants_bf16_shadow(&self) -> bool {
        false
    }
    /// Whether a kernel that writes an f32 activation should also write its bf16 rounding and
    /// hand it over with `adopt_bf16_shadow` (bf16 GEMM with weight and activation shadows on:
    /// the first bf16 GEMM reading the activation would convert it and keep the conversion,
    /// so the producer writing it saves that launch; `producer_shadows`).
    fn wants_act_shadow(&self) -> bool {
        false
    }
    /// Makes `shadow` (memory from `alloc` holding the bf16 bits, round to nearest even, of
    /// the first `n` f32 values of `mem`, as queued work has written them) the bf16 shadow of
    /// `mem`, as `refresh_bf16_shadow` would have made it. Call it after the launch that
    /// wrote `mem` (a launch that writes a buffer ends its shadow).
    fn adopt_bf16_shadow(&self, mem: &Self::Mem, shadow: Self::Mem, n: usize) {
        let _ = (mem, shadow, n);
    }
    /// Ends `mem`'s bf16 shadow, if it has one: a kernel is about to write `mem` without
    /// naming it as an argument (through a device table, `multi`).
    fn forget_bf16_shadow(&self, mem: &Self::Mem) {
        let _ = mem;
    }
    /// Whether `mem` has a bf16 shadow covering its first `n` values (which a launch can pass
    /// as `Arg::Bf16Of`).
    fn has_bf16_shadow(&self, mem: &Self::Mem, n: usize) -> bool {
        let _ = (mem, n);
        false
    }
    /// The bf16 shadow of `mem` if one covers its first `n` values, as bits (tests).
    fn bf16_shadow_bits(&self, mem: &Self::Mem, n: usize) -> Option<Vec<u16>> {
        let _ = (mem, n);
        None
    }
    /// The counters of the device's caching allocator (`alloc`), if it has one.
    fn memory_stats(&self) -> Option<MemoryStats> {
        None
    }
    /// Starts a stretch of work that repeats under `tag` (a decode step of some shape), which
    /// the device may replay as one CUDA graph (`replay`). Default: nothing.
    fn replay_begin(&self, tag: u64) {
        let _ = tag;
    }
    /// Ends the stretch `replay_begin` started (a no-op without one).
    fn replay_end(&self) {}
    /// The replay counters, None when the device does not replay.
    fn replay_stats(&self) -> Option<super::replay::ReplayStats> {
        None
    }
    /// Time per kernel and GEMM shape (named by `gemm_name`) when `MMR1_PROFILE=1`
    /// (`backend::profile`).
    fn kernel_profile(&self) -> Vec<crate::backend::profile::KernelTime> {
        Vec::new()
    }
}

/// A library GEMM's name in the kernel profile: precision, shape and operand layouts.
pub fn gemm_name(bf16: bool, m: usize, n: usize, k: usize, ta: Tr, tb: Tr) -> String {
    let t = |t: Tr| if t == Tr::N { "N" } else { "T" };
    format!("gemm_{} {m}x{n}x{k} {}{}", if bf16 { "bf16" } else { "f32" }, t(ta), t(tb))
}

#[cfg(test)]
mod tests {
    use super::{env_choice, written_buffers, Arg, READ_ONLY_ARGS};

    /// Every read-only entry names a `const` pointer parameter of a kernel in kernels/: a
    /// launch keeps the shadows of those arguments, so a kernel that wrote one would leave a
    /// stale bf16 copy for the next GEMM.
    #[test]
    fn read_only_args_are_const_parameters() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels");
        let mut src = String::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "cu") {
                src += &std::fs::read_to_string(p).unwrap();
            }
        }
        for &(name, pos) in READ_ONLY_ARGS {
            // The definition (on a `__global__` line), not a device-side call of that name.
            let head = format!(" {name}(");
            let is_kernel = |at: usize| {
                src[src[..at].rfind('\n').map_or(0, |l| l + 1)..at].contains("__global__")
            };
            let at = (src.match_indices(&head).map(|(at, _)| at).find(|&at| is_kernel(at)))
                .unwrap_or_else(|| panic!("no kernel {name}"));
            let params = &src[at + head.len()..];
            let params = &params[..params.find(')').unwrap()];
            let p = params.split(',').nth(pos).unwrap_or_else(|| panic!("{name}: no arg {pos}"));
            let p = p.trim();
            assert!(p.starts_with("const ") && p.contains('*'), "{name} arg {pos}: `{p}`");
        }
    }

    #[test]
    fn env_choice_reads_a_named_choice_and_names_the_accepted_ones() {
        // A variable no other test reads: the environment is shared by the test threads.
        let var = "MMR1_TEST_ENV_CHOICE";
        let choices = [("split", 1), ("staged", 2)];
        std::env::remove_var(var);
        assert_eq!(env_choice(var, &choices), Ok(None));
        std::env::set_var(var, "");
        assert_eq!(env_choice(var, &choices), Ok(None));
        std::env::set_var(var, "staged");
        assert_eq!(env_choice(var, &choices), Ok(Some(2)));
        std::env::set_var(var, "Staged");
        assert_eq!(
            env_choice(var, &choices),
            Err("MMR1_TEST_ENV_CHOICE=\"Staged\": expected \"split\" or \"staged\"".to_string())
        );
        std::env::remove_var(var);
    }

    #[test]
    fn read_only_entries_name_argument_positions_counting_every_argument() {
        let (table, out, ids) = (1u32, 2u32, 3u32);
        // embedding_f32's table is argument 1, read only; a null before it would have shifted
        // a pointer-only count onto `ids`.
        let args = [Arg::Ptr(&out), Arg::Ptr(&table), Arg::Ptr(&ids), Arg::I32(4)];
        let w: Vec<u32> = written_buffers("embedding_f32", &args).copied().collect();
        assert_eq!(w, vec![out, ids]);
        let shifted = [Arg::Null, Arg::Ptr(&table), Arg::Ptr(&ids)];
        let w: Vec<u32> = written_buffers("embedding_f32", &shifted).copied().collect();
        assert_eq!(w, vec![ids], "position 1 is the table whatever comes before it");
        let w: Vec<u32> = written_buffers("rope_f32", &args).copied().collect();
        assert_eq!(w, vec![out, table, ids], "another kernel may write every pointer");
    }
}
