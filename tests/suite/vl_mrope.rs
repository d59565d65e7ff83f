//! M-RoPE positions against transformers' Qwen2_5_VLModel.get_rope_index
//! (tests/fixtures/tiny-vl/mrope.safetensors, scripts/make_golden_vl.py).

use mmr1_fast::model::mrope::mrope_positions;
use safetensors::SafeTensors;
use std::path::Path;

fn i64s(st: &SafeTensors, name: &str) -> Vec<i64> {
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn two_images_in_one_sequence_match_transformers() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-vl/mrope.safetensors");
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ids: Vec<u32> = i64s(&st, "input_ids").iter().map(|&x| x as u32).collect();
    let g = i64s(&st, "grids");
    let grids: Vec<[usize; 3]> =
        g.chunks(3).map(|c| [c[0] as usize, c[1] as usize, c[2] as usize]).collect();
    let got = mrope_positions(&ids, &grids, 410, 2).unwrap();
    let want = i64s(&st, "position_ids");
    let flat: Vec<i64> = got.axes.iter().flat_map(|a| a.iter().map(|&p| p as i64)).collect();
    assert_eq!(flat, want);
    assert_eq!(got.delta, i64s(&st, "delta")[0]);
}

#[test]
fn text_only_is_1d_and_wrong_counts_are_named() {
    let p = mrope_positions(&[1, 2, 3], &[], 9, 2).unwrap();
    assert_eq!(p.axes, [vec![0, 1, 2], vec![0, 1, 2], vec![0, 1, 2]]);
    assert_eq!(p.delta, 0);
    let e = mrope_positions(&[1, 9, 9, 9, 2], &[[1, 4, 4]], 9, 2).unwrap_err().to_string();
    assert!(
        e.contains("image 1 at token 1: 3 placeholder tokens") && e.contains("4 tokens"),
        "{e}"
    );
    let e = mrope_positions(&[9, 9, 9, 9, 1, 9], &[[1, 4, 4]], 9, 2).unwrap_err().to_string();
    assert!(e.contains("image 2") && e.contains("token 5"), "{e}");
    let e = mrope_positions(&[1, 2], &[[1, 4, 4]], 9, 2).unwrap_err().to_string();
    assert!(e.contains("1 image(s) given") && e.contains("0 image placeholder"), "{e}");
}
