//! Gradients of a Qwen2.5-VL model end to end against transformers
//! (tests/fixtures/tiny-vl/vl_grads.safetensors, scripts/make_golden_vl.py): loss =
//! sum_i w_i * logprob_i over the two-image sequence of vl_logits.safetensors; every parameter,
//! decoder and vision tower, on the CPU reference and the CUDA backend (emulator).

use crate::common;

use common::{fixture, rel_l2};
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::backend::Backend;
use mmr1_fast::model::vl_forward::VlModel;
use safetensors::SafeTensors;

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn i64s(st: &SafeTensors, name: &str) -> Vec<i64> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    t.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Every gradient vs the fixture; returns the worst relative L2 error. With `train_vision ==
/// false` the tower's gradients must stay zero.
fn check<B: Backend>(be: &B, train_vision: bool, tol: f64) -> f64 {
    let lb = std::fs::read(fixture("tiny-vl/vl_logits.safetensors")).unwrap();
    let l = SafeTensors::deserialize(&lb).unwrap();
    let vb = std::fs::read(fixture("tiny-vl/vision.safetensors")).unwrap();
    let v = SafeTensors::deserialize(&vb).unwrap();
    let gb = std::fs::read(fixture("tiny-vl/vl_grads.safetensors")).unwrap();
    let gs = SafeTensors::deserialize(&gb).unwrap();
    let ids: Vec<u32> = i64s(&l, "input_ids").iter().map(|&x| x as u32).collect();
    let g = i64s(&l, "grid_thw");
    let grids: Vec<[usize; 3]> =
        g.chunks(3).map(|c| [c[0] as usize, c[1] as usize, c[2] as usize]).collect();

    let m = VlModel::load(be, &fixture("tiny-vl")).unwrap();
    let batch = m.pack(&[(&ids, &grids)]).unwrap();
    let pixels = be.upload(&f32s(&v, "pixel_values"));
    let mut acts = None;
    let va = m.forward(be, &batch, Some(&pixels), &mut acts).unwrap();
    let acts = acts.unwrap();
    let (targets, _) = batch.packed.next_token_targets();
    let mut dlp = f32s(&gs, "weights");
    dlp.push(0.0); // the last row has no target
    let (mut tg, mut vg) = m.zero_grads(be);
    m.backward(
        be,
        &batch,
        Some(&pixels),
        &acts,
        va.as_ref(),
        &targets,
        &dlp,
        None,
        1.0,
        &mut tg,
        train_vision.then_some(vg.as_mut_slice()),
    )
    .unwrap();
    let mut worst = 0.0f64;
    let specs = m.text.layout.specs.iter().zip(&tg).chain(m.vision.layout.specs.iter().zip(&vg));
    for (spec, grad) in specs {
        let got = be.download(grad);
        if !train_vision && spec.name.starts_with("visual.") {
            assert!(got.iter().all(|&x| x == 0.0), "{}: frozen tower got a gradient", spec.name);
            continue;
        }
        let e = rel_l2(&got, &f32s(&gs, &format!("grad.{}", spec.name)));
        println!("{}: rel L2 {e:.3e}", spec.name);
        assert!(e <= tol, "{}: gradient relative L2 error {e:.3e} > {tol:.0e}", spec.name);
        worst = worst.max(e);
    }
    println!("{}: worst {worst:.3e}", be.name());
    worst
}

#[test]
fn cpu_vl_gradients_match_transformers() {
    check(&Cpu, true, 1e-5);
}

#[test]
fn frozen_vision_tower_gets_no_gradient_and_text_is_unchanged() {
    check(&Cpu, false, 1e-5);
}

#[cfg(feature = "emu")]
#[test]
fn emulated_cuda_vl_gradients_match_transformers() {
    use mmr1_fast::backend::cuda::CudaBackend;
    check(&CudaBackend::emulator(), true, 1e-5);
}
