// Test kernel for kernels/wgmma.cuh: one warpgroup computes C (64 x N) = A (64 x K) B (K x N)
// + C with wgmma m64nNk16 (N = 64 or 128), A from registers, B from shared memory in the
// no-swizzle layout, K-major (trans = 0) or N-major (trans = 1), with the byte steps between
// core matrices (lbo: along K, sbo: along N) chosen by the caller, so that a swap of the two
// or a misread of either places B's values elsewhere than the instruction reads them. The
// instruction's major and descriptor steps (dtrans, dlbo, dsbo) are passed apart from the
// placement's, so a test can plant a wrong descriptor and see the product change. a_at >= 0
// reads A from shared memory too (the `_ss` form), placed from that byte on.
// A, B, C row-major f32, rounded to bf16 on load; K a multiple of 16, at most 64. The k-steps go in two
// commit groups (the first waited for with wait_group 1 while the second is pending), so the
// group bookkeeping is exercised too. Built for sm_90a only in effect: elsewhere wgmma traps.
#include "common.cuh"
#include "mma.cuh"
#include "wgmma.cuh"

// Byte offset of B[k][n] in the layout (PTX ISA, "Shared Memory Matrix Layout", canonical
// layouts without swizzle): core matrix (n / 8 along N, k / 8 along K); K-major cores hold 8
// rows of N with 8 contiguous values of K, N-major cores 8 rows of K with 8 values of N.
__device__ __forceinline__ int wt_offset(int k, int n, int trans, int lbo, int sbo) {
    const int core = (k / 8) * lbo + (n / 8) * sbo;
    return core + (trans ? (k % 8) * 16 + (n % 8) * 2 : (n % 8) * 16 + (k % 8) * 2);
}

#define WT_MAX_K 64 // K <= 64

template <int N>
__device__ void wgmma_test(float* C, const float* A, const float* B, int K, int trans, int lbo, int sbo, int dtrans,
                           int dlbo, int dsbo, int a_at) {
    DYN_SMEM(unsigned char, smem);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    for (int e = tid; e < K * N; e += blockDim.x) {
        const int k = e / N, n = e % N;
        const unsigned short v = bf16_bits(B[e]);
        memcpy(smem + wt_offset(k, n, trans, lbo, sbo), &v, 2);
    }
    // a_at >= 0: A in shared memory from byte a_at, K-major (as K-major B with M for N), cores
    // 128 bytes apart along K and a 128-byte gap after each row of them.
    const int a_lbo = 128, a_sbo = (K / 8) * 128 + 128;
    if (a_at >= 0)
        for (int e = tid; e < 64 * K; e += blockDim.x) {
            const int m = e / K, k = e % K;
            const unsigned short v = bf16_bits(A[e]);
            memcpy(smem + a_at + wt_offset(k, m, 0, a_lbo, a_sbo), &v, 2);
        }
    wgmma_fence_smem();
    __syncthreads();
    float d[N / 8][4];
    for (int j = 0; j < N / 8; j++)
        for (int i = 0; i < 4; i++) d[j][i] = C[(16 * warp + g + 8 * (i >> 1)) * N + 8 * j + 2 * t + (i & 1)];
    // Every A fragment before the fence: registers a wgmma reads must not be written between
    // the fence and the wgmma (PTX ISA, wgmma.fence).
    unsigned a[WT_MAX_K / 16][4];
    for (int ks = 0; ks < K / 16; ks++)
        for (int r = 0; r < 4; r++) {
            const int row = 16 * warp + g + 8 * (r & 1), col = 16 * ks + 2 * t + 8 * (r >> 1);
            a[ks][r] = pack_bf16x2(A[row * K + col], A[row * K + col + 1]);
        }
    const int half = (K / 16 + 1) / 2; // k-steps of the first group
    wgmma_fence();
    for (int ks = 0; ks < K / 16; ks++) {
        // k-step ks starts 2 cores along K in: 16 * ks / 8 * lbo bytes.
        const unsigned long long desc = wg_desc(smem + 2 * ks * dlbo, dlbo, dsbo);
        if (a_at >= 0) {
            const unsigned long long desc_a = wg_desc(smem + a_at + 2 * ks * a_lbo, a_lbo, a_sbo);
            if (dtrans)
                wgmma_m64k16_ss<N, 1>(d, desc_a, desc);
            else
                wgmma_m64k16_ss<N, 0>(d, desc_a, desc);
        } else if (dtrans) {
            wgmma_m64k16<N, 1>(d, a[ks], desc);
        } else {
            wgmma_m64k16<N, 0>(d, a[ks], desc);
        }
        if (ks + 1 == half) wgmma_commit();
    }
    wgmma_commit();
    wgmma_wait<1>();
    wgmma_wait<0>();
    wg_fence_acc<N / 8>(d);
    for (int j = 0; j < N / 8; j++)
        for (int i = 0; i < 4; i++) C[(16 * warp + g + 8 * (i >> 1)) * N + 8 * j + 2 * t + (i & 1)] = d[j][i];
}

extern "C" __global__ void __launch_bounds__(128) wgmma_test_n64(float* C, const float* A, const float* B, int K,
                                                                 int trans, int lbo, int sbo, int dtrans, int dlbo,
                                                                 int dsbo, int a_at) {
    wgmma_test<64>(C, A, B, K, trans, lbo, sbo, dtrans, dlbo, dsbo, a_at);
}
extern "C" __global__ void __launch_bounds__(128) wgmma_test_n128(float* C, const float* A, const float* B, int K,
                                                                  int trans, int lbo, int sbo, int dtrans, int dlbo,
                                                                  int dsbo, int a_at) {
    wgmma_test<128>(C, A, B, K, trans, lbo, sbo, dtrans, dlbo, dsbo, a_at);
}
