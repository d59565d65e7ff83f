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
#include "mma.cuh"
extern "C" __global__ void f32_to_bf16(unsigned short* out, const float* x, long long n) {
    GRID_STRIDE(i, n) out[i] = bf16_bits(x[i]);
}
