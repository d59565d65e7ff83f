//! ZeRO stages 1 and 2 (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training
//! Trillion Parameter Models", section 5): the optimizer state is cut across the ranks instead
//! of held whole by each.
//!
//! The parameters and the AdamW moments are taken as ONE flat vector (the tensors in layout
//! order, concatenated) cut into the contiguous blocks `dist::shard(total, rank, world)`. Rank
//! r keeps the moments m and v of its block only (8 bytes a parameter over the world instead
//! of 8). An optimizer step ([`reduce_and_step`]):
//!
//! 1. reduce-scatter the gradients: rank r receives its block of the rank-order sum, the same
//!    bits as that slice of the replicated path's all-reduce;
//! 2. the global gradient norm from the blocks' partial sums of squares (f64, summed over ranks
//!    in rank order);
//! 3. clip and AdamW on the block (the backend's `adamw` op, element-wise, so one call over the
//!    block gives the bits of the per-tensor calls);
//! 4. all-gather the updated block into every rank's replica of the parameters.
//!
//! Stage 2 also releases the full gradient buffers after the reduce-scatter (they are
//! allocated again by the next step's `Workspace::zero_grads`): they are not held between
//! steps, so GRPO's rollouts and the evaluations run without them. The backward of a step
//! still accumulates the whole gradient (micro-batches add into it): a reduce-scatter in
//! buckets during the backward, which would also cut the gradient's peak, is not built.
//!
//! Master weights: both backends store parameters in f32 (`backend` module), so every rank's
//! replica IS the f32 master copy and the block the step updates is read from it; there is no
//! separate f32 master block while the weights are f32. [`bytes_per_param`] gives both the
//! layout as built and the bf16-weights layout of the issue.
//!
//! The gradient norm: the replicated path sums squares per tensor (f64) and then over tensors;
//! here the sum is cut at other places (blocks, then ranks), so the f64 norm may differ from
//! it in its last bits (relative 1e-16 or so). It enters the update only through the f32 clip
//! factor `min(max_norm / (norm + 1e-6), 1)`, which rounds to the same f32 unless the two f64
//! values straddle an f32 rounding boundary (a chance of about 1e-8 per clipped step); when
//! the gradient is not clipped the factor is exactly 1. The updates are therefore the
//! replicated path's bits (tests/suite/dp_mpi.rs and the tests below check it on whole runs).
//!
//! Checkpoints stay in the consolidated format: [`consolidated`] gathers the ranks' blocks of
//! the moments to rank 0's HOST memory (no device ever holds them whole) and rank 0 writes
//! today's files from there, so a run resumes with any world size and stage (the state is
//! re-sharded by [`shard_optimizer`]) and exports as before. Rank 0 needs host memory for
//! the whole moments while it writes (8 bytes a parameter: 61 GB for a 7B model).

use super::{flat_len, flat_slice, shard, Collective};
use crate::backend::cpu::Cpu;
use crate::backend::{AdamwStep, Backend};
use crate::optim::{clip_scale, AdamW, AdamwConfig, StepReport};
use crate::train::checkpoint::OptState;
use anyhow::{bail, ensure, Result};
use std::ops::Range;

/// Where a sharded optimizer's state sits in the flat parameter vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZeroShard {
    /// 1 (moments sharded) or 2 (also the gradients: reduce-scattered in buckets during the
    /// backward, `dist::buckets`, or with `grad_buckets` off released after each step).
    pub stage: u8,
    /// This rank's block of the flat parameter vector.
    pub range: Range<usize>,
    /// Length of every parameter tensor, in layout order (to rebuild per-tensor state).
    pub lens: Vec<usize>,
}

/// Checks a `--zero` / `dist.zero` value.
pub fn check_stage(stage: u8) -> Result<()> {
    if stage > 2 {
        bail!("ZeRO stage {stage} is not supported: use 0 (replicated optimizer state), 1 (AdamW moments sharded) or 2 (moments and gradients sharded)");
    }
    Ok(())
}

/// Turns a replicated optimizer (every rank holding the same per-tensor moments, as after
/// `sync_replicas`) into this rank's shard for ZeRO `stage` (0 leaves it replicated; one
/// sharded for `stage` already is left as it is). Every rank must call it with the same
/// `params` layout. Runs build the shard directly instead ([`fresh_optimizer`],
/// `checkpoint::load_checkpoint_sharded`), so the whole moments never sit on a device.
pub fn shard_optimizer<B: Backend>(
    be: &B,
    comm: &dyn Collective<B>,
    opt: &mut AdamW<B>,
    params: &[B::Buf],
    stage: u8,
) -> Result<()> {
    check_stage(stage)?;
    if let Some(z) = &opt.zero {
        ensure!(z.stage == stage, "shard_optimizer: the optimizer is sharded for ZeRO-{}", z.stage);
        return Ok(());
    }
    if stage == 0 {
        return Ok(());
    }
    let lens: Vec<usize> = params.iter().map(|p| be.len(p)).collect();
    ensure!(
        opt.m.len() == lens.len() && opt.m.iter().zip(&lens).all(|(m, &n)| be.len(m) == n),
        "shard_optimizer: the optimizer state is for another model"
    );
    let range = shard(lens.iter().sum(), comm.rank(), comm.world());
    opt.m = vec![flat_slice(be, &opt.m, range.clone())];
    opt.v = vec![flat_slice(be, &opt.v, range.clone())];
    opt.zero = Some(ZeroShard { stage, range, lens });
    Ok(())
}

/// A fresh optimizer for ZeRO `stage`: `AdamW::new` at stage 0; at 1 and 2 only this rank's
/// block of zero moments is allocated (the whole moments never exist on a device).
pub fn fresh_optimizer<B: Backend>(
    be: &B,
    comm: &dyn Collective<B>,
    params: &[B::Buf],
    cfg: AdamwConfig,
    stage: u8,
) -> Result<AdamW<B>> {
    check_stage(stage)?;
    if stage == 0 {
        return Ok(AdamW::new(be, params, cfg));
    }
    let lens: Vec<usize> = params.iter().map(|p| be.len(p)).collect();
    let range = shard(lens.iter().sum(), comm.rank(), comm.world());
    Ok(AdamW {
        cfg,
        m: vec![be.zeros(range.len())],
        v: vec![be.zeros(range.len())],
        step: 0,
        zero: Some(ZeroShard { stage, range, lens }),
    })
}

/// This rank's shard of a whole optimizer state held in host memory (a checkpoint read with
/// `load_optimizer(&Cpu, ..)`): only the block is uploaded.
pub fn shard_host<B: Backend>(
    be: &B,
    comm: &dyn Collective<B>,
    host: AdamW<Cpu>,
    stage: u8,
) -> Result<AdamW<B>> {
    check_stage(stage)?;
    let lens: Vec<usize> = host.m.iter().map(Vec::len).collect();
    if stage == 0 {
        let up = |t: &[Vec<f32>]| t.iter().map(|x| be.upload(x)).collect();
        return Ok(AdamW {
            cfg: host.cfg,
            m: up(&host.m),
            v: up(&host.v),
            step: host.step,
            zero: None,
        });
    }
    let range = shard(lens.iter().sum(), comm.rank(), comm.world());
    let block = |t: &[Vec<f32>]| be.upload(&flat_slice(&Cpu, t, range.clone()));
    Ok(AdamW {
        cfg: host.cfg,
        m: vec![block(&host.m)],
        v: vec![block(&host.v)],
        step: host.step,
        zero: Some(ZeroShard { stage, range, lens }),
    })
}

/// A sharded optimizer's per-tensor state gathered, in host memory, at rank 0 (which writes
/// checkpoints): `Some` there, `None` on the other ranks and for a replicated optimizer (use
/// it as it is: see [`for_save`]). A collective: every rank calls it.
pub fn consolidated<B: Backend>(
    be: &B,
    comm: &dyn Collective<B>,
    opt: &AdamW<B>,
) -> Result<Option<AdamW<Cpu>>> {
    let Some(z) = &opt.zero else { return Ok(None) };
    let total: usize = z.lens.iter().sum();
    let gather = |block: &B::Buf| -> Result<Vec<Vec<f32>>> {
        let all = comm.gather_to_root(&be.download(block), 0)?;
        if comm.rank() != 0 {
            return Ok(Vec::new());
        }
        let n: usize = all.iter().map(Vec::len).sum();
        ensure!(
            n == total,
            "ZeRO checkpoint: the ranks' blocks hold {n} values, the model {total}"
        );
        // Consumes the blocks as it goes: about one copy of the moment at a time.
        let mut flat = all.into_iter().flatten();
        Ok(z.lens.iter().map(|&k| flat.by_ref().take(k).collect()).collect())
    };
    let (m, v) = (gather(&opt.m[0])?, gather(&opt.v[0])?);
    Ok((comm.rank() == 0).then_some(AdamW { cfg: opt.cfg, m, v, step: opt.step, zero: None }))
}

/// The state rank 0 writes: the gathered host state of a sharded run, else the optimizer.
pub fn for_save<'a, B: Backend>(
    opt: &'a AdamW<B>,
    full: &'a Option<AdamW<Cpu>>,
) -> OptState<'a, B> {
    match full {
        Some(h) => OptState::Host(h),
        None => OptState::Device(opt),
    }
}

/// The data-parallel optimizer step, for every trainer: sums the ranks' gradients and updates
/// every rank's replica of `params` with learning rate `lr`. Replicated state (ZeRO 0): an
/// all-reduce of the gradients, then `AdamW::step` (the gradients keep the sum). Sharded
/// (ZeRO 1/2): see the module comment; the gradients keep this rank's own contribution
/// (stage 1) or are released (stage 2). The non-finite skip is `AdamW::step`'s: nothing
/// changes and the step does not count; every rank sees the same norm, so all skip alike.
pub fn reduce_and_step<B: Backend>(
    be: &B,
    comm: &dyn Collective<B>,
    opt: &mut AdamW<B>,
    params: &mut [B::Buf],
    grads: &mut [B::Buf],
    lr: f32,
) -> Result<StepReport> {
    let Some(z) = &opt.zero else {
        comm.all_reduce_sum(be, grads)?;
        return Ok(opt.step(be, params, grads, lr));
    };
    let _r = crate::nvtx_ranges::range(c"optimizer");
    ensure!(
        params.len() == z.lens.len() && grads.len() == z.lens.len(),
        "ZeRO step: {} parameters and {} gradients, the optimizer shard is for {}",
        params.len(),
        grads.len(),
        z.lens.len()
    );
    ensure!(
        flat_len(be, params) == z.lens.iter().sum::<usize>(),
        "ZeRO step: parameter sizes changed"
    );
    let g = comm.reduce_scatter_sum(be, grads)?;
    if z.stage >= 2 {
        // `Workspace::zero_grads` allocates them again at the next step.
        for b in grads.iter_mut() {
            *b = be.zeros(0);
        }
    }
    step_block(be, comm, opt, params, g, lr)
}

/// The sharded optimizer step from this rank's block `g` of the ranks' gradient sum, already
/// reduced (by [`reduce_and_step`]'s reduce-scatter, or during the backward by
/// `dist::buckets`): the global norm, clip, AdamW on the block, all-gather of the updated
/// weights. Every rank calls it.
pub fn step_block<B: Backend>(
    be: &B,
    comm: &dyn Collective<B>,
    opt: &mut AdamW<B>,
    params: &mut [B::Buf],
    g: B::Buf,
    lr: f32,
) -> Result<StepReport> {
    let Some(z) = &opt.zero else {
        bail!("a ZeRO step from a gradient block needs a sharded optimizer (ZeRO 1 or 2)");
    };
    ensure!(
        be.len(&g) == z.range.len(),
        "ZeRO step: a gradient block of {} values, this rank's block holds {}",
        be.len(&g),
        z.range.len()
    );
    ensure!(
        flat_len(be, params) == z.lens.iter().sum::<usize>(),
        "ZeRO step: parameter sizes changed"
    );
    let mut sq = [be.sum_squares(&g)];
    comm.all_reduce_sum_host(&mut sq)?;
    let norm = sq[0].sqrt();
    if !norm.is_finite() {
        return Ok(StepReport { grad_norm: norm, clip_scale: 1.0, skipped: true });
    }
    let scale = opt.cfg.max_grad_norm.map_or(1.0, |mx| clip_scale(norm, mx));
    opt.step += 1;
    let hp = AdamwStep {
        lr,
        beta1: opt.cfg.beta1,
        beta2: opt.cfg.beta2,
        eps: opt.cfg.eps,
        weight_decay: opt.cfg.weight_decay,
        step: opt.step,
        grad_scale: scale,
    };
    let range = z.range.clone();
    let mut p = flat_slice(be, params, range);
    let (m, v) = (&mut opt.m[0], &mut opt.v[0]);
    be.adamw(&mut p, &g, m, v, hp);
    comm.all_gather(be, &p, params)?;
    Ok(StepReport { grad_norm: norm, clip_scale: scale, skipped: false })
}

/// Device bytes a rank holds per model parameter for the model's training state (not the
/// activations), by part.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StateBytes {
    /// The weights the forward reads: f32 as built (which are also the master copy), bf16 in
    /// the `bf16_weights` layout.
    pub weights: f64,
    /// bf16 copies of the f32 weights kept for bf16 GEMMs (GPU, `--precision bf16`).
    pub shadows: f64,
    /// f32 master weights apart from `weights` (the `bf16_weights` layout only).
    pub master: f64,
    /// AdamW's m and v, f32.
    pub moments: f64,
    /// The f32 gradient accumulator.
    pub grads: f64,
}

impl StateBytes {
    pub fn total(&self) -> f64 {
        self.weights + self.shadows + self.master + self.moments + self.grads
    }
}

/// How a ZeRO-2 step holds its f32 gradient (stage 0 and 1 always hold it whole).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GradLayout {
    /// The whole gradient, reduce-scattered after the backward (`dist.grad_buckets = false`).
    Whole,
    /// Reduce-scattered in buckets during the backward (`dist::buckets`): the rank's block
    /// (4/N bytes a parameter) plus the buckets in flight at the peak, `in_flight` of the
    /// parameters (`ParamLayout::bucketed_grad_peak` / numel; `None`: model unknown, counted 0).
    Buckets { in_flight: Option<f64> },
}

/// Bytes per parameter per rank of a run of `world` ranks at ZeRO `stage`, at the step's peak.
///
/// As built (`bf16_weights` false): f32 weights (4, the master copy), bf16 shadows of them
/// when `shadows` (2), m and v (8, or 8/world when sharded) and the f32 gradient: whole (4)
/// at stages 0 and 1 and at stage 2 with `GradLayout::Whole` (freed between steps only);
/// at stage 2 with buckets 4/world + 4 x the fraction in flight. With `bf16_weights` (the
/// layout of the ZeRO paper's mixed precision, NOT built: bf16 weights in the replica, f32
/// master weights sharded with the moments): 2 + (4 + 8) / world + the gradient as above.
pub fn bytes_per_param(
    world: usize,
    stage: u8,
    shadows: bool,
    bf16_weights: bool,
    grads: GradLayout,
) -> StateBytes {
    let n = world.max(1) as f64;
    let per = |b: f64, sharded: bool| if sharded { b / n } else { b };
    let grads = match (stage, grads) {
        (2, GradLayout::Buckets { in_flight }) => 4.0 / n + 4.0 * in_flight.unwrap_or(0.0),
        _ => 4.0,
    };
    if bf16_weights {
        StateBytes {
            weights: 2.0,
            shadows: 0.0,
            master: per(4.0, stage >= 1),
            moments: per(8.0, stage >= 1),
            grads,
        }
    } else {
        StateBytes {
            weights: 4.0,
            shadows: if shadows { 2.0 } else { 0.0 },
            master: 0.0,
            moments: per(8.0, stage >= 1),
            grads,
        }
    }
}

/// The line a run prints at its start (rank 0) for a data-parallel or sharded run.
pub fn state_note(world: usize, stage: u8, grads: GradLayout, params: Option<usize>) -> String {
    let b = bytes_per_param(world, stage, false, false, grads);
    let size = params.map_or(String::new(), |p| {
        format!(" = {:.1} MB for {p} parameters", b.total() * p as f64 / 1e6)
    });
    let how = match (stage, grads) {
        (2, GradLayout::Buckets { in_flight: Some(f) }) => format!(
            " (the rank's block {:.2} + buckets in flight {:.2}: reduce-scattered during the backward)",
            4.0 / world.max(1) as f64,
            4.0 * f
        ),
        (2, GradLayout::Buckets { in_flight: None }) => {
            " (the rank's block + one layer's and the head's in flight: reduce-scattered during the backward)".into()
        }
        (2, GradLayout::Whole) => ", freed between steps".into(),
        _ => String::new(),
    };
    format!(
        "ZeRO-{stage} over {world} rank(s): model state {:.2} bytes/parameter/rank (f32 weights {}, \
         AdamW moments {:.2}, gradients {:.2}{how}){size}; +2 with bf16 GEMM weight shadows on a GPU",
        b.total(),
        b.weights,
        b.moments,
        b.grads,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::dist::thread_group::on_ranks;
    use crate::optim::AdamwConfig;

    /// Random values (never zero) of mixed magnitudes.
    fn noise(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let u = ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
                (u + 0.05f32.copysign(u)) * scale
            })
            .collect()
    }

    const LENS: [usize; 4] = [7, 1, 12, 5];

    /// `steps` optimizer steps of every rank on its own gradients (`grad(rank, step)`),
    /// replicated (`stage` 0) or sharded; returns rank 0's parameters, the consolidated moments
    /// and the reports (every rank's parameters must be identical).
    #[allow(clippy::type_complexity)]
    fn run(
        world: usize,
        stage: u8,
        cfg: AdamwConfig,
        grad: &(dyn Fn(usize, usize, usize) -> Vec<f32> + Sync),
        steps: usize,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<StepReport>) {
        let out = on_ranks(world, |g| {
            let be = Cpu;
            let r = Collective::<Cpu>::rank(&g);
            let mut params: Vec<Vec<f32>> =
                LENS.iter().enumerate().map(|(t, &n)| noise(n, 100 + t as u64, 1.0)).collect();
            // Stage 1 cuts a whole optimizer; stage 2 builds the block directly, as runs do.
            let mut opt = if stage == 2 {
                fresh_optimizer(&be, &g, &params, cfg, stage).unwrap()
            } else {
                let mut o = AdamW::new(&be, &params, cfg);
                shard_optimizer(&be, &g, &mut o, &params, stage).unwrap();
                o
            };
            let mut reps = Vec::new();
            for s in 0..steps {
                let mut grads: Vec<Vec<f32>> =
                    LENS.iter().enumerate().map(|(t, _)| grad(r, s, t)).collect();
                reps.push(
                    reduce_and_step(&be, &g, &mut opt, &mut params, &mut grads, 1e-2).unwrap(),
                );
                if stage == 2 {
                    assert!(grads.iter().all(|b| b.is_empty()), "ZeRO-2 releases the gradients");
                }
            }
            // The moments as a checkpoint gets them: gathered to rank 0's host memory.
            let full = consolidated(&be, &g, &opt).unwrap();
            assert_eq!(full.is_some(), stage > 0 && r == 0);
            let (m, v) = match &full {
                Some(h) => {
                    assert_eq!(h.step, opt.step);
                    (h.m.concat(), h.v.concat())
                }
                None => (opt.m.concat(), opt.v.concat()),
            };
            (params.concat(), m, v, reps)
        });
        for o in &out[1..] {
            assert_eq!(o.0, out[0].0, "every rank holds the same parameters");
        }
        out.into_iter().next().unwrap()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn sharded_steps_equal_the_replicated_ones_bit_for_bit() {
        // Gradients large enough that the clip (max norm 1) is active on every step.
        let grad = |r: usize, s: usize, t: usize| noise(LENS[t], (r * 31 + s * 7 + t) as u64, 3.0);
        let cfg = AdamwConfig { weight_decay: 0.01, ..AdamwConfig::default() };
        for world in [1, 2, 3, 5] {
            let want = run(world, 0, cfg, &grad, 4);
            assert!(want.3.iter().all(|r| r.clip_scale < 1.0), "the clip is exercised");
            for stage in [1, 2] {
                let got = run(world, stage, cfg, &grad, 4);
                let what = format!("world {world} stage {stage}");
                assert_eq!(bits(&got.0), bits(&want.0), "{what}: parameters");
                assert_eq!(bits(&got.1), bits(&want.1), "{what}: m");
                assert_eq!(bits(&got.2), bits(&want.2), "{what}: v");
                for (a, b) in got.3.iter().zip(&want.3) {
                    assert!((a.grad_norm - b.grad_norm).abs() <= 1e-12 * b.grad_norm, "{what}");
                    assert_eq!(a.clip_scale.to_bits(), b.clip_scale.to_bits(), "{what}");
                }
            }
        }
    }

    #[test]
    fn a_non_finite_gradient_skips_the_step_on_every_rank() {
        // Rank 1's gradient of step 1 holds a NaN inside tensor 2: every rank skips step 1,
        // whichever rank's block the NaN falls in, and the step does not count.
        let grad = |r: usize, s: usize, t: usize| {
            let mut g = noise(LENS[t], (r * 31 + s * 7 + t) as u64, 0.1);
            if r == 1 && s == 1 && t == 2 {
                g[5] = f32::NAN;
            }
            g
        };
        let cfg = AdamwConfig::default();
        for world in [2, 3] {
            let want = run(world, 0, cfg, &grad, 3);
            assert!(want.3[1].skipped && !want.3[0].skipped && !want.3[2].skipped);
            for stage in [1, 2] {
                let got = run(world, stage, cfg, &grad, 3);
                assert_eq!(
                    got.3.iter().map(|r| r.skipped).collect::<Vec<_>>(),
                    vec![false, true, false]
                );
                assert_eq!(bits(&got.0), bits(&want.0), "world {world} stage {stage}");
                assert_eq!(bits(&got.1), bits(&want.1));
            }
        }
    }

    #[test]
    fn consolidated_state_reshards_to_another_world() {
        // The moments of a 3-rank sharded run, gathered, sharded again over 2 ranks and
        // gathered back: the same values (what a checkpoint resumed on another world does).
        let grad = |r: usize, s: usize, t: usize| noise(LENS[t], (r + s * 5 + t) as u64, 0.3);
        let (_, m, v, _) = run(3, 1, AdamwConfig::default(), &grad, 2);
        let back = on_ranks(2, |g| {
            let be = Cpu;
            let split = |flat: &[f32]| -> Vec<Vec<f32>> {
                let mut off = 0;
                LENS.iter()
                    .map(|&n| {
                        off += n;
                        flat[off - n..off].to_vec()
                    })
                    .collect()
            };
            let params: Vec<Vec<f32>> = LENS.iter().map(|&n| vec![0.0; n]).collect();
            let mut opt = AdamW::new(&be, &params, AdamwConfig::default());
            (opt.m, opt.v) = (split(&m), split(&v));
            shard_optimizer(&be, &g, &mut opt, &params, 2).unwrap();
            let r = Collective::<Cpu>::rank(&g);
            assert_eq!(opt.m[0].len(), shard(25, r, 2).len());
            // A checkpoint read to host memory and sharded there gives the same block.
            let host = AdamW {
                cfg: AdamwConfig::default(),
                m: split(&m),
                v: split(&v),
                step: 7,
                zero: None,
            };
            let direct = shard_host(&be, &g, host, 2).unwrap();
            assert_eq!((&direct.m, &direct.v, &direct.zero), (&opt.m, &opt.v, &opt.zero));
            assert_eq!(direct.step, 7);
            let full = consolidated(&be, &g, &opt).unwrap();
            assert_eq!(full.is_some(), r == 0, "rank 0 alone receives the state");
            full.map(|h| (h.m, h.v))
        });
        let (bm, bv) = back[0].clone().unwrap();
        let split_lens: Vec<usize> = bm.iter().map(Vec::len).collect();
        assert_eq!(split_lens, LENS, "per-tensor layout");
        assert_eq!((bits(&bm.concat()), bits(&bv.concat())), (bits(&m), bits(&v)));
        assert!(check_stage(3).unwrap_err().to_string().contains("use 0"));
    }

    #[test]
    fn bytes_per_parameter_follow_the_stage() {
        use GradLayout::{Buckets, Whole};
        let bk = |f: f64| Buckets { in_flight: Some(f) };
        // Replicated as built: 4 + 8 + 4 (+ 2 shadows) = the 18 of scripts/memory_fit.py.
        assert_eq!(bytes_per_param(8, 0, true, false, Whole).total(), 18.0);
        assert_eq!(bytes_per_param(8, 1, false, false, bk(0.5)).total(), 4.0 + 1.0 + 4.0);
        assert_eq!(bytes_per_param(8, 2, false, false, Whole).total(), 9.0);
        // Bucketed ZeRO 2: 4 + 1 + 4/8 + 4 x in flight.
        assert_eq!(bytes_per_param(8, 2, false, false, bk(0.125)).total(), 4.0 + 1.0 + 0.5 + 0.5);
        // The ZeRO paper's 16 bytes (2 + 2 + 12 with bf16 gradients; ours are f32: 18).
        assert_eq!(bytes_per_param(1, 0, false, true, Whole).total(), 18.0);
        assert_eq!(bytes_per_param(8, 1, false, true, Whole).total(), 2.0 + 1.5 + 4.0);
        assert_eq!(bytes_per_param(8, 2, false, true, bk(0.0)).total(), 2.0 + 2.0);
        let note = state_note(2, 1, Whole, Some(1000));
        assert!(note.contains("ZeRO-1 over 2 rank(s): model state 12.00"), "{note}");
        // scripts/memory_fit.py --world 8: bucketed ZeRO 2 with shadows, 7.79 B/param for
        // Qwen2.5-7B (untied: the embedding table is the largest bucket) and 8.00 for 3B
        // (tied: embedding + final norm + one layer in flight).
        use crate::commands::init_model::Arch;
        for (arch, want) in [(Arch::Qwen25_7b, 7.79), (Arch::Qwen25_3b, 8.00)] {
            let lay = crate::model::ParamLayout::new(&arch.config());
            let f = lay.bucketed_grad_peak() as f64 / lay.numel() as f64;
            let got = bytes_per_param(8, 2, true, false, bk(f)).total();
            assert!((got - want).abs() < 0.005, "{arch:?}: {got}");
        }
        let note = state_note(4, 2, bk(0.25), Some(1000));
        assert!(note.contains("model state 8.00") && note.contains("in flight 1.00"), "{note}");
    }
}
