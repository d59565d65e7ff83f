// Group advantages over ragged groups (src/rl/advantage.rs `advantages_f64` is the reference):
// GRPO with group / batch / no std scaling (verl: unbiased std + eps, verl's singleton rule;
// TRL's scale_rewards and singleton rule; Dr. GRPO), RLOO, REINFORCE++-baseline (then
// whitened over the batch's tokens) and GPG.
//
// Three launches, each deterministic (fixed-order trees; one counter atomic says which block
// folds the batch statistics, not in which order):
//   adv_batch_stats_f64   batch mean, unbiased variance, nonzero count: per-block moments
//                         merged in a fixed order by the last block (any number of blocks)
//   group_adv_f32         one warp per group, any group size, all groups in one launch;
//                         writes the advantages and one row (nonempty, zero variance, std) per
//                         group, folded by reduce_rows_f64 (grpo_loss.cu)
//   whiten_tokens_f32     one block, REINFORCE++-baseline only
// f64 throughout, as the reference: rewards are few (one per response), so this costs nothing.
#include "common.cuh"

enum { ADV_GRPO, ADV_RLOO, ADV_RPP_BASELINE, ADV_GPG };
enum { SCALE_GROUP, SCALE_BATCH, SCALE_NONE };
// Parameter slots (src/backend/cuda/rl/advantage.rs).
enum { AP_ESTIMATOR, AP_SCALE, AP_EPS, AP_TRL, AP_COUNT };
#define ADV_WARPS 8

__device__ __forceinline__ double warp_min_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v = fmin(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}
__device__ __forceinline__ double warp_max_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// out = {mean, unbiased variance (0 below 2 values), number of nonzero rewards}, over any
// number of blocks in one launch. Block b takes rewards [b chunk, (b + 1) chunk): its count,
// mean, sum of squared deviations from that mean (two passes over the chunk, fixed trees) and
// nonzero count go to part[b]; the last block to finish (a counter, the CUDA samples'
// threadFenceReduction pattern) merges the partials with the pairwise update of Chan, Golub and
// LeVeque ("Algorithms for computing the sample variance", 1983): thread t merges partials
// t, t + 256, ... in order, then a fixed tree over the threads. The merge order is fixed by the
// number of blocks alone, whichever block is last, so the result is deterministic. `done`
// must be 0 at launch; the last block sets it back to 0.
struct AdvMoments {
    double n, mean, m2, nz;
};

__device__ __forceinline__ AdvMoments adv_merge(AdvMoments a, AdvMoments b) {
    if (b.n == 0.0) return a;
    if (a.n == 0.0) return b;
    const double n = a.n + b.n, delta = b.mean - a.mean;
    AdvMoments o;
    o.n = n;
    o.mean = a.mean + delta * (b.n / n);
    o.m2 = a.m2 + b.m2 + delta * delta * (a.n * b.n / n);
    o.nz = a.nz + b.nz;
    return o;
}

extern "C" __global__ void __launch_bounds__(256)
    adv_batch_stats_f64(const float* rewards, long long n, long long chunk, double* part, unsigned* done, double* out) {
    SHARED(double, scratch, [32]);
    SHARED(double, fold, [4][256]);
    SHARED(int, is_last, [1]);
    const int tid = threadIdx.x;
    const long long a = (long long)blockIdx.x * chunk, b = a + chunk < n ? a + chunk : n;
    double s = 0.0, nz = 0.0;
    for (long long i = a + tid; i < b; i += blockDim.x) {
        s += rewards[i];
        nz += rewards[i] != 0.0f ? 1.0 : 0.0;
    }
    s = block_sum_d(s, scratch);
    nz = block_sum_d(nz, scratch);
    const double cnt = b > a ? (double)(b - a) : 0.0;
    const double mean = cnt > 0.0 ? s / cnt : 0.0;
    double ss = 0.0;
    for (long long i = a + tid; i < b; i += blockDim.x) {
        const double d = (double)rewards[i] - mean;
        ss += d * d;
    }
    ss = block_sum_d(ss, scratch);
    if (tid == 0) {
        double* p = part + 4 * (long long)blockIdx.x;
        p[0] = cnt;
        p[1] = mean;
        p[2] = ss;
        p[3] = nz;
        __threadfence(); // the partials are visible before the count says so
        is_last[0] = atomicAdd(done, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (!is_last[0]) return;
    __threadfence();
    const volatile double* vp = part; // written by other blocks: read around this SM's L1
    AdvMoments m = {0.0, 0.0, 0.0, 0.0};
    for (long long j = tid; j < gridDim.x; j += blockDim.x) {
        const AdvMoments q = {vp[4 * j], vp[4 * j + 1], vp[4 * j + 2], vp[4 * j + 3]};
        m = adv_merge(m, q);
    }
    fold[0][tid] = m.n;
    fold[1][tid] = m.mean;
    fold[2][tid] = m.m2;
    fold[3][tid] = m.nz;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (tid < stride) {
            const AdvMoments x = {fold[0][tid], fold[1][tid], fold[2][tid], fold[3][tid]};
            const AdvMoments y = {fold[0][tid + stride], fold[1][tid + stride], fold[2][tid + stride],
                                  fold[3][tid + stride]};
            const AdvMoments z = adv_merge(x, y);
            fold[0][tid] = z.n;
            fold[1][tid] = z.mean;
            fold[2][tid] = z.m2;
            fold[3][tid] = z.nz;
        }
        __syncthreads();
    }
    if (tid == 0) {
        out[0] = fold[1][0];
        out[1] = n >= 2 ? fold[2][0] / ((double)n - 1.0) : 0.0;
        out[2] = fold[3][0];
        *done = 0; // ready for the next launch
    }
}

// Grid: ceil(groups / 8) blocks of 256 threads; warp w of block b handles group 8 b + w.
// adv64 (f64 advantages, for the whitening) may be null. gstat: [groups][3] =
// (nonempty, zero variance, unbiased std or 0 for singletons). batch: adv_batch_stats_f64.
extern "C" __global__ void __launch_bounds__(256) group_adv_f32(float* adv32, double* adv64, double* gstat,
                                                                const float* rewards, const long long* offsets,
                                                                int groups, long long total, const double* prm,
                                                                const double* batch) {
    const int lane = threadIdx.x & 31;
    const long long g = (long long)blockIdx.x * ADV_WARPS + (threadIdx.x >> 5);
    if (g >= groups) return; // the whole warp leaves together
    const int est = (int)prm[AP_ESTIMATOR], scale = (int)prm[AP_SCALE];
    const double eps = prm[AP_EPS];
    const bool trl = prm[AP_TRL] != 0.0;
    const long long a = offsets[g], b = offsets[g + 1], n = b - a;
    const double inf = __longlong_as_double(0x7ff0000000000000LL); // no INFINITY in NVRTC
    double s = 0.0, lo = inf, hi = -inf;
    for (long long i = a + lane; i < b; i += 32) {
        const double r = rewards[i];
        s += r;
        lo = fmin(lo, r);
        hi = fmax(hi, r);
    }
    s = warp_sum_d(s);
    lo = warp_min_d(lo);
    hi = warp_max_d(hi);
    double mean = 0.0, std = 1.0, gstd = 0.0;
    if (n == 1) {
        // verl: mean 0, std 1; TRL (num_generations == 1): the group mean is the reward, std 0.
        if (trl) { mean = s; std = 0.0; }
    } else if (n >= 2) {
        const double m = s / (double)n;
        double ss = 0.0;
        for (long long i = a + lane; i < b; i += 32) {
            const double d = (double)rewards[i] - m;
            ss += d * d;
        }
        ss = warp_sum_d(ss);
        mean = m;
        std = sqrt(ss / ((double)n - 1.0));
        gstd = std;
    }
    const double batch_std = total > 1 ? sqrt(batch[1]) : 0.0;
    const double alpha = (double)total / fmax(batch[2], 1.0); // GPG
    for (long long i = a + lane; i < b; i += 32) {
        const double r = rewards[i];
        const double c = r - mean;
        double v;
        if (est == ADV_GRPO) {
            v = scale == SCALE_GROUP ? c / (std + eps) : (scale == SCALE_BATCH ? c / (batch_std + eps) : c);
        } else if (est == ADV_RLOO) {
            const double k = (double)n / ((double)n - 1.0);
            v = n > 1 ? r * k - mean * k : r;
        } else if (n == 1) {
            v = est == ADV_GPG ? alpha * r : r;
        } else {
            v = est == ADV_GPG ? alpha * c : c;
        }
        adv32[i] = (float)v;
        if (adv64) adv64[i] = v;
    }
    if (lane == 0) {
        gstat[g * 3 + 0] = n > 0 ? 1.0 : 0.0;
        gstat[g * 3 + 1] = n > 0 && lo == hi ? 1.0 : 0.0;
        gstat[g * 3 + 2] = gstd;
    }
}

// verl masked_whiten of per-response values over their tokens (REINFORCE++-baseline):
// token-weighted mean and Bessel-corrected variance, each masked mean over (N + 1e-8), then
// (x - mean) / sqrt(var + 1e-8); fewer than 2 tokens: unchanged. One block.
extern "C" __global__ void __launch_bounds__(256) whiten_tokens_f32(float* adv32, const double* adv64,
                                                                    const long long* lengths, long long n) {
    SHARED(double, scratch, [32]);
    double tok = 0.0, s = 0.0;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) {
        tok += (double)lengths[i];
        s += adv64[i] * (double)lengths[i];
    }
    tok = block_sum_d(tok, scratch);
    s = block_sum_d(s, scratch);
    if (tok < 2.0) {
        for (long long i = threadIdx.x; i < n; i += blockDim.x) adv32[i] = (float)adv64[i];
        return;
    }
    const double mean = s / (tok + 1e-8);
    double ss = 0.0;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) {
        const double d = adv64[i] - mean;
        ss += d * d * (double)lengths[i];
    }
    ss = block_sum_d(ss, scratch);
    const double var = ss / (tok + 1e-8) * (tok / (tok - 1.0));
    const double inv = 1.0 / sqrt(var + 1e-8);
    for (long long i = threadIdx.x; i < n; i += blockDim.x) adv32[i] = (float)((adv64[i] - mean) * inv);
}
