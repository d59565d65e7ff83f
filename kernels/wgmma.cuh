// Hopper's warpgroup MMA (sm_90a): wgmma.mma_async with A (bf16) from registers (or, the `_ss`
// form, from shared memory, K-major) and B (bf16) from shared memory through a matrix
// descriptor, f32 accumulators. On the CUDA emulator the
// same functions are kernels/emu/wgmma.h.
//
// PTX ISA, "Asynchronous Warpgroup Level Matrix Multiply-Accumulate Instructions":
// - A warpgroup is 4 consecutive warps (128 threads, the first warp a multiple of 4); every
//   thread of it executes each of these instructions (.sync.aligned).
// - m64nNk16: D (64 x N) += A (64 x 16) B (16 x N). Warp w of the group holds rows 16w..16w+15
//   of A and D in mma.m16n8k16's fragment layouts (kernels/mma.cuh): A as that instruction's
//   four A registers, D as N/8 of its 16x8 accumulators side by side (d[j][i]: columns 8j..).
//   So a warp's S accumulators are the A fragments of P = softmax(S) as with mma.sync. A in
//   shared memory is laid out as K-major B with M for N: warp w's rows are the matrix's
//   rows 16w..16w+15.
// - B in shared memory, "no swizzle" (interleaved) layout: 8 x 8 core matrices of 8 rows of 16
//   contiguous bytes (128 contiguous bytes). The descriptor gives the matrix's start, LBO (the
//   byte step between core matrices adjacent in K) and SBO (adjacent in N), in the canonical
//   layouts ((8,n),(8,2k)):((8,SBO),(1,LBO)) for K-major B (TRANS_B = 0: a core matrix holds 8
//   values of N x 8 of K, K contiguous) and ((8,1,n),(8,k)):((1,8,SBO),(8,LBO)) for N-major B
//   (TRANS_B = 1: 8 of K x 8 of N, N contiguous), elements counted in bf16.
// - Order: wgmma_fence() before the first wgmma of a batch whenever the accumulators or A
//   registers were written by other instructions; wgmma_commit() closes a group; wgmma_wait<N>
//   returns when at most N groups are pending. Shared memory written by ordinary stores or
//   cp.async must be published to the async proxy (wgmma_fence_smem(), then a barrier) before a
//   wgmma reads it, and must not be overwritten before the wait that covers that wgmma.
#pragma once

// Descriptor fields (PTX ISA, "Matrix Descriptor Format"): bits 0-13 start address >> 4,
// 16-29 LBO >> 4, 32-45 SBO >> 4, 49-51 base offset (0), 62-63 swizzle (0: none).
__device__ __forceinline__ unsigned long long wg_desc_encode(unsigned saddr, unsigned lbo, unsigned sbo) {
    return (unsigned long long)((saddr & 0x3FFFFu) >> 4) | ((unsigned long long)((lbo & 0x3FFFFu) >> 4) << 16) |
           ((unsigned long long)((sbo & 0x3FFFFu) >> 4) << 32);
}

#ifndef CUDA_EMU
__device__ __forceinline__ unsigned long long wg_desc(const void* smem, unsigned lbo, unsigned sbo) {
    return wg_desc_encode((unsigned)__cvta_generic_to_shared(smem), lbo, sbo);
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void wgmma_fence_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// The accumulators d[N / 8][4] of one warp as the asm operands %0.. (read and written), and
// the instruction's list of them: the register-A and the shared-A forms of each N share these.
#define WG_ACC_N64(d) \
    "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), \
    "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), \
    "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), \
    "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), \
    "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), \
    "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), \
    "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), \
    "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
#define WG_ACC_N128(d) \
    WG_ACC_N64(d), \
    "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), \
    "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), \
    "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), \
    "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), \
    "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), \
    "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), \
    "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), \
    "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
#define WG_D_N64 \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define WG_D_N128 \
    WG_D_N64 ", " \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"

// d (64 x N) += a (64 x 16, this warp's fragment) . B (16 x N at desc_b). Operands: d's N/2
// registers (WG_ACC_N*), a's 4, the descriptor, TRANS_B, and scale-d = 1 (accumulate).
template <int TRANS_B>
__device__ __forceinline__ void wgmma_m64n64k16(float d[8][4], const unsigned a[4], unsigned long long desc_b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %38, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
        WG_D_N64 "}, {%32, %33, %34, %35}, %36, p, 1, 1, %37;\n}\n"
        : WG_ACC_N64(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "n"(TRANS_B), "n"(1));
}
template <int TRANS_B>
__device__ __forceinline__ void wgmma_m64n128k16(float d[16][4], const unsigned a[4], unsigned long long desc_b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %70, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
        WG_D_N128 "}, {%64, %65, %66, %67}, %68, p, 1, 1, %69;\n}\n"
        : WG_ACC_N128(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "n"(TRANS_B), "n"(1));
}
// The same with A (64 x 16, K-major) from shared memory at desc_a too (the `_ss` form).
template <int TRANS_B>
__device__ __forceinline__ void wgmma_m64n64k16_ss(float d[8][4], unsigned long long desc_a, unsigned long long desc_b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %35, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
        WG_D_N64 "}, %32, %33, p, 1, 1, 0, %34;\n}\n"
        : WG_ACC_N64(d)
        : "l"(desc_a), "l"(desc_b), "n"(TRANS_B), "n"(1));
}
template <int TRANS_B>
__device__ __forceinline__ void wgmma_m64n128k16_ss(float d[16][4], unsigned long long desc_a, unsigned long long desc_b) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %67, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
        WG_D_N128 "}, %64, %65, p, 1, 1, 0, %66;\n}\n"
        : WG_ACC_N128(d)
        : "l"(desc_a), "l"(desc_b), "n"(TRANS_B), "n"(1));
}
#else
// Other architectures (the compute_80 PTX): no warpgroup MMA. The runtime selects the kernels
// that call these only on sm_90 (src/backend/cuda/flash.rs); reaching one elsewhere is a bug.
__device__ __forceinline__ void wgmma_fence() { __trap(); }
__device__ __forceinline__ void wgmma_commit() { __trap(); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    __trap();
}
__device__ __forceinline__ void wgmma_fence_smem() { __trap(); }
template <int TRANS_B>
__device__ __forceinline__ void wgmma_m64n64k16(float[8][4], const unsigned[4], unsigned long long) {
    __trap();
}
template <int TRANS_B>
__device__ __forceinline__ void wgmma_m64n128k16(float[16][4], const unsigned[4], unsigned long long) {
    __trap();
}
template <int TRANS_B>
__device__ __forceinline__ void wgmma_m64n64k16_ss(float[8][4], unsigned long long, unsigned long long) {
    __trap();
}
template <int TRANS_B>
__device__ __forceinline__ void wgmma_m64n128k16_ss(float[16][4], unsigned long long, unsigned long long) {
    __trap();
}
#endif

// Keeps the compiler from moving reads or writes of accumulators across a wgmma's window
// (between its issue and the wait): an empty asm that "writes" every register.
template <int NT>
__device__ __forceinline__ void wg_fence_acc(float d[NT][4]) {
#pragma unroll
    for (int i = 0; i < NT; i++)
#pragma unroll
        for (int r = 0; r < 4; r++) asm volatile("" : "+f"(d[i][r])::"memory");
}
#else
// The emulator's descriptors hold offsets into the block's dynamic shared memory.
inline unsigned long long wg_desc(const void* smem, unsigned lbo, unsigned sbo) {
    return wg_desc_encode(emu_wg::smem_offset(smem), lbo, sbo);
}
#endif

// d (64 x N) += A . B with A from shared memory (K-major, at desc_a), N = 64 or 128.
template <int N, int TRANS_B>
__device__ __forceinline__ void wgmma_m64k16_ss(float d[N / 8][4], unsigned long long desc_a,
                                                unsigned long long desc_b) {
    static_assert(N == 64 || N == 128, "wgmma_m64k16_ss: N is 64 or 128");
    if constexpr (N == 64)
        wgmma_m64n64k16_ss<TRANS_B>(d, desc_a, desc_b);
    else
        wgmma_m64n128k16_ss<TRANS_B>(d, desc_a, desc_b);
}

// d (64 x N) += a . B for N = 64 or 128, chosen at compile time.
template <int N, int TRANS_B>
__device__ __forceinline__ void wgmma_m64k16(float d[N / 8][4], const unsigned a[4], unsigned long long desc_b) {
    static_assert(N == 64 || N == 128, "wgmma_m64k16: N is 64 or 128");
    if constexpr (N == 64)
        wgmma_m64n64k16<TRANS_B>(d, a, desc_b);
    else
        wgmma_m64n128k16<TRANS_B>(d, a, desc_b);
}
