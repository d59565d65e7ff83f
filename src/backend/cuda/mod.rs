//! The CUDA backend: the kernels of `kernels/` driven through a small `Device` interface.
//!
//! `CudaBackend<D>` holds all the Rust side (buffers, launch configurations, argument packing,
//! host-side work lists) once; `D` is the real GPU through cudarc (feature `cuda`) or the CUDA
//! execution-model emulator (feature `emu`), so the test suite exercises this code and the
//! kernels without a GPU.
//!
//! Storage is f32 for now. Matmul goes to cuBLAS SGEMM (f32) on the GPU, to the CPU GEMM on
//! the emulator, and to the `gemm_f32` kernel when no library GEMM is available.

pub mod alloc;
mod attention;
mod bf16_operands;
pub mod device;
#[cfg(feature = "cuda")]
pub mod driver;
#[cfg(feature = "emu")]
pub mod emu;
pub mod flash;
mod fused_layer_ops;
mod kv_cache16;
mod multi;
pub mod precision;
mod producer_shadows;
mod stacked;
// Without a device (neither feature) only the replay counters are used (`replay_stats`).
#[cfg_attr(not(any(feature = "cuda", feature = "emu")), allow(dead_code))]
pub mod replay;
pub mod rl;
mod upload_cache;
mod vision_ops;

use super::{AdamwStep, AttnShape, AttnSpan, Backend, Tr};
use device::{Arg, Device};
pub use flash::{
    AttnKernel, DecodeChunks, DecodeKernel, FlashDkv, FlashDq, FlashFwd, FlashIo, FlashMask,
};
pub use kv_cache16::KvCacheStorage;
use std::sync::Arc;

/// Whether a CUDA GPU can be used, as one line either way: `Ok("cuda:0 (NVIDIA H100 ...)")`
/// or `Err(reason)`. Never panics, also when the driver library is missing.
pub fn available(ordinal: usize) -> Result<String, String> {
    #[cfg(feature = "cuda")]
    {
        driver::probe(ordinal)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = ordinal;
        Err("this binary was built without the `cuda` feature".into())
    }
}

/// A buffer of `len` values in device memory: f32, or bf16 bits alone for a GEMM operand
/// (`Backend::operand_buf` on a device whose GEMMs read bf16; see `bf16_operands.rs`).
pub struct DevBuf<M> {
    stored: M,
    len: usize,
    /// The memory holds the values' bf16 roundings (2 bytes each) and no f32 values.
    bf16: bool,
}

impl<M> DevBuf<M> {
    /// An f32 buffer of `len` values in `mem`.
    fn f32(stored: M, len: usize) -> Self {
        DevBuf { stored, len, bf16: false }
    }
    /// The f32 values' device memory, for a kernel launch (and kernel tests and benches).
    /// Panics on a bf16-stored buffer: no f32 values exist to read or write, and a kernel
    /// that took its memory for them would compute garbage silently.
    #[track_caller]
    pub fn mem(&self) -> &M {
        assert!(!self.bf16, "{}", BF16_ONLY);
        &self.stored
    }
    /// `mem`, mutably (a GEMM's output).
    #[track_caller]
    pub fn mem_mut(&mut self) -> &mut M {
        assert!(!self.bf16, "{}", BF16_ONLY);
        &mut self.stored
    }
    /// Number of values (the memory may be larger: a size class of the allocator).
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Whether the buffer holds bf16 bits alone (`Backend::operand_buf`).
    pub fn is_bf16(&self) -> bool {
        self.bf16
    }
}

const BF16_ONLY: &str = "an op read or wrote the f32 values of a buffer stored as bf16 alone \
    (Backend::operand_buf: only matmul may read it, only its producer write it; \
    Backend::kv_cache_buf: only flash attention may read it, only the cache writes write it)";

pub struct CudaBackend<D: Device> {
    dev: D,
    attn: AttnKernel,
    decode: DecodeKernel,
    /// How flash decode splits a sequence's keys (`MMR1_DECODE_CHUNKS`).
    decode_chunks: DecodeChunks,
    /// Where the flash kernels read Q, K, V and dO from (`MMR1_FLASH_IO`).
    flash_io: FlashIo,
    /// Which flash forward runs with bf16 storage (`MMR1_FLASH_FWD`).
    flash_fwd: FlashFwd,
    /// Which dQ kernel the flash backward runs (`MMR1_FLASH_DQ`).
    flash_dq: FlashDq,
    /// Which dK/dV kernel the flash backward runs (`MMR1_FLASH_DKV`).
    flash_dkv: FlashDkv,
    /// Blocks below which the dK/dV kernel splits a kv head's group of heads over blocks; None:
    /// `flash::DKV_SPLIT_BELOW` (`set_flash_dkv_split_below`).
    dkv_split_below: Option<usize>,
    /// Which key tiles the flash kernels mask (`MMR1_FLASH_MASK`).
    flash_mask: FlashMask,
    /// Read-only index arrays (positions, rope frequencies, row lists, attention work items)
    /// reused while their contents repeat: see `upload_cache`.
    indices: upload_cache::UploadCache<D::Mem>,
    /// Producers of GEMM operands write their bf16 copy when the device keeps activation
    /// shadows (`producer_shadows`; `MMR1_PRODUCER_SHADOWS`).
    producer_shadows: bool,
    /// `qkv_epilogue`, `add_rmsnorm`, `rmsnorm_backward_add` and `qkv_backward_epilogue` as
    /// one launch each, or the ops they replace (`fused_layer_ops`; `MMR1_FUSED_LAYER_OPS`).
    fused_layer_ops: bool,
    /// The sampler's split form for few rows (`rl::sample`; `MMR1_SAMPLE_SPLIT`).
    sample_split: bool,
    /// `operand_buf` stores bf16 alone when producers write bf16 copies (`bf16_operands`;
    /// `MMR1_BF16_OPERANDS`).
    bf16_operands: bool,
    /// How KV caches store their values under flash attention (`kv_cache16`; `MMR1_KV_CACHE`).
    kv_cache: KvCacheStorage,
    /// `stack_rows` makes stacks in bf16 GEMM mode (`stacked`; `MMR1_STACKED_GEMMS`).
    stacked_gemms: bool,
}

const BLOCK: u32 = 256;

/// Row slices of a column reduction of `rows x n` (`CudaBackend::col_reduce`) and the rows of
/// each (a multiple of 32): enough blocks of 32 columns to give some 264 blocks (two per SM of
/// an H100) without slices under 256 rows. A function of the shape alone, so a result never
/// depends on the device. Qwen2.5-0.5B's 896 columns at 4,096 rows: 10 slices of 416 rows.
pub fn col_slices(rows: usize, n: usize) -> (usize, usize) {
    let want = 264usize.div_ceil(n.div_ceil(32).max(1));
    let slices = want.min(rows / 256).max(1);
    let slice_rows = rows.div_ceil(slices).div_ceil(32) * 32;
    (rows.div_ceil(slice_rows.max(1)).max(1), slice_rows.max(32))
}

/// Blocks for a grid-stride loop over `n` elements.
fn grid_for(n: usize) -> u32 {
    n.div_ceil(BLOCK as usize).clamp(1, 4096) as u32
}

impl<D: Device> CudaBackend<D> {
    /// The backend on `dev` with the f32 reference attention kernels.
    pub fn with_device(dev: D) -> Self {
        CudaBackend {
            dev,
            attn: AttnKernel::Reference,
            decode: DecodeKernel::default(),
            decode_chunks: DecodeChunks::default(),
            flash_io: FlashIo::default(),
            flash_fwd: FlashFwd::default(),
            flash_dq: FlashDq::default(),
            flash_dkv: FlashDkv::default(),
            dkv_split_below: None,
            flash_mask: FlashMask::default(),
            indices: Default::default(),
            producer_shadows: producer_shadows::from_env(),
            fused_layer_ops: fused_layer_ops::from_env(),
            sample_split: rl::sample::split_from_env(),
            bf16_operands: bf16_operands::from_env(),
            kv_cache: KvCacheStorage::default(),
            stacked_gemms: stacked::from_env(),
        }
    }
    /// Attention kernels as `MMR1_ATTENTION` says (`reference`, the default, or `flash`);
    /// an unknown value is an error naming the accepted ones. The flash kernels' variants
    /// likewise (`flash_variants_from_env`).
    pub fn attention_from_env(mut self) -> Result<Self, String> {
        self.attn = AttnKernel::from_env()?;
        self.flash_variants_from_env()?;
        Ok(self)
    }
    /// The flash kernels' variants from the environment (one list for every way a backend is
    /// made): the decode kernel `MMR1_DECODE` (`staged`, the default, `split` or `mma`) and its
    /// chunks `MMR1_DECODE_CHUNKS` (`length`, the default, or `128`), the input storage
    /// `MMR1_FLASH_IO` (`bf16`, the default, or `f32`), the forward `MMR1_FLASH_FWD` (`narrow`,
    /// the default, `wide`, `pipe` or `wgmma`), the dQ kernel `MMR1_FLASH_DQ` (`plain`, the
    /// default, `pipe` or `wgmma`), the dK/dV kernel `MMR1_FLASH_DKV` (`plain`, the default, or
    /// `wgmma`), the masked tiles `MMR1_FLASH_MASK` (`diagonal`, the
    /// default, or `every`), and the KV cache's storage `MMR1_KV_CACHE`. The wgmma kernels need
    /// an sm_90 GPU or the emulator: asking for them elsewhere is an error.
    pub(super) fn flash_variants_from_env(&mut self) -> Result<(), String> {
        self.decode = DecodeKernel::from_env()?;
        self.decode_chunks = DecodeChunks::from_env()?;
        self.flash_io = FlashIo::from_env()?;
        self.flash_fwd = FlashFwd::from_env()?;
        self.require_wgmma("MMR1_FLASH_FWD", self.flash_fwd == FlashFwd::Wgmma)?;
        self.flash_dq = FlashDq::from_env()?;
        self.require_wgmma("MMR1_FLASH_DQ", self.flash_dq == FlashDq::Wgmma)?;
        self.flash_dkv = FlashDkv::from_env()?;
        self.require_wgmma("MMR1_FLASH_DKV", self.flash_dkv == FlashDkv::Wgmma)?;
        self.flash_mask = FlashMask::from_env()?;
        self.kv_cache = KvCacheStorage::from_env()?;
        Ok(())
    }
    /// An error when `var` asked for a wgmma kernel (`asked`) and this device has no wgmma.
    fn require_wgmma(&self, var: &str, asked: bool) -> Result<(), String> {
        if asked && !self.dev.has_wgmma() {
            return Err(format!(
                "{var}=wgmma needs an sm_90 GPU (H100, H200) or the emulator; {} is neither",
                self.dev.name()
            ));
        }
        Ok(())
    }
    /// Selects which key tiles the flash kernels mask (see `FlashMask`: same bits).
    pub fn set_flash_mask(&mut self, mask: FlashMask) {
        self.flash_mask = mask;
    }
    /// Selects the flash forward kernel used with bf16 storage (see `FlashFwd`: same bits).
    pub fn set_flash_fwd(&mut self, fwd: FlashFwd) {
        self.flash_fwd = fwd;
    }
    /// Selects the flash backward's dQ kernel (see `FlashDq`: same bits).
    pub fn set_flash_dq(&mut self, dq: FlashDq) {
        self.flash_dq = dq;
    }
    /// Selects the flash backward's dK/dV kernel (see `FlashDkv`: same bits on the emulator).
    pub fn set_flash_dkv(&mut self, dkv: FlashDkv) {
        self.flash_dkv = dkv;
    }
    /// Sets the block count below which the dK/dV kernel splits each kv head's group of query
    /// heads over blocks (one per head, partials summed); 0 never splits, so that a block walks
    /// every head of its group (what long sequences do; tests reach that path at small sizes).
    /// The two sum a group's heads in different orders (partials then their sum, or one
    /// accumulator), each deterministic.
    /// None: the default again.
    pub fn set_flash_dkv_split_below(&mut self, blocks: Option<usize>) {
        self.dkv_split_below = blocks;
    }
    /// Selects where the flash kernels read their inputs from (see `FlashIo`: same bits).
    pub fn set_flash_io(&mut self, io: FlashIo) {
        self.flash_io = io;
    }
    /// Selects the kernel of flash decode steps (see `DecodeKernel`).
    pub fn set_decode_kernel(&mut self, decode: DecodeKernel) {
        self.decode = decode;
    }
    /// Selects the attention kernels (the flash kernels run where they support the head dim).
    pub fn with_attention(mut self, attn: AttnKernel) -> Self {
        self.attn = attn;
        self
    }
    pub fn set_attention(&mut self, attn: AttnKernel) {
        self.attn = attn;
    }
    pub fn attention_kernel(&self) -> AttnKernel {
        self.attn
    }
    fn use_flash(&self, shape: AttnShape) -> bool {
        self.attn == AttnKernel::Flash && flash::flash_supports(shape.head_dim)
    }
    /// Drops the small index arrays kept for reuse (`upload_cache`: up to 16 of <= 64 KiB),
    /// e.g. to check that a run gave every other buffer back.
    pub fn clear_upload_cache(&self) {
        self.indices.clear();
    }
    pub fn device(&self) -> &D {
        &self.dev
    }
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.dev
    }

    fn upload_u32(&self, v: &[u32]) -> D::Mem {
        self.dev.upload(bytemuck::cast_slice(if v.is_empty() { &[0u32] } else { v }))
    }
    fn upload_i32(&self, v: &[i32]) -> D::Mem {
        self.dev.upload(bytemuck::cast_slice(if v.is_empty() { &[0i32] } else { v }))
    }
    /// `upload_u32` of an array no kernel writes, through the cache of repeated uploads.
    fn upload_index_u32(&self, v: &[u32]) -> Arc<D::Mem> {
        self.upload_index_bytes(bytemuck::cast_slice(if v.is_empty() { &[0u32] } else { v }))
    }
    /// `upload_i32` of an array no kernel writes, through the cache of repeated uploads.
    fn upload_index_i32(&self, v: &[i32]) -> Arc<D::Mem> {
        self.upload_index_bytes(bytemuck::cast_slice(if v.is_empty() { &[0i32] } else { v }))
    }
    fn upload_index_bytes(&self, bytes: &[u8]) -> Arc<D::Mem> {
        self.indices.get(bytes, |b| self.dev.upload(b))
    }
    /// One `copy_rows_f32` launch: `width`-wide rows from `src` (row `src_rows[t]`, or `t`)
    /// to `dst` (row `dst_rows[t]`, or `t`), `n_rows` of them, rounded to bf16 into a KV
    /// cache of bf16 storage (`kv_cache16`). Callers check the rows.
    fn copy_rows(
        &self,
        dst: &mut DevBuf<D::Mem>,
        dst_rows: Option<&[usize]>,
        src: &DevBuf<D::Mem>,
        src_rows: Option<&[usize]>,
        n_rows: usize,
        width: usize,
    ) {
        let dst = kv_cache16::cache_dest(dst);
        self.launch_copy_rows(dst, dst_rows, Arg::Ptr(src.mem()), src_rows, n_rows, width);
    }
    /// `copy_rows_f32` on its arguments as given: the (f32, bf16) destination pair (one of
    /// them null), the source's memory, `width` 4-byte values a row (`copy_rows`; a row copy
    /// within one buffer moves raw words, `kv_cache16::copy_rows_within`).
    fn launch_copy_rows(
        &self,
        [dst32, dst16]: [Arg<'_, D::Mem>; 2],
        dst_rows: Option<&[usize]>,
        src: Arg<'_, D::Mem>,
        src_rows: Option<&[usize]>,
        n_rows: usize,
        width: usize,
    ) {
        if n_rows == 0 || width == 0 {
            return;
        }
        let up =
            |r: &[usize]| self.upload_index_u32(&r.iter().map(|&x| x as u32).collect::<Vec<u32>>());
        let (d_rows, s_rows) = (dst_rows.map(up), src_rows.map(up));
        self.elementwise(
            "copy_rows_f32",
            n_rows * width,
            &[
                dst32,
                dst16,
                opt_arg(d_rows.as_deref()),
                src,
                opt_arg(s_rows.as_deref()),
                Arg::I32(n_rows as i32),
                Arg::I32(width as i32),
            ],
        );
    }
    /// An RMSNorm backward's two launches: `name` (`rmsnorm_bwd_dx_f32`, or the `_add` form of
    /// `rmsnorm_backward_add`) with its output arguments `out` first, then dw += the column
    /// reduction of dout * x * rstd.
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_bwd<'a>(
        &self,
        name: &str,
        mut out: Vec<Arg<'a, D::Mem>>,
        dw: &mut DevBuf<D::Mem>,
        dout: &'a DevBuf<D::Mem>,
        x: &'a DevBuf<D::Mem>,
        w: &'a DevBuf<D::Mem>,
        rstd: &'a DevBuf<D::Mem>,
        rows: usize,
        dim: usize,
    ) {
        if rows == 0 {
            return;
        }
        out.extend([
            Arg::Ptr(dout.mem()),
            Arg::Ptr(x.mem()),
            Arg::Ptr(w.mem()),
            Arg::Ptr(rstd.mem()),
            Arg::I32(rows as i32),
            Arg::I32(dim as i32),
        ]);
        self.dev.launch(name, [rows as u32, 1, 1], [BLOCK, 1, 1], 0, &out);
        self.col_reduce(dw, dout.mem(), Some(x.mem()), Some(rstd.mem()), rows, dim);
    }
    fn new_buf(&self, len: usize) -> DevBuf<D::Mem> {
        DevBuf::f32(self.dev.alloc(len.max(1) * 4), len)
    }

    fn elementwise(&self, name: &str, n: usize, args: &[Arg<'_, D::Mem>]) {
        if n > 0 {
            self.dev.launch(name, [grid_for(n), 1, 1], [BLOCK, 1, 1], 0, args);
        }
    }

    /// `out[j] += sum_r a[r,j] * b[r,j] * rowscale[r]` (b, rowscale optional), deterministic:
    /// the rows are cut into slices by the shape alone ([`col_slices`]), each slice summed by
    /// its own blocks, the slices added in order by a second launch.
    fn col_reduce(
        &self,
        out: &mut DevBuf<D::Mem>,
        a: &D::Mem,
        b: Option<&D::Mem>,
        rowscale: Option<&D::Mem>,
        rows: usize,
        n: usize,
    ) {
        if n == 0 {
            return;
        }
        let (slices, slice_rows) = col_slices(rows, n);
        let part = (slices > 1).then(|| self.dev.alloc(slices * n * 4));
        self.dev.launch(
            "col_reduce_f32",
            [n.div_ceil(32) as u32, slices as u32, 1],
            [32, 32, 1],
            0,
            &[
                Arg::Ptr(out.mem()),
                opt_arg(part.as_ref()),
                Arg::Ptr(a),
                opt_arg(b),
                opt_arg(rowscale),
                Arg::I32(rows as i32),
                Arg::I32(n as i32),
                Arg::I32(slice_rows as i32),
            ],
        );
        if let Some(part) = &part {
            self.elementwise(
                "col_reduce_slices_f32",
                n,
                &[Arg::Ptr(out.mem()), Arg::Ptr(part), Arg::I32(slices as i32), Arg::I32(n as i32)],
            );
        }
    }

    /// Matmul through the `gemm_f32` kernel, whatever library the device has (tests use it to
    /// check the kernel itself).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_kernel(
        &self,
        out: &mut DevBuf<D::Mem>,
        a: &DevBuf<D::Mem>,
        ta: Tr,
        b: &DevBuf<D::Mem>,
        tb: Tr,
        m: usize,
        n: usize,
        k: usize,
        beta: f32,
    ) {
        if m == 0 || n == 0 {
            return;
        }
        let (a_rs, a_cs) = match ta {
            Tr::N => (k as i64, 1),
            Tr::T => (1, m as i64),
        };
        let (b_rs, b_cs) = match tb {
            Tr::N => (n as i64, 1),
            Tr::T => (1, k as i64),
        };
        self.dev.launch(
            "gemm_f32",
            [n.div_ceil(32) as u32, m.div_ceil(32) as u32, 1],
            [32, 8, 1],
            0,
            &[
                Arg::Ptr(out.mem()),
                Arg::Ptr(a.mem()),
                Arg::Ptr(b.mem()),
                Arg::I32(m as i32),
                Arg::I32(n as i32),
                Arg::I32(k as i32),
                Arg::I64(a_rs),
                Arg::I64(a_cs),
                Arg::I64(b_rs),
                Arg::I64(b_cs),
                Arg::F32(beta),
            ],
        );
    }

    /// `out = x` rounded through bf16 (`f16 == false`) or f16, round-to-nearest-even.
    pub fn round_16(&self, out: &mut DevBuf<D::Mem>, x: &DevBuf<D::Mem>, f16: bool) {
        let name = if f16 { "round_f16_f32" } else { "round_bf16_f32" };
        self.elementwise(
            name,
            x.len,
            &[Arg::Ptr(out.mem()), Arg::Ptr(x.mem()), Arg::I64(x.len as i64)],
        );
    }
}

fn opt_arg<M>(m: Option<&M>) -> Arg<'_, M> {
    m.map_or(Arg::Null, Arg::Ptr)
}

/// Little-endian bytes to f32 values (device memory is untyped bytes).
pub(crate) fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn attn_check(shape: AttnShape) {
    assert!(shape.head_dim <= 256, "attention kernels support head_dim <= 256");
    assert!(
        shape.n_kv_heads > 0 && shape.n_heads.is_multiple_of(shape.n_kv_heads),
        "n_heads must be a multiple of n_kv_heads"
    );
}

impl<D: Device> Backend for CudaBackend<D> {
    type Buf = DevBuf<D::Mem>;

    fn name(&self) -> String {
        self.dev.name()
    }
    fn memory_stats(&self) -> Option<crate::backend::memory::MemoryStats> {
        self.dev.memory_stats()
    }
    fn kernel_profile(&self) -> Vec<crate::backend::profile::KernelTime> {
        self.dev.kernel_profile()
    }
    fn repeat_begin(&self, tag: u64) {
        if self.dev.replay_stats().is_some() {
            // Each step uploads its own index arrays into its stretch's pool (the rope table
            // too: one small copy more a step), so that nothing from the step before holds a
            // block the captured step used and every step starts from the same free blocks.
            self.indices.clear();
        }
        self.dev.replay_begin(tag);
    }
    fn repeat_end(&self) {
        self.dev.replay_end();
    }
    fn replay_stats(&self) -> Option<replay::ReplayStats> {
        self.dev.replay_stats()
    }

    fn zeros(&self, n: usize) -> Self::Buf {
        let mut b = self.new_buf(n);
        self.fill(&mut b, 0.0);
        b
    }
    fn output_buf(&self, n: usize) -> Self::Buf {
        self.new_buf(n)
    }
    fn operand_buf(&self, n: usize) -> Self::Buf {
        self.new_operand_buf(n)
    }
    fn kv_cache_buf(&self, n: usize, shape: AttnShape) -> Self::Buf {
        self.new_kv_cache_buf(n, shape)
    }
    fn kv_cache_value_bytes(&self, shape: AttnShape) -> usize {
        if self.kv_cache_is_bf16(shape) {
            2
        } else {
            4
        }
    }
    fn upload(&self, host: &[f32]) -> Self::Buf {
        let mem =
            self.dev.upload(bytemuck::cast_slice(if host.is_empty() { &[0.0f32] } else { host }));
        DevBuf::f32(mem, host.len())
    }
    fn download(&self, buf: &Self::Buf) -> Vec<f32> {
        if buf.bf16 {
            return self.download_bf16(buf);
        }
        f32s(&self.dev.download(buf.mem(), buf.len * 4))
    }
    fn len(&self, buf: &Self::Buf) -> usize {
        buf.len
    }
    fn copy(&self, dst: &mut Self::Buf, dst_off: usize, src: &Self::Buf, src_off: usize, n: usize) {
        assert!(dst_off + n <= dst.len && src_off + n <= src.len, "copy: out of range");
        self.elementwise(
            "copy_f32",
            n,
            &[
                Arg::Ptr(dst.mem()),
                Arg::I64(dst_off as i64),
                Arg::Ptr(src.mem()),
                Arg::I64(src_off as i64),
                Arg::I64(n as i64),
            ],
        );
    }
    fn fill(&self, dst: &mut Self::Buf, value: f32) {
        self.elementwise(
            "fill_f32",
            dst.len,
            &[Arg::Ptr(dst.mem()), Arg::I64(dst.len as i64), Arg::F32(value)],
        );
    }
    fn scatter_rows(&self, dst: &mut Self::Buf, rows: &[usize], src: &Self::Buf, width: usize) {
        super::row_moves::check_rows("scatter_rows dst", rows, width, dst.len, src.len, true);
        self.copy_rows(dst, Some(rows), src, None, rows.len(), width);
    }
    fn copy_rows_within(&self, buf: &mut Self::Buf, src: &[usize], dst: &[usize], width: usize) {
        super::row_moves::check_rows_within(src, dst, width, buf.len);
        kv_cache16::copy_rows_within(self, buf, src, dst, width);
    }
    fn add_into(&self, out: &mut Self::Buf, x: &Self::Buf, y: &Self::Buf) {
        assert!(out.len == x.len && x.len == y.len, "add_into: length mismatch");
        self.elementwise(
            "add_f32",
            out.len,
            &[Arg::Ptr(out.mem()), Arg::Ptr(x.mem()), Arg::Ptr(y.mem()), Arg::I64(out.len as i64)],
        );
    }
    fn gather_rows(&self, dst: &mut Self::Buf, src: &Self::Buf, rows: &[usize], width: usize) {
        super::row_moves::check_rows("gather_rows src", rows, width, src.len, dst.len, false);
        self.copy_rows(dst, None, src, Some(rows), rows.len(), width);
    }

    fn matmul(
        &self,
        out: &mut Self::Buf,
        a: &Self::Buf,
        ta: Tr,
        b: &Self::Buf,
        tb: Tr,
        m: usize,
        n: usize,
        k: usize,
        beta: f32,
    ) {
        assert!(a.len >= m * k && b.len >= k * n && out.len >= m * n, "matmul: buffer too small");
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            // A product over nothing: out = beta * out (0 when beta == 0, ignoring NaN).
            if beta == 0.0 {
                self.elementwise(
                    "fill_f32",
                    m * n,
                    &[Arg::Ptr(out.mem()), Arg::I64((m * n) as i64), Arg::F32(0.0)],
                );
            } else {
                self.elementwise(
                    "scale_f32",
                    m * n,
                    &[Arg::Ptr(out.mem()), Arg::F32(beta), Arg::I64((m * n) as i64)],
                );
            }
            return;
        }
        if !self.dev.gemm(out.mem_mut(), a.gemm_in(), ta, b.gemm_in(), tb, m, n, k, beta) {
            self.matmul_kernel(out, a, ta, b, tb, m, n, k, beta);
        }
    }
    fn add_bias(&self, x: &mut Self::Buf, bias: &Self::Buf, rows: usize, n: usize) {
        self.elementwise(
            "add_bias_f32",
            rows * n,
            &[
                Arg::Ptr(x.mem()),
                Arg::Ptr(bias.mem()),
                Arg::I64((rows * n) as i64),
                Arg::I32(n as i32),
            ],
        );
    }
    fn bias_backward(&self, dbias: &mut Self::Buf, dy: &Self::Buf, rows: usize, n: usize) {
        self.col_reduce(dbias, dy.mem(), None, None, rows, n);
    }
    fn add_assign(&self, x: &mut Self::Buf, y: &Self::Buf) {
        assert_eq!(x.len, y.len, "add_assign: length mismatch");
        self.elementwise(
            "add_assign_f32",
            x.len,
            &[Arg::Ptr(x.mem()), Arg::Ptr(y.mem()), Arg::I64(x.len as i64)],
        );
    }
    fn scale(&self, x: &mut Self::Buf, s: f32) {
        self.elementwise(
            "scale_f32",
            x.len,
            &[Arg::Ptr(x.mem()), Arg::F32(s), Arg::I64(x.len as i64)],
        );
    }
    fn sum_squares(&self, x: &Self::Buf) -> f64 {
        if x.len == 0 {
            return 0.0;
        }
        // Two passes with a grid fixed by the length alone: deterministic.
        let blocks = x.len.div_ceil(BLOCK as usize).clamp(1, 1024);
        let partial = self.dev.alloc(blocks * 8);
        let total = self.dev.alloc(8);
        self.dev.launch(
            "sumsq_partial_f32",
            [blocks as u32, 1, 1],
            [BLOCK, 1, 1],
            0,
            &[Arg::Ptr(x.mem()), Arg::I64(x.len as i64), Arg::Ptr(&partial)],
        );
        self.dev.launch(
            "sum_partials_f64",
            [1, 1, 1],
            [BLOCK, 1, 1],
            0,
            &[Arg::Ptr(&partial), Arg::I32(blocks as i32), Arg::Ptr(&total)],
        );
        let b = self.dev.download(&total, 8);
        f64::from_le_bytes(b[..8].try_into().unwrap())
    }
    fn sum_squares_many(&self, xs: &[&Self::Buf]) -> f64 {
        self.sum_squares_list(xs)
    }
    fn fill_many(&self, bufs: &mut [&mut Self::Buf], value: f32) {
        self.fill_list(bufs, value)
    }
    fn adamw_many(
        &self,
        p: &mut [Self::Buf],
        g: &[Self::Buf],
        m: &mut [Self::Buf],
        v: &mut [Self::Buf],
        hp: AdamwStep,
    ) {
        self.adamw_list(p, g, m, v, hp)
    }

    fn embedding(&self, out: &mut Self::Buf, table: &Self::Buf, ids: &[u32], dim: usize) {
        if ids.is_empty() || dim == 0 {
            return;
        }
        let d_ids = self.upload_u32(ids);
        self.elementwise(
            "embedding_f32",
            ids.len() * dim,
            &[
                Arg::Ptr(out.mem()),
                Arg::Ptr(table.mem()),
                Arg::Ptr(&d_ids),
                Arg::I32(ids.len() as i32),
                Arg::I32(dim as i32),
                Arg::I32((table.len / dim) as i32),
            ],
        );
    }
    fn embedding_backward(
        &self,
        dtable: &mut Self::Buf,
        dout: &Self::Buf,
        ids: &[u32],
        dim: usize,
    ) {
        if ids.is_empty() || dim == 0 {
            return;
        }
        // Group token positions by id on the host (CSR), tokens ascending within an id, so the
        // kernel adds them in token order with no atomics.
        let mut order: Vec<u32> = (0..ids.len() as u32).collect();
        order.sort_by_key(|&t| (ids[t as usize], t));
        let (mut uniq, mut offsets) = (Vec::new(), Vec::new());
        for (p, &t) in order.iter().enumerate() {
            if uniq.last() != Some(&ids[t as usize]) {
                uniq.push(ids[t as usize]);
                offsets.push(p as u32);
            }
        }
        offsets.push(order.len() as u32);
        let (d_u, d_o, d_ord) =
            (self.upload_u32(&uniq), self.upload_u32(&offsets), self.upload_u32(&order));
        let threads = (dim.next_multiple_of(32)).min(BLOCK as usize) as u32;
        self.dev.launch(
            "embedding_bwd_f32",
            [uniq.len() as u32, 1, 1],
            [threads, 1, 1],
            0,
            &[
                Arg::Ptr(dtable.mem()),
                Arg::Ptr(dout.mem()),
                Arg::Ptr(&d_u),
                Arg::Ptr(&d_o),
                Arg::Ptr(&d_ord),
                Arg::I32(dim as i32),
                Arg::I32((dtable.len / dim) as i32),
            ],
        );
    }

    fn rmsnorm(
        &self,
        out: &mut Self::Buf,
        rstd: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        rows: usize,
        dim: usize,
        eps: f32,
    ) {
        self.rmsnorm_fwd(out, rstd, x, w, rows, dim, eps)
    }
    fn rmsnorm_backward(
        &self,
        dx: &mut Self::Buf,
        dw: &mut Self::Buf,
        dout: &Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        rstd: &Self::Buf,
        rows: usize,
        dim: usize,
    ) {
        let out = vec![Arg::Ptr(dx.mem())];
        self.rmsnorm_bwd("rmsnorm_bwd_dx_f32", out, dw, dout, x, w, rstd, rows, dim);
    }

    fn rope(
        &self,
        x: &mut Self::Buf,
        positions: &[u32],
        n_heads: usize,
        head_dim: usize,
        inv_freq: &[f32],
        inverse: bool,
    ) {
        assert_eq!(inv_freq.len(), head_dim / 2, "rope: head_dim / 2 frequencies");
        if positions.is_empty() || head_dim < 2 {
            return;
        }
        // Both arrays come from the upload cache: every layer rotates q and k with the same
        // ones, so a step uploads them once (a scaled model's frequencies too).
        let inv = self.upload_index_bytes(bytemuck::cast_slice(inv_freq));
        let pos = self.upload_index_u32(positions);
        self.elementwise(
            "rope_f32",
            positions.len() * n_heads * (head_dim / 2),
            &[
                Arg::Ptr(x.mem()),
                Arg::Ptr(&*pos),
                Arg::Ptr(&*inv),
                Arg::I32(positions.len() as i32),
                Arg::I32(n_heads as i32),
                Arg::I32(head_dim as i32),
                Arg::F32(if inverse { -1.0 } else { 1.0 }),
            ],
        );
    }

    fn attention(
        &self,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        spans: &[AttnSpan],
        shape: AttnShape,
    ) {
        self.attend(out, lse, q, k, v, spans, shape, true)
    }
    fn attention_backward(
        &self,
        dq: &mut Self::Buf,
        dk: &mut Self::Buf,
        dv: &mut Self::Buf,
        dout: &Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        out: &Self::Buf,
        lse: &Self::Buf,
        spans: &[AttnSpan],
        shape: AttnShape,
    ) {
        self.attend_backward(dq, dk, dv, dout, q, k, v, out, lse, spans, shape, true)
    }
    fn attention_bidir(
        &self,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        spans: &[AttnSpan],
        shape: AttnShape,
    ) {
        self.attend(out, lse, q, k, v, spans, shape, false)
    }
    fn attention_bidir_backward(
        &self,
        dq: &mut Self::Buf,
        dk: &mut Self::Buf,
        dv: &mut Self::Buf,
        dout: &Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        out: &Self::Buf,
        lse: &Self::Buf,
        spans: &[AttnSpan],
        shape: AttnShape,
    ) {
        self.attend_backward(dq, dk, dv, dout, q, k, v, out, lse, spans, shape, false)
    }
    fn rope_table(
        &self,
        x: &mut Self::Buf,
        angles: &Self::Buf,
        rows: usize,
        n_heads: usize,
        head_dim: usize,
        inverse: bool,
    ) {
        self.rope_from_table(x, angles, rows, n_heads, head_dim, inverse)
    }
    fn gelu(&self, out: &mut Self::Buf, x: &Self::Buf) {
        self.gelu_fwd(out, x)
    }
    fn gelu_backward(&self, dx: &mut Self::Buf, dout: &Self::Buf, x: &Self::Buf) {
        self.gelu_bwd(dx, dout, x)
    }

    fn swiglu(&self, out: &mut Self::Buf, gate: &Self::Buf, up: &Self::Buf) {
        self.swiglu_fwd(out, gate, Some(up), 0)
    }
    fn swiglu_stacked(&self, out: &mut Self::Buf, gate_up: &Self::Buf, rows: usize, width: usize) {
        assert!(gate_up.len >= 2 * rows * width, "swiglu_stacked: gate_up too short");
        assert_eq!(out.len, rows * width, "swiglu_stacked: out of rows x width");
        self.swiglu_fwd(out, gate_up, None, width)
    }
    fn stack_rows(&self, parts: &[&Self::Buf]) -> Option<Self::Buf> {
        self.stack_rows_bf16(parts)
    }
    fn matmul_stacked(
        &self,
        out: &mut Self::Buf,
        x: &Self::Buf,
        stack: &Self::Buf,
        m: usize,
        ns: &[usize],
        k: usize,
    ) {
        self.matmul_stacked_bf16(out, x, stack, m, ns, k)
    }
    fn qkv_epilogue(
        &self,
        x: crate::backend::fused_ops::Qkv<'_, Self>,
        rope: &crate::backend::fused_ops::Rope1d<'_>,
        cache: Option<crate::backend::fused_ops::CacheRows<'_, Self>>,
    ) {
        self.qkv_epilogue_fused(x, rope, cache)
    }
    fn add_rmsnorm(
        &self,
        sum: &mut Self::Buf,
        out: &mut Self::Buf,
        rstd: &mut Self::Buf,
        x: &Self::Buf,
        y: &Self::Buf,
        w: &Self::Buf,
        rows: usize,
        dim: usize,
        eps: f32,
    ) {
        self.add_rmsnorm_fused(sum, out, rstd, x, y, w, rows, dim, eps)
    }
    fn qkv_backward_epilogue(
        &self,
        x: crate::backend::fused_ops::QkvGrads<'_, Self>,
        rope: &crate::backend::fused_ops::Rope1d<'_>,
    ) {
        self.qkv_backward_epilogue_fused(x, rope)
    }
    fn rmsnorm_backward_add(
        &self,
        dacc: &mut Self::Buf,
        scratch: &mut Self::Buf,
        dw: &mut Self::Buf,
        dout: &Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        rstd: &Self::Buf,
        rows: usize,
        dim: usize,
    ) {
        self.rmsnorm_backward_add_fused(dacc, scratch, dw, dout, x, w, rstd, rows, dim)
    }
    fn swiglu_backward(
        &self,
        dgate: &mut Self::Buf,
        dup: &mut Self::Buf,
        dout: &Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
    ) {
        self.swiglu_bwd(dgate, dup, dout, gate, up)
    }

    fn logprobs(
        &self,
        lp: &mut Self::Buf,
        entropy: &mut Self::Buf,
        logits: &Self::Buf,
        targets: &[u32],
        rows: usize,
        vocab: usize,
        inv_temp: f32,
    ) {
        if rows == 0 {
            return;
        }
        let t = self.upload_u32(&targets[..rows]);
        self.dev.launch(
            "logprobs_f32",
            [rows as u32, 1, 1],
            [logprob_block(vocab), 1, 1],
            0,
            &[
                Arg::Ptr(lp.mem()),
                Arg::Ptr(entropy.mem()),
                Arg::Ptr(logits.mem()),
                Arg::Ptr(&t),
                Arg::I32(rows as i32),
                Arg::I32(vocab as i32),
                Arg::F32(inv_temp),
            ],
        );
    }
    fn logprobs_backward(
        &self,
        dlogits: &mut Self::Buf,
        logits: &Self::Buf,
        targets: &[u32],
        dlp: &Self::Buf,
        dent: &Self::Buf,
        rows: usize,
        vocab: usize,
        inv_temp: f32,
    ) {
        self.logprobs_bwd(dlogits, None, logits, targets, dlp, dent, rows, vocab, inv_temp)
    }
    fn logprobs_and_backward(
        &self,
        dlogits: &mut Self::Buf,
        lp: &mut Self::Buf,
        entropy: &mut Self::Buf,
        logits: &Self::Buf,
        targets: &[u32],
        dlp: &Self::Buf,
        dent: &Self::Buf,
        rows: usize,
        vocab: usize,
        inv_temp: f32,
    ) {
        let fwd = Some((lp, entropy));
        self.logprobs_bwd(dlogits, fwd, logits, targets, dlp, dent, rows, vocab, inv_temp)
    }

    fn adamw(
        &self,
        p: &mut Self::Buf,
        g: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        hp: AdamwStep,
    ) {
        let [p_, g_, m_, v_] = [p.mem(), g.mem(), m.mem(), v.mem()].map(Arg::Ptr);
        let hyper = adamw_hyper_args(hp);
        let n = Arg::I64(p.len as i64);
        // Weights change only here: a bf16 GEMM reads their bf16 shadow until p is touched
        // again. The kernel writes it beside the weight (no second pass reading p again).
        if self.dev.wants_bf16_shadow() && p.len > 0 {
            let shadow = self.dev.alloc(p.len * 2);
            let mut args = vec![p_, g_, m_, v_, Arg::Ptr(&shadow), n];
            args.extend(hyper);
            self.elementwise("adamw_bf16shadow_f32", p.len, &args);
            self.dev.adopt_bf16_shadow(p.mem(), shadow, p.len);
        } else {
            let mut args = vec![p_, g_, m_, v_, n];
            args.extend(hyper);
            self.elementwise("adamw_f32", p.len, &args);
        }
    }
}

/// The hyper-parameter arguments of the AdamW kernels (`adamw_f32`, `adamw_bf16shadow_f32`,
/// `adamw_many_f32`, kernels/elementwise.cu), in their order: lr, beta1, beta2, eps, weight
/// decay, the reciprocal bias corrections `1/(1-beta1^t)` and `1/(1-beta2^t)` (computed in
/// f64, then rounded), and the gradient scale. One function, so every path gets the same bits.
fn adamw_hyper_args<'a, M>(hp: AdamwStep) -> [Arg<'a, M>; 8] {
    let rbc1 = (1.0 / (1.0 - (hp.beta1 as f64).powi(hp.step as i32))) as f32;
    let rbc2 = (1.0 / (1.0 - (hp.beta2 as f64).powi(hp.step as i32))) as f32;
    [
        Arg::F32(hp.lr),
        Arg::F32(hp.beta1),
        Arg::F32(hp.beta2),
        Arg::F32(hp.eps),
        Arg::F32(hp.weight_decay),
        Arg::F32(rbc1),
        Arg::F32(rbc2),
        Arg::F32(hp.grad_scale),
    ]
}

/// Threads per logprobs row: a full block for real vocabularies, a small one for tiny rows.
/// A function of `vocab` alone, so a row's result never depends on its batch.
pub(super) fn logprob_block(vocab: usize) -> u32 {
    if vocab >= 16384 {
        1024
    } else {
        BLOCK
    }
}

#[cfg(feature = "emu")]
impl CudaBackend<emu::EmuDevice> {
    /// The backend on the CUDA emulator, with the schedules of `MMR1_EMU_SCHEDULE` (forward
    /// order without it).
    pub fn emulator() -> Self {
        CudaBackend::with_device(emu::EmuDevice::from_env())
    }
    /// The backend on the CUDA emulator running every launch under each of `schedules` and
    /// failing unless all give the same bits (see `emu::Schedule`).
    pub fn emulator_with(schedules: &[emu::Schedule]) -> Self {
        CudaBackend::with_device(emu::EmuDevice::with_schedules(schedules))
    }
}

#[cfg(test)]
mod tests {
    use super::col_slices;

    /// Slices cover every row once, in multiples of 32 rows, none empty; the model's widths
    /// get enough blocks; small reductions stay one slice.
    #[test]
    fn column_slices_cover_the_rows() {
        assert_eq!(col_slices(4096, 896), (10, 416));
        assert_eq!(col_slices(17, 65), (1, 32));
        assert_eq!(col_slices(0, 5).0, 1);
        for rows in [1, 31, 32, 255, 256, 511, 512, 600, 1100, 4096, 16384, 100_000] {
            for n in [1, 7, 33, 70, 896, 4864, 9000] {
                let (slices, per) = col_slices(rows, n);
                assert!(per % 32 == 0 && per >= 32, "{rows}x{n}: {per} rows a slice");
                assert!(
                    slices * per >= rows && (slices - 1) * per < rows.max(1),
                    "{rows}x{n}: {slices} x {per}"
                );
                assert!(slices == 1 || per >= 256 - 31, "{rows}x{n}: slices of {per} rows");
            }
        }
    }
}
