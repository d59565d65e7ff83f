// Flash attention (FlashAttention-2 scheme: Dao 2023, arXiv:2307.08691, Algorithms 1 and 2) on
// bf16 tensor cores through kernels/mma.cuh: causal, grouped-query heads, packed sequences of
// any lengths, head dims 16/32/64/128. Scores, softmax statistics and every accumulator are
// f32; Q, K, V, P, dO and dS enter the tensor cores rounded to bf16. The per-query kernels of
// attention.cu stay beside these as the exact f32 baseline.
//
// Storage of Q, K, V and dO: f32 (`real`), converted to bf16 on the tiles' way into shared
// memory, or bf16 (the `_bf16` entry points; src/backend/cuda/flash.rs converts the f32
// activations once per call with f32_to_bf16_x8, the same rounding): then cp.async copies the
// bf16 rows straight into the tiles, with no f32 stage and no conversion pass in shared
// memory, and every re-read of a walked tile from L2 moves half the bytes. Same bits either
// way. The forward's `_bf16` kernels read K and V in bf16 and Q in f32 (read once).
//
// Block: FA_WARPS = 8 warps; a warp owns 16 rows (queries in the forward and dQ kernels, keys
// in the dK/dV kernel), so a block owns FA_OWN = 128 rows, whose bf16 A fragments it reads
// straight from global memory into registers once. It walks the other side in tiles of
// FA_ROWS = 64 rows that all 8 warps share (one K/V read per 128 queries), pipelined:
//   f32 global --cp.async--> f32 stage (shared) --convert--> bf16 tile (shared, 2 buffers)
// While the warps compute on tile i from one bf16 buffer, tile i+1 is in flight into the stage;
// each thread then converts the pieces it copied itself into the other buffer (bf16 storage:
// the copies land in that buffer directly), and one barrier
// per tile publishes it. Shared memory is dynamic (fa_smem below, mirrored in flash.rs).
//
// Work lists (host-built, see src/backend/cuda/flash.rs):
//   q tiles  (4 ints): first query row, rows in the tile (<= 128), span's first kv row,
//                      position in its sequence of the tile's first query
//   kv tiles (8 ints): first kv row, keys in the tile (<= 128), index in the sequence of the
//                      tile's first key, span's first query row, span's q_len, position of the
//                      span's first query, 0, 0
#ifndef SHARED
#define SHARED(T, name, dims) __shared__ T name dims
#endif
#include "common.cuh"
#include "mma.cuh"

#define FA_ROWS 64
#define FA_WARPS 8
#define FA_THREADS (32 * FA_WARPS)
#define FA_OWN (16 * FA_WARPS)
#define FA_LOG2E 1.4426950408889634f

__device__ __forceinline__ int fa_imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int fa_imax(int a, int b) { return a > b ? a : b; }

// A block's work item and head. The grid is 1-D and item-major: block b runs item b / heads for
// head b % heads, so the heads of one item are neighbouring blocks. The items come sorted by
// work, longest first (flash.rs `q_tiles`, `kv_tiles`), and the GPU starts blocks in index
// order as slots free up, so every head's longest blocks start first and the grid ends on the
// short ones. (A grid of (items, heads) starts head 0's items longest to shortest, then head
// 1's, ..., so the last heads' longest blocks start near the end: a list-scheduling model of
// 132 slots puts that tail at +11% of the ideal time at 2 x 4096 tokens, 16 heads, and +31% at
// 4 x 1024 tokens, 12 heads; this order +1% and +7%. flash.rs `launch_tail` is that model.)
struct fa_block_ix {
    int item, head;
};
__device__ __forceinline__ fa_block_ix fa_block(int heads) {
    const int item = blockIdx.x / heads;
    return {item, (int)blockIdx.x - item * heads};
}

// Tile loads. A piece is 4 consecutive f32 of a row (16 bytes). Consecutive threads take
// consecutive pieces of a row (thread tid: row tid / (D/4), columns 4 * (tid % (D/4)) .. +3,
// then the rows R = FA_THREADS / (D/4) further down), so a warp's copy covers 512 contiguous
// bytes (one or more whole rows of the head), every sector fully used. (The first version read
// 8 scalar floats per thread at a 32-byte stride: 8x the L1 wavefronts per useful byte, and
// the kernel was bound by L1 at 83%.) Each piece becomes 4 bf16 stored as one 8-byte word at
// its place in the padded row: a half-warp's stores are 128 contiguous bytes (or two rows'
// worth 16 bytes apart in bank terms), so they meet no bank conflict, and rows stay D/8 + 1
// units of 16 bytes apart, which keeps the ldmatrix reads conflict-free (8 rows of 16 bytes
// land on 8 different 4-bank groups). The f32 stage is unpadded: its 16-byte writes and reads
// by consecutive threads are consecutive.
static_assert(sizeof(real) == 4, "the flash tile loads read f32 storage in 16-byte pieces");
struct __align__(16) fa_f4 {
    float x, y, z, w;
};
struct __align__(8) fa_u2 {
    unsigned x, y;
};
struct __align__(8) fa_f2 {
    float x, y;
};

template <int D>
using fa_tile_ptr = bf16x8 (*)[D / 8 + 1];

// bf16 storage: the bits, as the conversion kernels write them (round to nearest even).
typedef unsigned short fa_b16;

// One piece into the bf16 tile (round to nearest even, as everywhere else).
template <int D>
__device__ __forceinline__ void fa_put(fa_tile_ptr<D> s, int row, int c4, fa_f4 v) {
    const fa_u2 u = {pack_bf16x2(v.x, v.y), pack_bf16x2(v.z, v.w)};
    *reinterpret_cast<fa_u2*>(reinterpret_cast<char*>(&s[row][c4 >> 1]) + 8 * (c4 & 1)) = u;
}

// ---- the pipeline of the walked side --------------------------------------------------------

// Dynamic shared memory of a kernel, in bytes: 4 bf16 tiles (two buffers of a tile pair) and,
// for f32 storage, the f32 stage of a tile pair; the dK/dV kernel adds FA_DKV_EXTRA after
// them. flash.rs (`walk_smem`) computes the same sum.
template <int D, typename In>
struct fa_smem {
    static constexpr int tile = FA_ROWS * (D / 8 + 1) * 16;
    static constexpr int stage = sizeof(In) == 4 ? FA_ROWS * D * 4 : 0;
    static constexpr int walk = 4 * tile + 2 * stage;
};

// This thread's pieces of a 64-row tile (see "Tile loads"). The loops stay rolled: cp.async
// needs no registers to wait in, and unrolled, the compiler kept every piece's addresses live
// across the whole kernel (207 -> 246 registers in the forward at D = 128).
template <int D>
struct fa_walk {
    static constexpr int R = FA_THREADS / (D / 4);
    static_assert(R * (D / 4) == FA_THREADS && FA_ROWS % R == 0, "tile pieces must split evenly over threads");
};

// Starts copying this thread's pieces of rows [0, 64) of head `h` of a [rows, heads, D] tensor
// from row `row0`: f32 storage into the f32 stage [64][D] (then `fa_land` converts them into
// the tile), bf16 storage straight into the tile; rows >= nvalid are written as zeros at once.
// Complete after cp_async_wait_all.
template <int D>
__device__ __forceinline__ void fa_fetch(fa_tile_ptr<D>, float* stage, const real* src, long long row0, int nvalid,
                                         int heads, int h) {
    constexpr int R = fa_walk<D>::R;
    const int r0 = threadIdx.x / (D / 4), col = 4 * (threadIdx.x % (D / 4));
    const real* p = src + ((row0 + r0) * heads + h) * D + col;
    float* dst = stage + r0 * D + col;
#pragma unroll 1
    for (int row = r0; row < FA_ROWS; row += R, p += (long long)R * heads * D, dst += R * D) {
        if (row < nvalid)
            cp_async_16(dst, p);
        else
            *reinterpret_cast<fa_f4*>(dst) = fa_f4{0.0f, 0.0f, 0.0f, 0.0f};
    }
}

// bf16 storage: a piece is 8 values (16 bytes) and lands in its place of the padded row, so a
// warp still copies 512 contiguous bytes and the tile's layout is the converted one's. At
// D = 16 the 256 threads cover 128 rows: the second half has nothing to copy. NT: threads
// of the block (the wide forward below runs 128).
template <int D, int NT = FA_THREADS>
__device__ __forceinline__ void fa_fetch(fa_tile_ptr<D> s, float*, const fa_b16* src, long long row0, int nvalid,
                                         int heads, int h) {
    constexpr int P = D / 8, R = NT / P;
    static_assert(R * P == NT && (FA_ROWS % R == 0 || R > FA_ROWS), "tile pieces must split evenly");
    const int r0 = threadIdx.x / P, c8 = threadIdx.x % P;
    const fa_b16* p = src + ((row0 + r0) * heads + h) * D + 8 * c8;
    bf16x8* dst = &s[r0][c8];
#pragma unroll 1
    for (int row = r0; row < FA_ROWS; row += R, p += (long long)R * heads * D, dst += R * (D / 8 + 1)) {
        if (row < nvalid)
            cp_async_16(dst, p);
        else
            *dst = bf16x8{};
    }
}

// After cp_async_wait_all: converts this thread's own pieces of the stage into a bf16 tile.
// Only the thread that copied a piece reads it, so no barrier is needed between the two.
// (The source pointer only picks the storage: bf16 pieces are already in place.)
template <int D>
__device__ __forceinline__ void fa_land(fa_tile_ptr<D>, const float*, const fa_b16*) {}
template <int D>
__device__ __forceinline__ void fa_land(fa_tile_ptr<D> s, const float* stage, const real*) {
    constexpr int R = fa_walk<D>::R;
    const int r0 = threadIdx.x / (D / 4), c4 = threadIdx.x % (D / 4);
#pragma unroll 1
    for (int row = r0; row < FA_ROWS; row += R)
        fa_put<D>(s, row, c4, *reinterpret_cast<const fa_f4*>(stage + row * D + 4 * c4));
}

// The 16 x D A fragments of rows [row0, row0 + 16) of head `h`, read from global memory in
// 8-byte pairs (a quad of lanes reads one 32-byte sector); rows >= nvalid are zeros.
template <int D>
__device__ __forceinline__ void fa_frag_a_global(unsigned f[D / 16][4], const real* src, long long row0, int nvalid,
                                                 int heads, int h) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int kc = 0; kc < D / 16; kc++)
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int row = g + 8 * (r & 1), col = kc * 16 + 2 * t + 8 * (r >> 1);
            if (row < nvalid) {
                const fa_f2 p = *reinterpret_cast<const fa_f2*>(src + ((row0 + row) * heads + h) * D + col);
                f[kc][r] = pack_bf16x2(p.x, p.y);
            } else {
                f[kc][r] = 0u;
            }
        }
}

// The same from bf16 storage: each pair is one 4-byte word, already packed (low half first).
template <int D>
__device__ __forceinline__ void fa_frag_a_global(unsigned f[D / 16][4], const fa_b16* src, long long row0, int nvalid,
                                                 int heads, int h) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int kc = 0; kc < D / 16; kc++)
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int row = g + 8 * (r & 1), col = kc * 16 + 2 * t + 8 * (r >> 1);
            f[kc][r] = row < nvalid ? *reinterpret_cast<const unsigned*>(src + ((row0 + row) * heads + h) * D + col) : 0u;
        }
}

// acc[8][4] (16 x 64) = A (16 x D, fragments) . T^T where T is a 64 x D tile: rows of T are
// the columns of the product (keys for S = Q K^T, queries for S^T = K Q^T).
template <int D>
__device__ __forceinline__ void fa_mm_abt(float acc[8][4], const unsigned a[D / 16][4], bf16x8 (*s)[D / 8 + 1]) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[nt][i] = 0.0f;
#pragma unroll
    for (int kc = 0; kc < D / 16; kc++)
#pragma unroll
        for (int np = 0; np < 4; np++) {
            // matrices: (rows np*16+0..7, cols kc*16+0..7), (same rows, +8 cols),
            //           (rows +8, cols +0), (rows +8, cols +8)
            unsigned b[4];
            ldmatrix_x4(b, &s[np * 16 + (lane & 7) + 8 * (lane >> 4)][2 * kc + ((lane >> 3) & 1)]);
            mma_bf16_16816(acc[2 * np], a[kc], b);
            mma_bf16_16816(acc[2 * np + 1], a[kc], b + 2);
        }
}

// Where a warp's 16 owned rows (K and V in the dK/dV kernel) wait as A operands: registers
// (`fa_areg`: every fragment loaded once, 4 x D / 16 registers), or shared memory (`fa_asmem`:
// the rows copied once into the warp's part of a tile, each fragment read by ldmatrix where an
// MMA needs it: 4 registers). The same bf16 values either way (a fragment holds the rows'
// roundings; ldmatrix reads what was copied), so the same bits. At D = 128 the dK/dV kernel
// holds K and V (64 registers) beside dK, dV (128) and the tile's S and dP (64): ptxas gave it
// 255 registers and 412 bytes of spills, the spill traffic stalling it in the loop (ncu: local
// load/store throttle); in shared memory its fragments cost 69.6 KB a block instead.
template <int D>
struct fa_areg {
    unsigned f[D / 16][4];
    template <typename In>
    __device__ __forceinline__ void load(const In* src, long long row0, int nvalid, int heads, int h) {
        fa_frag_a_global<D>(f, src, row0, nvalid, heads, h);
    }
    __device__ __forceinline__ void frag(int kc, unsigned a[4]) const {
#pragma unroll
        for (int i = 0; i < 4; i++) a[i] = f[kc][i];
    }
};
template <int D>
struct fa_asmem {
    bf16x8 (*s)[D / 8 + 1]; // the warp's 16 rows, padded as the walked tiles
    // bf16 storage: 16-byte pieces copied as they are (rows >= nvalid zeros); then the warp's
    // lanes see each other's stores.
    __device__ __forceinline__ void load(const fa_b16* src, long long row0, int nvalid, int heads, int h) {
        const int lane = threadIdx.x & 31;
        for (int p = lane; p < 16 * (D / 8); p += 32) {
            const int row = p / (D / 8), c8 = p % (D / 8);
            bf16x8 v = {};
            if (row < nvalid) v = *reinterpret_cast<const bf16x8*>(src + ((row0 + row) * heads + h) * D + 8 * c8);
            s[row][c8] = v;
        }
        __syncwarp();
    }
    // matrices: (rows 0..7, cols kc*16+0..7), (rows 8..15, same cols), (rows 0..7, +8 cols),
    // (rows 8..15, +8 cols): the A fragment's registers in order.
    __device__ __forceinline__ void frag(int kc, unsigned a[4]) const {
        const int lane = threadIdx.x & 31;
        ldmatrix_x4(a, &s[(lane & 7) + 8 * ((lane >> 3) & 1)][2 * kc + (lane >> 4)]);
    }
};

// fa_mm_abt with the A operand from either source.
template <int D, typename A>
__device__ __forceinline__ void fa_mm_abt_of(float acc[8][4], const A& src, bf16x8 (*s)[D / 8 + 1]) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[nt][i] = 0.0f;
#pragma unroll
    for (int kc = 0; kc < D / 16; kc++) {
        unsigned a[4];
        src.frag(kc, a);
#pragma unroll
        for (int np = 0; np < 4; np++) {
            unsigned b[4];
            ldmatrix_x4(b, &s[np * 16 + (lane & 7) + 8 * (lane >> 4)][2 * kc + ((lane >> 3) & 1)]);
            mma_bf16_16816(acc[2 * np], a, b);
            mma_bf16_16816(acc[2 * np + 1], a, b + 2);
        }
    }
}

// The A fragment (bf16) of k chunk kc (columns 16 kc..) of a 16 x 64 f32 accumulator: the
// accumulator layout of two n-tiles is the A layout of one 16-wide k chunk (mma.sync's and a
// wgmma warp's alike).
__device__ __forceinline__ void fa_frag_of_acc(unsigned a[4], const float p[8][4], int kc) {
    a[0] = pack_bf16x2(p[2 * kc][0], p[2 * kc][1]);
    a[1] = pack_bf16x2(p[2 * kc][2], p[2 * kc][3]);
    a[2] = pack_bf16x2(p[2 * kc + 1][0], p[2 * kc + 1][1]);
    a[3] = pack_bf16x2(p[2 * kc + 1][2], p[2 * kc + 1][3]);
}

// acc[D/8][4] (16 x D) += P (16 x 64, f32 accumulator layout) . T where T is a 64 x D tile
// (V for O += P V, dO for dV += P^T dO, Q for dK += dS^T Q, K for dQ += dS K).
template <int D>
__device__ __forceinline__ void fa_mm_pt(float acc[D / 8][4], const float p[8][4], bf16x8 (*s)[D / 8 + 1]) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int kc = 0; kc < 4; kc++) {
        unsigned a[4];
        fa_frag_of_acc(a, p, kc);
#pragma unroll
        for (int dp = 0; dp < D / 16; dp++) {
            // matrices (transposed): (rows kc*16+0..7, cols dp*16+0..7), (rows +8, cols +0),
            //                        (rows +0, cols +8), (rows +8, cols +8)
            unsigned b[4];
            ldmatrix_x4_trans(b, &s[kc * 16 + (lane & 7) + 8 * ((lane >> 3) & 1)][2 * dp + (lane >> 4)]);
            mma_bf16_16816(acc[2 * dp], a, b);
            mma_bf16_16816(acc[2 * dp + 1], a, b + 2);
        }
    }
}

__device__ __forceinline__ float fa_quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, 1));
    return fmaxf(v, __shfl_xor_sync(FULL_MASK, v, 2));
}
__device__ __forceinline__ float fa_quad_sum(float v) {
    v += __shfl_xor_sync(FULL_MASK, v, 1);
    return v + __shfl_xor_sync(FULL_MASK, v, 2);
}

// Whether a warp's 16 rows, the first at position pos_first, need the causal mask against the
// 64 keys from j0: only if the tile's last key lies past the first row's position (rows further
// down see more). A tile wholly before the first row is visible to every row, and lies before
// nkeys (pos_first < nkeys for a warp with rows). mask_all: every tile (the kernels before
// this test; `FlashMask::Every`, same bits, kept to compare and time against).
__device__ __forceinline__ bool fa_masked(int j0, int pos_first, bool mask_all) {
    return mask_all || j0 + FA_ROWS - 1 > pos_first;
}

// The online-softmax step of one 16-row tile against a 64-key tile (both forwards): scores `s`
// of keys j0.. for the rows at positions pos_first + g and + 8 of this lane, keys past a row's
// position (or past nkeys) masked; the running max `m` and this lane's partial sum `l` updated,
// `s` turned into probabilities and `o` rescaled. g, t: the lane's lane >> 2 and lane & 3, as
// the kernel computed them (recomputed here, ptxas allocated the d64 forward 12 B of spills).
// `mask`: false when no key of the tile lies past any row's position or past nkeys (fa_masked:
// every tile of a long sequence but the diagonal's), which skips the per-score comparisons.
// Its two halves: the mask (a branch: whole tiles skip it) and the rest (no branch: the
// pipelined forward puts the next tile's MMAs in the same basic block, for ptxas to interleave).
__device__ __forceinline__ void fa_mask_scores(float s[8][4], int j0, int pos_first, int nkeys, int g, int t) {
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int j = j0 + nt * 8 + 2 * t + (i & 1), pos = pos_first + g + 8 * (i >> 1);
            if (j > pos || j >= nkeys) s[nt][i] = neg_inf();
        }
}
template <int D>
__device__ __forceinline__ void fa_softmax_rest(float s[8][4], float o[D / 8][4], float m[2], float l[2], float sl2);
template <int D>
__device__ __forceinline__ void fa_softmax_step(float s[8][4], float o[D / 8][4], float m[2], float l[2], int j0,
                                                int pos_first, int nkeys, float sl2, int g, int t, bool mask) {
    if (mask) fa_mask_scores(s, j0, pos_first, nkeys, g, t);
    fa_softmax_rest<D>(s, o, m, l, sl2);
}
// The softmax step without O: s turned into probabilities, m and l updated, and corr the
// factor O's rows must be scaled by before this tile's P V is added (fa_rescale). The wgmma
// forward does the two apart: it waits for the previous tile's P V between them.
__device__ __forceinline__ void fa_softmax_p(float s[8][4], float m[2], float l[2], float sl2, float corr[2]) {
    float mx[2] = {neg_inf(), neg_inf()};
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) mx[i >> 1] = fmaxf(mx[i >> 1], s[nt][i]);
    float mb[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const float mnew = fmaxf(m[r], fa_quad_max(mx[r]));
        mb[r] = mnew == neg_inf() ? 0.0f : mnew * sl2; // a row with nothing visible yet
        corr[r] = exp2f(m[r] * sl2 - mb[r]);           // 0 on a row's first visible tile
        m[r] = mnew;
        l[r] *= corr[r];
    }
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float p = exp2f(s[nt][i] * sl2 - mb[i >> 1]);
            s[nt][i] = p;
            l[i >> 1] += p; // this lane's partial row sum; the quad is summed at the end
        }
}
template <int D>
__device__ __forceinline__ void fa_rescale(float o[D / 8][4], const float corr[2]) {
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) o[nt][i] *= corr[i >> 1];
}
template <int D>
__device__ __forceinline__ void fa_softmax_rest(float s[8][4], float o[D / 8][4], float m[2], float l[2], float sl2) {
    float corr[2];
    fa_softmax_p(s, m, l, sl2, corr);
    fa_rescale<D>(o, corr);
}

// The end of a 16-row tile (both forwards): the quad's row sums of the lanes' partial sums
// `lpart`, lse, and O / l for the tile's rows row_first + g and + 8 below nrows (with out16,
// their bf16 rounding too). g, t as in fa_softmax_step.
template <int D>
__device__ __forceinline__ void fa_write_rows(real* out, unsigned short* out16, float* lse, const float o[D / 8][4],
                                              const float m[2], const float lpart[2], int row_first, int nrows,
                                              long long qrow0, int n_heads, int h, float scale, int g, int t) {
    float l[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] = fa_quad_sum(lpart[r]);
        const int row = row_first + g + 8 * r;
        if (row < nrows && t == 0) lse[(qrow0 + row) * n_heads + h] = m[r] * scale + logf(l[r]);
    }
    // Lane (g, t) holds columns 2t, 2t + 1 of each 8-column block nt, in rows g and g + 8.
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int row = row_first + g + 8 * r;
            if (row >= nrows) continue;
            const long long at = ((qrow0 + row) * n_heads + h) * D + nt * 8 + 2 * t;
            const float y0 = o[nt][2 * r] / l[r], y1 = o[nt][2 * r + 1] / l[r];
            out[at] = y0;
            out[at + 1] = y1;
            // The o projection's bf16 operand (src/backend/cuda/producer_shadows.rs), both
            // values in one 4-byte store (`at` is even).
            if (out16) *reinterpret_cast<unsigned*>(out16 + at) = pack_bf16x2(y0, y1);
        }
}

// A warp's 16 rows of a [rows, heads, D] f32 tensor from its accumulator (lane (g, t): columns
// 2t, 2t + 1 of each 8-column block, rows g and g + 8 from row_first), rows below nrows only:
// dQ of the query rows, dK and dV of the key rows.
template <int D>
__device__ __forceinline__ void fa_store_acc_rows(real* out, const float acc[D / 8][4], long long row0, int row_first,
                                                  int nrows, int heads, int h, int g, int t) {
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int row = row_first + g + 8 * (i >> 1);
            if (row < nrows) out[((row0 + row) * heads + h) * D + nt * 8 + 2 * t + (i & 1)] = acc[nt][i];
        }
}

// ---- forward ------------------------------------------------------------------------------

// The query-tile kernels' work item (flash.rs `q_tiles`, 4 ints) and head: nrows query rows
// from row qrow0, the first at position pos0 of its sequence, whose keys start at row kv0; nkeys
// the keys the tile's last query sees; the block's head h and its kv head. Decoded here alone,
// for the forward and dQ kernels and their twins (the dK/dV kernels': fa_kv_item_of).
struct fa_q_item {
    long long qrow0, kv0;
    int nrows, pos0, nkeys, h, kvh;
};
__device__ __forceinline__ fa_q_item fa_q_item_of(const int* items, int n_heads, int n_kv) {
    const fa_block_ix bi = fa_block(n_heads);
    const int* it = items + 4 * bi.item;
    fa_q_item qi;
    qi.qrow0 = it[0];
    qi.nrows = it[1];
    qi.kv0 = it[2];
    qi.pos0 = it[3];
    qi.nkeys = qi.pos0 + qi.nrows;
    qi.h = bi.head;
    qi.kvh = bi.head / (n_heads / n_kv);
    return qi;
}

// out16: null, or where to write the bf16 rounding of `out` too (the o projection's operand).
// Q (read once, into registers) and K/V (walked: re-read by every query tile) may be stored
// differently: the `_bf16` forward reads f32 Q and bf16 K/V, since a bf16 copy of Q would cost
// a conversion pass (6 bytes a value) to save 2 bytes of one read.
template <int D, typename Own, typename In>
__device__ void flash_fwd(real* out, unsigned short* out16, float* lse, const Own* q, const In* k, const In* v, const int* items,
                          int n_heads, int n_kv, float scale, bool mask_all) {
    DYN_SMEM(unsigned char, smem);
    using S = fa_smem<D, In>;
    // Buffer b: K at tile 2b, V at tile 2b + 1 (computed, not indexed: no local memory).
    auto tk = [&](int b) { return reinterpret_cast<fa_tile_ptr<D>>(smem + 2 * b * S::tile); };
    auto tv = [&](int b) { return reinterpret_cast<fa_tile_ptr<D>>(smem + (2 * b + 1) * S::tile); };
    float* const stk = reinterpret_cast<float*>(smem + 4 * S::tile);
    float* const stv = stk + FA_ROWS * D;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const fa_q_item qi = fa_q_item_of(items, n_heads, n_kv);
    const long long qrow0 = qi.qrow0, kv0 = qi.kv0;
    const int h = qi.h, kvh = qi.kvh, nrows = qi.nrows, pos0 = qi.pos0, nkeys = qi.nkeys;
    const bool active = warp * 16 < nrows;
    const int wlast = pos0 + fa_imin(warp * 16 + 15, nrows - 1); // last key any of the warp's rows sees

    // The first K/V tile is in flight while Q goes to registers.
    fa_fetch<D>(tk(0), stk, k, kv0, fa_imin(FA_ROWS, nkeys), n_kv, kvh);
    fa_fetch<D>(tv(0), stv, v, kv0, fa_imin(FA_ROWS, nkeys), n_kv, kvh);
    cp_async_commit();
    unsigned qf[D / 16][4];
    fa_frag_a_global<D>(qf, q, qrow0 + warp * 16, nrows - warp * 16, n_heads, h);
    cp_async_wait_all();
    fa_land<D>(tk(0), stk, k);
    fa_land<D>(tv(0), stv, v);
    __syncthreads();

    const float sl2 = scale * FA_LOG2E;
    float o[D / 8][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) o[nt][i] = 0.0f;
    float m[2] = {neg_inf(), neg_inf()}, l[2] = {0.0f, 0.0f};
    int buf = 0;
    for (int j0 = 0; j0 < nkeys; j0 += FA_ROWS, buf ^= 1) {
        const bool more = j0 + FA_ROWS < nkeys;
        if (more) { // tile j0 + 64 in flight during this tile's arithmetic
            fa_fetch<D>(tk(buf ^ 1), stk, k, kv0 + j0 + FA_ROWS, fa_imin(FA_ROWS, nkeys - j0 - FA_ROWS), n_kv, kvh);
            fa_fetch<D>(tv(buf ^ 1), stv, v, kv0 + j0 + FA_ROWS, fa_imin(FA_ROWS, nkeys - j0 - FA_ROWS), n_kv, kvh);
            cp_async_commit();
        }
        if (active && j0 <= wlast) { // warp-uniform: something of this tile is visible
            float s[8][4];
            fa_mm_abt<D>(s, qf, tk(buf));
            fa_softmax_step<D>(s, o, m, l, j0, pos0 + warp * 16, nkeys, sl2, g, t,
                               fa_masked(j0, pos0 + warp * 16, mask_all));
            fa_mm_pt<D>(o, s, tv(buf));
        }
        if (more) { // the other buffer was last read before the previous barrier
            cp_async_wait_all();
            fa_land<D>(tk(buf ^ 1), stk, k);
            fa_land<D>(tv(buf ^ 1), stv, v);
        }
        __syncthreads(); // the next tile is complete, and this one is no longer read
    }
    if (!active) return;
    fa_write_rows<D>(out, out16, lse, o, m, l, warp * 16, nrows, qrow0, n_heads, h, scale, g, t);
}

// ---- forward, wide: a warp owns 32 rows (FlashAttention-2's layout) ------------------------
// The forward above gives each of 8 warps 16 query rows, so every K/V fragment a warp reads
// from shared memory by ldmatrix feeds one MMA row tile: per 64-key tile a block reads 8 x
// (K + V) = 8 x 2 x 64 x D x 2 bytes, the kernel's largest traffic. Here 4 warps own 32 rows
// each (two row tiles of 16), so each fragment feeds two MMAs: half the K/V fragment reads per
// FLOP. Q (128 x D, bf16) lives in shared memory and its A fragments are read per k chunk
// (a quarter of the K/V reads), which keeps the registers to the two row tiles' O, S and
// fragments in flight. Same work items (128 rows a block), same arithmetic per row in the same
// order (the softmax step and the output rows are flash_fwd's own helpers): the same bits as
// flash_fwd (tested), a warp only walking key tiles that some of its 32 rows see (its other
// rows add P = 0 and rescale by 1 there). bf16 K/V storage, f32 Q.
#define FW_WARPS 4
#define FW_THREADS (32 * FW_WARPS)
static_assert(32 * FW_WARPS == FA_OWN, "the wide forward owns the same 128 rows a block");

// ROWS rows of head h, f32 in global memory, into a bf16 tile in shared memory by NT threads
// (4 values a thread and step, rows >= nvalid zeros): by default the wide forward's 128 owned
// rows. Same rounding as fa_frag_a_global.
template <int D, int ROWS = FA_OWN, int NT = FW_THREADS>
__device__ __forceinline__ void fa_rows_to_smem(fa_tile_ptr<D> s, const real* src, long long row0, int nvalid,
                                                int heads, int h) {
    constexpr int P4 = D / 4;
#pragma unroll 1
    for (int i = threadIdx.x; i < ROWS * P4; i += NT) {
        const int row = i / P4, c4 = i % P4;
        const fa_f4 x = row < nvalid ? *reinterpret_cast<const fa_f4*>(src + ((row0 + row) * heads + h) * D + 4 * c4)
                                     : fa_f4{0.0f, 0.0f, 0.0f, 0.0f};
        fa_put<D>(s, row, c4, x);
    }
}

template <int D>
__device__ void flash_fwd_wide(real* out, unsigned short* out16, float* lse, const real* q, const fa_b16* k,
                               const fa_b16* v, const int* items, int n_heads, int n_kv, float scale, bool mask_all) {
    DYN_SMEM(unsigned char, smem);
    constexpr int TB = fa_smem<D, fa_b16>::tile;
    // K at tile 2b, V at tile 2b + 1 of buffer b; Q (two tiles' worth: 128 rows) after them.
    auto tk = [&](int b) { return reinterpret_cast<fa_tile_ptr<D>>(smem + 2 * b * TB); };
    auto tv = [&](int b) { return reinterpret_cast<fa_tile_ptr<D>>(smem + (2 * b + 1) * TB); };
    const fa_tile_ptr<D> sq = reinterpret_cast<fa_tile_ptr<D>>(smem + 4 * TB);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const fa_q_item qi = fa_q_item_of(items, n_heads, n_kv);
    const long long qrow0 = qi.qrow0, kv0 = qi.kv0;
    const int h = qi.h, kvh = qi.kvh, nrows = qi.nrows, pos0 = qi.pos0, nkeys = qi.nkeys;
    const int wrow = warp * 32; // the warp's first row in the block's tile
    const bool active = wrow < nrows;
    const int wlast = pos0 + fa_imin(wrow + 31, nrows - 1); // last key any of the warp's rows sees

    fa_fetch<D, FW_THREADS>(tk(0), nullptr, k, kv0, fa_imin(FA_ROWS, nkeys), n_kv, kvh);
    fa_fetch<D, FW_THREADS>(tv(0), nullptr, v, kv0, fa_imin(FA_ROWS, nkeys), n_kv, kvh);
    cp_async_commit();
    fa_rows_to_smem<D>(sq, q, qrow0, nrows, n_heads, h);
    cp_async_wait_all();
    __syncthreads();

    const float sl2 = scale * FA_LOG2E;
    float o[2][D / 8][4];
#pragma unroll
    for (int rt = 0; rt < 2; rt++)
#pragma unroll
        for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) o[rt][nt][i] = 0.0f;
    float m[2][2] = {{neg_inf(), neg_inf()}, {neg_inf(), neg_inf()}}, l[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
    int buf = 0;
    for (int j0 = 0; j0 < nkeys; j0 += FA_ROWS, buf ^= 1) {
        const bool more = j0 + FA_ROWS < nkeys;
        if (more) {
            fa_fetch<D, FW_THREADS>(tk(buf ^ 1), nullptr, k, kv0 + j0 + FA_ROWS, fa_imin(FA_ROWS, nkeys - j0 - FA_ROWS),
                                    n_kv, kvh);
            fa_fetch<D, FW_THREADS>(tv(buf ^ 1), nullptr, v, kv0 + j0 + FA_ROWS, fa_imin(FA_ROWS, nkeys - j0 - FA_ROWS),
                                    n_kv, kvh);
            cp_async_commit();
        }
        if (active && j0 <= wlast) {
            const fa_tile_ptr<D> K = tk(buf), V = tv(buf);
            // S = Q K^T for both row tiles: each K fragment feeds two MMAs per n tile.
            float s[2][8][4];
#pragma unroll
            for (int rt = 0; rt < 2; rt++)
#pragma unroll
                for (int nt = 0; nt < 8; nt++)
#pragma unroll
                    for (int i = 0; i < 4; i++) s[rt][nt][i] = 0.0f;
#pragma unroll
            for (int kc = 0; kc < D / 16; kc++) {
                unsigned a[2][4];
#pragma unroll
                for (int rt = 0; rt < 2; rt++)
                    ldmatrix_x4(a[rt], &sq[wrow + 16 * rt + (lane & 7) + 8 * ((lane >> 3) & 1)][2 * kc + (lane >> 4)]);
#pragma unroll
                for (int np = 0; np < 4; np++) {
                    unsigned b[4];
                    ldmatrix_x4(b, &K[np * 16 + (lane & 7) + 8 * (lane >> 4)][2 * kc + ((lane >> 3) & 1)]);
#pragma unroll
                    for (int rt = 0; rt < 2; rt++) {
                        mma_bf16_16816(s[rt][2 * np], a[rt], b);
                        mma_bf16_16816(s[rt][2 * np + 1], a[rt], b + 2);
                    }
                }
            }
            // Online softmax per row tile, the narrow forward's step.
#pragma unroll
            for (int rt = 0; rt < 2; rt++)
                fa_softmax_step<D>(s[rt], o[rt], m[rt], l[rt], j0, pos0 + wrow + 16 * rt, nkeys, sl2, g, t,
                                   fa_masked(j0, pos0 + wrow + 16 * rt, mask_all));
            // O += P V: each V fragment feeds two MMAs per n tile.
#pragma unroll
            for (int kc = 0; kc < 4; kc++) {
                unsigned a[2][4];
#pragma unroll
                for (int rt = 0; rt < 2; rt++) {
                    a[rt][0] = pack_bf16x2(s[rt][2 * kc][0], s[rt][2 * kc][1]);
                    a[rt][1] = pack_bf16x2(s[rt][2 * kc][2], s[rt][2 * kc][3]);
                    a[rt][2] = pack_bf16x2(s[rt][2 * kc + 1][0], s[rt][2 * kc + 1][1]);
                    a[rt][3] = pack_bf16x2(s[rt][2 * kc + 1][2], s[rt][2 * kc + 1][3]);
                }
#pragma unroll
                for (int dp = 0; dp < D / 16; dp++) {
                    unsigned b[4];
                    ldmatrix_x4_trans(b, &V[kc * 16 + (lane & 7) + 8 * ((lane >> 3) & 1)][2 * dp + (lane >> 4)]);
#pragma unroll
                    for (int rt = 0; rt < 2; rt++) {
                        mma_bf16_16816(o[rt][2 * dp], a[rt], b);
                        mma_bf16_16816(o[rt][2 * dp + 1], a[rt], b + 2);
                    }
                }
            }
        }
        if (more) cp_async_wait_all();
        __syncthreads(); // the next tile is complete, and this one is no longer read
    }
    if (!active) return;
#pragma unroll
    for (int rt = 0; rt < 2; rt++)
        fa_write_rows<D>(out, out16, lse, o[rt], m[rt], l[rt], wrow + 16 * rt, nrows, qrow0, n_heads, h, scale, g, t);
}

// ---- the pipelined kernels' walk: three buffers of a bf16 K/V tile pair ------------------
// Tile j lives in buffer j % 3. While the warps read tile j's V and tile j + 1's K, tile
// j + 2 is in flight into the third buffer, written after the barrier at the top of tile j's
// iteration, when every warp is done with tile j - 1's buffer. One cp.async group per tile
// (empty past the last), so that "all but the newest group" counts tiles.
template <int D>
struct fa_kv3 {
    static constexpr int TB = fa_smem<D, fa_b16>::tile;
    unsigned char* smem;
    const fa_b16 *k, *v;
    long long kv0;
    int nkeys, n_kv, kvh;
    __device__ __forceinline__ int tiles() const { return (nkeys + FA_ROWS - 1) / FA_ROWS; }
    // K and V of tile j.
    __device__ __forceinline__ fa_tile_ptr<D> tk(int j) const {
        return reinterpret_cast<fa_tile_ptr<D>>(smem + 2 * (j % 3) * TB);
    }
    __device__ __forceinline__ fa_tile_ptr<D> tv(int j) const {
        return reinterpret_cast<fa_tile_ptr<D>>(smem + (2 * (j % 3) + 1) * TB);
    }
    __device__ __forceinline__ void fetch(int j) const {
        const int j0 = j * FA_ROWS;
        fa_fetch<D>(tk(j), nullptr, k, kv0 + j0, fa_imin(FA_ROWS, nkeys - j0), n_kv, kvh);
        fa_fetch<D>(tv(j), nullptr, v, kv0 + j0, fa_imin(FA_ROWS, nkeys - j0), n_kv, kvh);
    }
    // Tiles 0 and 1 in flight (the caller loads its own rows meanwhile), then `first_landed`.
    __device__ __forceinline__ void start() const {
        fetch(0);
        cp_async_commit();
        if (tiles() > 1) fetch(1);
        cp_async_commit();
    }
    // Tile 0 landed and visible to the block (tile 1 may be in flight).
    __device__ __forceinline__ void first_landed() const {
        cp_async_wait<1>();
        __syncthreads();
    }
    // The top of tile j's iteration: tile j + 1 landed and visible, tile j + 2 in flight.
    __device__ __forceinline__ void top(int j) const {
        cp_async_wait<0>();
        __syncthreads();
        if (j + 2 < tiles()) fetch(j + 2);
        cp_async_commit();
    }
    // The tile whose K (and V) a warp reads ahead during tile j: j + 1, or j itself past the
    // last (whose products go unused; only written memory is read).
    __device__ __forceinline__ int ahead(int j) const { return j + 1 < tiles() ? j + 1 : j; }
};

// ---- forward, pipelined: the next key tile's S = Q K^T issued before this tile's softmax ----
// The narrow forward runs each tile as one dependent chain: S = Q K^T, the row max (quad
// shuffles), the exps, O += P V; with two warps a scheduler (one block of 8 warps an SM at
// d128) both are often waiting on the same chain (ncu, sixth H100 call: short-scoreboard and
// fixed-latency stalls ahead of everything else, the tensor pipe active 32% of the time).
// Here a warp issues the next tile's S = Q K^T right after the barrier, before this tile's
// softmax and P V, so the scheduler has independent MMAs to issue while the softmax's
// shuffles and exps wait (FlashAttention-3's intra-warpgroup overlap of softmax with the next
// GEMM, Shah et al. 2024, section 3.2, on mma.sync). The next tile's K must be in shared
// memory one tile earlier: the walk is fa_kv3's three buffers, one barrier a tile as the
// narrow forward. Same work items, same arithmetic per tile in the same
// order (its helpers are the narrow forward's): the same bits as flash_fwd (tested). The
// second S and the interleaving cost registers: 255 at d128 against the narrow kernel's 175
// (no spills; one block an SM either way), 177 at d64 against 128 (one block an SM instead of
// two). bf16 K/V storage, f32 Q.
template <int D>
__device__ void flash_fwd_pipe(real* out, unsigned short* out16, float* lse, const real* q, const fa_b16* k,
                               const fa_b16* v, const int* items, int n_heads, int n_kv, float scale, bool mask_all) {
    DYN_SMEM(unsigned char, smem);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const fa_q_item qi = fa_q_item_of(items, n_heads, n_kv);
    const long long qrow0 = qi.qrow0, kv0 = qi.kv0;
    const int h = qi.h, kvh = qi.kvh, nrows = qi.nrows, pos0 = qi.pos0, nkeys = qi.nkeys;
    const bool active = warp * 16 < nrows;
    const int wlast = pos0 + fa_imin(warp * 16 + 15, nrows - 1); // last key any of the warp's rows sees
    const fa_kv3<D> kv{smem, k, v, kv0, nkeys, n_kv, kvh};
    const int ntiles = kv.tiles();

    kv.start();
    unsigned qf[D / 16][4];
    fa_frag_a_global<D>(qf, q, qrow0 + warp * 16, nrows - warp * 16, n_heads, h);
    const float sl2 = scale * FA_LOG2E;
    float o[D / 8][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) o[nt][i] = 0.0f;
    float m[2] = {neg_inf(), neg_inf()}, l[2] = {0.0f, 0.0f};
    float sa[8][4], sb[8][4];
    kv.first_landed();
    if (active) fa_mm_abt<D>(sa, qf, kv.tk(0)); // every active warp sees key 0

    // Tile j: `cur` holds its S (computed one iteration earlier), `nxt` receives tile j + 1's.
    // After the mask (a branch), the next tile's S = Q K^T, this tile's softmax and its P V are
    // one basic block, so ptxas can interleave the independent MMAs with the softmax's
    // shuffles and exps; the next S is computed whenever this tile is visible, past a warp's
    // last tile too (unused then).
    auto step = [&](float(&cur)[8][4], float(&nxt)[8][4], int j) {
        const int j0 = j * FA_ROWS;
        kv.top(j);
        if (active && j0 <= wlast) { // warp-uniform: something of this tile is visible
            if (fa_masked(j0, pos0 + warp * 16, mask_all)) fa_mask_scores(cur, j0, pos0 + warp * 16, nkeys, g, t);
            fa_mm_abt<D>(nxt, qf, kv.tk(kv.ahead(j)));
            fa_softmax_rest<D>(cur, o, m, l, sl2);
            fa_mm_pt<D>(o, cur, kv.tv(j));
        }
    };
    // Two tiles an iteration with the roles of sa and sb swapped: no register copies.
    int j = 0;
    for (; j + 1 < ntiles; j += 2) {
        step(sa, sb, j);
        step(sb, sa, j + 1);
    }
    if (j < ntiles) step(sa, sb, j);
    if (!active) return;
    fa_write_rows<D>(out, out16, lse, o, m, l, warp * 16, nrows, qrow0, n_heads, h, scale, g, t);
}

// ---- backward: dQ (one block per q tile and head, walks the keys) -------------------------

// The statistics of this lane's two rows of a warp's 16 (warp rows g and g + 8) that both dQ
// kernels read: lse in log2 units and D = rowsum(dO * O). Rows past the tile get L = +inf, so
// P = 0 there with or without the mask.
__device__ __forceinline__ void fa_dq_rows(float L2[2], float Dd[2], const float* lse, const float* dsum,
                                           long long qrow0, int nrows, int n_heads, int h, int warp, int g) {
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int row = warp * 16 + g + 8 * r;
        L2[r] = row < nrows ? lse[(qrow0 + row) * n_heads + h] * FA_LOG2E : __int_as_float(0x7f800000);
        Dd[r] = row < nrows ? dsum[(qrow0 + row) * n_heads + h] : 0.0f;
    }
}

// dS = P (dP - D) scale over a tile's scores `s` (in place), P = exp2(S log2e scale - L): a
// masked score (-inf) gives P = 0.
__device__ __forceinline__ void fa_dscores(float s[8][4], const float dp[8][4], const float L2[2],
                                           const float Dd[2], float sl2, float scale) {
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) s[nt][i] = exp2f(s[nt][i] * sl2 - L2[i >> 1]) * (dp[nt][i] - Dd[i >> 1]) * scale;
}

// dQ's dS over a 16-row tile against the 64 keys from j0 (rows at positions pos_first + g and
// + 8 of this lane): with `masked` (fa_masked), a key past a row's position or past nkeys
// gives P = 0; rows past the tile have L = +inf, P = 0 with or without the mask.
__device__ __forceinline__ void fa_dq_dscores(float s[8][4], const float dp[8][4], const float L2[2],
                                              const float Dd[2], float sl2, float scale, int j0, int pos_first,
                                              int nkeys, int g, int t, bool masked) {
    if (masked) {
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int j = j0 + nt * 8 + 2 * t + (i & 1), pos = pos_first + g + 8 * (i >> 1);
                const float p = (j > pos || j >= nkeys) ? 0.0f : exp2f(s[nt][i] * sl2 - L2[i >> 1]);
                s[nt][i] = p * (dp[nt][i] - Dd[i >> 1]) * scale; // dS
            }
    } else {
        fa_dscores(s, dp, L2, Dd, sl2, scale);
    }
}

// dK/dV's P^T (into s) and dS^T (into dp) over a warp's 16 key rows against a query tile of nq
// rows from position qpos (columns c: L, Dv per query, L in log2 units), the key rows from
// j0 + warp * 16 (nk in the block). With `masked`, a query before a key's position, past nq,
// or a key row past nk gives P = 0. (Without, key rows past nk get P > 0 from K = 0, but feed
// only their own dK/dV rows, which are never written.)
__device__ __forceinline__ void fa_dkv_scores(float s[8][4], float dp[8][4], const float* L, const float* Dv,
                                              float sl2, float scale, int j0, int qpos, int nq, int nk, int warp,
                                              int g, int t, bool masked) {
    if (masked) {
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int c = nt * 8 + 2 * t + (i & 1), row = warp * 16 + g + 8 * (i >> 1);
                const bool vis = c < nq && row < nk && j0 + row <= qpos + c;
                const float p = vis ? exp2f(s[nt][i] * sl2 - L[c]) : 0.0f;
                s[nt][i] = p;
                dp[nt][i] = p * (dp[nt][i] - Dv[c]) * scale; // dS^T
            }
    } else {
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int c = nt * 8 + 2 * t + (i & 1);
                const float p = exp2f(s[nt][i] * sl2 - L[c]);
                s[nt][i] = p;
                dp[nt][i] = p * (dp[nt][i] - Dv[c]) * scale; // dS^T
            }
    }
}

template <int D, typename In>
__device__ void flash_bwd_dq(real* dq, const In* dout, const In* q, const In* k, const In* v,
                             const float* lse, const float* dsum, const int* items, int n_heads, int n_kv,
                             float scale, bool mask_all) {
    DYN_SMEM(unsigned char, smem);
    using S = fa_smem<D, In>;
    // Buffer b: K at tile 2b, V at tile 2b + 1 (computed, not indexed: no local memory).
    auto tk = [&](int b) { return reinterpret_cast<fa_tile_ptr<D>>(smem + 2 * b * S::tile); };
    auto tv = [&](int b) { return reinterpret_cast<fa_tile_ptr<D>>(smem + (2 * b + 1) * S::tile); };
    float* const stk = reinterpret_cast<float*>(smem + 4 * S::tile);
    float* const stv = stk + FA_ROWS * D;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const fa_q_item qi = fa_q_item_of(items, n_heads, n_kv);
    const long long qrow0 = qi.qrow0, kv0 = qi.kv0;
    const int h = qi.h, kvh = qi.kvh, nrows = qi.nrows, pos0 = qi.pos0, nkeys = qi.nkeys;
    const bool active = warp * 16 < nrows;
    const int wlast = pos0 + fa_imin(warp * 16 + 15, nrows - 1);

    fa_fetch<D>(tk(0), stk, k, kv0, fa_imin(FA_ROWS, nkeys), n_kv, kvh);
    fa_fetch<D>(tv(0), stv, v, kv0, fa_imin(FA_ROWS, nkeys), n_kv, kvh);
    cp_async_commit();
    unsigned qf[D / 16][4], df[D / 16][4];
    fa_frag_a_global<D>(qf, q, qrow0 + warp * 16, nrows - warp * 16, n_heads, h);
    fa_frag_a_global<D>(df, dout, qrow0 + warp * 16, nrows - warp * 16, n_heads, h);
    float L2[2], Dd[2];
    fa_dq_rows(L2, Dd, lse, dsum, qrow0, nrows, n_heads, h, warp, g);
    cp_async_wait_all();
    fa_land<D>(tk(0), stk, k);
    fa_land<D>(tv(0), stv, v);
    __syncthreads();

    const float sl2 = scale * FA_LOG2E;
    float acc[D / 8][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[nt][i] = 0.0f;
    int buf = 0;
    for (int j0 = 0; j0 < nkeys; j0 += FA_ROWS, buf ^= 1) {
        const bool more = j0 + FA_ROWS < nkeys;
        if (more) {
            fa_fetch<D>(tk(buf ^ 1), stk, k, kv0 + j0 + FA_ROWS, fa_imin(FA_ROWS, nkeys - j0 - FA_ROWS), n_kv, kvh);
            fa_fetch<D>(tv(buf ^ 1), stv, v, kv0 + j0 + FA_ROWS, fa_imin(FA_ROWS, nkeys - j0 - FA_ROWS), n_kv, kvh);
            cp_async_commit();
        }
        if (active && j0 <= wlast) {
            float s[8][4], dp[8][4];
            fa_mm_abt<D>(s, qf, tk(buf));
            fa_mm_abt<D>(dp, df, tv(buf));
            fa_dq_dscores(s, dp, L2, Dd, sl2, scale, j0, pos0 + warp * 16, nkeys, g, t,
                          fa_masked(j0, pos0 + warp * 16, mask_all));
            fa_mm_pt<D>(acc, s, tk(buf));
        }
        if (more) {
            cp_async_wait_all();
            fa_land<D>(tk(buf ^ 1), stk, k);
            fa_land<D>(tv(buf ^ 1), stv, v);
        }
        __syncthreads();
    }
    if (!active) return;
    fa_store_acc_rows<D>(dq, acc, qrow0, warp * 16, nrows, n_heads, h, g, t);
}

// ---- backward: dQ, pipelined (the next key tile's S and dP issued before this tile's dS) ----
// The forward's pipelining (flash_fwd_pipe) in the dQ kernel: per key tile a warp computes
// S = Q K^T and dP = dO V^T, then dS = P (dP - D) elementwise (an exp a score), then
// dQ += dS K, one dependent chain; here the next tile's S and dP are issued after the barrier
// in one basic block with this tile's dS and dQ MMAs (the mask, a branch only diagonal tiles
// take, first sets masked scores to -inf: exp2 of them is the 0 the plain kernel writes, so
// the same bits). The walk is fa_kv3's, as the pipelined forward's. Head dim 64 only: the second
// S and dP take 64 more registers, which d64's 173 leave room for (one block of 8 warps an SM
// either way) and d128's 254 do not. bf16 storage of Q, K, V, dO.
template <int D>
__device__ void flash_bwd_dq_pipe(real* dq, const fa_b16* dout, const fa_b16* q, const fa_b16* k, const fa_b16* v,
                                  const float* lse, const float* dsum, const int* items, int n_heads, int n_kv,
                                  float scale, bool mask_all) {
    DYN_SMEM(unsigned char, smem);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const fa_q_item qi = fa_q_item_of(items, n_heads, n_kv);
    const long long qrow0 = qi.qrow0, kv0 = qi.kv0;
    const int h = qi.h, kvh = qi.kvh, nrows = qi.nrows, pos0 = qi.pos0, nkeys = qi.nkeys;
    const bool active = warp * 16 < nrows;
    const int wlast = pos0 + fa_imin(warp * 16 + 15, nrows - 1);
    const fa_kv3<D> kv{smem, k, v, kv0, nkeys, n_kv, kvh};
    const int ntiles = kv.tiles();

    kv.start();
    unsigned qf[D / 16][4], df[D / 16][4];
    fa_frag_a_global<D>(qf, q, qrow0 + warp * 16, nrows - warp * 16, n_heads, h);
    fa_frag_a_global<D>(df, dout, qrow0 + warp * 16, nrows - warp * 16, n_heads, h);
    float L2[2], Dd[2];
    fa_dq_rows(L2, Dd, lse, dsum, qrow0, nrows, n_heads, h, warp, g);
    const float sl2 = scale * FA_LOG2E;
    float acc[D / 8][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[nt][i] = 0.0f;
    float sa[8][4], pa[8][4], sb[8][4], pb[8][4];
    kv.first_landed();
    if (active) {
        fa_mm_abt<D>(sa, qf, kv.tk(0));
        fa_mm_abt<D>(pa, df, kv.tv(0));
    }
    // `s`, `dp`: tile j's S and dP (computed one iteration earlier); `ns`, `ndp` receive the
    // next tile's, as in flash_fwd_pipe.
    auto step = [&](float(&s)[8][4], float(&dp)[8][4], float(&ns)[8][4], float(&ndp)[8][4], int j) {
        const int j0 = j * FA_ROWS;
        kv.top(j);
        if (active && j0 <= wlast) {
            if (fa_masked(j0, pos0 + warp * 16, mask_all)) fa_mask_scores(s, j0, pos0 + warp * 16, nkeys, g, t);
            fa_mm_abt<D>(ns, qf, kv.tk(kv.ahead(j)));
            fa_mm_abt<D>(ndp, df, kv.tv(kv.ahead(j)));
            fa_dscores(s, dp, L2, Dd, sl2, scale);
            fa_mm_pt<D>(acc, s, kv.tk(j));
        }
    };
    int j = 0;
    for (; j + 1 < ntiles; j += 2) {
        step(sa, pa, sb, pb, j);
        step(sb, pb, sa, pa, j + 1);
    }
    if (j < ntiles) step(sa, pa, sb, pb, j);
    if (!active) return;
    fa_store_acc_rows<D>(dq, acc, qrow0, warp * 16, nrows, n_heads, h, g, t);
}

// ---- backward: dK, dV (one block per kv tile, kv head and slice of the group's heads; walks
// the queries of each head of its slice in a fixed order: deterministic, no atomics) -------
// Unsplit (heads_per_block = group, part_stride = 0) a block writes dK, dV. Split, slice p
// writes its partial sums at dk + p * part_stride (same for dv) and flash_dkv_sum adds the
// slices in order: with GQA and few sequences the kv tiles alone are too few blocks to fill
// the GPU (4 x 1024 tokens, 2 kv heads: 64 blocks of 8 warps for 132 SMs).

// Bytes of dynamic shared memory after the walk buffers: lse and D of two query tiles.
#define FA_DKV_EXTRA (4 * FA_ROWS * 4)

// Whether the dK/dV kernel keeps its K and V rows in shared memory (`fa_asmem`): at D = 128 in
// bf16 storage (the default), where registers ran out. f32 storage keeps them in registers:
// its stage already takes 64 KB, and an A100's 163 KB would not hold both. flash.rs
// (`walk_smem`) adds the two 128-row tiles after FA_DKV_EXTRA in the same case.
template <int D, typename In>
struct fa_dkv_asmem {
    static constexpr bool on = false;
};
template <>
struct fa_dkv_asmem<128, fa_b16> {
    static constexpr bool on = true;
};
template <int D, bool SMEM>
struct fa_dkv_a {
    typedef fa_areg<D> type;
};
template <int D>
struct fa_dkv_a<D, true> {
    typedef fa_asmem<D> type;
};

// The dK/dV kernels' work item (flash.rs `kv_tiles`, 8 ints) and head: a tile of nk <= 128
// keys from row kvrow0, j0 the first key's index in its sequence, and its span's queries
// (q_len rows from q_start, the first at position qpos0); the block's kv head and its slice
// [g_lo, g_hi) of the group's query heads, `part` of the group's slices (its partials' index).
struct fa_kv_item {
    long long kvrow0, q_start;
    int nk, j0, q_len, qpos0, kvh, part, g_lo, g_hi;
};
__device__ __forceinline__ fa_kv_item fa_kv_item_of(const int* items, int n_heads, int n_kv, int heads_per_block) {
    const int group = n_heads / n_kv, parts = (group + heads_per_block - 1) / heads_per_block;
    const fa_block_ix bi = fa_block(n_kv * parts); // its head: kv head x slice of the group
    const int* it = items + 8 * bi.item;
    fa_kv_item w;
    w.kvrow0 = it[0];
    w.q_start = it[3];
    w.nk = it[1];
    w.j0 = it[2];
    w.q_len = it[4];
    w.qpos0 = it[5];
    w.kvh = bi.head / parts;
    w.part = bi.head % parts;
    w.g_lo = w.part * heads_per_block;
    w.g_hi = fa_imin(group, w.g_lo + heads_per_block);
    return w;
}

// lse and D of nq query rows from row qrow0 of head h into a tile's 64-row buffers sL, sD by
// 4-byte cp.async (threads 0..63, a row each; complete at the next wait); rows past nq get
// L = +inf and D = 0, so P = 0 there.
__device__ __forceinline__ void fa_fetch_lse_d(float* sL, float* sD, const float* lse, const float* dsum,
                                               long long qrow0, int nq, int n_heads, int h) {
    const int tid = threadIdx.x;
    if (tid >= FA_ROWS) return;
    if (tid < nq) {
        const long long qi = (qrow0 + tid) * n_heads + h;
        cp_async_4(sL + tid, lse + qi);
        cp_async_4(sD + tid, dsum + qi);
    } else {
        sL[tid] = __int_as_float(0x7f800000);
        sD[tid] = 0.0f;
    }
}

template <int D, typename In>
__device__ void flash_bwd_dkv(real* dk, real* dv, const In* dout, const In* q, const In* k, const In* v,
                              const float* lse, const float* dsum, const int* items, int n_heads, int n_kv,
                              float scale, long long part_stride, int heads_per_block, bool mask_all) {
    DYN_SMEM(unsigned char, smem);
    using S = fa_smem<D, In>;
    // Buffer b: Q at tile 2b, dO at tile 2b + 1.
    auto tq = [&](int b) { return reinterpret_cast<fa_tile_ptr<D>>(smem + 2 * b * S::tile); };
    auto to = [&](int b) { return reinterpret_cast<fa_tile_ptr<D>>(smem + (2 * b + 1) * S::tile); };
    float* const stq = reinterpret_cast<float*>(smem + 4 * S::tile);
    float* const sto = stq + FA_ROWS * D;
    float* const sL = reinterpret_cast<float*>(smem + S::walk); // [2][64], log2 units
    float* const sD = sL + 2 * FA_ROWS;                         // [2][64]
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int group = n_heads / n_kv;
    const fa_kv_item w = fa_kv_item_of(items, n_heads, n_kv, heads_per_block);
    const long long kvrow0 = w.kvrow0, q_start = w.q_start;
    const int nk = w.nk, j0 = w.j0, q_len = w.q_len, qpos0 = w.qpos0, kvh = w.kvh, g_lo = w.g_lo, g_hi = w.g_hi;
    dk += w.part * part_stride;
    dv += w.part * part_stride;
    const bool active = warp * 16 < nk;
    const int wfirst = j0 + warp * 16; // first key of the warp
    const int i_first = fa_imax(0, j0 - qpos0); // first query that sees key j0 (< q_len)

    // Query tiles in order (head gi of the group, g_lo <= gi < g_hi, first query i0). lse and D of a tile go
    // straight into their buffer by 4-byte cp.async (threads 0..63, one row each); the thread
    // that copied an lse turns it into log2 units when it lands.
    auto issue = [&](int gi, int i0, int b) {
        const int h = kvh * group + gi, nq = fa_imin(FA_ROWS, q_len - i0);
        fa_fetch<D>(tq(b), stq, q, q_start + i0, nq, n_heads, h);
        fa_fetch<D>(to(b), sto, dout, q_start + i0, nq, n_heads, h);
        fa_fetch_lse_d(sL + b * FA_ROWS, sD + b * FA_ROWS, lse, dsum, q_start + i0, nq, n_heads, h);
        cp_async_commit();
    };
    auto land = [&](int b) {
        cp_async_wait_all();
        fa_land<D>(tq(b), stq, q);
        fa_land<D>(to(b), sto, dout);
        if (tid < FA_ROWS) sL[b * FA_ROWS + tid] *= FA_LOG2E; // +inf stays +inf
    };

    issue(g_lo, i_first, 0);
    typename fa_dkv_a<D, fa_dkv_asmem<D, In>::on>::type kf, vf;
    if constexpr (fa_dkv_asmem<D, In>::on) {
        // Two tiles of the block's 128 rows after the lse/D rows; this warp's 16 rows of each.
        auto own = reinterpret_cast<bf16x8(*)[D / 8 + 1]>(smem + S::walk + FA_DKV_EXTRA);
        kf.s = own + warp * 16;
        vf.s = own + FA_OWN + warp * 16;
    }
    kf.load(k, kvrow0 + warp * 16, nk - warp * 16, n_kv, kvh);
    vf.load(v, kvrow0 + warp * 16, nk - warp * 16, n_kv, kvh);
    land(0);
    __syncthreads();

    const float sl2 = scale * FA_LOG2E;
    float gk[D / 8][4], gv[D / 8][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) gk[nt][i] = gv[nt][i] = 0.0f;
    int gi = g_lo, i0 = i_first, buf = 0;
    for (;;) {
        int ngi = gi, ni0 = i0 + FA_ROWS;
        if (ni0 >= q_len) {
            ngi++;
            ni0 = i_first;
        }
        const bool more = ngi < g_hi;
        if (more) issue(ngi, ni0, buf ^ 1);
        const int nq = fa_imin(FA_ROWS, q_len - i0);
        if (active && wfirst <= qpos0 + i0 + nq - 1) { // some query here sees the warp's keys
            const float* L = sL + buf * FA_ROWS;
            const float* Dv = sD + buf * FA_ROWS;
            float s[8][4], dp[8][4];
            fa_mm_abt_of<D>(s, kf, tq(buf));  // S^T: keys x queries
            fa_mm_abt_of<D>(dp, vf, to(buf)); // dP^T
            // Unmasked: every score visible (a whole tile of queries, the warp's last key at or
            // before the tile's first query).
            fa_dkv_scores(s, dp, L, Dv, sl2, scale, j0, qpos0 + i0, nq, nk, warp, g, t,
                          mask_all || nq < FA_ROWS || wfirst + 15 > qpos0 + i0);
            fa_mm_pt<D>(gv, s, to(buf));  // dV += P^T dO
            fa_mm_pt<D>(gk, dp, tq(buf)); // dK += dS^T Q
        }
        if (more) land(buf ^ 1);
        __syncthreads();
        if (!more) break;
        gi = ngi;
        i0 = ni0;
        buf ^= 1;
    }
    if (!active) return;
    fa_store_acc_rows<D>(dk, gk, kvrow0, warp * 16, nk, n_kv, kvh, g, t);
    fa_store_acc_rows<D>(dv, gv, kvrow0, warp * 16, nk, n_kv, kvh, g, t);
}

// ---- entry points, one per head dim and storage ------------------------------------------

// Spelled out, not macro-generated: build.rs finds the entry points by their declaration text.
// `_bf16`: K, V (forward) or Q, K, V, dO (backward) in bf16 storage, outputs in f32; same
// bits as the f32 ones.
extern "C" __global__ void __launch_bounds__(256) flash_fwd_d16(real* out, unsigned short* out16, float* lse,
    const real* q, const real* k, const real* v, const int* items, int n_heads, int n_kv, float scale, int mask_all) {
    flash_fwd<16>(out, out16, lse, q, k, v, items, n_heads, n_kv, scale, mask_all != 0);
}
extern "C" __global__ void __launch_bounds__(256) flash_bwd_dq_d16(real* dq, const real* dout,
    const real* q, const real* k, const real* v, const float* lse, const float* dsum, const int* items,
    int n_heads, int n_kv, float scale, int mask_all) {
    flash_bwd_dq<16>(dq, dout, q, k, v, lse, dsum, items, n_heads, n_kv, scale, mask_all != 0);
}
extern "C" __global__ void __launch_bounds__(256) flash_bwd_dkv_d16(real* dk, real* dv,
    const real* dout, const real* q, const real* k, const real* v, const float* lse, const float* dsum,
    const int* items, int n_heads, int n_kv, float scale, long long part_stride, int heads_per_block, int mask_all) {
    flash_bwd_dkv<16>(dk, dv, dout, q, k, v, lse, dsum, items, n_heads, n_kv, scale, part_stride,
                       heads_per_block, mask_all != 0);
}
extern "C" __global__ void __launch_bounds__(256) flash_fwd_bf16_d16(real* out, unsigned short* out16, float* lse,
    const real* q, const fa_b16* k, const fa_b16* v, const int* items, int n_heads, int n_kv, float scale, int mask_all) {
    flash_fwd<16>(out, out16, lse, q, k, v, items, n_heads, n_kv, scale, mask_all != 0);
}
extern "C" __global__ void __launch_bounds__(256) flash_bwd_dq_bf16_d16(real* dq, const fa_b16* dout,
    const fa_b16* q, const fa_b16* k, const fa_b16* v, const float* lse, const float* dsum, const int* items,
    int n_heads, int n_kv, float scale, int mask_all) {
    flash_bwd_dq<16>(dq, dout, q, k, v, lse, dsum, items, n_heads, n_kv, scale, mask_all != 0);
}
extern "C" __global__ void __launch_bounds__(256) flash_bwd_dkv_bf16_d16(real* dk, real* dv,
    const fa_b16* dout, const fa_b16* q, const fa_b16* k, const fa_b16* v, const float* lse, const float* dsum,
    const int* items, int n_heads, int n_kv, float scale, long long part_stride, int heads_per_block, int mask_all) {
    flash_bwd_dkv<16>(dk, dv, dout, q, k, v, lse, dsum, items, n_heads, n_kv, scale, part_stride,
                       heads_per_block, mask_all != 0);
}

extern "C" __global__ void __launch_bounds__(256) flash_fwd_d32(real* out, unsigned short* out16, float* lse,
    const real* q, const real* k, const real* v, const int* items, int n_heads, int n_kv, float scale, int mask_all) {
    flash_fwd<32>(out, out16, lse, q, k, v, items, n_heads, n_kv, scale, mask_all != 0);
}
extern "C" __global__ void __launch_bounds__(256) flash_bwd_dq_d32(real* dq, const real* dout,
    const real* q, const real* k, const real* v, const float* lse, const float* dsum, const int* items,
    int n_heads, int n_kv, float scale, int mask_all) {
    flash_bwd_dq<32>(dq, dout, q, k, v, lse, dsum, items, n_heads, n_kv, scale, mask_all != 0);
}
extern "C" __global__ void __launch_bounds__(256) flash_bwd_dkv_d32(real* dk, real* dv,
    const real* dout, const real* q, const real* k, const real* v, const float* lse, const float* dsum,
    const int* items, int n_heads, int n_kv, float scale, long long part_stride, int heads_per_block, int mask_all) {
    flash_bwd_dkv<32>(dk, dv, dout, q, k, v, lse, dsum, items, n_heads, n_kv, scale, part_stride,
                       heads_per_block, mask_all != 0);
}
extern "C" __global__ void __launch_bounds__(256) flash_fwd_bf16_d32(real* out, unsigned short* out16, float* lse,
    const real* q, const fa_b16* k, const fa_b16* v, const int* items, int n_heads, int n_kv, float scale, int mask_all) {
    flash_fwd<32>(out, out16, lse, q, k, v, items, n_heads, n_kv, scale, mask_all != 0);
}
extern "C" __global__ void __launch_bounds__(256) flash_bwd_dq_bf16_d32(real* dq, const fa_b16* dout,
    const fa_b16* q, const fa_b16* k, const fa_b16* v, const float* lse, const float* dsum, const int* items,
    int n_heads, int n_kv, float scale, int mask_all) {
    flash_bwd_dq<32>(dq, dout, q, k, v, lse, dsum, items, n_heads, n_kv, scale, mask_all != 0);
}
extern "C" __global__ void __launch_bounds__(256) flash_bwd_dkv_bf16_d32(real* dk, real* dv,
    const fa_b16* dout, const fa_b16* q, const fa_b16* k, const fa_b16* v, const float* lse, const float* dsum,
    const int* items, int n_heads, int n_kv, float scale, long long part_stride, int heads_per_block, int mask_all) {
    flash_bwd_dkv<32>(dk, dv, dout, q, k, v, lse, dsum, items, n_heads, n_kv, scale, part_stride,
                       heads_per_block, mask_all != 0);
}

// (256, 2): two blocks an SM. Writing out16 took the sm_90 build from 128 to 135 registers,
// which leaves room for one block of 256 threads; bounded, ptxas fits 128 with no spills
// (scripts/cubin-check.py flash_fwd). The bf16-storage forward keeps the same bound.
extern "C" __global__ void __launch_bounds__(256, 2) flash_fwd_d64(real* out, unsigned short* out16, float* lse,
    const real* q, const real* k, const real* v, const int* items, int n_heads, int n_kv, float scale, int mask_all) {
    flash_fwd<64>(out, out16, lse, q, k, v, items, n_heads, n_kv, scale, mask_all != 0);
}
extern "C" __global__ void __launch_bounds__(256) flash_bwd_dq_d64(real* dq, const real* dout,
    const real* q, const real* k, const real* v, const float* lse, const float* dsum, const int* items,
    int n_heads, int n_kv, float scale, int mask_all) {
    flash_bwd_dq<64>(dq, dout, q, k, v, lse, dsum, items, n_heads, n_kv, scale, mask_all != 0);
}
extern "C" __global__ void __launch_bounds__(256) flash_bwd_dkv_d64(real* dk, real* dv,
    const real* dout, const real* q, const real* k, const real* v, const float* lse, const float* dsum,
    const int* items, int n_heads, int n_kv, float scale, long long part_stride, int heads_per_block, int mask_all) {
    flash_bwd_dkv<64>(dk, dv, dout, q, k, v, lse, dsum, items, n_heads, n_kv, scale, part_stride,
                       heads_per_block, mask_all != 0);
}
extern "C" __global__ void __launch_bounds__(256, 2) flash_fwd_bf16_d64(real* out, unsigned short* out16, float* lse,
    const real* q, const fa_b16* k, const fa_b16* v, const int* items, int n_heads, int n_kv, float scale, int mask_all) {
    flash_fwd<64>(out, out16, lse, q, k, v, items, n_heads, n_kv, scale, mask_all != 0);
}
extern "C" __global__ void __launch_bounds__(256) flash_bwd_dq_bf16_d64(real* dq, const fa_b16* dout,
    const fa_b16* q, const fa_b16* k, const fa_b16* v, const float* lse, const float* dsum, const int* items,
    int n_heads, int n_kv, float scale, int mask_all) {
    flash_bwd_dq<64>(dq, dout, q, k, v, lse, dsum, items, n_heads, n_kv, scale, mask_all != 0);
}
extern "C" __global__ void __launch_bounds__(256) flash_bwd_dkv_bf16_d64(real* dk, real* dv,
    const fa_b16* dout, const fa_b16* q, const fa_b16* k, const fa_b16* v, const float* lse, const float* dsum,
    const int* items, int n_heads, int n_kv, float scale, long long part_stride, int heads_per_block, int mask_all) {
    flash_bwd_dkv<64>(dk, dv, dout, q, k, v, lse, dsum, items, n_heads, n_kv, scale, part_stride,
                       heads_per_block, mask_all != 0);
}

extern "C" __global__ void __launch_bounds__(256) flash_fwd_d128(real* out, unsigned short* out16, float* lse,
    const real* q, const real* k, const real* v, const int* items, int n_heads, int n_kv, float scale, int mask_all) {
    flash_fwd<128>(out, out16, lse, q, k, v, items, n_heads, n_kv, scale, mask_all != 0);
}
extern "C" __global__ void __launch_bounds__(256) flash_bwd_dq_d128(real* dq, const real* dout,
    const real* q, const real* k, const real* v, const float* lse, const float* dsum, const int* items,
    int n_heads, int n_kv, float scale, int mask_all) {
    flash_bwd_dq<128>(dq, dout, q, k, v, lse, dsum, items, n_heads, n_kv, scale, mask_all != 0);
}
extern "C" __global__ void __launch_bounds__(256) flash_bwd_dkv_d128(real* dk, real* dv,
    const real* dout, const real* q, const real* k, const real* v, const float* lse, const float* dsum,
    const int* items, int n_heads, int n_kv, float scale, long long part_stride, int heads_per_block, int mask_all) {
    flash_bwd_dkv<128>(dk, dv, dout, q, k, v, lse, dsum, items, n_heads, n_kv, scale, part_stride,
                       heads_per_block, mask_all != 0);
}
extern "C" __global__ void __launch_bounds__(256) flash_fwd_bf16_d128(real* out, unsigned short* out16, float* lse,
    const real* q, const fa_b16* k, const fa_b16* v, const int* items, int n_heads, int n_kv, float scale, int mask_all) {
    flash_fwd<128>(out, out16, lse, q, k, v, items, n_heads, n_kv, scale, mask_all != 0);
}
extern "C" __global__ void __launch_bounds__(256) flash_bwd_dq_bf16_d128(real* dq, const fa_b16* dout,
    const fa_b16* q, const fa_b16* k, const fa_b16* v, const float* lse, const float* dsum, const int* items,
    int n_heads, int n_kv, float scale, int mask_all) {
    flash_bwd_dq<128>(dq, dout, q, k, v, lse, dsum, items, n_heads, n_kv, scale, mask_all != 0);
}
extern "C" __global__ void __launch_bounds__(256) flash_bwd_dkv_bf16_d128(real* dk, real* dv,
    const fa_b16* dout, const fa_b16* q, const fa_b16* k, const fa_b16* v, const float* lse, const float* dsum,
    const int* items, int n_heads, int n_kv, float scale, long long part_stride, int heads_per_block, int mask_all) {
    flash_bwd_dkv<128>(dk, dv, dout, q, k, v, lse, dsum, items, n_heads, n_kv, scale, part_stride,
                       heads_per_block, mask_all != 0);
}

// The wide forward (bf16 K/V, f32 Q), for the model head dims.
extern "C" __global__ void __launch_bounds__(128) flash_fwd_wide_bf16_d64(real* out, unsigned short* out16,
    float* lse, const real* q, const fa_b16* k, const fa_b16* v, const int* items, int n_heads, int n_kv,
    float scale, int mask_all) {
    flash_fwd_wide<64>(out, out16, lse, q, k, v, items, n_heads, n_kv, scale, mask_all != 0);
}
extern "C" __global__ void __launch_bounds__(128) flash_fwd_wide_bf16_d128(real* out, unsigned short* out16,
    float* lse, const real* q, const fa_b16* k, const fa_b16* v, const int* items, int n_heads, int n_kv,
    float scale, int mask_all) {
    flash_fwd_wide<128>(out, out16, lse, q, k, v, items, n_heads, n_kv, scale, mask_all != 0);
}

// The pipelined dQ kernel (bf16 storage), at head dim 64.
extern "C" __global__ void __launch_bounds__(256) flash_bwd_dq_pipe_bf16_d64(real* dq, const fa_b16* dout,
    const fa_b16* q, const fa_b16* k, const fa_b16* v, const float* lse, const float* dsum, const int* items,
    int n_heads, int n_kv, float scale, int mask_all) {
    flash_bwd_dq_pipe<64>(dq, dout, q, k, v, lse, dsum, items, n_heads, n_kv, scale, mask_all != 0);
}

// The pipelined forward (bf16 K/V, f32 Q), for the model head dims.
extern "C" __global__ void __launch_bounds__(256) flash_fwd_pipe_bf16_d64(real* out, unsigned short* out16,
    float* lse, const real* q, const fa_b16* k, const fa_b16* v, const int* items, int n_heads, int n_kv,
    float scale, int mask_all) {
    flash_fwd_pipe<64>(out, out16, lse, q, k, v, items, n_heads, n_kv, scale, mask_all != 0);
}
extern "C" __global__ void __launch_bounds__(256) flash_fwd_pipe_bf16_d128(real* out, unsigned short* out16,
    float* lse, const real* q, const fa_b16* k, const fa_b16* v, const int* items, int n_heads, int n_kv,
    float scale, int mask_all) {
    flash_fwd_pipe<128>(out, out16, lse, q, k, v, items, n_heads, n_kv, scale, mask_all != 0);
}

// dK, dV of a split backward: the slices' partials summed in slice order (deterministic), on
// the rows of the kv tiles only (rows in no span keep what they held). Block (tile, kv head,
// z): 4 consecutive values of a row a thread (d is a multiple of 4: 16-byte loads and stores),
// the tile's 128 x d values spread over gridDim.z blocks. (The first version gave a tile one
// block walking 128 x d values one at a time: 64 blocks for 4 x 1024 tokens and 2 kv heads,
// 1.6 ms of a 0.5B step for ~30 MB a layer.)
extern "C" __global__ void __launch_bounds__(256) flash_dkv_sum(real* dk, real* dv, const float* pk, const float* pv,
                                                                const int* items, int n_kv, int d,
                                                                long long part_stride, int parts) {
    const int* it = items + 8 * blockIdx.x;
    const long long row0 = it[0];
    const int nk = it[1], kvh = blockIdx.y;
    const int step = 4 * blockDim.x * gridDim.z;
    for (int c = 4 * (blockIdx.z * blockDim.x + threadIdx.x); c < nk * d; c += step) {
        const long long o = ((row0 + c / d) * n_kv + kvh) * d + c % d;
        fa_f4 a = {0.0f, 0.0f, 0.0f, 0.0f}, b = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 4
        for (int z = 0; z < parts; z++) {
            const fa_f4 x = *reinterpret_cast<const fa_f4*>(pk + z * part_stride + o);
            const fa_f4 y = *reinterpret_cast<const fa_f4*>(pv + z * part_stride + o);
            a.x += x.x, a.y += x.y, a.z += x.z, a.w += x.w;
            b.x += y.x, b.y += y.y, b.z += y.z, b.w += y.w;
        }
        *reinterpret_cast<fa_f4*>(dk + o) = a;
        *reinterpret_cast<fa_f4*>(dv + o) = b;
    }
}

// ---- decode: one query per sequence against its KV cache, split over the keys -------------
// (flash-decoding: Dao et al. 2023, "Flash-Decoding for long-context inference"). Each warp
// takes a chunk of keys of one sequence (32, 64 or 128 keys by the sequence's length: flash.rs
// `decode_chunk`) and one kv head and serves all the query heads of its group, so each K/V
// row is read once per group; a second kernel merges the
// chunks of a sequence in order (deterministic). f32 throughout: decode is bound by reading
// the cache, not by arithmetic.
//   split items   (4 ints): query row, first kv row of the chunk, keys in the chunk, 0
//   combine items (4 ints): query row, first split item of the sequence, number of splits, 0
// Partials: part_ml[(item * n_heads + h) * 2 + {0, 1}] = running max (log2 units), sum;
// part_o[(item * n_heads + h) * d + c] = unnormalized output.
#define DEC_MAXG 8
#define DEC_MAXD 256
#define DEC_WARPS 4

struct __align__(16) dec_f4 {
    float x, y, z, w;
};

// The KV cache in f32 or bf16 storage (`Backend::kv_cache_buf`: bf16 where the flash kernels
// read it, which round K and V to bf16 at their tensor cores anyway). The decode kernels widen
// bf16 values as they read them and compute in f32 either way, so a bf16 cache gives the bits
// of an f32 cache holding the same (rounded) values: tests/suite/flash_attention.rs holds them to it.
// Four consecutive values of a row (row 16-byte aligned for f32, 8-byte for bf16).
__device__ __forceinline__ dec_f4 dec_piece(const float* row, int c4) {
    return reinterpret_cast<const dec_f4*>(row)[c4];
}
__device__ __forceinline__ dec_f4 dec_piece(const fa_b16* row, int c4) {
    const fa_u2 u = reinterpret_cast<const fa_u2*>(row)[c4]; // low half first
    return {__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16),
            __uint_as_float(u.y & 0xffff0000u)};
}
__device__ __forceinline__ float dec_value(const float* row, int c) { return row[c]; }
__device__ __forceinline__ float dec_value(const fa_b16* row, int c) { return __uint_as_float((unsigned)row[c] << 16); }

// The two decode kernels below share their arithmetic through these helpers, so that they
// compute the same bits and differ only in where the K and V rows are read from.
// `m`, `l`: running max (log2 units) and sum per query head of the group; `o`: the
// unnormalized output, lane's columns c = lane + 32 e.

// One tile of up to 32 keys, scores and online softmax: lane j scores key j (its K row `krow`,
// read in 16-byte pieces; `valid` false past the chunk's end) against the group's scaled
// queries `qs` ([group][d]), then every head's max and sum are updated and its probabilities
// written to `sP` ([DEC_MAXG][32]) for the value pass, and `o` rescaled.
template <int E, typename KT>
__device__ __forceinline__ void dec_scores(float m[DEC_MAXG], float l[DEC_MAXG], float o[DEC_MAXG][E],
                                           const float* qs, const KT* krow, bool valid, float* sP,
                                           int group, int d, int lane) {
    float s[DEC_MAXG];
#pragma unroll
    for (int g = 0; g < DEC_MAXG; g++) s[g] = 0.0f;
    if (valid) {
        for (int c4 = 0; c4 < d / 4; c4++) {
            const dec_f4 kk = dec_piece(krow, c4);
#pragma unroll
            for (int g = 0; g < DEC_MAXG; g++)
                if (g < group) {
                    const float* qg = qs + g * d + 4 * c4;
                    s[g] += qg[0] * kk.x + qg[1] * kk.y + qg[2] * kk.z + qg[3] * kk.w;
                }
        }
    }
#pragma unroll
    for (int g = 0; g < DEC_MAXG; g++) {
        if (g >= group) break;
        const float mnew = fmaxf(m[g], warp_max(valid ? s[g] : neg_inf())); // key 0 of a tile is valid: finite
        const float corr = exp2f(m[g] - mnew);
        const float p = valid ? exp2f(s[g] - mnew) : 0.0f;
        l[g] = l[g] * corr + warp_sum(p);
        m[g] = mnew;
        sP[g * 32 + lane] = p;
#pragma unroll
        for (int e = 0; e < E; e++) o[g][e] *= corr;
    }
}

// The value pass of a tile: lanes split the head dim, keys in order; key jj's V row at
// `vbase + jj * vstride`. `sP` must be visible to the whole warp (a __syncwarp before).
template <int E, typename VT>
__device__ __forceinline__ void dec_values(float o[DEC_MAXG][E], const VT* vbase, long long vstride, const float* sP,
                                           int nt, int group, int d, int lane) {
    for (int jj = 0; jj < nt; jj++) {
        const VT* vr = vbase + jj * vstride;
#pragma unroll
        for (int e = 0; e < E; e++) {
            const int c = lane + 32 * e;
            if (c < d) {
                const float vv = dec_value(vr, c);
#pragma unroll
                for (int g = 0; g < DEC_MAXG; g++)
                    if (g < group) o[g][e] += sP[g * 32 + jj] * vv;
            }
        }
    }
}

template <int E>
__device__ __forceinline__ void dec_init(float m[DEC_MAXG], float l[DEC_MAXG], float o[DEC_MAXG][E]) {
#pragma unroll
    for (int g = 0; g < DEC_MAXG; g++) {
        m[g] = neg_inf();
        l[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < E; e++) o[g][e] = 0.0f;
    }
}

template <int E>
__device__ __forceinline__ void dec_write_partials(float* part_o, float* part_ml, const float m[DEC_MAXG],
                                                   const float l[DEC_MAXG], const float o[DEC_MAXG][E], long long it,
                                                   int n_heads, int kvh, int group, int d, int lane) {
#pragma unroll
    for (int g = 0; g < DEC_MAXG; g++) {
        if (g >= group) break;
        const long long ph = it * n_heads + kvh * group + g;
        if (lane == 0) {
            part_ml[2 * ph] = m[g];
            part_ml[2 * ph + 1] = l[g];
        }
#pragma unroll
        for (int e = 0; e < E; e++) {
            const int c = lane + 32 * e;
            if (c < d) part_o[ph * d + c] = o[g][e];
        }
    }
}

// Version 1 (measured: 356 us for 32 x 4096 keys, h12 kv2 d128 on an H100, 22% of HBM): each
// lane reads its key's K row and the warp each V row straight from global memory, about one
// load per warp in flight. Any head dim that is a multiple of 4 up to DEC_MAXD; K and V in f32
// (`flash_decode_split`) or bf16 (`flash_decode_split_bf16`) storage.
template <typename KV>
__device__ __forceinline__ void flash_decode_split_t(float* part_o, float* part_ml, const real* q, const KV* k,
                                                     const KV* v, const int* items, int n_items, int n_heads,
                                                     int n_kv, int d, float scale) {
    SHARED(float, sQ, [DEC_WARPS][DEC_MAXG * DEC_MAXD]);
    SHARED(float, sP, [DEC_WARPS][DEC_MAXG * 32]);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int it = blockIdx.x * DEC_WARPS + warp, kvh = blockIdx.y, group = n_heads / n_kv;
    if (it >= n_items) return; // whole warp: no block-wide barrier below
    const long long qrow = items[4 * it], kv0 = items[4 * it + 1];
    const int nkeys = items[4 * it + 2];
    const float sl2 = scale * FA_LOG2E;
    float* qs = sQ[warp];
    for (int c = lane; c < group * d; c += 32) qs[c] = q[(qrow * n_heads + kvh * group) * d + c] * sl2;
    __syncwarp();
    float m[DEC_MAXG], l[DEC_MAXG], o[DEC_MAXG][DEC_MAXD / 32];
    dec_init<DEC_MAXD / 32>(m, l, o);
    const long long stride = (long long)n_kv * d; // between consecutive keys' rows of one kv head
    for (int t0 = 0; t0 < nkeys; t0 += 32) {
        const bool valid = t0 + lane < nkeys;
        const KV* krow = k + ((kv0 + t0 + lane) * n_kv + kvh) * d;
        dec_scores<DEC_MAXD / 32>(m, l, o, qs, valid ? krow : nullptr, valid, sP[warp], group, d, lane);
        __syncwarp();
        dec_values<DEC_MAXD / 32>(o, v + ((kv0 + t0) * n_kv + kvh) * d, stride, sP[warp], fa_imin(32, nkeys - t0),
                                  group, d, lane);
        __syncwarp(); // sP is rewritten by the next keys
    }
    dec_write_partials<DEC_MAXD / 32>(part_o, part_ml, m, l, o, it, n_heads, kvh, group, d, lane);
}
extern "C" __global__ void flash_decode_split(float* part_o, float* part_ml, const real* q, const real* k,
                                              const real* v, const int* items, int n_items, int n_heads, int n_kv,
                                              int d, float scale) {
    flash_decode_split_t(part_o, part_ml, q, k, v, items, n_items, n_heads, n_kv, d, scale);
}
extern "C" __global__ void flash_decode_split_bf16(float* part_o, float* part_ml, const real* q, const fa_b16* k,
                                                   const fa_b16* v, const int* items, int n_items, int n_heads,
                                                   int n_kv, int d, float scale) {
    flash_decode_split_t(part_o, part_ml, q, k, v, items, n_items, n_heads, n_kv, d, scale);
}

// Version 2, "staged" (head dims 64 and 128; measured: 172 us = 47% of HBM on the bench
// above, f32 storage): the same items, partials and arithmetic (the same bits), but each warp
// copies its tile's K and V rows into shared memory with cp.async (16-byte pieces, consecutive
// lanes on consecutive pieces of a row: every warp instruction moves whole rows), so a warp has
// a whole tile's 2 x 32 rows in flight instead of one load, without holding them in registers
// (the register-batched attempt went 120 -> 153 registers and got slower). The next tile's K
// is copied while this tile's values are summed, and its V while the next scores are computed:
//   K0 V0 | scores(K0) K1 values(V0) V1 | scores(K1) K2 values(V1) V2 | ...
// each stage waiting (cp.async.wait_group 1) only for the group it reads. K rows are padded
// by 16 bytes: the lanes' row reads (one key per lane) fall on distinct banks in f32, two lanes
// a bank in bf16 (8-byte reads of rows 144 or 272 bytes apart), which keeps cp.async's 16-byte
// alignment. bf16 storage (`_bf16_`): half the bytes from HBM and half the shared memory.
#define DEC_ST_WARPS 2 // = the kernels' __launch_bounds__(64) / 32 (build.rs reads the bound as a number)
template <int D, typename KV>
struct dec_st {
    static constexpr int KPAD = D + 16 / (int)sizeof(KV);
    // bytes per warp: K tile, V tile (storage type), the group's queries, the probabilities (f32)
    static constexpr int PER_WARP = (32 * KPAD + 32 * D) * (int)sizeof(KV) + (DEC_MAXG * D + DEC_MAXG * 32) * 4;
};

// Copies keys t0 .. t0 + nt - 1 of the chunk (rows `base + key * stride`, D values each) into
// `dst` (rows `dpitch` values apart), 16 bytes per cp.async.
template <int D, typename KV>
__device__ __forceinline__ void dec_stage_rows(KV* dst, int dpitch, const KV* base, long long stride, int nt,
                                               int lane) {
    constexpr int W = 16 / (int)sizeof(KV), P = D / W; // values a piece, pieces a row
    for (int p = lane; p < nt * P; p += 32) {
        const int j = p / P, c = p % P;
        cp_async_16(dst + j * dpitch + W * c, base + j * stride + W * c);
    }
}

template <int D, typename KV>
__device__ __forceinline__ void flash_decode_staged(float* part_o, float* part_ml, const real* q, const KV* k,
                                                    const KV* v, const int* items, int n_items, int n_heads,
                                                    int n_kv, float scale) {
    using ST = dec_st<D, KV>;
    constexpr int E = D / 32, KPAD = ST::KPAD;
    DYN_SMEM(unsigned char, smem);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int it = blockIdx.x * DEC_ST_WARPS + warp, kvh = blockIdx.y, group = n_heads / n_kv;
    if (it >= n_items) return; // whole warp: no block-wide barrier below
    KV* sK = reinterpret_cast<KV*>(smem + warp * ST::PER_WARP);
    KV* sV = sK + 32 * KPAD;
    float* qs = reinterpret_cast<float*>(sV + 32 * D);
    float* sP = qs + DEC_MAXG * D;
    const long long qrow = items[4 * it], kv0 = items[4 * it + 1];
    const int nkeys = items[4 * it + 2];
    const long long stride = (long long)n_kv * D;
    const KV* kb = k + (kv0 * n_kv + kvh) * D;
    const KV* vb = v + (kv0 * n_kv + kvh) * D;
    dec_stage_rows<D>(sK, KPAD, kb, stride, fa_imin(32, nkeys), lane);
    cp_async_commit();
    dec_stage_rows<D>(sV, D, vb, stride, fa_imin(32, nkeys), lane);
    cp_async_commit();
    const float sl2 = scale * FA_LOG2E;
    for (int c = lane; c < group * D; c += 32) qs[c] = q[(qrow * n_heads + kvh * group) * D + c] * sl2;
    float m[DEC_MAXG], l[DEC_MAXG], o[DEC_MAXG][E];
    dec_init<E>(m, l, o);
    for (int t0 = 0; t0 < nkeys; t0 += 32) {
        const int nt = fa_imin(32, nkeys - t0), nn = fa_imin(32, nkeys - t0 - 32); // this tile, the next
        cp_async_wait<1>(); // this tile's K (its V may still be in flight)
        __syncwarp();       // every lane's pieces (and, at t0 = 0, qs) visible to the warp
        const bool valid = lane < nt;
        dec_scores<E>(m, l, o, qs, sK + lane * KPAD, valid, sP, group, D, lane);
        __syncwarp(); // sK read by every lane; sP visible
        if (nn > 0) dec_stage_rows<D>(sK, KPAD, kb + (t0 + 32) * stride, stride, nn, lane);
        cp_async_commit(); // (empty at the last tile: the group count stays regular)
        cp_async_wait<1>(); // this tile's V
        __syncwarp();
        dec_values<E>(o, sV, D, sP, nt, group, D, lane);
        __syncwarp(); // sV and sP read by every lane
        if (nn > 0) dec_stage_rows<D>(sV, D, vb + (t0 + 32) * stride, stride, nn, lane);
        cp_async_commit();
    }
    dec_write_partials<E>(part_o, part_ml, m, l, o, it, n_heads, kvh, group, D, lane);
}

extern "C" __global__ void __launch_bounds__(64)
    flash_decode_staged_d64(float* part_o, float* part_ml, const real* q, const real* k, const real* v,
                            const int* items, int n_items, int n_heads, int n_kv, float scale) {
    flash_decode_staged<64>(part_o, part_ml, q, k, v, items, n_items, n_heads, n_kv, scale);
}
extern "C" __global__ void __launch_bounds__(64)
    flash_decode_staged_d128(float* part_o, float* part_ml, const real* q, const real* k, const real* v,
                             const int* items, int n_items, int n_heads, int n_kv, float scale) {
    flash_decode_staged<128>(part_o, part_ml, q, k, v, items, n_items, n_heads, n_kv, scale);
}
extern "C" __global__ void __launch_bounds__(64)
    flash_decode_staged_bf16_d64(float* part_o, float* part_ml, const real* q, const fa_b16* k, const fa_b16* v,
                                 const int* items, int n_items, int n_heads, int n_kv, float scale) {
    flash_decode_staged<64>(part_o, part_ml, q, k, v, items, n_items, n_heads, n_kv, scale);
}
extern "C" __global__ void __launch_bounds__(64)
    flash_decode_staged_bf16_d128(float* part_o, float* part_ml, const real* q, const fa_b16* k, const fa_b16* v,
                                  const int* items, int n_items, int n_heads, int n_kv, float scale) {
    flash_decode_staged<128>(part_o, part_ml, q, k, v, items, n_items, n_heads, n_kv, scale);
}

// Version 3, "mma" (head dims 64 and 128; opt-in until measured): the same items and
// partials, the arithmetic on the tensor cores. The staged kernel spends ~2,000 instructions a
// lane on a 32-key tile (each lane a key's dot products with every head of the group, the
// warp's max and sum per head by shuffles, then the values key by key), so at long contexts it
// is bound by issue, not bytes (47% of HBM at 32 x 4,096 keys, f32 cache; the bf16 cache halves
// the bytes, not the instructions). Here the group's heads are the rows of one 16-row MMA tile
// (rows past the group are zeros; GQA packs the heads that share a K/V row, as FlashInfer's
// decode does), and a 64-key tile is S = Q K^T, the forward's online softmax step, and
// O += P V: 128 MMAs at d128 and a few dozen other instructions a lane. Q and P enter the
// tensor cores rounded to bf16, like the flash forward's (held to its tolerance, not the f32
// kernels'); scores, statistics and accumulators are f32. One warp a block, a K and a V tile
// of 64 rows in shared memory (bf16, padded as the forward's): loaded, waited for, used;
// several warps an SM overlap one's loads with another's MMAs. K/V in f32 storage are
// rounded to bf16 as they are copied in (the same values the bf16 cache holds).
// A 64-row tile of keys or values by the block's one warp: the forward's loaders with 32
// threads (bf16 storage by cp.async, f32 rounded to bf16 as copied).
template <int D>
__device__ __forceinline__ void dec_mma_rows(fa_tile_ptr<D> s, const fa_b16* src, long long row0, int nvalid,
                                             int heads, int h) {
    fa_fetch<D, 32>(s, nullptr, src, row0, nvalid, heads, h);
}
template <int D>
__device__ __forceinline__ void dec_mma_rows(fa_tile_ptr<D> s, const real* src, long long row0, int nvalid,
                                             int heads, int h) {
    fa_rows_to_smem<D, FA_ROWS, 32>(s, src, row0, nvalid, heads, h);
}

template <int D, typename KV>
__device__ void flash_decode_mma(float* part_o, float* part_ml, const real* q, const KV* k, const KV* v,
                                 const int* items, int n_items, int n_heads, int n_kv, float scale) {
    DYN_SMEM(unsigned char, smem);
    constexpr int TB = fa_smem<D, fa_b16>::tile;
    const fa_tile_ptr<D> sK = reinterpret_cast<fa_tile_ptr<D>>(smem);
    const fa_tile_ptr<D> sV = reinterpret_cast<fa_tile_ptr<D>>(smem + TB);
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int it = blockIdx.x, kvh = blockIdx.y, group = n_heads / n_kv;
    if (it >= n_items) return;
    const long long qrow = items[4 * it], kv0 = items[4 * it + 1];
    const int nkeys = items[4 * it + 2];
    // Row r of the A tile: head kvh * group + r of the query row (rows >= group: zeros).
    unsigned qf[D / 16][4];
    fa_frag_a_global<D>(qf, q + (qrow * n_heads + (long long)kvh * group) * D, 0, group, 1, 0);
    const float sl2 = scale * FA_LOG2E;
    float o[D / 8][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) o[nt][i] = 0.0f;
    float m[2] = {neg_inf(), neg_inf()}, l[2] = {0.0f, 0.0f};
    for (int j0 = 0; j0 < nkeys; j0 += FA_ROWS) {
        const int nt = fa_imin(FA_ROWS, nkeys - j0);
        dec_mma_rows<D>(sK, k, kv0 + j0, nt, n_kv, kvh);
        dec_mma_rows<D>(sV, v, kv0 + j0, nt, n_kv, kvh);
        cp_async_wait_all();
        __syncwarp();
        float s[8][4];
        fa_mm_abt<D>(s, qf, sK);
        // Every cached key is visible to the new query: only keys past the chunk are masked.
        fa_softmax_step<D>(s, o, m, l, j0, 1 << 30, nkeys, sl2, g, t, j0 + FA_ROWS > nkeys);
        fa_mm_pt<D>(o, s, sV);
        __syncwarp(); // the tiles are rewritten by the next keys
    }
    // Partials as the other decode kernels write them: max in log2 units, the row's sum, and
    // the unnormalized output, for the group's heads (lane rows g; rows g + 8 are past it).
    const float lsum = fa_quad_sum(l[0]);
    if (g >= group) return;
    const long long ph = (long long)it * n_heads + (long long)kvh * group + g;
    if (t == 0) {
        part_ml[2 * ph] = m[0] * sl2;
        part_ml[2 * ph + 1] = lsum;
    }
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++) {
        part_o[ph * D + nt * 8 + 2 * t] = o[nt][0];
        part_o[ph * D + nt * 8 + 2 * t + 1] = o[nt][1];
    }
}

extern "C" __global__ void __launch_bounds__(32)
    flash_decode_mma_d64(float* part_o, float* part_ml, const real* q, const real* k, const real* v,
                         const int* items, int n_items, int n_heads, int n_kv, float scale) {
    flash_decode_mma<64>(part_o, part_ml, q, k, v, items, n_items, n_heads, n_kv, scale);
}
extern "C" __global__ void __launch_bounds__(32)
    flash_decode_mma_d128(float* part_o, float* part_ml, const real* q, const real* k, const real* v,
                          const int* items, int n_items, int n_heads, int n_kv, float scale) {
    flash_decode_mma<128>(part_o, part_ml, q, k, v, items, n_items, n_heads, n_kv, scale);
}
extern "C" __global__ void __launch_bounds__(32)
    flash_decode_mma_bf16_d64(float* part_o, float* part_ml, const real* q, const fa_b16* k, const fa_b16* v,
                              const int* items, int n_items, int n_heads, int n_kv, float scale) {
    flash_decode_mma<64>(part_o, part_ml, q, k, v, items, n_items, n_heads, n_kv, scale);
}
extern "C" __global__ void __launch_bounds__(32)
    flash_decode_mma_bf16_d128(float* part_o, float* part_ml, const real* q, const fa_b16* k, const fa_b16* v,
                               const int* items, int n_items, int n_heads, int n_kv, float scale) {
    flash_decode_mma<128>(part_o, part_ml, q, k, v, items, n_items, n_heads, n_kv, scale);
}

// With `out16` (non-null) it also writes each output's bf16 rounding: the o projection's
// operand (src/backend/cuda/producer_shadows.rs).
extern "C" __global__ void flash_decode_combine(real* out, unsigned short* out16, float* lse, const float* part_o, const float* part_ml,
                                                const int* items, int n_heads, int d) {
    const long long qrow = items[4 * blockIdx.x];
    const int first = items[4 * blockIdx.x + 1], n = items[4 * blockIdx.x + 2], h = blockIdx.y;
    float mx = neg_inf();
    for (int p = 0; p < n; p++) mx = fmaxf(mx, part_ml[2 * ((long long)(first + p) * n_heads + h)]);
    float L = 0.0f;
    for (int p = 0; p < n; p++) {
        const long long ph = (long long)(first + p) * n_heads + h;
        L += part_ml[2 * ph + 1] * exp2f(part_ml[2 * ph] - mx);
    }
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float acc = 0.0f;
        for (int p = 0; p < n; p++) {
            const long long ph = (long long)(first + p) * n_heads + h;
            acc += part_o[ph * d + c] * exp2f(part_ml[2 * ph] - mx);
        }
        const float y = acc / L;
        out[(qrow * n_heads + h) * d + c] = y;
        if (out16) out16[(qrow * n_heads + h) * d + c] = bf16_bits(y);
    }
    if (threadIdx.x == 0) lse[qrow * n_heads + h] = (mx + log2f(L)) * 0.6931471805599453f;
}
