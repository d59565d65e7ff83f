// Embedding gather and its deterministic backward.
#include "common.cuh"

// An id outside the table is a reported error (DEVICE_CHECK), not a read of another row.
extern "C" __global__ void embedding_f32(real* out, const real* table, const unsigned* ids, int ntok, int dim,
                                         int vocab) {
    const long long total = (long long)ntok * dim;
    GRID_STRIDE(i, total) {
        const long long t = i / dim, j = i % dim;
        DEVICE_CHECK(ids[t] < (unsigned)vocab);
        out[i] = table[(long long)ids[t] * dim + j];
    }
}

// Backward without atomics: the host groups token positions by id (CSR: uniq[u] is an id,
// its tokens are order[offsets[u] .. offsets[u+1]], ascending). One block per distinct id adds
// its tokens' rows in token order, so the sum is the same every run.
extern "C" __global__ void embedding_bwd_f32(real* dtable, const real* dout, const unsigned* uniq,
                                             const unsigned* offsets, const unsigned* order, int dim, int vocab) {
    const unsigned u = blockIdx.x;
    DEVICE_CHECK(uniq[u] < (unsigned)vocab);
    const long long id = uniq[u];
    const unsigned b = offsets[u], e = offsets[u + 1];
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        float acc = dtable[id * dim + j];
        for (unsigned p = b; p < e; p++) acc += dout[(long long)order[p] * dim + j];
        dtable[id * dim + j] = acc;
    }
}
