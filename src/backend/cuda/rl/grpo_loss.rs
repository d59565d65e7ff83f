//! Launcher of the fused GRPO-family loss (`kernels/grpo_loss.cu`).
//!
//! The device form of [`policy_loss`](crate::rl::grpo::policy_loss): the same
//! [`LossConfig`], the same global [`Normalizer`] (so the contributions of any split of the
//! batch into calls sum to the full-batch loss, and each token's gradient is bit-identical
//! whatever the split), every [`PolicyLoss`], [`KlEstimator`] and [`Aggregation`]. The
//! per-token arrays stay on the device; the loss parts and metric numerators are reduced on
//! the device in a fixed order and only those 12 numbers come back.
//!
//! What stays on the host: the batch-level token selections of Clip-Cov and KL-Cov
//! ([`cov_selection`](crate::rl::grpo::cov_selection): a random draw and a top-k over the whole
//! optimizer-step batch, computed once per batch and passed to every call as
//! [`LossBufs::selected`]) and TRL's entropy mask
//! ([`high_entropy_mask`](crate::rl::grpo::high_entropy_mask), a quantile), passed as
//! `pg_mask`. GSPO's sequence ratio and GMPO's geometric mean are per-response reductions and
//! run inside the kernel.

use super::{buf_len, offsets_i64};
use crate::backend::cuda::device::{Arg, Device};
use crate::backend::cuda::{CudaBackend, DevBuf};
use crate::backend::rl_ops::{AdvBuf, LossBufs, LossSummary};
use crate::rl::advantage::Convention;
use crate::rl::grpo::{Aggregation, KlEstimator, LossConfig, LossMetrics, Normalizer, PolicyLoss};

/// Threads per response block (GRPO_THREADS in the kernel).
const THREADS: u32 = 256;

// Slots of the parameter array: kernels/grpo_loss.cu `GrpoParam`, in order.
const GP_POLICY: usize = 0;
const GP_EPS_LOW: usize = 1;
const GP_EPS_HIGH: usize = 2;
const GP_DUAL_C: usize = 3;
const GP_TRL_DELTA: usize = 4;
const GP_HAS_KL: usize = 5;
const GP_KL_EST: usize = 6;
const GP_BETA: usize = 7;
const GP_KL_RATIO_W: usize = 8;
const GP_ENT_COEF: usize = 9;
const GP_CONV: usize = 10;
const GP_LR_CLAMP: usize = 11;
const GP_K3_INNER: usize = 12;
const GP_K3_VALUE: usize = 13;
const GP_GSPO_CAP: usize = 14;
const GP_TAU_POS: usize = 15;
const GP_TAU_NEG: usize = 16;
const GP_PPO_KL_COEF: usize = 17;
const GP_AGG: usize = 18;
const GP_PG_AGG: usize = 19;
const GP_N_TOKENS: usize = 20;
const GP_N_SEQS: usize = 21;
const GP_N_ROWS: usize = 22;
const GP_L_MAX: usize = 23;
const GP_COUNT: usize = 24;

// Columns of the per-response partials: kernels/grpo_loss.cu `GrpoStat`.
const GS_PG_LOSS: usize = 0;
const GS_KL_LOSS: usize = 1;
const GS_ENT_LOSS: usize = 2;
const GS_ACTIVE: usize = 3;
const GS_LOW: usize = 4;
const GS_HIGH: usize = 5;
const GS_CLIP: usize = 6;
const GS_DUAL: usize = 7;
const GS_AKL: usize = 8;
const GS_KL: usize = 9;
const GS_RATIO: usize = 10;
const GS_ENT: usize = 11;
const GS_COUNT: usize = 12;

fn policy_code(p: PolicyLoss) -> f64 {
    (match p {
        PolicyLoss::Vanilla => 0,
        PolicyLoss::Gspo => 1,
        PolicyLoss::Gpg => 2,
        PolicyLoss::ClipCov => 3,
        PolicyLoss::KlCov => 4,
        PolicyLoss::GeoMean => 5,
        PolicyLoss::Cispo => 6,
        PolicyLoss::Sapo => 7,
    }) as f64
}
fn kl_code(e: KlEstimator) -> f64 {
    (match e {
        KlEstimator::K1 => 0,
        KlEstimator::Abs => 1,
        KlEstimator::K2 => 2,
        KlEstimator::K3 => 3,
        KlEstimator::K1Plus => 4,
        KlEstimator::AbsPlus => 5,
        KlEstimator::K3Plus => 6,
    }) as f64
}
fn agg_code(a: Aggregation) -> f64 {
    (match a {
        Aggregation::TokenMean => 0,
        Aggregation::TokenSum => 1,
        Aggregation::SeqMeanTokenSum => 2,
        Aggregation::SeqMeanTokenMean => 3,
        Aggregation::SeqMeanTokenSumNorm => 4,
    }) as f64
}
fn conv_code(c: Convention) -> f64 {
    (match c {
        Convention::Mmr1 => 0,
        Convention::Verl => 1,
        Convention::Trl => 2,
    }) as f64
}

/// The kernel's parameter array. An unset option is +inf: every comparison it appears in is
/// then false, which is the formula without it.
fn params(cfg: &LossConfig, norm: &Normalizer) -> [f64; GP_COUNT] {
    let unset = |o: Option<f64>| o.unwrap_or(f64::INFINITY);
    let mut p = [0f64; GP_COUNT];
    p[GP_POLICY] = policy_code(cfg.policy);
    p[GP_EPS_LOW] = cfg.clip_eps_low;
    p[GP_EPS_HIGH] = cfg.clip_eps_high;
    p[GP_DUAL_C] = unset(cfg.dual_clip_c);
    p[GP_TRL_DELTA] = unset(cfg.trl_delta);
    p[GP_HAS_KL] = cfg.kl.is_some() as u8 as f64;
    p[GP_KL_EST] = cfg.kl.map_or(0.0, |k| kl_code(k.estimator));
    p[GP_BETA] = cfg.kl.map_or(0.0, |k| k.coef);
    p[GP_KL_RATIO_W] = cfg.kl_ratio_weighted as u8 as f64;
    p[GP_ENT_COEF] = cfg.entropy_coef;
    p[GP_CONV] = conv_code(cfg.convention);
    p[GP_LR_CLAMP] = unset(cfg.log_ratio_clamp);
    p[GP_K3_INNER] = unset(cfg.k3_inner_clamp);
    p[GP_K3_VALUE] = unset(cfg.k3_clamp);
    p[GP_GSPO_CAP] = unset(cfg.gspo_log_ratio_cap);
    p[GP_TAU_POS] = cfg.sapo_tau_pos;
    p[GP_TAU_NEG] = cfg.sapo_tau_neg;
    p[GP_PPO_KL_COEF] = cfg.cov.ppo_kl_coef;
    p[GP_AGG] = agg_code(cfg.agg);
    p[GP_PG_AGG] = agg_code(cfg.pg_aggregation());
    p[GP_N_TOKENS] = norm.global_tokens;
    p[GP_N_SEQS] = norm.global_seqs;
    p[GP_N_ROWS] = norm.global_rows;
    p[GP_L_MAX] = norm.max_response_len;
    p
}

fn opt<M>(b: Option<&DevBuf<M>>) -> Arg<'_, M> {
    b.map_or(Arg::Null, |b| Arg::Ptr(&b.mem))
}

/// Metrics from the reduced sums, as `policy_loss_f64` forms them.
fn metrics(s: &[f64], has_entropy: bool) -> LossMetrics {
    let mut m = LossMetrics {
        active_tokens: s[GS_ACTIVE],
        pg_loss: s[GS_PG_LOSS],
        kl_loss: s[GS_KL_LOSS],
        entropy_loss: s[GS_ENT_LOSS],
        ..Default::default()
    };
    let c = s[GS_ACTIVE];
    if c > 0.0 {
        m.clip_frac_low = s[GS_LOW] / c;
        m.clip_frac_high = s[GS_HIGH] / c;
        m.clip_frac = s[GS_CLIP] / c;
        m.dual_clip_frac = s[GS_DUAL] / c;
        m.approx_kl = s[GS_AKL] / c;
        m.kl = s[GS_KL] / c;
        m.mean_ratio = s[GS_RATIO] / c;
        m.entropy = has_entropy.then(|| s[GS_ENT] / c);
    } else {
        m.entropy = has_entropy.then_some(0.0);
    }
    m
}

impl<D: Device> CudaBackend<D> {
    /// The policy loss of one call on the device: writes d loss / d logp to `dlogp` (every
    /// token; 0 on masked ones) and, when `inputs.entropy` is given, d loss / d entropy to
    /// `dentropy`; returns the loss contribution and the metrics. Panics on the inputs the CPU
    /// reference panics on (lengths, offsets, a missing ref_logp / entropy / selection).
    pub fn grpo_loss(
        &self,
        inputs: &LossBufs<'_, DevBuf<D::Mem>>,
        cfg: &LossConfig,
        norm: Normalizer,
        dlogp: &mut DevBuf<D::Mem>,
        dentropy: Option<&mut DevBuf<D::Mem>>,
    ) -> LossSummary {
        let n = buf_len(inputs.logp);
        let rows = inputs.offsets.len().saturating_sub(1);
        let offsets = offsets_i64(inputs.offsets, n, "grpo_loss");
        assert_eq!(buf_len(inputs.logp_old), n, "logp_old length");
        assert_eq!(buf_len(inputs.mask), n, "mask length");
        assert_eq!(buf_len(dlogp), n, "dlogp length");
        let (adv, per_token) = match inputs.advantages {
            AdvBuf::PerResponse(a) => {
                assert_eq!(buf_len(a), rows, "advantages: one per response");
                (a, 0)
            }
            AdvBuf::PerToken(a) => {
                assert_eq!(buf_len(a), n, "advantages length");
                (a, 1)
            }
        };
        if cfg.kl.is_some() {
            let r = inputs.ref_logp.expect("cfg.kl is set but ref_logp was not provided");
            assert_eq!(buf_len(r), n, "ref_logp length");
        }
        if cfg.entropy_coef != 0.0 {
            assert!(inputs.entropy.is_some(), "entropy_coef != 0 but entropy was not provided");
        }
        if let Some(e) = inputs.entropy {
            assert_eq!(buf_len(e), n, "entropy length");
        }
        assert_eq!(
            inputs.entropy.is_some(),
            dentropy.is_some(),
            "give dentropy exactly when entropy is given"
        );
        if let Some(d) = &dentropy {
            assert_eq!(buf_len(d), n, "dentropy length");
        }
        if let Some(p) = inputs.pg_mask {
            assert_eq!(buf_len(p), n, "pg_mask length");
        }
        let selected = if cfg.policy.needs_selection() {
            let s =
                inputs.selected.expect("clip_cov / kl_cov need inputs.selected (cov_selection)");
            assert_eq!(s.len(), n, "selected length");
            Some(self.dev.upload(&s.iter().map(|&b| b as u8).collect::<Vec<u8>>()))
        } else {
            None
        };
        if let Some(c) = cfg.dual_clip_c {
            assert!(c > 1.0, "dual_clip_c must be > 1 (verl asserts the same)");
        }
        let has_entropy = inputs.entropy.is_some();
        if rows == 0 {
            return LossSummary { loss: 0.0, metrics: metrics(&[0.0; GS_COUNT], has_entropy) };
        }
        let prm = self.upload_f64(&params(cfg, &norm));
        let d_off = self.upload_i64(&offsets);
        let partials = self.dev.alloc(rows * GS_COUNT * 8);
        let dent_arg = match &dentropy {
            Some(d) => Arg::Ptr(&d.mem),
            None => Arg::Null,
        };
        self.dev.launch(
            "grpo_loss_f32",
            [rows as u32, 1, 1],
            [THREADS, 1, 1],
            0,
            &[
                Arg::Ptr(&dlogp.mem),
                dent_arg,
                Arg::Ptr(&partials),
                Arg::Ptr(&inputs.logp.mem),
                Arg::Ptr(&inputs.logp_old.mem),
                opt(inputs.ref_logp.filter(|_| cfg.kl.is_some())),
                opt(inputs.entropy),
                Arg::Ptr(&adv.mem),
                Arg::I32(per_token),
                Arg::Ptr(&inputs.mask.mem),
                opt(inputs.pg_mask),
                selected.as_ref().map_or(Arg::Null, Arg::Ptr),
                Arg::Ptr(&d_off),
                Arg::Ptr(&prm),
            ],
        );
        let s = self.reduce_rows_f64(&partials, rows, GS_COUNT);
        let m = metrics(&s, has_entropy);
        LossSummary { loss: m.pg_loss + m.kl_loss + m.entropy_loss, metrics: m }
    }
}
