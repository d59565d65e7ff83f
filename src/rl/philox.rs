//! Philox4x32-10, the counter-based generator of J. K. Salmon, M. A. Moraes, R. O. Dror and
//! D. E. Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC'11
//! (doi:10.1145/2063384.2063405), as specified by their Random123 library (D. E. Shaw Research,
//! `include/Random123/philox.h`): a keyed bijection of a 128-bit counter, so any draw is a pure
//! function of (key, counter) and a sampler needs no state per sequence. `kernels/philox.cuh`
//! is the same function on the device; `tests/suite/philox.rs` holds both to Random123's known-answer
//! vectors (`tests/kat_vectors`) and to each other.
//!
//! The sampler's draw for decode step `step` of sequence `seq` under run seed `seed` is
//! [`uniform`]`(seed, seq, step)`: key = seed, counter = (step, 0, seq low, seq high).

/// Round multipliers and Weyl key increments of Philox4x32 (Random123's PHILOX_M4x32_0/1 and
/// PHILOX_W32_0/1).
const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Philox4x32 with `rounds` rounds (Random123 lists KATs for 7 and 10; the sampler uses 10).
pub fn philox4x32_rounds(ctr: [u32; 4], key: [u32; 2], rounds: u32) -> [u32; 4] {
    let (mut c, mut k) = (ctr, key);
    for r in 0..rounds {
        if r > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let p0 = (M0 as u64) * (c[0] as u64);
        let p1 = (M1 as u64) * (c[2] as u64);
        c = [
            ((p1 >> 32) as u32) ^ c[1] ^ k[0],
            p1 as u32,
            ((p0 >> 32) as u32) ^ c[3] ^ k[1],
            p0 as u32,
        ];
    }
    c
}

/// Philox4x32-10 of `ctr` under `key`.
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    philox4x32_rounds(ctr, key, 10)
}

/// Four 32-bit words for (seed, seq, step): key = seed, counter = (step, 0, seq lo, seq hi).
pub fn words(seed: u64, seq: u64, step: u32) -> [u32; 4] {
    philox4x32_10([step, 0, seq as u32, (seq >> 32) as u32], [seed as u32, (seed >> 32) as u32])
}

/// A uniform f64 in [0, 1) on the 2^-53 grid: the top 53 bits of words 0 (high) and 1.
pub fn uniform(seed: u64, seq: u64, step: u32) -> f64 {
    let w = words(seed, seq, step);
    let bits = ((w[0] as u64) << 21) | ((w[1] as u64) >> 11);
    bits as f64 * (1.0 / (1u64 << 53) as f64)
}
