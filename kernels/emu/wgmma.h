// Hopper's warpgroup MMA on the CUDA emulator: the functions kernels/wgmma.cuh implements with
// inline PTX on sm_90a, with the asynchrony the PTX ISA allows a GPU
// ("Asynchronous Warpgroup Level Matrix Multiply-Accumulate Instructions"):
// - wgmma_m64n{64,128}k16 reads the warp's A fragments at the issue (a warp meeting) and records
//   the operation (the `_ss` form reads A from shared memory at the wait, as it does B); the product is computed only at the wgmma_wait that covers its commit group,
//   reading B from shared memory as it is then. Until that wait the lane's accumulators hold
//   NaN. So a kernel that reads its accumulators before the right wait, overwrites a B tile
//   before the wait, or never commits the group gets NaN or the wrong tile in its outputs; one
//   that rewrites the A registers before the wait is an error (the GPU reads them late too).
// - B is located by decoding the descriptor as the GPU would (start address, LBO, SBO, 14 bits
//   each in 16-byte units, relative to the block's dynamic shared memory, which is where
//   wg_desc's address points), so an encoding or a stride mistake reads the wrong bytes here
//   too. Swizzled layouts and a non-zero base offset are refused (not modelled).
// - Products are exact in f32 (bf16 x bf16) and summed over k in order in f32 onto the
//   accumulator, as emu's mma_bf16_16816 does: chained k-steps give mma.sync's bits.
// Not modelled: that all 4 warps of the warpgroup take part (each warp's rows depend only on
// its own A and the shared B, so one warp is computed alone), wgmma_fence's register
// ordering and the async proxy fence (no-ops: the emulator has one memory view).
#pragma once

namespace emu_wg {

inline unsigned smem_offset(const void* p) {
    const unsigned char* base = (const unsigned char*)emu::dyn_smem();
    const unsigned char* q = (const unsigned char*)p;
    if (q < base || q >= base + emu::g_block->dyn_bytes)
        emu::fail("wgmma descriptor: the address is not in the block's dynamic shared memory");
    return (unsigned)(q - base);
}

// B[k][n] of the operation's 16 x n operand, located through the descriptor.
inline float b_at(uint64_t desc, bool trans_b, unsigned k, unsigned n) {
    if (desc >> 62) emu::fail("wgmma descriptor: swizzled layouts are not modelled by the emulator");
    if ((desc >> 49) & 7) emu::fail("wgmma descriptor: a non-zero base offset is not modelled by the emulator");
    const size_t start = (size_t)(desc & 0x3FFF) << 4, lbo = (size_t)((desc >> 16) & 0x3FFF) << 4,
                 sbo = (size_t)((desc >> 32) & 0x3FFF) << 4;
    // K-major: core matrix (n/8, k/8), row n%8, element k%8; N-major: row k%8, element n%8.
    const size_t at = start + (n / 8) * sbo + (k / 8) * lbo + (trans_b ? (k % 8) * 16 + (n % 8) * 2
                                                                         : (n % 8) * 16 + (k % 8) * 2);
    if (at + 2 > emu::g_block->dyn_bytes) emu::fail("wgmma: B reaches past the block's dynamic shared memory");
    uint16_t v;
    memcpy(&v, (const unsigned char*)emu::dyn_smem() + at, 2);
    return __uint_as_float((unsigned)v << 16);
}

// A from registers (`a`), or from shared memory (`a` null, `desc_a`): then read at the wait,
// rows 16 w.. of the K-major 64 x 16 matrix for warp w of the warpgroup.
inline void issue(float* acc, unsigned n, bool trans_b, uint64_t desc, const unsigned a[4], uint64_t desc_a = 0) {
    emu::Fiber* f = emu::g_cur;
    emu::Fiber::PendingWgmma op;
    op.acc = acc;
    op.n = n;
    op.trans_b = trans_b;
    op.desc = desc;
    op.group = f->wg_committed;
    op.a_regs = a;
    op.a_desc = desc_a;
    if (a) {
        memcpy(op.a_bits, a, sizeof op.a_bits);
        emu_tc::Slot s{};
        for (int i = 0; i < 4; i++) s.w[i] = a[i];
        // A (16 x 16) of the warp: lane 4g + t holds rows g, g + 8 and columns 2t, 2t + 1, + 8.
        emu_tc::warp_collective(s, [&](const emu_tc::Slot* w, unsigned) {
            for (unsigned g = 0; g < 8; g++)
                for (unsigned t = 0; t < 4; t++)
                    for (unsigned r = 0; r < 4; r++) {
                        const unsigned row = g + 8 * (r & 1), col = 2 * t + 8 * (r >> 1), v = w[4 * g + t].w[r];
                        op.a[row][col] = emu_tc::bf16_lo(v);
                        op.a[row][col + 1] = emu_tc::bf16_hi(v);
                    }
        });
    } else {
        __syncwarp(); // the warp meets at the issue, as with registers
    }
    op.first = true;
    for (const emu::Fiber::PendingWgmma& p : f->wg_pending)
        if (p.acc == acc) op.first = false;
    if (op.first) {
        memcpy(op.acc_in, acc, sizeof(float) * (n / 2));
        for (unsigned i = 0; i < n / 2; i++) acc[i] = __uint_as_float(0x7fffffffu);
    }
    f->wg_pending.push_back(op);
}

// Completes the operations of every commit group older than the newest `keep` ones, in issue
// order; an accumulator that a still-pending operation chains onto stays NaN, its value handed
// to that operation.
inline void complete(unsigned keep) {
    emu::Fiber* f = emu::g_cur;
    const unsigned done_below = f->wg_committed >= keep ? f->wg_committed - keep : 0;
    const unsigned lane = f->linear & 31, g = lane >> 2, t = lane & 3;
    std::vector<emu::Fiber::PendingWgmma> left;
    std::vector<std::pair<float*, std::vector<float>>> cur; // accumulators computed so far
    for (emu::Fiber::PendingWgmma& op : f->wg_pending) {
        std::vector<float>* val = nullptr;
        for (auto& c : cur)
            if (c.first == op.acc) val = &c.second;
        if (op.group >= done_below) {
            if (val) { // chains onto a completed op: its input is that op's output
                memcpy(op.acc_in, val->data(), sizeof(float) * (op.n / 2));
                op.first = true;
                val->clear(); // the registers stay NaN until this op completes
            }
            left.push_back(op);
            continue;
        }
        // The GPU may read A's registers until the wait (PTX ISA: touching them before is
        // undefined): a kernel that rewrote them meanwhile is wrong on the GPU.
        if (op.a_regs && memcmp(op.a_regs, op.a_bits, sizeof op.a_bits) != 0)
            emu::fail("wgmma: the A registers of an operation were written before the wait that covers it");
        if (!op.a_regs) { // K-major A read like K-major B, M in N's place: A[m][k] = B-reading (k, m)
            const unsigned w = (f->linear >> 5) & 3;
            for (unsigned r = 0; r < 16; r++)
                for (unsigned k = 0; k < 16; k++) op.a[r][k] = b_at(op.a_desc, false, k, 16 * w + r);
        }
        if (!val) {
            cur.push_back({op.acc, std::vector<float>(op.acc_in, op.acc_in + op.n / 2)});
            val = &cur.back().second;
        }
        for (unsigned j = 0; j < op.n / 8; j++)
            for (unsigned c = 0; c < 2; c++) { // this lane's columns 8j + 2t, + 1
                const unsigned col = 8 * j + 2 * t + c;
                float b[16];
                for (unsigned k = 0; k < 16; k++) b[k] = b_at(op.desc, op.trans_b, k, col);
                for (unsigned h = 0; h < 2; h++) { // rows g, g + 8
                    const unsigned i = 2 * h + c;
                    float acc = (*val)[4 * j + i];
                    for (unsigned k = 0; k < 16; k++) acc += op.a[g + 8 * h][k] * b[k];
                    (*val)[4 * j + i] = acc;
                }
            }
    }
    for (auto& c : cur)
        if (!c.second.empty()) memcpy(c.first, c.second.data(), sizeof(float) * c.second.size());
    f->wg_pending = left;
}

} // namespace emu_wg

inline void wgmma_fence() {}
inline void wgmma_fence_smem() {}
inline void wgmma_commit() { emu::g_cur->wg_committed++; }
template <int N>
inline void wgmma_wait() {
    emu_wg::complete(N);
}
template <int TRANS_B>
inline void wgmma_m64n64k16(float d[8][4], const unsigned a[4], unsigned long long desc_b) {
    emu_wg::issue(&d[0][0], 64, TRANS_B != 0, desc_b, a);
}
template <int TRANS_B>
inline void wgmma_m64n128k16(float d[16][4], const unsigned a[4], unsigned long long desc_b) {
    emu_wg::issue(&d[0][0], 128, TRANS_B != 0, desc_b, a);
}
template <int TRANS_B>
inline void wgmma_m64n64k16_ss(float d[8][4], unsigned long long desc_a, unsigned long long desc_b) {
    emu_wg::issue(&d[0][0], 64, TRANS_B != 0, desc_b, nullptr, desc_a);
}
template <int TRANS_B>
inline void wgmma_m64n128k16_ss(float d[16][4], unsigned long long desc_a, unsigned long long desc_b) {
    emu_wg::issue(&d[0][0], 128, TRANS_B != 0, desc_b, nullptr, desc_a);
}
template <int NT>
inline void wg_fence_acc(float (*)[4]) {}
