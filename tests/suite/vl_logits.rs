//! A Qwen2.5-VL forward end to end against transformers
//! (tests/fixtures/tiny-vl/vl_logits.safetensors, scripts/make_golden_vl.py): one sequence
//! holding two images of different sizes (img0 [1,4,4], img2 [1,8,6]); the placeholder
//! embeddings replaced by the vision features, M-RoPE positions; logits and per-token log-probs
//! on the CPU reference and the CUDA backend (emulator), from both config layouts.

use crate::common;

use common::{fixture, rel_l2};
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::backend::Backend;
use mmr1_fast::model::vl_forward::VlModel;
use safetensors::SafeTensors;
use std::path::Path;

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn i64s(st: &SafeTensors, name: &str) -> Vec<i64> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    t.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
}

struct Golden {
    ids: Vec<u32>,
    grids: Vec<[usize; 3]>,
    pixels: Vec<f32>,
    logits: Vec<f32>,
    logprobs: Vec<f32>,
}

fn golden() -> Golden {
    let lb = std::fs::read(fixture("tiny-vl/vl_logits.safetensors")).unwrap();
    let l = SafeTensors::deserialize(&lb).unwrap();
    let vb = std::fs::read(fixture("tiny-vl/vision.safetensors")).unwrap();
    let v = SafeTensors::deserialize(&vb).unwrap();
    let g = i64s(&l, "grid_thw");
    Golden {
        ids: i64s(&l, "input_ids").iter().map(|&x| x as u32).collect(),
        grids: g.chunks(3).map(|c| [c[0] as usize, c[1] as usize, c[2] as usize]).collect(),
        pixels: f32s(&v, "pixel_values"),
        logits: f32s(&l, "logits"),
        logprobs: f32s(&l, "logprobs"),
    }
}

/// Logits of every row and log-probs of every next token; returns their rel L2 errors.
fn run<B: Backend>(be: &B, dir: &Path) -> (f64, f64) {
    let g = golden();
    let m = VlModel::load(be, dir).unwrap();
    let batch = m.pack(&[(&g.ids, &g.grids)]).unwrap();
    let mut acts = None;
    m.forward(be, &batch, Some(&be.upload(&g.pixels)), &mut acts).unwrap();
    let acts = acts.unwrap();
    let t = g.ids.len();
    let rows: Vec<usize> = (0..t).collect();
    let logits = m.text.logits_of_rows(be, &acts.xn_f, &rows);
    let (targets, _) = batch.packed.next_token_targets();
    let (lp, _) = m.text.token_logprobs(be, &acts, &targets, 1.0);
    let e_logits = rel_l2(&logits, &g.logits);
    let e_lp = rel_l2(&lp[..t - 1], &g.logprobs);
    println!("{}: logits rel L2 {e_logits:.3e}, logprobs rel L2 {e_lp:.3e}", be.name());
    (e_logits, e_lp)
}

#[test]
fn cpu_vl_logits_match_transformers() {
    let (a, b) = run(&Cpu, &fixture("tiny-vl"));
    assert!(a < 1e-5 && b < 1e-5, "logits {a:.2e}, logprobs {b:.2e}");
}

/// The flat config layout of the published checkpoints gives the same model.
#[test]
fn flat_config_layout_gives_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["model.safetensors", "preprocessor_config.json"] {
        std::fs::copy(fixture("tiny-vl").join(f), dir.path().join(f)).unwrap();
    }
    std::fs::copy(fixture("tiny-vl/config_flat.json"), dir.path().join("config.json")).unwrap();
    let (a, b) = run(&Cpu, dir.path());
    assert!(a < 1e-5 && b < 1e-5, "logits {a:.2e}, logprobs {b:.2e}");
}

#[cfg(feature = "emu")]
#[test]
fn emulated_cuda_vl_logits_match_transformers() {
    use mmr1_fast::backend::cuda::CudaBackend;
    let (a, b) = run(&CudaBackend::emulator(), &fixture("tiny-vl"));
    assert!(a < 1e-5 && b < 1e-5, "logits {a:.2e}, logprobs {b:.2e}");
}

/// The golden sees the two things this forward adds: with 1D positions instead of M-RoPE, or
/// with the placeholder embeddings left in place of the image features, logits move far.
#[test]
fn golden_catches_missing_mrope_and_missing_features() {
    let g = golden();
    let m = VlModel::load(&Cpu, &fixture("tiny-vl")).unwrap();
    let mut batch = m.pack(&[(&g.ids, &g.grids)]).unwrap();
    let logits_of = |batch: &mmr1_fast::model::vl_forward::VlBatch, pixels: &[f32]| {
        let mut acts = None;
        m.forward(&Cpu, batch, Some(&pixels.to_vec()), &mut acts).unwrap();
        let rows: Vec<usize> = (0..g.ids.len()).collect();
        m.text.logits_of_rows(&Cpu, &acts.unwrap().xn_f, &rows)
    };
    assert!(rel_l2(&logits_of(&batch, &g.pixels), &g.logits) < 1e-5);
    // Other pixels: the features reach the logits.
    let other: Vec<f32> = g.pixels.iter().map(|x| -x).collect();
    let e = rel_l2(&logits_of(&batch, &other), &g.logits);
    assert!(e > 1e-2, "image features do not reach the logits: {e:.2e}");
    // 1D RoPE instead of M-RoPE.
    batch.packed.rope_angles = None;
    let e = rel_l2(&logits_of(&batch, &g.pixels), &g.logits);
    assert!(e > 1e-3, "M-RoPE makes no difference: {e:.2e}");
}

/// A placeholder run of the wrong length is an error naming the sequence and the image.
#[test]
fn wrong_placeholder_count_names_sequence_and_image() {
    let g = golden();
    let m = VlModel::load(&Cpu, &fixture("tiny-vl")).unwrap();
    let mut ids = g.ids.clone();
    let at = ids.iter().rposition(|&x| x == m.cfg.image_token_id).unwrap();
    ids.remove(at);
    let err = m.pack(&[(&g.ids, &g.grids), (&ids, &g.grids)]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("sequence 1") && msg.contains("image 2"), "{msg}");
}

/// KV-cache decoding with M-RoPE gives the full forward's logits: a prefill holding both
/// images, then the remaining tokens one at a time (positions continue at index + delta), in
/// slot 1 of a two-slot cache while slot 0 decodes a text-only sequence beside it.
#[test]
fn vl_kv_cache_decode_matches_full_forward() {
    use mmr1_fast::model::vl_decode::VlStep;
    let g = golden();
    let m = VlModel::load(&Cpu, &fixture("tiny-vl")).unwrap();
    let v = m.text.cfg.vocab_size;
    let mut cache = m.text.new_cache(&Cpu, 2, 40);
    let mut deltas = vec![0i64; 2];
    let prefill = 26; // both images and their <|vision_end|>
    let text: Vec<u32> = vec![5, 9, 13, 200, 31, 7];
    let logits = m
        .decode_step(
            &Cpu,
            &mut cache,
            &[
                VlStep { slot: 0, tokens: &text[..2], grids: &[] },
                VlStep { slot: 1, tokens: &g.ids[..prefill], grids: &g.grids },
            ],
            &mut deltas,
            Some(&g.pixels),
        )
        .unwrap();
    assert!(deltas[1] < 0, "images compress positions: delta {}", deltas[1]);
    let mut got = logits[v..2 * v].to_vec();
    for i in prefill..g.ids.len() {
        let j = 2 + i - prefill;
        let l = m
            .decode_step(
                &Cpu,
                &mut cache,
                &[
                    VlStep { slot: 1, tokens: &g.ids[i..i + 1], grids: &[] },
                    VlStep { slot: 0, tokens: &text[j.min(5)..j.min(5) + 1], grids: &[] },
                ],
                &mut deltas,
                None,
            )
            .unwrap();
        got.extend_from_slice(&l[..v]);
    }
    let want = &g.logits[(prefill - 1) * v..];
    let e = rel_l2(&got, want);
    println!("decode vs transformers: rel L2 {e:.3e}");
    assert!(e < 1e-5, "decode logits rel L2 {e:.2e}");
    // Images after the prefill are refused.
    let err = m
        .decode_step(
            &Cpu,
            &mut cache,
            &[VlStep { slot: 1, tokens: &[410], grids: &[[1, 2, 2]] }],
            &mut deltas,
            None,
        )
        .unwrap_err();
    assert!(format!("{err:#}").contains("first step"), "{err:#}");
}

/// Packing is invisible: the two-image sequence packed after a text-only sequence and before a
/// one-image sequence gives the same logits as alone (and as transformers).
#[test]
fn packed_vl_sequences_match_single_runs() {
    let g = golden();
    let m = VlModel::load(&Cpu, &fixture("tiny-vl")).unwrap();
    let v = m.text.cfg.vocab_size;
    let text: Vec<u32> = vec![4, 8, 15, 16, 23, 42, 99];
    // img0 alone: grid [1,4,4], its pixels are the first 16 rows.
    let pd = m.vision.cfg.patch_dim();
    let one: Vec<u32> = [vec![1, 408], vec![410; 4], vec![409, 300, 301]].concat();
    let batch = m.pack(&[(&text, &[]), (&g.ids, &g.grids), (&one, &[[1, 4, 4]])]).unwrap();
    let pixels: Vec<f32> = [g.pixels.clone(), g.pixels[..16 * pd].to_vec()].concat();
    let mut acts = None;
    m.forward(&Cpu, &batch, Some(&pixels), &mut acts).unwrap();
    let rows: Vec<usize> = (0..batch.packed.tokens()).collect();
    let all = m.text.logits_of_rows(&Cpu, &acts.unwrap().xn_f, &rows);
    let (t0, t1) = (text.len(), g.ids.len());
    let e = rel_l2(&all[t0 * v..(t0 + t1) * v], &g.logits);
    assert!(e < 1e-5, "packed two-image sequence vs transformers: {e:.2e}");
    // The one-image sequence alone.
    let single = m.pack(&[(&one, &[[1, 4, 4]])]).unwrap();
    let mut acts = None;
    m.forward(&Cpu, &single, Some(&g.pixels[..16 * pd].to_vec()), &mut acts).unwrap();
    let rows: Vec<usize> = (0..one.len()).collect();
    let alone = m.text.logits_of_rows(&Cpu, &acts.unwrap().xn_f, &rows);
    let e = rel_l2(&all[(t0 + t1) * v..], &alone);
    assert!(e < 1e-6, "packed vs alone: {e:.2e}");
}
