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

use super::buf_len;
use crate::backend::cuda::device::{Arg, Device};
use crate::backend::cuda::{CudaBackend, DevBuf};
use crate::backend::rl_ops::{AdvBuf, LossBufs, LossSummary};
use crate::rl::advantage::Convention;
use crate::rl::grpo::{Aggregation, KlEstimator, LossConfig, LossMetrics, Normalizer, PolicyLoss};

/// Threads per block of both kernels (GRPO_THREADS in the kernel).
const THREADS: u32 = 256;
/// 4-token chunks per thread of the streaming kernel at full grid (GRPO_STREAM_CHUNKS), and
/// its largest grid (GRPO_STREAM_MAX_BLOCKS); past that, threads take more chunks.
const STREAM_CHUNKS: usize = 2;
const STREAM_MAX_BLOCKS: usize = 4096;

/// Blocks of `grpo_loss_stream_f32` for `n` tokens: a function of `n` alone, so the order
/// of every sum is too.
fn stream_blocks(n: usize) -> usize {
    n.div_ceil(4).div_ceil(THREADS as usize * STREAM_CHUNKS).clamp(1, STREAM_MAX_BLOCKS)
}

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

fn policy_code(p: PolicyLoss) -> i32 {
    match p {
        PolicyLoss::Vanilla => 0,
        PolicyLoss::Gspo => 1,
        PolicyLoss::Gpg => 2,
        PolicyLoss::ClipCov => 3,
        PolicyLoss::KlCov => 4,
        PolicyLoss::GeoMean => 5,
        PolicyLoss::Cispo => 6,
        PolicyLoss::Sapo => 7,
    }
}
fn kl_code(e: KlEstimator) -> i32 {
    match e {
        KlEstimator::K1 => 0,
        KlEstimator::Abs => 1,
        KlEstimator::K2 => 2,
        KlEstimator::K3 => 3,
        KlEstimator::K1Plus => 4,
        KlEstimator::AbsPlus => 5,
        KlEstimator::K3Plus => 6,
    }
}
fn agg_code(a: Aggregation) -> i32 {
    match a {
        Aggregation::TokenMean => 0,
        Aggregation::TokenSum => 1,
        Aggregation::SeqMeanTokenSum => 2,
        Aggregation::SeqMeanTokenMean => 3,
        Aggregation::SeqMeanTokenSumNorm => 4,
    }
}
fn conv_code(c: Convention) -> i32 {
    match c {
        Convention::Mmr1 => 0,
        Convention::Verl => 1,
        Convention::Trl => 2,
    }
}

/// Whether the streaming kernel computes this loss: every token's terms depend only on the
/// token and its advantage (not GSPO's or GMPO's sequence terms, nor a token weight that
/// divides by the response's active count).
fn streams(cfg: &LossConfig) -> bool {
    !matches!(cfg.policy, PolicyLoss::Gspo | PolicyLoss::GeoMean)
        && cfg.agg != Aggregation::SeqMeanTokenMean
        && cfg.pg_aggregation() != Aggregation::SeqMeanTokenMean
}

/// The options as the kernels take them (GRPO_PRM_ARGS in kernels/grpo_loss.cu): the codes
/// packed into one int, then the numbers. An unset option is +inf: every comparison it
/// appears in is then false, which is the formula without it. Kernel arguments rather than an
/// uploaded array, so that a call moves nothing to the device but what it launches.
fn prm_args<'a, M>(cfg: &LossConfig, norm: &Normalizer) -> [Arg<'a, M>; 18] {
    let unset = |o: Option<f64>| Arg::F64(o.unwrap_or(f64::INFINITY));
    let modes = policy_code(cfg.policy)
        | cfg.kl.map_or(0, |k| kl_code(k.estimator)) << 4
        | conv_code(cfg.convention) << 8
        | agg_code(cfg.agg) << 10
        | agg_code(cfg.pg_aggregation()) << 13
        | (cfg.kl.is_some() as i32) << 16
        | (cfg.kl_ratio_weighted as i32) << 17;
    [
        Arg::I32(modes),
        Arg::F64(cfg.clip_eps_low),
        Arg::F64(cfg.clip_eps_high),
        unset(cfg.dual_clip_c),
        unset(cfg.trl_delta),
        Arg::F64(cfg.kl.map_or(0.0, |k| k.coef)),
        Arg::F64(cfg.entropy_coef),
        unset(cfg.log_ratio_clamp),
        unset(cfg.k3_inner_clamp),
        unset(cfg.k3_clamp),
        unset(cfg.gspo_log_ratio_cap),
        Arg::F64(cfg.sapo_tau_pos),
        Arg::F64(cfg.sapo_tau_neg),
        Arg::F64(cfg.cov.ppo_kl_coef),
        Arg::F64(norm.global_tokens),
        Arg::F64(norm.global_seqs),
        Arg::F64(norm.global_rows),
        Arg::F64(norm.max_response_len),
    ]
}

fn opt<M>(b: Option<&DevBuf<M>>) -> Arg<'_, M> {
    b.map_or(Arg::Null, |b| Arg::Ptr(b.mem()))
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
            // bool is one byte holding 0 or 1: uploaded as it is held, no converted copy.
            Some(self.dev.upload(bytemuck::cast_slice::<bool, u8>(if s.is_empty() {
                &[false]
            } else {
                s
            })))
        } else {
            None
        };
        if let Some(c) = cfg.dual_clip_c {
            assert!(c > 1.0, "dual_clip_c must be > 1 (verl asserts the same)");
        }
        let has_entropy = inputs.entropy.is_some();
        if rows == 0 {
            assert_eq!(inputs.offsets, [0], "grpo_loss: offsets must start at 0");
            assert_eq!(n, 0, "grpo_loss: offsets must end at the element count");
            return LossSummary { loss: 0.0, metrics: metrics(&[0.0; GS_COUNT], has_entropy) };
        }
        let seg = self.segments(inputs.offsets, n, "grpo_loss");
        let (name, blocks) = if streams(cfg) {
            ("grpo_loss_stream_f32", stream_blocks(n))
        } else {
            ("grpo_loss_f32", rows)
        };
        let partials = self.dev.alloc(blocks * GS_COUNT * 8);
        // Both kernels: the buffers, then their shape, then the options.
        let mut args = vec![
            Arg::Ptr(dlogp.mem()),
            dentropy.as_ref().map_or(Arg::Null, |d| Arg::Ptr(d.mem())),
            Arg::Ptr(&partials),
            Arg::Ptr(inputs.logp.mem()),
            Arg::Ptr(inputs.logp_old.mem()),
            opt(inputs.ref_logp.filter(|_| cfg.kl.is_some())),
            opt(inputs.entropy),
            Arg::Ptr(adv.mem()),
            Arg::I32(per_token),
            Arg::Ptr(inputs.mask.mem()),
            opt(inputs.pg_mask),
            selected.as_ref().map_or(Arg::Null, Arg::Ptr),
            seg.offsets_arg(),
        ];
        if name == "grpo_loss_stream_f32" {
            args.extend([Arg::I64(rows as i64), Arg::I64(seg.len_arg()), Arg::I64(n as i64)]);
        } else {
            args.push(Arg::I64(seg.len_arg()));
        }
        args.extend(prm_args(cfg, &norm));
        self.dev.launch(name, [blocks as u32, 1, 1], [THREADS, 1, 1], 0, &args);
        let s = self.reduce_rows_f64(&partials, blocks, GS_COUNT);
        let m = metrics(&s, has_entropy);
        LossSummary { loss: m.pg_loss + m.kl_loss + m.entropy_loss, metrics: m }
    }
}
