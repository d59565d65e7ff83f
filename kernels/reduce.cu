// Deterministic reductions: column sums (bias and RMSNorm weight gradients) and the global
// sum of squares. No atomics: every sum has a fixed order, so results are bit-identical
// run after run.
#include "common.cuh"

// out[j] += sum_r a[r,j] * (b ? b[r,j] : 1) * (rowscale ? rowscale[r] : 1), over rows
// [y * slice_rows, (y + 1) * slice_rows) of slice y = blockIdx.y.
// Block (32, 32): threadIdx.x picks the column, threadIdx.y strides over the slice's rows; the
// 32 partial sums of a column are then added in a fixed order. One slice (gridDim.y == 1)
// adds into out; several write their sums to part[y][j] for col_reduce_slices_f32, since a
// model's widths (896 columns: 28 blocks) fill few of a GPU's SMs alone.
extern "C" __global__ void __launch_bounds__(1024) col_reduce_f32(float* out, float* part, const real* a, const real* b,
                                                                  const float* rowscale, int rows, int n, int slice_rows) {
    SHARED(float, sums, [32][33]);
    const int j = blockIdx.x * 32 + threadIdx.x;
    const int r0 = blockIdx.y * slice_rows;
    const int r1 = r0 + slice_rows < rows ? r0 + slice_rows : rows;
    float s = 0.0f;
    if (j < n) {
        for (int r = r0 + threadIdx.y; r < r1; r += 32) {
            float t = a[(long long)r * n + j];
            if (b) t *= b[(long long)r * n + j];
            if (rowscale) t *= rowscale[r];
            s += t;
        }
    }
    sums[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && j < n) {
        float t = 0.0f;
        for (int k = 0; k < 32; k++) t += sums[k][threadIdx.x];
        if (gridDim.y == 1) out[j] += t;
        else part[(long long)blockIdx.y * n + j] = t;
    }
}

// out[j] += the slices' sums part[0][j] + part[1][j] + ... in slice order (deterministic).
extern "C" __global__ void col_reduce_slices_f32(float* out, const float* part, int slices, int n) {
    GRID_STRIDE(j, n) {
        float t = 0.0f;
        for (int y = 0; y < slices; y++) t += part[(long long)y * n + j];
        out[j] += t;
    }
}

// Pass 1 of sum of squares: one f64 partial per block (the grid size is chosen from n alone).
// Block `block` of `blocks` (256 threads each) sums x[i]^2 over its grid-stride share of
// [0, n) and folds it in the fixed tree of block_sum_d: the per-tensor kernel and the
// multi-tensor one below run this same body, so a tensor's partials are the same bits in both.
__device__ __forceinline__ double sumsq_block(const real* x, long long n, long long block, long long blocks,
                                              double* scratch) {
    double s = 0.0;
    for (long long i = block * blockDim.x + threadIdx.x; i < n; i += blocks * blockDim.x) {
        double v = x[i];
        s += v * v; // exact: a float's square fits a double's mantissa
    }
    return block_sum_d(s, scratch);
}

extern "C" __global__ void sumsq_partial_f32(const real* x, long long n, double* partial) {
    SHARED(double, scratch, [32]);
    double s = sumsq_block(x, n, blockIdx.x, gridDim.x, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// Pass 2: one block folds `count` partials in a fixed order.
__device__ __forceinline__ double fold_partials(const double* partial, long long count, double* scratch) {
    double s = 0.0;
    for (long long i = threadIdx.x; i < count; i += blockDim.x) s += partial[i];
    return block_sum_d(s, scratch);
}

extern "C" __global__ void sum_partials_f64(const double* partial, int count, double* out) {
    SHARED(double, scratch, [32]);
    double s = fold_partials(partial, count, scratch);
    if (threadIdx.x == 0) out[0] = s;
}

// The sum of squares of a list of tensors (the global gradient norm) in two launches instead
// of two per tensor, with each tensor's result the bits `sumsq_partial_f32` +
// `sum_partials_f64` give for it alone: entry t of `table` covers blocks
// [first, first + blocks) of the grid, `blocks` being the per-tensor launch's grid, and
// partial[first + b] is that launch's partial[b].
extern "C" __global__ void sumsq_partial_many_f32(const BufSpan* table, int count, double* partial) {
    SHARED(double, scratch, [32]);
    const BufSpan& t = span_of_block(table, count);
    double s = sumsq_block(t.x, t.n, blockIdx.x - t.first, t.blocks, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// Pass 2 of the list: block t folds tensor t's partials into out[t] (the host adds the
// tensors in order, in f64, as it added the per-tensor sums).
extern "C" __global__ void sum_partials_many_f64(const BufSpan* table, const double* partial, double* out) {
    SHARED(double, scratch, [32]);
    const BufSpan& t = table[blockIdx.x];
    double s = fold_partials(partial + t.first, t.blocks, scratch);
    if (threadIdx.x == 0) out[blockIdx.x] = s;
}
