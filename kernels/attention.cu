// Causal grouped-query attention over packed spans: a straightforward, deterministic version
// (one block per query row and head, keys in tiles of the block size, online softmax).
// A tiled flash kernel replaces it later; this one is the correct baseline.
//
// Work lists come from the host:
//   q items  (4 ints each): query row, first kv row of its span, number of keys it sees, unused
//   kv items (4 ints each): kv row, first query row of its span, span's q_len, first query index
//                           (within the span) that sees this key
#include "common.cuh"
#include "mma.cuh" // bf16_bits

#define ATT_TILE 128   // = blockDim.x
#define ATT_MAXD 256
#define ATT_PER_THREAD (ATT_MAXD / ATT_TILE)

extern "C" __global__ void attn_fwd_f32(real* out, float* lse, const real* q, const real* k, const real* v,
                                        const int* items, int n_heads, int n_kv, int d, float scale) {
    SHARED(float, qs, [ATT_MAXD]);
    SHARED(float, ps, [ATT_TILE]);
    SHARED(float, scratch, [32]);
    const int it = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
    const long long qrow = items[4 * it];
    const long long kv0 = items[4 * it + 1];
    const int nk = items[4 * it + 2];
    const int kvh = h / (n_heads / n_kv);
    for (int c = tid; c < d; c += ATT_TILE) qs[c] = q[(qrow * n_heads + h) * d + c];
    __syncthreads();
    float m = neg_inf(), l = 0.0f;
    float acc[ATT_PER_THREAD];
    for (int a = 0; a < ATT_PER_THREAD; a++) acc[a] = 0.0f;
    for (int t0 = 0; t0 < nk; t0 += ATT_TILE) {
        const int j = t0 + tid;
        float s = neg_inf();
        if (j < nk) {
            const real* kr = k + ((kv0 + j) * n_kv + kvh) * d;
            float dot = 0.0f;
            for (int c = 0; c < d; c++) dot += qs[c] * kr[c];
            s = dot * scale;
        }
        const float mnew = fmaxf(m, block_max(s, scratch));
        const float p = j < nk ? expf(s - mnew) : 0.0f;
        ps[tid] = p;
        const float lt = block_sum(p, scratch); // its barriers also publish ps
        const float corr = expf(m - mnew);      // 0 on the first tile (m = -inf)
        l = l * corr + lt;
        const int nt = nk - t0 < ATT_TILE ? nk - t0 : ATT_TILE;
        for (int a = 0; a < ATT_PER_THREAD; a++) {
            const int c = tid + a * ATT_TILE;
            if (c < d) {
                float o = acc[a] * corr;
                for (int jj = 0; jj < nt; jj++) o += ps[jj] * v[((kv0 + t0 + jj) * n_kv + kvh) * d + c];
                acc[a] = o;
            }
        }
        m = mnew;
        __syncthreads(); // ps is rewritten by the next tile
    }
    for (int a = 0; a < ATT_PER_THREAD; a++) {
        const int c = tid + a * ATT_TILE;
        if (c < d) out[(qrow * n_heads + h) * d + c] = acc[a] / l;
    }
    if (tid == 0) lse[qrow * n_heads + h] = m + logf(l);
}

// D[row, h] = dO . O, one warp per (query row, head), 8 warps (items) a block. (A block of one
// warp each gave 57,344 blocks of 32 threads a layer at Qwen2.5-0.5B's 4,096 x 14 heads, half
// an SM's threads at most: block scheduling, not the 29 MB read, set the time.) With `dout16`
// (else null) it also writes the bf16 rounding of the dO rows it reads there: the copy the
// flash backward kernels read, which a conversion launch made by reading dO again.
extern "C" __global__ void __launch_bounds__(256) attn_bwd_dot_f32(float* dsum, unsigned short* dout16,
                                                                   const real* dout, const real* out,
                                                                   const int* items, int n_items, int n_heads, int d) {
    const int item = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (item >= n_items) return; // warp-uniform
    const long long qrow = items[4 * item];
    const int h = blockIdx.y;
    const long long base = (qrow * n_heads + h) * d;
    float s = 0.0f;
    const int lane = threadIdx.x & 31;
    for (int c = lane; c < d; c += 32) {
        const float g = dout[base + c];
        s += g * out[base + c];
        if (dout16) dout16[base + c] = bf16_bits(g);
    }
    s = warp_sum(s);
    if (lane == 0) dsum[qrow * n_heads + h] = s;
}

// dq for one (query row, head): sum over visible keys of ds_j k_j.
extern "C" __global__ void attn_bwd_dq_f32(real* dq, const real* dout, const real* q, const real* k,
                                           const real* v, const float* lse, const float* dsum, const int* items,
                                           int n_heads, int n_kv, int d, float scale) {
    SHARED(float, qs, [ATT_MAXD]);
    SHARED(float, dos, [ATT_MAXD]);
    SHARED(float, dss, [ATT_TILE]);
    const int it = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
    const long long qrow = items[4 * it];
    const long long kv0 = items[4 * it + 1];
    const int nk = items[4 * it + 2];
    const int kvh = h / (n_heads / n_kv);
    const long long qb = (qrow * n_heads + h) * d;
    for (int c = tid; c < d; c += ATT_TILE) {
        qs[c] = q[qb + c];
        dos[c] = dout[qb + c];
    }
    const float L = lse[qrow * n_heads + h], D = dsum[qrow * n_heads + h];
    __syncthreads();
    float acc[ATT_PER_THREAD];
    for (int a = 0; a < ATT_PER_THREAD; a++) acc[a] = 0.0f;
    for (int t0 = 0; t0 < nk; t0 += ATT_TILE) {
        const int j = t0 + tid;
        float ds = 0.0f;
        if (j < nk) {
            const long long kb = ((kv0 + j) * n_kv + kvh) * d;
            float s = 0.0f, dp = 0.0f;
            for (int c = 0; c < d; c++) {
                s += qs[c] * k[kb + c];
                dp += dos[c] * v[kb + c];
            }
            const float p = expf(s * scale - L);
            ds = p * (dp - D) * scale;
        }
        dss[tid] = ds;
        __syncthreads();
        const int nt = nk - t0 < ATT_TILE ? nk - t0 : ATT_TILE;
        for (int a = 0; a < ATT_PER_THREAD; a++) {
            const int c = tid + a * ATT_TILE;
            if (c < d) {
                float o = acc[a];
                for (int jj = 0; jj < nt; jj++) o += dss[jj] * k[((kv0 + t0 + jj) * n_kv + kvh) * d + c];
                acc[a] = o;
            }
        }
        __syncthreads();
    }
    for (int a = 0; a < ATT_PER_THREAD; a++) {
        const int c = tid + a * ATT_TILE;
        if (c < d) dq[qb + c] = acc[a];
    }
}

// dk, dv for one (kv row, kv head): sums over the query heads of its group and the queries
// that see this key, in a fixed order (head, then query) — no atomics.
extern "C" __global__ void attn_bwd_dkv_f32(real* dk, real* dv, const real* dout, const real* q, const real* k,
                                            const real* v, const float* lse, const float* dsum,
                                            const int* kv_items, int n_heads, int n_kv, int d, float scale) {
    SHARED(float, ks, [ATT_MAXD]);
    SHARED(float, vs, [ATT_MAXD]);
    SHARED(float, ps, [ATT_TILE]);
    SHARED(float, dss, [ATT_TILE]);
    const int it = blockIdx.x, kvh = blockIdx.y, tid = threadIdx.x;
    const long long kvrow = kv_items[4 * it];
    const long long q0 = kv_items[4 * it + 1];
    const int qlen = kv_items[4 * it + 2];
    const int i0 = kv_items[4 * it + 3];
    const int group = n_heads / n_kv;
    const long long kb = (kvrow * n_kv + kvh) * d;
    for (int c = tid; c < d; c += ATT_TILE) {
        ks[c] = k[kb + c];
        vs[c] = v[kb + c];
    }
    __syncthreads();
    float gk[ATT_PER_THREAD], gv[ATT_PER_THREAD];
    for (int a = 0; a < ATT_PER_THREAD; a++) gk[a] = gv[a] = 0.0f;
    for (int gi = 0; gi < group; gi++) {
        const int h = kvh * group + gi;
        for (int t0 = i0; t0 < qlen; t0 += ATT_TILE) {
            const int i = t0 + tid;
            float p = 0.0f, ds = 0.0f;
            if (i < qlen) {
                const long long qrow = q0 + i;
                const long long qb = (qrow * n_heads + h) * d;
                float s = 0.0f, dp = 0.0f;
                for (int c = 0; c < d; c++) {
                    s += q[qb + c] * ks[c];
                    dp += dout[qb + c] * vs[c];
                }
                p = expf(s * scale - lse[qrow * n_heads + h]);
                ds = p * (dp - dsum[qrow * n_heads + h]) * scale;
            }
            ps[tid] = p;
            dss[tid] = ds;
            __syncthreads();
            const int nt = qlen - t0 < ATT_TILE ? qlen - t0 : ATT_TILE;
            for (int a = 0; a < ATT_PER_THREAD; a++) {
                const int c = tid + a * ATT_TILE;
                if (c < d) {
                    float ov = gv[a], ok = gk[a];
                    for (int ii = 0; ii < nt; ii++) {
                        const long long qb = ((q0 + t0 + ii) * n_heads + h) * d;
                        ov += ps[ii] * dout[qb + c];
                        ok += dss[ii] * q[qb + c];
                    }
                    gv[a] = ov;
                    gk[a] = ok;
                }
            }
            __syncthreads();
        }
    }
    for (int a = 0; a < ATT_PER_THREAD; a++) {
        const int c = tid + a * ATT_TILE;
        if (c < d) {
            dk[kb + c] = gk[a];
            dv[kb + c] = gv[a];
        }
    }
}
