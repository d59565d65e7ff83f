// Group advantages over ragged groups (src/rl/advantage.rs `advantages_f64` is the reference):
// GRPO with group / batch / no std scaling (verl: unbiased std + eps, verl's singleton rule;
// TRL's scale_rewards and singleton rule; Dr. GRPO), RLOO, REINFORCE++-baseline (then
// whitened over the batch's tokens) and GPG.
//
// Launches, each deterministic (fixed-order trees, no atomics):
//   group_adv_seg_f32   segmented over groups: `width` lanes per group (a power of two, 1 to
//                       32, >= the group size up to 32; larger groups loop), 256 / width groups
//                       a block, all groups in one launch. Equal group sizes need no offsets.
//                       Writes the advantages and one row of partial sums per block: the
//                       block's reward moments (count, mean, sum of squared deviations, nonzero
//                       count; Chan-merged from its groups' in a fixed tree) and its group
//                       counts (nonempty, zero variance, sum of unbiased stds).
//   adv_fold_f64        one block folds the rows in a fixed order: batch mean, unbiased
//                       variance, nonzero count, groups, zero-variance groups, sum of stds.
//   whiten_tokens_f32   one block, REINFORCE++-baseline only.
// Batch std scaling and GPG read the batch statistics before any advantage: they run the
// segmented kernel twice (statistics only, then the advantages), with the fold between.
// f64 throughout, as the reference: rewards are few (one per response), so this costs nothing.
#include "common.cuh"

enum { ADV_GRPO, ADV_RLOO, ADV_RPP_BASELINE, ADV_GPG };
enum { SCALE_GROUP, SCALE_BATCH, SCALE_NONE };
// Columns of a block's partial-sum row and of the folded result (src/backend/cuda/rl/advantage.rs).
enum { AS_N, AS_MEAN, AS_M2, AS_NZ, AS_GROUPS, AS_ZERO_VAR, AS_STD_SUM, AS_COUNT };
#define ADV_THREADS 256

// Moments of a set of rewards: count, mean, sum of squared deviations from the mean, nonzero
// count; merged with the pairwise update of Chan, Golub and LeVeque ("Algorithms for
// computing the sample variance", 1983), which stays accurate for rewards far from zero.
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

// Sum / min / max over the `width` lanes of a segment (xor offsets below width stay inside
// the aligned segment). Every lane of the warp calls them.
__device__ __forceinline__ double adv_seg_sum(double v, int width) {
    for (int o = width >> 1; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ double adv_seg_min(double v, int width) {
    for (int o = width >> 1; o > 0; o >>= 1) v = fmin(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}
__device__ __forceinline__ double adv_seg_max(double v, int width) {
    for (int o = width >> 1; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Merges slots [0, count) of fold[AS_COUNT][ADV_THREADS] into slot 0, pairwise in a fixed tree
// (count a power of two); the block's threads all call it.
__device__ void adv_fold_tree(double (*fold)[ADV_THREADS], int count) {
    const int tid = threadIdx.x;
    for (int stride = count >> 1; stride > 0; stride >>= 1) {
        __syncthreads();
        if (tid < stride) {
            const AdvMoments x = {fold[AS_N][tid], fold[AS_MEAN][tid], fold[AS_M2][tid], fold[AS_NZ][tid]};
            const AdvMoments y = {fold[AS_N][tid + stride], fold[AS_MEAN][tid + stride], fold[AS_M2][tid + stride],
                                  fold[AS_NZ][tid + stride]};
            const AdvMoments z = adv_merge(x, y);
            fold[AS_N][tid] = z.n;
            fold[AS_MEAN][tid] = z.mean;
            fold[AS_M2][tid] = z.m2;
            fold[AS_NZ][tid] = z.nz;
            for (int k = AS_GROUPS; k < AS_COUNT; k++) fold[k][tid] += fold[k][tid + stride];
        }
    }
    __syncthreads();
}

// Grid: ceil(groups / (256 / width)) blocks of 256 threads; lanes [j width, (j + 1) width) of
// the block take group blockIdx.x (256 / width) + j. Group g is rewards
// [g group_len, (g + 1) group_len) when group_len > 0 (offsets unread, may be null), else
// [offsets[g], offsets[g + 1]). write = 0: only the partial sums (adv32, adv64 unread);
// adv64 (f64 advantages, for the whitening) may be null. batch (adv_fold_f64's output) is
// read only by batch std scaling and GPG. part: [blocks][AS_COUNT].
extern "C" __global__ void __launch_bounds__(256) group_adv_seg_f32(
    float* adv32, double* adv64, double* part, const float* rewards, const long long* offsets, long long groups,
    long long group_len, int width, long long total, int est, int scale, double eps, int trl, const double* batch,
    int write) {
    SHARED(double, fold, [AS_COUNT][ADV_THREADS]);
    const int tid = threadIdx.x, per_block = ADV_THREADS / width, slot = tid / width, sub = tid & (width - 1);
    const long long g = (long long)blockIdx.x * per_block + slot;
    long long a = 0, b = 0; // past the last group: an empty one, so every lane meets the shuffles
    if (g < groups) {
        a = group_len > 0 ? g * group_len : offsets[g];
        b = group_len > 0 ? a + group_len : offsets[g + 1];
    }
    const long long n = b - a;
    const double inf = __longlong_as_double(0x7ff0000000000000LL); // no INFINITY in NVRTC
    double s = 0.0, nz = 0.0, lo = inf, hi = -inf;
    for (long long i = a + sub; i < b; i += width) {
        const double r = rewards[i];
        s += r;
        nz += r != 0.0 ? 1.0 : 0.0;
        lo = fmin(lo, r);
        hi = fmax(hi, r);
    }
    s = adv_seg_sum(s, width);
    nz = adv_seg_sum(nz, width);
    lo = adv_seg_min(lo, width);
    hi = adv_seg_max(hi, width);
    const double gm = n > 0 ? s / (double)n : 0.0; // the group's mean (moments)
    double ss = 0.0;
    if (n >= 2)
        for (long long i = a + sub; i < b; i += width) {
            const double d = (double)rewards[i] - gm;
            ss += d * d;
        }
    ss = adv_seg_sum(ss, width);
    // The advantage's centre and scale: verl's singleton is mean 0, std 1; TRL's
    // (num_generations == 1) is the reward itself, std 0.
    double mean = 0.0, std = 1.0, gstd = 0.0;
    if (n == 1) {
        if (trl) { mean = s; std = 0.0; }
    } else if (n >= 2) {
        mean = gm;
        std = sqrt(ss / ((double)n - 1.0));
        gstd = std;
    }
    if (write) {
        const double batch_std = (est == ADV_GRPO && scale == SCALE_BATCH && total > 1) ? sqrt(batch[1]) : 0.0;
        const double alpha = est == ADV_GPG ? (double)total / fmax(batch[2], 1.0) : 0.0;
        for (long long i = a + sub; i < b; i += width) {
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
    }
    if (sub == 0) {
        fold[AS_N][slot] = (double)n;
        fold[AS_MEAN][slot] = gm;
        fold[AS_M2][slot] = ss;
        fold[AS_NZ][slot] = nz;
        fold[AS_GROUPS][slot] = n > 0 ? 1.0 : 0.0;
        fold[AS_ZERO_VAR][slot] = n > 0 && lo == hi ? 1.0 : 0.0;
        fold[AS_STD_SUM][slot] = gstd;
    }
    adv_fold_tree(fold, per_block);
    if (tid < AS_COUNT) part[(long long)blockIdx.x * AS_COUNT + tid] = fold[tid][0];
}

// One block of 256 threads: thread t merges rows t, t + 256, ... of part ([rows][AS_COUNT])
// in order, then a fixed tree over the threads. out: mean, unbiased variance (0 below 2
// rewards), nonzero count, groups, zero-variance groups, sum of group stds.
extern "C" __global__ void __launch_bounds__(256) adv_fold_f64(const double* part, long long rows, double* out) {
    SHARED(double, fold, [AS_COUNT][ADV_THREADS]);
    const int tid = threadIdx.x;
    AdvMoments m = {0.0, 0.0, 0.0, 0.0};
    double c[AS_COUNT] = {};
    for (long long j = tid; j < rows; j += blockDim.x) {
        const double* q = part + j * AS_COUNT;
        m = adv_merge(m, AdvMoments{q[AS_N], q[AS_MEAN], q[AS_M2], q[AS_NZ]});
        for (int k = AS_GROUPS; k < AS_COUNT; k++) c[k] += q[k];
    }
    fold[AS_N][tid] = m.n;
    fold[AS_MEAN][tid] = m.mean;
    fold[AS_M2][tid] = m.m2;
    fold[AS_NZ][tid] = m.nz;
    for (int k = AS_GROUPS; k < AS_COUNT; k++) fold[k][tid] = c[k];
    adv_fold_tree(fold, ADV_THREADS);
    if (tid == 0) {
        const double n = fold[AS_N][0];
        out[0] = fold[AS_MEAN][0];
        out[1] = n >= 2.0 ? fold[AS_M2][0] / (n - 1.0) : 0.0;
        out[2] = fold[AS_NZ][0];
        out[3] = fold[AS_GROUPS][0];
        out[4] = fold[AS_ZERO_VAR][0];
        out[5] = fold[AS_STD_SUM][0];
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
