// Kernels with planted bugs, compiled only into the emulator (build.rs), so that
// tests/suite/emu_strict.rs can prove the emulator reports each kind of bug a GPU would turn into
// silent garbage. Every kernel takes `fixed`: 1 runs the correct variant, which must pass under
// every schedule (so a report is about the bug, not about the emulator).
#include "common.cuh"

// One thread writes a shared value, the others read it. The bug: no barrier between.
// writer = 0 is the "writer below the readers" case (hidden by forward order), writer =
// blockDim.x - 1 the "writer above" case (hidden by reverse order).
extern "C" __global__ void __launch_bounds__(1024) planted_missing_barrier(float* out, const float* in, int writer, int fixed) {
    SHARED(float, v, [1]);
    if ((int)threadIdx.x == writer) v[0] = in[0];
    if (fixed) __syncthreads();
    out[threadIdx.x] = v[0] + (float)threadIdx.x;
}

// A shared buffer reused for a second phase. The bug: no barrier between the last read of
// phase one and the first write of phase two.
extern "C" __global__ void planted_reuse_without_barrier(float* out, const float* in, int fixed) {
    SHARED(float, buf, [1024]);
    const unsigned t = threadIdx.x, n = blockDim.x;
    buf[t] = in[t];
    __syncthreads();
    const float a = buf[(t + 1) % n];
    if (fixed) __syncthreads();
    buf[t] = 2.0f * a;
    __syncthreads();
    out[t] = buf[(t + 1) % n] + a;
}

// Lanes in `mask` read lane `src` of their warp. Poison when src does not exist in the block
// (a partial last warp) or is not in the mask.
extern "C" __global__ void planted_shuffle(float* out, const float* in, unsigned mask, int src) {
    const unsigned t = threadIdx.x, lane = t & 31;
    if (mask >> lane & 1) out[t] = __shfl_sync(mask, in[t], src);
}

// Lanes of one warp at different shuffles (op = 0) or at one shuffle with different widths
// (op = 1). fixed = 1: every lane runs the same shuffle.
extern "C" __global__ void planted_divergent_shuffle(float* out, const float* in, int op, int fixed) {
    const unsigned t = threadIdx.x;
    float v = in[t];
    if (fixed || (t & 31) < 16) {
        v = __shfl_xor_sync(FULL_MASK, v, 1, 32);
    } else if (op == 0) {
        v = __shfl_down_sync(FULL_MASK, v, 1, 32);
    } else {
        v = __shfl_xor_sync(FULL_MASK, v, 1, 16);
    }
    out[t] = v;
}

// Reads shared memory that only some threads wrote (static, or dynamic when dynamic = 1).
extern "C" __global__ void planted_unwritten_shared(float* out, const float* in, int dynamic, int fixed) {
    SHARED(float, st, [64]);
    DYN_SMEM(float, dy);
    float* s = dynamic ? dy : st;
    const unsigned t = threadIdx.x; // 64 threads
    if (fixed || t < 32) s[t] = in[t];
    __syncthreads();
    out[t] = s[63 - t];
}

// Static shared memory above the 48 KB an sm_90 kernel may declare.
extern "C" __global__ void planted_big_static_shared(float* out) {
    SHARED(float, big, [13 * 1024]);
    big[threadIdx.x] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = big[threadIdx.x];
}

// A kernel that promises at most 128 threads.
extern "C" __global__ void __launch_bounds__(128) planted_bounded(float* out) {
    out[threadIdx.x] = 1.0f;
}

// Warp 0 fills shared memory for warp 1. The bug: __syncwarp where __syncthreads is needed.
// Forward, reverse and random orders all let warp 0 write before warp 1's read (both warps
// meet their __syncwarp in the same round); only a starved warp 0 shows it.
extern "C" __global__ void planted_syncwarp_for_syncthreads(float* out, const float* in, int fixed) {
    SHARED(float, s, [32]);
    const unsigned t = threadIdx.x, lane = t & 31; // 64 threads
    if (t < 32) s[lane] = in[lane];
    if (fixed) __syncthreads(); else __syncwarp();
    if (t >= 32) out[lane] = s[lane];
}

// A shuffle whose mask names a lane that has already returned (fixed = 1: no lane returns).
extern "C" __global__ void planted_exited_lane(float* out, const float* in, int fixed) {
    const unsigned t = threadIdx.x;
    if (!fixed && t == 31) return;
    out[t] = __shfl_xor_sync(FULL_MASK, in[t], 1);
}

// __syncthreads inside a branch that only some threads take (fixed = 1: all take it).
extern "C" __global__ void planted_divergent_syncthreads(float* out, int fixed) {
    const unsigned t = threadIdx.x;
    if (fixed || t < 32) __syncthreads();
    out[t] = 1.0f;
}

// A kernel that updates buffers it reaches through a device table (BufSpan rows, as
// fill_many_f32 and adamw_many_f32 do), in place: x[i] += something. The emulator must run
// each schedule from the same contents of those buffers and compare them (they are not
// arguments of the launch). The bug: element i adds element i + 1, which another thread of
// the block updates, with nothing ordering the read and the write (fixed = 1: each element
// adds a value of its own, 1 + (i % 7) / 2).
extern "C" __global__ void planted_table_accumulate(const BufSpan* table, int count, int fixed) {
    const BufSpan t = span_of_block(table, count);
    const long long stride = t.blocks * blockDim.x;
    for (long long i = (blockIdx.x - t.first) * blockDim.x + threadIdx.x; i < t.n; i += stride) {
        const float add = fixed ? 1.0f + 0.5f * (float)(i % 7) : (i + 1 < t.n ? t.x[i + 1] : 1.0f);
        t.x[i] += add;
    }
}

// cp.async double buffering as the flash kernels use it. Each thread copies its own 16 bytes
// of `in` (group A) and then of `in + 4 * blockDim.x` (group B) into shared memory, commits each
// group, and reads its copies back (no other thread reads them: no barrier is involved).
// bug = 0: correct (wait_group 1 before reading A, wait_group 0 before reading B);
// bug = 1: A read before any wait; bug = 2: B read after wait_group 1, which leaves B pending;
// bug = 3: B never committed (A is then the newest committed group, which wait_group 1 leaves
// pending, and wait_group 0 does not wait for uncommitted copies: both reads see poison).
#include "mma.cuh"
extern "C" __global__ void planted_cp_async_wait(float* out, const float* in, int bug) {
    DYN_SMEM(float, s);
    const unsigned t = threadIdx.x, n = blockDim.x;
    cp_async_16(s + 4 * t, in + 4 * t);
    cp_async_commit();
    cp_async_16(s + 4 * (n + t), in + 4 * (n + t));
    if (bug != 3) cp_async_commit();
    if (bug != 1) cp_async_wait<1>();
    for (int i = 0; i < 4; i++) out[4 * t + i] = s[4 * t + i];
    if (bug != 2) cp_async_wait<0>();
    for (int i = 0; i < 4; i++) out[4 * (n + t) + i] = s[4 * (n + t) + i];
}

// wgmma's asynchrony (kernels/emu/wgmma.h): one warpgroup computes D (64 x 64) = A B, A = 1 in
// every element (registers), B (16 x 64, K-major, in dynamic shared memory) from `in`, so each
// output is the column sum of B. bug = 0: correct (commit, wait, then read); 1: accumulators
// read before the wait (NaN); 2: B overwritten with zeros between the issue and the wait (the
// product of what is in shared memory at the wait: zeros); 3: never committed (wait_group 0
// leaves the operation pending: NaN); 4: A's registers rewritten before the wait (an error).
#include "wgmma.cuh"
extern "C" __global__ void planted_wgmma_async(float* out, const float* in, int bug) {
    DYN_SMEM(unsigned char, s);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    for (int e = tid; e < 16 * 64; e += 128) { // B[k][n]: core (n / 8, k / 8), LBO 128, SBO 256
        const int k = e / 64, n = e % 64;
        const unsigned short v = bf16_bits(in[e]);
        memcpy(s + (n / 8) * 256 + (k / 8) * 128 + (n % 8) * 16 + (k % 8) * 2, &v, 2);
    }
    __syncthreads();
    const unsigned one = pack_bf16x2(1.0f, 1.0f);
    unsigned a[4] = {one, one, one, one};
    float d[8][4] = {};
    wgmma_fence();
    wgmma_m64n64k16<0>(d, a, wg_desc(s, 128, 256));
    if (bug != 3) wgmma_commit();
    if (bug == 4) a[2] = 0u;
    if (bug == 2) {
        __syncthreads();
        for (int e = tid; e < 16 * 64; e += 128) memset(s + 2 * e, 0, 2);
        __syncthreads();
    }
    if (bug != 1) wgmma_wait<0>();
    for (int j = 0; j < 8; j++)
        for (int i = 0; i < 4; i++) out[(16 * warp + g + 8 * (i >> 1)) * 64 + 8 * j + 2 * t + (i & 1)] = d[j][i];
    if (bug == 1) wgmma_wait<0>();
}

// A cp.async over a buffer another thread still reads: each thread reads its own 16-byte slot
// (landed and published) and issues a copy of new data into its lower neighbour's slot. The
// bug: no barrier between the neighbour's read and the copy (the GPU may land the copy at once;
// the emulator lands it at the issue under the reverse schedule, at the wait under the others).
// out: each thread's read, which must be the first data.
extern "C" __global__ void planted_cp_async_over_a_read(float* out, const float* in, int fixed) {
    DYN_SMEM(float, s);
    const unsigned t = threadIdx.x, n = blockDim.x;
    cp_async_16(s + 4 * t, in + 4 * t);
    cp_async_wait_all();
    __syncthreads();
    float mine[4];
    for (int i = 0; i < 4; i++) mine[i] = s[4 * t + i];
    if (fixed) __syncthreads();
    cp_async_16(s + 4 * ((t + n - 1) % n), in + 4 * (n + t));
    cp_async_wait_all();
    for (int i = 0; i < 4; i++) out[4 * t + i] = mine[i];
}

// ldmatrix of rows that other lanes of the warp wrote: lane t writes row (t + 1) % 8 of an 8 x 8
// bf16 tile (`in`: 64 bf16-exact floats), then the warp loads it with ldmatrix_x1 (lanes 0-7
// give the row addresses). The bug: no __syncwarp between the writes and the ldmatrix. After
// it, each of lanes 0-7 overwrites the row whose address it gave, which is correct code (the
// warp-wide load is done for every lane once the instruction is), so the fixed kernel must
// give the tile under every schedule. out: each lane's two bf16 of the fragment, as floats.
extern "C" __global__ void planted_ldmatrix_rows(float* out, const float* in, int fixed) {
    SHARED(unsigned short, tile, [64]);
    const unsigned t = threadIdx.x; // one warp
    if (t < 8) {
        const unsigned r = (t + 1) % 8;
        for (int c = 0; c < 8; c++) tile[8 * r + c] = (unsigned short)(__float_as_uint(in[8 * r + c]) >> 16);
    }
    if (fixed) __syncwarp();
    unsigned frag[1];
    ldmatrix_x1(frag, tile + 8 * (t % 8));
    if (t < 8)
        for (int c = 0; c < 8; c++) tile[8 * t + c] = 0;
    out[2 * t] = __uint_as_float(frag[0] << 16);
    out[2 * t + 1] = __uint_as_float(frag[0] & 0xffff0000u);
}
