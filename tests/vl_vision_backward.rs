//! The Qwen2.5-VL vision tower's backward against transformers
//! (tests/fixtures/tiny-vl/vision_grads.safetensors, scripts/make_golden_vl.py): the gradient of
//! `sum(features * probe)` for every `visual.*` parameter, on the two packed fixture images
//! (window and full attention blocks), on the CPU reference and the CUDA backend (emulator).

mod common;

use common::{fixture, rel_l2};
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::backend::Backend;
use mmr1_fast::model::vision_forward::{VisionPlan, VisionTower};
use mmr1_fast::model::vl::VlHost;
use safetensors::SafeTensors;

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Every parameter's gradient against the fixture; returns the largest relative L2 error.
fn check_grads<B: Backend>(be: &B, tol: f64) -> f64 {
    let host = VlHost::load(&fixture("tiny-vl")).unwrap();
    let vb = std::fs::read(fixture("tiny-vl/vision.safetensors")).unwrap();
    let vis = SafeTensors::deserialize(&vb).unwrap();
    let gb = std::fs::read(fixture("tiny-vl/vision_grads.safetensors")).unwrap();
    let gst = SafeTensors::deserialize(&gb).unwrap();
    let cfg = host.cfg.vision.clone();
    let tower = VisionTower::from_host(be, cfg.clone(), host.vision_layout.clone(), &host.vision);
    let plan = VisionPlan::new(&cfg, &[[1, 4, 4], [1, 8, 6]]).unwrap();
    let pixels = be.upload(&f32s(&vis, "pixel_values"));
    let acts = tower.forward(be, &pixels, &plan).unwrap();
    let mut grads = tower.zero_grads(be);
    tower.backward(be, &pixels, &plan, &acts, &be.upload(&f32s(&gst, "probe")), &mut grads);
    let mut worst = 0.0f64;
    for (spec, g) in tower.layout.specs.iter().zip(&grads) {
        let want = f32s(&gst, &format!("grad.{}", spec.name));
        let e = rel_l2(&be.download(g), &want);
        println!("{}: rel L2 {e:.3e}", spec.name);
        assert!(e <= tol, "{}: gradient relative L2 error {e:.3e} > {tol:.0e}", spec.name);
        worst = worst.max(e);
    }
    println!("worst {worst:.3e}");
    worst
}

#[test]
fn cpu_vision_gradients_match_transformers() {
    check_grads(&Cpu, 1e-5);
}

#[cfg(feature = "emu")]
#[test]
fn emulated_cuda_vision_gradients_match_transformers() {
    use mmr1_fast::backend::cuda::CudaBackend;
    check_grads(&CudaBackend::emulator(), 1e-5);
}

/// Gradients accumulate (`+=`): two backward passes give twice one.
#[test]
fn vision_gradients_accumulate() {
    let host = VlHost::load(&fixture("tiny-vl")).unwrap();
    let vb = std::fs::read(fixture("tiny-vl/vision.safetensors")).unwrap();
    let vis = SafeTensors::deserialize(&vb).unwrap();
    let cfg = host.cfg.vision.clone();
    let tower = VisionTower::from_host(&Cpu, cfg.clone(), host.vision_layout.clone(), &host.vision);
    let plan = VisionPlan::new(&cfg, &[[1, 4, 4], [1, 8, 6]]).unwrap();
    let pixels = f32s(&vis, "pixel_values");
    let acts = tower.forward(&Cpu, &pixels, &plan).unwrap();
    let probe: Vec<f32> =
        (0..Cpu.len(&acts.features)).map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0).collect();
    let mut once = tower.zero_grads(&Cpu);
    tower.backward(&Cpu, &pixels, &plan, &acts, &probe, &mut once);
    let mut twice = tower.zero_grads(&Cpu);
    tower.backward(&Cpu, &pixels, &plan, &acts, &probe, &mut twice);
    tower.backward(&Cpu, &pixels, &plan, &acts, &probe, &mut twice);
    for (a, b) in once.iter().zip(&twice) {
        let doubled: Vec<f32> = a.iter().map(|x| 2.0 * x).collect();
        assert!(rel_l2(b, &doubled) < 1e-6);
    }
}
