// Deterministic reductions: column sums (bias and RMSNorm weight gradients) and the global
// sum of squares. No atomics: every sum has a fixed order, so results are bit-identical
// run after run.
#include "common.cuh"

// out[j] += sum_r a[r,j] * (b ? b[r,j] : 1) * (rowscale ? rowscale[r] : 1).
// Block (32, 32): threadIdx.x picks the column, threadIdx.y strides over rows; the 32 partial
// sums of a column are then added in a fixed order.
extern "C" __global__ void __launch_bounds__(1024) col_reduce_f32(float* out, const real* a, const real* b, const float* rowscale,
                                          int rows, int n) {
    SHARED(float, part, [32][33]);
    const int j = blockIdx.x * 32 + threadIdx.x;
    float s = 0.0f;
    if (j < n) {
        for (int r = threadIdx.y; r < rows; r += 32) {
            float t = a[(long long)r * n + j];
            if (b) t *= b[(long long)r * n + j];
            if (rowscale) t *= rowscale[r];
            s += t;
        }
    }
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && j < n) {
        float t = 0.0f;
        for (int k = 0; k < 32; k++) t += part[k][threadIdx.x];
        out[j] += t;
    }
}

// Pass 1 of sum of squares: one f64 partial per block (the grid size is chosen from n alone).
extern "C" __global__ void sumsq_partial_f32(const real* x, long long n, double* partial) {
    SHARED(double, scratch, [32]);
    double s = 0.0;
    GRID_STRIDE(i, n) {
        double v = x[i];
        s += v * v;
    }
    s = block_sum_d(s, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// Pass 2: one block folds the partials in a fixed order.
extern "C" __global__ void sum_partials_f64(const double* partial, int count, double* out) {
    SHARED(double, scratch, [32]);
    double s = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) s += partial[i];
    s = block_sum_d(s, scratch);
    if (threadIdx.x == 0) out[0] = s;
}
