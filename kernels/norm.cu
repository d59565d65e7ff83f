// RMSNorm forward and the dx part of its backward, one block per row.
// (dw is a column reduction: col_reduce_f32 in reduce.cu.)
#include "common.cuh"

extern "C" __global__ void rmsnorm_f32(real* out, float* rstd, const real* x, const real* w, int rows, int dim,
                                       float eps) {
    SHARED(float, scratch, [32]);
    const long long r = blockIdx.x;
    const real* xr = x + r * dim;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        float v = xr[j];
        ss += v * v;
    }
    ss = block_sum(ss, scratch);
    // Precise sqrt and division (not rsqrtf): the CPU reference rounds 1/sqrt once.
    const float s = 1.0f / sqrtf(ss / (float)dim + eps);
    if (threadIdx.x == 0) rstd[r] = s;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) out[r * dim + j] = xr[j] * s * w[j];
}

// dx_j = s g_j w_j - x_j s^3 / dim * sum_i g_i w_i x_i. The two terms nearly cancel when
// one element dominates its row (exactly at dim 1), so the sum and the difference are formed
// in f64, as the reference does; the kernel stays memory-bound.
extern "C" __global__ void rmsnorm_bwd_dx_f32(real* dx, const real* dout, const real* x, const real* w,
                                              const float* rstd, int rows, int dim) {
    SHARED(double, scratch, [32]);
    const long long r = blockIdx.x;
    const real* xr = x + r * dim;
    const real* gr = dout + r * dim;
    double dot = 0.0;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) dot += (double)(gr[j] * w[j] * xr[j]);
    dot = block_sum_d(dot, scratch);
    const double s = rstd[r];
    const double c = s * s * s * dot / (double)dim;
    for (int j = threadIdx.x; j < dim; j += blockDim.x)
        dx[r * dim + j] = (float)(s * (double)(gr[j] * w[j]) - (double)xr[j] * c);
}
