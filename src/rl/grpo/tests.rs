//! Tests of the policy loss: hand-computed cases in both conventions, a naive padded
//! re-implementation, central finite differences, and micro-batch split invariance.

use super::*;
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

#[test]
fn hand_computed_trl_seq_mean_token_mean() {
    let h = hand();
    let cfg = LossConfig {
        kl: Some(KlConfig { estimator: KlEstimator::K3, coef: 0.01 }),
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
        offsets: &offsets,
    };
    let kl = Some(KlConfig { estimator: KlEstimator::K3, coef: 1.0 });
    let norm = Normalizer::new(1.0, 1.0, 1.0);
    let v = policy_loss_f64(&inp, &LossConfig { kl, k3_clamp: None, ..LossConfig::mmr1() }, norm);
    assert_close(v.loss, 20f64.exp() - 21.0, 1e-12, "verl k3");
    assert_eq!(v.dlogp[0], 0.0);
    let t = policy_loss_f64(&inp, &LossConfig { kl, ..LossConfig::trl() }, norm);
    assert_close(t.loss, 25f64.exp() - 26.0, 1e-12, "trl k3");
    assert_close(t.dlogp[0], 1.0 - 25f64.exp(), 1e-12, "trl dk3");
    // With the MMR1 k3 clamp the value is 10 and the gradient 0.
    let c = policy_loss_f64(&inp, &LossConfig { kl, ..LossConfig::mmr1() }, norm);
    assert_close(c.loss, 10.0, 1e-12, "clamped k3");
    assert_eq!(c.dlogp[0], 0.0);
}

// ---------------------------------------------------------------------------------------------
// Random batches
// ---------------------------------------------------------------------------------------------

struct Batch {
    logp: Vec<f64>,
    old: Vec<f64>,
    adv: Vec<f64>,
    mask: Vec<f64>,
    refl: Vec<f64>,
    ent: Vec<f64>,
    offsets: Vec<usize>,
    max_len: usize,
}

impl Batch {
    fn inputs(&self) -> LossInputs<'_, f64> {
        LossInputs {
            logp: &self.logp,
            logp_old: &self.old,
            advantages: &self.adv,
            mask: &self.mask,
            ref_logp: Some(&self.refl),
            entropy: Some(&self.ent),
            offsets: &self.offsets,
        }
    }
}

/// Distance margin that keeps every random token away from the kinks of the loss so that
/// central differences with h = 1e-6 are valid.
const MARGIN: f64 = 1e-3;

/// Log-ratio clamp used by the finite-difference test (above ln 6, the largest ratio of the
/// dual-clip region of `random_delta`).
const FD_LOG_RATIO_CLAMP: f32 = 1.9;

/// Random log-ratio in one of the regions of the clipped objective (eps 0.2/0.28, dual c = 3,
/// beyond the log-ratio clamp `clamp`), chosen uniformly among regions.
fn random_delta(rng: &mut ChaCha8Rng, clamp: f64) -> f64 {
    let (lo, hi) = (0.8f64, 1.28f64);
    let r = match rng.gen_range(0..5) {
        0 => rng.gen_range(lo + MARGIN..hi - MARGIN), // unclipped
        1 => rng.gen_range(hi + MARGIN..2.9),         // above the upper clip
        2 => rng.gen_range(0.3..lo - MARGIN),         // below the lower clip
        3 => rng.gen_range(3.0 + MARGIN..6.0),        // above the dual-clip constant
        _ => {
            return rng.gen_range(clamp + MARGIN..clamp + 2.0) * if rng.gen() { 1.0 } else { -1.0 }
        }
    };
    r.ln()
}

/// Random x = ref - logp across the k3 regions: small, clamped by K = 10 from above (x in
/// [3, 5] and [-15, -12]), unclamped negative, and beyond the +-20 inner clamp (only below
/// -20 when `moderate`, so that no term is of order e^20 and finite differences resolve).
fn random_x(rng: &mut ChaCha8Rng, moderate: bool) -> f64 {
    match rng.gen_range(0..5) {
        0 => rng.gen_range(-1.0..1.0),
        1 => rng.gen_range(3.0..5.0),
        2 => rng.gen_range(-15.0..-12.0),
        3 => rng.gen_range(-8.0..-2.0),
        _ => rng.gen_range(21.0..25.0) * if moderate || rng.gen() { -1.0 } else { 1.0 },
    }
}

/// Random packed batch; response 0 is empty and response 1 fully masked. `moderate` keeps all
/// loss terms small (log-ratio clamp region at 1.9, no x > 20) for finite differences.
fn random_batch(rng: &mut ChaCha8Rng, n_resp: usize, max_len: usize, moderate: bool) -> Batch {
    let clamp = if moderate { FD_LOG_RATIO_CLAMP as f64 } else { 20.0 };
    let mut b = Batch {
        logp: vec![],
        old: vec![],
        adv: vec![],
        mask: vec![],
        refl: vec![],
        ent: vec![],
        offsets: vec![0],
        max_len,
    };
    for r in 0..n_resp {
        let len = if r == 0 { 0 } else { rng.gen_range(1..=max_len) }; // one empty response
        let fully_masked = r == 1;
        let a: f64 = match rng.gen_range(0..4) {
            0 => 0.0,
            1 => rng.gen_range(0.2..2.0),
            _ => -rng.gen_range(0.2..2.0),
        };
        for _ in 0..len {
            let old = rng.gen_range(-6.0..-0.05);
            let lp = old + random_delta(rng, clamp);
            b.old.push(old);
            b.logp.push(lp);
            b.adv.push(a);
            b.mask.push(if fully_masked || rng.gen_bool(0.15) { 0.0 } else { 1.0 });
            b.refl.push(lp + random_x(rng, moderate));
            b.ent.push(rng.gen_range(0.0..3.0));
        }
        b.offsets.push(b.logp.len());
    }
    b
}

/// Naive padded-matrix re-implementation of the verl/TRL formulas (f64, explicit loops).
fn naive_loss(b: &Batch, cfg: &LossConfig) -> f64 {
    let n_resp = b.offsets.len() - 1;
    // Pad to [n_resp, max_len] like the Python code does.
    let mut mat = vec![vec![0f64; b.max_len]; n_resp];
    let mut ent = vec![vec![0f64; b.max_len]; n_resp];
    let mut msk = vec![vec![0f64; b.max_len]; n_resp];
    for r in 0..n_resp {
        for (j, t) in (b.offsets[r]..b.offsets[r + 1]).enumerate() {
            let mut negkl = b.logp[t] - b.old[t];
            if let Some(c) = cfg.log_ratio_clamp {
                negkl = negkl.max(-(c as f64)).min(c as f64);
            }
            let ratio = negkl.exp();
            let a = b.adv[t];
            let pg1 = -a * ratio;
            let pg2 =
                -a * ratio.max(1.0 - cfg.clip_eps_low as f64).min(1.0 + cfg.clip_eps_high as f64);
            let clip1 = if pg1 > pg2 { pg1 } else { pg2 };
            let pg = match cfg.dual_clip_c {
                Some(c) if a < 0.0 => clip1.min(-a * c as f64),
                _ => clip1,
            };
            let mut kl = 0.0;
            if let Some(k) = cfg.kl {
                kl = match k.estimator {
                    KlEstimator::K1 => b.logp[t] - b.refl[t],
                    KlEstimator::K3 => {
                        let mut x = b.refl[t] - b.logp[t];
                        if cfg.convention == Convention::Verl {
                            x = x.clamp(-20.0, 20.0);
                        }
                        let mut v = x.exp() - x - 1.0;
                        if let Some(c) = cfg.k3_clamp {
                            v = v.max(-(c as f64)).min(c as f64);
                        }
                        v
                    }
                } * k.coef as f64;
            }
            mat[r][j] = pg + kl;
            ent[r][j] = b.ent[t];
            msk[r][j] = b.mask[t];
        }
    }
    let agg = |m: &Vec<Vec<f64>>| -> f64 {
        match cfg.agg {
            Aggregation::TokenMean => {
                let (mut s, mut c) = (0.0, 0.0);
                for r in 0..n_resp {
                    for j in 0..b.max_len {
                        s += m[r][j] * msk[r][j];
                        c += msk[r][j];
                    }
                }
                s / c
            }
            Aggregation::SeqMeanTokenMean | Aggregation::SeqMeanTokenSumNorm => {
                let (mut s, mut nseq) = (0.0, 0.0);
                for r in 0..n_resp {
                    let (mut rs, mut rc) = (0.0, 0.0);
                    for j in 0..b.max_len {
                        rs += m[r][j] * msk[r][j];
                        rc += msk[r][j];
                    }
                    if rc > 0.0 {
                        nseq += 1.0;
                        s += if cfg.agg == Aggregation::SeqMeanTokenMean {
                            rs / rc
                        } else {
                            rs / b.max_len as f64
                        };
                    }
                }
                s / nseq
            }
        }
    };
    agg(&mat) - cfg.entropy_coef as f64 * agg(&ent)
}

fn configs() -> Vec<LossConfig> {
    let k1 = Some(KlConfig { estimator: KlEstimator::K1, coef: 0.05 });
    let k3 = Some(KlConfig { estimator: KlEstimator::K3, coef: 0.01 });
    let mut v = vec![];
    for agg in
        [Aggregation::TokenMean, Aggregation::SeqMeanTokenMean, Aggregation::SeqMeanTokenSumNorm]
    {
        v.push(LossConfig { agg, ..LossConfig::mmr1() });
        v.push(LossConfig { agg, k3_clamp: None, ..LossConfig::mmr1() });
        v.push(LossConfig {
            agg,
            clip_eps_high: 0.28,
            dual_clip_c: Some(3.0),
            entropy_coef: 0.003,
            ..LossConfig::mmr1()
        });
        v.push(LossConfig { agg, kl: k1, clip_eps_high: 0.28, ..LossConfig::verl() });
        v.push(LossConfig { agg, kl: k3, entropy_coef: 0.01, ..LossConfig::trl() });
        v.push(LossConfig { agg, kl: None, ..LossConfig::trl() });
    }
    v
}

#[test]
fn random_batches_match_naive_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for case in 0..20 {
        let b = random_batch(&mut rng, 10, 24, false);
        let norm = Normalizer::count(&b.mask, &b.offsets, b.max_len);
        for cfg in configs() {
            let o = policy_loss_f64(&b.inputs(), &cfg, norm);
            let want = naive_loss(&b, &cfg);
            assert_close(o.loss, want, 1e-12, &format!("case {case} cfg {cfg:?}"));
        }
    }
}

/// Central finite differences of the full loss vs the analytic d loss / d logp, covering every
/// branch (asserted below).
#[test]
fn gradient_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let (mut n_low, mut n_high, mut n_unclipped, mut n_dual, mut n_logclamp) = (0, 0, 0, 0, 0);
    let (mut n_k3clamp, mut n_k3inner, mut n_k3free) = (0, 0, 0);
    let h = 1e-6;
    for _case in 0..4 {
        let b = random_batch(&mut rng, 12, 20, true);
        let norm = Normalizer::count(&b.mask, &b.offsets, b.max_len);
        for cfg in configs() {
            // eps_high 0.28 matches random_delta's regions; a log-ratio clamp of 1.9 (instead of
            // 20) exercises the clamp branch without e^20-sized terms.
            let log_ratio_clamp = cfg.log_ratio_clamp.map(|_| FD_LOG_RATIO_CLAMP);
            let cfg = LossConfig { clip_eps_high: 0.28, log_ratio_clamp, ..cfg };
            let o = policy_loss_f64(&b.inputs(), &cfg, norm);
            for t in 0..b.logp.len() {
                if b.mask[t] != 0.0 {
                    let tt = token_term(b.logp[t], b.old[t], b.adv[t], Some(b.refl[t]), &cfg);
                    n_low += tt.clip_low as usize;
                    n_high += tt.clip_high as usize;
                    n_dual += tt.dual as usize;
                    n_unclipped +=
                        (!tt.clip_low && !tt.clip_high && !tt.dual && b.adv[t] != 0.0) as usize;
                    n_logclamp += ((b.logp[t] - b.old[t]).abs() > FD_LOG_RATIO_CLAMP as f64
                        && cfg.log_ratio_clamp.is_some())
                        as usize;
                    let x = b.refl[t] - b.logp[t];
                    if cfg.kl.map(|k| k.estimator) == Some(KlEstimator::K3) {
                        n_k3inner += (x.abs() > 20.0
                            && cfg.convention == Convention::Verl
                            && cfg.k3_clamp.is_none())
                            as usize;
                        n_k3clamp +=
                            (x.abs() < 20.0 && x.exp() - x - 1.0 > 10.0 && cfg.k3_clamp.is_some())
                                as usize;
                        n_k3free += (x.exp() - x - 1.0 < 10.0) as usize;
                    }
                }
                let mut lp = b.logp.clone();
                lp[t] = b.logp[t] + h;
                let inp = LossInputs { logp: &lp, ..b.inputs() };
                let up = policy_loss_f64(&inp, &cfg, norm).loss;
                lp[t] = b.logp[t] - h;
                let inp = LossInputs { logp: &lp, ..b.inputs() };
                let dn = policy_loss_f64(&inp, &cfg, norm).loss;
                let fd = (up - dn) / (2.0 * h);
                let g = o.dlogp[t];
                assert!(
                    (fd - g).abs() <= 1e-7 + 1e-5 * g.abs(),
                    "token {t}: fd {fd:e} vs analytic {g:e}, cfg {cfg:?}, delta {} A {} x {}",
                    b.logp[t] - b.old[t],
                    b.adv[t],
                    b.refl[t] - b.logp[t]
                );
            }
            // d loss / d entropy is linear: check it the same way on a couple of tokens.
            if cfg.entropy_coef != 0.0 {
                let de = o.dentropy.as_ref().unwrap();
                for t in (0..b.ent.len()).step_by(7) {
                    let mut e = b.ent.clone();
                    e[t] += 1e-3;
                    let inp = LossInputs { entropy: Some(&e), ..b.inputs() };
                    let up = policy_loss_f64(&inp, &cfg, norm).loss;
                    assert!(((up - o.loss) / 1e-3 - de[t]).abs() < 1e-9, "dentropy[{t}]");
                }
            }
        }
    }
    for (name, n) in [
        ("clipped low", n_low),
        ("clipped high", n_high),
        ("unclipped", n_unclipped),
        ("dual clipped", n_dual),
        ("log-ratio clamp", n_logclamp),
        ("k3 value clamp", n_k3clamp),
        ("k3 inner clamp", n_k3inner),
        ("k3 unclamped", n_k3free),
    ] {
        assert!(n > 10, "branch '{name}' exercised only {n} times");
    }
}

/// Splitting a batch into micro-batches in three different ways gives the same summed loss,
/// identical per-token gradients and the same merged metrics as the whole batch.
#[test]
fn micro_batch_split_invariance() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let b = random_batch(&mut rng, 16, 30, false);
    let n_resp = b.offsets.len() - 1;
    // f32 inputs, as in production.
    let f = |v: &Vec<f64>| -> Vec<f32> { v.iter().map(|&x| x as f32).collect() };
    let (lp, old, adv, mask, refl, ent) =
        (f(&b.logp), f(&b.old), f(&b.adv), f(&b.mask), f(&b.refl), f(&b.ent));
    let full_in = |r0: usize, r1: usize| -> (usize, usize, Vec<usize>) {
        let (a, e) = (b.offsets[r0], b.offsets[r1]);
        (a, e, b.offsets[r0..=r1].iter().map(|&o| o - a).collect())
    };
    let mut cuts_random: Vec<usize> = (1..n_resp).filter(|_| rng.gen_bool(0.3)).collect();
    cuts_random.insert(0, 0);
    cuts_random.push(n_resp);
    let splits: Vec<Vec<usize>> = vec![
        (0..=n_resp).collect(),      // one response per micro-batch
        vec![0, n_resp / 2, n_resp], // two halves
        cuts_random,                 // random cut points
    ];
    for cfg in configs() {
        let norm = Normalizer::count(&mask, &b.offsets, b.max_len);
        let whole = {
            let inp = LossInputs {
                logp: &lp[..],
                logp_old: &old[..],
                advantages: &adv[..],
                mask: &mask[..],
                ref_logp: Some(&refl[..]),
                entropy: Some(&ent[..]),
                offsets: &b.offsets,
            };
            policy_loss(&inp, &cfg, norm)
        };
        for cuts in &splits {
            let mut loss = 0f64;
            let mut grads: Vec<f32> = vec![];
            let mut dents: Vec<f32> = vec![];
            let mut mets = vec![];
            let mut merged_norm: Option<Normalizer> = None;
            for w in cuts.windows(2) {
                let (a, e, offs) = full_in(w[0], w[1]);
                let piece_norm = Normalizer::count(&mask[a..e], &offs, b.max_len);
                merged_norm = Some(match merged_norm {
                    None => piece_norm,
                    Some(m) => m.merge(&piece_norm),
                });
                let inp = LossInputs {
                    logp: &lp[a..e],
                    logp_old: &old[a..e],
                    advantages: &adv[a..e],
                    mask: &mask[a..e],
                    ref_logp: Some(&refl[a..e]),
                    entropy: Some(&ent[a..e]),
                    offsets: &offs,
                };
                let o = policy_loss(&inp, &cfg, norm);
                loss += o.loss;
                grads.extend_from_slice(&o.dlogp);
                dents.extend_from_slice(o.dentropy.as_ref().unwrap());
                mets.push(o.metrics);
            }
            assert_eq!(merged_norm.unwrap(), norm, "normalizer counts merge to the full batch");
            assert_close(loss, whole.loss, 1e-12, "summed loss");
            assert_eq!(grads, whole.dlogp, "per-token gradients identical");
            assert_eq!(&dents, whole.dentropy.as_ref().unwrap());
            let m = LossMetrics::merge(&mets);
            let wm = whole.metrics;
            for (got, want, what) in [
                (m.pg_loss, wm.pg_loss, "pg_loss"),
                (m.kl_loss, wm.kl_loss, "kl_loss"),
                (m.entropy_loss, wm.entropy_loss, "entropy_loss"),
                (m.clip_frac, wm.clip_frac, "clip_frac"),
                (m.clip_frac_low, wm.clip_frac_low, "clip_frac_low"),
                (m.approx_kl, wm.approx_kl, "approx_kl"),
                (m.kl, wm.kl, "kl"),
                (m.mean_ratio, wm.mean_ratio, "mean_ratio"),
                (m.entropy.unwrap(), wm.entropy.unwrap(), "entropy"),
            ] {
                assert_close(got, want, 1e-9, what);
            }
            assert_eq!(m.active_tokens, wm.active_tokens);
        }
    }
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
        offsets: &offsets,
    };
    let norm = Normalizer::count(inp.mask, &offsets, 4);
    assert_eq!(norm, Normalizer::new(0.0, 0.0, 4.0));
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
        offsets: &[0, 1],
    };
    policy_loss(&inp, &LossConfig::mmr1(), Normalizer::new(1.0, 1.0, 1.0));
}
