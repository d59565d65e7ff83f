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
