//! One vocabulary row of the CPU head in f64: max, `exp(z - max)`, their sum, the log-sum-exp
//! and the entropy, each a loop the compiler vectorizes. The log-prob ops spent most of their
//! time here, in glibc's `exp` (a call per logit, three per logit in the backward).
//!
//! `exp` follows the classic Cody & Waite scheme (as in fdlibm's `e_exp.c` and Cephes):
//! `x = n ln2 + r` with `n = round(x / ln2)` and `|r| <= ln2 / 2`, ln 2 split into a high part
//! with trailing zero bits (so `n * LN2_HI` is exact) and a low part; `exp(r)` by its Taylor
//! series to degree 13 (truncation below 1e-17 relative for `|r| <= 0.347`); `2^n` by writing
//! the exponent bits. No fused multiply-add is used, so every instruction set gives the same
//! bits. Sums use 8 interleaved accumulators (then added in order), so they do not form one
//! chain of dependent adds; the result depends on the row only, never on threads.

const LOG2E: f64 = std::f64::consts::LOG2_E;
/// fdlibm's split of ln 2 (`ln2HI[0]`, `ln2LO[0]` of e_exp.c, given by their bits): the high
/// part has 32 trailing zero bits.
const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
/// 1.5 * 2^52: adding it to a value below 2^51 in size rounds it to an integer (to nearest,
/// ties to even), which then sits in the low mantissa bits.
const ROUND: f64 = 6_755_399_441_055_744.0;
/// 1/k! for k = 13 down to 2 (Horner order).
const INV_FACT: [f64; 12] = [
    1.0 / 6_227_020_800.0,
    1.0 / 479_001_600.0,
    1.0 / 39_916_800.0,
    1.0 / 3_628_800.0,
    1.0 / 362_880.0,
    1.0 / 40_320.0,
    1.0 / 5_040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
];

/// `e^x` within a few ulp; 0 below -708 (where the result would be subnormal: nothing a
/// probability sum notices), +inf above 709, NaN for NaN.
#[inline(always)]
pub fn exp(x: f64) -> f64 {
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = INV_FACT[0];
    for c in &INV_FACT[1..] {
        p = p * r + c;
    }
    p = p * r + 1.0;
    p = p * r + 1.0;
    // n as an integer: the low mantissa bits of t (t and ROUND share their exponent).
    let ni = (t.to_bits() as i64).wrapping_sub(ROUND.to_bits() as i64);
    let scale = f64::from_bits((ni.wrapping_add(1023) as u64) << 52);
    let y = p * scale;
    if x < -708.0 {
        0.0
    } else if x > 709.0 {
        f64::INFINITY
    } else {
        y
    }
}

/// The statistics of `softmax(row * inv_temp)`; see [`row_softmax`].
pub struct RowSoftmax {
    /// log-sum-exp of the scaled row (-inf when every logit is -inf).
    pub lse: f64,
    /// Entropy of the distribution (0 for an all -inf row).
    pub entropy: f64,
    /// `sum_j exp(z_j - max)`: `p_j = e[j] / sum`.
    pub sum: f64,
}

/// Fills `e` with `exp(z_j - max)` for `z = row * inv_temp` (in f64; 0 for a -inf logit) and
/// returns the log-sum-exp, the entropy `-sum_j p_j (z_j - lse)` (masked logits add nothing:
/// 0 log 0 = 0) and the sum of `e`.
pub fn row_softmax(row: &[f32], inv_temp: f32, e: &mut Vec<f64>) -> RowSoftmax {
    e.clear();
    e.extend(row.iter().map(|&x| (x * inv_temp) as f64));
    let mx = max8(e);
    if mx == f64::NEG_INFINITY {
        e.fill(0.0);
        return RowSoftmax { lse: f64::NEG_INFINITY, entropy: 0.0, sum: 0.0 };
    }
    exp_shifted(e, mx);
    let sum = sum8(e);
    let lse = mx + sum.ln();
    let inv = 1.0 / sum;
    // exp(-inf) = 0 made the masked terms' p 0; their (z - lse) is -inf, so they are selected
    // out rather than multiplied (0 * -inf is NaN).
    let mut acc = [0.0f64; 8];
    let (rc, ec) = (row.chunks_exact(8), e.chunks_exact(8));
    let (rr, er) = (rc.remainder(), ec.remainder());
    let term = |x: f32, ej: f64| {
        let z = (x * inv_temp) as f64;
        if z == f64::NEG_INFINITY {
            0.0
        } else {
            ej * inv * (z - lse)
        }
    };
    for (r8, e8) in rc.zip(ec) {
        for k in 0..8 {
            acc[k] += term(r8[k], e8[k]);
        }
    }
    let mut s: f64 = acc.iter().sum();
    for (&x, &ej) in rr.iter().zip(er) {
        s += term(x, ej);
    }
    RowSoftmax { lse, entropy: -s, sum }
}

/// `v[j] = exp(v[j] - mx)`, on the widest vector unit the CPU has (same bits on every one).
pub fn exp_shifted(v: &mut [f64], mx: f64) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { exp_shifted_avx512(v, mx) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { exp_shifted_avx2(v, mx) };
        }
    }
    exp_shifted_portable(v, mx)
}

#[inline(always)]
fn exp_shifted_portable(v: &mut [f64], mx: f64) {
    for x in v.iter_mut() {
        *x = exp(*x - mx);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_shifted_avx512(v: &mut [f64], mx: f64) {
    exp_shifted_portable(v, mx)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn exp_shifted_avx2(v: &mut [f64], mx: f64) {
    exp_shifted_portable(v, mx)
}

/// Largest value, NaN ignored (as `f64::max` does); -inf for an empty or all-NaN slice.
fn max8(v: &[f64]) -> f64 {
    let mut acc = [f64::NEG_INFINITY; 8];
    let c = v.chunks_exact(8);
    let rest = c.remainder();
    for c8 in c {
        for k in 0..8 {
            acc[k] = if c8[k] > acc[k] { c8[k] } else { acc[k] };
        }
    }
    acc.iter().chain(rest).fold(f64::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// Sum over 8 interleaved accumulators, added in order, then the remainder.
pub fn sum8(v: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let c = v.chunks_exact(8);
    let rest = c.remainder();
    for c8 in c {
        for k in 0..8 {
            acc[k] += c8[k];
        }
    }
    acc.iter().sum::<f64>() + rest.iter().sum::<f64>()
}
