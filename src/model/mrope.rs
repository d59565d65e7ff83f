//! M-RoPE positions of a Qwen2.5-VL sequence (transformers' `Qwen2_5_VLModel.get_rope_index`
//! for images): every token gets a (temporal, height, width) position. Text tokens get the
//! same running position on all three axes; the tokens of one image (a run of image
//! placeholders, one per merged unit, row-major) sit at `(p, p + row, p + col)` where `p` is
//! the running position at the image; after the image the running position jumps by
//! `max(h, w) / merge`. The language model rotates frequency pairs of the three sections of
//! `mrope_section` with the three axes' positions.

use anyhow::{bail, Result};

/// Per-axis positions `[t, h, w]`, each of the sequence's length, and the decode delta
/// (`max position + 1 - length`) that later tokens add to their index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MropePositions {
    pub axes: [Vec<u32>; 3],
    pub delta: i64,
}

/// Positions for `ids`, where each maximal run of `image_token_id` is one image whose
/// patch grid (`[t, h, w]` before merging) is the next entry of `grids`. A run whose length is
/// not `t * (h/merge) * (w/merge)`, or a count of runs different from `grids.len()`, is an
/// error naming the image and its position in the sequence.
pub fn mrope_positions(
    ids: &[u32],
    grids: &[[usize; 3]],
    image_token_id: u32,
    merge: usize,
) -> Result<MropePositions> {
    let mut axes: [Vec<u32>; 3] = Default::default();
    let mut pos = 0u32;
    let mut next_image = 0;
    let mut i = 0;
    while i < ids.len() {
        if ids[i] != image_token_id {
            for a in &mut axes {
                a.push(pos);
            }
            pos += 1;
            i += 1;
            continue;
        }
        let start = i;
        while i < ids.len() && ids[i] == image_token_id {
            i += 1;
        }
        let Some(&[t, h, w]) = grids.get(next_image) else {
            bail!(
                "image {} (placeholder run at token {start}) has no image: the sequence holds more \
                 image placeholder runs than the {} image(s) given",
                next_image + 1,
                grids.len()
            );
        };
        let (lh, lw) = (h / merge, w / merge);
        if i - start != t * lh * lw {
            bail!(
                "image {} at token {start}: {} placeholder tokens, but its grid {t}x{h}x{w} \
                 merges to {} tokens",
                next_image + 1,
                i - start,
                t * lh * lw
            );
        }
        for f in 0..t {
            for y in 0..lh {
                for x in 0..lw {
                    axes[0].push(pos + f as u32);
                    axes[1].push(pos + y as u32);
                    axes[2].push(pos + x as u32);
                }
            }
        }
        pos += lh.max(lw) as u32;
        next_image += 1;
    }
    if next_image != grids.len() {
        bail!(
            "{} image(s) given, but the sequence holds {next_image} image placeholder run(s)",
            grids.len()
        );
    }
    let max = axes.iter().flat_map(|a| a.iter().copied()).max().map_or(-1, |m| m as i64);
    Ok(MropePositions { axes, delta: max + 1 - ids.len() as i64 })
}
