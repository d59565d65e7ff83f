//! Philox4x32-10 (`rl::philox` on the host, `kernels/philox.cuh` on the device) against the
//! published known-answer vectors of Random123 (D. E. Shaw Research, github.com/DEShawResearch/
//! random123, file tests/kat_vectors at commit 9545ff6413f258be2f04c1d319d99aaef7521150: the
//! philox4x32 lines, 7 and 10 rounds), and the two implementations against each other on
//! random (seed, sequence, step) triples, bit for bit. Device cases run on the emulator under
//! every CI schedule and, #[ignore]d, on the GPU.

use mmr1_fast::backend::cuda::device::Device;
use mmr1_fast::backend::cuda::CudaBackend;
use mmr1_fast::rl::philox::{philox4x32_rounds, uniform, words};
use rand::Rng;

use crate::kernel_check;
use kernel_check::*;

/// (rounds, counter, key, expected output).
type Kat = (u32, [u32; 4], [u32; 2], [u32; 4]);

/// Copied from Random123's tests/kat_vectors.
const KAT: [Kat; 6] = [
    (7, [0; 4], [0; 2], [0x5f6fb709, 0x0d893f64, 0x4f121f81, 0x4f730a48]),
    (7, [!0; 4], [!0; 2], [0x5207ddc2, 0x45165e59, 0x4d8ee751, 0x8c52f662]),
    (
        7,
        [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
        [0xa4093822, 0x299f31d0],
        [0x4dfccaba, 0x190a87f0, 0xc47362ba, 0xb6b5242a],
    ),
    (10, [0; 4], [0; 2], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]),
    (10, [!0; 4], [!0; 2], [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]),
    (
        10,
        [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
        [0xa4093822, 0x299f31d0],
        [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
    ),
];

#[test]
fn cpu_matches_random123_known_answers() {
    for (r, ctr, key, want) in KAT {
        assert_eq!(philox4x32_rounds(ctr, key, r), want, "philox4x32-{r} of {ctr:08x?} {key:08x?}");
    }
}

#[test]
fn the_uniform_uses_53_bits_and_stays_below_one() {
    // The largest words give the largest double below 1; the smallest give 0.
    let mut r = rng(3);
    let mut sum = 0.0;
    const N: usize = 20_000;
    for _ in 0..N {
        let (s, q, t): (u64, u64, u32) = (r.gen(), r.gen(), r.gen());
        let u = uniform(s, q, t);
        assert!((0.0..1.0).contains(&u), "uniform({s}, {q}, {t}) = {u}");
        let w = words(s, q, t);
        let bits = ((w[0] as u64) << 21) | ((w[1] as u64) >> 11);
        assert_eq!(u, bits as f64 / 2f64.powi(53));
        sum += u;
    }
    // Mean of 20k uniforms: sigma 0.002, bound at 6 sigma.
    assert!((sum / N as f64 - 0.5).abs() < 0.012, "mean {}", sum / N as f64);
    // Every input moves the draw: seed, sequence (both halves) and step.
    let base = uniform(7, 9, 11);
    for other in
        [uniform(8, 9, 11), uniform(7, 10, 11), uniform(7, 9 + (1 << 32), 11), uniform(7, 9, 12)]
    {
        assert_ne!(base, other);
    }
}

fn device_matches_random123_known_answers<D: Device>(b: &CudaBackend<D>) {
    let dev = b.device();
    for rounds in [7u32, 10] {
        let cases: Vec<_> = KAT.iter().filter(|k| k.0 == rounds).collect();
        let input: Vec<u32> =
            cases.iter().flat_map(|(_, c, k, _)| c.iter().chain(k.iter()).copied()).collect();
        let d_in = dev.upload(bytemuck::cast_slice(&input));
        let out = dev.upload(bytemuck::cast_slice(&vec![0xdeadbeefu32; 4 * cases.len()]));
        dev.launch(
            "philox4x32_test",
            [1, 1, 1],
            [32, 1, 1],
            0,
            &[
                mmr1_fast::backend::cuda::device::Arg::Ptr(&out),
                mmr1_fast::backend::cuda::device::Arg::Ptr(&d_in),
                mmr1_fast::backend::cuda::device::Arg::I32(cases.len() as i32),
                mmr1_fast::backend::cuda::device::Arg::I32(rounds as i32),
            ],
        );
        let got: Vec<u32> = bytemuck::cast_slice(&dev.download(&out, 16 * cases.len())).to_vec();
        for (i, (_, c, k, want)) in cases.iter().enumerate() {
            assert_eq!(
                &got[4 * i..4 * i + 4],
                want,
                "device philox4x32-{rounds} of {c:08x?} {k:08x?}"
            );
        }
    }
}

fn device_uniforms_equal_the_cpu_bit_for_bit<D: Device>(b: &CudaBackend<D>) {
    use mmr1_fast::backend::cuda::device::Arg;
    let dev = b.device();
    let mut r = rng(17);
    // Random triples, plus the edges of every field.
    let mut triples: Vec<(u64, u64, u32)> =
        (0..1000).map(|_| (r.gen(), r.gen(), r.gen())).collect();
    triples.extend([(0, 0, 0), (u64::MAX, u64::MAX, u32::MAX), (1, 1 << 32, 1), (1 << 32, 1, 0)]);
    let packed: Vec<u32> = triples
        .iter()
        .flat_map(|&(s, q, t)| [s as u32, (s >> 32) as u32, q as u32, (q >> 32) as u32, t])
        .collect();
    let d_in = dev.upload(bytemuck::cast_slice(&packed));
    let n = triples.len();
    let out = dev.upload(bytemuck::cast_slice(&vec![f64::NAN; n]));
    dev.launch(
        "philox_uniform_test",
        [n.div_ceil(128) as u32, 1, 1],
        [128, 1, 1],
        0,
        &[Arg::Ptr(&out), Arg::Ptr(&d_in), Arg::I32(n as i32)],
    );
    let got: Vec<f64> = bytemuck::cast_slice(&dev.download(&out, 8 * n)).to_vec();
    for (i, &(s, q, t)) in triples.iter().enumerate() {
        let want = uniform(s, q, t);
        assert_eq!(
            got[i].to_bits(),
            want.to_bits(),
            "uniform({s}, {q}, {t}): device {} cpu {want}",
            got[i]
        );
    }
}

backend_suite!(device_matches_random123_known_answers, device_uniforms_equal_the_cpu_bit_for_bit);
