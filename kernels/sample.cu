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
// whose rank key (logit, then index) is >= a threshold key, and the threshold is the largest
// key at which the set still satisfies "count >= k or mass >= top_p" (both monotone in the
// threshold; the mass is the fixed-shape sum above, so the set is the reference's exactly).
//
// Two searches for that key, two entry points:
// - sample_tokens_f32: a radix select, 8 bits of the key a level from the top. One pass per
//   level builds a 256-bucket histogram in shared memory of the tokens that share the digits
//   fixed so far (count, mass, largest key per bucket; shared-memory atomics, each thread
//   folding runs of one bucket first so a crowded bucket is not hammered); suffix sums give
//   the count and the mass of the set at every candidate digit at once. Counts are exact. The
//   histogram's masses are summed in another order than the reference's, so they are used
//   only where they are certain: both sums of one set of non-negative weights lie within
//   gamma_(n-1) = (n-1) u / (1 - (n-1) u) of its real sum s (Higham, "Accuracy and Stability
//   of Numerical Algorithms", 2nd ed., section 4.2), with s <= 2, so they differ by less than
//   SLACK = 5e-16 (n + 1). A digit whose histogram mass is within SLACK of top_p is decided by
//   an exact fixed-shape pass (a bisection over such digits; rows without near-ties need none).
//   A level ends the search when the chosen bucket holds one token (its key is the threshold).
//   Random logits at vocabulary 151,936: 3-4 passes.
// - sample_tokens_bisect_f32: the baseline, bit by bit from the top (about 50 passes at
//   vocabulary 151,936), kept to check and time the radix search against.
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

// A temperature and its correctly rounded reciprocal. x / t is every pass's per-element f64
// division; `sample_div` gives its bits in three operations where a division takes about ten
// and a range check: q = x (1/t) is within an ulp of x / t, the residual x - q t is exact
// under an FMA, and one correction by the correctly rounded reciprocal rounds to the
// correctly rounded quotient (Markstein's theorem: P. Markstein, IBM J. Res. Dev. 34(1),
// 1990; D. Russinoff, Formal Verification of Floating-Point Hardware Design, lemma
// "markstein"). The host reference divides (src/rl/sampling.rs); src/rl/sampling.rs's
// `markstein_quotient_is_the_division` checks the identity on many millions of pairs.
struct SampleT {
    double t, inv;
};
__device__ __forceinline__ SampleT sample_t(double t) { return {t, __ddiv_rn(1.0, t)}; }
__device__ __forceinline__ double sample_div(float x, SampleT t) {
    const double xd = (double)x;
    const double q = __dmul_rn(xd, t.inv);
    // An infinite or NaN logit (q is too; a finite one gives a finite q): the division.
    if (!isfinite(q)) return __ddiv_rn(xd, t.t);
    const double r = __fma_rn(-q, t.t, xd);
    // r == 0: q is the quotient, with its sign (the correction would turn -0 into +0).
    return r == 0.0 ? q : __fma_rn(r, t.inv, q);
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

// The sampling weight of a token as the reference computes it: exp of its log-prob rounded to
// f32 (what the rollout records).
__device__ __forceinline__ double sample_weight(float x, SampleT t, double lse) {
    return exp((double)(float)__dsub_rn(sample_div(x, t), lse));
}

// Bits of ~index that vary over the vocabulary: from this bit up (within the low word) every
// key has ones, so a search sets them without a pass.
__device__ __forceinline__ int sample_index_bits(long long vocab) {
    int b = 0;
    while (b < 32 && (1ll << b) < vocab) b++;
    return b;
}

// The passes over lane `lane` of a row (elements lane, lane + SAMPLE_LANES, ... in order) that
// both forms run, one block a row and split: one piece of code, so both add the same values
// in the same order. The loops are unrolled so that a thread has several loads (and f64 exps)
// in flight: one at a time, a block of one row waited on memory latency (H100, 64 rows: 300
// us greedy, 625 us at T 0.6). The additions stay in element order: the same bits.

// The lane's maximum (into *mx) and whether it holds a NaN or +inf (*bad = 1).
__device__ __forceinline__ void sample_lane_max(const float* x, long long vocab, int lane, float* mx, float* bad) {
#pragma unroll 8
    for (long long i = lane; i < vocab; i += SAMPLE_LANES) {
        const float v = x[i];
        if (v != v || v == -neg_inf()) *bad = 1.0f;
        else *mx = fmaxf(*mx, v);
    }
}

// The lane's sum of exp(x / t - m): the log-sum-exp's terms.
__device__ __forceinline__ double sample_lane_exp_sum(const float* x, long long vocab, int lane, SampleT t, double m) {
    double s = 0.0;
#pragma unroll 8
    for (long long i = lane; i < vocab; i += SAMPLE_LANES) s = __dadd_rn(s, exp(__dsub_rn(sample_div(x[i], t), m)));
    return s;
}

// The lane's sum of the weights of the tokens whose rank key is >= thr.
__device__ __forceinline__ double sample_lane_kept_mass(const float* x, long long vocab, int lane,
                                                        unsigned long long thr, SampleT t, double lse) {
    double mass = 0.0;
#pragma unroll 8
    for (long long i = lane; i < vocab; i += SAMPLE_LANES)
        if (sample_rank_key(x[i], i) >= thr) mass = __dadd_rn(mass, sample_weight(x[i], t, lse));
    return mass;
}

// The fixed-shape mass of the set {key >= cand} (every thread calls it; every thread gets it).
__device__ double sample_kept_mass(const float* x, long long vocab, unsigned long long cand, SampleT t, double lse,
                                   double* red) {
    return sample_tree(sample_lane_kept_mass(x, vocab, threadIdx.x, cand, t, lse), red);
}

// The baseline search: the threshold bit by bit from the top. Invariant: the set at thr
// satisfies the condition (at thr = 0 it is the whole row, and count >= k).
__device__ unsigned long long sample_threshold_bisect(const float* x, long long vocab, long long k, float top_p,
                                                      SampleT t, double lse, double* red, double* part) {
    const int tid = threadIdx.x;
    const int index_bits = sample_index_bits(vocab);
    unsigned long long thr = 0;
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
                if (top_p < 1.0f) mass = __dadd_rn(mass, sample_weight(x[i], t, lse));
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
    return thr;
}

// Shared memory of the radix search: one level's histogram and its suffix sums.
struct SampleRadixSmem {
    unsigned* cnt;            // [256] tokens per bucket
    double* mass;             // [256] their weights (any order)
    unsigned long long* key;  // [256] their largest key
    unsigned* scnt;           // [256] tokens in the set at each digit
    double* smass;            // [256] its mass (any order)
    int* status;              // [256] 1: the set satisfies the rule, 0: it does not, 2: too close to call
    int* pick;                // [2]
};

// Adds a thread's run of tokens of one bucket to the histogram.
__device__ __forceinline__ void sample_radix_flush(const SampleRadixSmem& h, int d, unsigned c, double m,
                                                   unsigned long long key) {
    if (d < 0) return;
    atomicAdd(&h.cnt[d], c);
    atomicAdd(&h.mass[d], m);
    atomicMax(&h.key[d], key);
}

// The radix search (see the top of the file). Invariant as in the bisection: the set at
// prefix (remaining bits 0) satisfies the rule, and `above` (the tokens whose key is above
// every key with the prefix) does not.
__device__ unsigned long long sample_threshold_radix(const float* x, long long vocab, long long k, float top_p,
                                                     SampleT t, double lse, double* red, const SampleRadixSmem& h,
                                                     bool exact_only) {
    const int tid = threadIdx.x;
    const bool use_p = top_p < 1.0f;
    const double p = (double)top_p;
    const int index_bits = sample_index_bits(vocab);
    // exact_only: every mass decision by an exact pass (tests of that path).
    const double slack = exact_only ? __longlong_as_double(0x7ff0000000000000ll) : 5e-16 * (double)(vocab + 1);
    unsigned long long prefix = 0;
    unsigned above_cnt = 0;
    double above_mass = 0.0;
    for (int shift = 56; shift >= 0; shift -= 8) {
        if (shift < 32 && shift >= index_bits) {
            prefix |= 0xffull << shift; // every key with the prefix has these bits set
            continue;
        }
        const unsigned long long hi_mask = shift == 56 ? 0ull : ~0ull << (shift + 8);
        h.cnt[tid] = 0;
        h.mass[tid] = 0.0;
        h.key[tid] = 0;
        __syncthreads();
        int cur = -1;
        unsigned c = 0;
        double m = 0.0;
        unsigned long long best = 0;
        for (long long i = tid; i < vocab; i += SAMPLE_LANES) {
            const unsigned long long key = sample_rank_key(x[i], i);
            if ((key & hi_mask) != prefix) continue;
            const int d = (int)((key >> shift) & 0xff);
            if (d != cur) {
                sample_radix_flush(h, cur, c, m, best);
                cur = d;
                c = 0;
                m = 0.0;
                best = 0;
            }
            c++;
            if (use_p) m += sample_weight(x[i], t, lse);
            best = key > best ? key : best;
        }
        sample_radix_flush(h, cur, c, m, best);
        __syncthreads();
        // Thread d: the set at threshold prefix | d << shift is `above` plus buckets d..255.
        unsigned sc = above_cnt;
        double sm = above_mass;
        for (int j = SAMPLE_LANES - 1; j >= tid; j--) {
            sc += h.cnt[j];
            sm += h.mass[j];
        }
        h.scnt[tid] = sc;
        h.smass[tid] = sm;
        int st = 0;
        if ((long long)sc >= k || (use_p && sm - slack >= p)) st = 1;
        else if (use_p && sm + slack >= p) st = 2;
        if (tid == 0) st = 1; // the set at the prefix itself: true by the invariant
        h.status[tid] = st;
        __syncthreads();
        if (tid == 0) {
            // The largest digit known to satisfy the rule, and the undecided digits above it
            // (up to the first known not to, or past 255: the set `above`).
            int lo = 0;
            for (int d = SAMPLE_LANES - 1; d > 0; d--)
                if (h.status[d] == 1) {
                    lo = d;
                    break;
                }
            int hi = lo + 1;
            while (hi < SAMPLE_LANES && h.status[hi] == 2) hi++;
            h.pick[0] = lo;
            h.pick[1] = hi;
        }
        __syncthreads();
        int lo = h.pick[0], hi = h.pick[1];
        while (hi - lo > 1) {
            // Undecided digits fail the count (else they would be known), so only the exact
            // mass decides; lo and hi are the same on every thread, so every thread folds.
            const int mid = (lo + hi) / 2;
            const unsigned long long cand = prefix | ((unsigned long long)mid << shift);
            if (sample_kept_mass(x, vocab, cand, t, lse, red) >= p) lo = mid;
            else hi = mid;
        }
        prefix |= (unsigned long long)lo << shift;
        const unsigned in_bucket = h.cnt[lo];
        const unsigned long long only = h.key[lo];
        if (lo < SAMPLE_LANES - 1) {
            above_cnt = h.scnt[lo + 1];
            above_mass = h.smass[lo + 1];
        }
        __syncthreads(); // the next level rewrites the histogram
        // One token left with the prefix: the set at its key is the set at the prefix, and any
        // larger key leaves only `above`.
        if (in_bucket == 1) return only;
    }
    return prefix;
}

// The draw of row `row` from its lane sums `part` [SAMPLE_LANES] of the kept weights and their
// tree fold `total`, by the first warp of a block (threads 0..31; `w` 32 doubles of shared
// memory). Thread 0 walks the lanes, then the chosen lane's elements, subtracting in order; the
// warp computes the weights of the next 32 elements of the lane at once (each an f64 exp) into
// `w`, so thread 0's walk waits on no exp: the same values subtracted in the same order as a
// walk by one thread, the same bits.
__device__ void sample_draw(unsigned* tokens, float* logprobs, long long row, const float* x, long long vocab,
                            SampleT t, double lse, unsigned long long thr, const double* part, double total,
                            const unsigned* draws, double* w) {
    const int tid = threadIdx.x;
    const unsigned* d = draws + row * 5;
    int lane = -1;
    double target = 0.0;
    if (tid == 0) {
        const double u =
            philox_uniform(((unsigned long long)d[1] << 32) | d[0], ((unsigned long long)d[3] << 32) | d[2], d[4]);
        target = __dmul_rn(u, total);
        int last_lane = 0;
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
    }
    lane = __shfl_sync(FULL_MASK, lane, 0);
    long long tok = lane;
    int done = 0;
    for (long long base = lane; base < vocab && !done; base += 32ll * SAMPLE_LANES) {
        const long long i = base + (long long)tid * SAMPLE_LANES;
        // 0 for tokens outside the kept set and past the row: the walk skips them.
        w[tid] = (i < vocab && sample_rank_key(x[i], i) >= thr) ? sample_weight(x[i], t, lse) : 0.0;
        __syncwarp();
        if (tid == 0) {
            for (int j = 0; j < 32; j++) {
                if (w[j] > 0.0) {
                    tok = base + (long long)j * SAMPLE_LANES;
                    if (target < w[j]) {
                        done = 1;
                        break;
                    }
                    target = __dsub_rn(target, w[j]);
                }
            }
        }
        done = __shfl_sync(FULL_MASK, done, 0);
        __syncwarp(); // w is rewritten by the next chunk
    }
    if (tid == 0) {
        tokens[row] = (unsigned)tok;
        logprobs[row] = (float)__dsub_rn(sample_div(x[tok], t), lse);
    }
}

// The whole kernel; `search` picks the threshold search: 0 radix, 1 radix deciding every
// mass by exact passes (slower; for tests), 2 the bisection.
__device__ __forceinline__ void sample_tokens_impl(unsigned* tokens, float* logprobs, const float* logits,
                                                   const unsigned* draws, long long vocab, float temperature,
                                                   long long top_k, float top_p, int search) {
    SHARED(double, red, [SAMPLE_LANES]);
    SHARED(double, part, [SAMPLE_LANES]);
    SHARED(float, fscratch, [32]);
    DEVICE_CHECK(blockDim.x == SAMPLE_LANES);
    const int tid = threadIdx.x;
    const long long row = blockIdx.x;
    const float* x = logits + row * vocab;

    // Maximum, and whether any logit is NaN or +inf (the row cannot be sampled then).
    float mx = neg_inf(), bad = 0.0f;
    sample_lane_max(x, vocab, tid, &mx, &bad);
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
    const SampleT t = sample_t(greedy ? 1.0 : (double)temperature);
    const double m = sample_div(mx, t);
    const double lse = __dadd_rn(m, log(sample_tree(sample_lane_exp_sum(x, vocab, tid, t, m), red)));

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
            logprobs[row] = (float)__dsub_rn(sample_div(x[b], t), lse);
        }
        return;
    }

    // The kept set: rank key >= thr (thr = 0: the whole row).
    const long long k = (top_k <= 0 || top_k > vocab) ? vocab : top_k;
    unsigned long long thr = 0;
    if (top_p < 1.0f || k < vocab) {
        if (search != 2) {
            SHARED(unsigned, h_cnt, [SAMPLE_LANES]);
            SHARED(double, h_mass, [SAMPLE_LANES]);
            SHARED(unsigned long long, h_key, [SAMPLE_LANES]);
            SHARED(unsigned, h_scnt, [SAMPLE_LANES]);
            SHARED(double, h_smass, [SAMPLE_LANES]);
            SHARED(int, h_status, [SAMPLE_LANES]);
            SHARED(int, h_pick, [2]);
            const SampleRadixSmem h = {h_cnt, h_mass, h_key, h_scnt, h_smass, h_status, h_pick};
            thr = sample_threshold_radix(x, vocab, k, top_p, t, lse, red, h, search == 1);
        } else {
            thr = sample_threshold_bisect(x, vocab, k, top_p, t, lse, red, part);
        }
    }

    // Lane sums of the kept weights, their total, and the draw on thread 0.
    const double mine = sample_lane_kept_mass(x, vocab, tid, thr, t, lse);
    part[tid] = mine;
    const double total = sample_tree(mine, red);
    if (tid >= 32) return;
    sample_draw(tokens, logprobs, row, x, vocab, t, lse, thr, part, total, draws, red);
}

// tokens, logprobs: [rows]. logits: [rows][vocab]. draws: [rows][5] = seed lo, seed hi,
// sequence lo, sequence hi, step (Philox key and counter, kernels/philox.cuh). temperature 0 =
// greedy; top_k 0 = all; top_p in (0, 1]. exact_masses 1: the radix search decides every
// top-p digit by exact passes, ignoring the histogram's masses (slower; tests hold that path
// to the reference). One block of SAMPLE_LANES threads per row.
extern "C" __global__ void __launch_bounds__(256)
    sample_tokens_f32(unsigned* tokens, float* logprobs, const float* logits, const unsigned* draws, long long vocab,
                      float temperature, long long top_k, float top_p, int exact_masses) {
    sample_tokens_impl(tokens, logprobs, logits, draws, vocab, temperature, top_k, top_p, exact_masses ? 1 : 0);
}

// The same with the baseline bit-by-bit search.
extern "C" __global__ void __launch_bounds__(256)
    sample_tokens_bisect_f32(unsigned* tokens, float* logprobs, const float* logits, const unsigned* draws,
                             long long vocab, float temperature, long long top_k, float top_p) {
    sample_tokens_impl(tokens, logprobs, logits, draws, vocab, temperature, top_k, top_p, 2);
}

// ---- the split form: a row's lanes over several blocks -------------------------------------
// With few rows (a decode step of 64 sequences) one block a row leaves half of an H100's 132
// SMs idle, and the f64 divisions and exps of the passes are the kernel's bound (docs/perf.md).
// For the rule without a kept-set search (temperature > 0, top_p 1, top_k off: MMR1's rollout
// rule) the row's SAMPLE_LANES lanes are spread over `split` blocks of SAMPLE_LANES / split
// threads; lane l is still summed by one thread in element order and the lane sums are folded
// by the same tree, in the launch after: the same bits as sample_tokens_f32. Four launches:
// max, lane sums of exp(x/t - m), lane sums of the weights, the draw (one warp a row).
// Scratch: pmax, pbad [rows][split]; lanes1, lanes2 [rows][SAMPLE_LANES]; lse [rows].

// This block's lane (SAMPLE_LANES / split threads a block, blockIdx.y the block of the row).
__device__ __forceinline__ int sample_split_lane() { return blockIdx.y * blockDim.x + threadIdx.x; }

// The row's maximum and whether it holds a NaN or +inf, from the max pass's block partials.
__device__ __forceinline__ bool sample_split_row_ok(const float* pmax, const float* pbad, long long row, int split,
                                                    float* mx) {
    float m = neg_inf();
    bool bad = false;
    for (int b = 0; b < split; b++) {
        m = fmaxf(m, pmax[row * split + b]);
        bad = bad || pbad[row * split + b] > 0.0f;
    }
    *mx = m;
    return !bad && m != neg_inf();
}

// The fixed tree of sample_tree over lane sums already in `red` [SAMPLE_LANES], by a block of
// any size (the same pairs added: the same bits); every thread gets the sum.
__device__ __forceinline__ double sample_fold_lanes(double* red) {
    __syncthreads();
    for (int stride = SAMPLE_LANES / 2; stride > 0; stride >>= 1) {
        for (int j = threadIdx.x; j < stride; j += blockDim.x) red[j] = __dadd_rn(red[j], red[j + stride]);
        __syncthreads();
    }
    const double s = red[0];
    __syncthreads();
    return s;
}

extern "C" __global__ void __launch_bounds__(256)
    sample_split_max_f32(float* pmax, float* pbad, const float* logits, long long vocab) {
    SHARED(float, fscratch, [32]);
    DEVICE_CHECK(blockDim.x * gridDim.y == SAMPLE_LANES);
    const long long row = blockIdx.x;
    const float* x = logits + row * vocab;
    float mx = neg_inf(), bad = 0.0f;
    sample_lane_max(x, vocab, sample_split_lane(), &mx, &bad);
    mx = block_max(mx, fscratch);
    bad = block_sum(bad, fscratch);
    if (threadIdx.x == 0) {
        pmax[row * gridDim.y + blockIdx.y] = mx;
        pbad[row * gridDim.y + blockIdx.y] = bad;
    }
}

extern "C" __global__ void __launch_bounds__(256)
    sample_split_lse_f32(double* lanes1, const float* pmax, const float* pbad, const float* logits, long long vocab,
                         float temperature) {
    DEVICE_CHECK(blockDim.x * gridDim.y == SAMPLE_LANES);
    const long long row = blockIdx.x;
    float mx;
    if (!sample_split_row_ok(pmax, pbad, row, gridDim.y, &mx)) return;
    const float* x = logits + row * vocab;
    const SampleT t = sample_t((double)temperature);
    const double m = sample_div(mx, t);
    const int lane = sample_split_lane();
    lanes1[row * SAMPLE_LANES + lane] = sample_lane_exp_sum(x, vocab, lane, t, m);
}

extern "C" __global__ void __launch_bounds__(256)
    sample_split_weights_f32(double* lanes2, double* lse_out, const double* lanes1, const float* pmax,
                             const float* pbad, const float* logits, long long vocab, float temperature) {
    SHARED(double, red, [SAMPLE_LANES]);
    DEVICE_CHECK(blockDim.x * gridDim.y == SAMPLE_LANES);
    const long long row = blockIdx.x;
    float mx;
    if (!sample_split_row_ok(pmax, pbad, row, gridDim.y, &mx)) return;
    for (int j = threadIdx.x; j < SAMPLE_LANES; j += blockDim.x) red[j] = lanes1[row * SAMPLE_LANES + j];
    const SampleT t = sample_t((double)temperature);
    const double lse = __dadd_rn(sample_div(mx, t), log(sample_fold_lanes(red)));
    if (blockIdx.y == 0 && threadIdx.x == 0) lse_out[row] = lse;
    const float* x = logits + row * vocab;
    const int lane = sample_split_lane();
    // Every token kept (threshold key 0), as sample_tokens_f32 keeps them under this rule.
    lanes2[row * SAMPLE_LANES + lane] = sample_lane_kept_mass(x, vocab, lane, 0, t, lse);
}

// One warp a row: the total of the weights, then the draw of sample_tokens_f32.
extern "C" __global__ void __launch_bounds__(32)
    sample_split_draw_f32(unsigned* tokens, float* logprobs, const double* lanes2, const double* lse_in,
                          const float* pmax, const float* pbad, const float* logits, const unsigned* draws,
                          long long vocab, float temperature, int split) {
    SHARED(double, part, [SAMPLE_LANES]);
    SHARED(double, red, [SAMPLE_LANES]);
    DEVICE_CHECK(blockDim.x == 32);
    const long long row = blockIdx.x;
    float mx;
    if (!sample_split_row_ok(pmax, pbad, row, split, &mx)) {
        if (threadIdx.x == 0) {
            tokens[row] = SAMPLE_INVALID;
            logprobs[row] = __int_as_float(0x7fc00000);
        }
        return;
    }
    for (int j = threadIdx.x; j < SAMPLE_LANES; j += 32) part[j] = red[j] = lanes2[row * SAMPLE_LANES + j];
    const double total = sample_fold_lanes(red);
    sample_draw(tokens, logprobs, row, logits + row * vocab, vocab, sample_t((double)temperature), lse_in[row], 0, part, total,
                draws, red);
}
