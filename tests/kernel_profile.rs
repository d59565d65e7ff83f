//! Per-kernel device time (`MMR1_PROFILE=1`, src/backend/profile.rs) on the emulator: a
//! forward pass is attributed to the kernels and GEMM shapes the model launches, with the
//! counts its structure implies, and nothing is recorded when profiling is off.
#![cfg(feature = "emu")]

mod common;
use common::*;
use mmr1_fast::backend::cuda::emu::{EmuDevice, Schedule};
use mmr1_fast::backend::cuda::CudaBackend;
use mmr1_fast::backend::profile::since;
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
    // Two RMSNorms a layer and the final one; seven projections a layer and the head.
    assert_eq!(calls(&one, |n| n.starts_with("rmsnorm")), 2 * layers + 1, "{one:?}");
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
    for k in one.iter().filter(|k| k.name.starts_with("rmsnorm") || k.name.starts_with("gemm_")) {
        let total = two.iter().find(|t| t.name == k.name).expect("same kernels again");
        let first = before.iter().find(|t| t.name == k.name).map_or(0, |t| t.calls);
        assert_eq!(total.calls - first, 2 * k.calls, "{}", k.name);
    }
    let model_calls = |p: &[mmr1_fast::backend::profile::KernelTime]| {
        calls(p, |n| {
            n.starts_with("rmsnorm") || n.starts_with("gemm_") || n.starts_with("logprobs")
        })
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
