//! Flash attention on bf16 tensor cores (`kernels/flash_attention.cu`): host-side work lists
//! and launches. Selected with `AttnKernel::Flash`; the per-query f32 kernels of
//! `attention.cu` stay the default and the exact baseline.
//!
//! Precision: Q, K, V, P, dO and dS are rounded to bf16 as they enter the tensor cores (the
//! backend's f32 buffers are converted in the kernels' tile loads); scores, softmax statistics
//! and all accumulators are f32. Tested against the f32 CPU reference at relative L2 <= 1e-2
//! (tests/flash_attention.rs).

use super::device::{Arg, Device};
use super::{CudaBackend, DevBuf};
use crate::backend::{AttnShape, AttnSpan};

/// Which attention kernels a `CudaBackend` runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttnKernel {
    /// Per-query f32 kernels (`attention.cu`): exact to f32 rounding, slow.
    #[default]
    Reference,
    /// Tiled bf16 tensor-core kernels (`flash_attention.cu`) for head dims 16/32/64/128;
    /// other head dims fall back to `Reference`.
    Flash,
}

impl AttnKernel {
    /// From `MMR1_ATTENTION` (`reference` or `flash`); unset means `Reference`.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("MMR1_ATTENTION").as_deref() {
            Err(_) | Ok("") | Ok("reference") => Ok(AttnKernel::Reference),
            Ok("flash") => Ok(AttnKernel::Flash),
            Ok(other) => {
                Err(format!("MMR1_ATTENTION={other:?}: expected \"reference\" or \"flash\""))
            }
        }
    }
}

/// Rows of a tile (queries or keys), = the kernels' FA_ROWS.
const TILE: usize = 64;
/// Threads per block, = FA_THREADS.
const THREADS: u32 = 128;

/// Whether the flash kernels exist for this head dim.
pub fn flash_supports(head_dim: usize) -> bool {
    matches!(head_dim, 16 | 32 | 64 | 128)
}

/// Query tiles: (first query row, rows, span's first kv row, position of the first query),
/// the most keys first: under causal masking the last tiles of long sequences are the longest
/// blocks, and starting them first shortens the grid's tail. Blocks are independent, so the
/// order changes no result.
fn q_tiles(spans: &[AttnSpan]) -> Vec<i32> {
    let mut t: Vec<[i32; 4]> = Vec::new();
    for s in spans {
        for i0 in (0..s.q_len).step_by(TILE) {
            t.push([
                (s.q_start + i0) as i32,
                TILE.min(s.q_len - i0) as i32,
                s.kv_start as i32,
                (s.kv_len - s.q_len + i0) as i32,
            ]);
        }
    }
    t.sort_by_key(|x| std::cmp::Reverse(x[3] + x[1])); // keys seen by the tile's last row
    t.concat()
}

/// Key tiles: (first kv row, keys, index of the first key, span's q_start, q_len, position of
/// its first query, 0, 0), the most queries first (see `q_tiles`).
fn kv_tiles(spans: &[AttnSpan]) -> Vec<i32> {
    let mut v: Vec<[i32; 8]> = Vec::new();
    for s in spans {
        for j0 in (0..s.kv_len).step_by(TILE) {
            v.push([
                (s.kv_start + j0) as i32,
                TILE.min(s.kv_len - j0) as i32,
                j0 as i32,
                s.q_start as i32,
                s.q_len as i32,
                (s.kv_len - s.q_len) as i32,
                0,
                0,
            ]);
        }
    }
    // queries that see the tile's first key: q_len - max(0, j0 - (kv_len - q_len))
    v.sort_by_key(|x| std::cmp::Reverse(x[4] - (x[2] - x[5]).max(0)));
    v.concat()
}

/// Keys per decode split (= DEC_CHUNK), and the decode kernel's limits (DEC_MAXG, DEC_MAXD).
const DEC_CHUNK: usize = 128;
const DEC_WARPS: usize = 4;

/// Whether a call is a decode step the split kernel serves: one query per sequence (the last
/// position), at most 8 query heads per kv head, head dim a multiple of 4 up to 256.
pub fn decode_supports(spans: &[AttnSpan], shape: AttnShape) -> bool {
    !spans.is_empty()
        && spans.iter().all(|s| s.q_len == 1)
        && shape.n_heads / shape.n_kv_heads <= 8
        && shape.head_dim.is_multiple_of(4)
        && shape.head_dim <= 256
}

/// Decode work: split items (query row, first kv row, keys, 0) and per-sequence combine items
/// (query row, first split, splits, 0).
fn decode_items(spans: &[AttnSpan]) -> (Vec<i32>, Vec<i32>) {
    let (mut split, mut comb) = (Vec::new(), Vec::new());
    for s in spans {
        let first = split.len() / 4;
        for c0 in (0..s.kv_len).step_by(DEC_CHUNK) {
            split.extend_from_slice(&[
                s.q_start as i32,
                (s.kv_start + c0) as i32,
                DEC_CHUNK.min(s.kv_len - c0) as i32,
                0,
            ]);
        }
        comb.extend_from_slice(&[
            s.q_start as i32,
            first as i32,
            (split.len() / 4 - first) as i32,
            0,
        ]);
    }
    (split, comb)
}

impl<D: Device> CudaBackend<D> {
    /// Flash-decoding forward (f32): see `decode_supports`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn flash_decode(
        &self,
        out: &mut DevBuf<D::Mem>,
        lse: &mut DevBuf<D::Mem>,
        q: &DevBuf<D::Mem>,
        k: &DevBuf<D::Mem>,
        v: &DevBuf<D::Mem>,
        spans: &[AttnSpan],
        shape: AttnShape,
    ) {
        let (h, hkv, d) = (shape.n_heads, shape.n_kv_heads, shape.head_dim);
        let (split, comb) = decode_items(spans);
        let n_items = split.len() / 4;
        if n_items == 0 {
            return;
        }
        let (d_split, d_comb) = (self.upload_i32(&split), self.upload_i32(&comb));
        let part_o = self.dev.alloc(n_items * h * d * 4);
        let part_ml = self.dev.alloc(n_items * h * 2 * 4);
        self.dev.launch(
            "flash_decode_split",
            [n_items.div_ceil(DEC_WARPS) as u32, hkv as u32, 1],
            [32 * DEC_WARPS as u32, 1, 1],
            0,
            &[
                Arg::Ptr(&part_o),
                Arg::Ptr(&part_ml),
                Arg::Ptr(&q.mem),
                Arg::Ptr(&k.mem),
                Arg::Ptr(&v.mem),
                Arg::Ptr(&d_split),
                Arg::I32(n_items as i32),
                Arg::I32(h as i32),
                Arg::I32(hkv as i32),
                Arg::I32(d as i32),
                Arg::F32((1.0 / (d as f64).sqrt()) as f32),
            ],
        );
        self.dev.launch(
            "flash_decode_combine",
            [(comb.len() / 4) as u32, h as u32, 1],
            [d.next_multiple_of(32).min(256) as u32, 1, 1],
            0,
            &[
                Arg::Ptr(&out.mem),
                Arg::Ptr(&lse.mem),
                Arg::Ptr(&part_o),
                Arg::Ptr(&part_ml),
                Arg::Ptr(&d_comb),
                Arg::I32(h as i32),
                Arg::I32(d as i32),
            ],
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn flash_forward(
        &self,
        out: &mut DevBuf<D::Mem>,
        lse: &mut DevBuf<D::Mem>,
        q: &DevBuf<D::Mem>,
        k: &DevBuf<D::Mem>,
        v: &DevBuf<D::Mem>,
        spans: &[AttnSpan],
        shape: AttnShape,
    ) {
        let items = q_tiles(spans);
        if items.is_empty() {
            return;
        }
        let d_items = self.upload_i32(&items);
        let scale = (1.0 / (shape.head_dim as f64).sqrt()) as f32;
        self.dev.launch(
            &format!("flash_fwd_d{}", shape.head_dim),
            [(items.len() / 4) as u32, shape.n_heads as u32, 1],
            [THREADS, 1, 1],
            0,
            &[
                Arg::Ptr(&out.mem),
                Arg::Ptr(&lse.mem),
                Arg::Ptr(&q.mem),
                Arg::Ptr(&k.mem),
                Arg::Ptr(&v.mem),
                Arg::Ptr(&d_items),
                Arg::I32(shape.n_heads as i32),
                Arg::I32(shape.n_kv_heads as i32),
                Arg::F32(scale),
            ],
        );
    }

    /// `dsum` is `D = rowsum(dO * O)` per (query row, head), computed by the caller.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn flash_backward(
        &self,
        dq: &mut DevBuf<D::Mem>,
        dk: &mut DevBuf<D::Mem>,
        dv: &mut DevBuf<D::Mem>,
        dout: &DevBuf<D::Mem>,
        q: &DevBuf<D::Mem>,
        k: &DevBuf<D::Mem>,
        v: &DevBuf<D::Mem>,
        lse: &DevBuf<D::Mem>,
        dsum: &D::Mem,
        spans: &[AttnSpan],
        shape: AttnShape,
    ) {
        let (h, hkv, d) = (shape.n_heads, shape.n_kv_heads, shape.head_dim);
        let scale = (1.0 / (d as f64).sqrt()) as f32;
        let qt = q_tiles(spans);
        if !qt.is_empty() {
            let d_qt = self.upload_i32(&qt);
            self.dev.launch(
                &format!("flash_bwd_dq_d{d}"),
                [(qt.len() / 4) as u32, h as u32, 1],
                [THREADS, 1, 1],
                0,
                &[
                    Arg::Ptr(&dq.mem),
                    Arg::Ptr(&dout.mem),
                    Arg::Ptr(&q.mem),
                    Arg::Ptr(&k.mem),
                    Arg::Ptr(&v.mem),
                    Arg::Ptr(&lse.mem),
                    Arg::Ptr(dsum),
                    Arg::Ptr(&d_qt),
                    Arg::I32(h as i32),
                    Arg::I32(hkv as i32),
                    Arg::F32(scale),
                ],
            );
        }
        let kt = kv_tiles(spans);
        if !kt.is_empty() {
            let d_kt = self.upload_i32(&kt);
            self.dev.launch(
                &format!("flash_bwd_dkv_d{d}"),
                [(kt.len() / 8) as u32, hkv as u32, 1],
                [THREADS, 1, 1],
                0,
                &[
                    Arg::Ptr(&dk.mem),
                    Arg::Ptr(&dv.mem),
                    Arg::Ptr(&dout.mem),
                    Arg::Ptr(&q.mem),
                    Arg::Ptr(&k.mem),
                    Arg::Ptr(&v.mem),
                    Arg::Ptr(&lse.mem),
                    Arg::Ptr(dsum),
                    Arg::Ptr(&d_kt),
                    Arg::I32(h as i32),
                    Arg::I32(hkv as i32),
                    Arg::F32(scale),
                ],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_each_span_once() {
        let spans = [
            AttnSpan { q_start: 0, q_len: 130, kv_start: 0, kv_len: 130 },
            AttnSpan { q_start: 130, q_len: 1, kv_start: 200, kv_len: 65 },
        ];
        let q = q_tiles(&spans);
        assert_eq!(q, vec![128, 2, 0, 128, 64, 64, 0, 64, 130, 1, 200, 64, 0, 64, 0, 0]);
        let kv = kv_tiles(&spans);
        assert_eq!(kv.len(), 8 * 5);
        assert_eq!(&kv[..8], &[0, 64, 0, 0, 130, 0, 0, 0]);
        assert_eq!(&kv[8..16], &[64, 64, 64, 0, 130, 0, 0, 0]);
        assert_eq!(&kv[16..24], &[128, 2, 128, 0, 130, 0, 0, 0]);
        assert_eq!(&kv[24..32], &[200, 64, 0, 130, 1, 64, 0, 0]);
        assert_eq!(&kv[32..40], &[264, 1, 64, 130, 1, 64, 0, 0]);
        let (split, comb) = decode_items(&spans[1..]);
        assert_eq!(split, vec![130, 200, 65, 0]);
        assert_eq!(comb, vec![130, 0, 1, 0]);
        let long = [AttnSpan { q_start: 3, q_len: 1, kv_start: 10, kv_len: 300 }];
        let (split, comb) = decode_items(&long);
        assert_eq!(split, vec![3, 10, 128, 0, 3, 138, 128, 0, 3, 266, 44, 0]);
        assert_eq!(comb, vec![3, 0, 3, 0]);
    }
}
