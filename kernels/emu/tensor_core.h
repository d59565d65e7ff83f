// Tensor-core instructions on the CUDA emulator, as warp-collective operations: the same
// device functions that kernels/mma.cuh implements with inline PTX on the GPU.
//
//   mma_bf16_16816   mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (D = A B + D)
//   ldmatrix_x{1,2,4}[_trans]   ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16
//   cp_async_16, cp_async_4, cp_async_commit, cp_async_wait[_all]   cp.async.cg / .ca (written at the covering wait;
//     under the reverse schedule at the issue too)
//
// Fragment layouts follow the PTX ISA, section "Warp-level matrix fragment mma.m16n8k16"
// (floating point types) and "ldmatrix": with lane = 4 * group + tig (tig = thread in group),
//   A (16x16, row-major) a[r]: rows group (+8 for r = 1, 3), cols 2*tig, 2*tig+1 (+8 for r >= 2)
//   B (16x8, "col")      b[r]: rows (k) 2*tig, 2*tig+1 (+8 for r = 1), col (n) group
//   C/D (16x8, f32)      c[i]: row group (+8 for i >= 2), col 2*tig + (i & 1)
//   ldmatrix: lanes 8m..8m+7 give the row addresses of matrix m; register m of lane l holds
//     row l/4, cols 2*(l%4), +1 of matrix m (.trans: rows 2*(l%4), +1 of col l/4).
// Each 32-bit register holds two bf16, the lower-numbered column in the low half.
//
// Written against the public CUDA surface (threadIdx, blockDim, __syncwarp), so it depends on
// the scheduler's internals only where a thread's own state is kept in its fiber (emu::g_cur):
// cp.async's pending copies and the count of collectives that picks the exchange buffer. The
// exchange slots are per OS thread, like __shared__: the threads of a block are fibers of one
// OS thread.
#pragma once
#include <cstdint>
#include <cstring>

namespace emu_tc {

struct Slot {
    unsigned w[8];
};
// Two sets of slots, used by alternate collectives (see warp_collective).
inline Slot* slots(unsigned parity) {
    static thread_local Slot s[2][1024];
    return s[parity];
}
inline unsigned linear_tid() {
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}
inline float bf16_lo(unsigned w) { return __uint_as_float(w << 16); }
inline float bf16_hi(unsigned w) { return __uint_as_float(w & 0xffff0000u); }
inline uint16_t read_b16(const void* row, unsigned col) {
    uint16_t v;
    memcpy(&v, (const char*)row + 2 * col, 2);
    return v;
}

// Every lane publishes its slot, the warp meets, each lane reads what it needs. One meeting:
// collectives alternate between two sets of slots, and a lane writes this set again only two
// collectives on, after the warp has met at the one between, which no lane reaches before it
// has read this one. (A second meeting after the read, to protect the slots, doubled the fiber
// switches of every mma and ldmatrix.)
template <class F>
inline void warp_collective(const Slot& mine, F&& read) {
    const unsigned me = linear_tid(), base = me & ~31u;
    Slot* set = slots(emu::g_cur->tc_seq++ & 1u);
    set[me] = mine;
    __syncwarp();
    read(set + base, me & 31u);
}

// Each lane that gives a row (lanes 8m..8m+7 for matrix m) reads its row's 8 b16 when it
// reaches the instruction and publishes them: a lane may go on and overwrite shared memory as
// soon as the warp has met, as after the one warp-wide instruction on the GPU. A row that
// another lane of the warp writes without a __syncwarp before the ldmatrix is read before or
// after that write depending on the schedule, as the race it is.
template <int N, bool TRANS>
inline void ldmatrix(unsigned* r, const void* row_addr) {
    Slot s{};
    if ((linear_tid() & 31u) < 8u * N) memcpy(s.w, row_addr, 16);
    warp_collective(s, [&](const Slot* w, unsigned lane) {
        const unsigned g = lane >> 2, t = lane & 3;
        for (int m = 0; m < N; m++) {
            uint16_t lo, hi;
            if (!TRANS) {
                const unsigned* row = w[8 * m + g].w;
                lo = read_b16(row, 2 * t);
                hi = read_b16(row, 2 * t + 1);
            } else {
                lo = read_b16(w[8 * m + 2 * t].w, g);
                hi = read_b16(w[8 * m + 2 * t + 1].w, g);
            }
            r[m] = (unsigned)lo | ((unsigned)hi << 16);
        }
    });
}

} // namespace emu_tc

inline void ldmatrix_x1(unsigned r[1], const void* p) { emu_tc::ldmatrix<1, false>(r, p); }
inline void ldmatrix_x2(unsigned r[2], const void* p) { emu_tc::ldmatrix<2, false>(r, p); }
inline void ldmatrix_x4(unsigned r[4], const void* p) { emu_tc::ldmatrix<4, false>(r, p); }
inline void ldmatrix_x1_trans(unsigned r[1], const void* p) { emu_tc::ldmatrix<1, true>(r, p); }
inline void ldmatrix_x2_trans(unsigned r[2], const void* p) { emu_tc::ldmatrix<2, true>(r, p); }
inline void ldmatrix_x4_trans(unsigned r[4], const void* p) { emu_tc::ldmatrix<4, true>(r, p); }

// d += A b, products exact in f32 (bf16 x bf16), summed in k order in f32.
inline void mma_bf16_16816(float d[4], const unsigned a[4], const unsigned b[2]) {
    emu_tc::Slot s{};
    for (int i = 0; i < 4; i++) s.w[i] = a[i];
    s.w[4] = b[0];
    s.w[5] = b[1];
    float out[4];
    emu_tc::warp_collective(s, [&](const emu_tc::Slot* w, unsigned lane) {
        const unsigned g = lane >> 2, t = lane & 3;
        float arow[2][16], bcol[2][16];
        for (unsigned tt = 0; tt < 4; tt++) {
            const unsigned* aw = w[4 * g + tt].w;
            arow[0][2 * tt] = emu_tc::bf16_lo(aw[0]);
            arow[0][2 * tt + 1] = emu_tc::bf16_hi(aw[0]);
            arow[1][2 * tt] = emu_tc::bf16_lo(aw[1]);
            arow[1][2 * tt + 1] = emu_tc::bf16_hi(aw[1]);
            arow[0][2 * tt + 8] = emu_tc::bf16_lo(aw[2]);
            arow[0][2 * tt + 9] = emu_tc::bf16_hi(aw[2]);
            arow[1][2 * tt + 8] = emu_tc::bf16_lo(aw[3]);
            arow[1][2 * tt + 9] = emu_tc::bf16_hi(aw[3]);
            for (unsigned j = 0; j < 2; j++) {
                const unsigned* bw = w[4 * (2 * t + j) + tt].w;
                bcol[j][2 * tt] = emu_tc::bf16_lo(bw[4]);
                bcol[j][2 * tt + 1] = emu_tc::bf16_hi(bw[4]);
                bcol[j][2 * tt + 8] = emu_tc::bf16_lo(bw[5]);
                bcol[j][2 * tt + 9] = emu_tc::bf16_hi(bw[5]);
            }
        }
        for (int i = 0; i < 4; i++) {
            float acc = d[i];
            for (int k = 0; k < 16; k++) acc += arow[i >> 1][k] * bcol[i & 1][k];
            out[i] = acc;
        }
    });
    for (int i = 0; i < 4; i++) d[i] = out[i];
}

// Two floats to a bf16 pair (round to nearest even), `lo` in the low half.
inline unsigned pack_bf16x2(float lo, float hi) {
    return (unsigned)__float2bfloat16(lo).x | ((unsigned)__float2bfloat16(hi).x << 16);
}

inline unsigned short bf16_bits(float f) { return __float2bfloat16(f).x; }

// cp.async (PTX ISA, "cp.async", "cp.async.commit_group", "cp.async.wait_group"): the source
// is read at the issue, but the destination is written only when a wait covers the copy's
// commit group, as late as the GPU may write it. A kernel that reads the destination before
// the right wait (a missing wait, a wait_group N that leaves its group pending, a copy never
// committed before wait_group) reads the poisoned shared memory instead, and its outputs show
// NaN. Copies complete in issue order; they are the calling thread's own (emu::g_cur).
//
// Under the REVERSE schedule the destination is also written at the issue, as early as the
// GPU may write it: a kernel that still reads the old contents after issuing a copy over them
// (a buffer refilled while a reader, say an asynchronous wgmma, may not be done) gets other
// bits under that schedule than under the others, which the multi-schedule runs report.
inline void cp_async_issue(void* smem, const void* gmem, unsigned len) {
    emu::Fiber* f = emu::g_cur;
    emu::Fiber::PendingCopy c;
    c.dst = smem;
    c.len = len;
    c.group = f->cp_committed;
    memcpy(c.data, gmem, len);
    f->cp_pending.push_back(c);
    if (emu::g_block->sched == emu::REVERSE) memcpy(smem, gmem, len);
}
// Completes the copies of every commit group older than the newest `keep` committed ones
// (uncommitted copies stay pending, as wait_group leaves them).
inline void cp_async_complete(unsigned keep) {
    emu::Fiber* f = emu::g_cur;
    const unsigned done_below = f->cp_committed >= keep ? f->cp_committed - keep : 0;
    size_t kept = 0;
    for (size_t i = 0; i < f->cp_pending.size(); i++) {
        emu::Fiber::PendingCopy& c = f->cp_pending[i];
        if (c.group < done_below) {
            memcpy(c.dst, c.data, c.len);
        } else {
            f->cp_pending[kept++] = c;
        }
    }
    f->cp_pending.resize(kept);
}
inline void cp_async_16(void* smem, const void* gmem) { cp_async_issue(smem, gmem, 16); }
inline void cp_async_4(void* smem, const void* gmem) { cp_async_issue(smem, gmem, 4); }
inline void cp_async_commit() { emu::g_cur->cp_committed++; }
// wait_all = commit_group then wait_group 0 (PTX ISA).
inline void cp_async_wait_all() {
    cp_async_commit();
    cp_async_complete(0);
}
template <int N>
inline void cp_async_wait() {
    cp_async_complete(N);
}
