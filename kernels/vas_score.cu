// Batched VAS scores (src/rl/vas.rs `score_item` is the reference): per item, from its
// rollouts' correctness and exact-length token ids, the pass rate P, OVS = P (1 - P), TDS
// (1 - self-BLEU-n with nltk's method2 smoothing, or normalised distinct-n) and
// VPS = alpha OVS + beta TDS. One block per item.
//
// n-gram counting is exact: a per-item open-addressing hash table in global scratch whose slot
// owner is the position of the first occurrence of the n-gram, so a probe compares the token
// windows themselves (a hash collision costs a probe, never a wrong count). Each slot counts
// the n-gram's occurrences per rollout; from those counts every rollout's clipped matches
// against the others (sum over its n-grams of min(own count, max count of any other rollout))
// and every rollout's number of distinct n-grams follow. All counting is in integers
// (atomics on integers commute), so results are deterministic even though which slot an
// n-gram lands in depends on the schedule; the table is cleared again at the end so that its
// memory, too, ends the same every run.
#include "common.cuh"

#define VAS_MAX_ROLLOUTS 256
#define VAS_EMPTY 0xffffffffu
enum { TDS_SELF_BLEU, TDS_DISTINCT };

__device__ __forceinline__ unsigned ngram_hash(const unsigned* w, int n) {
    unsigned long long h = 0x9e3779b97f4a7c15ull;
    for (int k = 0; k < n; k++) {
        h ^= w[k];
        h *= 0xff51afd7ed558ccdull;
        h ^= h >> 33;
    }
    return (unsigned)h;
}

__device__ __forceinline__ bool ngram_eq(const unsigned* a, const unsigned* b, int n) {
    for (int k = 0; k < n; k++)
        if (a[k] != b[k]) return false;
    return true;
}

// out: [items][4] = pass rate, OVS, TDS, VPS. table: scratch, item `it` owns
// table[table_at[2 it] ..] with capacity table_at[2 it + 1] (a power of two >= 2x its
// tokens): cap owner words, then cap x K count words. tok_off: [rollouts + 1] into tokens;
// item_off: [items + 1] into rollouts; correct: one value per rollout.
extern "C" __global__ void __launch_bounds__(256) vas_score_f32(float* out, unsigned* table, const long long* table_at,
                                                                const unsigned* tokens, const long long* tok_off,
                                                                const long long* item_off, const float* correct,
                                                                int metric, int max_n, float alpha, float beta) {
    SHARED(unsigned, matched, [VAS_MAX_ROLLOUTS]);
    SHARED(unsigned, distinct, [VAS_MAX_ROLLOUTS]);
    SHARED(double, logp, [VAS_MAX_ROLLOUTS]);
    SHARED(int, zero, [VAS_MAX_ROLLOUTS]);
    SHARED(unsigned, uni, [1]);
    SHARED(double, acc, [2]); // distinct-n: sum over orders, number of orders
    const long long it = blockIdx.x;
    const long long r0 = item_off[it];
    const int k = (int)(item_off[it + 1] - r0);
    DEVICE_CHECK(k <= VAS_MAX_ROLLOUTS);
    const long long base = tok_off[r0];
    unsigned* owner = table + table_at[2 * it];
    const long long cap = table_at[2 * it + 1];
    unsigned* counts = owner + cap;
    const long long words = cap * (1 + (long long)k);

    for (int i = threadIdx.x; i < k; i += blockDim.x) { logp[i] = 0.0; zero[i] = 0; }
    if (threadIdx.x == 0) { acc[0] = 0.0; acc[1] = 0.0; }
    const int orders = k >= 2 ? max_n : 0; // fewer than two rollouts: TDS 0
    for (int n = 1; n <= orders; n++) {
        for (long long s = threadIdx.x; s < words; s += blockDim.x) owner[s] = s < cap ? VAS_EMPTY : 0u;
        for (int i = threadIdx.x; i < k; i += blockDim.x) { matched[i] = 0; distinct[i] = 0; }
        if (threadIdx.x == 0) uni[0] = 0;
        __syncthreads();
        // Count every n-gram of every rollout.
        for (int i = 0; i < k; i++) {
            const long long t0 = tok_off[r0 + i], len = tok_off[r0 + i + 1] - t0;
            for (long long p = threadIdx.x; p + n <= len; p += blockDim.x) {
                const unsigned q = (unsigned)(t0 - base + p);
                const unsigned* w = tokens + t0 + p;
                long long h = ngram_hash(w, n) & (cap - 1);
                for (;;) {
                    const unsigned o = atomicCAS(&owner[h], VAS_EMPTY, q);
                    if (o == VAS_EMPTY || ngram_eq(tokens + base + o, w, n)) {
                        atomicAdd(&counts[h * k + i], 1u);
                        break;
                    }
                    h = (h + 1) & (cap - 1);
                }
            }
        }
        __syncthreads();
        // Per n-gram: each rollout's clipped matches against the largest count among the
        // others, and its distinct n-grams.
        for (long long s = threadIdx.x; s < cap; s += blockDim.x) {
            if (owner[s] == VAS_EMPTY) continue;
            const unsigned* c = counts + s * k;
            unsigned c1 = 0, c2 = 0;
            int o1 = -1;
            for (int j = 0; j < k; j++) {
                if (c[j] > c1) { c2 = c1; c1 = c[j]; o1 = j; }
                else if (c[j] > c2) c2 = c[j];
            }
            for (int j = 0; j < k; j++) {
                if (c[j] == 0) continue;
                const unsigned others = j == o1 ? c2 : c1;
                atomicAdd(&matched[j], c[j] < others ? c[j] : others);
                atomicAdd(&distinct[j], 1u);
            }
            atomicAdd(&uni[0], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            if (metric == TDS_SELF_BLEU) {
                for (int i = 0; i < k; i++) {
                    const long long len = tok_off[r0 + i + 1] - tok_off[r0 + i];
                    // nltk: the denominator is max(1, number of n-grams); method2 adds one to
                    // numerator and denominator for n >= 2.
                    const long long ng = len >= n - 1 ? len - (n - 1) : 0;
                    const double total = (double)(ng > 1 ? ng : 1);
                    const double m = (double)matched[i];
                    const double p = n == 1 ? m / total : (m + 1.0) / (total + 1.0);
                    if (p == 0.0) zero[i] = 1;
                    else logp[i] += log(p) / (double)max_n;
                }
            } else {
                unsigned long long s = 0, mx = 0;
                int nonempty = 0;
                for (int i = 0; i < k; i++) {
                    s += distinct[i];
                    mx = distinct[i] > mx ? distinct[i] : mx;
                    nonempty += distinct[i] > 0;
                }
                if (nonempty >= 2 && s != mx) {
                    acc[0] += (double)(uni[0] - mx) / (double)(s - mx);
                    acc[1] += 1.0;
                }
            }
        }
        __syncthreads();
    }
    // Leave the scratch as every run leaves it.
    if (orders > 0)
        for (long long s = threadIdx.x; s < words; s += blockDim.x) owner[s] = s < cap ? VAS_EMPTY : 0u;
    if (threadIdx.x != 0) return;

    double v = 0.0;
    if (orders > 0 && metric == TDS_SELF_BLEU) {
        double sum = 0.0;
        for (int i = 0; i < k; i++) {
            const long long c = tok_off[r0 + i + 1] - tok_off[r0 + i];
            // closest other length, the shorter on ties
            long long r = -1, best = 0;
            for (int j = 0; j < k; j++) {
                if (j == i) continue;
                const long long l = tok_off[r0 + j + 1] - tok_off[r0 + j];
                const long long d = l > c ? l - c : c - l;
                if (r < 0 || d < best || (d == best && l < r)) { r = l; best = d; }
            }
            const double bp = c > r ? 1.0 : (c == 0 ? 0.0 : exp(1.0 - (double)r / (double)c));
            sum += zero[i] ? 0.0 : bp * exp(logp[i]);
        }
        v = 1.0 - sum / (double)k;
    } else if (orders > 0) {
        v = acc[1] == 0.0 ? 0.0 : acc[0] / acc[1];
    }
    const float tds = (float)(v < 0.0 ? 0.0 : (v > 1.0 ? 1.0 : v));

    double cs = 0.0; // in rollout order, as the reference sums
    for (int i = 0; i < k; i++) cs += (double)correct[r0 + i];
    const float pass = k > 0 ? (float)(cs / (double)k) : 0.0f;
    const float pc = pass < 0.0f ? 0.0f : (pass > 1.0f ? 1.0f : pass);
    // Separate roundings (no FMA), as the reference's f32 arithmetic.
    const float ovs = __fmul_rn(pc, __fsub_rn(1.0f, pc));
    const float vps = __fadd_rn(__fmul_rn(alpha, ovs), __fmul_rn(beta, tds));
    out[it * 4 + 0] = pass;
    out[it * 4 + 1] = ovs;
    out[it * 4 + 2] = tds;
    out[it * 4 + 3] = vps;
}
