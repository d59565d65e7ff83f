// Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3",
// SC'11, doi:10.1145/2063384.2063405; round function and constants as in D. E. Shaw
// Research's Random123 `philox.h`). The device twin of src/rl/philox.rs: the same bits for the
// same (key, counter), held to Random123's known-answer vectors on both sides by
// tests/suite/philox.rs. Counter-based, so a thread computes any draw without state.
#pragma once

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

struct philox4 {
    unsigned v[4];
};

// `rounds` rounds of Philox4x32 on counter c under key (k0, k1).
__device__ __forceinline__ philox4 philox4x32_rounds(philox4 c, unsigned k0, unsigned k1, int rounds) {
    for (int r = 0; r < rounds; r++) {
        if (r > 0) {
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        const unsigned hi0 = __umulhi(PHILOX_M0, c.v[0]), lo0 = PHILOX_M0 * c.v[0];
        const unsigned hi1 = __umulhi(PHILOX_M1, c.v[2]), lo1 = PHILOX_M1 * c.v[2];
        philox4 o;
        o.v[0] = hi1 ^ c.v[1] ^ k0;
        o.v[1] = lo1;
        o.v[2] = hi0 ^ c.v[3] ^ k1;
        o.v[3] = lo0;
        c = o;
    }
    return c;
}

// The sampler's words for (seed, seq, step): key = seed, counter = (step, 0, seq lo, seq hi).
__device__ __forceinline__ philox4 philox_words(unsigned long long seed, unsigned long long seq, unsigned step) {
    philox4 c;
    c.v[0] = step;
    c.v[1] = 0;
    c.v[2] = (unsigned)seq;
    c.v[3] = (unsigned)(seq >> 32);
    return philox4x32_rounds(c, (unsigned)seed, (unsigned)(seed >> 32), 10);
}

// Uniform in [0, 1) on the 2^-53 grid: the top 53 bits of words 0 (high) and 1.
__device__ __forceinline__ double philox_uniform(unsigned long long seed, unsigned long long seq, unsigned step) {
    const philox4 w = philox_words(seed, seq, step);
    const unsigned long long bits = ((unsigned long long)w.v[0] << 21) | ((unsigned long long)w.v[1] >> 11);
    return (double)bits * (1.0 / 9007199254740992.0);
}
