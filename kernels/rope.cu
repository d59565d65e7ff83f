// Rotary embedding, "rotate half" layout, in place. One thread per rotated pair. The inverse
// frequencies come from the host (computed exactly as the CPU reference does).
#include "common.cuh"

extern "C" __global__ void rope_f32(real* x, const unsigned* positions, const float* inv_freq, int ntok,
                                    int n_heads, int head_dim, float sign) {
    const int half = head_dim / 2;
    const long long total = (long long)ntok * n_heads * half;
    GRID_STRIDE(idx, total) {
        const int i = (int)(idx % half);
        const long long th = idx / half; // token * n_heads + head
        const long long t = th / n_heads;
        const float ang = (float)positions[t] * inv_freq[i];
        float s, c;
        sincosf(ang, &s, &c);
        s *= sign;
        real* p = x + th * head_dim;
        const float a = p[i], b = p[i + half];
        p[i] = a * c - b * s;
        p[i + half] = b * c + a * s;
    }
}
