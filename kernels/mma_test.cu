// Test kernel for kernels/mma.cuh: C = A B + C through bf16 tensor-core fragments, one warp
// per 16x8 output tile, with the fragments built five different ways (`mode`):
//   0: straight from global memory by the PTX ISA's documented fragment layout (checks mma)
//   1: A by ldmatrix.x4, B by ldmatrix.x2 from B^T stored [n][k]
//   2: A by two ldmatrix.x2, B by ldmatrix.x2.trans from B stored [k][n]
//   3: A by four ldmatrix.x1, B by two ldmatrix.x1.trans
//   4: A by ldmatrix.x4.trans from A^T stored [k][m], B by ldmatrix.x4 (two k-steps at once)
// A [M,K], B [K,N], C [M,N] row-major f32; inputs are rounded to bf16 on load. Any M, N, K
// (edges zero-padded). Tests compare against a CPU matmul of the rounded inputs.
#include "common.cuh"
#include "mma.cuh"

__device__ __forceinline__ float mt_at(const float* x, int r, int c, int R, int C) {
    return (r < R && c < C) ? x[(long long)r * C + c] : 0.0f;
}
__device__ __forceinline__ unsigned short* mt_b16(bf16x8* row, int col) { return row[col >> 3].h + (col & 7); }

extern "C" __global__ void mma_test_bf16(float* C, const float* A, const float* B, int M, int N, int K, int mode) {
    // Tiles for two k-steps (32 wide) so mode 4 can fetch both B halves with one x4.
    SHARED(bf16x8, sA, [16][5]);   // A[m][k], k < 32, padded row
    SHARED(bf16x8, sAt, [32][3]);  // A^T[k][m]
    SHARED(bf16x8, sB, [32][2]);   // B[k][n]
    SHARED(bf16x8, sBt, [8][5]);   // B^T[n][k]
    const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    const int m0 = blockIdx.y * 16, n0 = blockIdx.x * 8;
    float d[4];
    for (int i = 0; i < 4; i++) {
        const int r = m0 + g + 8 * (i >> 1), c = n0 + 2 * t + (i & 1);
        d[i] = mt_at(C, r, c, M, N);
    }
    for (int k0 = 0; k0 < K; k0 += 32) {
        __syncwarp();
        for (int e = lane; e < 16 * 32; e += 32) {
            const int r = e / 32, c = e % 32;
            const unsigned short v = bf16_bits(mt_at(A, m0 + r, k0 + c, M, K));
            *mt_b16(sA[r], c) = v;
            *mt_b16(sAt[c], r) = v;
        }
        for (int e = lane; e < 32 * 8; e += 32) {
            const int r = e / 8, c = e % 8;
            const unsigned short v = bf16_bits(mt_at(B, k0 + r, n0 + c, K, N));
            *mt_b16(sB[r], c) = v;
            *mt_b16(sBt[c], r) = v;
        }
        __syncwarp();
        unsigned bq[4];
        if (mode == 4) ldmatrix_x4(bq, mt_b16(sBt[lane & 7], 8 * (lane >> 3)));
        for (int ks = 0; ks < 2; ks++) {
            const int kk = 16 * ks, k = k0 + kk;
            unsigned a[4], b[2];
            if (mode == 0) {
                for (int r = 0; r < 4; r++) {
                    const int row = m0 + g + 8 * (r & 1), col = k + 2 * t + 8 * (r >> 1);
                    a[r] = pack_bf16x2(mt_at(A, row, col, M, K), mt_at(A, row, col + 1, M, K));
                }
                for (int r = 0; r < 2; r++) {
                    const int kr = k + 2 * t + 8 * r, col = n0 + g;
                    b[r] = pack_bf16x2(mt_at(B, kr, col, K, N), mt_at(B, kr + 1, col, K, N));
                }
            } else if (mode == 1) {
                // matrix j = lane / 8: rows 8*(j&1).., cols kk + 8*(j>>1)
                ldmatrix_x4(a, mt_b16(sA[(lane & 7) + 8 * ((lane >> 3) & 1)], kk + 8 * (lane >> 4)));
                ldmatrix_x2(b, mt_b16(sBt[lane & 7], kk + 8 * ((lane >> 3) & 1)));
            } else if (mode == 2) {
                ldmatrix_x2(a, mt_b16(sA[(lane & 7) + 8 * ((lane >> 3) & 1)], kk));
                ldmatrix_x2(a + 2, mt_b16(sA[(lane & 7) + 8 * ((lane >> 3) & 1)], kk + 8));
                ldmatrix_x2_trans(b, mt_b16(sB[kk + (lane & 15)], 0));
            } else if (mode == 3) {
                for (int r = 0; r < 4; r++) ldmatrix_x1(a + r, mt_b16(sA[(lane & 7) + 8 * (r & 1)], kk + 8 * (r >> 1)));
                for (int r = 0; r < 2; r++) ldmatrix_x1_trans(b + r, mt_b16(sB[kk + 8 * r + (lane & 7)], 0));
            } else {
                // a[j]: A rows 8*(j&1).., k 8*(j>>1).. = transpose of A^T rows kk + 8*(j>>1), cols 8*(j&1)
                const int j = lane >> 3;
                ldmatrix_x4_trans(a, mt_b16(sAt[kk + 8 * (j >> 1) + (lane & 7)], 8 * (j & 1)));
                b[0] = bq[2 * ks];
                b[1] = bq[2 * ks + 1];
            }
            mma_bf16_16816(d, a, b);
        }
    }
    for (int i = 0; i < 4; i++) {
        const int r = m0 + g + 8 * (i >> 1), c = n0 + 2 * t + (i & 1);
        if (r < M && c < N) C[(long long)r * N + c] = d[i];
    }
}

// cp.async round trip: each thread copies 16 bytes global -> shared asynchronously (two commit
// groups: wait_group 1 then wait_all; the first as one 16-byte copy, the second as four
// 4-byte copies), then shared -> out. n is a multiple of 4 floats.
extern "C" __global__ void cp_async_test(float* out, const float* in, int n) {
    SHARED(bf16x8, stage, [2][128]); // 16-byte slots, one per thread and group
    const int t = threadIdx.x;
    const int c0 = 4 * t, c1 = 4 * (t + blockDim.x);
    if (c0 < n) cp_async_16(&stage[0][t], in + c0);
    cp_async_commit();
    if (c1 < n)
        for (int e = 0; e < 4; e++) cp_async_4(reinterpret_cast<char*>(&stage[1][t]) + 4 * e, in + c1 + e);
    cp_async_commit();
    cp_async_wait<1>(); // the first group has landed
    if (c0 < n) memcpy(out + c0, &stage[0][t], 16);
    cp_async_wait_all();
    if (c1 < n) memcpy(out + c1, &stage[1][t], 16);
}
