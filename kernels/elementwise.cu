// Elementwise ops: fill, copy, add, scale, bias, SwiGLU. Memory-bound; grid-stride loops.
#include "common.cuh"
#include "mma.cuh" // bf16_bits

extern "C" __global__ void fill_f32(real* x, long long n, float v) {
    GRID_STRIDE(i, n) x[i] = v;
}

// fill_f32 over a list of buffers in one launch (zeroing every gradient at the start of an
// optimizer step): the blocks of entry t of `table` (see BufSpan) grid-stride over its buffer.
extern "C" __global__ void fill_many_f32(const BufSpan* table, int count, float v) {
    const BufSpan& t = span_of_block(table, count);
    const long long stride = t.blocks * blockDim.x;
    for (long long i = (blockIdx.x - t.first) * blockDim.x + threadIdx.x; i < t.n; i += stride) t.x[i] = v;
}

extern "C" __global__ void copy_f32(real* dst, long long dst_off, const real* src, long long src_off, long long n) {
    GRID_STRIDE(i, n) dst[dst_off + i] = src[src_off + i];
}

extern "C" __global__ void add_assign_f32(real* x, const real* y, long long n) {
    GRID_STRIDE(i, n) x[i] += y[i];
}

extern "C" __global__ void add_f32(real* out, const real* x, const real* y, long long n) {
    GRID_STRIDE(i, n) out[i] = x[i] + y[i];
}

extern "C" __global__ void scale_f32(real* x, float s, long long n) {
    GRID_STRIDE(i, n) x[i] *= s;
}

extern "C" __global__ void add_bias_f32(real* x, const real* bias, long long total, int n) {
    GRID_STRIDE(i, total) x[i] += bias[i % n];
}

// SwiGLU element i: silu(gate) * up. Shared by the plain kernel and the one that also writes
// the bf16 rounding, so that both store the same f32 bits. `width` 0: gate and up are
// buffers of their own; else `gate` is one GEMM's output of rows [gate columns | up columns],
// `width` each (`up` unused), and element i is row i / width, column i % width.
__device__ __forceinline__ float swiglu_elem(const real* gate, const real* up, long long i, int width) {
    if (width) {
        i = (i / width) * 2 * width + i % width;
        up = gate + width;
    }
    float g = gate[i];
    return g / (1.0f + expf(-g)) * up[i];
}

extern "C" __global__ void swiglu_f32(real* out, const real* gate, const real* up, long long n, int width) {
    GRID_STRIDE(i, n) out[i] = swiglu_elem(gate, up, i, width);
}

// swiglu_f32 that also writes the bf16 rounding of `out` (the down projection's operand) into
// `shadow`, in the pass that computes it (src/backend/cuda/producer_shadows.rs); `out` null:
// the bf16 values alone (an operand stored as bf16, bf16_operands.rs).
extern "C" __global__ void swiglu_bf16shadow_f32(real* out, unsigned short* shadow, const real* gate, const real* up,
                                                 long long n, int width) {
    GRID_STRIDE(i, n) {
        const float v = swiglu_elem(gate, up, i, width);
        if (out) out[i] = v;
        shadow[i] = bf16_bits(v);
    }
}

// SwiGLU backward element i: d gate and d up of d out (see swiglu_elem); returned through
// the references so that both kernels below compute the same bits.
__device__ __forceinline__ void swiglu_bwd_elem(float& dg, float& du, const real* dout, const real* gate,
                                                const real* up, long long i) {
    float g = gate[i], d = dout[i];
    float sig = 1.0f / (1.0f + expf(-g));
    du = d * g * sig;
    // d silu(g)/dg = sig * (1 + g (1 - sig))
    dg = d * up[i] * sig * (1.0f + g * (1.0f - sig));
}

extern "C" __global__ void swiglu_bwd_f32(real* dgate, real* dup, const real* dout, const real* gate,
                                          const real* up, long long n) {
    GRID_STRIDE(i, n) {
        float dg, du;
        swiglu_bwd_elem(dg, du, dout, gate, up, i);
        dup[i] = du;
        dgate[i] = dg;
    }
}

// swiglu_bwd_f32 that also writes the bf16 roundings of d gate and d up (the operands of the
// gate and up projections' backward GEMMs) into `dgate16` and `dup16`.
extern "C" __global__ void swiglu_bwd_bf16shadow_f32(real* dgate, real* dup, unsigned short* dgate16,
                                                     unsigned short* dup16, const real* dout, const real* gate,
                                                     const real* up, long long n) {
    GRID_STRIDE(i, n) {
        float dg, du;
        swiglu_bwd_elem(dg, du, dout, gate, up, i);
        if (dup) dup[i] = du;
        if (dgate) dgate[i] = dg;
        dup16[i] = bf16_bits(du);
        dgate16[i] = bf16_bits(dg);
    }
}

// AdamW as torch.optim.AdamW; the bias corrections come precomputed from the host
// (rbc1 = 1/(1-b1^t), rbc2 = 1/(1-b2^t)). Element i of one step, shared by both kernels
// below so that they compute the same bits; returns the new weight.
__device__ __forceinline__ float adamw_elem(float* p, const float* g, float* m, float* v, long long i, float lr,
                                            float b1, float b2, float eps, float wd, float rbc1, float rbc2,
                                            float grad_scale) {
    float gi = g[i] * grad_scale;
    float pi = p[i];
    pi -= lr * wd * pi;
    float mi = b1 * m[i] + (1.0f - b1) * gi;
    float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    pi -= lr * (mi * rbc1) / (sqrtf(vi * rbc2) + eps);
    p[i] = pi;
    return pi;
}

extern "C" __global__ void adamw_f32(float* p, const float* g, float* m, float* v, long long n, float lr,
                                     float b1, float b2, float eps, float wd, float rbc1, float rbc2,
                                     float grad_scale) {
    GRID_STRIDE(i, n) adamw_elem(p, g, m, v, i, lr, b1, b2, eps, wd, rbc1, rbc2, grad_scale);
}

// adamw_f32 that also writes the new weight's bf16 rounding (round to nearest even, the
// conversion of f32_to_bf16_x8) into `shadow`: the copy bf16 GEMMs read until the weight is
// next written, made in the pass that writes the weight instead of a conversion launch that
// reads it again (src/backend/cuda/mod.rs `adamw`).
extern "C" __global__ void adamw_bf16shadow_f32(float* p, const float* g, float* m, float* v, unsigned short* shadow,
                                                long long n, float lr, float b1, float b2, float eps, float wd,
                                                float rbc1, float rbc2, float grad_scale) {
    GRID_STRIDE(i, n) shadow[i] = bf16_bits(adamw_elem(p, g, m, v, i, lr, b1, b2, eps, wd, rbc1, rbc2, grad_scale));
}

// AdamW over a list of tensors in one launch (every parameter tensor of a model: 290 launches
// a step at Qwen2.5-0.5B otherwise, each some 30 us of host work on an H100 while the GPU
// waits). Row t of the table is tensor t: weight, gradient, moments, the destination of the
// weight's bf16 shadow (null: none, as adamw_f32; else as adamw_bf16shadow_f32), its length,
// and the blocks of the grid that work on it (the first and how many: the per-tensor launch's
// grid, laid out as BufSpan's by src/backend/cuda/multi.rs). Every element runs adamw_elem
// with the step's hyper-parameters (one group: optim.rs applies one weight decay to every
// tensor), so each value is the bits of the per-tensor kernels.
struct AdamwSpan {
    float* p;
    const float* g;
    float* m;
    float* v;
    unsigned short* shadow;
    long long n;
    long long first;
    long long blocks;
};

extern "C" __global__ void adamw_many_f32(const AdamwSpan* table, int count, float lr, float b1, float b2, float eps,
                                          float wd, float rbc1, float rbc2, float grad_scale) {
    const AdamwSpan t = span_of_block(table, count); // a copy: the loop's stores cannot alias it
    const long long stride = t.blocks * blockDim.x;
    for (long long i = (blockIdx.x - t.first) * blockDim.x + threadIdx.x; i < t.n; i += stride) {
        const float p = adamw_elem(t.p, t.g, t.m, t.v, i, lr, b1, b2, eps, wd, rbc1, rbc2, grad_scale);
        if (t.shadow) t.shadow[i] = bf16_bits(p);
    }
}

// Rows of `width` values moved by index lists in one launch: destination row dst_rows[t]
// (t when null) gets source row src_rows[t] (t when null), t < n_rows. A scatter (the decode
// step's KV-cache writes: one new row per slot, never contiguous across slots) or a gather
// (the rows the lm_head reads). The host checks that the rows are in range and that
// destination rows are distinct, so no two threads write one element. With `dst16` (else
// null; `dst` null then) the destination is in bf16 storage and gets the roundings (a KV cache
// of Backend::kv_cache_buf).
extern "C" __global__ void copy_rows_f32(real* dst, unsigned short* dst16, const unsigned* dst_rows, const real* src,
                                         const unsigned* src_rows, int n_rows, int width) {
    const long long total = (long long)n_rows * width;
    GRID_STRIDE(i, total) {
        const long long t = i / width, c = i % width;
        const long long d = dst_rows ? (long long)dst_rows[t] : t;
        const long long s = src_rows ? (long long)src_rows[t] : t;
        if (dst16)
            dst16[d * width + c] = bf16_bits(src[s * width + c]);
        else
            dst[d * width + c] = src[s * width + c];
    }
}
