//! The Qwen2.5-VL vision tower's forward against transformers
//! (tests/fixtures/tiny-vl/vision.safetensors, scripts/make_golden_vl.py): two images of
//! different sizes packed (grids [1,4,4] and [1,8,6]), blocks 0 and 2 windowed, block 1 full
//! attention; every block's output (window order) and the merged features (image order), on the
//! CPU reference and on the CUDA backend (emulator).

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

fn grids(st: &SafeTensors) -> Vec<[usize; 3]> {
    let g: Vec<i64> = st
        .tensor("grid_thw")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    g.chunks(3).map(|c| [c[0] as usize, c[1] as usize, c[2] as usize]).collect()
}

/// Relative L2 error of every recorded activation; the largest is returned and each printed.
fn check_against_fixture<B: Backend>(be: &B, tol: f64) -> f64 {
    let host = VlHost::load(&fixture("tiny-vl")).unwrap();
    let bytes = std::fs::read(fixture("tiny-vl/vision.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let g = grids(&st);
    assert_eq!(g, vec![[1, 4, 4], [1, 8, 6]]);
    let cfg = host.cfg.vision.clone();
    let tower = VisionTower::from_host(be, cfg.clone(), host.vision_layout.clone(), &host.vision);
    let plan = VisionPlan::new(&cfg, &g).unwrap();
    let acts = tower.forward(be, &be.upload(&f32s(&st, "pixel_values")), &plan).unwrap();
    let d = cfg.hidden_size;
    let mut worst = 0.0f64;
    let mut check = |what: &str, got: &[f32], want: &[f32]| {
        let e = rel_l2(got, want);
        println!("{what}: rel L2 {e:.3e}");
        assert!(e <= tol, "{what}: relative L2 error {e:.3e} > {tol:.0e}");
        worst = worst.max(e);
    };
    // The fixture's patch embedding is in patch order; resid[0] is in window order.
    let pe = f32s(&st, "patch_embed");
    let pe_window: Vec<f32> = plan
        .patch_order
        .iter()
        .flat_map(|&p| pe[p as usize * d..(p as usize + 1) * d].to_vec())
        .collect();
    check("patch_embed", &be.download(&acts.resid[0]), &pe_window);
    for b in 0..cfg.depth {
        check(
            &format!("block.{b}"),
            &be.download(&acts.resid[b + 1]),
            &f32s(&st, &format!("block.{b}")),
        );
    }
    check("features", &be.download(&acts.features), &f32s(&st, "features"));
    worst
}

#[test]
fn cpu_vision_tower_matches_transformers() {
    check_against_fixture(&Cpu, 1e-5);
}

#[cfg(feature = "emu")]
#[test]
fn emulated_cuda_vision_tower_matches_transformers() {
    use mmr1_fast::backend::cuda::CudaBackend;
    check_against_fixture(&CudaBackend::emulator(), 1e-5);
}

/// The golden is sensitive to what it checks: with every block windowed (block 1's full
/// attention dropped) block 1 is far off, and features left in window order are far off.
#[test]
fn golden_catches_wrong_attention_spans_and_order() {
    let host = VlHost::load(&fixture("tiny-vl")).unwrap();
    let bytes = std::fs::read(fixture("tiny-vl/vision.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut cfg = host.cfg.vision.clone();
    cfg.fullatt_block_indexes.clear();
    let tower = VisionTower::from_host(&Cpu, cfg.clone(), host.vision_layout.clone(), &host.vision);
    let plan = VisionPlan::new(&cfg, &grids(&st)).unwrap();
    let acts = tower.forward(&Cpu, &f32s(&st, "pixel_values"), &plan).unwrap();
    assert!(rel_l2(&acts.resid[1], &f32s(&st, "block.0")) < 1e-5);
    let e = rel_l2(&acts.resid[2], &f32s(&st, "block.1"));
    assert!(e > 1e-2, "block 1 windowed instead of full: rel L2 only {e:.2e}");

    let cfg = host.cfg.vision.clone();
    let tower = VisionTower::from_host(&Cpu, cfg.clone(), host.vision_layout.clone(), &host.vision);
    let mut plan = VisionPlan::new(&cfg, &grids(&st)).unwrap();
    plan.unit_inverse = (0..plan.unit_inverse.len() as u32).collect();
    let acts = tower.forward(&Cpu, &f32s(&st, "pixel_values"), &plan).unwrap();
    let e = rel_l2(&acts.features, &f32s(&st, "features"));
    assert!(e > 1e-2, "features in window order: rel L2 only {e:.2e}");
}

/// Wrong inputs are clear errors: a grid not divisible by the merge size, a pixel count that
/// does not fit the grids.
#[test]
fn bad_grids_and_pixel_counts_are_errors() {
    let host = VlHost::load(&fixture("tiny-vl")).unwrap();
    let cfg = host.cfg.vision.clone();
    let e = VisionPlan::new(&cfg, &[[1, 4, 4], [1, 5, 6]]).unwrap_err().to_string();
    assert!(e.contains("image 1") && e.contains("[1, 5, 6]"), "{e}");
    let tower = VisionTower::from_host(&Cpu, cfg.clone(), host.vision_layout.clone(), &host.vision);
    let plan = VisionPlan::new(&cfg, &[[1, 4, 4]]).unwrap();
    let e = tower.forward(&Cpu, &vec![0.5; 15 * cfg.patch_dim()], &plan).err().unwrap().to_string();
    assert!(e.contains("16 patches"), "{e}");
}
