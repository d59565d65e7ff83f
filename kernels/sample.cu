// Token sampling on the device (src/rl/sampling.rs `sample_row` is the reference, and the
// place where the rule is written down): per row of a [rows x vocab] logits buffer,
// temperature, top-k, top-p, a Philox4x32-10 uniform for the row's (seed, sequence, step),
// and the drawn token id with its log-prob under softmax(logits / T). Only ids and log-probs
// leave the kernel. One block of SAMPLE_LANES threads per row.
//
// Bit-for-bit agreement with the reference comes from doing the same f64 arithmetic in the
// same order: thread l sums elements l, l + LANES, ... in order (its "lane"), the lane
// partials are folded by a fixed pairwise tree, and the draw walks lanes then elements in
// order on one thread. The kept set of top-k/top-p is found without sorting: it is every token
// whose rank key (logit, then index) is >= a threshold key, and the threshold is found bit by
// bit from the top (64 passes over the row), keeping a bit when the set at that threshold
// still satisfies "count >= k or mass >= top_p" (both monotone in the threshold).
#include "common.cuh"
#include "philox.cuh"

#define SAMPLE_LANES 256
#define SAMPLE_INVALID 0xffffffffu

// Larger key = ranked earlier: larger logit, then smaller index; -0 ties with +0.
__device__ __forceinline__ unsigned long long sample_rank_key(float x, long long i) {
    if (x == 0.0f) x = 0.0f;
    const unsigned b = __float_as_uint(x);
    const unsigned ord = (b >> 31) ? ~b : (b | 0x80000000u);
    return ((unsigned long long)ord << 32) | (unsigned long long)(~(unsigned)i);
}

// The fixed fold of one value per thread (stride 128, 64, ..., 1); every thread gets the sum.
__device__ __forceinline__ double sample_tree(double mine, double* red) {
    const int tid = threadIdx.x;
    red[tid] = mine;
    __syncthreads();
    for (int stride = SAMPLE_LANES / 2; stride > 0; stride >>= 1) {
        if (tid < stride) red[tid] = __dadd_rn(red[tid], red[tid + stride]);
        __syncthreads();
    }
    const double s = red[0];
    __syncthreads(); // red is reused by the next fold
    return s;
}

// tokens, logprobs: [rows]. logits: [rows][vocab]. draws: [rows][5] = seed lo, seed hi,
// sequence lo, sequence hi, step (Philox key and counter, kernels/philox.cuh). temperature 0 =
// greedy; top_k 0 = all; top_p in (0, 1].
extern "C" __global__ void __launch_bounds__(256)
    sample_tokens_f32(unsigned* tokens, float* logprobs, const float* logits, const unsigned* draws, long long vocab,
                      float temperature, long long top_k, float top_p) {
    SHARED(double, red, [SAMPLE_LANES]);
    SHARED(double, part, [SAMPLE_LANES]);
    SHARED(float, fscratch, [32]);
    DEVICE_CHECK(blockDim.x == SAMPLE_LANES);
    const int tid = threadIdx.x;
    const long long row = blockIdx.x;
    const float* x = logits + row * vocab;

    // Maximum, and whether any logit is NaN or +inf (the row cannot be sampled then).
    float mx = neg_inf(), bad = 0.0f;
    for (long long i = tid; i < vocab; i += SAMPLE_LANES) {
        const float v = x[i];
        if (v != v || v == -neg_inf()) bad = 1.0f;
        else mx = fmaxf(mx, v);
    }
    mx = block_max(mx, fscratch);
    bad = block_sum(bad, fscratch);
    if (bad > 0.0f || mx == neg_inf()) {
        if (tid == 0) {
            tokens[row] = SAMPLE_INVALID;
            logprobs[row] = __int_as_float(0x7fc00000);
        }
        return;
    }
    const bool greedy = temperature == 0.0f;
    const double t = greedy ? 1.0 : (double)temperature;
    const double m = (double)mx / t;
    double s = 0.0;
    for (long long i = tid; i < vocab; i += SAMPLE_LANES) s = __dadd_rn(s, exp(__dsub_rn((double)x[i] / t, m)));
    const double lse = __dadd_rn(m, log(sample_tree(s, red)));

    if (greedy) {
        // First index of the maximum: the smallest i with x[i] == mx (counts fold exactly).
        double first = (double)vocab;
        for (long long i = tid; i < vocab; i += SAMPLE_LANES)
            if (x[i] == mx) {
                first = (double)i;
                break;
            }
        red[tid] = first;
        __syncthreads();
        for (int stride = SAMPLE_LANES / 2; stride > 0; stride >>= 1) {
            if (tid < stride) red[tid] = fmin(red[tid], red[tid + stride]);
            __syncthreads();
        }
        if (tid == 0) {
            const long long b = (long long)red[0];
            tokens[row] = (unsigned)b;
            logprobs[row] = (float)__dsub_rn((double)x[b] / t, lse);
        }
        return;
    }

    // The kept set: rank key >= thr. Invariant: the set at thr satisfies the condition (at
    // thr = 0 it is the whole row, and count >= k). The low word of a key is ~index, so for a
    // vocabulary below 2^B its bits from B up are 1 in every key: setting them keeps the set,
    // and they are set without a pass.
    const long long k = (top_k <= 0 || top_k > vocab) ? vocab : top_k;
    unsigned long long thr = 0;
    if (top_p < 1.0f || k < vocab) {
        int index_bits = 0;
        while (index_bits < 32 && (1ll << index_bits) < vocab) index_bits++;
        for (int bit = 63; bit >= 0; bit--) {
            const unsigned long long cand = thr | (1ull << bit);
            if (bit < 32 && bit >= index_bits) {
                thr = cand;
                continue;
            }
            double cnt = 0.0, mass = 0.0;
            for (long long i = tid; i < vocab; i += SAMPLE_LANES) {
                if (sample_rank_key(x[i], i) >= cand) {
                    cnt += 1.0;
                    if (top_p < 1.0f) {
                        const float lp = (float)__dsub_rn((double)x[i] / t, lse);
                        mass = __dadd_rn(mass, exp((double)lp));
                    }
                }
            }
            // Both folds in one tree; counts are integers below 2^53, so any fold is exact.
            red[tid] = cnt;
            part[tid] = mass;
            __syncthreads();
            for (int stride = SAMPLE_LANES / 2; stride > 0; stride >>= 1) {
                if (tid < stride) {
                    red[tid] = red[tid] + red[tid + stride];
                    part[tid] = __dadd_rn(part[tid], part[tid + stride]);
                }
                __syncthreads();
            }
            const bool ok = red[0] >= (double)k || (top_p < 1.0f && part[0] >= (double)top_p);
            __syncthreads(); // red and part are rewritten by the next pass
            if (ok) thr = cand;
        }
    }

    // Lane sums of the kept weights, their total, and the draw on thread 0.
    double mine = 0.0;
    for (long long i = tid; i < vocab; i += SAMPLE_LANES)
        if (sample_rank_key(x[i], i) >= thr) {
            const float lp = (float)__dsub_rn((double)x[i] / t, lse);
            mine = __dadd_rn(mine, exp((double)lp));
        }
    part[tid] = mine;
    const double total = sample_tree(mine, red);
    if (tid != 0) return;
    const unsigned* d = draws + row * 5;
    const double u = philox_uniform(((unsigned long long)d[1] << 32) | d[0], ((unsigned long long)d[3] << 32) | d[2], d[4]);
    double target = __dmul_rn(u, total);
    int lane = -1, last_lane = 0;
    for (int l = 0; l < SAMPLE_LANES; l++) {
        if (part[l] > 0.0) {
            last_lane = l;
            if (target < part[l]) {
                lane = l;
                break;
            }
            target = __dsub_rn(target, part[l]);
        }
    }
    if (lane < 0) {
        // Rounding left the target past the last weight: the last positive weight is drawn.
        lane = last_lane;
        target = __longlong_as_double(0x7ff0000000000000ll); // +inf: never below a weight
    }
    long long tok = lane;
    for (long long i = lane; i < vocab; i += SAMPLE_LANES) {
        if (sample_rank_key(x[i], i) < thr) continue;
        const double w = exp((double)(float)__dsub_rn((double)x[i] / t, lse));
        if (w > 0.0) {
            tok = i;
            if (target < w) break;
            target = __dsub_rn(target, w);
        }
    }
    tokens[row] = (unsigned)tok;
    logprobs[row] = (float)__dsub_rn((double)x[tok] / t, lse);
}
