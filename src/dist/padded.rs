//! The `shard` blocks as equal-count exchanges: how the NCCL collective (`dist::nccl`) runs
//! ZeRO's reduce-scatter and all-gather. Pure arithmetic and device copies, written against
//! `Backend`, so it is tested here on the CPU with no GPU and no NCCL.
//!
//! `ncclReduceScatter` and `ncclAllGather` move the SAME count to or from every rank, at
//! offsets `q * count` of one contiguous buffer. The trait's blocks `shard(total, q, world)`
//! differ in size by one (lower ranks take the larger) and lie in the flat concatenation of
//! many tensors. So each exchange is PADDED: rank q's block goes to offset `q * count` of a
//! staging buffer of `world * count` values (zeros after a shorter block), and the exchange is
//! one NCCL call. The alternative, one `ncclReduce` (to rank q) or `ncclBroadcast` (from rank
//! q) per block and per tensor segment inside a group, avoids the staging copy but makes
//! hundreds of small calls a step (a 7B model has about 340 tensors), each latency-bound, and
//! leaves the choice of algorithm per call to NCCL; the padded call is the bandwidth-optimal
//! ring that PyTorch FSDP also pads its flat parameters for. The padding is at most
//! `world - 1` values; the staging costs one device copy of the values, which is small beside
//! the transfer.
//!
//! The staging is bounded: blocks go in rounds of at most `chunk` values per rank (round k
//! carries values `k * chunk ..` of every block), so a round holds `world * chunk` extra
//! values however large the model.

use super::shard;
use crate::backend::Backend;
use std::ops::Range;

/// One equal-count exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Round {
    /// Values per rank in the exchange (the longest piece; shorter pieces are padded).
    pub count: usize,
    /// Rank q's piece: the range of the flat vector it sends (reduce-scatter: receives),
    /// at most `count` long; empty when its block is used up (`total < world`).
    pub pieces: Vec<Range<usize>>,
}

/// The rounds that exchange the blocks `shard(total, q, world)` in pieces of at most `chunk`
/// values per rank. None for `total == 0`.
pub fn padded_rounds(total: usize, world: usize, chunk: usize) -> Vec<Round> {
    assert!(chunk >= 1, "padded_rounds: chunk 0");
    let blocks: Vec<Range<usize>> = (0..world).map(|q| shard(total, q, world)).collect();
    // Rank 0's block is the longest.
    let longest = blocks[0].len();
    (0..longest.div_ceil(chunk))
        .map(|k| {
            let lo = k * chunk;
            Round {
                count: chunk.min(longest - lo),
                pieces: blocks
                    .iter()
                    .map(|b| b.start + lo.min(b.len())..b.start + (lo + chunk).min(b.len()))
                    .collect(),
            }
        })
        .collect()
}

/// Copies elements `range` of the flat concatenation of `bufs` to `dst[dst_off..]`.
pub fn copy_from_flat<B: Backend>(
    be: &B,
    bufs: &[B::Buf],
    range: Range<usize>,
    dst: &mut B::Buf,
    dst_off: usize,
) {
    let mut off = 0;
    for b in bufs {
        let n = be.len(b);
        let (lo, hi) = (range.start.max(off), range.end.min(off + n));
        if lo < hi {
            be.copy(dst, dst_off + lo - range.start, b, lo - off, hi - lo);
        }
        off += n;
    }
}

/// Copies `src[src_off .. src_off + len]` over elements `start .. start + len` of the flat
/// concatenation of `bufs`.
pub fn copy_into_flat<B: Backend>(
    be: &B,
    bufs: &mut [B::Buf],
    start: usize,
    src: &B::Buf,
    src_off: usize,
    len: usize,
) {
    let end = start + len;
    let mut off = 0;
    for b in bufs.iter_mut() {
        let n = be.len(b);
        let (lo, hi) = (start.max(off), end.min(off + n));
        if lo < hi {
            be.copy(b, lo - off, src, src_off + lo - start, hi - lo);
        }
        off += n;
    }
}

/// The send buffer of a reduce-scatter round: every rank's piece of `bufs` at `q * count`,
/// zeros after a short piece (they add up to zero in the padding, which nobody keeps).
pub fn pack_round<B: Backend>(be: &B, bufs: &[B::Buf], round: &Round) -> B::Buf {
    let mut staging = be.zeros(round.pieces.len() * round.count);
    for (q, piece) in round.pieces.iter().enumerate() {
        copy_from_flat(be, bufs, piece.clone(), &mut staging, q * round.count);
    }
    staging
}

/// Writes an all-gather round's receive buffer (`world * count` values, rank q's at
/// `q * count`) over the pieces of the flat `bufs`, dropping the padding.
pub fn unpack_round<B: Backend>(be: &B, recv: &B::Buf, round: &Round, bufs: &mut [B::Buf]) {
    for (q, piece) in round.pieces.iter().enumerate() {
        copy_into_flat(be, bufs, piece.start, recv, q * round.count, piece.len());
    }
}

/// Where rank `rank`'s piece of `round` sits in its own block (which starts at `block_start`).
pub fn offset_in_block(round: &Round, rank: usize, block_start: usize) -> Range<usize> {
    let p = &round.pieces[rank];
    p.start - block_start..p.end - block_start
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;

    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let u = ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
                (u + 0.05f32.copysign(u)) * 3.0
            })
            .collect()
    }

    #[test]
    fn rounds_cover_every_block_in_order_with_equal_counts() {
        for total in 0..23 {
            for world in 1..6 {
                for chunk in [1, 2, 3, 5, 100] {
                    let rounds = padded_rounds(total, world, chunk);
                    for q in 0..world {
                        let block = shard(total, q, world);
                        // The pieces of rank q tile its block, in order.
                        let mut at = block.start;
                        for r in &rounds {
                            let p = &r.pieces[q];
                            assert_eq!(p.start, at, "total {total} world {world} chunk {chunk}");
                            assert!(p.len() <= r.count && r.count <= chunk);
                            at = p.end;
                        }
                        assert_eq!(at, block.end, "total {total} world {world} chunk {chunk}");
                    }
                    // The count is the longest piece: no round is all padding.
                    for r in &rounds {
                        assert_eq!(r.count, r.pieces.iter().map(|p| p.len()).max().unwrap());
                        assert!(r.count >= 1);
                    }
                    // Padding per round: less than one value per rank.
                    let padded: usize = rounds.iter().map(|r| r.count * world).sum();
                    assert!(padded >= total && padded - total <= (world - 1) * rounds.len());
                }
            }
        }
        assert!(padded_rounds(0, 3, 4).is_empty());
        // 7 over 3 ranks: blocks 0..3, 3..5, 5..7, padded to 3 each.
        let r = padded_rounds(7, 3, 100);
        assert_eq!(r, vec![Round { count: 3, pieces: vec![0..3, 3..5, 5..7] }]);
        // Fewer values than ranks: ranks 2 and 3 have empty blocks, still one value sent each.
        let r = padded_rounds(2, 4, 100);
        assert_eq!(r, vec![Round { count: 1, pieces: vec![0..1, 1..2, 2..2, 2..2] }]);
        // Rounds of 2: rank 1's block 4..7 goes as 4..6, then 6..7.
        let r = padded_rounds(7, 2, 2);
        assert_eq!(r[0].pieces, vec![0..2, 4..6]);
        assert_eq!(r[1].pieces, vec![2..4, 6..7]);
    }

    /// Tensor lengths with empty tensors and blocks that cut through tensors.
    const LAYOUTS: [&[usize]; 4] = [&[7, 1, 12, 5], &[0, 3, 0, 2], &[1], &[13, 0, 4]];

    /// ncclReduceScatter's contract on the padded rounds, simulated on the host (the sum over
    /// ranks in rank order, as the other collectives take it), gives every rank its block of
    /// the flat sum; ncclAllGather's gives every rank the whole flat vector back.
    #[test]
    fn padded_exchanges_give_the_shard_blocks() {
        let be = Cpu;
        for lens in LAYOUTS {
            let total: usize = lens.iter().sum();
            for world in 1..6 {
                for chunk in [1, 2, 3, 64] {
                    let bufs: Vec<Vec<Vec<f32>>> = (0..world)
                        .map(|r| {
                            lens.iter()
                                .enumerate()
                                .map(|(i, &n)| noise(n, (r * 31 + i) as u64 + 1))
                                .collect()
                        })
                        .collect();
                    // The reference: the flat sum in rank order from rank 0's values.
                    let mut sum = bufs[0].concat();
                    for b in &bufs[1..] {
                        for (a, x) in sum.iter_mut().zip(b.concat()) {
                            *a += x;
                        }
                    }
                    let rounds = padded_rounds(total, world, chunk);
                    // Reduce-scatter.
                    let mut blocks: Vec<Vec<f32>> =
                        (0..world).map(|q| vec![f32::NAN; shard(total, q, world).len()]).collect();
                    for round in &rounds {
                        let sends: Vec<Vec<f32>> =
                            bufs.iter().map(|b| pack_round(&be, b, round)).collect();
                        for (q, block) in blocks.iter_mut().enumerate() {
                            let mut recv: Vec<f32> =
                                sends[0][q * round.count..(q + 1) * round.count].to_vec();
                            for s in &sends[1..] {
                                for (a, x) in recv.iter_mut().zip(&s[q * round.count..]) {
                                    *a += x;
                                }
                            }
                            let start = shard(total, q, world).start;
                            let at = offset_in_block(round, q, start);
                            be.copy(block, at.start, &recv, 0, at.len());
                        }
                    }
                    for (q, block) in blocks.iter().enumerate() {
                        let want = &sum[shard(total, q, world)];
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits(block),
                            bits(want),
                            "{lens:?} world {world} chunk {chunk} rank {q}"
                        );
                    }
                    // All-gather of those blocks into NaN-poisoned replicas.
                    for q in 0..world {
                        let mut mine: Vec<Vec<f32>> =
                            lens.iter().map(|&n| vec![f32::NAN; n]).collect();
                        for round in &rounds {
                            let mut recv = vec![f32::NAN; world * round.count];
                            for (r, block) in blocks.iter().enumerate() {
                                // Rank r's send buffer: its piece, padded.
                                let at = offset_in_block(round, r, shard(total, r, world).start);
                                let mut send = be.zeros(round.count);
                                be.copy(&mut send, 0, block, at.start, at.len());
                                recv[r * round.count..(r + 1) * round.count].copy_from_slice(&send);
                            }
                            unpack_round(&be, &recv, round, &mut mine);
                        }
                        let got = mine.concat();
                        assert!(
                            got.iter().zip(&sum).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "all-gather {lens:?} world {world} chunk {chunk} rank {q}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn flat_copies_cross_tensor_boundaries() {
        let be = Cpu;
        let bufs = vec![vec![1.0, 2.0], vec![], vec![3.0, 4.0, 5.0]];
        let mut dst = vec![0.0; 6];
        copy_from_flat(&be, &bufs, 1..4, &mut dst, 2);
        assert_eq!(dst, [0.0, 0.0, 2.0, 3.0, 4.0, 0.0]);
        let mut out = vec![vec![9.0; 2], vec![], vec![9.0; 3]];
        copy_into_flat(&be, &mut out, 1, &vec![7.0, 6.0, 5.0, 4.0], 1, 3);
        assert_eq!(out, vec![vec![9.0, 6.0], vec![], vec![5.0, 4.0, 9.0]]);
    }
}
