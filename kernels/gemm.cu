// Fallback f32 GEMM for when cuBLAS cannot be loaded: C[m,n] = A[m,k] B[k,n] + beta C, with
// A and B addressed through (row, column) strides so transposed operands need no copy.
// 32x32 output tile per block of 32x8 threads (4 outputs each), K in steps of 32 through
// shared memory.
#include "common.cuh"

extern "C" __global__ void gemm_f32(float* C, const float* A, const float* B, int M, int N, int K,
                                    long long a_rs, long long a_cs, long long b_rs, long long b_cs, float beta) {
    SHARED(float, As, [32][33]);
    SHARED(float, Bs, [32][33]);
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int row0 = blockIdx.y * 32, col0 = blockIdx.x * 32;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int k0 = 0; k0 < K; k0 += 32) {
        for (int r = ty; r < 32; r += 8) {
            const int ar = row0 + r, ak = k0 + tx;
            As[r][tx] = (ar < M && ak < K) ? A[ar * a_rs + ak * a_cs] : 0.0f;
            const int bk = k0 + r, bc = col0 + tx;
            Bs[r][tx] = (bk < K && bc < N) ? B[bk * b_rs + bc * b_cs] : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < 32; kk++) {
            const float b = Bs[kk][tx];
            for (int i = 0; i < 4; i++) acc[i] += As[ty + 8 * i][kk] * b;
        }
        __syncthreads();
    }
    for (int i = 0; i < 4; i++) {
        const int r = row0 + ty + 8 * i, c = col0 + tx;
        if (r < M && c < N) {
            const long long o = (long long)r * N + c;
            C[o] = beta == 0.0f ? acc[i] : acc[i] + beta * C[o]; // beta 0 ignores C (NaN included)
        }
    }
}
