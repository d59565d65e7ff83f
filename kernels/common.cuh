// Shared device helpers: element type, warp and block reductions.
#pragma once

// Storage type of activations. f32 for now; bf16 storage is a later change of this typedef
// plus load/store helpers.
typedef float real;

#ifndef CUDA_EMU
// Dynamic shared memory, spelled as a macro so the emulator can provide its own.
#define DYN_SMEM(T, name) \
    extern __shared__ __align__(16) unsigned char dyn_smem_raw_[]; \
    T* name = reinterpret_cast<T*>(dyn_smem_raw_)
#endif

// Shared arrays: SHARED(float, red, [32]); SHARED(float, tile, [64][65]);
// Declare every static shared array with it (build.rs rejects a bare __shared__ in
// kernels/*.cu for the emulator build): on the GPU it is `__shared__ T name dims`; the emulator
// (kernels/emu/cuda_emu.h defines it first) poisons the array at the start of every block, so
// a read before the write shows up as NaN.
#ifndef SHARED
#define SHARED(T, name, dims) __shared__ T name dims
#endif

// A device-side check of an input the kernel trusts (an id, an index): on the GPU a failed
// check traps (the launch fails and the launcher reports the kernel by name); the emulator
// reports the condition, file and line.
#ifndef DEVICE_CHECK
#define DEVICE_CHECK(cond) \
    do { \
        if (!(cond)) __trap(); \
    } while (0)
#endif

#define FULL_MASK 0xffffffffu

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Block-wide reductions over a 1-D block whose size is a multiple of 32 (<= 1024). Every
// thread must call them and every thread gets the result. `scratch` is 32 elements of shared
// memory. The tree is fixed by the block size alone, so results are deterministic.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); // scratch may still be read by a previous reduction
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nw ? scratch[lane] : 0.0f;
    return warp_sum(v); // every warp folds the partials itself: no broadcast barrier needed
}
__device__ __forceinline__ double block_sum_d(double v, double* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nw ? scratch[lane] : 0.0;
    return warp_sum_d(v);
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nw ? scratch[lane] : neg_inf();
    return warp_max(v);
}

// Grid-stride loop over [0, n).
#define GRID_STRIDE(i, n) \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

// One buffer of a multi-buffer launch (a device table of them, one launch for a list of
// buffers instead of one launch each): its values, their count, the first block of the grid
// that works on it and how many blocks do. A block finds its buffer with `span_of_block`;
// the host lays the table out (src/backend/cuda/multi.rs) with `first` increasing and
// `blocks > 0` for every entry, the grid being the sum of the entries' blocks.
struct BufSpan {
    float* x;
    long long n;
    long long first;
    long long blocks;
};

// The entry of `table` (of `count`) whose blocks include this block: the last with
// `first <= blockIdx.x` (binary search; every thread gets the same answer). Any row type with
// `first` (BufSpan; AdamwSpan in elementwise.cu carries more pointers a row).
template <class Span>
__device__ __forceinline__ const Span& span_of_block(const Span* table, int count) {
    int lo = 0, hi = count - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (table[mid].first <= (long long)blockIdx.x) lo = mid;
        else hi = mid - 1;
    }
    return table[lo];
}
