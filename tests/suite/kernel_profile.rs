//! Per-kernel device time (`MMR1_PROFILE=1`, src/backend/profile.rs) on the emulator: a
//! forward pass is attributed to the kernels and GEMM shapes the model launches, with the
//! counts its structure implies, and nothing is recorded when profiling is off.
#![cfg(feature = "emu")]

use crate::common;
use common::*;
use mmr1_fast::backend::cuda::emu::{EmuDevice, Schedule};
use mmr1_fast::backend::cuda::{AttnKernel, CudaBackend};
use mmr1_fast::backend::profile::{self, since};
use mmr1_fast::backend::Backend;
use mmr1_fast::model::init::{init_params, Init};
use mmr1_fast::model::{Packed, ParamLayout, Qwen2};
use mmr1_fast::train::{forward_logprobs, Workspace};

fn calls(p: &[mmr1_fast::backend::profile::KernelTime], pred: impl Fn(&str) -> bool) -> u64 {
    p.iter().filter(|k| pred(&k.name)).map(|k| k.calls).sum()
}

#[test]
fn a_forward_pass_is_attributed_to_the_kernels_it_launches() {
    let be =
        CudaBackend::with_device(EmuDevice::with_schedules(&[Schedule::Forward]).with_profile());
    assert!(be.kernel_profile().is_empty(), "nothing ran yet");
    let cfg = tiny_config(97, false);
    let layers = cfg.num_hidden_layers as u64;
    let layout = ParamLayout::new(&cfg);
    let model = Qwen2::from_host(
        &be,
        cfg,
        layout.clone(),
        &init_params(&layout, Init::HuggingFace { std: 0.02 }, 3),
    );
    let batch = Packed::new(&[random_ids(11, 97, 1), random_ids(6, 97, 2)]);
    let mut ws = Workspace::new(&model, &be);
    let before = be.kernel_profile();
    forward_logprobs(&be, &model, &batch, 1.0, &mut ws).unwrap();
    let one = since(&before, &be.kernel_profile());
    // Two RMSNorms a layer and the final one: the first layer's input norm alone, every other
    // with the residual add before it; seven projections a layer and the head.
    assert_eq!(calls(&one, |n| n.starts_with("rmsnorm")), 1, "{one:?}");
    assert_eq!(calls(&one, |n| n == "add_rmsnorm_f32"), 2 * layers, "{one:?}");
    assert_eq!(calls(&one, |n| n.starts_with("gemm_")), 7 * layers + 1, "{one:?}");
    assert_eq!(
        calls(&one, |n| n.starts_with("gemm_") && n.contains(" 17x97x")),
        1,
        "the head: 17 rows x vocab 97"
    );
    assert!(one.iter().all(|k| k.seconds > 0.0 && k.calls > 0), "{one:?}");
    assert!(one.windows(2).all(|w| w[0].seconds >= w[1].seconds), "largest first");
    // A second pass doubles the model's counts (the first pass also planned and zeroed the
    // workspace: fills differ); `since` takes only what ran in between.
    let mid = be.kernel_profile();
    forward_logprobs(&be, &model, &batch, 1.0, &mut ws).unwrap();
    let two = be.kernel_profile();
    let of_model = |n: &str| n.contains("rmsnorm") || n.starts_with("gemm_");
    for k in one.iter().filter(|k| of_model(&k.name)) {
        let total = two.iter().find(|t| t.name == k.name).expect("same kernels again");
        let first = before.iter().find(|t| t.name == k.name).map_or(0, |t| t.calls);
        assert_eq!(total.calls - first, 2 * k.calls, "{}", k.name);
    }
    let model_calls = |p: &[mmr1_fast::backend::profile::KernelTime]| {
        calls(p, |n| of_model(n) || n.starts_with("logprobs"))
    };
    assert_eq!(model_calls(&since(&mid, &two)), model_calls(&one));
}

#[test]
fn nothing_is_recorded_without_profiling() {
    if std::env::var("MMR1_PROFILE").is_ok_and(|v| v == "1") {
        return; // the environment turned it on for every device
    }
    let be = CudaBackend::with_device(EmuDevice::with_schedules(&[Schedule::Forward]));
    let cfg = tiny_config(97, false);
    let layout = ParamLayout::new(&cfg);
    let model = Qwen2::from_host(
        &be,
        cfg,
        layout.clone(),
        &init_params(&layout, Init::HuggingFace { std: 0.02 }, 3),
    );
    let batch = Packed::new(&[random_ids(9, 97, 1)]);
    forward_logprobs(&be, &model, &batch, 1.0, &mut Workspace::new(&model, &be)).unwrap();
    assert!(be.kernel_profile().is_empty());
}

/// Kernel launches and host->device uploads of one decode step (one new token in each of
/// `slots` slots) of a `layers`-layer model, measured on the second decode step (the first
/// fills the upload cache with what repeats across steps: the rope frequencies, the rows the
/// lm_head reads).
fn decode_step_cost(slots: usize, layers: usize, attn: AttnKernel) -> (u64, u64) {
    let (launches, uploads, _) =
        decode_step_cost_in(slots, layers, attn, false, true, None, true, false);
    (launches, uploads)
}

/// `decode_step_cost` in f32 or bf16 (GEMMs in bf16, weight and activation shadows on), with
/// `producers` writing the bf16 copies of their outputs or not, and the step's conversions
/// (`f32_to_bf16_x8` launches, counted among the launches). `rope_scaling`: the config's.
/// `fused`: the fused layer ops (`MMR1_FUSED_LAYER_OPS`).
#[allow(clippy::too_many_arguments)]
fn decode_step_cost_in(
    slots: usize,
    layers: usize,
    attn: AttnKernel,
    bf16: bool,
    producers: bool,
    rope_scaling: Option<serde_json::Value>,
    fused: bool,
    stacked: bool,
) -> (u64, u64, u64) {
    use mmr1_fast::backend::precision::Precision;
    // Op by op: a replayed step (tests/suite/decode_replay.rs) uploads its index arrays again.
    let dev = EmuDevice::with_schedules(&[Schedule::Forward])
        .with_bf16_shadows(true)
        .with_act_shadows(true)
        .with_profile()
        .with_replay(false);
    let precision = if bf16 { Precision::Bf16 } else { Precision::F32 };
    let be = CudaBackend::with_device(dev)
        .with_precision(precision)
        .unwrap()
        .with_attention(attn)
        .with_producer_shadows(producers)
        .with_fused_layer_ops(fused)
        .with_stacked_gemms(stacked);
    let mut cfg = tiny_config(97, false);
    cfg.num_hidden_layers = layers;
    if let Some(rs) = rope_scaling {
        cfg.extra.insert("rope_scaling".into(), rs);
    }
    let model = random_model_on(&be, cfg, 5);
    let mut cache = model.new_cache(&be, slots, 32);
    // Ragged prompts: the slots sit at different lengths, as in a rollout.
    let prompts: Vec<Vec<u32>> =
        (0..slots).map(|s| random_ids(2 + s % 3, 97, 10 + s as u64)).collect();
    let inputs: Vec<(usize, &[u32])> = prompts.iter().map(|p| &p[..]).enumerate().collect();
    model.decode_step_logits(&be, &mut cache, &inputs).unwrap();
    let next: Vec<Vec<u32>> = (0..slots).map(|s| vec![(7 * s as u32 + 3) % 97]).collect();
    let inputs: Vec<(usize, &[u32])> = next.iter().map(|p| &p[..]).enumerate().collect();
    model.decode_step_logits(&be, &mut cache, &inputs).unwrap();
    let (p0, m0) = (be.kernel_profile(), be.memory_stats().unwrap());
    model.decode_step_logits(&be, &mut cache, &inputs).unwrap();
    let step = since(&p0, &be.kernel_profile());
    eprintln!("{slots} slots, {layers} layers, {attn:?}:\n{}", profile::table(&step, 1, 40));
    let uploads = be.memory_stats().unwrap().uploads - m0.uploads;
    (calls(&step, |_| true), uploads, calls(&step, |n| n == "f32_to_bf16_x8"))
}

/// A decode step's cost structure: its kernel launches and host->device copies (each several
/// microseconds of host time on a GPU, where the step is launch bound) do not grow with the
/// number of sequences, and follow the layer count as written down here. Writing the KV cache
/// with a copy per slot, gathering the lm_head rows with a copy per slot, or uploading rope
/// tables, positions or attention work items per layer all break it.
#[test]
fn a_decode_step_launches_per_layer_not_per_sequence() {
    for attn in [AttnKernel::Reference, AttnKernel::Flash] {
        // Per layer: 7 projections, one op for the 3 biases, the rope of q and k and the K
        // and V cache writes (`qkv_epilogue`), attention (flash decode: split + combine), 2
        // residual adds each with the RMSNorm after it (`add_rmsnorm`: the post-attention
        // norm, and the next layer's input norm or the final one), SwiGLU.
        let attention = if attn == AttnKernel::Flash { 2 } else { 1 };
        let per_layer = 7 + 1 + attention + 2 + 1;
        // Per step: the embedding, the first layer's input norm, and the head: one gather of
        // the last rows, one projection (their outputs are not zeroed first: `output_buf`).
        // (The activations were planned and zeroed by the step before, of as many tokens,
        // and are reused.)
        let per_step = |_layers: u64| 1 + 1 + (1 + 1);
        // Uploads: the token ids, the positions (shared by every rope call), the cache rows
        // (shared by every K and V write), the attention work items (shared by every layer;
        // flash decode's combine list repeats while no sequence crosses a key chunk).
        let uploads = 4;
        for (slots, layers) in [(2usize, 2usize), (7, 2), (3, 3)] {
            let (launches, up) = decode_step_cost(slots, layers, attn);
            let l = layers as u64;
            assert_eq!(
                launches,
                per_layer * l + per_step(l),
                "{attn:?}, {slots} slots, {layers} layers: launches per decode step"
            );
            assert_eq!(up, uploads, "{attn:?}, {slots} slots, {layers} layers: uploads per step");
        }
    }
}

/// `MMR1_FUSED_LAYER_OPS=0` (`with_fused_layer_ops(false)`) runs the ops the fused kernels
/// replace: per layer 3 biases, 2 ropes and 2 cache writes instead of one `qkv_epilogue_f32`,
/// and each of the 2 residual adds and its norm as two launches: 8 launches a layer more,
/// the same uploads (the switch measures the fusion on a GPU).
#[test]
fn the_fused_layer_ops_switch_runs_the_ops_one_by_one() {
    for layers in [2usize, 3] {
        let on = decode_step_cost_in(3, layers, AttnKernel::Flash, false, true, None, true, false);
        let off =
            decode_step_cost_in(3, layers, AttnKernel::Flash, false, true, None, false, false);
        assert_eq!(off.0, on.0 + 8 * layers as u64, "{layers} layers: launches per decode step");
        assert_eq!(off.1, on.1, "{layers} layers: uploads per decode step");
    }
}

/// A model with scaled RoPE (linear, llama3; YaRN, whose attention factor multiplies q and k)
/// decodes with the plain model's uploads and launches: its scaled frequencies go through the
/// upload cache like the plain ones, not an angle table uploaded per rotation (which cost two
/// uploads a layer), and the factor is applied by the op that rotates (it was a `scale` launch
/// of q and one of k a layer).
#[test]
fn scaled_rope_decodes_with_the_plain_launches_and_uploads() {
    use serde_json::json;
    let plain = decode_step_cost_in(3, 2, AttnKernel::Flash, false, true, None, true, false);
    for rs in [
        json!({"rope_type": "linear", "factor": 2.0}),
        json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
        json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}),
    ] {
        let what = rs.to_string();
        let (launches, uploads, _) =
            decode_step_cost_in(3, 2, AttnKernel::Flash, false, true, Some(rs), true, false);
        assert_eq!(uploads, plain.1, "{what}: uploads per decode step");
        assert_eq!(launches, plain.0, "{what}: launches per decode step");
    }
}

/// Kernel launches of one `AdamW::step` (clip norm and update over every parameter tensor) of
/// a `layers`-layer model, and the bf16 shadows that exist after it.
fn optimizer_step_launches(layers: usize, bf16: bool) -> (Vec<(String, u64)>, usize, usize) {
    use mmr1_fast::backend::precision::Precision;
    use mmr1_fast::optim::{AdamW, AdamwConfig};
    let dev =
        EmuDevice::with_schedules(&[Schedule::Forward]).with_profile().with_bf16_shadows(true);
    let precision = if bf16 { Precision::Bf16 } else { Precision::F32 };
    let be = CudaBackend::with_device(dev).with_precision(precision).unwrap();
    let mut cfg = tiny_config(97, false);
    cfg.num_hidden_layers = layers;
    let mut model = random_model_on(&be, cfg, 5);
    let grads: Vec<_> = model
        .params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let n = be.len(p);
            be.upload(&(0..n).map(|j| ((i * 31 + j) % 17) as f32 * 1e-3 - 8e-3).collect::<Vec<_>>())
        })
        .collect();
    let mut opt = AdamW::new(&be, &model.params, AdamwConfig::default());
    let p0 = be.kernel_profile();
    let rep = opt.step(&be, &mut model.params, &grads, 1e-3);
    assert!(!rep.skipped && rep.grad_norm > 0.0);
    let step = since(&p0, &be.kernel_profile());
    let calls = step.iter().map(|k| (k.name.clone(), k.calls)).collect();
    (calls, model.params.len(), be.device().bf16_shadow_count())
}

/// An optimizer step is three launches whatever the number of parameter tensors: the
/// gradient norm's two (`sum_squares_many`) and one AdamW over the whole list
/// (`adamw_many_f32`; 290 launches at Qwen2.5-0.5B when it was one per tensor). With bf16
/// GEMMs the same launch also writes every weight's bf16 shadow (no conversion launch), and
/// every weight has one afterwards.
#[test]
fn an_optimizer_step_is_three_launches_for_any_number_of_tensors() {
    let mut want: Vec<(String, u64)> =
        ["adamw_many_f32", "sum_partials_many_f64", "sumsq_partial_many_f32"]
            .iter()
            .map(|n| (n.to_string(), 1))
            .collect();
    want.sort();
    for layers in [1usize, 3] {
        for bf16 in [false, true] {
            let (mut calls, tensors, shadows) = optimizer_step_launches(layers, bf16);
            calls.sort();
            assert_eq!(calls, want, "{layers} layers ({tensors} tensors), bf16 {bf16}");
            assert_eq!(shadows, if bf16 { tensors } else { 0 }, "{layers} layers, bf16 {bf16}");
        }
    }
}

/// A bf16 decode step converts (`f32_to_bf16_x8`) only what no producer writes in bf16: the
/// gathered rows the lm_head reads, and with the reference attention kernel each layer's
/// attention output `att` (the o projection's operand). RMSNorm writes xn1 (q, k, v) and xn2
/// (gate, up) with their bf16 copies, SwiGLU act (down), flash decode's combine kernel att
/// (src/backend/cuda/producer_shadows.rs); without that (`MMR1_PRODUCER_SHADOWS=0`) each is
/// converted by its first GEMM: 4 a layer + 1. The weights keep the shadows their first GEMM
/// made. The producers add no launch: a bf16 step launches what an f32 step does plus the
/// conversions, with the same uploads.
#[test]
fn a_bf16_decode_step_converts_only_what_no_producer_writes() {
    for attn in [AttnKernel::Reference, AttnKernel::Flash] {
        for (slots, layers) in [(2usize, 2usize), (3, 3)] {
            let what = format!("{attn:?}, {slots} slots, {layers} layers");
            let l = layers as u64;
            let (f32_launches, f32_uploads, none) =
                decode_step_cost_in(slots, layers, attn, false, true, None, true, false);
            assert_eq!(none, 0, "{what}: an f32 step converts nothing");
            let with = if attn == AttnKernel::Flash { 1 } else { l + 1 };
            for (producers, want) in [(true, with), (false, 4 * l + 1)] {
                for stacked in [false, true] {
                    let (launches, uploads, conversions) = decode_step_cost_in(
                        slots, layers, attn, true, producers, None, true, stacked,
                    );
                    let what = format!("{what}, producer shadows {producers}, stacked {stacked}");
                    println!("DECODE CONVERSIONS {what}: {conversions} of {launches} launches");
                    assert_eq!(conversions, want, "{what}: conversions per bf16 decode step");
                    // Stacked weights: q/k/v and gate/up one GEMM each, 4 a layer where 7 were.
                    let fewer = if stacked { 3 * l } else { 0 };
                    assert_eq!(launches + fewer, f32_launches + conversions, "{what}: launches");
                    assert_eq!(uploads, f32_uploads, "{what}: uploads per bf16 step");
                }
            }
        }
    }
}
