// Rounding through 16-bit floats (round-to-nearest-even), the building block of bf16/f16
// storage. Also checks that the emulator's conversions match the device's.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include "common.cuh"

extern "C" __global__ void round_bf16_f32(float* out, const float* x, long long n) {
    GRID_STRIDE(i, n) out[i] = __bfloat162float(__float2bfloat16(x[i]));
}

extern "C" __global__ void round_f16_f32(float* out, const float* x, long long n) {
    GRID_STRIDE(i, n) out[i] = __half2float(__float2half(x[i]));
}

// f32 -> bf16 bits (round to nearest even): operands of the bf16 tensor-core GEMM (cuBLAS
// GemmEx) while activations are stored in f32.
//
// Version 1, the baseline: one value a thread, 4-byte loads and 2-byte stores. A warp's
// store is 64 bytes, so every 128-byte line is written in two halves; on the H100 1,152
// launches took 20.8 ms of a 120 ms step (docs/perf.md).
#include "mma.cuh"
extern "C" __global__ void f32_to_bf16(unsigned short* out, const float* x, long long n) {
    GRID_STRIDE(i, n) out[i] = bf16_bits(x[i]);
}

// f32_to_bf16 into out[at ...]: one matrix's rows of a stack of several (`Backend::stack_rows`).
extern "C" __global__ void f32_to_bf16_at(unsigned short* out, long long at, const float* x, long long n) {
    GRID_STRIDE(i, n) out[at + i] = bf16_bits(x[i]);
}

// Version 2, what the GEMMs use (src/backend/cuda/device.rs `launch_f32_to_bf16`): eight
// values a thread, two 16-byte loads and one 16-byte store (llm.c's x128 idea), so a warp
// moves 1 KB in and 512 B out per instruction pair and the grid needs an eighth of the
// threads. Both pointers must be 16-byte aligned: the caching allocator hands out whole
// blocks at the device allocation's alignment (256 bytes on the GPU and on the emulator);
// a misaligned pointer traps rather than faulting somewhere less clear. The last n % 8
// values are converted one each by the grid's first threads.
struct __align__(16) cvt_f4 {
    float x, y, z, w;
};
struct __align__(16) cvt_u4 {
    unsigned x, y, z, w;
};
extern "C" __global__ void f32_to_bf16_x8(unsigned short* out, const float* x, long long n) {
    DEVICE_CHECK((((unsigned long long)out | (unsigned long long)x) & 15) == 0);
    const long long groups = n / 8;
    const cvt_f4* x4 = reinterpret_cast<const cvt_f4*>(x);
    cvt_u4* o8 = reinterpret_cast<cvt_u4*>(out);
    GRID_STRIDE(g, groups) {
        const cvt_f4 a = x4[2 * g], b = x4[2 * g + 1];
        cvt_u4 r;
        r.x = pack_bf16x2(a.x, a.y);
        r.y = pack_bf16x2(a.z, a.w);
        r.z = pack_bf16x2(b.x, b.y);
        r.w = pack_bf16x2(b.z, b.w);
        o8[g] = r;
    }
    const long long tail = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (tail < n - 8 * groups) out[8 * groups + tail] = bf16_bits(x[8 * groups + tail]);
}
