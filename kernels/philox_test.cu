// Test kernels for kernels/philox.cuh (tests/suite/philox.rs): the raw generator on given counters
// and keys (Random123's known-answer vectors), and the sampler's uniform for given
// (seed, sequence, step), one thread per case.
#include "common.cuh"
#include "philox.cuh"

// in: [n][6] = counter words 0..3, key words 0..1; out: [n][4].
extern "C" __global__ void philox4x32_test(unsigned* out, const unsigned* in, int n, int rounds) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const unsigned* c = in + 6 * i;
    philox4 x;
    for (int j = 0; j < 4; j++) x.v[j] = c[j];
    const philox4 y = philox4x32_rounds(x, c[4], c[5], rounds);
    for (int j = 0; j < 4; j++) out[4 * i + j] = y.v[j];
}

// draws: [n][5] = seed lo, seed hi, sequence lo, sequence hi, step; out: [n] uniforms.
extern "C" __global__ void philox_uniform_test(double* out, const unsigned* draws, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const unsigned* d = draws + 5 * i;
    out[i] = philox_uniform(((unsigned long long)d[1] << 32) | d[0], ((unsigned long long)d[3] << 32) | d[2], d[4]);
}
