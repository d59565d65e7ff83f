//! Flash attention on bf16 tensor cores (`kernels/flash_attention.cu`): host-side work lists
//! and launches. Selected with `AttnKernel::Flash`; the per-query f32 kernels of
//! `attention.cu` stay the default and the exact baseline.
//!
//! Precision: Q, K, V, P, dO and dS are rounded to bf16 as they enter the tensor cores (the
//! backend's f32 buffers are converted once per call into bf16 copies, or in the kernels' tile
//! loads: `FlashIo`); scores, softmax statistics and all accumulators are f32. Tested against
//! the f32 CPU reference at relative L2 <= 1e-2 (tests/suite/flash_attention.rs).

use super::device::{env_choice, launch_f32_to_bf16, Arg, Device};
use super::{CudaBackend, DevBuf};
use crate::backend::{AttnShape, AttnSpan};

/// Which attention kernels a `CudaBackend` runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttnKernel {
    /// Per-query f32 kernels (`attention.cu`): exact to f32 rounding, slow.
    #[default]
    Reference,
    /// Tiled bf16 tensor-core kernels (`flash_attention.cu`) for head dims 16/32/64/128;
    /// other head dims fall back to `Reference`.
    Flash,
}

impl AttnKernel {
    /// From `MMR1_ATTENTION` (`reference` or `flash`); unset means `Reference`.
    pub fn from_env() -> Result<Self, String> {
        Ok(Self::override_from_env()?.unwrap_or_default())
    }
    /// `MMR1_ATTENTION` when set (None when unset).
    pub fn override_from_env() -> Result<Option<Self>, String> {
        env_choice(
            "MMR1_ATTENTION",
            &[("reference", AttnKernel::Reference), ("flash", AttnKernel::Flash)],
        )
    }
}

/// Where the flash forward and backward kernels read Q, K, V and dO from. Both round the same
/// f32 values to bf16 the same way (nearest even), so they compute the same bits; they differ
/// in the bytes moved (kernels/flash_attention.cu, "Storage").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FlashIo {
    /// The f32 activations: each tile is copied into an f32 stage in shared memory and
    /// converted there, every time a block walks it.
    F32,
    /// bf16 copies, one `f32_to_bf16_x8` launch per tensor and call, of the tensors a kernel
    /// walks (K, V in the forward; Q, K, V, dO in the backward, whose two kernels walk two each
    /// and read the other two once): the kernels copy rows straight into their bf16 tiles (no
    /// stage, no conversion pass; half the bytes each time a block re-reads a tile from L2).
    /// Used when the K/V buffers are at most twice the rows the spans read, so a prefill
    /// against a large KV cache keeps `F32` rather than converting the whole cache.
    #[default]
    Bf16,
}

impl FlashIo {
    /// From `MMR1_FLASH_IO` (`bf16` or `f32`); unset means `Bf16`.
    pub fn from_env() -> Result<Self, String> {
        let choices = [("bf16", FlashIo::Bf16), ("f32", FlashIo::F32)];
        Ok(env_choice("MMR1_FLASH_IO", &choices)?.unwrap_or_default())
    }
}

/// Which forward kernel runs with bf16 storage (`FlashIo::Bf16`) at head dims 64 and 128. All
/// compute the same bits from the same work items (128 query rows a block; `Wgmma`'s on the
/// emulator, a GPU's wgmma may round its sums otherwise); they differ in how the block's warps
/// reach the K/V tiles (kernels/flash_attention.cu, "forward, wide"; kernels/flash_wgmma.cu).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FlashFwd {
    /// `flash_fwd_bf16_d*`: 8 warps of 16 rows; each K/V fragment read from shared memory
    /// feeds one MMA row tile.
    #[default]
    Narrow,
    /// `flash_fwd_wide_bf16_d{64,128}`: 4 warps of 32 rows (FlashAttention-2's layout), Q in
    /// shared memory; each K/V fragment feeds two MMAs. Opt-in: faster alone at 2 x 4,096
    /// tokens, 16 heads, d128 (921 vs 1,168 us), slower at the model's shapes (4 x 1,024, GQA
    /// d128: 169 vs 160 us; the 0.5B step, d64: 62.3 vs 61.6 ms; H100, 2026-11-27).
    Wide,
    /// `flash_fwd_pipe_bf16_d{64,128}`: the narrow layout with each warp's next key tile's
    /// S = Q K^T issued before this tile's softmax (three K/V buffers). Opt-in until measured.
    Pipe,
    /// `flash_fwd_wg_bf16_d{64,128}` (kernels/flash_wgmma.cu): the narrow layout's rows
    /// and softmax with both products as Hopper's wgmma, K and V read by the tensor cores
    /// straight from shared memory. sm_90 only (`Device::has_wgmma`; elsewhere the narrow
    /// forward runs). The emulator's bits are the narrow one's; opt-in until measured.
    Wgmma,
}

/// Which dQ kernel the flash backward runs with bf16 storage (`Pipe` at head dim 64, `Wgmma`
/// at 64 and 128). All compute the same bits from the same work items on the emulator
/// (kernels/flash_attention.cu, "backward: dQ, pipelined"; kernels/flash_wgmma.cu).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FlashDq {
    /// `flash_bwd_dq_bf16_d*`: per key tile S and dP, then dS, then dQ += dS K.
    #[default]
    Plain,
    /// `flash_bwd_dq_pipe_bf16_d64`: the next tile's S and dP issued before this tile's dS
    /// (three K/V buffers). Opt-in until measured; other head dims run `Plain`.
    Pipe,
    /// `flash_bwd_dq_wg_bf16_d{64,128}` (kernels/flash_wgmma.cu): the products as Hopper's
    /// wgmma, the previous tile's dQ += dS K in flight during this tile's dS. sm_90 only
    /// (elsewhere `Plain` runs); the emulator's bits are `Plain`'s; opt-in until measured.
    Wgmma,
}

/// Which dK/dV kernel the flash backward runs with bf16 storage at head dims 64 and 128. Both
/// compute the same bits from the same work items on the emulator (kernels/flash_wgmma.cu,
/// "backward: dK and dV").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FlashDkv {
    /// `flash_bwd_dkv[_bf16]_d*` (mma.sync).
    #[default]
    Plain,
    /// `flash_bwd_dkv_wg_bf16_d{64,128}`: Hopper's wgmma, the block's K and V rows read by the
    /// tensor cores from shared memory. sm_90 only (elsewhere `Plain` runs); opt-in until
    /// measured.
    Wgmma,
}

impl FlashDkv {
    /// From `MMR1_FLASH_DKV` (`plain` or `wgmma`); unset means `Plain`.
    pub fn from_env() -> Result<Self, String> {
        let choices = [("plain", FlashDkv::Plain), ("wgmma", FlashDkv::Wgmma)];
        Ok(env_choice("MMR1_FLASH_DKV", &choices)?.unwrap_or_default())
    }
}

impl FlashDq {
    /// From `MMR1_FLASH_DQ` (`plain`, `pipe` or `wgmma`); unset means `Plain`.
    pub fn from_env() -> Result<Self, String> {
        let choices =
            [("plain", FlashDq::Plain), ("pipe", FlashDq::Pipe), ("wgmma", FlashDq::Wgmma)];
        Ok(env_choice("MMR1_FLASH_DQ", &choices)?.unwrap_or_default())
    }
}

/// Which key tiles the flash forward and backward kernels compare against the causal mask.
/// Both compute the same bits (a tile with no masked score adds the same terms either way);
/// they differ in the instructions spent per score.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FlashMask {
    /// Only the tiles that cross a warp's diagonal or the end of the keys (`fa_masked` in the
    /// kernels): of a 4,096-token sequence's 64-key tiles, the last one or two of each row
    /// tile. The others skip the comparison of each score with its row's position.
    #[default]
    Diagonal,
    /// Every tile: the kernels as first written, kept to compare and time against.
    Every,
}

impl FlashMask {
    /// From `MMR1_FLASH_MASK` (`diagonal` or `every`); unset means `Diagonal`.
    pub fn from_env() -> Result<Self, String> {
        let choices = [("diagonal", FlashMask::Diagonal), ("every", FlashMask::Every)];
        Ok(env_choice("MMR1_FLASH_MASK", &choices)?.unwrap_or_default())
    }
    /// The kernels' `mask_all` argument.
    fn arg(self) -> i32 {
        (self == FlashMask::Every) as i32
    }
}

impl FlashFwd {
    /// From `MMR1_FLASH_FWD` (`narrow`, `wide`, `pipe` or `wgmma`); unset means `Narrow`.
    pub fn from_env() -> Result<Self, String> {
        let choices = [
            ("narrow", FlashFwd::Narrow),
            ("wide", FlashFwd::Wide),
            ("pipe", FlashFwd::Pipe),
            ("wgmma", FlashFwd::Wgmma),
        ];
        Ok(env_choice("MMR1_FLASH_FWD", &choices)?.unwrap_or_default())
    }
}

/// Threads of the wide forward's block (4 warps of 32 rows), = FW_THREADS.
const WIDE_THREADS: u32 = 128;

/// Dynamic shared memory of the wide forward: two buffers of a K/V tile pair and the block's
/// 128 query rows, all bf16 with rows padded by 16 bytes (104 KB at head dim 128).
fn wide_smem(head_dim: usize) -> u32 {
    let row = (head_dim / 8 + 1) * 16;
    (4 * WALK * row + TILE * row) as u32
}

/// Which kernel serves decode steps (one query per sequence) under `AttnKernel::Flash`. Both
/// compute the same bits from the same work items; they differ in how the K/V rows reach the
/// warp (kernels/flash_attention.cu, "decode").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DecodeKernel {
    /// `flash_decode_split`: rows read from global memory by the lanes (415 us, 19% of HBM at
    /// 32 x 4096 keys, d128, H100, 2026-11-27).
    Split,
    /// `flash_decode_staged_d{64,128}`: rows copied to shared memory by cp.async a tile ahead
    /// (172 us, 47% of HBM on the same bench: 2.4x the split kernel); other head dims use `Split`.
    #[default]
    Staged,
    /// `flash_decode_mma_d{64,128}`: a group's heads as the rows of tensor-core tiles, 64 keys
    /// a tile, Q and P rounded to bf16 (the flash forward's tolerance, not the f32 kernels').
    /// Opt-in until measured; other head dims use `Split`.
    Mma,
}

impl DecodeKernel {
    /// From `MMR1_DECODE` (`split`, `staged` or `mma`); unset means `Staged`.
    pub fn from_env() -> Result<Self, String> {
        let choices = [
            ("split", DecodeKernel::Split),
            ("staged", DecodeKernel::Staged),
            ("mma", DecodeKernel::Mma),
        ];
        Ok(env_choice("MMR1_DECODE", &choices)?.unwrap_or_default())
    }
}

/// How flash decode cuts a sequence's keys into split items (`decode_chunk`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DecodeChunks {
    /// 32, 64 or 128 keys by the sequence's length (`decode_chunk`).
    #[default]
    ByLength,
    /// 128 keys whatever the length: the chunks before 2026-11-28, kept to time against.
    Fixed128,
}

impl DecodeChunks {
    /// From `MMR1_DECODE_CHUNKS` (`length` or `128`); unset means `ByLength`.
    pub fn from_env() -> Result<Self, String> {
        let choices = [("length", DecodeChunks::ByLength), ("128", DecodeChunks::Fixed128)];
        Ok(env_choice("MMR1_DECODE_CHUNKS", &choices)?.unwrap_or_default())
    }
    fn keys(self, kv_len: usize) -> usize {
        match self {
            DecodeChunks::ByLength => decode_chunk(kv_len),
            DecodeChunks::Fixed128 => 128,
        }
    }
}

/// Bytes of a bf16 tile of `rows` rows of `head_dim` values, rows padded by 16 bytes (the
/// flash kernels' shared-memory tiles, `fa_tile_ptr`).
fn tile_bytes(rows: usize, head_dim: usize) -> u32 {
    (rows * (head_dim / 8 + 1) * 16) as u32
}

/// Dynamic shared memory of the pipelined forward: three buffers of a K/V tile pair (104 KB
/// at head dim 128).
fn pipe_smem(head_dim: usize) -> u32 {
    6 * tile_bytes(WALK, head_dim)
}

/// Dynamic shared memory of the wgmma dK/dV kernel (`flash_bwd_dkv_wg`): two buffers of a Q
/// and a dO tile, the block's 128 K and V rows, and lse and D of each buffer's 64 queries.
fn wgmma_dkv_smem(head_dim: usize) -> u32 {
    (8 * WALK * head_dim * 2 + 2 * 2 * WALK * 4) as u32
}

/// Dynamic shared memory of the wgmma forward and dQ kernels (`fg_smem` in
/// kernels/flash_wgmma.cu): three buffers of a K and a V tile of 64 bf16 rows, unpadded
/// (wgmma's core-matrix layout).
fn wgmma_smem(head_dim: usize) -> u32 {
    (6 * WALK * head_dim * 2) as u32
}

/// Warps per block of the staged decode kernel (DEC_ST_WARPS) and its dynamic shared memory:
/// per warp a K tile of 32 rows padded by 16 bytes and a V tile, in the cache's storage
/// (`value_bytes` 4 or 2), and the group's queries (up to DEC_MAXG = 8 heads) and their
/// probabilities in f32 (`dec_st<D, KV>::PER_WARP` bytes).
const DEC_ST_WARPS: usize = 2;
fn decode_staged_smem(head_dim: usize, value_bytes: usize) -> u32 {
    let tiles = (32 * (head_dim + 16 / value_bytes) + 32 * head_dim) * value_bytes;
    let per_warp = tiles + (8 * head_dim + 8 * 32) * 4;
    (DEC_ST_WARPS * per_warp) as u32
}

/// Rows a block owns (queries in the forward and dQ kernels, keys in dK/dV), = FA_OWN.
const TILE: usize = 128;
/// Threads per block (8 warps of 16 owned rows each), = FA_THREADS.
const THREADS: u32 = 256;
/// Rows of the tiles a block walks through shared memory, = FA_ROWS.
const WALK: usize = 64;

/// Dynamic shared memory of the fwd / dQ / dK-dV kernels (`fa_smem<D, In>::walk` in the
/// kernel source, plus `FA_DKV_EXTRA` for dK/dV): two buffers of a bf16 tile pair, rows padded
/// by 16 bytes, and with f32 storage the f32 stage of the tile pair in flight. At head dim 128
/// 132 KB (f32) or 68 KB (bf16): more than the 48 KB a launch gets without the opt-in, so every
/// launch sets the kernel's limit first. The dK/dV kernel at head dim 128 in bf16 storage keeps
/// its block's K and V rows there too (`fa_dkv_asmem`: two 128-row tiles, 68 KB more).
fn walk_smem(head_dim: usize, dkv: bool, io: FlashIo) -> u32 {
    let row = (head_dim / 8 + 1) * 16;
    let tile = WALK * row;
    let stage = if io == FlashIo::F32 { WALK * head_dim * 4 } else { 0 };
    let extra = match (dkv, head_dim, io) {
        (true, 128, FlashIo::Bf16) => 4 * WALK * 4 + 2 * TILE * row,
        (true, ..) => 4 * WALK * 4,
        _ => 0,
    };
    (4 * tile + 2 * stage + extra) as u32
}

/// A flash kernel's entry point: `flash_{kind}_d{D}`, `_bf16` before the head dim for bf16
/// storage.
fn flash_kernel(kind: &str, io: FlashIo, head_dim: usize) -> String {
    let io = if io == FlashIo::Bf16 { "_bf16" } else { "" };
    format!("flash_{kind}{io}_d{head_dim}")
}

/// The storage a call reads: `preferred`, unless it is bf16 and a buffer holds more than twice
/// the rows the spans read (`q_len` query rows of `q_width` values in a buffer of `q_elems`,
/// likewise kv), when converting all of it would cost more than the kernels save.
fn call_io(
    preferred: FlashIo,
    spans: &[AttnSpan],
    (q_elems, q_width): (usize, usize),
    (kv_elems, kv_width): (usize, usize),
) -> FlashIo {
    let q_rows: usize = spans.iter().map(|s| s.q_len).sum();
    let kv_rows: usize = spans.iter().map(|s| s.kv_len).sum();
    if preferred == FlashIo::Bf16
        && q_elems <= 2 * q_rows * q_width
        && kv_elems <= 2 * kv_rows * kv_width
    {
        FlashIo::Bf16
    } else {
        FlashIo::F32
    }
}

/// Whether the flash kernels exist for this head dim.
pub fn flash_supports(head_dim: usize) -> bool {
    matches!(head_dim, 16 | 32 | 64 | 128)
}

/// Query tiles: (first query row, rows, span's first kv row, position of the first query),
/// the most keys first: under causal masking the last tiles of long sequences are the longest
/// blocks, and starting them first shortens the grid's tail. Blocks are independent, so the
/// order changes no result.
fn q_tiles(spans: &[AttnSpan]) -> Vec<i32> {
    let mut t: Vec<[i32; 4]> = Vec::new();
    for s in spans {
        for i0 in (0..s.q_len).step_by(TILE) {
            t.push([
                (s.q_start + i0) as i32,
                TILE.min(s.q_len - i0) as i32,
                s.kv_start as i32,
                (s.kv_len - s.q_len + i0) as i32,
            ]);
        }
    }
    t.sort_by_key(|x| std::cmp::Reverse(x[3] + x[1])); // keys seen by the tile's last row
    t.concat()
}

/// The grid of a flash kernel over `items` work items x `heads` heads (the dK/dV kernel: kv
/// heads x slices of the group), 1-D and item-major: block b runs item b / heads for head
/// b % heads (`fa_block` in kernels/flash_attention.cu). With the items longest first, every
/// head's longest blocks start first (see `fa_block`; `tests::item_major_launch_ends_short`).
fn item_major_grid(items: usize, heads: usize) -> [u32; 3] {
    // gridDim.x is at most 2^31 - 1 (and the kernels index blocks with `int`).
    let blocks = i32::try_from(items * heads).expect("a flash grid of 2^31 blocks or more");
    [blocks as u32, 1, 1]
}

/// Key tiles: (first kv row, keys, index of the first key, span's q_start, q_len, position of
/// its first query, 0, 0), the most queries first (see `q_tiles`).
fn kv_tiles(spans: &[AttnSpan]) -> Vec<i32> {
    let mut v: Vec<[i32; 8]> = Vec::new();
    for s in spans {
        for j0 in (0..s.kv_len).step_by(TILE) {
            v.push([
                (s.kv_start + j0) as i32,
                TILE.min(s.kv_len - j0) as i32,
                j0 as i32,
                s.q_start as i32,
                s.q_len as i32,
                (s.kv_len - s.q_len) as i32,
                0,
                0,
            ]);
        }
    }
    // queries that see the tile's first key: q_len - max(0, j0 - (kv_len - q_len))
    v.sort_by_key(|x| std::cmp::Reverse(x[4] - (x[2] - x[5]).max(0)));
    v.concat()
}

/// Warps a block of the split decode kernel (DEC_WARPS in kernels/flash_attention.cu).
const DEC_WARPS: usize = 4;

/// Keys per decode split item of a sequence with `kv_len` keys: the smallest of 32, 64 and 128
/// that cuts it into at most 8 chunks, else 128. A warp walks its chunk 32 keys at a time, one
/// dependent tile after another, and a decode step of a few dozen short sequences gives only a
/// few warps an SM: at 64 sequences of ~160 keys a chunk of 128 left each warp 4 tiles in a
/// row and the kernel took ~30 us a layer for a few us of bytes (sixth H100 call). Shorter chunks
/// give short sequences more warps, each walking fewer tiles; long ones keep 128 keys, where
/// each split's partials (f32, written and read once) stay small beside the keys it reads.
/// A function of the sequence's own length, never of the batch: a sequence's attention sums
/// its partials in the same order whatever decodes beside it (continuous batching's responses
/// do not depend on the slot count).
fn decode_chunk(kv_len: usize) -> usize {
    [32, 64].into_iter().find(|c| kv_len <= 8 * c).unwrap_or(128)
}

/// Whether a call is a decode step the split kernel serves: one query per sequence (the last
/// position), at most 8 query heads per kv head, head dim a multiple of 4 up to 256.
pub fn decode_supports(spans: &[AttnSpan], shape: AttnShape) -> bool {
    !spans.is_empty()
        && spans.iter().all(|s| s.q_len == 1)
        && shape.n_heads / shape.n_kv_heads <= 8
        && shape.head_dim.is_multiple_of(4)
        && shape.head_dim <= 256
}

/// Decode work: split items (query row, first kv row, keys, 0) and per-sequence combine items
/// (query row, first split, splits, 0). The split items are padded with empty ones (row 0, no
/// keys: their partials are written and never combined) to a power of two, so that the grid
/// and the item count stay the same while sequences grow by a chunk here and there: a decode
/// step then repeats its launches exactly (what a replayed CUDA graph needs, `cuda::replay`).
fn decode_items(spans: &[AttnSpan], chunks: DecodeChunks) -> (Vec<i32>, Vec<i32>) {
    let (mut split, mut comb) = (Vec::new(), Vec::new());
    for s in spans {
        let first = split.len() / 4;
        let chunk = chunks.keys(s.kv_len);
        for c0 in (0..s.kv_len).step_by(chunk) {
            split.extend_from_slice(&[
                s.q_start as i32,
                (s.kv_start + c0) as i32,
                chunk.min(s.kv_len - c0) as i32,
                0,
            ]);
        }
        comb.extend_from_slice(&[
            s.q_start as i32,
            first as i32,
            (split.len() / 4 - first) as i32,
            0,
        ]);
    }
    let items = split.len() / 4;
    if items > 0 {
        split.resize(4 * items.next_power_of_two(), 0);
    }
    (split, comb)
}

impl<D: Device> CudaBackend<D> {
    /// Flash-decoding forward (f32 arithmetic on K and V of f32 or bf16 storage: a KV cache of
    /// `kv_cache_buf`): see `decode_supports`. With `out16`, the combine kernel also writes
    /// `out`'s bf16 rounding there (`producer_shadows`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn flash_decode(
        &self,
        out: &mut DevBuf<D::Mem>,
        out16: Option<&D::Mem>,
        lse: &mut DevBuf<D::Mem>,
        q: &DevBuf<D::Mem>,
        k: &DevBuf<D::Mem>,
        v: &DevBuf<D::Mem>,
        spans: &[AttnSpan],
        shape: AttnShape,
    ) {
        let (h, hkv, d) = (shape.n_heads, shape.n_kv_heads, shape.head_dim);
        let (split, comb) = decode_items(spans, self.decode_chunks);
        let n_items = split.len() / 4;
        if n_items == 0 {
            return;
        }
        // Every layer of a step has the same work items: uploaded once (the upload cache).
        let (d_split, d_comb) = (self.upload_index_i32(&split), self.upload_index_i32(&comb));
        let part_o = self.dev.alloc(n_items * h * d * 4);
        let part_ml = self.dev.alloc(n_items * h * 2 * 4);
        let scale = (1.0 / (d as f64).sqrt()) as f32;
        // The staged and mma kernels are compiled per head dim (64, 128); the split one takes
        // d. Each has a form for K and V in bf16 storage (`_bf16`).
        let kernel = if matches!(d, 64 | 128) { self.decode } else { DecodeKernel::Split };
        let (kv, value_bytes) = kv_storage(k, v);
        let (name, warps, smem) = match kernel {
            DecodeKernel::Staged => (
                format!("flash_decode_staged{kv}_d{d}"),
                DEC_ST_WARPS,
                decode_staged_smem(d, value_bytes),
            ),
            // One warp a block, a K and a V tile of 64 bf16 rows.
            DecodeKernel::Mma => (format!("flash_decode_mma{kv}_d{d}"), 1, 2 * tile_bytes(WALK, d)),
            DecodeKernel::Split => (format!("flash_decode_split{kv}"), DEC_WARPS, 0),
        };
        // The split kernel takes the head dim as an argument; the others are compiled per dim.
        let per_dim = kernel != DecodeKernel::Split;
        if smem > 0 {
            self.dev.set_max_dynamic_shared(&name, smem);
        }
        let mut args = vec![
            Arg::Ptr(&part_o),
            Arg::Ptr(&part_ml),
            Arg::Ptr(q.mem()),
            kv_arg(k),
            kv_arg(v),
            Arg::Ptr(&*d_split),
            Arg::I32(n_items as i32),
            Arg::I32(h as i32),
            Arg::I32(hkv as i32),
        ];
        if !per_dim {
            args.push(Arg::I32(d as i32));
        }
        args.push(Arg::F32(scale));
        self.dev.launch(
            &name,
            [n_items.div_ceil(warps) as u32, hkv as u32, 1],
            [32 * warps as u32, 1, 1],
            smem,
            &args,
        );
        self.dev.launch(
            "flash_decode_combine",
            [(comb.len() / 4) as u32, h as u32, 1],
            [d.next_multiple_of(32).min(256) as u32, 1, 1],
            0,
            &[
                Arg::Ptr(out.mem()),
                super::opt_arg(out16),
                Arg::Ptr(lse.mem()),
                Arg::Ptr(&part_o),
                Arg::Ptr(&part_ml),
                Arg::Ptr(&*d_comb),
                Arg::I32(h as i32),
                Arg::I32(d as i32),
            ],
        );
    }

    /// Causal flash attention forward; with `out16`, also `out`'s bf16 rounding there.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn flash_forward(
        &self,
        out: &mut DevBuf<D::Mem>,
        out16: Option<&D::Mem>,
        lse: &mut DevBuf<D::Mem>,
        q: &DevBuf<D::Mem>,
        k: &DevBuf<D::Mem>,
        v: &DevBuf<D::Mem>,
        spans: &[AttnSpan],
        shape: AttnShape,
    ) {
        let items = q_tiles(spans);
        if items.is_empty() {
            return;
        }
        let d_items = self.upload_index_i32(&items);
        let scale = (1.0 / (shape.head_dim as f64).sqrt()) as f32;
        // A KV cache in bf16 storage (`kv_cache_buf`) is read as it is, by the bf16 kernels.
        let cache16 = kv_storage(k, v).1 == 2;
        let io = if cache16 { FlashIo::Bf16 } else { self.call_io(spans, shape, q, k) };
        // The forward walks K and V (every query tile re-reads them) but reads Q once: only
        // K and V are worth a bf16 copy. Q is passed as read-only (`Arg::In`): its copy, if the
        // q/k/v epilogue wrote one, stays for the backward.
        let copies = (io == FlashIo::Bf16 && !cache16).then(|| self.bf16_inputs([k, v]));
        let [k_, v_] = match &copies {
            Some([k_, v_]) => [k_.arg(), v_.arg()],
            None => [kv_arg(k), kv_arg(v)],
        };
        let d = shape.head_dim;
        let variant = match self.flash_fwd {
            _ if io != FlashIo::Bf16 || !matches!(d, 64 | 128) => FlashFwd::Narrow,
            FlashFwd::Wgmma if !self.dev.has_wgmma() => FlashFwd::Narrow,
            v => v,
        };
        let (name, threads, smem) = match variant {
            FlashFwd::Wide => (format!("flash_fwd_wide_bf16_d{d}"), WIDE_THREADS, wide_smem(d)),
            FlashFwd::Pipe => (format!("flash_fwd_pipe_bf16_d{d}"), THREADS, pipe_smem(d)),
            FlashFwd::Wgmma => (format!("flash_fwd_wg_bf16_d{d}"), THREADS, wgmma_smem(d)),
            FlashFwd::Narrow => (flash_kernel("fwd", io, d), THREADS, walk_smem(d, false, io)),
        };
        self.dev.set_max_dynamic_shared(&name, smem);
        self.dev.launch(
            &name,
            item_major_grid(items.len() / 4, shape.n_heads),
            [threads, 1, 1],
            smem,
            &[
                Arg::Ptr(out.mem()),
                super::opt_arg(out16),
                Arg::Ptr(lse.mem()),
                Arg::In(q.mem()),
                k_,
                v_,
                Arg::Ptr(&*d_items),
                Arg::I32(shape.n_heads as i32),
                Arg::I32(shape.n_kv_heads as i32),
                Arg::F32(scale),
                Arg::I32(self.flash_mask.arg()),
            ],
        );
    }

    /// `dsum` is `D = rowsum(dO * O)` per (query row, head), computed by the caller, which may
    /// have written dO's bf16 copy too (`dout16`, for bf16 I/O: else it is converted here).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn flash_backward(
        &self,
        dq: &mut DevBuf<D::Mem>,
        dk: &mut DevBuf<D::Mem>,
        dv: &mut DevBuf<D::Mem>,
        dout: &DevBuf<D::Mem>,
        dout16: Option<D::Mem>,
        q: &DevBuf<D::Mem>,
        k: &DevBuf<D::Mem>,
        v: &DevBuf<D::Mem>,
        lse: &DevBuf<D::Mem>,
        dsum: &D::Mem,
        spans: &[AttnSpan],
        shape: AttnShape,
    ) {
        let (h, hkv, d) = (shape.n_heads, shape.n_kv_heads, shape.head_dim);
        let scale = (1.0 / (d as f64).sqrt()) as f32;
        // Both kernels read the same bf16 copies of dO, Q, K, V: dQ walks K and V, dK/dV walks
        // Q and dO, and each reads the other two once.
        let io = self.call_io(spans, shape, q, k);
        let copies = (io == FlashIo::Bf16).then(|| {
            let [q_, k_, v_] = self.bf16_inputs([q, k, v]);
            let do_ = match dout16 {
                Some(m) => Bf16Input::Copy(m),
                None => {
                    let [m] = self.bf16_inputs([dout]);
                    m
                }
            };
            [do_, q_, k_, v_]
        });
        let [do_, q_, k_, v_] = match &copies {
            Some([a, b, c, d]) => [a.arg(), b.arg(), c.arg(), d.arg()],
            None => [dout, q, k, v].map(|x| Arg::Ptr(x.mem())),
        };
        let qt = q_tiles(spans);
        if !qt.is_empty() {
            let d_qt = self.upload_i32(&qt);
            let bf16_io = io == FlashIo::Bf16;
            let (name, smem) = match self.flash_dq {
                FlashDq::Pipe if bf16_io && d == 64 => {
                    ("flash_bwd_dq_pipe_bf16_d64".to_string(), pipe_smem(d))
                }
                FlashDq::Wgmma if bf16_io && matches!(d, 64 | 128) && self.dev.has_wgmma() => {
                    (format!("flash_bwd_dq_wg_bf16_d{d}"), wgmma_smem(d))
                }
                _ => (flash_kernel("bwd_dq", io, d), walk_smem(d, false, io)),
            };
            self.dev.set_max_dynamic_shared(&name, smem);
            self.dev.launch(
                &name,
                item_major_grid(qt.len() / 4, h),
                [THREADS, 1, 1],
                smem,
                &[
                    Arg::Ptr(dq.mem()),
                    do_,
                    q_,
                    k_,
                    v_,
                    Arg::Ptr(lse.mem()),
                    Arg::Ptr(dsum),
                    Arg::Ptr(&d_qt),
                    Arg::I32(h as i32),
                    Arg::I32(hkv as i32),
                    Arg::F32(scale),
                    Arg::I32(self.flash_mask.arg()),
                ],
            );
        }
        let kt = kv_tiles(spans);
        if !kt.is_empty() {
            let d_kt = self.upload_i32(&kt);
            let tiles = kt.len() / 8;
            let parts = dkv_parts(tiles, hkv, h, self.dkv_split_below.unwrap_or(DKV_SPLIT_BELOW));
            let wgmma = self.flash_dkv == FlashDkv::Wgmma
                && io == FlashIo::Bf16
                && matches!(d, 64 | 128)
                && self.dev.has_wgmma();
            let (name, smem) = if wgmma {
                (format!("flash_bwd_dkv_wg_bf16_d{d}"), wgmma_dkv_smem(d))
            } else {
                (flash_kernel("bwd_dkv", io, d), walk_smem(d, true, io))
            };
            self.dev.set_max_dynamic_shared(&name, smem);
            // Split: slice p of the group's heads writes partials p; flash_dkv_sum adds them.
            let split = parts > 1;
            let stride = if split { dk.len } else { 0 };
            let partials = split
                .then(|| [self.dev.alloc(parts * stride * 4), self.dev.alloc(parts * stride * 4)]);
            let (out_k, out_v) = match &partials {
                Some([pk, pv]) => (pk, pv),
                None => (dk.mem(), dv.mem()),
            };
            self.dev.launch(
                &name,
                item_major_grid(tiles, hkv * parts),
                [THREADS, 1, 1],
                smem,
                &[
                    Arg::Ptr(out_k),
                    Arg::Ptr(out_v),
                    do_,
                    q_,
                    k_,
                    v_,
                    Arg::Ptr(lse.mem()),
                    Arg::Ptr(dsum),
                    Arg::Ptr(&d_kt),
                    Arg::I32(h as i32),
                    Arg::I32(hkv as i32),
                    Arg::F32(scale),
                    Arg::I64(stride as i64),
                    Arg::I32((h / hkv / parts) as i32),
                    Arg::I32(self.flash_mask.arg()),
                ],
            );
            if let Some([pk, pv]) = &partials {
                self.dev.launch(
                    "flash_dkv_sum",
                    [tiles as u32, hkv as u32, dkv_sum_blocks(d)],
                    [THREADS, 1, 1],
                    0,
                    &[
                        Arg::Ptr(dk.mem()),
                        Arg::Ptr(dv.mem()),
                        Arg::Ptr(pk),
                        Arg::Ptr(pv),
                        Arg::Ptr(&d_kt),
                        Arg::I32(hkv as i32),
                        Arg::I32(d as i32),
                        Arg::I64(stride as i64),
                        Arg::I32(parts as i32),
                    ],
                );
            }
        }
    }
}

impl<D: Device> CudaBackend<D> {
    /// The storage this call's kernels read (`call_io` with the backend's `FlashIo`).
    pub(super) fn call_io(
        &self,
        spans: &[AttnSpan],
        shape: AttnShape,
        q: &DevBuf<D::Mem>,
        k: &DevBuf<D::Mem>,
    ) -> FlashIo {
        let (q_width, kv_width) =
            (shape.n_heads * shape.head_dim, shape.n_kv_heads * shape.head_dim);
        call_io(self.flash_io, spans, (q.len, q_width), (k.len, kv_width))
    }

    /// The bf16 roundings (to nearest even) of whole f32 buffers for the flash kernels: each
    /// buffer's bf16 shadow where it has one covering it (the q/k/v epilogue wrote it), else a
    /// copy made by a conversion launch.
    fn bf16_inputs<'a, const N: usize>(
        &self,
        bufs: [&'a DevBuf<D::Mem>; N],
    ) -> [Bf16Input<'a, D::Mem>; N] {
        bufs.map(|b| {
            if self.dev.has_bf16_shadow(b.mem(), b.len) {
                return Bf16Input::Shadow(b.mem(), b.len);
            }
            let m = self.dev.alloc(b.len.max(1) * 2);
            launch_f32_to_bf16(&self.dev, &m, b.mem(), b.len);
            Bf16Input::Copy(m)
        })
    }
}

/// The kernel-name infix (`""` or `"_bf16"`) and bytes a value of K and V's storage: f32, or
/// bf16 for a KV cache of `kv_cache_buf`. Both of one storage.
fn kv_storage<M>(k: &DevBuf<M>, v: &DevBuf<M>) -> (&'static str, usize) {
    assert_eq!(k.is_bf16(), v.is_bf16(), "attention: K and V of one storage");
    if k.is_bf16() {
        ("_bf16", 2)
    } else {
        ("", 4)
    }
}

/// K or V as the kernels take it: its memory in whichever storage it has (`kv_storage`).
fn kv_arg<M>(x: &DevBuf<M>) -> Arg<'_, M> {
    Arg::Ptr(x.bf16_mem().unwrap_or_else(|| x.mem()))
}

/// Where a flash kernel reads a tensor's bf16 values: the buffer's shadow, or a copy made for
/// the call (freed with it).
enum Bf16Input<'a, M> {
    Shadow(&'a M, usize),
    Copy(M),
}

impl<M> Bf16Input<'_, M> {
    fn arg(&self) -> Arg<'_, M> {
        match self {
            Bf16Input::Shadow(m, n) => Arg::Bf16Of(m, *n),
            Bf16Input::Copy(m) => Arg::Ptr(m),
        }
    }
}

/// Blocks below which the dK/dV kernel splits each kv head's group over blocks: a few hundred
/// blocks of 8 warps (one per SM at head dim 128) keep a 132-SM GPU busy through the causal
/// tail; fewer leave SMs idle (4 x 1024 tokens with 2 kv heads: 64 blocks).
const DKV_SPLIT_BELOW: usize = 512;

/// Blocks of `flash_dkv_sum` per kv tile and head (its grid's z): 4 values a thread, 1,024 a
/// block, a tile's TILE x d values over d / 8 blocks (the kernel strides over any count).
fn dkv_sum_blocks(head_dim: usize) -> u32 {
    (TILE * head_dim).div_ceil(4 * THREADS as usize) as u32
}

/// Slices of the group's heads for the dK/dV kernel: one per head (then summed by
/// `flash_dkv_sum`) when the kv tiles alone (`kv_tiles x n_kv` blocks) give too few blocks,
/// else 1 (no partials). The split costs `n_heads / n_kv` partial copies of dK and dV written
/// and read once. `split_below`: DKV_SPLIT_BELOW, or what a test set
/// (`CudaBackend::set_flash_dkv_split_below`).
fn dkv_parts(kv_tiles: usize, n_kv: usize, n_heads: usize, split_below: usize) -> usize {
    if kv_tiles * n_kv < split_below {
        n_heads / n_kv
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The time until the last of a grid's blocks ends, over the ideal (all work / slots), when
    /// the GPU starts blocks in index order, each on the first of `slots` SMs to free up (list
    /// scheduling), a block taking `work` units. The model behind `item_major_grid`.
    fn launch_tail(work_in_block_order: impl Iterator<Item = usize>, slots: usize) -> f64 {
        let mut free_at = vec![0usize; slots];
        let mut total = 0;
        for w in work_in_block_order {
            let first = (0..slots).min_by_key(|&i| free_at[i]).unwrap();
            free_at[first] += w;
            total += w;
        }
        *free_at.iter().max().unwrap() as f64 / (total as f64 / slots as f64)
    }

    #[test]
    fn item_major_launch_ends_short() {
        // A block's work: the 64-row tiles it walks, plus one for its own rows' loads and stores.
        let q_work = |spans: &[AttnSpan]| -> Vec<usize> {
            let t = q_tiles(spans);
            t.chunks(4).map(|x| (x[3] + x[1]) as usize / 64 + 2).collect()
        };
        let kv_work = |spans: &[AttnSpan]| -> Vec<usize> {
            let t = kv_tiles(spans);
            t.chunks(8).map(|x| (x[4] - (x[2] - x[5]).max(0)) as usize / 64 + 2).collect()
        };
        let packed = |lens: &[usize]| -> Vec<AttnSpan> {
            let mut at = 0;
            lens.iter()
                .map(|&n| {
                    at += n;
                    AttnSpan { q_start: at - n, q_len: n, kv_start: at - n, kv_len: n }
                })
                .collect()
        };
        // The model's shapes (2 x 4096 tokens, 16 heads; 4 x 1024, 12 heads; the dK/dV kernel's
        // 2 kv heads split 6 ways) and a ragged batch; 132 SMs, one block of 8 warps each.
        for (lens, heads) in [
            (vec![4096, 4096], 16),
            (vec![1024; 4], 12),
            (vec![1024; 4], 2 * 6),
            (vec![3001, 37, 1000, 513, 129, 2048, 700], 14),
        ] {
            let spans = packed(&lens);
            for work in [q_work(&spans), kv_work(&spans)] {
                let n = work.len();
                // Block b runs item b / heads (`fa_block`); the grid it replaced, item b % n.
                let item_major = launch_tail((0..n * heads).map(|b| work[b / heads]), 132);
                let head_major = launch_tail((0..n * heads).map(|b| work[b % n]), 132);
                assert!(item_major <= 1.08, "{lens:?} x {heads}: tail {item_major:.3}");
                assert!(
                    item_major < head_major,
                    "{lens:?} x {heads}: {item_major:.3} vs {head_major:.3}"
                );
            }
        }
    }

    #[test]
    fn tiles_cover_each_span_once() {
        let spans = [
            AttnSpan { q_start: 0, q_len: 130, kv_start: 0, kv_len: 130 },
            AttnSpan { q_start: 130, q_len: 1, kv_start: 200, kv_len: 65 },
        ];
        let q = q_tiles(&spans);
        assert_eq!(q, vec![128, 2, 0, 128, 0, 128, 0, 0, 130, 1, 200, 64]);
        let kv = kv_tiles(&spans);
        assert_eq!(kv.len(), 8 * 3);
        assert_eq!(&kv[..8], &[0, 128, 0, 0, 130, 0, 0, 0]);
        assert_eq!(&kv[8..16], &[128, 2, 128, 0, 130, 0, 0, 0]);
        assert_eq!(&kv[16..24], &[200, 65, 0, 130, 1, 64, 0, 0]);
        assert_eq!(walk_smem(128, false, FlashIo::F32), 4 * 64 * 17 * 16 + 2 * 64 * 128 * 4);
        assert_eq!(walk_smem(128, false, FlashIo::Bf16), 4 * 64 * 17 * 16);
        assert_eq!(walk_smem(64, true, FlashIo::Bf16), 4 * 64 * 9 * 16 + 4 * 64 * 4);
        // dK/dV at 128 in bf16: its K and V rows (2 x 128 padded rows) after the lse/D rows.
        let dkv128 = 4 * 64 * 17 * 16 + 4 * 64 * 4 + 2 * 128 * 17 * 16;
        assert_eq!(walk_smem(128, true, FlashIo::Bf16), dkv128);
        assert_eq!(
            walk_smem(128, true, FlashIo::F32),
            4 * 64 * 17 * 16 + 2 * 64 * 128 * 4 + 4 * 64 * 4
        );
        assert_eq!(wide_smem(128), 6 * 64 * 17 * 16);
        assert_eq!((pipe_smem(128), pipe_smem(64)), (6 * 64 * 17 * 16, 6 * 64 * 9 * 16));
        assert_eq!(flash_kernel("bwd_dkv", FlashIo::Bf16, 64), "flash_bwd_dkv_bf16_d64");
        assert_eq!(flash_kernel("fwd", FlashIo::F32, 128), "flash_fwd_d128");
        // bf16 copies when the buffers hold at most twice the rows read: the packed batch
        // (130 + 1 query rows of 131, 195 kv rows of 265), not a short prefill in a big cache.
        let (bf, f) = (FlashIo::Bf16, FlashIo::F32);
        assert_eq!(call_io(bf, &spans, (131 * 8, 8), (265 * 4, 4)), bf);
        assert_eq!(call_io(f, &spans, (131 * 8, 8), (265 * 4, 4)), f);
        assert_eq!(call_io(bf, &spans, (131 * 8, 8), (391 * 4, 4)), f, "kv buffer too large");
        assert_eq!(call_io(bf, &spans, (263 * 8, 8), (265 * 4, 4)), f, "q buffer too large");
        assert_eq!(call_io(bf, &spans, (262 * 8, 8), (390 * 4, 4)), bf);
        // 2 warps x (K 32 x 132 + V 32 x 128 + Q 8 x 128 + P 8 x 32) floats; in bf16 storage
        // K 32 x 136 and V 32 x 128 bf16 (the same 16-byte row padding), Q and P f32.
        assert_eq!(decode_staged_smem(128, 4), 2 * (4224 + 4096 + 1024 + 256) * 4);
        assert_eq!(decode_staged_smem(128, 2), 2 * ((4352 + 4096) * 2 + (1024 + 256) * 4));
        // 32 tiles x 2 kv heads = 64 blocks: split over the group of 6; 256 x 2 = 512 blocks
        // (or 1 kv head, group 1) need no split.
        let parts = |tiles, n_kv, n_heads| dkv_parts(tiles, n_kv, n_heads, DKV_SPLIT_BELOW);
        assert_eq!((parts(32, 2, 12), parts(64, 1, 1), parts(256, 2, 12)), (6, 1, 1));
        assert_eq!(parts(255, 2, 14), 7);
        assert_eq!(dkv_parts(32, 2, 12, 0), 1);
        assert_eq!([16, 64, 128].map(dkv_sum_blocks), [2, 8, 16]);
        // Chunks by the sequence's own length: at most 8 of 32 or 64 keys, else 128 keys.
        let chunks = [1, 256, 257, 512, 513, 1024, 4096].map(decode_chunk);
        assert_eq!(chunks, [32, 32, 64, 64, 128, 128, 128]);
        let (split, comb) = decode_items(&spans[1..], DecodeChunks::ByLength);
        // 65 keys: two chunks of 32 and one key, padded to four items with an empty one.
        assert_eq!(split, vec![130, 200, 32, 0, 130, 232, 32, 0, 130, 264, 1, 0, 0, 0, 0, 0]);
        assert_eq!(comb, vec![130, 0, 3, 0]);
        let long = [
            AttnSpan { q_start: 3, q_len: 1, kv_start: 10, kv_len: 600 },
            AttnSpan { q_start: 4, q_len: 1, kv_start: 700, kv_len: 300 },
        ];
        let (split, comb) = decode_items(&long, DecodeChunks::ByLength);
        // 600 keys: four chunks of 128 and one of 88; 300 keys: four of 64 and one of 44;
        // ten items padded to sixteen.
        let mut want = vec![];
        for (row, start, n) in
            [(3, 10, 128), (3, 138, 128), (3, 266, 128), (3, 394, 128), (3, 522, 88)]
                .into_iter()
                .chain([(4, 700, 64), (4, 764, 64), (4, 828, 64), (4, 892, 64), (4, 956, 44)])
        {
            want.extend([row, start, n, 0]);
        }
        want.resize(16 * 4, 0);
        assert_eq!(split, want);
        assert_eq!(comb, vec![3, 0, 5, 0, 4, 5, 5, 0]);
        // Sequences growing by a chunk here and there keep the padded item count (and the
        // grid): 5 sequences of 100-260 keys (4 + 5 + 6 + 7 + 5 items: 27), of 128-288
        // (4 + 6 + 7 + 8 + 5: 30) and of 129-289 (31), 32 items each time.
        let at = |n: usize| {
            let s: Vec<AttnSpan> = (0..5)
                .map(|i| AttnSpan { q_start: i, q_len: 1, kv_start: 1000 * i, kv_len: n + 40 * i })
                .collect();
            decode_items(&s, DecodeChunks::ByLength).0.len() / 4
        };
        assert_eq!((at(100), at(128), at(129)), (32, 32, 32));
        // The old rule: 128 keys whatever the length.
        let (split, _) = decode_items(&long[1..], DecodeChunks::Fixed128);
        assert_eq!(split, vec![4, 700, 128, 0, 4, 828, 128, 0, 4, 956, 44, 0, 0, 0, 0, 0]);
    }
}
