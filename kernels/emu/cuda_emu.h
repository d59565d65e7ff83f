// CUDA execution-model emulator: lets kernels/*.cu compile with the host C++ compiler so the
// test suite can run every kernel without a GPU.
//
// Model: blocks of a grid run one after another on the calling OS thread; the threads of a
// block are cooperative fibers. A fiber runs until it reaches a barrier (__syncthreads, or a
// warp-synchronous op: shuffle, vote, __syncwarp) and then yields to the block scheduler, which
// releases a barrier only when every live thread it covers has arrived.
//
// It is meant to be a hostile GPU, so that CI sees the bugs a GPU would turn into silent
// garbage:
// - Schedules. Between two yields the ready fibers of a block run in an order chosen per
//   launch: forward (thread 0 first), reverse, seeded random (a new permutation every round
//   and block), or "starve" (one warp -- one lane in a one-warp block -- is held back until
//   nothing else can run). A race such as
//   "thread 0 writes shared memory, the others read it with no barrier between" gives right
//   answers in one order and wrong ones in another; the Rust side (src/backend/cuda/emu.rs)
//   can run every launch under several schedules and demand bit-identical results.
// - Poison. Static shared arrays (declared with SHARED(T, name, dims)) and dynamic shared
//   memory are filled with 0xFF bytes (NaN for floats) at the start of every block, so a read
//   before the write shows up in the outputs.
// - Strict warp ops. A shuffle from a lane outside the block or not named in the mask returns
//   poison; a mask without the caller's own bit, a width that is not a power of two, lanes
//   named in a mask that exited, and lanes of one warp meeting at different ops, masks or
//   widths are errors.
// - sm_90 launch limits: block <= 1024 threads, blockDim.z <= 64, gridDim.y/z <= 65535,
//   static shared <= 48 KB, dynamic shared above 48 KB only when the launcher opted in (as
//   cudaFuncAttributeMaxDynamicSharedMemorySize), __launch_bounds__ honoured; a warning for a
//   1024-thread launch of a kernel without __launch_bounds__.
// - Divergent barriers (some threads exited or waiting elsewhere) are errors, not hangs.
// - Asynchronous copies. cp.async writes its destination only at the cp.async.wait_group /
//   wait_all that covers its commit group (kernels/emu/tensor_core.h), so a read before the
//   right wait sees the poisoned shared memory; under the reverse schedule it also writes at
//   the issue, so a copy over data another thread (or a pending wgmma) still reads changes the
//   results between schedules. wgmma (kernels/emu/wgmma.h) computes at its wait, from shared
//   memory as it is then, with its accumulators NaN until then.
// What it cannot see: races inside one segment between yields (fibers never interleave
// there), stale values that a GPU would keep in registers or L1, and speed.
#pragma once
#define CUDA_EMU 1

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
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
// build.rs reads the bounds from the source and hands them to the launcher's limit checks.
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// Static shared memory is per block; blocks of one launch run sequentially on one OS thread,
// so a thread_local static is exactly "one copy per running block". Kernels declare shared
// arrays with SHARED (below), which also poisons them per block; build.rs rejects a bare
// __shared__ in kernels/*.cu.
#define __shared__ static thread_local
#define __restrict__ __restrict
#define warpSize 32

namespace emu {

enum State { READY, WAIT_BLOCK, WAIT_WARP, DONE };
// Orders in which the ready fibers of a block run between yields (see the top of the file).
enum Order { FORWARD = 0, REVERSE = 1, RANDOM = 2, STARVE = 3 };
// Warp-synchronous operations; the lanes that meet must agree on the op, mask and width.
enum WarpOp { OP_OTHER, OP_SHFL, OP_SHFL_XOR, OP_SHFL_UP, OP_SHFL_DOWN, OP_BALLOT, OP_SYNCWARP };
// What a lane at a warp op asks of the others (Fiber::xkind).
enum XchgKind { XCHG_NONE, XCHG_SHFL, XCHG_BALLOT };
inline const char* op_name(int op) {
    static const char* names[] = {"warp op", "__shfl_sync", "__shfl_xor_sync", "__shfl_up_sync",
                                  "__shfl_down_sync", "__ballot/__any/__all_sync", "__syncwarp"};
    return names[op];
}

// sm_90 limits (CUDA C++ Programming Guide, "Technical Specifications per Compute Capability").
constexpr unsigned kMaxThreads = 1024, kMaxBlockXY = 1024, kMaxBlockZ = 64, kMaxGridYZ = 65535;
constexpr unsigned kMaxGridX = 2147483647u;
constexpr size_t kStaticSmem = 48 * 1024, kMaxSmem = 227 * 1024;

struct Fiber {
#if defined(__x86_64__)
    void* sp;
#else
    ucontext_t ctx;
#endif
    dim3 tid;
    unsigned linear;
    State st;
    // The warp op this lane waits at (state WAIT_WARP).
    int wop;
    unsigned wmask;
    int wwidth;
    // A shuffle or vote in flight: the value this lane publishes, what it asks of the others
    // (XCHG_SHFL: lane xsrc's value; XCHG_BALLOT: every named lane's predicate) and the answer,
    // which the scheduler fills in when it releases the meeting (release_warps).
    int xkind;
    unsigned xsrc;
    uint64_t xval, xgot;
    // Tensor-core collectives (tensor_core.h) this lane has made in this block: every lane of a
    // warp makes the same ones, so its parity picks the same exchange buffer in every lane.
    unsigned tc_seq;
    // cp.async copies this thread issued that no wait has completed yet (tensor_core.h): the
    // source bytes as read at the issue, written to shared memory only at the wait that covers
    // them, so a read of the destination before its wait sees the old (poisoned) bytes.
    struct PendingCopy {
        void* dst;
        unsigned char data[16];
        unsigned len;
        unsigned group; // the commit group it belongs to: groups committed before its issue
    };
    std::vector<PendingCopy> cp_pending;
    unsigned cp_committed; // commit groups this thread has closed
    // wgmma.mma_async operations this thread issued that no wait has completed yet (wgmma.h):
    // computed at the covering wgmma.wait_group, from shared memory as it is then, into
    // accumulators that hold NaN from the issue until that wait.
    struct PendingWgmma {
        float* acc;        // this lane's accumulators (n / 2 floats)
        unsigned n;        // N of m64nNk16
        bool trans_b;      // B N-major
        uint64_t desc;     // B's matrix descriptor
        float a[16][16];   // the warp's 16 x 16 A operand, as read at the issue
        const unsigned* a_regs; // this lane's A registers, which must hold a_bits until the wait
        unsigned a_bits[4];     //   (null a_regs: A from shared memory at a_desc, read at the wait)
        uint64_t a_desc;
        float acc_in[128]; // the accumulators before the first pending op on `acc`
        bool first;        // whether acc_in is this op's input (else the previous op's output)
        unsigned group;    // commit groups closed before its issue
    };
    std::vector<PendingWgmma> wg_pending;
    unsigned wg_committed;
};

// Per-launch choices made by the Rust side.
struct LaunchOpts {
    const char* name;       // kernel name, for messages
    unsigned launch_bounds; // max threads from __launch_bounds__, 0 = none
    int order;              // Order
    uint64_t seed;          // RANDOM: permutation seed; STARVE: which warp (plus the block index)
    size_t dyn_optin;       // the kernel's opted-in max dynamic shared memory (bytes)
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
    std::vector<unsigned char> dyn; // dynamic shared memory
    size_t dyn_bytes = 0;
    std::vector<std::pair<void*, size_t>> statics; // static shared arrays seen in this block
    size_t static_bytes = 0;
    std::vector<unsigned> order;    // run order of one round
    int sched = FORWARD;
    uint64_t seed = 0;
    unsigned block_linear = 0;
    void (*thunk)(void**) = nullptr;
    void** args = nullptr;
    const char* error = nullptr;
    char msg[320];
};

inline thread_local Block* g_block = nullptr;
inline thread_local Fiber* g_cur = nullptr;
inline thread_local dim3 g_blockIdx, g_blockDim, g_gridDim;

#if defined(__x86_64__)
// Minimal context switch: save the callee-saved registers on the old stack, swap stack
// pointers. swapcontext would make a sigprocmask syscall per switch, and a block reduction
// switches thousands of times. The FP control words (MXCSR, x87) are callee-saved too, but no
// kernel changes a rounding mode, so every fiber runs with the launching thread's: saving and
// reloading them (ldmxcsr serializes) took 9% of a tensor-core test's time. The 8-byte slot
// where they were stays, so the initial frame below keeps its layout.
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
    movq %rsp, (%rdi)
    movq %rsi, %rsp
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

// __syncthreads: waits until every live thread of the block is here (warp ops: warp_meet).
inline void block_barrier() {
    g_cur->st = WAIT_BLOCK;
    yield_to_scheduler();
}

// Ends the launch with an error from inside a fiber; the message names the thread.
inline void fail(const char* msg) {
    Block& b = *g_block;
    if (!b.error) {
        const dim3 t = g_cur->tid;
        snprintf(b.msg, sizeof b.msg, "%s (thread %u,%u,%u)", msg, t.x, t.y, t.z);
        b.error = b.msg;
    }
    g_cur->st = WAIT_BLOCK;
    yield_to_scheduler(); // the scheduler sees the error and abandons the launch
    std::abort();         // never resumed
}
// DEVICE_CHECK (kernels/common.cuh) on the emulator.
inline void fail_check(const char* cond, const char* file, int line) {
    char m[240];
    const char* base = strrchr(file, '/');
    snprintf(m, sizeof m, "device check failed: %s (%s:%d)", cond, base ? base + 1 : file, line);
    fail(m);
}

inline unsigned nthreads() { return g_blockDim.x * g_blockDim.y * g_blockDim.z; }
// Lanes of warp w that exist in the block.
inline unsigned live_mask(unsigned n, unsigned w) {
    const unsigned cnt = n - w * 32 >= 32 ? 32 : n - w * 32;
    return cnt == 32 ? 0xffffffffu : ((1u << cnt) - 1);
}

// A static shared array reached by a thread: the first thread of the block to reach it
// poisons it and counts it against the 48 KB static limit.
inline void shared_decl(void* p, size_t bytes) {
    Block& b = *g_block;
    for (auto& r : b.statics)
        if (r.first == p) return;
    b.statics.push_back({p, bytes});
    b.static_bytes += bytes;
    if (b.static_bytes > kStaticSmem) {
        char m[160];
        snprintf(m, sizeof m, "static shared memory %zu bytes exceeds the 48 KB static limit of sm_90", b.static_bytes);
        fail(m);
    }
    if (b.static_bytes + b.dyn_bytes > kMaxSmem) {
        char m[160];
        snprintf(m, sizeof m, "static %zu + dynamic %zu bytes of shared memory exceed the 227 KB of sm_90",
                 b.static_bytes, b.dyn_bytes);
        fail(m);
    }
    memset(p, 0xFF, bytes);
}

inline uint64_t splitmix(uint64_t& s) {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

inline void run_fiber(Block& b, unsigned i) {
    g_cur = &b.th[i];
#if defined(__x86_64__)
    emu_switch(&b.sched_sp, b.th[i].sp);
#else
    swapcontext(&b.sched, &b.th[i].ctx);
#endif
}

// Releases every group of lanes whose warp op is complete; returns an error or nullptr.
inline const char* release_warps(Block& b, unsigned n, bool& released) {
    for (unsigned w = 0; w * 32 < n; w++) {
        const unsigned lo = w * 32, live = live_mask(n, w);
        for (unsigned l = 0; l < 32; l++) {
            if (!(live >> l & 1)) break;
            const Fiber& f = b.th[lo + l];
            if (f.st != WAIT_WARP) continue;
            const unsigned m = f.wmask & live;
            bool ok = true;
            for (unsigned j = 0; j < 32; j++) {
                if (!(m >> j & 1)) continue;
                const Fiber& g = b.th[lo + j];
                if (g.st == DONE) {
                    snprintf(b.msg, sizeof b.msg,
                             "%s with mask %08x in warp %u: lane %u is named in the mask but has exited (lane %u waits)",
                             op_name(f.wop), f.wmask, w, j, l);
                    return b.msg;
                }
                ok = ok && g.st == WAIT_WARP && g.wop == f.wop && g.wmask == f.wmask && g.wwidth == f.wwidth;
            }
            if (!ok) continue;
            // Answer the shuffles and votes of the meeting from the values published before
            // it, so that a lane may publish its next value as soon as it runs again (no
            // second meeting to protect the slots). A source outside the block or not named
            // in the mask (a bit of m = mask & live) gives poison (NaN for floats).
            for (unsigned j = 0; j < 32; j++) {
                if (!(m >> j & 1)) continue;
                Fiber& g = b.th[lo + j];
                if (g.xkind == XCHG_SHFL) {
                    g.xgot = g.xsrc < 32 && (m >> g.xsrc & 1) ? b.th[lo + g.xsrc].xval : ~0ull;
                } else if (g.xkind == XCHG_BALLOT) {
                    unsigned bits = 0;
                    for (unsigned l = 0; l < 32; l++)
                        if ((m >> l & 1) && b.th[lo + l].xval) bits |= 1u << l;
                    g.xgot = bits;
                }
                g.st = READY;
            }
            released = true;
        }
    }
    return nullptr;
}

// Nothing can run and nothing can be released: say why, as precisely as possible.
inline const char* diagnose_deadlock(Block& b, unsigned n) {
    for (unsigned w = 0; w * 32 < n; w++) {
        const unsigned lo = w * 32, live = live_mask(n, w);
        for (unsigned l = 0; l < 32; l++) {
            if (!(live >> l & 1)) break;
            const Fiber& f = b.th[lo + l];
            if (f.st != WAIT_WARP) continue;
            for (unsigned j = 0; j < 32; j++) {
                if (!((f.wmask & live) >> j & 1)) continue;
                const Fiber& g = b.th[lo + j];
                if (g.st == WAIT_WARP && (g.wop != f.wop || g.wmask != f.wmask || g.wwidth != f.wwidth)) {
                    snprintf(b.msg, sizeof b.msg,
                             "lanes of warp %u meet at different warp ops: lane %u at %s(mask %08x, width %d), "
                             "lane %u at %s(mask %08x, width %d)",
                             w, l, op_name(f.wop), f.wmask, f.wwidth, j, op_name(g.wop), g.wmask, g.wwidth);
                    return b.msg;
                }
                if (g.st == WAIT_BLOCK) {
                    snprintf(b.msg, sizeof b.msg,
                             "warp %u: lane %u waits at %s while lane %u (named in its mask) waits at __syncthreads",
                             w, l, op_name(f.wop), j);
                    return b.msg;
                }
            }
        }
    }
    return "deadlock: threads wait at barriers that can never be released";
}

// Runs one block to completion; returns an error message or nullptr.
inline const char* run_block(Block& b) {
    const unsigned n = g_blockDim.x * g_blockDim.y * g_blockDim.z, nw = (n + 31) / 32;
    b.th.resize(n);
    b.order.resize(n);
    b.error = nullptr;
    for (unsigned i = 0; i < n; i++) {
        Fiber& f = b.th[i];
        f.linear = i;
        f.tid = dim3(i % g_blockDim.x, (i / g_blockDim.x) % g_blockDim.y, i / (g_blockDim.x * g_blockDim.y));
        f.st = READY;
        f.wop = OP_OTHER;
        f.wmask = 0;
        f.wwidth = 0;
        f.xkind = XCHG_NONE;
        f.tc_seq = 0;
        f.cp_pending.clear(); // copies a thread of the last block never waited for die with it
        f.cp_committed = 0;
        f.wg_pending.clear();
        f.wg_committed = 0;
        char* top = b.stacks.data() + (size_t)(i + 1) * b.stack_size;
#if defined(__x86_64__)
        // Initial frame popped by emu_switch: an unused 8-byte slot, r15..rbp, then "return"
        // into fiber_entry with the stack aligned as the ABI wants at a function's entry.
        uintptr_t t = (uintptr_t)top & ~(uintptr_t)15;
        uint64_t* s = (uint64_t*)t;
        s[-1] = 0;                          // fake return address of fiber_entry
        s[-2] = (uint64_t)(void*)&fiber_entry;
        for (int r = 3; r <= 8; r++) s[-r] = 0; // rbp rbx r12 r13 r14 r15
        s[-9] = 0;                          // the slot emu_switch skips
        f.sp = &s[-9];
#else
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = top - b.stack_size;
        f.ctx.uc_stack.ss_size = b.stack_size;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, fiber_entry_uc, 0);
#endif
    }
    // The starved warp differs from block to block, so a multi-block launch starves each warp.
    // A block of one warp starves one lane instead (lanes are scheduled independently since
    // Volta).
    const unsigned starved = (unsigned)((b.seed + b.block_linear) % (nw > 1 ? nw : n));
    auto is_starved = [&](unsigned i) { return (nw > 1 ? i / 32 : i) == starved; };
    uint64_t rng = b.seed * 0xD1B54A32D192ED03ull + b.block_linear;
    for (;;) {
        // One round: every chosen ready fiber runs to its next yield, in the schedule's order.
        unsigned cnt = 0;
        if (b.sched == STARVE) {
            bool others = false;
            for (unsigned i = 0; i < n && !others; i++) others = b.th[i].st == READY && !is_starved(i);
            for (unsigned i = 0; i < n; i++)
                if (b.th[i].st == READY && !is_starved(i) == others) b.order[cnt++] = i;
        } else {
            for (unsigned i = 0; i < n; i++)
                if (b.th[i].st == READY) b.order[cnt++] = i;
            if (b.sched == REVERSE) {
                for (unsigned i = 0; i < cnt / 2; i++) std::swap(b.order[i], b.order[cnt - 1 - i]);
            } else if (b.sched == RANDOM) {
                for (unsigned i = cnt; i > 1; i--) std::swap(b.order[i - 1], b.order[splitmix(rng) % i]);
            }
        }
        for (unsigned k = 0; k < cnt; k++) {
            run_fiber(b, b.order[k]);
            if (b.error) return b.error;
        }
        bool released = false;
        if (const char* e = release_warps(b, n, released)) return e;
        unsigned done = 0, wblock = 0, ready = 0;
        for (unsigned i = 0; i < n; i++) {
            done += b.th[i].st == DONE;
            wblock += b.th[i].st == WAIT_BLOCK;
            ready += b.th[i].st == READY;
        }
        if (done == n) return nullptr;
        if (ready) continue;
        if (wblock + done == n) {
            if (done) return "__syncthreads reached after some threads of the block exited";
            for (unsigned i = 0; i < n; i++) b.th[i].st = READY;
            continue;
        }
        return diagnose_deadlock(b, n);
    }
}

inline thread_local Block* tl_block = nullptr;

inline int launch(void (*thunk)(void**), dim3 grid, dim3 block, size_t shmem, void** args, const LaunchOpts& o,
                  char* err, size_t errlen) {
    const unsigned long long n = (unsigned long long)block.x * block.y * block.z;
    if (n == 0 || grid.x == 0 || grid.y == 0 || grid.z == 0) {
        snprintf(err, errlen, "invalid launch configuration: a zero dimension");
        return 1;
    }
    if (n > kMaxThreads || block.x > kMaxBlockXY || block.y > kMaxBlockXY || block.z > kMaxBlockZ) {
        snprintf(err, errlen, "block of %llu threads exceeds the sm_90 limits (<= 1024 threads, x/y <= 1024, z <= 64)", n);
        return 1;
    }
    if (grid.x > kMaxGridX || grid.y > kMaxGridYZ || grid.z > kMaxGridYZ) {
        snprintf(err, errlen, "grid exceeds the sm_90 limits (x <= 2^31-1, y and z <= 65535)");
        return 1;
    }
    if (o.launch_bounds && n > o.launch_bounds) {
        snprintf(err, errlen, "block of %llu threads exceeds the kernel's __launch_bounds__(%u)", n, o.launch_bounds);
        return 1;
    }
    if (shmem > kStaticSmem && shmem > o.dyn_optin) {
        snprintf(err, errlen,
                 "%zu bytes of dynamic shared memory: above 48 KB a launch needs the opt-in attribute "
                 "(Device::set_max_dynamic_shared, cudaFuncAttributeMaxDynamicSharedMemorySize), set to %zu",
                 shmem, o.dyn_optin);
        return 1;
    }
    if (shmem > kMaxSmem) {
        snprintf(err, errlen, "dynamic shared memory %zu bytes exceeds the 227 KB of sm_90", shmem);
        return 1;
    }
    if (n == 1024 && !o.launch_bounds) {
        // Without __launch_bounds__ the compiler may give a thread more than the 64 registers a
        // 1024-thread block can have on sm_90, and the launch then fails on the GPU.
        static std::mutex mu;
        static std::vector<const char*> warned;
        std::lock_guard<std::mutex> g(mu);
        bool seen = false;
        for (const char* w : warned) seen |= strcmp(w, o.name) == 0;
        if (!seen) {
            warned.push_back(o.name);
            fprintf(stderr,
                    "warning: kernel %s launched with 1024 threads but has no __launch_bounds__(1024): on the GPU it "
                    "may fail with too many registers per thread\n",
                    o.name);
        }
    }
    if (!tl_block) tl_block = new Block(); // kept per OS thread: stacks are reused across launches
    Block& b = *tl_block;
    const size_t stack_size = 64 * 1024;
    if (b.stacks.size() < (size_t)n * stack_size) b.stacks.resize((size_t)n * stack_size);
    b.stack_size = stack_size;
    b.thunk = thunk;
    b.args = args;
    b.sched = o.order;
    b.seed = o.seed;
    b.dyn_bytes = shmem;
    g_gridDim = grid;
    g_blockDim = block;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                // Fresh, poisoned shared memory per block: reading it before writing shows up
                // as NaN in the outputs. Static arrays are poisoned when first reached.
                b.dyn.assign(shmem + 16, 0xFF);
                b.statics.clear();
                b.static_bytes = 0;
                b.block_linear = x + grid.x * (y + grid.y * z);
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

// Checks a warp op's mask and width when a lane reaches it.
inline void check_warp_op(unsigned mask, int width) {
    if (!(mask >> (g_cur->linear & 31) & 1)) fail("warp op with a mask that does not name the calling lane");
    if (width < 1 || width > 32 || (width & (width - 1))) fail("warp op width is not a power of two in 1..32");
}
// Meets the lanes named in `mask` at warp op `op`; `xkind`: what the lane asks of the others
// (Fiber::xkind), answered in Fiber::xgot when the meeting is released.
inline void warp_meet(int op, unsigned mask, int width, int xkind = XCHG_NONE) {
    g_cur->xkind = xkind;
    g_cur->wop = op;
    g_cur->wmask = mask;
    g_cur->wwidth = width;
    g_cur->st = WAIT_WARP;
    yield_to_scheduler();
}

// Warp exchange: every lane publishes a value, the lanes of the mask meet, and the release of
// the meeting gives each its source lane's value (poison when that lane is outside the block or
// the mask). One meeting, as the hardware's one instruction: a second one only kept the slots
// from being overwritten, and halved the speed of shuffle-heavy kernels.
template <class T>
inline T exchange(T v, unsigned src_lane, int op, unsigned mask, int width) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    g_cur->xval = bits;
    g_cur->xsrc = src_lane;
    warp_meet(op, mask, width, XCHG_SHFL);
    T r;
    memcpy(&r, &g_cur->xgot, sizeof(T));
    return r;
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
// SHARED(T, name, dims) (kernels/common.cuh) on the emulator: a per-block array, poisoned.
#define SHARED(T, name, dims) \
    static thread_local T name dims; \
    ::emu::shared_decl((void*)&name, sizeof(name))
#define DEVICE_CHECK(cond) \
    do { \
        if (!(cond)) ::emu::fail_check(#cond, __FILE__, __LINE__); \
    } while (0)

inline void __syncthreads() { emu::block_barrier(); }
inline void __trap() { emu::fail("__trap()"); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    emu::check_warp_op(mask, 32);
    emu::warp_meet(emu::OP_SYNCWARP, mask, 32);
}

// Source lanes follow the CUDA C++ Programming Guide, "Warp Shuffle Functions": a lane reads
// within its segment of `width` lanes; __shfl_up/down/xor sources outside the segment give the
// lane's own value.
template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    emu::check_warp_op(mask, width);
    const unsigned lane = emu::g_cur->linear & 31;
    const unsigned sl = (lane & ~(unsigned)(width - 1)) + ((unsigned)src & (unsigned)(width - 1));
    return emu::exchange(v, sl, emu::OP_SHFL, mask, width);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    emu::check_warp_op(mask, width);
    const unsigned lane = emu::g_cur->linear & 31;
    unsigned sl = (lane ^ (unsigned)lane_mask) & 31;
    if ((sl & ~(unsigned)(width - 1)) != (lane & ~(unsigned)(width - 1))) sl = lane;
    return emu::exchange(v, sl, emu::OP_SHFL_XOR, mask, width);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    emu::check_warp_op(mask, width);
    const unsigned lane = emu::g_cur->linear & 31;
    unsigned sl = lane + delta;
    if ((sl & ~(unsigned)(width - 1)) != (lane & ~(unsigned)(width - 1))) sl = lane;
    return emu::exchange(v, sl, emu::OP_SHFL_DOWN, mask, width);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    emu::check_warp_op(mask, width);
    const unsigned lane = emu::g_cur->linear & 31;
    const unsigned seg = lane & ~(unsigned)(width - 1);
    const unsigned sl = (lane >= seg + delta) ? lane - delta : lane;
    return emu::exchange(v, sl, emu::OP_SHFL_UP, mask, width);
}
// Votes count the lanes named in the mask that exist.
inline unsigned __ballot_sync(unsigned mask, int pred) {
    emu::check_warp_op(mask, 32);
    emu::g_cur->xval = pred ? 1 : 0;
    emu::warp_meet(emu::OP_BALLOT, mask, 32, emu::XCHG_BALLOT);
    return (unsigned)emu::g_cur->xgot;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) {
    const unsigned live = mask & emu::live_mask(emu::nthreads(), emu::g_cur->linear / 32);
    return __ballot_sync(mask, pred) == live;
}

// Atomics: the blocks of a launch run one at a time on one OS thread, so plain
// read-modify-write is atomic here.
inline float atomicAdd(float* p, float v) { float o = *p; *p = o + v; return o; }
inline double atomicAdd(double* p, double v) { double o = *p; *p = o + v; return o; }
inline int atomicAdd(int* p, int v) { int o = *p; *p = o + v; return o; }
inline unsigned atomicAdd(unsigned* p, unsigned v) { unsigned o = *p; *p = o + v; return o; }
inline int atomicMax(int* p, int v) { int o = *p; if (v > o) *p = v; return o; }
inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) {
    unsigned long long o = *p;
    if (v > o) *p = v;
    return o;
}
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
// Round-to-nearest arithmetic that the GPU compiler never contracts into an FMA (kernels use
// them where a result must match the host's separate multiply and add bit for bit). The host
// build has no FMA contraction on baseline x86-64, so plain operators are the same thing.
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
// High 32 (64) bits of the full unsigned product (Philox, kernels/philox.cuh).
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
using ::expf; using ::logf; using ::sqrtf; using ::fmaxf; using ::fminf; using ::fabsf; using ::sincosf;
using ::tanhf; using ::powf; using ::exp2f; using ::log2f; using ::log1pf; using ::erff;
using std::isfinite;

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
#include "wgmma.h"       // wgmma.mma_async (sm_90a) with its asynchrony: results at the wait
