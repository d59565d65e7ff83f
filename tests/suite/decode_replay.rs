//! Decode steps replayed as one graph (`backend::cuda::replay`; on the GPU a CUDA graph, on
//! the emulator the units kept from the captured step, run again with the new step's
//! uploads): every step's logits are the bits of the same step run op by op, through steps
//! that change shape (fewer slots), cross a flash-decode key chunk (more split items), and
//! go back; and the steady steps are replayed, not rerun. On the emulator the replay runs the
//! units kept from the capture, not the new ones, so a replay key that missed a parameter
//! (a position passed as a scalar, a grid that follows the lengths) gives wrong logits here.
//!
//! On a GPU (`gpu::`, #[ignore]d, run by scripts/gpu-check.sh) the same comparison with
//! CUDA graphs on.
#![cfg(any(feature = "emu", feature = "cuda"))]

use crate::common;
use common::*;
use mmr1_fast::backend::cuda::device::Device;
use mmr1_fast::backend::cuda::replay::ReplayMode::{self, Always, Auto, Off};
use mmr1_fast::backend::cuda::replay::ReplayStats;
use mmr1_fast::backend::cuda::{AttnKernel, CudaBackend};
use mmr1_fast::backend::precision::Precision;
use mmr1_fast::backend::Backend;
use mmr1_fast::model::{Qwen2, Qwen2Config};

const VOCAB: usize = 97;

/// Head dim 64: the staged flash-decode kernel (the tiny config's head dim 8 takes the split one).
fn d64_config() -> Qwen2Config {
    let mut cfg = tiny_config(VOCAB, false);
    cfg.hidden_size = 128;
    cfg.num_attention_heads = 2;
    cfg.num_key_value_heads = Some(1);
    cfg
}

/// Logits of every step (prefill, then decode steps), as bits: 3 slots with ragged prompts
/// of `prompt` + 0/3/6 tokens, each step feeding every slot the argmax of its last logits, except
/// steps 4-5 which feed only slots 0 and 2 (another shape), then all three again.
fn steps<B: Backend>(be: &B, cfg: Qwen2Config, prompt: usize, n: usize) -> Vec<Vec<u32>> {
    let model: Qwen2<B> = random_model_on(be, cfg, 5);
    let mut cache = model.new_cache(be, 3, prompt + 6 + n + 1);
    let prompts: Vec<Vec<u32>> =
        (0..3).map(|s| random_ids(prompt + 3 * s, VOCAB, 20 + s as u64)).collect();
    let inputs: Vec<(usize, &[u32])> = prompts.iter().map(|p| &p[..]).enumerate().collect();
    let mut logits = model.decode_step(be, &mut cache, &inputs).unwrap();
    let mut out = vec![bits(&logits)];
    let mut last: Vec<u32> = (0..3).map(|s| argmax(&logits[s * VOCAB..(s + 1) * VOCAB])).collect();
    for step in 0..n {
        let slots: Vec<usize> = if (4..6).contains(&step) { vec![0, 2] } else { vec![0, 1, 2] };
        let toks: Vec<[u32; 1]> = slots.iter().map(|&s| [last[s]]).collect();
        let inputs: Vec<(usize, &[u32])> =
            slots.iter().zip(&toks).map(|(&s, t)| (s, &t[..])).collect();
        logits = model.decode_step(be, &mut cache, &inputs).unwrap();
        for (i, &s) in slots.iter().enumerate() {
            last[s] = argmax(&logits[i * VOCAB..(i + 1) * VOCAB]);
        }
        out.push(bits(&logits));
    }
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn argmax(v: &[f32]) -> u32 {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap() as u32
}

/// The steps made by `make(Off)` and by `make(mode)`, compared; `mode`'s replay counters.
fn check<D: Device>(
    cfg: Qwen2Config,
    prompt: usize,
    n: usize,
    mode: ReplayMode,
    make: impl Fn(ReplayMode) -> CudaBackend<D>,
) -> ReplayStats {
    let plain = make(ReplayMode::Off);
    assert_eq!(plain.replay_stats(), None, "replay off reports nothing");
    let want = steps(&plain, cfg.clone(), prompt, n);
    let be = make(mode);
    let got = steps(&be, cfg, prompt, n);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(g == w, "step {i}: replayed logits differ from op-by-op logits");
    }
    be.replay_stats().expect("replay on reports its counters")
}

#[cfg(feature = "emu")]
fn emu(
    mode: ReplayMode,
    attn: AttnKernel,
    p: Precision,
) -> CudaBackend<mmr1_fast::backend::cuda::emu::EmuDevice> {
    use mmr1_fast::backend::cuda::emu::{EmuDevice, Schedule};
    let dev =
        EmuDevice::with_schedules(&[Schedule::Forward]).with_caching(true).with_replay_mode(mode);
    let mut be = CudaBackend::with_device(dev).with_precision(p).unwrap();
    be.set_attention(attn);
    be
}

#[cfg(feature = "emu")]
#[test]
fn replayed_steps_equal_op_by_op_steps_f32_reference_attention() {
    let n = 12;
    let st = check(tiny_config(VOCAB, false), 5, n, Always, |m| {
        emu(m, AttnKernel::Reference, Precision::F32)
    });
    // Steps 0-3 and 6-11 share a shape, 4-5 another. A shape's first step runs as plain work
    // (the prefill, steps 0 and 4: 10 stretches), its second is recorded (1, 5), its third
    // captured and replayed (2); step 6 finds the first shape's activations planned again at
    // new addresses (recorded), 7 is captured: replays at 2-3 and 7-11. Each step starts from
    // the same free blocks of its shape's pool, so this is exact, not a lower bound.
    assert_eq!((st.stretches, st.replays, st.captures, st.fallbacks), (10, 7, 2, 1), "{st:?}");
    assert!(st.units_replayed > 0);
}

#[cfg(feature = "emu")]
#[test]
fn replayed_steps_equal_op_by_op_steps_bf16_flash_decode_across_a_key_chunk() {
    // Prompts of 57-63 tokens: the slots cross the edge of flash decode's 32-key chunks at
    // 64 keys at different steps (slot 2 at step 1, slot 1 at step 6, slot 0 at step 7), so
    // the split items grow (padded: the grid stays) while the combine list changes its
    // contents. As in the f32 test, with one more recording when the padded split items
    // double (8 -> 16) at step 7 (9 items: 65, 66 and 71 keys), the first shape's capture.
    let st = check(d64_config(), 57, 12, Always, |m| emu(m, AttnKernel::Flash, Precision::Bf16));
    assert_eq!((st.stretches, st.replays), (10, 6), "{st:?}");
    let st = check(tiny_config(VOCAB, false), 3, 16, Always, |m| {
        emu(m, AttnKernel::Flash, Precision::Bf16)
    });
    assert_eq!((st.stretches, st.replays), (14, 11), "{st:?}");
}

/// `MMR1_GRAPHS=auto` (the GPU's default): steps with a graph at hand alternate graph and
/// op-by-op runs, then keep the faster by their wall time (here the emulator's host time, so
/// which way wins varies); every step's logits are still those of the op-by-op run.
#[cfg(feature = "emu")]
#[test]
fn auto_mode_steps_equal_op_by_op_steps() {
    let st = check(d64_config(), 57, 16, Auto, |m| emu(m, AttnKernel::Flash, Precision::Bf16));
    // The steps `Always` replays (10 of these 16, after 2 captures and 2 fallbacks) either
    // replay or run op by op by choice: a step run op by op leaves the pools as a replayed one
    // does, so the next graph step still matches. Which of them run op by op is the clock's.
    assert!(st.run_live >= 1 && st.replays >= 1, "{st:?}");
    assert_eq!((st.captures, st.fallbacks, st.replays + st.run_live), (2, 2, 10), "{st:?}");
}

/// Stacked weights (one GEMM for q, k and v, one for gate and up: `Backend::stack_rows`) give
/// every step the logits of a GEMM per matrix, bit for bit on the emulator: the prefill,
/// decode steps of two shapes, flash decode across a key chunk, with and without replay.
/// (tests/suite/kernel_profile.rs counts the 3 GEMMs a layer they save.)
#[cfg(feature = "emu")]
#[test]
fn stacked_weights_give_the_logits_of_a_gemm_per_matrix() {
    for (cfg, prompt, attn) in [
        (tiny_config(VOCAB, false), 5, AttnKernel::Reference),
        (d64_config(), 120, AttnKernel::Flash),
    ] {
        for replay in [Off, Always] {
            let make = |stacked| emu(replay, attn, Precision::Bf16).with_stacked_gemms(stacked);
            let want = steps(&make(false), cfg.clone(), prompt, 8);
            let got = steps(&make(true), cfg.clone(), prompt, 8);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g == w,
                    "{attn:?}, replay {replay:?}, step {i}: stacked weights changed it"
                );
            }
        }
    }
}

/// Replay is on by default on the emulator (so CI decodes through it), off with MMR1_GRAPHS=0.
#[cfg(feature = "emu")]
#[test]
fn the_emulator_replays_unless_told_not_to() {
    use mmr1_fast::backend::cuda::emu::{EmuDevice, Schedule};
    let off = std::env::var("MMR1_GRAPHS").is_ok_and(|v| v == "0");
    let be = CudaBackend::with_device(EmuDevice::with_schedules(&[Schedule::Forward]));
    assert_eq!(be.replay_stats().is_some(), !off);
}

#[cfg(feature = "emu")]
#[test]
fn a_decode_step_replays_in_one_go_without_rerunning_its_units() {
    use mmr1_fast::backend::cuda::emu::{EmuDevice, Schedule};
    use mmr1_fast::backend::profile::since;
    // With the profile on, units are counted when they are submitted: a replayed step counts
    // what it launched, and the counts of a replayed and a live step are the same.
    let dev = EmuDevice::with_schedules(&[Schedule::Forward])
        .with_caching(true)
        .with_replay(true)
        .with_profile();
    let be = CudaBackend::with_device(dev).with_precision(Precision::Bf16).unwrap();
    let model = random_model_on(&be, tiny_config(VOCAB, false), 5);
    let mut cache = model.new_cache(&be, 2, 40);
    model.decode_step(&be, &mut cache, &[(0, &[1, 2, 3][..]), (1, &[4][..])]).unwrap();
    let mut per_step = Vec::new();
    for t in 0..8u32 {
        let (p0, r0) = (be.kernel_profile(), be.replay_stats().unwrap());
        model.decode_step(&be, &mut cache, &[(0, &[t][..]), (1, &[t + 1][..])]).unwrap();
        let calls: u64 = since(&p0, &be.kernel_profile()).iter().map(|k| k.calls).sum();
        let r = be.replay_stats().unwrap();
        per_step.push((calls, r.replays - r0.replays));
    }
    // (The first decode step also plans the step's activations.)
    let launches = per_step[1].0;
    assert!(per_step[1..].iter().all(|&(c, _)| c == launches), "{per_step:?}");
    // The shape's first step runs plain; the next ones fill its own pool and are captured;
    // the rest replay.
    assert!(per_step[..2].iter().all(|&(_, r)| r == 0), "{per_step:?}");
    assert!(per_step[2..].iter().all(|&(_, r)| r == 1), "steady steps replay: {per_step:?}");
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::*;

    use mmr1_fast::backend::cuda::driver::CudaDevice;

    fn gpu(mode: ReplayMode, attn: AttnKernel, p: Precision) -> CudaBackend<CudaDevice> {
        let dev = CudaDevice::with_replay_mode(0, mode).unwrap();
        let be = CudaBackend::with_device(dev).attention_from_env().unwrap();
        let mut be = be.with_precision(p).unwrap();
        be.set_attention(attn);
        be
    }

    #[test]
    #[ignore = "needs a GPU (scripts/gpu-check.sh)"]
    fn cuda_graph_steps_equal_op_by_op_steps() {
        let n = 12;
        for (attn, p, cfg, prompt) in [
            (AttnKernel::Reference, Precision::F32, tiny_config(VOCAB, false), 5),
            (AttnKernel::Flash, Precision::Bf16, d64_config(), 57),
        ] {
            let st = check(cfg, prompt, n, Always, |m| gpu(m, attn, p));
            assert!(st.replays >= n as u64 - 7, "{attn:?} {p:?}: {st:?}");
        }
        // MMR1_GRAPHS=auto, the GPU's default: graph and op-by-op steps mixed, the same logits.
        let st = check(d64_config(), 57, 16, Auto, |m| gpu(m, AttnKernel::Flash, Precision::Bf16));
        assert!(st.captures >= 1 && st.run_live >= 1, "auto: {st:?}");
    }
}
