// The vision tower's elementwise ops (Qwen2.5-VL): rotary embedding from a per-row angle table
// (2D vision rope, M-RoPE) and the exact (erf) GELU of the patch merger. Grid-stride loops.
#include "common.cuh"

// x[t, head, :] "rotate half" turn of pair (i, i + half) by angles[t, i]; sign -1 is the
// inverse (the backward pass). One thread per rotated pair.
extern "C" __global__ void rope_table_f32(real* x, const float* angles, int rows, int n_heads, int head_dim,
                                          float sign) {
    const int half = head_dim / 2;
    const long long total = (long long)rows * n_heads * half;
    GRID_STRIDE(idx, total) {
        const int i = (int)(idx % half);
        const long long th = idx / half; // row * n_heads + head
        const long long t = th / n_heads;
        float s, c;
        sincosf(angles[t * half + i], &s, &c);
        s *= sign;
        real* p = x + th * head_dim;
        const float a = p[i], b = p[i + half];
        p[i] = a * c - b * s;
        p[i + half] = b * c + a * s;
    }
}

// torch.nn.GELU() (approximate="none"): x / 2 * (1 + erf(x / sqrt 2)).
extern "C" __global__ void gelu_f32(real* out, const real* x, long long n) {
    GRID_STRIDE(i, n) {
        const float v = x[i];
        out[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    }
}

// dx = dout * (Phi(x) + x phi(x)).
extern "C" __global__ void gelu_bwd_f32(real* dx, const real* dout, const real* x, long long n) {
    GRID_STRIDE(i, n) {
        const float v = x[i];
        const float cdf = 0.5f * (1.0f + erff(v * 0.70710678118654752f));
        const float pdf = expf(-0.5f * v * v) * 0.39894228040143268f; // 1/sqrt(2 pi)
        dx[i] = dout[i] * (cdf + v * pdf);
    }
}
