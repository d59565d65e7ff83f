// RMSNorm forward and the dx part of its backward, one block per row.
// (dw is a column reduction: col_reduce_f32 in reduce.cu.)
#include "common.cuh"
#include "mma.cuh" // bf16_bits

// One row (blockIdx.x) of RMSNorm: out = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps).
// With `shadow` (non-null) it also writes each output's bf16 rounding (round to nearest even,
// the bits f32_to_bf16_x8 would make of `out`), computed from the value it stores: the copy
// a bf16 GEMM reads (src/backend/cuda/producer_shadows.rs); `out` null (with `shadow`): the
// bf16 values alone (an operand stored as bf16, bf16_operands.rs). With `y` (non-null) the row
// normalised is x + y, written to `sum` first (a residual add: add_f32's bits), and each
// thread reads back only what it wrote.
__device__ __forceinline__ void rmsnorm_row(real* out, unsigned short* shadow, float* rstd, const real* x,
                                            const real* y, real* sum, const real* w, int dim, float eps,
                                            float* scratch) {
    const long long r = blockIdx.x;
    const real* xr = x + r * dim;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        float v = xr[j];
        if (y) {
            v = v + y[r * dim + j];
            sum[r * dim + j] = v;
        }
        ss += v * v;
    }
    if (y) xr = sum + r * dim;
    ss = block_sum(ss, scratch);
    // Precise sqrt and division (not rsqrtf): the CPU reference rounds 1/sqrt once.
    const float s = 1.0f / sqrtf(ss / (float)dim + eps);
    if (threadIdx.x == 0) rstd[r] = s;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        const float o = xr[j] * s * w[j];
        if (out) out[r * dim + j] = o;
        if (shadow) shadow[r * dim + j] = bf16_bits(o);
    }
}

extern "C" __global__ void rmsnorm_f32(real* out, float* rstd, const real* x, const real* w, int rows, int dim,
                                       float eps) {
    SHARED(float, scratch, [32]);
    rmsnorm_row(out, nullptr, rstd, x, nullptr, nullptr, w, dim, eps, scratch);
}

// rmsnorm_f32 that also writes the bf16 operand of the GEMMs reading `out` (q, k, v or gate,
// up) into `shadow` [rows * dim], instead of a conversion launch that reads `out` again.
extern "C" __global__ void rmsnorm_bf16shadow_f32(real* out, unsigned short* shadow, float* rstd, const real* x,
                                                  const real* w, int rows, int dim, float eps) {
    SHARED(float, scratch, [32]);
    rmsnorm_row(out, shadow, rstd, x, nullptr, nullptr, w, dim, eps, scratch);
}

// Backend::add_rmsnorm: sum = x + y, then RMSNorm of sum (shadow: as rmsnorm_bf16shadow_f32,
// or null), in one launch where add_f32 and rmsnorm_f32 were two.
extern "C" __global__ void add_rmsnorm_f32(real* sum, real* out, unsigned short* shadow, float* rstd, const real* x,
                                           const real* y, const real* w, int rows, int dim, float eps) {
    SHARED(float, scratch, [32]);
    rmsnorm_row(out, shadow, rstd, x, y, sum, w, dim, eps, scratch);
}

// dx_j = s g_j w_j - x_j s^3 / dim * sum_i g_i w_i x_i. The two terms nearly cancel when
// one element dominates its row (exactly at dim 1), so the sum and the difference are formed
// in f64, as the reference does; the kernel stays memory-bound. With `acc` (non-null) dx is
// added to acc instead of written to dx (add_assign's f32 addition: the residual stream's
// gradient), and with `acc16` also acc's new bf16 rounding written there (the GEMMs that read
// the residual gradient next; producer_shadows.rs).
__device__ __forceinline__ void rmsnorm_bwd_dx_row(real* dx, real* acc, unsigned short* acc16, const real* dout,
                                                   const real* x, const real* w, const float* rstd, int dim,
                                                   double* scratch) {
    const long long r = blockIdx.x;
    const real* xr = x + r * dim;
    const real* gr = dout + r * dim;
    double dot = 0.0;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) dot += (double)(gr[j] * w[j] * xr[j]);
    dot = block_sum_d(dot, scratch);
    const double s = rstd[r];
    const double c = s * s * s * dot / (double)dim;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        const float v = (float)(s * (double)(gr[j] * w[j]) - (double)xr[j] * c);
        if (acc) {
            const float a = acc[r * dim + j] + v;
            acc[r * dim + j] = a;
            if (acc16) acc16[r * dim + j] = bf16_bits(a);
        } else {
            dx[r * dim + j] = v;
        }
    }
}

extern "C" __global__ void rmsnorm_bwd_dx_f32(real* dx, const real* dout, const real* x, const real* w,
                                              const float* rstd, int rows, int dim) {
    SHARED(double, scratch, [32]);
    rmsnorm_bwd_dx_row(dx, nullptr, nullptr, dout, x, w, rstd, dim, scratch);
}

// Backend::rmsnorm_backward_add's dx part: acc += dx (acc16: null, or acc's bf16 copy).
extern "C" __global__ void rmsnorm_bwd_dx_add_f32(real* acc, unsigned short* acc16, const real* dout, const real* x,
                                                  const real* w, const float* rstd, int rows, int dim) {
    SHARED(double, scratch, [32]);
    rmsnorm_bwd_dx_row(nullptr, acc, acc16, dout, x, w, rstd, dim, scratch);
}
