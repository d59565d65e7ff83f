//! Rotary tables of Qwen2.5-VL against transformers (tests/fixtures/tiny-vl/rope.safetensors).

use mmr1_fast::model::mrope::mrope_positions;
use mmr1_fast::model::rope_tables::{mrope_angles, vision_rope_angles};
use mmr1_fast::model::vision_windows::position_ids;
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-vl").join(name)
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// cos and sin of `[rows, half]` angles, each repeated for both halves: `[rows, 2 * half]`.
fn cos_sin(angles: &[f32], half: usize) -> (Vec<f32>, Vec<f32>) {
    let (mut c, mut s) = (vec![], vec![]);
    for row in angles.chunks(half) {
        for _ in 0..2 {
            c.extend(row.iter().map(|a| a.cos()));
            s.extend(row.iter().map(|a| a.sin()));
        }
    }
    (c, s)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn vision_and_text_rotary_tables_match_transformers() {
    let bytes = std::fs::read(fixture("rope.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    // Vision: img0 [1,4,4] and img2 [1,8,6] packed, head_dim 16, theta 10000.
    let pos = position_ids(&[[1, 4, 4], [1, 8, 6]], 2);
    let (c, s) = cos_sin(&vision_rope_angles(&pos, 16, 10000.0), 8);
    assert!(max_diff(&c, &f32s(&st, "vision_cos")) < 1e-6);
    assert!(max_diff(&s, &f32s(&st, "vision_sin")) < 1e-6);
    // Text: the mrope fixture's sequence, head_dim 16, mrope_section [2, 3, 3].
    let mbytes = std::fs::read(fixture("mrope.safetensors")).unwrap();
    let m = SafeTensors::deserialize(&mbytes).unwrap();
    let ids: Vec<u32> = m
        .tensor("input_ids")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
        .collect();
    let mp = mrope_positions(&ids, &[[1, 4, 4], [1, 10, 6]], 410, 2).unwrap();
    let (c, s) = cos_sin(&mrope_angles(&mp, 16, 10000.0, [2, 3, 3]), 8);
    assert!(max_diff(&c, &f32s(&st, "text_cos")) < 1e-6);
    assert!(max_diff(&s, &f32s(&st, "text_sin")) < 1e-6);
    // The sections matter: another split of the same positions is far off.
    let (c2, _) = cos_sin(&mrope_angles(&mp, 16, 10000.0, [3, 3, 2]), 8);
    assert!(max_diff(&c2, &f32s(&st, "text_cos")) > 0.1);
}
