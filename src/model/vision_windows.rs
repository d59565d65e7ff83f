//! The vision tower's bookkeeping, on the host (integers only): the (h, w) position of every
//! patch for the 2D rotary embedding, the per-image spans of full attention, and the window
//! reordering of window attention with its inverse. Same results as transformers'
//! `vision_utils.get_vision_position_ids` / `get_vision_cu_seqlens` /
//! `get_vision_window_index` (checked by tests/suite/vl_windows.rs).
//!
//! Patches arrive in merger order (see `vision_preprocess`): each run of `merge^2` rows is one
//! merged unit (one language-model token). Window attention permutes whole merged units so
//! that each window's units are contiguous; the merger's output is permuted back at the end.

/// Per patch, its (row, column) in the patch grid, in merger order; a video repeats the
/// spatial positions for every frame.
pub fn position_ids(grids: &[[usize; 3]], merge: usize) -> Vec<[u32; 2]> {
    let mut out = Vec::new();
    for &[t, h, w] in grids {
        for _ in 0..t {
            for bh in 0..h / merge {
                for bw in 0..w / merge {
                    for mh in 0..merge {
                        for mw in 0..merge {
                            out.push([(bh * merge + mh) as u32, (bw * merge + mw) as u32]);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Boundaries (in patches) of full attention: one span per frame of every image.
pub fn cu_seqlens(grids: &[[usize; 3]]) -> Vec<usize> {
    let mut cu = vec![0];
    for &[t, h, w] in grids {
        for _ in 0..t {
            cu.push(cu.last().unwrap() + h * w);
        }
    }
    cu
}

/// Window attention's order of merged units, and the window boundaries in patches.
///
/// Each frame's grid of merged units (`h/merge x w/merge`) is cut into windows of
/// `window_size / merge / patch_size` units a side, from the top-left; windows are listed row
/// by row and units inside a window row by row. Partial windows at the right and bottom edges
/// hold fewer units. Returns `(window_index, cu_window_seqlens)`: `window_index[j]` is the
/// merged unit placed at position `j`; boundaries never repeat (empty windows vanish).
pub fn window_index(
    grids: &[[usize; 3]],
    merge: usize,
    window_size: usize,
    patch_size: usize,
) -> (Vec<usize>, Vec<usize>) {
    let win = (window_size / merge / patch_size).max(1);
    let unit = merge * merge;
    let mut index = Vec::new();
    let mut cu = vec![0usize];
    let mut base = 0;
    for &[t, h, w] in grids {
        let (lh, lw) = (h / merge, w / merge);
        for f in 0..t {
            for wy in 0..lh.div_ceil(win) {
                for wx in 0..lw.div_ceil(win) {
                    let mut n = 0;
                    for y in wy * win..((wy + 1) * win).min(lh) {
                        for x in wx * win..((wx + 1) * win).min(lw) {
                            index.push(base + (f * lh + y) * lw + x);
                            n += 1;
                        }
                    }
                    if n > 0 {
                        cu.push(cu.last().unwrap() + n * unit);
                    }
                }
            }
        }
        base += t * lh * lw;
    }
    (index, cu)
}

/// The inverse of a permutation: `inv[perm[j]] = j`.
pub fn inverse_permutation(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; perm.len()];
    for (j, &p) in perm.iter().enumerate() {
        inv[p] = j;
    }
    inv
}

/// Row order of patches after window reordering: merged unit `window_index[j]`'s `merge^2`
/// patches, for each `j`. Gathering rows `r[i]` of a `[patches, d]` matrix gives the
/// window-ordered matrix.
pub fn window_patch_order(window_index: &[usize], merge: usize) -> Vec<usize> {
    let unit = merge * merge;
    window_index.iter().flat_map(|&u| u * unit..(u + 1) * unit).collect()
}
