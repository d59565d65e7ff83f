//! One token from one row of logits: temperature, top-k, top-p (nucleus) and the draw, written
//! so that the device kernel (`kernels/sample.cu`, launched by `RlOps::rl_sample`) computes the
//! same token and the same log-prob bit for bit from the same logits and uniform.
//!
//! The rule (what is kept and with which weight) is the usual one:
//! - p = softmax(logits / T) (T = 1 when greedy); the reported log-prob is log p of the
//!   drawn token, before any truncation, rounded to f32 — what the rollout records.
//! - greedy (T = 0): the first index of the largest logit.
//! - candidates ranked by descending logit, ties by ascending index (-0 ties with +0);
//!   top-k keeps the first k; top-p then keeps the shortest prefix of those whose mass under
//!   the untruncated p reaches top_p (all k when none does); the kept weights are renormalised.
//!
//! Every sum is fixed in shape so a GPU block can reproduce it: "lane" `l` of
//! [`SAMPLE_LANES`] sums elements `l, l + LANES, l + 2 LANES, ...` in order, and the lane
//! partials are folded by a fixed pairwise tree. The kept set's mass is that sum over the
//! kept weights; it grows monotonically with the set (float addition is monotone), which is
//! what lets the kernel find the prefix by a threshold search instead of a sort. The draw is
//! the inverse CDF of uniform `u` over the kept weights in lane-major order (lanes in order,
//! then each lane's elements in order): for a vocabulary of at most 256 that is id order.

/// Lanes of the fixed summation shape; the kernel's block size (`SAMPLE_LANES` in sample.cu).
pub const SAMPLE_LANES: usize = 256;

/// The token of a row that cannot be sampled (a NaN or +inf logit, or every logit -inf);
/// its log-prob is NaN. The rollout turns it into an error naming the sequence.
pub const INVALID_TOKEN: u32 = u32::MAX;

/// The sampling knobs the kernel needs (see `rl::rollout::SamplingParams`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleRule {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 keeps all.
    pub top_k: usize,
    /// In (0, 1]; 1 keeps all.
    pub top_p: f32,
}

/// Which Philox draw a row uses: decode step `step` of sequence `seq` under `seed`
/// (`rl::philox::uniform`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowDraw {
    pub seed: u64,
    pub seq: u64,
    pub step: u32,
}

impl RowDraw {
    pub fn uniform(&self) -> f64 {
        super::philox::uniform(self.seed, self.seq, self.step)
    }
}

/// [`sample_row`] of every row of `logits` (`[draws.len() x vocab]`) with its draw's uniform.
pub fn sample_rows(
    logits: &[f32],
    vocab: usize,
    draws: &[RowDraw],
    rule: &SampleRule,
) -> Vec<(u32, f32)> {
    assert_eq!(logits.len(), draws.len() * vocab, "sample: logits must be [rows x vocab]");
    draws
        .iter()
        .enumerate()
        .map(|(r, d)| sample_row(&logits[r * vocab..(r + 1) * vocab], rule, d.uniform()))
        .collect()
}

/// Sums of `f(i)` for `i < n` per lane, each in increasing `i` from 0.0.
fn lane_partials(n: usize, f: impl Fn(usize) -> f64) -> [f64; SAMPLE_LANES] {
    let mut p = [0.0f64; SAMPLE_LANES];
    for (l, s) in p.iter_mut().enumerate() {
        let mut i = l;
        while i < n {
            *s += f(i);
            i += SAMPLE_LANES;
        }
    }
    p
}

/// The fixed pairwise fold of the lane partials (stride 128, 64, ..., 1), as the kernel does.
fn tree(p: &[f64; SAMPLE_LANES]) -> f64 {
    let mut s = *p;
    let mut stride = SAMPLE_LANES / 2;
    while stride > 0 {
        for l in 0..stride {
            s[l] += s[l + stride];
        }
        stride /= 2;
    }
    s[0]
}

/// Rank of token `i` with logit `x` as a key: larger key = ranked earlier (larger logit, then
/// smaller index). Every key of a row is distinct.
pub fn rank_key(x: f32, i: usize) -> u64 {
    let x = if x == 0.0 { 0.0 } else { x }; // -0 ties with +0 (then the index decides)
    let b = x.to_bits();
    let ord = if b >> 31 == 1 { !b } else { b | 0x8000_0000 };
    ((ord as u64) << 32) | (!(i as u32)) as u64
}

/// The log-sum-exp of `logits / t` whose maximum is `mx` (finite), in the fixed shape: `m +
/// ln(sum exp(x / t - m))` with `m = mx / t`, the sum taken lane by lane and folded by the
/// tree. Every sampler computes it so (the kernels' tests compare their value with this one).
pub fn tempered_lse(logits: &[f32], mx: f32, t: f64) -> f64 {
    let m = mx as f64 / t;
    m + tree(&lane_partials(logits.len(), |i| (logits[i] as f64 / t - m).exp())).ln()
}

/// Samples one token from `logits` with uniform `u` in [0, 1): returns it with its log-prob
/// under `softmax(logits / T)` (T = 1 when greedy), or ([`INVALID_TOKEN`], NaN) when the row
/// has a NaN or +inf logit or no finite one.
pub fn sample_row(logits: &[f32], rule: &SampleRule, u: f64) -> (u32, f32) {
    let n = logits.len();
    assert!(n < u32::MAX as usize, "vocabulary of {n} tokens does not fit u32 ids");
    let bad = logits.iter().any(|x| x.is_nan() || *x == f32::INFINITY);
    let mx = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    if n == 0 || bad || mx == f32::NEG_INFINITY {
        return (INVALID_TOKEN, f32::NAN);
    }
    let greedy = rule.temperature == 0.0;
    let t = if greedy { 1.0 } else { rule.temperature as f64 };
    let lse = tempered_lse(logits, mx, t);
    let lp = |i: usize| (logits[i] as f64 / t - lse) as f32;
    if greedy {
        let best = logits.iter().position(|&x| x == mx).expect("the maximum is in the row");
        return (best as u32, lp(best));
    }
    let w: Vec<f64> = (0..n).map(|i| (lp(i) as f64).exp()).collect();
    let keys: Vec<u64> = logits.iter().enumerate().map(|(i, &x)| rank_key(x, i)).collect();
    let threshold = kept_threshold(&keys, &w, rule);
    let wk = |i: usize| if keys[i] >= threshold { w[i] } else { 0.0 };
    let parts = lane_partials(n, wk);
    let target = u * tree(&parts);
    let tok = draw(&parts, target, n, wk);
    (tok as u32, lp(tok))
}

/// The ids that top-k / top-p keep for `logits` (every id when nothing truncates), in rank
/// order: what [`sample_row`] draws from (for tests and diagnostics; greedy ignores it).
pub fn kept_ids(logits: &[f32], rule: &SampleRule) -> Vec<usize> {
    let n = logits.len();
    let t = if rule.temperature > 0.0 { rule.temperature as f64 } else { 1.0 };
    let mx = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let lse = tempered_lse(logits, mx, t);
    let w: Vec<f64> = logits.iter().map(|&x| ((x as f64 / t - lse) as f32 as f64).exp()).collect();
    let keys: Vec<u64> = logits.iter().enumerate().map(|(i, &x)| rank_key(x, i)).collect();
    let thr = kept_threshold(&keys, &w, rule);
    let mut ids: Vec<usize> = (0..n).filter(|&i| keys[i] >= thr).collect();
    ids.sort_by(|&a, &b| keys[b].cmp(&keys[a]));
    ids
}

/// The rank key of the last kept token: the kept set is every token whose key is >= it (0:
/// no truncation). Sorted prefix + binary search on its (monotone) mass; the kernel finds the
/// same key by a bitwise search.
fn kept_threshold(keys: &[u64], w: &[f64], rule: &SampleRule) -> u64 {
    let n = keys.len();
    let k = if rule.top_k == 0 { n } else { rule.top_k.min(n) };
    if rule.top_p >= 1.0 && k >= n {
        return 0;
    }
    let mut sorted = keys.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    if rule.top_p >= 1.0 {
        return sorted[k - 1];
    }
    let p = rule.top_p as f64;
    let mass = |r: usize| {
        let thr = sorted[r - 1];
        tree(&lane_partials(n, |i| if keys[i] >= thr { w[i] } else { 0.0 }))
    };
    // Smallest r in 1..=k with mass(r) >= p, or k.
    let (mut lo, mut hi) = (1, k);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if mass(mid) >= p {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    sorted[lo - 1]
}

/// Inverse CDF of `target` in [0, total) over the weights `wk` in lane-major order. Rounding
/// can leave `target` past the last weight; then the last positive weight is drawn.
fn draw(parts: &[f64; SAMPLE_LANES], target: f64, n: usize, wk: impl Fn(usize) -> f64) -> usize {
    let within = |l: usize, mut t: f64| {
        let mut last = l;
        let mut i = l;
        while i < n {
            let w = wk(i);
            if w > 0.0 {
                last = i;
                if t < w {
                    return i;
                }
                t -= w;
            }
            i += SAMPLE_LANES;
        }
        last
    };
    let mut t = target;
    let mut last_lane = 0;
    for (l, &p) in parts.iter().enumerate() {
        if p > 0.0 {
            last_lane = l;
            if t < p {
                return within(l, t);
            }
            t -= p;
        }
    }
    within(last_lane, f64::INFINITY)
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    /// The device sampler's `sample_div` (kernels/sample.cu), step for step: x / t from the
    /// reciprocal of t and one FMA correction (Markstein); the division for a non-finite x.
    fn markstein_div(x: f32, t: f64) -> f64 {
        let inv = 1.0 / t;
        let xd = x as f64;
        let q = xd * inv;
        if !q.is_finite() {
            return xd / t;
        }
        let r = (-q).mul_add(t, xd);
        if r == 0.0 {
            q
        } else {
            r.mul_add(inv, q)
        }
    }

    /// The kernel replaces every `(double)x / t` of the rule by `sample_div`; the rule's bits
    /// (and the host's) stay only if the two agree on every f32 logit and f32 temperature.
    /// Random logits over the whole f32 range (subnormals, signs, both ends) against
    /// temperatures of every mantissa between 1e-3 and 1e3, the usual ones, and those whose
    /// reciprocal is hardest (mantissas of all ones, just above a power of two).
    #[test]
    fn markstein_quotient_is_the_division() {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut temps: Vec<f32> = vec![0.6, 0.7, 0.9, 1.0, 1.1, 1.2, 0.3, 2.0, 1e-3, 1e3];
        for e in -10..10 {
            let p = 2f32.powi(e);
            temps.extend([p * (2.0 - f32::EPSILON), p * (1.0 + f32::EPSILON), p * 1.5]);
        }
        while temps.len() < 400 {
            let t = (r.gen_range(-6.9f64..6.9)).exp() as f32;
            temps.push(t);
        }
        let specials = [0.0f32, -0.0, f32::MIN_POSITIVE, 1e-45, f32::MAX, -f32::MAX, 1.0, -1.0];
        let mut checked = 0u64;
        for &t32 in &temps {
            let t = t32 as f64;
            let mut check = |x: f32| {
                let (got, want) = (markstein_div(x, t), x as f64 / t);
                assert_eq!(got.to_bits(), want.to_bits(), "{x:e} / {t32:e}: {got:e} vs {want:e}");
                checked += 1;
            };
            for &x in &specials {
                check(x);
            }
            for _ in 0..10_000 {
                let x = f32::from_bits(r.gen::<u32>());
                if x.is_finite() {
                    check(x);
                }
                // Logits as models write them, where most of the mass of the draws is.
                check(r.gen_range(-40.0f32..40.0));
            }
        }
        assert!(checked > 7_000_000, "{checked}");
        // Non-finite logits take the division.
        for x in [f32::INFINITY, f32::NEG_INFINITY] {
            assert_eq!(markstein_div(x, 0.7), x as f64 / 0.7);
        }
        assert!(markstein_div(f32::NAN, 0.7).is_nan());
    }
}
