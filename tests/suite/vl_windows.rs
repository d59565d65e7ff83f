//! The vision tower's window/position bookkeeping against transformers.vision_utils
//! (tests/fixtures/tiny-vl/windows.safetensors, scripts/make_golden_vl.py): the fixture images'
//! grids packed in one batch, window_size 56, patch 14, merge 2.

use mmr1_fast::model::vision_windows::{
    cu_seqlens, inverse_permutation, position_ids, window_index, window_patch_order,
};
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

fn ints(st: &SafeTensors, name: &str) -> Vec<i64> {
    let t = st.tensor(name).unwrap();
    match t.dtype() {
        Dtype::I64 => {
            t.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
        }
        Dtype::I32 => t
            .data()
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
            .collect(),
        d => panic!("{name}: dtype {d:?}"),
    }
}

#[test]
fn positions_windows_and_spans_match_transformers() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-vl/windows.safetensors");
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let grids: Vec<[usize; 3]> = (0..5)
        .map(|i| {
            let g = ints(&st, &format!("grids.{i}"));
            [g[0] as usize, g[1] as usize, g[2] as usize]
        })
        .collect();
    let as_i64 = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();

    let pos: Vec<i64> =
        position_ids(&grids, 2).iter().flat_map(|p| [p[0] as i64, p[1] as i64]).collect();
    assert_eq!(pos, ints(&st, "position_ids"));
    assert_eq!(as_i64(&cu_seqlens(&grids)), ints(&st, "cu_seqlens"));
    let (wi, cu) = window_index(&grids, 2, 56, 14);
    assert_eq!(as_i64(&wi), ints(&st, "window_index"));
    assert_eq!(as_i64(&cu), ints(&st, "cu_window_seqlens"));

    // The inverse undoes the reordering, patch rows included.
    let inv = inverse_permutation(&wi);
    assert!(inv.iter().enumerate().all(|(u, &j)| wi[j] == u));
    let rows = window_patch_order(&wi, 2);
    let n = *cu_seqlens(&grids).last().unwrap();
    let mut sorted = rows.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..n).collect::<Vec<_>>());
    assert_eq!(&rows[..8], &[0, 1, 2, 3, 4, 5, 6, 7]);
}

#[test]
fn videos_repeat_positions_per_frame_and_windows_stay_in_a_frame() {
    let grids = [[2, 4, 6]];
    let pos = position_ids(&grids, 2);
    assert_eq!(pos.len(), 48);
    assert_eq!(&pos[..24], &pos[24..]);
    assert_eq!(cu_seqlens(&grids), vec![0, 24, 48]);
    let (wi, cu) = window_index(&grids, 2, 56, 14);
    // Each frame: 2x3 units, windows of 2x2 units -> [2x2, 2x1].
    assert_eq!(wi, vec![0, 1, 3, 4, 2, 5, 6, 7, 9, 10, 8, 11]);
    assert_eq!(cu, vec![0, 16, 24, 40, 48]);
}
