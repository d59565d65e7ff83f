// Flash attention on Hopper's warpgroup MMA (kernels/wgmma.cuh, sm_90a): the forward, dQ and
// dK/dV kernels with the work items, softmax and arithmetic of flash_fwd, flash_bwd_dq and
// flash_bwd_dkv (kernels/flash_attention.cu), each tile's products issued as wgmma instead of
// mma.sync.
//
// Why: the mma.sync forwards measured 149-186 TFLOP/s on an H100 (2 x 4,096, d128), latency
// bound with two warps a scheduler (docs/perf.md, "Why the flash kernels are slow"), where
// PyTorch's SDPA ran at ~450: a wgmma rate. A wgmma reads its B operand (the K or V tile)
// straight from shared memory for the 4 warps of a warpgroup at once (no ldmatrix, no B
// fragments in registers: 8 x 32 KB of fragment reads a tile and block in flash_fwd), and runs
// asynchronously, so one warpgroup's softmax overlaps the other's products.
//
// Block: 2 warpgroups (8 warps, 256 threads), 128 query rows as flash_fwd (warp w owns rows
// 16w..16w+15: the wgmma accumulator layout gives each warp the rows mma.sync gave it, so the
// softmax and output helpers are flash_fwd's own). K/V tiles of 64 keys, bf16, three buffers
// (fg_smem), in wgmma's no-swizzle layout: core matrix (key / 8, d / 8) at byte ((key / 8) * D / 8 +
// d / 8) * 128, its 8 keys 16 bytes apart. The same tile serves S (K-major B: N = keys,
// K = d; LBO = 128 between d chunks, SBO = 16 D between key groups) and O (V N-major: K = keys,
// N = d; LBO = 16 D, SBO = 128).
//
// Bits: the same products summed in the same order as flash_fwd's mma.sync chains (k-steps of
// 16 in order onto a zeroed S; P V's key steps in order onto O), the same softmax: the
// emulator gives flash_fwd's bits (tested); a GPU's wgmma may round its internal sums
// differently from mma.sync (tested within tolerance there). A warpgroup walks a key tile
// when any of its 64 rows sees it (a wgmma is warpgroup-wide); a warp whose rows see none of
// it adds P = 0 and rescales by 1, as flash_fwd_wide's rows do.
#ifndef SHARED
#define SHARED(T, name, dims) __shared__ T name dims
#endif
#include "common.cuh"
#include "mma.cuh"
#include "wgmma.cuh"

#define FG_THREADS 256 // = the entry points' __launch_bounds__

// Dynamic shared memory: three buffers of a K and a V tile (flash.rs `wgmma_smem` mirrors it):
// tile j's, tile j + 1's in flight, and tile j - 1's V, which its P V reads during tile j's
// softmax.
template <int D>
struct fg_smem {
    static constexpr int tile = FA_ROWS * D * 2;
    static constexpr int walk = 6 * tile;
};

// Starts copying rows [0, 64) of head h of a [rows, heads, D] bf16 tensor from row0 into a
// tile in the core-matrix layout; rows >= nvalid are written as zeros at once. A thread's
// piece is 16 bytes (8 values of one row): pieces p = tid + 256 i take row p % 8 of key group
// p / (8 * D / 8), chunk (p / 8) % (D / 8), so 8 consecutive threads fill one 128-byte core
// matrix (no bank conflict) and a warp reads 64 contiguous bytes of each of 8 rows.
template <int D>
__device__ __forceinline__ void fg_fetch(unsigned char* tile, const fa_b16* src, long long row0, int nvalid, int heads,
                                         int h) {
    constexpr int P = FA_ROWS * D / 8; // pieces a tile
#pragma unroll 1
    for (int p = threadIdx.x; p < P; p += FG_THREADS) {
        const int row = (p / (8 * (D / 8))) * 8 + p % 8, c8 = (p / 8) % (D / 8);
        bf16x8* dst = reinterpret_cast<bf16x8*>(tile + ((row / 8) * (D / 8) + c8) * 128 + (row % 8) * 16);
        if (row < nvalid)
            cp_async_16(dst, src + ((row0 + row) * heads + h) * D + 8 * c8);
        else
            *dst = bf16x8{};
    }
}

template <int D>
__device__ void flash_fwd_wg(real* out, unsigned short* out16, float* lse, const real* q, const fa_b16* k,
                             const fa_b16* v, const int* items, int n_heads, int n_kv, float scale, bool mask_all) {
    DYN_SMEM(unsigned char, smem);
    using S = fg_smem<D>;
    // Buffer b (0..2): K at tile 2b, V at tile 2b + 1 (computed, not indexed).
    auto tk = [&](int b) { return smem + 2 * b * S::tile; };
    auto tv = [&](int b) { return smem + (2 * b + 1) * S::tile; };
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3, wg = warp >> 2;
    const fa_q_item qi = fa_q_item_of(items, n_heads, n_kv);
    const long long qrow0 = qi.qrow0, kv0 = qi.kv0;
    const int h = qi.h, kvh = qi.kvh, nrows = qi.nrows, pos0 = qi.pos0, nkeys = qi.nkeys;
    // Warpgroup-uniform: whether any of its 64 rows exists, the last key any of them sees.
    const bool wg_active = wg * 64 < nrows;
    const int wg_last = pos0 + fa_imin(wg * 64 + 63, nrows - 1);

    fg_fetch<D>(tk(0), k, kv0, fa_imin(FA_ROWS, nkeys), n_kv, kvh);
    fg_fetch<D>(tv(0), v, kv0, fa_imin(FA_ROWS, nkeys), n_kv, kvh);
    cp_async_commit();
    unsigned qf[D / 16][4];
    fa_frag_a_global<D>(qf, q, qrow0 + warp * 16, nrows - warp * 16, n_heads, h);
    cp_async_wait_all();
    wgmma_fence_smem(); // this thread's copies and zero rows, visible to wgmma after the barrier
    __syncthreads();

    const float sl2 = scale * FA_LOG2E;
    float o[D / 8][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) o[nt][i] = 0.0f;
    float m[2] = {neg_inf(), neg_inf()}, l[2] = {0.0f, 0.0f};
    // The previous tile's P (A fragments) and buffer: its O += P V is issued after this tile's
    // S = Q K^T and runs on the tensor cores during this tile's softmax. Before a warpgroup's
    // first tile P is 0 (any buffer: O += 0 leaves O's bits, +0), so every wgmma of the loop
    // sits in one warpgroup-uniform branch with no branch inside: ptxas serializes wgmma
    // issued on paths it cannot prove uniform ("WG.AR in divergent path").
    unsigned pa[4][4] = {};
    int pv = 0;
    auto issue_pv = [&](int b) {
#pragma unroll
        for (int ks = 0; ks < 4; ks++) // keys 16 ks.. : two key groups in
            wgmma_m64k16<D, 1>(o, pa[ks], wg_desc(tv(b) + 2 * ks * 16 * D, 16 * D, 128));
        wgmma_commit();
    };
    for (int j0 = 0, cur = 0; j0 < nkeys; j0 += FA_ROWS, cur = cur == 2 ? 0 : cur + 1) {
        const bool more = j0 + FA_ROWS < nkeys;
        const int nxt = cur == 2 ? 0 : cur + 1;
        if (more) { // tile j0 + 64 in flight during this tile's arithmetic; its buffer's last
                    // reader, the P V of tile j0 - 128, finished before the last barrier
            fg_fetch<D>(tk(nxt), k, kv0 + j0 + FA_ROWS, fa_imin(FA_ROWS, nkeys - j0 - FA_ROWS), n_kv, kvh);
            fg_fetch<D>(tv(nxt), v, kv0 + j0 + FA_ROWS, fa_imin(FA_ROWS, nkeys - j0 - FA_ROWS), n_kv, kvh);
            cp_async_commit();
        }
        if (wg_active && j0 <= wg_last) {
            float s[8][4];
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
#pragma unroll
                for (int i = 0; i < 4; i++) s[nt][i] = 0.0f;
            wg_fence_acc<D / 8>(o);
            wgmma_fence();
#pragma unroll
            for (int kc = 0; kc < D / 16; kc++) // d columns 16 kc.. : two chunks in
                wgmma_m64k16<64, 0>(s, qf[kc], wg_desc(tk(cur) + 2 * kc * 128, 128, 16 * D));
            wgmma_commit();
            issue_pv(pv);
            wgmma_wait<1>(); // groups complete in order: S is done, P V may still run
            wg_fence_acc<8>(s);
            if (fa_masked(j0, pos0 + warp * 16, mask_all)) fa_mask_scores(s, j0, pos0 + warp * 16, nkeys, g, t);
            float corr[2];
            fa_softmax_p(s, m, l, sl2, corr);
            wgmma_wait<0>();
            wg_fence_acc<D / 8>(o);
            fa_rescale<D>(o, corr);
#pragma unroll
            for (int ks = 0; ks < 4; ks++) fa_frag_of_acc(pa[ks], s, ks);
            pv = cur;
        }
        if (more) { // the next tile has landed; the barrier publishes it
            cp_async_wait_all();
            wgmma_fence_smem();
        }
        __syncthreads(); // the next tile is complete, and no warp reads tile j0 - 64's buffer
    }
    // The last walked tile's P V. Its buffer is intact: a warpgroup's last key lies at most one
    // tile before the block's last (the two groups' last rows are 64 apart), so no fetch came
    // after the one into the buffer that followed it. (An inactive warpgroup adds 0 to rows
    // it never writes.)
    wg_fence_acc<D / 8>(o);
    wgmma_fence();
    issue_pv(pv);
    wgmma_wait<0>();
    wg_fence_acc<D / 8>(o);
    if (warp * 16 >= nrows) return;
    fa_write_rows<D>(out, out16, lse, o, m, l, warp * 16, nrows, qrow0, n_heads, h, scale, g, t);
}

// Launched only where the device has wgmma (src/backend/cuda/flash.rs); bf16 K/V, f32 Q.
extern "C" __global__ void __launch_bounds__(256) flash_fwd_wg_bf16_d64(real* out, unsigned short* out16, float* lse,
                                                                        const real* q, const fa_b16* k, const fa_b16* v,
                                                                        const int* items, int n_heads, int n_kv,
                                                                        float scale, int mask_all) {
    flash_fwd_wg<64>(out, out16, lse, q, k, v, items, n_heads, n_kv, scale, mask_all != 0);
}
extern "C" __global__ void __launch_bounds__(256) flash_fwd_wg_bf16_d128(real* out, unsigned short* out16, float* lse,
                                                                         const real* q, const fa_b16* k, const fa_b16* v,
                                                                         const int* items, int n_heads, int n_kv,
                                                                         float scale, int mask_all) {
    flash_fwd_wg<128>(out, out16, lse, q, k, v, items, n_heads, n_kv, scale, mask_all != 0);
}

// ---- backward: dQ ---------------------------------------------------------------------------
// flash_bwd_dq's walk on wgmma: per key tile S = Q K^T and dP = dO V^T (both B operands
// K-major: the tiles' keys are N, d is K), then dS = P (dP - D) scale (fa_dscores, or the masked
// form), then dQ += dS K (K N-major). As in the forward, the previous tile's dQ += dS K is issued
// after this tile's S and dP and runs during this tile's dS (three K/V buffers); dS goes into
// the A registers only after that product's wait (its registers are read until then). Same
// products in the same order as flash_bwd_dq: its bits on the emulator.
template <int D>
__device__ void flash_bwd_dq_wg(real* dq, const fa_b16* dout, const fa_b16* q, const fa_b16* k, const fa_b16* v,
                                const float* lse, const float* dsum, const int* items, int n_heads, int n_kv,
                                float scale, bool mask_all) {
    DYN_SMEM(unsigned char, smem);
    using S = fg_smem<D>;
    auto tk = [&](int b) { return smem + 2 * b * S::tile; };
    auto tv = [&](int b) { return smem + (2 * b + 1) * S::tile; };
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3, wg = warp >> 2;
    const fa_q_item qi = fa_q_item_of(items, n_heads, n_kv);
    const long long qrow0 = qi.qrow0, kv0 = qi.kv0;
    const int h = qi.h, kvh = qi.kvh, nrows = qi.nrows, pos0 = qi.pos0, nkeys = qi.nkeys;
    const bool wg_active = wg * 64 < nrows;
    const int wg_last = pos0 + fa_imin(wg * 64 + 63, nrows - 1);

    fg_fetch<D>(tk(0), k, kv0, fa_imin(FA_ROWS, nkeys), n_kv, kvh);
    fg_fetch<D>(tv(0), v, kv0, fa_imin(FA_ROWS, nkeys), n_kv, kvh);
    cp_async_commit();
    unsigned qf[D / 16][4], df[D / 16][4];
    fa_frag_a_global<D>(qf, q, qrow0 + warp * 16, nrows - warp * 16, n_heads, h);
    fa_frag_a_global<D>(df, dout, qrow0 + warp * 16, nrows - warp * 16, n_heads, h);
    float L2[2], Dd[2];
    fa_dq_rows(L2, Dd, lse, dsum, qrow0, nrows, n_heads, h, warp, g);
    cp_async_wait_all();
    wgmma_fence_smem();
    __syncthreads();

    const float sl2 = scale * FA_LOG2E;
    float acc[D / 8][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[nt][i] = 0.0f;
    // The previous tile's dS (A fragments; 0 before the first) and buffer, as pa / pv in the
    // forward: every wgmma of the loop in one warpgroup-uniform branch.
    unsigned da[4][4] = {};
    int prev = 0;
    auto issue_dq = [&](int b) {
#pragma unroll
        for (int ks = 0; ks < 4; ks++)
            wgmma_m64k16<D, 1>(acc, da[ks], wg_desc(tk(b) + 2 * ks * 16 * D, 16 * D, 128));
        wgmma_commit();
    };
    for (int j0 = 0, cur = 0; j0 < nkeys; j0 += FA_ROWS, cur = cur == 2 ? 0 : cur + 1) {
        const bool more = j0 + FA_ROWS < nkeys;
        const int nxt = cur == 2 ? 0 : cur + 1;
        if (more) {
            fg_fetch<D>(tk(nxt), k, kv0 + j0 + FA_ROWS, fa_imin(FA_ROWS, nkeys - j0 - FA_ROWS), n_kv, kvh);
            fg_fetch<D>(tv(nxt), v, kv0 + j0 + FA_ROWS, fa_imin(FA_ROWS, nkeys - j0 - FA_ROWS), n_kv, kvh);
            cp_async_commit();
        }
        if (wg_active && j0 <= wg_last) {
            float s[8][4], dp[8][4];
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
#pragma unroll
                for (int i = 0; i < 4; i++) s[nt][i] = dp[nt][i] = 0.0f;
            wg_fence_acc<D / 8>(acc);
            wgmma_fence();
#pragma unroll
            for (int kc = 0; kc < D / 16; kc++)
                wgmma_m64k16<64, 0>(s, qf[kc], wg_desc(tk(cur) + 2 * kc * 128, 128, 16 * D));
#pragma unroll
            for (int kc = 0; kc < D / 16; kc++)
                wgmma_m64k16<64, 0>(dp, df[kc], wg_desc(tv(cur) + 2 * kc * 128, 128, 16 * D));
            wgmma_commit();
            issue_dq(prev);
            wgmma_wait<1>(); // S and dP are done; the previous dQ += dS K may still run
            wg_fence_acc<8>(s);
            wg_fence_acc<8>(dp);
            fa_dq_dscores(s, dp, L2, Dd, sl2, scale, j0, pos0 + warp * 16, nkeys, g, t,
                          fa_masked(j0, pos0 + warp * 16, mask_all));
            wgmma_wait<0>();
            wg_fence_acc<D / 8>(acc);
#pragma unroll
            for (int ks = 0; ks < 4; ks++) fa_frag_of_acc(da[ks], s, ks);
            prev = cur;
        }
        if (more) {
            cp_async_wait_all();
            wgmma_fence_smem();
        }
        __syncthreads();
    }
    // The last walked tile's dQ += dS K (its buffer intact, as in the forward).
    wg_fence_acc<D / 8>(acc);
    wgmma_fence();
    issue_dq(prev);
    wgmma_wait<0>();
    wg_fence_acc<D / 8>(acc);
    if (warp * 16 >= nrows) return;
    fa_store_acc_rows<D>(dq, acc, qrow0, warp * 16, nrows, n_heads, h, g, t);
}

extern "C" __global__ void __launch_bounds__(256) flash_bwd_dq_wg_bf16_d64(real* dq, const fa_b16* dout,
                                                                           const fa_b16* q, const fa_b16* k,
                                                                           const fa_b16* v, const float* lse,
                                                                           const float* dsum, const int* items,
                                                                           int n_heads, int n_kv, float scale,
                                                                           int mask_all) {
    flash_bwd_dq_wg<64>(dq, dout, q, k, v, lse, dsum, items, n_heads, n_kv, scale, mask_all != 0);
}
extern "C" __global__ void __launch_bounds__(256) flash_bwd_dq_wg_bf16_d128(real* dq, const fa_b16* dout,
                                                                            const fa_b16* q, const fa_b16* k,
                                                                            const fa_b16* v, const float* lse,
                                                                            const float* dsum, const int* items,
                                                                            int n_heads, int n_kv, float scale,
                                                                            int mask_all) {
    flash_bwd_dq_wg<128>(dq, dout, q, k, v, lse, dsum, items, n_heads, n_kv, scale, mask_all != 0);
}

// ---- backward: dK and dV --------------------------------------------------------------------
// flash_bwd_dkv's walk on wgmma: the block's 128 key rows of K and V wait in shared memory in
// the core layout and are the A operands of S^T = K Q^T and dP^T = V dO^T (the `_ss` form: no
// registers for them, where the mma.sync kernel at d128 needed 192 a thread with dK and dV);
// the Q and dO tiles are B, K-major for those two and N-major for dV += P^T dO and dK +=
// dS^T Q, whose A operands P^T and dS^T come from the accumulators. No product waits across
// the softmax here (dK and dV hold 128 registers at d128: with the previous tile's P^T and dS^T
// kept for an overlap, ptxas needed 255 and spilled); the other warpgroup's products fill the
// tensor pipe during one's softmax. A warpgroup walks the query tiles that some query of which
// sees one of its keys (its rows that see none of such a tile add P = 0). Two Q/dO buffers. Same products in the same order as flash_bwd_dkv: its bits on the emulator.
template <int D>
__device__ void flash_bwd_dkv_wg(real* dk, real* dv, const fa_b16* dout, const fa_b16* q, const fa_b16* k,
                                 const fa_b16* v, const float* lse, const float* dsum, const int* items, int n_heads,
                                 int n_kv, float scale, long long part_stride, int heads_per_block, bool mask_all) {
    DYN_SMEM(unsigned char, smem);
    using S = fg_smem<D>;
    // Buffer b (0, 1): Q at tile 2b, dO at tile 2b + 1; then the block's K and V rows (two tiles
    // each), then lse (log2 units) and D of each buffer's queries.
    auto tq = [&](int b) { return smem + 2 * b * S::tile; };
    auto to = [&](int b) { return smem + (2 * b + 1) * S::tile; };
    unsigned char* const kt = smem + 4 * S::tile;
    unsigned char* const vt = kt + 2 * S::tile;
    float* const sL = reinterpret_cast<float*>(vt + 2 * S::tile); // [2][64]
    float* const sD = sL + 2 * FA_ROWS;                            // [2][64]
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3, wg = warp >> 2;
    const int group = n_heads / n_kv;
    const fa_kv_item w = fa_kv_item_of(items, n_heads, n_kv, heads_per_block);
    const long long kvrow0 = w.kvrow0, q_start = w.q_start;
    const int nk = w.nk, j0 = w.j0, q_len = w.q_len, qpos0 = w.qpos0, kvh = w.kvh, g_lo = w.g_lo, g_hi = w.g_hi;
    dk += w.part * part_stride;
    dv += w.part * part_stride;
    const bool wg_active = wg * 64 < nk;
    const int wfirst = j0 + warp * 16;          // first key of the warp
    const int i_first = fa_imax(0, j0 - qpos0); // first query that sees key j0 (< q_len)

    // Query tile i0 of head gi of the group into buffer b: Q and dO rows, lse and D.
    auto issue = [&](int gi, int i0, int b) {
        const int h = kvh * group + gi, nq = fa_imin(FA_ROWS, q_len - i0);
        fg_fetch<D>(tq(b), q, q_start + i0, nq, n_heads, h);
        fg_fetch<D>(to(b), dout, q_start + i0, nq, n_heads, h);
        fa_fetch_lse_d(sL + b * FA_ROWS, sD + b * FA_ROWS, lse, dsum, q_start + i0, nq, n_heads, h);
        cp_async_commit();
    };
    // After the wait: the thread that copied an lse turns it into log2 units; this thread's
    // tile pieces published to wgmma (then the barrier).
    auto land = [&](int b) {
        cp_async_wait_all();
        if (tid < FA_ROWS) sL[b * FA_ROWS + tid] *= FA_LOG2E; // +inf stays +inf
        wgmma_fence_smem();
    };

    issue(g_lo, i_first, 0);
    fg_fetch<D>(kt, k, kvrow0, fa_imin(FA_ROWS, nk), n_kv, kvh);
    fg_fetch<D>(kt + S::tile, k, kvrow0 + FA_ROWS, nk - FA_ROWS, n_kv, kvh);
    fg_fetch<D>(vt, v, kvrow0, fa_imin(FA_ROWS, nk), n_kv, kvh);
    fg_fetch<D>(vt + S::tile, v, kvrow0 + FA_ROWS, nk - FA_ROWS, n_kv, kvh);
    cp_async_commit();
    land(0);
    __syncthreads();

    const float sl2 = scale * FA_LOG2E;
    float gk[D / 8][4], gv[D / 8][4];
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) gk[nt][i] = gv[nt][i] = 0.0f;
    // This warpgroup's 64 key rows of K and V (A, K-major: rows 64 wg.. are 8 wg row groups in).
    unsigned char* const ka = kt + wg * 8 * 16 * D;
    unsigned char* const va = vt + wg * 8 * 16 * D;
    // The walk: query tiles i_first, + 64, ... of each head of the slice, heads in order.
    const int per_head = (q_len - i_first + FA_ROWS - 1) / FA_ROWS, tiles = (g_hi - g_lo) * per_head;
    for (int n = 0, cur = 0; n < tiles; n++, cur ^= 1) {
        const int i0 = i_first + (n % per_head) * FA_ROWS;
        const bool more = n + 1 < tiles;
        if (more) issue(g_lo + (n + 1) / per_head, i_first + ((n + 1) % per_head) * FA_ROWS, cur ^ 1);
        const int nq = fa_imin(FA_ROWS, q_len - i0);
        if (wg_active && j0 + wg * 64 <= qpos0 + i0 + nq - 1) { // some query sees the group's keys
            const float* L = sL + cur * FA_ROWS;
            const float* Dv = sD + cur * FA_ROWS;
            float s[8][4], dp[8][4];
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
#pragma unroll
                for (int i = 0; i < 4; i++) s[nt][i] = dp[nt][i] = 0.0f;
            // Every accumulator written before the fence (else ptxas may copy the zeros in
            // after it and serialize the wgmma to protect them).
            wg_fence_acc<8>(s);
            wg_fence_acc<8>(dp);
            wgmma_fence();
#pragma unroll
            for (int kc = 0; kc < D / 16; kc++) // S^T = K Q^T: keys x queries
                wgmma_m64k16_ss<64, 0>(s, wg_desc(ka + 2 * kc * 128, 128, 16 * D),
                                       wg_desc(tq(cur) + 2 * kc * 128, 128, 16 * D));
#pragma unroll
            for (int kc = 0; kc < D / 16; kc++) // dP^T = V dO^T
                wgmma_m64k16_ss<64, 0>(dp, wg_desc(va + 2 * kc * 128, 128, 16 * D),
                                       wg_desc(to(cur) + 2 * kc * 128, 128, 16 * D));
            wgmma_commit();
            wgmma_wait<0>();
            wg_fence_acc<8>(s);
            wg_fence_acc<8>(dp);
            fa_dkv_scores(s, dp, L, Dv, sl2, scale, j0, qpos0 + i0, nq, nk, warp, g, t,
                          mask_all || nq < FA_ROWS || wfirst + 15 > qpos0 + i0);
            unsigned pa[4][4], da[4][4]; // P^T and dS^T as A fragments
#pragma unroll
            for (int ks = 0; ks < 4; ks++) {
                fa_frag_of_acc(pa[ks], s, ks);
                fa_frag_of_acc(da[ks], dp, ks);
            }
            wg_fence_acc<D / 8>(gk);
            wg_fence_acc<D / 8>(gv);
            wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < 4; ks++) { // queries 16 ks.. : two row groups in
                wgmma_m64k16<D, 1>(gv, pa[ks], wg_desc(to(cur) + 2 * ks * 16 * D, 16 * D, 128));
                wgmma_m64k16<D, 1>(gk, da[ks], wg_desc(tq(cur) + 2 * ks * 16 * D, 16 * D, 128));
            }
            wgmma_commit();
            wgmma_wait<0>();
            wg_fence_acc<D / 8>(gk);
            wg_fence_acc<D / 8>(gv);
        }
        if (more) land(cur ^ 1);
        __syncthreads(); // the next tile is complete, and this one is no longer read
    }
    if (warp * 16 >= nk) return;
    fa_store_acc_rows<D>(dk, gk, kvrow0, warp * 16, nk, n_kv, kvh, g, t);
    fa_store_acc_rows<D>(dv, gv, kvrow0, warp * 16, nk, n_kv, kvh, g, t);
}

extern "C" __global__ void __launch_bounds__(256) flash_bwd_dkv_wg_bf16_d64(real* dk, real* dv, const fa_b16* dout,
                                                                            const fa_b16* q, const fa_b16* k,
                                                                            const fa_b16* v, const float* lse,
                                                                            const float* dsum, const int* items,
                                                                            int n_heads, int n_kv, float scale,
                                                                            long long part_stride,
                                                                            int heads_per_block, int mask_all) {
    flash_bwd_dkv_wg<64>(dk, dv, dout, q, k, v, lse, dsum, items, n_heads, n_kv, scale, part_stride,
                         heads_per_block, mask_all != 0);
}
extern "C" __global__ void __launch_bounds__(256) flash_bwd_dkv_wg_bf16_d128(real* dk, real* dv, const fa_b16* dout,
                                                                             const fa_b16* q, const fa_b16* k,
                                                                             const fa_b16* v, const float* lse,
                                                                             const float* dsum, const int* items,
                                                                             int n_heads, int n_kv, float scale,
                                                                             long long part_stride,
                                                                             int heads_per_block, int mask_all) {
    flash_bwd_dkv_wg<128>(dk, dv, dout, q, k, v, lse, dsum, items, n_heads, n_kv, scale, part_stride,
                          heads_per_block, mask_all != 0);
}
