//! Tests of the policy loss: hand-computed cases (the issue's examples among them), central
//! finite differences and micro-batch split invariance for every mode. Agreement with the
//! upstream code itself is `tests/suite/parity_upstream.rs`. The random-batch tests are anchored to
//! `naive`, a padded-matrix restatement of the upstream formulas that shares no code with the
//! loss.

mod naive;

use super::*;
use naive::{naive_clip_fractions, naive_loss};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Tolerance of the hand-computed checks: beta = 0.01 is stored as f32 (0.00999999977...), so
/// terms carrying beta differ from the decimal hand values by ~2e-9 relative.
const HAND_TOL: f64 = 1e-7;

fn assert_close(got: f64, want: f64, tol: f64, what: &str) {
    assert!(
        (got - want).abs() <= tol * (1.0 + want.abs()),
        "{what}: got {got:.15}, want {want:.15}"
    );
}

/// Hand-built batch: 4 responses in 2 groups (responses 0,1 | 2,3), 7 tokens, token 3 masked.
///
/// | t | resp | A    | ratio | x = ref - logp | branch                       |
/// |---|------|------|-------|----------------|------------------------------|
/// | 0 | 0    | +1   | 1.5   | ln 2           | clipped high: pg = -1.2      |
/// | 1 | 0    | +1   | 0.9   | 0              | unclipped: pg = -0.9         |
/// | 2 | 1    | -1   | 0.5   | -ln 2          | clipped low: pg = 0.8        |
/// | 3 | 1    | -1   | 2.0   | 0              | masked                       |
/// | 4 | 2    | +0.5 | 1.0   | 0              | unclipped: pg = -0.5         |
/// | 5 | 3    | -0.5 | 4.0   | 0              | pg = 2.0; dual clip c=3: 1.5 |
/// | 6 | 3    | -0.5 | 1.1   | 0              | unclipped: pg = 0.55         |
///
/// k3(x) = e^x - x - 1: k3(ln 2) = 1 - ln 2 = 0.306852819440, k3(-ln 2) = ln 2 - 0.5 =
/// 0.193147180560 (sum 0.5); d k3 / d logp = 1 - e^x: -1 at t0, +0.5 at t2, 0 elsewhere.
struct Hand {
    logp: Vec<f64>,
    old: Vec<f64>,
    adv: Vec<f64>,
    mask: Vec<f64>,
    refl: Vec<f64>,
    offsets: Vec<usize>,
}

fn hand() -> Hand {
    let ratios = [1.5f64, 0.9, 0.5, 2.0, 1.0, 4.0, 1.1];
    let xs = [2f64.ln(), 0.0, -(2f64.ln()), 0.0, 0.0, 0.0, 0.0];
    let old = vec![-1.0f64; 7];
    let logp: Vec<f64> = ratios.iter().zip(&old).map(|(r, o)| o + r.ln()).collect();
    let refl: Vec<f64> = logp.iter().zip(&xs).map(|(l, x)| l + x).collect();
    Hand {
        logp,
        old,
        adv: vec![1.0, 1.0, -1.0, -1.0, 0.5, -0.5, -0.5],
        mask: vec![1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0],
        refl,
        offsets: vec![0, 2, 4, 5, 7],
    }
}

impl Hand {
    fn inputs(&self) -> LossInputs<'_, f64> {
        LossInputs {
            logp: &self.logp,
            logp_old: &self.old,
            advantages: &self.adv,
            mask: &self.mask,
            ref_logp: Some(&self.refl),
            entropy: None,
            pg_mask: None,
            selected: None,
            offsets: &self.offsets,
        }
    }
}

#[test]
fn hand_computed_verl_token_mean_dual_clip() {
    let h = hand();
    let cfg = LossConfig { dual_clip_c: Some(3.0), ..LossConfig::mmr1() };
    let norm = Normalizer::count(&h.mask, &h.offsets, 8);
    assert_eq!(norm, Normalizer::new(6.0, 4.0, 8.0));
    let o = policy_loss_f64(&h.inputs(), &cfg, norm);
    // pg sum = -1.2 - 0.9 + 0.8 - 0.5 + 1.5 + 0.55 = 0.25; kl sum = 0.5; beta = 0.01
    // loss = (0.25 + 0.01 * 0.5) / 6 = 0.0425
    assert_close(o.loss, 0.0425, HAND_TOL, "loss");
    assert_close(o.metrics.pg_loss, 0.25 / 6.0, HAND_TOL, "pg");
    assert_close(o.metrics.kl_loss, 0.005 / 6.0, HAND_TOL, "kl_loss");
    // d/dlogp = (dpg + 0.01 dkl) / 6
    let want = [-0.01 / 6.0, -0.9 / 6.0, 0.005 / 6.0, 0.0, -0.5 / 6.0, 0.0, 0.55 / 6.0];
    for (t, (&g, &w)) in o.dlogp.iter().zip(&want).enumerate() {
        assert_close(g, w, HAND_TOL, &format!("dlogp[{t}]"));
    }
    let m = o.metrics;
    assert_close(m.clip_frac_low, 1.0 / 6.0, HAND_TOL, "clip low");
    assert_close(m.clip_frac_high, 1.0 / 6.0, HAND_TOL, "clip high");
    assert_close(m.clip_frac, 2.0 / 6.0, HAND_TOL, "clip");
    assert_close(m.dual_clip_frac, 1.0 / 6.0, HAND_TOL, "dual");
    assert_close(m.mean_ratio, 1.5, HAND_TOL, "ratio"); // (1.5+.9+.5+1+4+1.1)/6
    assert_close(m.approx_kl, -0.181426992135768, HAND_TOL, "approx_kl"); // -ln(2.97)/6
    assert_close(m.kl, 0.5 / 6.0, HAND_TOL, "kl");
    assert_eq!(m.active_tokens, 6.0);

    // Without the dual clip t5 contributes 2.0 with gradient -A r = 2.0.
    let o = policy_loss_f64(&h.inputs(), &LossConfig::mmr1(), norm);
    assert_close(o.loss, (0.75 + 0.005) / 6.0, HAND_TOL, "loss no dual");
    assert_close(o.dlogp[5], 2.0 / 6.0, HAND_TOL, "dlogp[5] no dual");

    // Dr. GRPO aggregation: sum / (L_max * N_seqs) = 0.755 / (8 * 4)
    let cfg = LossConfig { agg: Aggregation::SeqMeanTokenSumNorm, ..LossConfig::mmr1() };
    let o = policy_loss_f64(&h.inputs(), &cfg, norm);
    assert_close(o.loss, 0.755 / 32.0, HAND_TOL, "sum-norm loss");
    assert_close(o.dlogp[1], -0.9 / 32.0, HAND_TOL, "sum-norm dlogp[1]");
}

/// Asymmetric clip bounds (DAPO clip-higher), so that a swap of eps_low and eps_high, or one
/// bound used for both sides, cannot pass. PPO's clipped surrogate (Schulman et al. 2017, eq. 7;
/// `docs/algorithm.md` sec. 2) with the ratio clamped to [1 - eps_low, 1 + eps_high]. The hand
/// batch with response 1's advantage set to -2 (t2; t3 is masked):
///
/// | t | A    | ratio | eps_low 0.15 / eps_high 0.35      | eps_low 0.35 / eps_high 0.15     |
/// |---|------|-------|-----------------------------------|----------------------------------|
/// | 0 | +1   | 1.5   | clipped high at 1.35: pg = -1.35  | clipped high at 1.15: -1.15      |
/// | 1 | +1   | 0.9   | unclipped: -0.9                   | unclipped: -0.9                  |
/// | 2 | -2   | 0.5   | clipped low at 0.85: pg = 1.7     | clipped low at 0.65: 1.3         |
/// | 4 | +0.5 | 1.0   | -0.5                              | -0.5                             |
/// | 5 | -0.5 | 4.0   | unclipped (A < 0): 2.0            | 2.0                              |
/// | 6 | -0.5 | 1.1   | unclipped: 0.55                   | 0.55                             |
///
/// pg sums 1.5 and 1.3; k3 KL as in `hand` (sum 0.5, beta 0.01); token-mean over 6 tokens.
#[test]
fn hand_computed_asymmetric_clip_bounds() {
    let mut h = hand();
    h.adv[2] = -2.0;
    h.adv[3] = -2.0;
    let norm = Normalizer::count(&h.mask, &h.offsets, 8);
    for (el, eh, pg_sum) in [(0.15, 0.35, 1.5), (0.35, 0.15, 1.3)] {
        let cfg = LossConfig { clip_eps_low: el, clip_eps_high: eh, ..LossConfig::mmr1() };
        let o = policy_loss_f64(&h.inputs(), &cfg, norm);
        let what = format!("eps_low {el} eps_high {eh}");
        assert_close(o.metrics.pg_loss, pg_sum / 6.0, HAND_TOL, &format!("{what}: pg"));
        assert_close(o.loss, (pg_sum + 0.005) / 6.0, HAND_TOL, &format!("{what}: loss"));
        // Clipped tokens (t0, t2) carry only the KL gradient.
        let want = [-0.01 / 6.0, -0.9 / 6.0, 0.005 / 6.0, 0.0, -0.5 / 6.0, 2.0 / 6.0, 0.55 / 6.0];
        for (t, (&g, &w)) in o.dlogp.iter().zip(&want).enumerate() {
            assert_close(g, w, HAND_TOL, &format!("{what}: dlogp[{t}]"));
        }
        let m = o.metrics;
        assert_close(m.clip_frac_low, 1.0 / 6.0, HAND_TOL, &format!("{what}: clip low"));
        assert_close(m.clip_frac_high, 1.0 / 6.0, HAND_TOL, &format!("{what}: clip high"));
        assert_close(m.clip_frac, 2.0 / 6.0, HAND_TOL, &format!("{what}: clip"));
    }
    // A ratio between the two floors: 0.8 with A = -1 is clipped by eps_low 0.15 (floor 0.85)
    // but not by eps_low 0.35 (floor 0.65), whatever eps_high is; 1.25 with A = +1 is clipped
    // by eps_high 0.15 (ceiling 1.15) but not by eps_high 0.35.
    let one = |ratio: f64, a: f64, el: f64, eh: f64| {
        let (lp, old, adv, mask, off) = ([ratio.ln()], [0.0f64], [a], [1.0f64], [0usize, 1]);
        let inp = LossInputs::new(&lp, &old, &adv, &mask, &off);
        let cfg =
            LossConfig { clip_eps_low: el, clip_eps_high: eh, kl: None, ..LossConfig::mmr1() };
        policy_loss_f64(&inp, &cfg, Normalizer::new(1.0, 1.0, 1.0))
    };
    let clipped = one(0.8, -1.0, 0.15, 0.35);
    assert_close(clipped.loss, 0.85, HAND_TOL, "ratio 0.8, floor 0.85");
    assert_eq!(clipped.dlogp[0], 0.0);
    assert_eq!((clipped.metrics.clip_frac_low, clipped.metrics.clip_frac), (1.0, 1.0));
    let free = one(0.8, -1.0, 0.35, 0.15);
    assert_close(free.loss, 0.8, HAND_TOL, "ratio 0.8, floor 0.65");
    assert_close(free.dlogp[0], 0.8, HAND_TOL, "unclipped gradient -A r");
    assert_eq!((free.metrics.clip_frac_low, free.metrics.clip_frac), (0.0, 0.0));
    let capped = one(1.25, 1.0, 0.35, 0.15);
    assert_close(capped.loss, -1.15, HAND_TOL, "ratio 1.25, ceiling 1.15");
    assert_eq!(capped.dlogp[0], 0.0);
    assert_eq!((capped.metrics.clip_frac_high, capped.metrics.clip_frac), (1.0, 1.0));
    let free = one(1.25, 1.0, 0.15, 0.35);
    assert_close(free.loss, -1.25, HAND_TOL, "ratio 1.25, ceiling 1.35");
    assert_close(free.dlogp[0], -1.25, HAND_TOL, "unclipped gradient -A r");
    assert_eq!(free.metrics.clip_frac_high, 0.0);
}

/// One-token edge cases of the clipped surrogate, by hand. TRL 1.16 counts a token as
/// low-clipped only with `advantages < 0` and high-clipped only with `advantages > 0`, and verl
/// `pg_clipfrac` is `pg_losses2 > pg_losses1` (strict): an A = 0 token is never clipped.
/// TRL `delta` (INTELLECT-2) caps the unclipped ratio: r = 2, delta 1.5, A = -1 gives
/// max(1 * 1.5, 1 * clamp(2, 0.8, 1.2)) = 1.5 with gradient 0 (2.0 and -A r = 2 without delta).
/// verl's dual clip is on by default (c = 3); verl clamps the log-ratio to [-20, 20]: at -25 the
/// value is -A e^-20 and the gradient 0.
#[test]
fn hand_computed_clip_flags_delta_and_log_ratio_clamp() {
    let one = |ratio_ln: f64, a: f64, cfg: LossConfig| {
        let (lp, old, adv, mask, off) = ([ratio_ln], [0.0f64], [a], [1.0f64], [0usize, 1]);
        let inp = LossInputs::new(&lp, &old, &adv, &mask, &off);
        policy_loss_f64(&inp, &LossConfig { kl: None, ..cfg }, Normalizer::new(1.0, 1.0, 1.0))
    };
    for r in [0.5f64, 1.5] {
        let m = one(r.ln(), 0.0, LossConfig::trl()).metrics;
        assert_eq!((m.clip_frac_low, m.clip_frac_high, m.clip_frac), (0.0, 0.0, 0.0), "r {r}");
    }
    let delta = LossConfig { trl_delta: Some(1.5), ..LossConfig::trl() };
    let o = one(2f64.ln(), -1.0, delta);
    assert_close(o.loss, 1.5, 1e-12, "delta caps the ratio");
    assert_eq!(o.dlogp[0], 0.0);
    let o = one(2f64.ln(), -1.0, LossConfig::trl());
    assert_close(o.loss, 2.0, 1e-12, "no delta");
    assert_close(o.dlogp[0], 2.0, 1e-12, "no delta: -A r");
    // verl's default dual clip (`clip_ratio_c` 3.0): A = -1, ratio 4 is capped at -A c = 3.
    let o = one(4f64.ln(), -1.0, LossConfig::verl());
    assert_close(o.loss, 3.0, 1e-12, "verl dual clip by default");
    assert_eq!((o.dlogp[0], o.metrics.dual_clip_frac), (0.0, 1.0));
    let verl = LossConfig { dual_clip_c: None, ..LossConfig::verl() };
    let o = one(-25.0, -1.0, verl);
    assert_close(o.loss, 0.8, 1e-12, "A < 0, ratio e^-20 clipped low at 0.8");
    let o = one(-25.0, 1.0, verl);
    assert_close(o.loss, -(-20f64).exp(), 1e-12, "A > 0: -e^-20, not -e^-25");
    assert_eq!(o.dlogp[0], 0.0, "the clamp is flat below -20");
}

#[test]
fn hand_computed_trl_seq_mean_token_mean() {
    let h = hand();
    let cfg = LossConfig {
        kl: Some(KlConfig { estimator: KlEstimator::K3, coef: 0.01 }),
        agg: Aggregation::SeqMeanTokenMean,
        ..LossConfig::trl()
    };
    let norm = Normalizer::count(&h.mask, &h.offsets, 8);
    let o = policy_loss_f64(&h.inputs(), &cfg, norm);
    // Per-response token means of pg + 0.01 kl:
    //   r0 (n=2): (-1.2 + 0.0030685281944 - 0.9) / 2 = -1.0484657359028
    //   r1 (n=1): 0.8 + 0.0019314718056             =  0.8019314718056
    //   r2 (n=1): -0.5
    //   r3 (n=2): (2.0 + 0.55) / 2                   =  1.275   (TRL has no dual clip)
    // loss = (sum) / 4 = 0.5284657359028 / 4 = 0.1321164339757
    assert_close(o.loss, 0.1321164339757, HAND_TOL, "loss");
    // weights 1/(n_i * 4): r0 1/8, r1 1/4, r2 1/4, r3 1/8
    let want = [-0.01 / 8.0, -0.9 / 8.0, 0.005 / 4.0, 0.0, -0.5 / 4.0, 2.0 / 8.0, 0.55 / 8.0];
    for (t, (&g, &w)) in o.dlogp.iter().zip(&want).enumerate() {
        assert_close(g, w, HAND_TOL, &format!("dlogp[{t}]"));
    }
    assert_eq!(o.metrics.dual_clip_frac, 0.0);
}

#[test]
fn conventions_differ_on_k3_inner_clamp() {
    // x = ref - logp = 25: verl clamps x to 20 (gradient 0), TRL does not; no k3_clamp here.
    let (logp, old, adv, mask, refl) = ([-30.0f64], [-30.0f64], [0.0f64], [1.0f64], [-5.0f64]);
    let offsets = [0usize, 1];
    let inp = LossInputs {
        logp: &logp,
        logp_old: &old,
        advantages: &adv,
        mask: &mask,
        ref_logp: Some(&refl),
        entropy: None,
        pg_mask: None,
        selected: None,
        offsets: &offsets,
    };
    let kl = Some(KlConfig { estimator: KlEstimator::K3, coef: 1.0 });
    let norm = Normalizer::new(1.0, 1.0, 1.0);
    let v = policy_loss_f64(&inp, &LossConfig { kl, k3_clamp: None, ..LossConfig::verl() }, norm);
    assert_close(v.loss, 20f64.exp() - 21.0, 1e-12, "verl k3");
    assert_eq!(v.dlogp[0], 0.0);
    let t = policy_loss_f64(&inp, &LossConfig { kl, ..LossConfig::trl() }, norm);
    assert_close(t.loss, 25f64.exp() - 26.0, 1e-12, "trl k3");
    assert_close(t.dlogp[0], 1.0 - 25f64.exp(), 1e-12, "trl dk3");
    // With the MMR1 k3 clamp the value is 10 and the gradient 0.
    let c = policy_loss_f64(&inp, &LossConfig { kl, ..LossConfig::mmr1() }, norm);
    assert_close(c.loss, 10.0, 1e-7, "clamped k3"); // MMR1 divides by N + 1e-8
    assert_eq!(c.dlogp[0], 0.0);
}

/// The examples of issue 13, each checked against the upstream code (tests/suite/parity_upstream.rs
/// pins the same functions on many more inputs).
#[test]
fn issue_examples() {
    let norm2 = |mask: &[f64], offs: &[usize]| Normalizer::count(mask, offs, 1);
    // seq-mean-token-sum-norm, two one-token responses, logp = old, A = -1, L = 1: verl 0.9.1
    // (and every release since 0.7.1) divides the token sum 2 by S = 2 and by L: loss 1.0,
    // gradient [0.5, 0.5]. (verl git b178a3c divided by L only: 2.0 and [1, 1].)
    let (lp, a, m, off) = ([-1.0f64, -2.0], [-1.0f64, -1.0], [1.0f64, 1.0], [0usize, 1, 2]);
    let inp = LossInputs::new(&lp, &lp, &a, &m, &off);
    let cfg = LossConfig { agg: Aggregation::SeqMeanTokenSumNorm, ..LossConfig::verl() };
    let o = policy_loss_f64(&inp, &cfg, norm2(&m, &off));
    assert_eq!((o.loss, o.dlogp.clone()), (1.0, vec![0.5, 0.5]));

    // MMR1's released code: log-ratio 25, A = -1: no log-ratio clamp, loss e^25 with gradient.
    let (lp, old, a, m, off) = ([-1.0f64], [-26.0f64], [-1.0f64], [1.0f64], [0usize, 1]);
    let inp = LossInputs::new(&lp, &old, &a, &m, &off);
    let cfg = LossConfig { kl: None, ..LossConfig::mmr1() };
    let o = policy_loss_f64(&inp, &cfg, Normalizer::count(&m, &off, 1));
    let e25 = 25f64.exp();
    assert_close(o.loss, e25, 1e-8, "mmr1 loss");
    assert_close(o.dlogp[0], e25, 1e-8, "mmr1 grad");
    // verl clamps the log-ratio at 20: value e^20, gradient 0 (its dual clip is off here).
    let cfg = LossConfig { kl: None, dual_clip_c: None, ..LossConfig::verl() };
    let o = policy_loss_f64(&inp, &cfg, Normalizer::count(&m, &off, 1));
    assert_close(o.loss, 20f64.exp(), 1e-12, "verl loss");
    assert_eq!(o.dlogp[0], 0.0);

    // TRL grpo, two responses, A = +1, ratio 1, mask [1 | 0]: TRL averages over all B = 2
    // rows: loss -0.5, gradient [-0.5, 0].
    let (lp, a, m, off) = ([-1.0f64, -1.0], [1.0f64, 1.0], [1.0f64, 0.0], [0usize, 1, 2]);
    let inp = LossInputs::new(&lp, &lp, &a, &m, &off);
    for agg in [Aggregation::SeqMeanTokenMean, Aggregation::SeqMeanTokenSumNorm] {
        let cfg = LossConfig { agg, ..LossConfig::trl() };
        let o = policy_loss_f64(&inp, &cfg, Normalizer::count(&m, &off, 1));
        assert_eq!((o.loss, o.dlogp.clone()), (-0.5, vec![-0.5, 0.0]), "{agg:?}");
        // verl excludes the fully masked row.
        let cfg = LossConfig { agg, ..LossConfig::verl() };
        let o = policy_loss_f64(&inp, &cfg, Normalizer::count(&m, &off, 1));
        assert_close(o.loss, -1.0, 1e-7, "verl seq-mean");
    }
}

// ---------------------------------------------------------------------------------------------
// Random batches, every mode
// ---------------------------------------------------------------------------------------------

struct Batch {
    logp: Vec<f64>,
    old: Vec<f64>,
    adv: Vec<f64>,
    mask: Vec<f64>,
    refl: Vec<f64>,
    ent: Vec<f64>,
    pgm: Vec<f64>,
    offsets: Vec<usize>,
    max_len: usize,
}

impl Batch {
    fn inputs<'a>(&'a self, sel: &'a [bool]) -> LossInputs<'a, f64> {
        LossInputs {
            logp: &self.logp,
            logp_old: &self.old,
            advantages: &self.adv,
            mask: &self.mask,
            ref_logp: Some(&self.refl),
            entropy: Some(&self.ent),
            pg_mask: Some(&self.pgm),
            selected: Some(sel),
            offsets: &self.offsets,
        }
    }
}

/// Random packed batch: response 0 empty, response 1 fully masked, log-ratios in every region
/// of the clipped objectives (|log-ratio| up to `spread`), both advantage signs and zero.
fn random_batch(rng: &mut ChaCha8Rng, n_resp: usize, max_len: usize, spread: f64) -> Batch {
    let mut b = Batch {
        logp: vec![],
        old: vec![],
        adv: vec![],
        mask: vec![],
        refl: vec![],
        ent: vec![],
        pgm: vec![],
        offsets: vec![0],
        max_len,
    };
    for r in 0..n_resp {
        let len = if r == 0 { 0 } else { rng.gen_range(1..=max_len) };
        let a: f64 = match rng.gen_range(0..4) {
            0 => 0.0,
            1 => rng.gen_range(0.2..2.0),
            _ => -rng.gen_range(0.2..2.0),
        };
        for _ in 0..len {
            let old = rng.gen_range(-6.0..-0.05);
            let lp = old + rng.gen_range(-spread..spread);
            b.old.push(old);
            b.logp.push(lp);
            b.adv.push(a);
            b.mask.push(if r == 1 || rng.gen_bool(0.15) { 0.0 } else { 1.0 });
            b.refl.push(lp + rng.gen_range(-spread..spread) * 2.0);
            b.ent.push(rng.gen_range(0.0..3.0));
            b.pgm.push(if rng.gen_bool(0.8) { 1.0 } else { 0.0 });
        }
        b.offsets.push(b.logp.len());
    }
    b
}

/// Every policy loss x KL estimator x convention, with clip-higher, dual clip, delta, ratio
/// weighting and an entropy bonus mixed in.
fn all_configs() -> Vec<LossConfig> {
    use KlEstimator::*;
    use PolicyLoss::*;
    let pols = [Vanilla, Gspo, Gpg, ClipCov, KlCov, GeoMean, Cispo, Sapo];
    let kls = [K1, Abs, K2, K3, K1Plus, AbsPlus, K3Plus];
    let aggs = [
        Aggregation::TokenMean,
        Aggregation::TokenSum,
        Aggregation::SeqMeanTokenSum,
        Aggregation::SeqMeanTokenMean,
        Aggregation::SeqMeanTokenSumNorm,
    ];
    let mut v = vec![];
    let mut i = 0usize;
    for base in [LossConfig::mmr1(), LossConfig::verl(), LossConfig::trl()] {
        for policy in pols {
            for (j, est) in kls.iter().enumerate() {
                i += 1;
                v.push(LossConfig {
                    policy,
                    kl: Some(KlConfig { estimator: *est, coef: 0.05 }),
                    agg: aggs[(i + j) % aggs.len()],
                    clip_eps_high: if i.is_multiple_of(2) { 0.28 } else { 0.2 },
                    dual_clip_c: if i.is_multiple_of(3) { Some(3.0) } else { base.dual_clip_c },
                    trl_delta: if i % 4 == 1 { Some(1.5) } else { None },
                    kl_ratio_weighted: base.convention == Convention::Trl && i % 2 == 1,
                    entropy_coef: if i.is_multiple_of(5) { 0.01 } else { 0.0 },
                    clip_eps_low: 0.2,
                    cov: CovParams {
                        clip_cov_ratio: 0.2,
                        kl_cov_ratio: 0.1,
                        ..CovParams::default()
                    },
                    ..base
                });
            }
        }
    }
    v
}

fn selection(b: &Batch, cfg: &LossConfig) -> Vec<bool> {
    let mut s = cov_selection(
        cfg.policy,
        &cfg.cov,
        &b.adv,
        &b.logp,
        &b.old,
        &b.mask,
        cfg.clip_eps_low,
        cfg.clip_eps_high,
        5,
    );
    if s.iter().all(|x| !x) {
        // Make sure the selected branch is exercised even when no token qualifies.
        s = (0..b.mask.len()).map(|t| t % 7 == 3).collect();
    }
    s
}

/// Every loss, part and vanilla clip fraction of every configuration against the naive
/// reference (`naive.rs`), on random batches with an empty and a fully masked response and
/// log-ratios in every region of the clipped objectives.
#[test]
fn random_batches_match_the_naive_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut vanilla_clips = [0.0f64; 4];
    for case in 0..3 {
        let spread = [0.3, 0.6, 1.2][case % 3];
        let b = random_batch(&mut rng, 9, 11, spread);
        let norm = Normalizer::count(&b.mask, &b.offsets, b.max_len);
        for cfg in all_configs() {
            let sel = selection(&b, &cfg);
            let inp = b.inputs(&sel);
            let o = policy_loss_f64(&inp, &cfg, norm);
            let want = naive_loss(&inp, &cfg, b.max_len);
            let what = |p: &str| format!("case {case} {p}: {cfg:?}");
            assert_close(o.loss, want.total(), 1e-12, &what("loss"));
            assert_close(o.metrics.pg_loss, want.pg, 1e-12, &what("pg_loss"));
            assert_close(o.metrics.kl_loss, want.kl, 1e-12, &what("kl_loss"));
            assert_close(o.metrics.entropy_loss, want.entropy, 1e-12, &what("entropy_loss"));
            if cfg.policy == PolicyLoss::Vanilla && cfg.trl_delta.is_none() {
                let m = o.metrics;
                let got = [m.clip_frac_low, m.clip_frac_high, m.clip_frac, m.dual_clip_frac];
                let want = naive_clip_fractions(&inp, &cfg);
                assert_eq!(got, want, "{}", what("clip fractions low/high/clip/dual"));
                for (s, w) in vanilla_clips.iter_mut().zip(want) {
                    *s += w;
                }
            }
        }
    }
    // The batches reach every clip branch.
    assert!(vanilla_clips.iter().all(|&c| c > 0.0), "clip fractions seen: {vanilla_clips:?}");
}

/// Central finite differences of the naive reference (`naive.rs`, written from the upstream
/// formulas, no code shared with the loss) vs the analytic d loss / d logp of the code (which
/// includes the cross-token terms of sequence-level ratios). Tokens at a kink (one-sided
/// differences disagree) are skipped and counted; there must be few.
#[test]
fn gradient_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let h = 1e-6;
    let (mut checked, mut kinks) = (0usize, 0usize);
    // The straight-through "+" estimators and CISPO (`sg(clip(ratio))`) have by design a
    // gradient that is not their value's (kl_estimators_by_hand and the upstream autograd
    // fixtures check them).
    let plus = [KlEstimator::K1Plus, KlEstimator::AbsPlus, KlEstimator::K3Plus];
    let fd_defined =
        |c: &LossConfig| !plus.contains(&c.kl.unwrap().estimator) && c.policy != PolicyLoss::Cispo;
    for cfg in all_configs().into_iter().filter(fd_defined) {
        let b = random_batch(&mut rng, 6, 9, 0.6);
        let norm = Normalizer::count(&b.mask, &b.offsets, b.max_len);
        let sel = selection(&b, &cfg);
        let o = policy_loss_f64(&b.inputs(&sel), &cfg, norm);
        let at = |inp: &LossInputs<'_, f64>| naive_loss(inp, &cfg, b.max_len).total();
        let base = at(&b.inputs(&sel));
        let loss_at = |t: usize, x: f64| {
            let mut lp = b.logp.clone();
            lp[t] = x;
            at(&LossInputs { logp: &lp, ..b.inputs(&sel) })
        };
        for t in 0..b.logp.len() {
            let (up, dn) = (loss_at(t, b.logp[t] + h), loss_at(t, b.logp[t] - h));
            let (fwd, bwd) = ((up - base) / h, (base - dn) / h);
            let scale = 1.0 + fwd.abs().max(bwd.abs());
            if (fwd - bwd).abs() > 1e-4 * scale {
                kinks += 1;
                continue;
            }
            checked += 1;
            let fd = (up - dn) / (2.0 * h);
            let g = o.dlogp[t];
            assert!(
                (fd - g).abs() <= 1e-6 * (1.0 + g.abs()),
                "token {t}: fd {fd:e} vs analytic {g:e}; cfg {cfg:?}"
            );
        }
        if let Some(de) = &o.dentropy {
            for t in (0..b.ent.len()).step_by(5) {
                let mut e = b.ent.clone();
                e[t] += 1e-3;
                let up = at(&LossInputs { entropy: Some(&e), ..b.inputs(&sel) });
                assert!(((up - base) / 1e-3 - de[t]).abs() < 1e-9, "dentropy[{t}]");
            }
        }
    }
    assert!(checked > 20 * kinks.max(1), "{checked} tokens checked, {kinks} at kinks");
}

/// Splitting a batch into micro-batches in three different ways gives identical per-token
/// gradients and the same merged metrics as the whole batch, in every mode, and the summed loss
/// parts (and vanilla's merged clip fractions) of the naive reference on the whole batch.
#[test]
fn micro_batch_split_invariance() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let b = random_batch(&mut rng, 16, 30, 1.0);
    let n_resp = b.offsets.len() - 1;
    // f32 inputs, as in production.
    let f = |v: &Vec<f64>| -> Vec<f32> { v.iter().map(|&x| x as f32).collect() };
    let (lp, old, adv, mask, refl, ent, pgm) =
        (f(&b.logp), f(&b.old), f(&b.adv), f(&b.mask), f(&b.refl), f(&b.ent), f(&b.pgm));
    let piece = |r0: usize, r1: usize| -> (usize, usize, Vec<usize>) {
        let (a, e) = (b.offsets[r0], b.offsets[r1]);
        (a, e, b.offsets[r0..=r1].iter().map(|&o| o - a).collect())
    };
    let mut cuts_random: Vec<usize> = (1..n_resp).filter(|_| rng.gen_bool(0.3)).collect();
    cuts_random.insert(0, 0);
    cuts_random.push(n_resp);
    let splits: Vec<Vec<usize>> =
        vec![(0..=n_resp).collect(), vec![0, n_resp / 2, n_resp], cuts_random];
    let norm = Normalizer::count(&mask, &b.offsets, b.max_len);
    for cfg in all_configs() {
        let sel = selection(&b, &cfg);
        let inp = |a: usize, e: usize, offs: &'_ [usize]| -> LossOutput {
            let i = LossInputs {
                logp: &lp[a..e],
                logp_old: &old[a..e],
                advantages: &adv[a..e],
                mask: &mask[a..e],
                ref_logp: Some(&refl[a..e]),
                entropy: Some(&ent[a..e]),
                pg_mask: Some(&pgm[a..e]),
                selected: Some(&sel[a..e]),
                offsets: offs,
            };
            policy_loss(&i, &cfg, norm)
        };
        let whole = inp(0, lp.len(), &b.offsets);
        // Anchored outside the code: the naive reference on the same (f32-rounded) inputs.
        let g = |v: &[f32]| -> Vec<f64> { v.iter().map(|&x| x as f64).collect() };
        let (lp64, old64, adv64, mask64) = (g(&lp), g(&old), g(&adv), g(&mask));
        let (refl64, ent64, pgm64) = (g(&refl), g(&ent), g(&pgm));
        let inp64 = LossInputs {
            logp: &lp64,
            logp_old: &old64,
            advantages: &adv64,
            mask: &mask64,
            ref_logp: Some(&refl64),
            entropy: Some(&ent64),
            pg_mask: Some(&pgm64),
            selected: Some(&sel),
            offsets: &b.offsets,
        };
        let want = naive_loss(&inp64, &cfg, b.max_len);
        for cuts in &splits {
            let (mut loss, mut grads, mut dents, mut mets) = (0f64, vec![], vec![], vec![]);
            let mut merged: Option<Normalizer> = None;
            for w in cuts.windows(2) {
                let (a, e, offs) = piece(w[0], w[1]);
                let pn = Normalizer::count(&mask[a..e], &offs, b.max_len);
                merged = Some(merged.map_or(pn, |m| m.merge(&pn)));
                let o = inp(a, e, &offs);
                loss += o.loss;
                grads.extend_from_slice(&o.dlogp);
                dents.extend_from_slice(o.dentropy.as_ref().unwrap());
                mets.push(o.metrics);
            }
            assert_eq!(merged.unwrap(), norm, "normalizer counts merge to the full batch");
            assert_close(loss, want.total(), 1e-12, &format!("summed loss vs naive {cfg:?}"));
            assert_eq!(grads, whole.dlogp, "per-token gradients identical {cfg:?}");
            assert_eq!(&dents, whole.dentropy.as_ref().unwrap());
            let m = LossMetrics::merge(&mets);
            let wm = whole.metrics;
            for (got, want, what) in [
                (m.pg_loss, want.pg, "pg_loss"),
                (m.kl_loss, want.kl, "kl_loss"),
                (m.entropy_loss, want.entropy, "entropy_loss"),
                (m.clip_frac, wm.clip_frac, "clip_frac"),
                (m.clip_frac_low, wm.clip_frac_low, "clip_frac_low"),
                (m.clip_frac_high, wm.clip_frac_high, "clip_frac_high"),
                (m.dual_clip_frac, wm.dual_clip_frac, "dual_clip_frac"),
                (m.approx_kl, wm.approx_kl, "approx_kl"),
                (m.kl, wm.kl, "kl"),
                (m.mean_ratio, wm.mean_ratio, "mean_ratio"),
                (m.entropy.unwrap(), wm.entropy.unwrap(), "entropy"),
            ] {
                assert_close(got, want, 1e-9, what);
            }
            assert_eq!(m.active_tokens, wm.active_tokens);
            if cfg.policy == PolicyLoss::Vanilla && cfg.trl_delta.is_none() {
                let got = [m.clip_frac_low, m.clip_frac_high, m.clip_frac, m.dual_clip_frac];
                for (g, w) in got.iter().zip(naive_clip_fractions(&inp64, &cfg)) {
                    assert_close(*g, w, 1e-12, &format!("merged clip fractions {cfg:?}"));
                }
            }
        }
    }
}

#[test]
fn kl_estimators_by_hand() {
    use KlEstimator::*;
    let c = K3Clamps { inner: Some(20.0), value: Some(10.0) };
    let (lp, r) = (-1.0f64, -1.5f64); // d = 0.5, x = -0.5
    let k3 = (-0.5f64).exp() + 0.5 - 1.0;
    assert_eq!(kl_term(K1, lp, r, c), (0.5, 1.0));
    assert_eq!(kl_term(Abs, r, lp, c), (0.5, -1.0));
    assert_eq!(kl_term(K2, lp, r, c), (0.125, 0.5));
    assert_eq!(kl_term(K3, lp, r, c), (k3, 1.0 - (-0.5f64).exp()));
    // Straight-through: forward value, k2 gradient.
    assert_eq!(kl_term(K1Plus, lp, r, c), (0.5, 0.5));
    assert_eq!(kl_term(AbsPlus, lp, r, c), (0.5, 0.5));
    assert_eq!(kl_term(K3Plus, lp, r, c), (k3, 0.5));
    // Serde names are verl's, with its aliases.
    for (name, want) in [("low_var_kl", K3), ("mse", K2), ("kl", K1), ("k3+", K3Plus)] {
        let got: KlEstimator = serde_json::from_str(&format!("\"{name}\"")).unwrap();
        assert_eq!(got, want);
    }
}

#[test]
fn high_entropy_mask_keeps_the_top_quantile() {
    let e = [0.1, 0.9, 0.5, 0.3, 0.7];
    let m = [1.0, 1.0, 1.0, 0.0, 1.0];
    // Active entropies [0.1, 0.5, 0.7, 0.9]; the 0.5-quantile (linear) is 0.6.
    assert_eq!(high_entropy_mask(&e, &m, 0.5), vec![0.0, 1.0, 0.0, 0.0, 1.0]);
    assert_eq!(high_entropy_mask(&e, &m, 1.0), vec![1.0, 1.0, 1.0, 0.0, 1.0]);
}

#[test]
fn informative_groups_filter() {
    let acc = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.5, 0.5, 0.0, 0.0];
    assert_eq!(informative_groups(&acc, 2), vec![false, true, false, true, true, false]);
    assert_eq!(informative_groups(&acc, 4), vec![true, true, true]);
}

#[test]
fn empty_and_fully_masked_inputs() {
    let offsets = [0usize, 0, 2];
    let z = [0f32, 0.0];
    let inp = LossInputs {
        logp: &z,
        logp_old: &z,
        advantages: &[1.0, 1.0],
        mask: &z,
        ref_logp: Some(&z),
        entropy: None,
        pg_mask: None,
        selected: None,
        offsets: &offsets,
    };
    let norm = Normalizer::count(inp.mask, &offsets, 4);
    assert_eq!(norm, Normalizer { global_rows: 2.0, ..Normalizer::new(0.0, 0.0, 4.0) });
    let o = policy_loss(&inp, &LossConfig::default(), norm);
    assert_eq!(o.loss, 0.0);
    assert_eq!(o.dlogp, vec![0.0, 0.0]);
    assert_eq!(o.metrics.clip_frac, 0.0);
}

#[test]
#[should_panic(expected = "ref_logp")]
fn kl_requires_ref_logp() {
    let z = [0f32];
    let inp = LossInputs {
        logp: &z,
        logp_old: &z,
        advantages: &z,
        mask: &[1.0],
        ref_logp: None,
        entropy: None,
        pg_mask: None,
        selected: None,
        offsets: &[0, 1],
    };
    policy_loss(&inp, &LossConfig::mmr1(), Normalizer::new(1.0, 1.0, 1.0));
}

/// Ratios exactly at a bound, built so that the comparison is exact: the bound is set from the
/// ratio itself (`1 - (1 - r) == r` and `1 + (r - 1) == r` hold exactly for r in [0.5, 2],
/// Sterbenz), or the log-ratio is an exact integer. What upstream does at the tie:
/// - TRL 1.16 counts `clip_ratio/low_mean` with `coef_1 < 1 - epsilon_low` and `high_mean`
///   with `coef_1 > 1 + epsilon_high` (strict): a ratio at the bound is not clipped;
/// - verl's `pg_clipfrac_lower` is `torch.gt(clip_pg_losses1, pg_losses3)` (strict): a loss
///   exactly at the dual-clip cap is not counted;
/// - torch.clamp / clamp_max pass the gradient at the bound (`self >= min && self <= max`,
///   derivatives.yaml), so verl's log-ratio clamp at exactly +-20 and TRL's `delta` at exactly
///   the ratio keep the gradient.
///
/// (At the dual-clip tie torch.min splits the gradient in halves; this code keeps the whole
/// unclipped gradient there. A tie of an f64 loss with the cap has measure zero; not tested.)
#[test]
fn ratios_exactly_at_a_bound() {
    let one = |d: f64, a: f64, cfg: LossConfig| {
        let (lp, old, adv, mask, off) = ([d], [0.0f64], [a], [1.0f64], [0usize, 1]);
        let inp = LossInputs::new(&lp, &old, &adv, &mask, &off);
        policy_loss_f64(&inp, &LossConfig { kl: None, ..cfg }, Normalizer::new(1.0, 1.0, 1.0))
    };
    // TRL's clip flags at r == 1 + eps_high (A > 0) and r == 1 - eps_low (A < 0).
    let r_hi = 0.1f64.exp();
    let eh = r_hi - 1.0;
    assert_eq!(1.0 + eh, r_hi, "the upper bound is the ratio exactly");
    let o = one(0.1, 1.0, LossConfig { clip_eps_high: eh, ..LossConfig::trl() });
    assert_eq!((o.metrics.clip_frac_high, o.metrics.clip_frac), (0.0, 0.0), "r == 1 + eps_high");
    assert_eq!(o.dlogp[0], -r_hi, "the unclipped gradient -A r");
    let r_lo = (-0.1f64).exp();
    let el = 1.0 - r_lo;
    assert_eq!(1.0 - el, r_lo, "the lower bound is the ratio exactly");
    let o = one(-0.1, -1.0, LossConfig { clip_eps_low: el, ..LossConfig::trl() });
    assert_eq!((o.metrics.clip_frac_low, o.metrics.clip_frac), (0.0, 0.0), "r == 1 - eps_low");
    assert_eq!(o.dlogp[0], r_lo, "the unclipped gradient -A r");

    // TRL's delta equal to the ratio: value delta, gradient -A r (clamp_max passes it).
    let r = 2f64.ln().exp();
    let o = one(2f64.ln(), -1.0, LossConfig { trl_delta: Some(r), ..LossConfig::trl() });
    assert_eq!((o.loss, o.dlogp[0]), (r, r), "r == delta");

    // verl's dual clip with c equal to the ratio: -A r == -A c, not counted as dual-clipped.
    let r = 1.1f64.exp();
    let cfg = LossConfig { dual_clip_c: Some(r), ..LossConfig::verl() };
    let o = one(1.1, -1.0, cfg);
    assert_eq!(o.loss, r);
    assert_eq!((o.metrics.dual_clip_frac, o.metrics.clip_frac), (0.0, 0.0), "-A r == -A c");

    // verl's log-ratio clamp at exactly +-20: inside the clamp, the gradient flows.
    let verl = LossConfig { dual_clip_c: None, ..LossConfig::verl() };
    let o = one(20.0, -1.0, verl); // A < 0, r = e^20: unclipped branch -A r
    assert_eq!((o.loss, o.dlogp[0]), (20f64.exp(), 20f64.exp()), "log-ratio == 20");
    let o = one(-20.0, 1.0, verl); // A > 0, r = e^-20 < 0.8: -A r > -A 0.8, unclipped
    assert_eq!((o.loss, o.dlogp[0]), (-(-20f64).exp(), -(-20f64).exp()), "log-ratio == -20");
}

/// verl 0.9.1 `compute_policy_loss_gspo` clamps the sequence log-ratio at 10 from above
/// (`torch.clamp(negative_approx_kl_seq, max=10.0)`), TRL not: a response whose mean
/// log-ratio is 12 has ratio e^10 under verl's defaults (flat: gradient 0), e^12 under TRL's.
#[test]
fn gspo_sequence_log_ratio_cap_is_verls_default() {
    let (lp, old, adv, mask, off) = ([12.5f64, 11.5], [0.0f64; 2], [-1.0f64; 2], [1.0; 2], [0, 2]);
    let inp = LossInputs::new(&lp, &old, &adv, &mask, &off);
    let norm = Normalizer::new(2.0, 1.0, 2.0);
    let verl = LossConfig { policy: PolicyLoss::Gspo, ..LossConfig::verl() };
    let o = policy_loss_f64(&inp, &verl, norm);
    assert_close(o.loss, 10f64.exp(), 1e-12, "verl: -A e^10");
    assert_eq!(o.dlogp, vec![0.0, 0.0], "the cap is flat");
    let trl = LossConfig { policy: PolicyLoss::Gspo, ..LossConfig::trl() };
    let o = policy_loss_f64(&inp, &trl, norm);
    assert_close(o.loss, 12f64.exp(), 1e-12, "trl: -A e^12");
    // d/dlogp_t of -A exp(mean d) = -A e^12 / 2 per token, token-mean over 2 tokens.
    assert_close(o.dlogp[0], 12f64.exp() / 2.0, 1e-12, "trl gradient");
}

/// Merging the metrics of one call gives that call's metrics, also for a call without an
/// active token (fractions 0, not 0/0); entropy is reported only when every call had one.
#[test]
fn merged_metrics_of_empty_and_mixed_calls() {
    let offsets = [0usize, 2];
    let (z, e) = ([0f64, 0.0], [0.7f64, 1.3]);
    let inp =
        LossInputs { entropy: Some(&e), ..LossInputs::new(&z, &z, &[1.0, -1.0], &z, &offsets) };
    let cfg = LossConfig { kl: None, ..LossConfig::mmr1() };
    let masked = policy_loss_f64(&inp, &cfg, Normalizer::new(0.0, 0.0, 2.0)).metrics;
    assert_eq!(masked.entropy, Some(0.0));
    let merged = LossMetrics::merge(&[masked]);
    assert_eq!(merged, masked, "merge of one fully masked call");
    assert_eq!(merged.clip_frac, 0.0);
    let mask = [1.0f64, 1.0];
    let with =
        policy_loss_f64(&LossInputs { mask: &mask, ..inp }, &cfg, Normalizer::new(2.0, 1.0, 2.0));
    assert_eq!(with.metrics.entropy, Some(1.0));
    let without = LossInputs { entropy: None, mask: &mask, ..inp };
    let without = policy_loss_f64(&without, &cfg, Normalizer::new(2.0, 1.0, 2.0)).metrics;
    assert_eq!(LossMetrics::merge(&[with.metrics, without]).entropy, None, "mixed presence");
    assert_eq!(LossMetrics::merge(&[with.metrics]).entropy, Some(1.0));
    assert_eq!(LossMetrics::merge(&[]), LossMetrics::default(), "no call: no entropy");
}

/// Every (epoch, mini-batch) of an update gets its own Clip-Cov seed, whatever the base seed
/// (all bits clear, all set, alternating, arbitrary) and the number of mini-batches.
#[test]
fn cov_seeds_differ_across_epochs_and_mini_batches() {
    for seed in [0u64, u64::MAX, 0x5555_5555_5555_5555, 0x0123_4567_89ab_cdef] {
        for minis in 1..=4 {
            let mut seen = std::collections::BTreeSet::new();
            for epoch in 0..3 {
                for mi in 0..minis {
                    let s = cov_seed(seed, epoch, minis, mi);
                    assert!(seen.insert(s), "seed {seed:#x}, {minis} mini-batches: {s:#x} twice");
                }
            }
        }
    }
}
