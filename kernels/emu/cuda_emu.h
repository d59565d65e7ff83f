// CUDA execution-model emulator: lets kernels/*.cu compile with the host C++ compiler so the
// test suite can run every kernel without a GPU.
//
// Model: blocks of a grid run one after another on the calling OS thread; the threads of a
// block are cooperative fibers. A fiber runs until it reaches a barrier (__syncthreads, or a
// warp-synchronous op: shuffle, vote, __syncwarp) and then yields to the block scheduler, which
// releases a barrier only when every live thread it covers has arrived. Divergent barriers
// (some threads exited or waiting elsewhere) are reported as errors instead of hanging, so
// the emulator catches the barrier bugs that a GPU would turn into silent garbage.
// Races and speed it cannot see.
#pragma once
#define CUDA_EMU 1

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
typedef dim3 uint3;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// Static shared memory is per block; blocks of one launch run sequentially on one OS thread,
// so a thread_local static is exactly "one copy per running block".
#define __shared__ static thread_local
#define __restrict__ __restrict
#define warpSize 32

namespace emu {

enum State { READY, WAIT_BLOCK, WAIT_WARP, DONE };

struct Fiber {
#if defined(__x86_64__)
    void* sp;
#else
    ucontext_t ctx;
#endif
    dim3 tid;
    unsigned linear;
    State st;
};

struct Block {
    std::vector<Fiber> th;
    std::vector<char> stacks;
    size_t stack_size = 0;
#if defined(__x86_64__)
    void* sched_sp = nullptr;
#else
    ucontext_t sched;
#endif
    std::vector<uint64_t> xchg;   // one slot per thread for shuffles and votes
    std::vector<unsigned char> dyn; // dynamic shared memory
    void (*thunk)(void**) = nullptr;
    void** args = nullptr;
    const char* error = nullptr;
};

inline thread_local Block* g_block = nullptr;
inline thread_local Fiber* g_cur = nullptr;
inline thread_local dim3 g_blockIdx, g_blockDim, g_gridDim;

#if defined(__x86_64__)
// Minimal context switch: save callee-saved registers and the FP control words on the old
// stack, swap stack pointers. swapcontext would make a sigprocmask syscall per switch, and a
// block reduction switches thousands of times.
extern "C" void emu_switch(void** save_sp, void* new_sp);
asm(R"(
.text
.globl emu_switch
.type emu_switch,@function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size emu_switch, .-emu_switch
)");
#endif

inline void yield_to_scheduler() {
#if defined(__x86_64__)
    emu_switch(&g_cur->sp, g_block->sched_sp);
#else
    swapcontext(&g_cur->ctx, &g_block->sched);
#endif
}

[[noreturn]] inline void fiber_entry() {
    g_block->thunk(g_block->args);
    g_cur->st = DONE;
    yield_to_scheduler();
    std::abort(); // a finished fiber is never resumed
}
#if !defined(__x86_64__)
inline void fiber_entry_uc() { fiber_entry(); }
#endif

inline void barrier(State s) {
    g_cur->st = s;
    yield_to_scheduler();
}

inline void fail(const char* msg) {
    if (!g_block->error) g_block->error = msg;
    barrier(WAIT_BLOCK); // the scheduler sees the error and abandons the launch
}

// Runs one block to completion; returns an error message or nullptr.
inline const char* run_block(Block& b) {
    const unsigned n = g_blockDim.x * g_blockDim.y * g_blockDim.z;
    b.th.resize(n);
    b.error = nullptr;
    for (unsigned i = 0; i < n; i++) {
        Fiber& f = b.th[i];
        f.linear = i;
        f.tid = dim3(i % g_blockDim.x, (i / g_blockDim.x) % g_blockDim.y, i / (g_blockDim.x * g_blockDim.y));
        f.st = READY;
        char* top = b.stacks.data() + (size_t)(i + 1) * b.stack_size;
#if defined(__x86_64__)
        // Initial frame popped by emu_switch: mxcsr/fpucw, r15..rbp, then "return" into
        // fiber_entry with the stack aligned as the ABI wants at a function's entry.
        uintptr_t t = (uintptr_t)top & ~(uintptr_t)15;
        uint64_t* s = (uint64_t*)t;
        s[-1] = 0;                          // fake return address of fiber_entry
        s[-2] = (uint64_t)(void*)&fiber_entry;
        for (int r = 3; r <= 8; r++) s[-r] = 0; // rbp rbx r12 r13 r14 r15
        uint32_t* ctl = (uint32_t*)&s[-9];
        ctl[0] = 0x1F80;                    // default MXCSR
        ctl[1] = 0x037F;                    // default x87 control word
        f.sp = &s[-9];
#else
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = top - b.stack_size;
        f.ctx.uc_stack.ss_size = b.stack_size;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, fiber_entry_uc, 0);
#endif
    }
    for (;;) {
        for (unsigned i = 0; i < n; i++) {
            if (b.th[i].st != READY) continue;
            g_cur = &b.th[i];
#if defined(__x86_64__)
            emu_switch(&b.sched_sp, b.th[i].sp);
#else
            swapcontext(&b.sched, &b.th[i].ctx);
#endif
            if (b.error) return b.error;
        }
        // Every thread now waits at a barrier or has exited: release what may be released.
        unsigned done = 0, wblock = 0;
        for (unsigned i = 0; i < n; i++) {
            done += b.th[i].st == DONE;
            wblock += b.th[i].st == WAIT_BLOCK;
        }
        if (done == n) return nullptr;
        bool released = false;
        for (unsigned w = 0; w * 32 < n; w++) {
            unsigned lo = w * 32, hi = lo + 32 < n ? lo + 32 : n, ww = 0, wd = 0;
            for (unsigned i = lo; i < hi; i++) {
                ww += b.th[i].st == WAIT_WARP;
                wd += b.th[i].st == DONE;
            }
            if (ww == 0) continue;
            if (ww + wd != hi - lo) continue; // some lanes wait at __syncthreads: maybe later
            if (wd) return "warp-synchronous op (shuffle/vote/__syncwarp) with exited lanes in the warp";
            for (unsigned i = lo; i < hi; i++) b.th[i].st = READY;
            released = true;
        }
        if (released) continue;
        if (wblock + done == n) {
            if (done) return "__syncthreads reached after some threads of the block exited";
            for (unsigned i = 0; i < n; i++) b.th[i].st = READY;
            continue;
        }
        return "deadlock: threads of a warp wait at different barriers (divergent __syncthreads or shuffle)";
    }
}

inline thread_local Block* tl_block = nullptr;

inline int launch(void (*thunk)(void**), dim3 grid, dim3 block, size_t shmem, void** args, char* err, size_t errlen) {
    unsigned n = block.x * block.y * block.z;
    if (n == 0 || n > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0) {
        snprintf(err, errlen, "invalid launch configuration: grid (%u,%u,%u) block (%u,%u,%u)", grid.x, grid.y, grid.z, block.x, block.y, block.z);
        return 1;
    }
    if (shmem > 227 * 1024) {
        snprintf(err, errlen, "dynamic shared memory %zu bytes exceeds the device limit", shmem);
        return 1;
    }
    if (!tl_block) tl_block = new Block(); // kept per OS thread: stacks are reused across launches
    Block& b = *tl_block;
    const size_t stack_size = 64 * 1024;
    if (b.stacks.size() < (size_t)n * stack_size) b.stacks.resize((size_t)n * stack_size);
    b.stack_size = stack_size;
    b.xchg.assign(n, 0);
    b.thunk = thunk;
    b.args = args;
    g_gridDim = grid;
    g_blockDim = block;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                // Fresh, poisoned dynamic shared memory per block: reading it before writing
                // shows up as NaN in the outputs.
                b.dyn.assign(shmem + 16, 0xFF);
                g_blockIdx = dim3(x, y, z);
                g_block = &b;
                const char* e = run_block(b);
                g_block = nullptr;
                g_cur = nullptr;
                if (e) {
                    snprintf(err, errlen, "%s (block %u,%u,%u)", e, x, y, z);
                    return 1;
                }
            }
    return 0;
}

inline void* dyn_smem() {
    uintptr_t p = (uintptr_t)g_block->dyn.data();
    return (void*)((p + 15) & ~(uintptr_t)15);
}

// Warp exchange: every lane publishes a value, all lanes of the warp meet, each reads its
// source, and all meet again before a slot may be overwritten.
template <class T>
inline T exchange(T v, unsigned src_linear) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    g_block->xchg[g_cur->linear] = bits;
    barrier(WAIT_WARP);
    T r;
    uint64_t got = g_block->xchg[src_linear];
    memcpy(&r, &got, sizeof(T));
    barrier(WAIT_WARP);
    return r;
}
inline unsigned nthreads() { return g_blockDim.x * g_blockDim.y * g_blockDim.z; }
inline void check_mask(unsigned mask) {
    if (mask != 0xffffffffu) fail("emulator supports only full-warp masks");
}

template <class T>
inline T invoke_arg(void** args, size_t i) {
    return *static_cast<T*>(args[i]);
}
template <class... A, size_t... I>
inline void invoke_impl(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(invoke_arg<A>(args, I)...);
}
// Calls a kernel with cuLaunchKernel-style arguments (an array of pointers to each value).
template <class... A>
inline void invoke(void (*f)(A...), void** args) {
    invoke_impl(f, args, std::index_sequence_for<A...>{});
}

} // namespace emu

#define threadIdx (emu::g_cur->tid)
#define blockIdx (emu::g_blockIdx)
#define blockDim (emu::g_blockDim)
#define gridDim (emu::g_gridDim)
#define DYN_SMEM(T, name) T* name = reinterpret_cast<T*>(emu::dyn_smem())

inline void __syncthreads() { emu::barrier(emu::WAIT_BLOCK); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    emu::check_mask(mask);
    emu::barrier(emu::WAIT_WARP);
}

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    emu::check_mask(mask);
    unsigned me = emu::g_cur->linear, lane = me & 31, base = me - lane;
    unsigned s = base + (lane & ~(unsigned)(width - 1)) + ((unsigned)src & (unsigned)(width - 1));
    return emu::exchange(v, s < emu::nthreads() ? s : me);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    emu::check_mask(mask);
    unsigned me = emu::g_cur->linear, lane = me & 31, base = me - lane;
    unsigned sl = lane ^ (unsigned)lane_mask;
    // Sources outside the lane's width segment return the lane's own value, as on the device.
    if ((sl & ~(unsigned)(width - 1)) != (lane & ~(unsigned)(width - 1))) sl = lane;
    unsigned s = base + sl;
    return emu::exchange(v, s < emu::nthreads() ? s : me);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    emu::check_mask(mask);
    unsigned me = emu::g_cur->linear, lane = me & 31, base = me - lane;
    unsigned sl = lane + delta;
    if ((sl & ~(unsigned)(width - 1)) != (lane & ~(unsigned)(width - 1))) sl = lane;
    unsigned s = base + sl;
    return emu::exchange(v, s < emu::nthreads() ? s : me);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    emu::check_mask(mask);
    unsigned me = emu::g_cur->linear, lane = me & 31, base = me - lane;
    unsigned seg = lane & ~(unsigned)(width - 1);
    unsigned sl = (lane >= seg + delta) ? lane - delta : lane;
    return emu::exchange(v, base + sl);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    emu::check_mask(mask);
    unsigned me = emu::g_cur->linear, lane = me & 31, base = me - lane;
    emu::g_block->xchg[me] = pred ? 1 : 0;
    emu::barrier(emu::WAIT_WARP);
    unsigned bits = 0;
    for (unsigned l = 0; l < 32 && base + l < emu::nthreads(); l++)
        if (emu::g_block->xchg[base + l]) bits |= 1u << l;
    emu::barrier(emu::WAIT_WARP);
    return bits;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) {
    unsigned me = emu::g_cur->linear, base = me - (me & 31);
    unsigned live = emu::nthreads() - base >= 32 ? 0xffffffffu : ((1u << (emu::nthreads() - base)) - 1);
    return __ballot_sync(mask, pred) == live;
}

// Atomics: the blocks of a launch run one at a time on one OS thread, so plain
// read-modify-write is atomic here.
inline float atomicAdd(float* p, float v) { float o = *p; *p = o + v; return o; }
inline double atomicAdd(double* p, double v) { double o = *p; *p = o + v; return o; }
inline int atomicAdd(int* p, int v) { int o = *p; *p = o + v; return o; }
inline unsigned atomicAdd(unsigned* p, unsigned v) { unsigned o = *p; *p = o + v; return o; }
inline int atomicMax(int* p, int v) { int o = *p; if (v > o) *p = v; return o; }
inline int atomicCAS(int* p, int cmp, int v) { int o = *p; if (o == cmp) *p = v; return o; }
inline unsigned atomicCAS(unsigned* p, unsigned cmp, unsigned v) { unsigned o = *p; if (o == cmp) *p = v; return o; }
inline void __threadfence() {}
inline void __threadfence_block() {}

// Bit casts and math intrinsics. The fast-math variants map to the precise functions: the
// emulator checks logic, not the last ulp of the device's approximations.
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned i; memcpy(&i, &f, 4); return i; }
inline double __longlong_as_double(long long i) { double f; memcpy(&f, &i, 8); return f; }
inline long long __double_as_longlong(double f) { long long i; memcpy(&i, &f, 8); return i; }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
using ::expf; using ::logf; using ::sqrtf; using ::fmaxf; using ::fminf; using ::fabsf; using ::sincosf;
using ::tanhf; using ::powf; using ::exp2f; using ::log2f; using ::log1pf; using ::erff;

// 16-bit floats with the device's round-to-nearest-even conversions.
struct __nv_bfloat16 { unsigned short x; };
struct __half { unsigned short x; };
typedef __nv_bfloat16 nv_bfloat16;
typedef __half half;

inline __nv_bfloat16 __float2bfloat16(float f) {
    unsigned u = __float_as_uint(f);
    __nv_bfloat16 r;
    if ((u & 0x7fffffffu) > 0x7f800000u) { r.x = (unsigned short)((u >> 16) | 0x40); return r; } // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    r.x = (unsigned short)(u >> 16);
    return r;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return __uint_as_float((unsigned)b.x << 16); }

inline __half __float2half(float f) {
    unsigned u = __float_as_uint(f), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    __half r;
    if (a > 0x7f800000u) { r.x = (unsigned short)(sign | 0x7e00u); return r; }        // NaN
    if (a >= 0x477ff000u) { r.x = (unsigned short)(sign | 0x7c00u); return r; }       // rounds to inf
    if (a < 0x38800000u) {                                                             // subnormal or zero
        // Exact value a * 2^24 in half-subnormal units, rounded to nearest even.
        int e = (int)(a >> 23);
        if (e < 102) { r.x = (unsigned short)sign; return r; }
        unsigned mant = (a & 0x7fffffu) | 0x800000u;
        int shift = 126 - e;                 // 0x38800000 is 2^-14
        unsigned q = mant >> shift, rem = mant & ((1u << shift) - 1), halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (q & 1))) q++;
        r.x = (unsigned short)(sign | q);
        return r;
    }
    unsigned v = a - 0x38000000u;            // rebias exponent 127 -> 15
    v += 0xfffu + ((v >> 13) & 1u);
    r.x = (unsigned short)(sign | (v >> 13));
    return r;
}
inline __half __float2half_rn(float f) { return __float2half(f); }
inline float __half2float(__half h) {
    unsigned sign = ((unsigned)h.x & 0x8000u) << 16, e = (h.x >> 10) & 0x1f, m = h.x & 0x3ffu;
    if (e == 0x1f) return __uint_as_float(sign | 0x7f800000u | (m << 13));
    if (e == 0) {
        float v = (float)m * 5.9604644775390625e-8f; // m * 2^-24, exact
        return sign ? -v : v;
    }
    return __uint_as_float(sign | ((e + 112) << 23) | (m << 13));
}

#include "tensor_core.h" // mma.sync / ldmatrix / cp.async as warp-collective operations
