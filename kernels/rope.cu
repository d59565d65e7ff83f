// Rotary embedding, "rotate half" layout, in place. One thread per rotated pair. The inverse
// frequencies come from the host (computed exactly as the CPU reference does).
#include "common.cuh"
#include "mma.cuh" // bf16_bits

// Turns the pair (a, b) by `ang` (`sign` -1: the other way). Shared by every kernel that
// rotates, and with every product and sum rounded explicitly (the _rn intrinsics are never
// contracted into an FMA), so that each kernel rounds the same way whatever the compiler
// makes of its surroundings (the fused kernel below must give rope_f32's bits), as the CPU
// reference does.
__device__ __forceinline__ void rope_turn(float& a, float& b, float ang, float sign) {
    float s, c;
    sincosf(ang, &s, &c);
    s *= sign;
    const float a0 = a, b0 = b;
    a = __fsub_rn(__fmul_rn(a0, c), __fmul_rn(b0, s));
    b = __fadd_rn(__fmul_rn(b0, c), __fmul_rn(a0, s));
}

// rope_turn, then the attention factor of scaled RoPE unless it is 1 (what rope_f32 and
// scale_f32 do one after the other): both q/k/v epilogues, forward and backward.
__device__ __forceinline__ void rope_turn_scaled(float& a, float& b, float ang, float sign, float factor) {
    rope_turn(a, b, ang, sign);
    if (factor != 1.0f) {
        a *= factor;
        b *= factor;
    }
}

extern "C" __global__ void rope_f32(real* x, const unsigned* positions, const float* inv_freq, int ntok,
                                    int n_heads, int head_dim, float sign) {
    const int half = head_dim / 2;
    const long long total = (long long)ntok * n_heads * half;
    GRID_STRIDE(idx, total) {
        const int i = (int)(idx % half);
        const long long th = idx / half; // token * n_heads + head
        const long long t = th / n_heads;
        real* p = x + th * head_dim;
        float a = p[i], b = p[i + half];
        rope_turn(a, b, (float)positions[t] * inv_freq[i], sign);
        p[i] = a;
        p[i + half] = b;
    }
}

// Thread `idx` of the q/k/v epilogues (one thread per rotated pair (i, i + half) of a head of
// a row: the row's q heads, then its k heads, then its v heads): its pair, row, tensor
// (`which`: 0 q, 1 k, 2 v) and head within that tensor.
struct QkvPair {
    int i, which, head;
    long long t;
};
__device__ __forceinline__ QkvPair qkv_pair(long long idx, int half, int heads, int n_heads, int n_kv) {
    QkvPair p;
    p.i = (int)(idx % half);
    const long long th = idx / half;
    const int h = (int)(th % heads);
    p.t = th / heads;
    p.which = h < n_heads ? 0 : (h < n_heads + n_kv ? 1 : 2);
    p.head = p.which == 0 ? h : (p.which == 1 ? h - n_heads : h - n_heads - n_kv);
    return p;
}

// A layer's attention inputs from their projections in one pass (Backend::qkv_epilogue; the
// reference is the ops one after another, src/backend/fused_ops.rs): the biases added, q and
// k rotated as rope_f32 does and multiplied by `factor` unless it is 1 (scale_f32), and with
// `cache_rows` (else null) k and v also written to rows cache_rows[t] of the caches
// (copy_rows_f32): f32 `cache_k`/`cache_v`, or with `cache_k16`/`cache_v16` (else null) a
// cache in bf16 storage, the roundings (Backend::kv_cache_buf). With `q16` (else null) the bf16 roundings of the new q, k and v written to
// q16, k16, v16 too: the copies the flash kernels read, forward (K, V) and backward (Q, K, V),
// which each call converted before (src/backend/cuda/flash.rs). One thread per pair
// (i, i + half) of a head of a row: the row's q heads, then its k heads, then its v heads.
// head_dim even (the caller falls back to the ops otherwise).
extern "C" __global__ void qkv_epilogue_f32(real* q, real* k, real* v, const real* bq, const real* bk,
                                            const real* bv, const unsigned* positions, const float* inv_freq,
                                            int ntok, int n_heads, int n_kv, int head_dim, float factor,
                                            real* cache_k, real* cache_v, const unsigned* cache_rows,
                                            unsigned short* q16, unsigned short* k16, unsigned short* v16,
                                            unsigned short* cache_k16, unsigned short* cache_v16,
                                            const real* stacked) {
    const int half = head_dim / 2;
    const int heads = n_heads + 2 * n_kv;
    const long long total = (long long)ntok * heads * half;
    GRID_STRIDE(idx, total) {
        const QkvPair pr = qkv_pair(idx, half, heads, n_heads, n_kv);
        const int i = pr.i, which = pr.which, hh = pr.head;
        const long long t = pr.t;
        const int width = (which == 0 ? n_heads : n_kv) * head_dim;
        real* x = which == 0 ? q : (which == 1 ? k : v);
        const real* bias = which == 0 ? bq : (which == 1 ? bk : bv);
        const int c = hh * head_dim + i;
        real* p = x + t * width;
        // The projections in place, or (`stacked`, one GEMM's output) a row of q's columns,
        // then k's, then v's, written out to q, k and v here.
        const real* in = stacked ? stacked + t * heads * head_dim + (which == 0 ? 0 : n_heads * head_dim) +
                                       (which == 2 ? n_kv * head_dim : 0)
                                 : p;
        float a = in[c] + bias[c], b = in[c + half] + bias[c + half];
        if (which != 2) rope_turn_scaled(a, b, (float)positions[t] * inv_freq[i], 1.0f, factor);
        p[c] = a;
        p[c + half] = b;
        if (q16) {
            unsigned short* y = (which == 0 ? q16 : (which == 1 ? k16 : v16)) + t * width;
            y[c] = bf16_bits(a);
            y[c + half] = bf16_bits(b);
        }
        if (cache_rows && which != 0) {
            const long long at = (long long)cache_rows[t] * width + c;
            if (cache_k16) {
                unsigned short* r = (which == 1 ? cache_k16 : cache_v16) + at;
                r[0] = bf16_bits(a);
                r[half] = bf16_bits(b);
            } else {
                real* r = (which == 1 ? cache_k : cache_v) + at;
                r[0] = a;
                r[half] = b;
            }
        }
    }
}

// RoPE's backward of a layer's dq and dk in one pass (Backend::qkv_backward_epilogue; the
// reference is rope_f32 with sign -1, then scale_f32 by `factor` unless it is 1, of dq then
// dk, src/backend/fused_ops.rs), and with `dq16` (else null) the bf16 roundings of dq, dk and
// dv written to dq16, dk16, dv16: the operands of the q/k/v projections' dX and dW GEMMs,
// which converted each before (src/backend/cuda/producer_shadows.rs). One thread per pair
// (i, i + half) of a head of a row: the row's dq heads, its dk heads, then (with dq16) its dv
// heads, which it only reads. head_dim even (the caller falls back to the ops otherwise).
extern "C" __global__ void qkv_bwd_epilogue_f32(real* dq, real* dk, const real* dv, unsigned short* dq16,
                                                unsigned short* dk16, unsigned short* dv16,
                                                const unsigned* positions, const float* inv_freq, int ntok,
                                                int n_heads, int n_kv, int head_dim, float factor) {
    const int half = head_dim / 2;
    const int heads = n_heads + (dq16 ? 2 : 1) * n_kv;
    const long long total = (long long)ntok * heads * half;
    GRID_STRIDE(idx, total) {
        const QkvPair pr = qkv_pair(idx, half, heads, n_heads, n_kv);
        const int i = pr.i, which = pr.which; // which 0: dq, 1: dk, 2: dv
        const long long t = pr.t;
        const long long at = t * (which == 0 ? n_heads : n_kv) * head_dim + pr.head * head_dim + i;
        float a, b;
        if (which == 2) {
            a = dv[at];
            b = dv[at + half];
        } else {
            real* x = which == 0 ? dq : dk;
            a = x[at];
            b = x[at + half];
            rope_turn_scaled(a, b, (float)positions[t] * inv_freq[i], -1.0f, factor);
            x[at] = a;
            x[at + half] = b;
        }
        if (dq16) {
            unsigned short* y = which == 0 ? dq16 : (which == 1 ? dk16 : dv16);
            y[at] = bf16_bits(a);
            y[at + half] = bf16_bits(b);
        }
    }
}
