//! The Qwen2.5-VL vision tower's backward against transformers
//! (tests/fixtures/tiny-vl/vision_grads.safetensors, scripts/make_golden_vl.py): the gradient of
//! `sum(features * probe)` for every `visual.*` parameter, on the two packed fixture images
//! (window and full attention blocks), on the CPU reference and the CUDA backend (emulator).

use crate::common;

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

/// The published models' geometry (head_dim 80, window 112 = 4x4 merged units, full attention
/// at the last block), on a grid with partial windows at both edges and a second image: the
/// CUDA backend (emulator) against the CPU reference, forward and every gradient.
#[cfg(feature = "emu")]
#[test]
fn emulated_cuda_tower_at_published_geometry_matches_cpu() {
    use mmr1_fast::backend::cuda::CudaBackend;
    use mmr1_fast::model::vision_config::VisionConfig;
    use mmr1_fast::model::vision_params::VisionLayout;
    use rand::{Rng, SeedableRng};
    let cfg: VisionConfig = serde_json::from_value(serde_json::json!({
        "depth": 2, "hidden_size": 160, "intermediate_size": 72, "num_heads": 2,
        "out_hidden_size": 48, "window_size": 112, "fullatt_block_indexes": [1]
    }))
    .unwrap();
    cfg.validate().unwrap();
    let layout = VisionLayout::new(&cfg);
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let host: Vec<Vec<f32>> = layout
        .specs
        .iter()
        .map(|s| {
            let norm = s.name.contains("norm") || s.name.contains("ln_q");
            (0..s.numel())
                .map(
                    |_| if norm { 1.0 + r.gen_range(-0.1..0.1) } else { r.gen_range(-0.1f32..0.1) },
                )
                .collect()
        })
        .collect();
    let grids = [[1, 10, 18], [1, 4, 2]];
    let plan = VisionPlan::new(&cfg, &grids).unwrap();
    // 10x18 patches = 5x9 merged units in windows of 4x4 units: 2x3 windows, partial at the
    // bottom and right edges; the 4x2 image is one window.
    assert_eq!(plan.window_spans.len(), 2 * 3 + 1);
    let pixels: Vec<f32> =
        (0..plan.n * cfg.patch_dim()).map(|_| r.gen_range(-1.0f32..1.0)).collect();
    let probe: Vec<f32> = (0..plan.merged_rows(&cfg) * cfg.out_hidden_size)
        .map(|_| r.gen_range(-1.0f32..1.0))
        .collect();
    fn go<B: Backend>(
        be: &B,
        cfg: &VisionConfig,
        layout: &VisionLayout,
        host: &[Vec<f32>],
        plan: &VisionPlan,
        pixels: &[f32],
        probe: &[f32],
    ) -> (Vec<f32>, Vec<Vec<f32>>) {
        let tower = VisionTower::from_host(be, cfg.clone(), layout.clone(), host);
        let px = be.upload(pixels);
        let acts = tower.forward(be, &px, plan).unwrap();
        let mut grads = tower.zero_grads(be);
        tower.backward(be, &px, plan, &acts, &be.upload(probe), &mut grads);
        (be.download(&acts.features), grads.iter().map(|g| be.download(g)).collect())
    }
    let want = go(&Cpu, &cfg, &layout, &host, &plan, &pixels, &probe);
    let got = go(&CudaBackend::emulator(), &cfg, &layout, &host, &plan, &pixels, &probe);
    let e = rel_l2(&got.0, &want.0);
    assert!(e < 1e-5, "features: {e:.2e}");
    for ((spec, g), w) in layout.specs.iter().zip(&got.1).zip(&want.1) {
        let e = rel_l2(g, w);
        assert!(e < 1e-5, "{}: {e:.2e}", spec.name);
    }
}
