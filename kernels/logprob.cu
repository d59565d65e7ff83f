// Per-token log-probabilities and entropy of a tempered softmax over the vocabulary, forward
// and backward. One block per row; a single online pass keeps (max, sum, weighted sum) so
// nothing of size [rows, vocab] is written besides the input logits (and dlogits in backward).
//
// -inf logits (top-k/top-p masks, banned tokens) have probability 0: they are skipped in the
// running statistics (so no -inf - (-inf)), and 0 log 0 = 0 in the entropy and its gradient.
// A row whose logits are all -inf has lp = -inf, entropy 0 and zero gradient. The CPU
// reference (src/backend/cpu.rs, row_lse_entropy) follows the same conventions.
#include "common.cuh"
#include "mma.cuh" // bf16_bits

// Softmax statistics of a set of logits z, relative to its max m:
//   s = sum exp(z - m),  t = sum exp(z - m) (z - m).
// Then lse = m + log s and entropy = log s - t / s.
struct SoftStat {
    float m, s, t;
};

__device__ __forceinline__ SoftStat stat_merge(SoftStat a, SoftStat b) {
    if (a.s == 0.0f) return b; // empty sides carry m = -inf; skip them to avoid inf - inf
    if (b.s == 0.0f) return a;
    const float m = fmaxf(a.m, b.m);
    const float ea = expf(a.m - m), eb = expf(b.m - m);
    SoftStat r;
    r.m = m;
    r.s = a.s * ea + b.s * eb;
    r.t = ea * (a.t + a.s * (a.m - m)) + eb * (b.t + b.s * (b.m - m));
    return r;
}

__device__ __forceinline__ SoftStat stat_push(SoftStat a, float z) {
    if (z == neg_inf()) return a; // probability 0: contributes nothing to s or t
    if (a.s == 0.0f) {
        a.m = z; a.s = 1.0f; a.t = 0.0f;
    } else if (z <= a.m) {
        const float d = z - a.m, e = expf(d);
        a.s += e;
        a.t += e * d;
    } else {
        const float d = a.m - z, r = expf(d);
        a.t = r * (a.t + a.s * d);
        a.s = a.s * r + 1.0f;
        a.m = z;
    }
    return a;
}

__device__ __forceinline__ SoftStat stat_shfl(SoftStat a, int o) {
    SoftStat b;
    b.m = __shfl_xor_sync(FULL_MASK, a.m, o);
    b.s = __shfl_xor_sync(FULL_MASK, a.s, o);
    b.t = __shfl_xor_sync(FULL_MASK, a.t, o);
    return b;
}

// A row in 16-byte groups of 4 logits. With `vocab % 4 == 0` every row of a buffer starts
// 16-byte aligned (the caching allocator hands out 256-byte aligned blocks), so the kernels
// read (and the backward writes) a group a thread and step, 16 bytes in flight a thread where
// a logit a thread left HBM half idle (one 4-byte load a thread between dependent exps: the
// H100 benches measured 50% and 42% of HBM). The choice depends on `vocab` alone, so a row's
// result never depends on its place in the batch.
struct __align__(16) lp_f4 {
    float v[4];
};
struct __align__(8) lp_u2 {
    unsigned lo, hi;
};
__device__ __forceinline__ bool lp_grouped(const real* row, int vocab) {
    if (vocab & 3) return false;
    DEVICE_CHECK(((unsigned long long)row & 15) == 0);
    return true;
}

// Softmax statistics of row z = logits * inv_temp, reduced over the block in a fixed tree
// (batch-invariant: a row's result depends on that row alone). Thread i takes logits i,
// i + blockDim.x, ... in order, or, grouped, groups i, i + blockDim.x, ... (two groups' loads
// issued before their exps).
__device__ SoftStat row_stat(const real* row, int vocab, float inv_temp) {
    SHARED(float, sm, [32]);
    SHARED(float, ss, [32]);
    SHARED(float, st, [32]);
    SoftStat a = {neg_inf(), 0.0f, 0.0f};
    if (lp_grouped(row, vocab)) {
        const lp_f4* r4 = reinterpret_cast<const lp_f4*>(row);
        const int groups = vocab / 4, step = blockDim.x;
        for (int g = threadIdx.x; g < groups; g += 2 * step) {
            const bool two = g + step < groups;
            const lp_f4 x = r4[g], y = two ? r4[g + step] : lp_f4{};
            for (int k = 0; k < 4; k++) a = stat_push(a, x.v[k] * inv_temp);
            if (two)
                for (int k = 0; k < 4; k++) a = stat_push(a, y.v[k] * inv_temp);
        }
    } else {
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) a = stat_push(a, row[j] * inv_temp);
    }
    for (int o = 16; o > 0; o >>= 1) a = stat_merge(a, stat_shfl(a, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) { sm[warp] = a.m; ss[warp] = a.s; st[warp] = a.t; }
    __syncthreads();
    SoftStat b = {neg_inf(), 0.0f, 0.0f};
    if (lane < nw) { b.m = sm[lane]; b.s = ss[lane]; b.t = st[lane]; }
    for (int o = 16; o > 0; o >>= 1) b = stat_merge(b, stat_shfl(b, o));
    return b;
}

// The log-sum-exp and entropy of a row with statistics `a` (a.s > 0).
struct LseEnt {
    float lse, ent;
};
__device__ __forceinline__ LseEnt lse_entropy(SoftStat a) {
    const float logs = logf(a.s);
    return {a.m + logs, logs - a.t / a.s};
}

// Row r's log-prob of its target, whose tempered logit is `zt`, and its entropy, into lp[r] and
// entropy[r]: -inf and 0 when every logit is -inf (a.s == 0). What logprobs_f32 writes, and the
// backward kernel when asked (the same bits: the same statistics, the same arithmetic).
__device__ __forceinline__ void put_lp_entropy(float* lp, float* entropy, long long r, SoftStat a, float zt) {
    if (a.s == 0.0f) {
        lp[r] = neg_inf();
        entropy[r] = 0.0f;
        return;
    }
    const LseEnt e = lse_entropy(a);
    lp[r] = zt - e.lse;
    entropy[r] = e.ent;
}

extern "C" __global__ void __launch_bounds__(1024) logprobs_f32(float* lp, float* entropy, const real* logits, const unsigned* targets,
                                        int rows, int vocab, float inv_temp) {
    const long long r = blockIdx.x;
    const real* row = logits + r * vocab;
    DEVICE_CHECK(targets[r] < (unsigned)vocab);
    const SoftStat a = row_stat(row, vocab, inv_temp);
    if (threadIdx.x == 0) put_lp_entropy(lp, entropy, r, a, row[targets[r]] * inv_temp);
}

// d lp / d z_j = [j == target] - p_j ;  d H / d z_j = -p_j (log p_j + H) ; dz/dlogit = inv_temp.
// For p_j = 0 (z_j = -inf) the entropy term is 0 (p log p -> 0), not 0 * -inf.
// Row blockIdx.x. Each output may be null: `out` (the f32 d logits; null when the caller keeps
// only the bf16 operand), `d16` (the bf16 rounding of each d logit, the operand of the head's
// two backward GEMMs: src/backend/cuda/producer_shadows.rs), `lp` and `entropy` (the row's
// log-prob and entropy as logprobs_f32 computes them, from the same statistics: a loss whose
// gradient does not depend on them gets both from this one pass, Backend::logprobs_and_backward).
__device__ __forceinline__ void logprobs_bwd_row(real* out, unsigned short* d16, float* lp, float* entropy,
                                                 const real* logits, const unsigned* targets, const float* dlp,
                                                 const float* dent, int vocab, float inv_temp) {
    const long long r = blockIdx.x;
    const real* row = logits + r * vocab;
    DEVICE_CHECK(targets[r] < (unsigned)vocab);
    const SoftStat a = row_stat(row, vocab, inv_temp);
    const int tgt = (int)targets[r];
    if (threadIdx.x == 0 && lp) put_lp_entropy(lp, entropy, r, a, row[tgt] * inv_temp);
    if (out) out += r * vocab;
    if (d16) d16 += r * vocab;
    if (a.s == 0.0f) { // every logit is -inf: no distribution, no gradient
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
            if (out) out[j] = 0.0f;
            if (d16) d16[j] = 0; // bf16 +0
        }
        return;
    }
    const LseEnt e = lse_entropy(a);
    const float lse = e.lse, ent = e.ent;
    const float g = dlp[r], ge = dent[r];
    // d logit j from its logit (the same arithmetic grouped or not).
    auto dlogit = [&](int j, float x) {
        const float lpj = x * inv_temp - lse;
        const float p = expf(lpj);
        const float dh = p > 0.0f ? ge * p * (lpj + ent) : 0.0f;
        const float dz = g * ((j == tgt ? 1.0f : 0.0f) - p) - dh;
        return dz * inv_temp;
    };
    if (lp_grouped(row, vocab)) {
        DEVICE_CHECK((((unsigned long long)out & 15) | ((unsigned long long)d16 & 7)) == 0);
        const lp_f4* r4 = reinterpret_cast<const lp_f4*>(row);
        for (int q = threadIdx.x; q < vocab / 4; q += blockDim.x) {
            const lp_f4 x = r4[q];
            lp_f4 y;
            for (int k = 0; k < 4; k++) y.v[k] = dlogit(4 * q + k, x.v[k]);
            if (out) reinterpret_cast<lp_f4*>(out)[q] = y;
            if (d16) reinterpret_cast<lp_u2*>(d16)[q] = {pack_bf16x2(y.v[0], y.v[1]), pack_bf16x2(y.v[2], y.v[3])};
        }
        return;
    }
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        const float y = dlogit(j, row[j]);
        if (out) out[j] = y;
        if (d16) d16[j] = bf16_bits(y);
    }
}

// lp, entropy: [rows] or null (above).
extern "C" __global__ void __launch_bounds__(1024) logprobs_bwd_f32(real* dlogits, float* lp, float* entropy,
                                            const real* logits, const unsigned* targets, const float* dlp,
                                            const float* dent, int rows, int vocab, float inv_temp) {
    logprobs_bwd_row(dlogits, nullptr, lp, entropy, logits, targets, dlp, dent, vocab, inv_temp);
}

// logprobs_bwd_f32 that also writes d logits' bf16 rounding into `dlogits16` [rows * vocab]
// (at a real vocabulary the largest operand a training step converts: a chunk's rows x vocab);
// `dlogits` null writes the rounding alone (a bf16-stored operand buffer).
extern "C" __global__ void __launch_bounds__(1024) logprobs_bwd_bf16shadow_f32(real* dlogits, unsigned short* dlogits16,
                                            float* lp, float* entropy, const real* logits,
                                            const unsigned* targets, const float* dlp, const float* dent,
                                            int rows, int vocab, float inv_temp) {
    logprobs_bwd_row(dlogits, dlogits16, lp, entropy, logits, targets, dlp, dent, vocab, inv_temp);
}
