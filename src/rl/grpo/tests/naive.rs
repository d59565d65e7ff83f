//! A naive reference of the policy losses, written from the upstream formulas and not from the
//! code under test: the packed batch is padded to a [rows x L] matrix as verl and TRL hold it,
//! each quantity is a plain loop over that matrix, and nothing of `super::super` is called (only
//! its config types are read). Values only: gradients are its finite differences.
//!
//! Sources (the same versions as `docs/algorithm.md`):
//! - verl 0.9.1 `verl/trainer/ppo/core_algos.py`: `compute_policy_loss_vanilla` (ratio =
//!   exp(clamp(log-ratio, +-20)), max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)), then
//!   min(., -A c) where A < 0), `_gspo` (s = exp(min(mean masked log-ratio, 10)) per
//!   sequence), `_gpg` (-A logp), `_clip_cov` (the vanilla max, times 0 on the selected
//!   tokens), `_kl_cov` (-A r, + ppo_kl_coef |log-ratio| on the selected tokens), `_geo_mean`
//!   (per sequence exp(sum m sgn(A) min(sgn(A) d, sgn(A) clamp(d, -eps_low, eps_high)) /
//!   (n + 1e-8)) times the masked mean advantage, torch.mean over the rows), `_cispo`
//!   (-sg(clip(r, 1 - eps_low, 1 + eps_high)) A logp), `_sapo` (-4 / tau sigmoid(tau (r - 1))
//!   A, tau by the sign of A, seq-mean-token-mean); `kl_penalty` (k1 = logp - ref, abs, k2 =
//!   (logp - ref)^2 / 2, k3 = e^x - x - 1 with x = clamp(ref - logp, +-20), value clamped to
//!   +-10; a "+" variant's value is its base's); `agg_loss` (token-mean over the global token
//!   count, token-sum, seq-mean-token-sum / -mean / -sum-norm over the sequences with an active
//!   token, each with `+ 1e-8` on a sequence's token count).
//! - TRL 1.16 `GRPOTrainer._compute_loss`: `delta` caps the unclipped ratio; k3 unclamped;
//!   `use_bias_correction_kl` multiplies the KL by the importance ratio; the "grpo" mean over
//!   every row (fully masked ones too) with the token count clamped to >= 1, "dapo" over the
//!   token count clamped to >= 1, "dr_grpo" over rows x max length; cispo caps the ratio at
//!   epsilon_high.
//! - MMR1's released code (EasyR1 `masked_mean`): token-mean over the token count + 1e-8, no
//!   log-ratio clamp, the k3 value clamp 10 only.

use super::super::{Aggregation, Convention, KlEstimator, LossConfig, LossInputs, PolicyLoss};

/// The three parts of the loss, as the metrics report them.
#[derive(Clone, Copy, Debug)]
pub struct NaiveLoss {
    pub pg: f64,
    pub kl: f64,
    pub entropy: f64,
}

impl NaiveLoss {
    pub fn total(&self) -> f64 {
        self.pg + self.kl + self.entropy
    }
}

/// `num / den`, 0 when nothing is counted (an empty batch contributes nothing).
fn div(num: f64, den: f64) -> f64 {
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}

fn sgn(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

fn clamp_opt(x: f64, c: Option<f64>) -> f64 {
    match c {
        Some(c) => x.max(-c).min(c),
        None => x,
    }
}

/// The loss of the whole batch `inp` (every response of it: the global counts are its own),
/// padded to `max_len` columns (L of seq-mean-token-sum-norm).
pub fn naive_loss(inp: &LossInputs<'_, f64>, cfg: &LossConfig, max_len: usize) -> NaiveLoss {
    let rows = inp.offsets.len() - 1;
    let pad = |s: &[f64]| -> Vec<Vec<f64>> {
        (0..rows)
            .map(|i| {
                let (a, b) = (inp.offsets[i], inp.offsets[i + 1]);
                assert!(b - a <= max_len, "response longer than max_len");
                let mut row = vec![0.0; max_len];
                row[..b - a].copy_from_slice(&s[a..b]);
                row
            })
            .collect()
    };
    let ones = vec![1.0; inp.logp.len()];
    let lp = pad(inp.logp);
    let old = pad(inp.logp_old);
    let adv = pad(inp.advantages);
    let m = pad(inp.mask); // padding is masked
    let pgm = pad(inp.pg_mask.unwrap_or(&ones));
    let rf = inp.ref_logp.map(pad);
    let sel: Vec<Vec<f64>> = match inp.selected {
        Some(s) => pad(&s.iter().map(|&x| x as u8 as f64).collect::<Vec<_>>()),
        None => vec![vec![0.0; max_len]; rows],
    };
    let conv = cfg.convention;
    let trl = conv == Convention::Trl;

    // Counts: tokens per row, tokens in all, rows with an active token.
    let n: Vec<f64> = m.iter().map(|r| r.iter().sum()).collect();
    let n_tok: f64 = n.iter().sum();
    let active_rows = n.iter().filter(|&&x| x > 0.0).count() as f64;
    let seqs = if trl { rows as f64 } else { active_rows };
    let row_den = |i: usize| if trl { n[i].max(1.0) } else { n[i] + 1e-8 };

    // agg_loss of a [rows x L] matrix under `mode` (the mask applied here).
    let agg = |mode: Aggregation, x: &Vec<Vec<f64>>| -> f64 {
        let row_sum = |i: usize| -> f64 { (0..max_len).map(|j| x[i][j] * m[i][j]).sum() };
        let all: f64 = (0..rows).map(row_sum).sum();
        match mode {
            Aggregation::TokenMean => {
                let den = match conv {
                    Convention::Verl => n_tok,
                    Convention::Trl => n_tok.max(1.0),
                    Convention::Mmr1 => n_tok + 1e-8,
                };
                div(all, den)
            }
            Aggregation::TokenSum => all,
            Aggregation::SeqMeanTokenSum => div(all, seqs),
            Aggregation::SeqMeanTokenMean => {
                div((0..rows).map(|i| row_sum(i) / row_den(i)).sum::<f64>(), seqs)
            }
            Aggregation::SeqMeanTokenSumNorm => div(all, max_len as f64 * seqs),
        }
    };

    let (lo, hi) = (1.0 - cfg.clip_eps_low, 1.0 + cfg.clip_eps_high);
    // PPO's clipped surrogate with TRL's delta on the unclipped ratio and verl's dual clip.
    let ppo = |r: f64, a: f64, dual: bool| -> f64 {
        let r1 = match cfg.trl_delta {
            Some(d) => r.min(d),
            None => r,
        };
        let clipped = (-a * r1).max(-a * r.max(lo).min(hi));
        match cfg.dual_clip_c {
            Some(c) if dual && a < 0.0 => clipped.min(-a * c),
            _ => clipped,
        }
    };
    // GSPO's sequence ratio per row: exp(min(masked mean log-ratio, cap)), length >= 1.
    let seq_ratio: Vec<f64> = (0..rows)
        .map(|i| {
            let s: f64 = (0..max_len).map(|j| m[i][j] * (lp[i][j] - old[i][j])).sum();
            let mut x = s / n[i].max(1.0);
            if let Some(c) = cfg.gspo_log_ratio_cap {
                x = x.min(c);
            }
            x.exp()
        })
        .collect();

    let mut pg = vec![vec![0.0; max_len]; rows];
    let mut kl = vec![vec![0.0; max_len]; rows];
    for i in 0..rows {
        for j in 0..max_len {
            let d = lp[i][j] - old[i][j];
            let a = adv[i][j];
            pg[i][j] = pgm[i][j]
                * match cfg.policy {
                    PolicyLoss::Vanilla => ppo(clamp_opt(d, cfg.log_ratio_clamp).exp(), a, true),
                    PolicyLoss::ClipCov => (1.0 - sel[i][j]) * ppo(d.exp(), a, false),
                    PolicyLoss::Gspo => ppo(seq_ratio[i], a, false),
                    PolicyLoss::Gpg => -a * lp[i][j],
                    PolicyLoss::KlCov => -a * d.exp() + sel[i][j] * cfg.cov.ppo_kl_coef * d.abs(),
                    PolicyLoss::Cispo => {
                        let r = clamp_opt(d, cfg.log_ratio_clamp).exp();
                        let c = if trl { r.min(cfg.clip_eps_high) } else { r.max(lo).min(hi) };
                        -c * a * lp[i][j]
                    }
                    PolicyLoss::Sapo => {
                        let r = clamp_opt(d, cfg.log_ratio_clamp).exp();
                        let tau = if a > 0.0 { cfg.sapo_tau_pos } else { cfg.sapo_tau_neg };
                        let gate = 1.0 / (1.0 + (-tau * (r - 1.0)).exp());
                        -gate * 4.0 / tau * a
                    }
                    PolicyLoss::GeoMean => 0.0, // a per-sequence loss, below
                };
            if let (Some(k), Some(rf)) = (cfg.kl, &rf) {
                let x = rf[i][j] - lp[i][j]; // ref - logp
                let v = match k.estimator {
                    KlEstimator::K1 | KlEstimator::K1Plus => -x,
                    KlEstimator::Abs | KlEstimator::AbsPlus => x.abs(),
                    KlEstimator::K2 => 0.5 * x * x,
                    KlEstimator::K3 | KlEstimator::K3Plus => {
                        let x = clamp_opt(x, cfg.k3_inner_clamp);
                        clamp_opt(x.exp() - x - 1.0, cfg.k3_clamp)
                    }
                };
                let w = match (cfg.kl_ratio_weighted, cfg.policy) {
                    (false, _) => 1.0,
                    (true, PolicyLoss::Gspo) => seq_ratio[i],
                    (true, _) => d.exp(),
                };
                kl[i][j] = k.coef * v * w;
            }
        }
    }

    let pg_loss = if cfg.policy == PolicyLoss::GeoMean {
        let mut sum = 0.0;
        for i in 0..rows {
            let den = if trl { n[i].max(1.0) } else { n[i] + 1e-8 };
            let (mut lr, mut am) = (0.0, 0.0);
            for j in 0..max_len {
                let d = lp[i][j] - old[i][j];
                let s = sgn(adv[i][j]);
                let dmin = s * (s * d).min(s * d.max(-cfg.clip_eps_low).min(cfg.clip_eps_high));
                lr += m[i][j] * dmin;
                am += m[i][j] * adv[i][j];
            }
            sum += -(am / den) * (lr / den).exp();
        }
        div(sum, rows as f64)
    } else {
        let mode = match (conv, cfg.policy) {
            (Convention::Verl, PolicyLoss::Sapo) => Aggregation::SeqMeanTokenMean,
            _ => cfg.agg,
        };
        agg(mode, &pg)
    };
    let entropy = match inp.entropy {
        Some(e) if cfg.entropy_coef != 0.0 => -cfg.entropy_coef * agg(cfg.agg, &pad(e)),
        _ => 0.0,
    };
    NaiveLoss { pg: pg_loss, kl: agg(cfg.agg, &kl), entropy }
}

/// The clip fractions of verl's vanilla loss (token means over the active tokens): TRL's
/// `clip_ratio/low_mean` (A < 0, r < 1 - eps_low) and `high_mean` (A > 0, r > 1 + eps_high),
/// verl's `pg_clipfrac` (the clipped term strictly larger) and `pg_clipfrac_lower` (the dual
/// clip strictly below the clipped term, A < 0). Vanilla without delta only.
pub fn naive_clip_fractions(inp: &LossInputs<'_, f64>, cfg: &LossConfig) -> [f64; 4] {
    assert!(cfg.policy == PolicyLoss::Vanilla && cfg.trl_delta.is_none());
    let (lo, hi) = (1.0 - cfg.clip_eps_low, 1.0 + cfg.clip_eps_high);
    let mut c = [0.0; 4];
    let mut n = 0.0;
    for t in 0..inp.logp.len() {
        let m = inp.mask[t];
        let a = inp.advantages[t];
        let r = clamp_opt(inp.logp[t] - inp.logp_old[t], cfg.log_ratio_clamp).exp();
        let (l1, l2) = (-a * r, -a * r.max(lo).min(hi));
        let l = l1.max(l2);
        c[0] += m * ((a < 0.0 && r < lo) as u8 as f64);
        c[1] += m * ((a > 0.0 && r > hi) as u8 as f64);
        c[2] += m * ((l2 > l1) as u8 as f64);
        c[3] += m * (cfg.dual_clip_c.is_some_and(|k| a < 0.0 && -a * k < l) as u8 as f64);
        n += m;
    }
    c.map(|x| div(x, n))
}
