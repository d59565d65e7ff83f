//! The fused layer ops (`Backend::qkv_epilogue`, `Backend::add_rmsnorm`,
//! `Backend::rmsnorm_backward_add`, `Backend::qkv_backward_epilogue`) against the ops they
//! replace: the same bits as those ops run one after another on the same backend (that is the
//! contract: the model's results do not depend on whether a backend fuses), and within the
//! kernel tolerance of the CPU reference. Random inputs, ragged shapes, grouped heads, scaled
//! RoPE's factor, a KV cache whose other rows must keep their bits, outputs poisoned.
//!
//! Runs on the CUDA emulator with `--features emu` (every CI schedule) and, `#[ignore]`d, on
//! the GPU (scripts/gpu-check.sh).
#![cfg(any(feature = "emu", feature = "cuda"))]

use mmr1_fast::backend::cpu::{rope_inv_freq, Cpu};
use mmr1_fast::backend::fused_ops::{self, CacheRows, Qkv, QkvGrads, Rope1d};
use mmr1_fast::backend::Backend;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::kernel_check;
use kernel_check::*;

const TOL: f64 = 1e-5;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// One case's host inputs.
struct QkvCase {
    rows: usize,
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    factor: f32,
    /// Cache rows (distinct, unordered) in a cache of `cap` rows, or none.
    cache: Option<(Vec<usize>, usize)>,
}

/// q, k, v, cache k, cache v after `qkv_epilogue` (fused: the backend's; else the ops one
/// after another) on `b`. Stacked: the projections given as one stacked GEMM output (a row's
/// q, then k, then v), q, k and v poisoned outputs.
fn run_qkv<B: Backend>(
    b: &B,
    c: &QkvCase,
    host: &[Vec<f32>],
    pos: &[u32],
    inv: &[f32],
    fused: bool,
    stacked: bool,
) -> Vec<Vec<f32>> {
    let (qd, kvd) = (c.n_heads * c.hd, c.n_kv * c.hd);
    let (mut q, mut k, mut v) = if stacked {
        (poisoned(b, c.rows * qd), poisoned(b, c.rows * kvd), poisoned(b, c.rows * kvd))
    } else {
        (b.upload(&host[0]), b.upload(&host[1]), b.upload(&host[2]))
    };
    let row = |x: &[f32], w: usize, t: usize| x[t * w..(t + 1) * w].to_vec();
    let stack: Vec<f32> = (0..c.rows)
        .flat_map(|t| [row(&host[0], qd, t), row(&host[1], kvd, t), row(&host[2], kvd, t)])
        .flatten()
        .collect();
    let stack = stacked.then(|| b.upload(&stack));
    let (bq, bk, bv) = (b.upload(&host[3]), b.upload(&host[4]), b.upload(&host[5]));
    let (mut ck, mut cv) = (b.upload(&host[6]), b.upload(&host[7]));
    let x = Qkv {
        q: &mut q,
        k: &mut k,
        v: &mut v,
        bq: &bq,
        bk: &bk,
        bv: &bv,
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv,
        head_dim: c.hd,
        stacked: stack.as_ref(),
    };
    let rope = Rope1d { positions: pos, inv_freq: inv, factor: c.factor };
    let dest = c.cache.as_ref().map(|(rows, _)| CacheRows { k: &mut ck, v: &mut cv, rows });
    if fused {
        b.qkv_epilogue(x, &rope, dest);
    } else {
        fused_ops::qkv_epilogue_ops(b, x, &rope, dest);
    }
    [&q, &k, &v, &ck, &cv].iter().map(|x| b.download(x)).collect()
}

/// (rows, query heads, kv heads, head dim) of the q/k/v epilogue tests: one row, grouped
/// heads, Qwen2.5-0.5B's 14/2 at 64, and odd (5) and tiny (2, 6) head dims.
const QKV_SHAPES: [(usize, usize, usize, usize); 6] =
    [(1, 2, 1, 8), (5, 4, 2, 16), (13, 3, 3, 6), (7, 14, 2, 64), (3, 2, 1, 5), (4, 2, 2, 2)];

fn qkv_epilogue<B: Backend>(b: &B) {
    let mut r = rng(41);
    let mut cases = Vec::new();
    for (rows, n_heads, n_kv, hd) in QKV_SHAPES {
        for factor in [1.0f32, 1.2247449] {
            for cached in [false, true] {
                let cache = cached.then(|| {
                    let cap = rows * 3 + 2;
                    let mut all: Vec<usize> = (0..cap).collect();
                    all.shuffle(&mut r);
                    (all[..rows].to_vec(), cap)
                });
                cases.push(QkvCase { rows, n_heads, n_kv, hd, factor, cache });
            }
        }
    }
    for c in &cases {
        let (qd, kvd) = (c.n_heads * c.hd, c.n_kv * c.hd);
        let cap = c.cache.as_ref().map_or(1, |x| x.1);
        let host: Vec<Vec<f32>> =
            [c.rows * qd, c.rows * kvd, c.rows * kvd, qd, kvd, kvd, cap * kvd, cap * kvd]
                .iter()
                .map(|&n| rand_vec(&mut r, n, 2.0))
                .collect();
        // Positions past a short context and unordered (packed sequences restart at 0).
        let pos: Vec<u32> = (0..c.rows).map(|_| r.gen_range(0..5000)).collect();
        // Plain frequencies, or scaled ones (any table of hd/2 values is valid).
        let inv: Vec<f32> = if c.factor == 1.0 {
            rope_inv_freq(c.hd, 10000.0)
        } else {
            (0..c.hd / 2).map(|_| r.gen_range(1e-4f32..1.0)).collect()
        };
        let tag = format!(
            "{} rows, {}/{} heads, hd {}, factor {}, cache {:?}",
            c.rows,
            c.n_heads,
            c.n_kv,
            c.hd,
            c.factor,
            c.cache.as_ref().map(|x| x.1)
        );
        let fused = run_qkv(b, c, &host, &pos, &inv, true, false);
        let ops = run_qkv(b, c, &host, &pos, &inv, false, false);
        let want = run_qkv(&Cpu, c, &host, &pos, &inv, false, false);
        // From a stacked GEMM output: the fused kernel's reads, and the ops' copies.
        let fused_stacked = run_qkv(b, c, &host, &pos, &inv, true, true);
        let ops_stacked = run_qkv(&Cpu, c, &host, &pos, &inv, false, true);
        for (i, name) in ["q", "k", "v", "cache k", "cache v"].iter().enumerate() {
            assert_eq!(
                bits(&fused[i]),
                bits(&ops[i]),
                "{tag}: {name} differs from the ops one by one"
            );
            assert_eq!(bits(&fused_stacked[i]), bits(&fused[i]), "{tag}: {name} from a stack");
            assert_eq!(bits(&ops_stacked[i]), bits(&want[i]), "{tag}: {name}: CPU ops, a stack");
            assert_close(&format!("qkv_epilogue {name} {tag}"), &fused[i], &want[i], TOL);
        }
        // The cache rows not written keep their bits; written rows hold the new k and v.
        let written: Vec<usize> = c.cache.as_ref().map_or(vec![], |x| x.0.clone());
        for row in 0..cap {
            let span = row * kvd..(row + 1) * kvd;
            for (i, which) in [(3usize, 1usize), (4, 2)] {
                let got = &fused[i][span.clone()];
                match written.iter().position(|&w| w == row) {
                    None => assert_eq!(
                        bits(got),
                        bits(&host[3 + i][span.clone()]),
                        "{tag}: cache row {row} touched"
                    ),
                    Some(t) => assert_eq!(
                        bits(got),
                        bits(&fused[which][t * kvd..(t + 1) * kvd]),
                        "{tag}: cache row {row} is not row {t} of the new k/v"
                    ),
                }
            }
        }
        if c.hd >= 2 {
            // The op did something: q moved (bias and rotation), v by its bias alone.
            assert_ne!(bits(&fused[0]), bits(&host[0]), "{tag}: q unchanged");
        }
    }
}

/// sum, norm, rstd after `add_rmsnorm` (fused: the backend's; else add_into + rmsnorm) on `b`,
/// outputs poisoned first.
fn run_add_rmsnorm<B: Backend>(
    b: &B,
    host: [&[f32]; 3],
    rows: usize,
    dim: usize,
    fused: bool,
) -> Vec<Vec<f32>> {
    let (x, y, w) = (b.upload(host[0]), b.upload(host[1]), b.upload(host[2]));
    let (mut s, mut n, mut rs) =
        (poisoned(b, rows * dim), poisoned(b, rows * dim), poisoned(b, rows));
    if fused {
        b.add_rmsnorm(&mut s, &mut n, &mut rs, &x, &y, &w, rows, dim, 1e-6);
    } else {
        fused_ops::add_rmsnorm_ops(b, &mut s, &mut n, &mut rs, &x, &y, &w, rows, dim, 1e-6);
    }
    vec![b.download(&s), b.download(&n), b.download(&rs)]
}

fn add_rmsnorm<B: Backend>(b: &B) {
    let mut r = rng(42);
    for (rows, dim) in [(1usize, 7usize), (5, 129), (17, 896), (3, 1), (2, 1000)] {
        let (x, y, w) = (
            rand_vec(&mut r, rows * dim, 2.0),
            rand_vec(&mut r, rows * dim, 2.0),
            rand_vec(&mut r, dim, 1.0),
        );
        let host = [&x[..], &y[..], &w[..]];
        let fused = run_add_rmsnorm(b, host, rows, dim, true);
        let ops = run_add_rmsnorm(b, host, rows, dim, false);
        let want = run_add_rmsnorm(&Cpu, host, rows, dim, false);
        for (i, name) in ["sum", "norm", "rstd"].iter().enumerate() {
            let tag = format!("add_rmsnorm {name} {rows}x{dim}");
            assert_eq!(bits(&fused[i]), bits(&ops[i]), "{tag}: differs from add_into + rmsnorm");
            assert_close(&tag, &fused[i], &want[i], TOL);
        }
    }
}

/// dacc, dw after `rmsnorm_backward_add` (fused: the backend's; else `rmsnorm_backward` then
/// `add_assign`) from the same accumulators, scratch poisoned.
fn run_norm_backward_add<B: Backend>(
    b: &B,
    host: &[Vec<f32>],
    rows: usize,
    dim: usize,
    fused: bool,
) -> Vec<Vec<f32>> {
    let (mut acc, mut dw) = (b.upload(&host[0]), b.upload(&host[1]));
    let (dout, x, w, rstd) =
        (b.upload(&host[2]), b.upload(&host[3]), b.upload(&host[4]), b.upload(&host[5]));
    let mut scratch = poisoned(b, rows * dim);
    if fused {
        b.rmsnorm_backward_add(&mut acc, &mut scratch, &mut dw, &dout, &x, &w, &rstd, rows, dim);
    } else {
        fused_ops::rmsnorm_backward_add_ops(
            b,
            &mut acc,
            &mut scratch,
            &mut dw,
            &dout,
            &x,
            &w,
            &rstd,
            rows,
            dim,
        );
    }
    vec![b.download(&acc), b.download(&dw)]
}

fn rmsnorm_backward_add<B: Backend>(b: &B) {
    let mut r = rng(44);
    for (rows, dim) in [(1usize, 7usize), (5, 129), (17, 896), (3, 1), (40, 1000)] {
        let x = rand_vec(&mut r, rows * dim, 2.0);
        // rstd as the forward makes it, so that the two terms of dx are of the real sizes.
        let rstd: Vec<f32> = x
            .chunks(dim)
            .map(|row| 1.0 / ((row.iter().map(|v| v * v).sum::<f32>() / dim as f32 + 1e-6).sqrt()))
            .collect();
        let host = vec![
            rand_vec(&mut r, rows * dim, 1.0), // the residual gradient so far
            rand_vec(&mut r, dim, 1.0),        // dw so far (accumulates)
            rand_vec(&mut r, rows * dim, 1.0), // d out
            x,
            rand_vec(&mut r, dim, 1.0),
            rstd,
        ];
        let fused = run_norm_backward_add(b, &host, rows, dim, true);
        let ops = run_norm_backward_add(b, &host, rows, dim, false);
        let want = run_norm_backward_add(&Cpu, &host, rows, dim, false);
        for (i, name) in ["dacc", "dw"].iter().enumerate() {
            let tag = format!("rmsnorm_backward_add {name} {rows}x{dim}");
            assert_eq!(
                bits(&fused[i]),
                bits(&ops[i]),
                "{tag}: differs from rmsnorm_backward + add_assign"
            );
            assert_close(&tag, &fused[i], &want[i], TOL);
        }
        assert_ne!(bits(&fused[0]), bits(&host[0]), "{rows}x{dim}: dacc unchanged");
    }
}

/// dq, dk, dv after `qkv_backward_epilogue` (fused: the backend's; else the ops one after
/// another) on `b`.
fn run_qkv_backward<B: Backend>(
    b: &B,
    c: &QkvCase,
    host: &[Vec<f32>],
    pos: &[u32],
    inv: &[f32],
    fused: bool,
) -> Vec<Vec<f32>> {
    let (mut dq, mut dk, dv) = (b.upload(&host[0]), b.upload(&host[1]), b.upload(&host[2]));
    let x = QkvGrads {
        dq: &mut dq,
        dk: &mut dk,
        dv: &dv,
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv,
        head_dim: c.hd,
    };
    let rope = Rope1d { positions: pos, inv_freq: inv, factor: c.factor };
    if fused {
        b.qkv_backward_epilogue(x, &rope);
    } else {
        fused_ops::qkv_backward_epilogue_ops(b, x, &rope);
    }
    [&dq, &dk, &dv].iter().map(|x| b.download(x)).collect()
}

/// The same shapes as `qkv_epilogue` (one head, GQA, odd and tiny head dims that fall back to
/// the ops), plain and scaled RoPE: dq and dk as the inverse rotations and the factor make
/// them bit for bit, dv untouched; and the inverse turns the forward's rotation back (to the
/// CPU's rounding).
fn qkv_backward_epilogue<B: Backend>(b: &B) {
    let mut r = rng(47);
    for (rows, n_heads, n_kv, hd) in QKV_SHAPES {
        for factor in [1.0f32, 1.2247449] {
            let c = QkvCase { rows, n_heads, n_kv, hd, factor, cache: None };
            let (qd, kvd) = (n_heads * hd, n_kv * hd);
            let host: Vec<Vec<f32>> = [rows * qd, rows * kvd, rows * kvd]
                .iter()
                .map(|&n| rand_vec(&mut r, n, 2.0))
                .collect();
            let pos: Vec<u32> = (0..rows).map(|_| r.gen_range(0..5000)).collect();
            let inv: Vec<f32> = if factor == 1.0 {
                rope_inv_freq(hd, 10000.0)
            } else {
                (0..hd / 2).map(|_| r.gen_range(1e-4f32..1.0)).collect()
            };
            let tag = format!("{rows} rows, {n_heads}/{n_kv} heads, hd {hd}, factor {factor}");
            let fused = run_qkv_backward(b, &c, &host, &pos, &inv, true);
            let ops = run_qkv_backward(b, &c, &host, &pos, &inv, false);
            let want = run_qkv_backward(&Cpu, &c, &host, &pos, &inv, false);
            for (i, name) in ["dq", "dk", "dv"].iter().enumerate() {
                assert_eq!(bits(&fused[i]), bits(&ops[i]), "{tag}: {name} differs from the ops");
                assert_close(
                    &format!("qkv_backward_epilogue {name} {tag}"),
                    &fused[i],
                    &want[i],
                    TOL,
                );
            }
            assert_eq!(bits(&fused[2]), bits(&host[2]), "{tag}: dv changed");
            if hd >= 2 {
                assert_ne!(bits(&fused[0]), bits(&host[0]), "{tag}: dq unchanged");
                assert_ne!(bits(&fused[1]), bits(&host[1]), "{tag}: dk unchanged");
            }
        }
    }
}

backend_suite!(qkv_epilogue, add_rmsnorm, rmsnorm_backward_add, qkv_backward_epilogue);

/// The emulator as a bf16 run sets it up: weight and activation shadows kept, producers
/// writing their GEMM operands' bf16 copies.
#[cfg(feature = "emu")]
fn bf16_producers(
) -> mmr1_fast::backend::cuda::CudaBackend<mmr1_fast::backend::cuda::emu::EmuDevice> {
    use mmr1_fast::backend::cuda::emu::{EmuDevice, Schedule};
    use mmr1_fast::backend::precision::Precision;
    let dev = EmuDevice::with_schedules(&[Schedule::Forward])
        .with_bf16_shadows(true)
        .with_act_shadows(true);
    let b = mmr1_fast::backend::cuda::CudaBackend::with_device(dev);
    b.with_precision(Precision::Bf16).unwrap().with_producer_shadows(true)
}

/// On a device that keeps activation shadows (bf16 GEMMs), the fused norm writes the bf16 copy
/// the GEMMs after it read, as `rmsnorm` does: the same shadow bits, no conversion launch.
#[cfg(feature = "emu")]
#[test]
fn add_rmsnorm_writes_the_bf16_operand() {
    use mmr1_fast::backend::cuda::device::Device;
    let b = bf16_producers();
    let mut r = rng(43);
    let (rows, dim) = (6usize, 96usize);
    let (x, y, w) = (
        b.upload(&rand_vec(&mut r, rows * dim, 2.0)),
        b.upload(&rand_vec(&mut r, rows * dim, 2.0)),
        b.upload(&rand_vec(&mut r, dim, 1.0)),
    );
    let (mut s1, mut n1, mut r1) =
        (poisoned(&b, rows * dim), poisoned(&b, rows * dim), poisoned(&b, rows));
    b.add_rmsnorm(&mut s1, &mut n1, &mut r1, &x, &y, &w, rows, dim, 1e-6);
    let (mut s2, mut n2, mut r2) =
        (poisoned(&b, rows * dim), poisoned(&b, rows * dim), poisoned(&b, rows));
    fused_ops::add_rmsnorm_ops(&b, &mut s2, &mut n2, &mut r2, &x, &y, &w, rows, dim, 1e-6);
    let fused = b
        .device()
        .bf16_shadow_bits(n1.mem(), rows * dim)
        .expect("the fused norm wrote no bf16 copy");
    let ops =
        b.device().bf16_shadow_bits(n2.mem(), rows * dim).expect("rmsnorm wrote no bf16 copy");
    assert_eq!(fused, ops, "bf16 copies differ");
    let want: Vec<u16> =
        b.download(&n1).iter().map(|v| half::bf16::from_f32(*v).to_bits()).collect();
    assert_eq!(fused, want, "the copy is not the rounding of the output");
    assert!(
        b.device().bf16_shadow_bits(s1.mem(), 1).is_none(),
        "the sum has no copy (no GEMM reads it)"
    );
}

/// Likewise the fused norm backward writes the bf16 copy of the residual gradient it updates
/// (the o-projection's and the lower layer's down-projection's backward GEMMs read it), which
/// `add_assign` never did: the copy is the rounding of the new f32 values.
#[cfg(feature = "emu")]
#[test]
fn rmsnorm_backward_add_writes_the_bf16_operand() {
    use mmr1_fast::backend::cuda::device::Device;
    let b = bf16_producers();
    let mut r = rng(45);
    let (rows, dim) = (6usize, 96usize);
    let mut acc = b.upload(&rand_vec(&mut r, rows * dim, 1.0));
    let mut dw = b.upload(&rand_vec(&mut r, dim, 1.0));
    let (dout, x, w) = (
        b.upload(&rand_vec(&mut r, rows * dim, 1.0)),
        b.upload(&rand_vec(&mut r, rows * dim, 2.0)),
        b.upload(&rand_vec(&mut r, dim, 1.0)),
    );
    let rstd =
        b.upload(&rand_vec(&mut r, rows, 1.0).iter().map(|v| 0.5 + v.abs()).collect::<Vec<_>>());
    let mut scratch = poisoned(&b, rows * dim);
    b.rmsnorm_backward_add(&mut acc, &mut scratch, &mut dw, &dout, &x, &w, &rstd, rows, dim);
    let got = b
        .device()
        .bf16_shadow_bits(acc.mem(), rows * dim)
        .expect("no bf16 copy of the residual gradient");
    let want: Vec<u16> =
        b.download(&acc).iter().map(|v| half::bf16::from_f32(*v).to_bits()).collect();
    assert_eq!(got, want, "the copy is not the rounding of the updated gradient");
}

/// With producers writing GEMM operands, the backward epilogue leaves on dq, dk and dv the bf16
/// copies their GEMMs read (the rounding of each buffer's values after the op), and the bias
/// gradients' column reductions between keep them (`READ_ONLY_ARGS`): each projection's dX
/// GEMM then reads a copy instead of converting. Without the kernel (an odd head dim) no copy.
#[cfg(feature = "emu")]
#[test]
fn qkv_backward_epilogue_writes_the_bf16_operands() {
    use mmr1_fast::backend::cuda::device::Device;
    use mmr1_fast::backend::Tr;
    let b = bf16_producers();
    let mut r = rng(49);
    for (rows, n_heads, n_kv, hd) in [(9usize, 4usize, 2usize, 16usize), (5, 2, 1, 5)] {
        let (qd, kvd) = (n_heads * hd, n_kv * hd);
        let mut dq = b.upload(&rand_vec(&mut r, rows * qd, 2.0));
        let mut dk = b.upload(&rand_vec(&mut r, rows * kvd, 2.0));
        let dv = b.upload(&rand_vec(&mut r, rows * kvd, 2.0));
        let pos: Vec<u32> = (0..rows).map(|_| r.gen_range(0..5000)).collect();
        let inv = rope_inv_freq(hd, 10000.0);
        let x =
            QkvGrads { dq: &mut dq, dk: &mut dk, dv: &dv, n_heads, n_kv_heads: n_kv, head_dim: hd };
        b.qkv_backward_epilogue(x, &Rope1d { positions: &pos, inv_freq: &inv, factor: 1.0 });
        let (mut gq, mut gk) = (b.zeros(qd), b.zeros(kvd));
        b.bias_backward(&mut gq, &dq, rows, qd);
        b.bias_backward(&mut gk, &dk, rows, kvd);
        let before = b.memory_stats().unwrap().shadow_hits;
        for (buf, n) in [(&dq, qd), (&dk, kvd), (&dv, kvd)] {
            let copy = b.device().bf16_shadow_bits(buf.mem(), rows * n);
            if hd % 2 == 1 {
                assert!(copy.is_none(), "hd {hd}: the ops write no copy");
                continue;
            }
            let copy =
                copy.unwrap_or_else(|| panic!("hd {hd}: no bf16 copy after the bias gradient"));
            let want: Vec<u16> =
                b.download(buf).iter().map(|v| half::bf16::from_f32(*v).to_bits()).collect();
            assert_eq!(copy, want, "hd {hd}: the copy is not the rounding of the values");
            let (w, mut y) = (b.upload(&rand_vec(&mut r, 3 * n, 1.0)), b.zeros(rows * 3));
            b.matmul(&mut y, buf, Tr::N, &w, Tr::T, rows, 3, n, 0.0);
        }
        if hd % 2 == 0 {
            let hits = b.memory_stats().unwrap().shadow_hits - before;
            assert_eq!(hits, 3, "hd {hd}: the three GEMMs read the copies");
        }
    }
}

/// With producers writing GEMM operands, the forward epilogue without a cache (a training or
/// log-prob forward) leaves on q, k and v the bf16 copies the flash kernels read (the rounding
/// of each output); with a cache (attention reads the cache) and in f32 it leaves none.
#[cfg(feature = "emu")]
#[test]
fn qkv_epilogue_writes_the_flash_copies() {
    use mmr1_fast::backend::cuda::device::Device;
    let b = bf16_producers();
    let mut r = rng(51);
    let (rows, n_heads, n_kv, hd) = (7usize, 4usize, 2usize, 16usize);
    let (qd, kvd) = (n_heads * hd, n_kv * hd);
    for cached in [false, true] {
        let mut bufs: Vec<_> = [rows * qd, rows * kvd, rows * kvd]
            .iter()
            .map(|&n| b.upload(&rand_vec(&mut r, n, 2.0)))
            .collect();
        let bias: Vec<_> =
            [qd, kvd, kvd].iter().map(|&n| b.upload(&rand_vec(&mut r, n, 1.0))).collect();
        let (mut ck, mut cv) = (b.zeros(2 * rows * kvd), b.zeros(2 * rows * kvd));
        let pos: Vec<u32> = (0..rows as u32).map(|p| 3 * p + 1).collect();
        let cache_rows: Vec<usize> = (0..rows).map(|t| 2 * t).collect();
        let inv = rope_inv_freq(hd, 10000.0);
        let [q, k, v] = &mut bufs[..] else { unreachable!() };
        let x = Qkv {
            q,
            k,
            v,
            bq: &bias[0],
            bk: &bias[1],
            bv: &bias[2],
            n_heads,
            n_kv_heads: n_kv,
            head_dim: hd,
            stacked: None,
        };
        let dest = cached.then(|| CacheRows { k: &mut ck, v: &mut cv, rows: &cache_rows });
        b.qkv_epilogue(x, &Rope1d { positions: &pos, inv_freq: &inv, factor: 1.0 }, dest);
        for (buf, name) in bufs.iter().zip(["q", "k", "v"]) {
            let copy = b.device().bf16_shadow_bits(buf.mem(), b.len(buf));
            if cached {
                assert!(copy.is_none(), "{name}: a copy beside a cache write");
                continue;
            }
            let want: Vec<u16> =
                b.download(buf).iter().map(|v| half::bf16::from_f32(*v).to_bits()).collect();
            assert_eq!(
                copy.unwrap_or_else(|| panic!("{name}: no copy")),
                want,
                "{name}: not the rounding"
            );
        }
    }
}

/// `matmul_stacked` of a `stack_rows` stack against `matmul` with each part, and
/// `swiglu_stacked` against `swiglu` of the two halves: the same bits on the emulator (its
/// stacked product is each part's own), within the GEMM tolerance on a GPU (one wider
/// library GEMM), SwiGLU bit for bit on both. Ragged rows (1 to 69) and parts (q/k/v-like
/// with grouped heads, gate/up, odd sizes), outputs poisoned. A stack is made in bf16 GEMM
/// mode only, and not when switched off.
fn stacked_gemms<D: mmr1_fast::backend::cuda::device::Device>(
    make: impl Fn(bool) -> mmr1_fast::backend::cuda::CudaBackend<D>,
    exact: bool,
) {
    use mmr1_fast::backend::Tr;
    let b = make(true);
    let mut r = rng(77);
    for (m, parts, k) in [
        (1usize, vec![48usize, 16, 16], 48usize),
        (3, vec![67, 67], 48),
        (17, vec![5, 1, 9], 33),
        (69, vec![128, 64, 64], 128),
        (8, vec![40], 24),
    ] {
        let ws: Vec<_> = parts.iter().map(|&n| b.upload(&rand_vec(&mut r, n * k, 0.5))).collect();
        let x = b.upload(&rand_vec(&mut r, m * k, 1.0));
        let refs: Vec<_> = ws.iter().collect();
        let stack = b.stack_rows(&refs).expect("bf16 mode stacks");
        let n: usize = parts.iter().sum();
        let mut out = poisoned(&b, m * n);
        b.matmul_stacked(&mut out, &x, &stack, m, &parts, k);
        let got = b.download(&out);
        let mut at = 0;
        for (w, &nj) in ws.iter().zip(&parts) {
            let mut one = poisoned(&b, m * nj);
            b.matmul(&mut one, &x, Tr::N, w, Tr::T, m, nj, k, 0.0);
            let want = b.download(&one);
            let cols: Vec<f32> = got.chunks(n).flat_map(|row| row[at..at + nj].to_vec()).collect();
            let what = format!("{m} x {parts:?} x {k}: part at {at}");
            if exact {
                assert_eq!(bits(&cols), bits(&want), "{what}: stacked product");
            } else {
                assert_close(&what, &cols, &want, 1e-5);
            }
            at += nj;
        }
        if parts.len() == 2 && parts[0] == parts[1] {
            let i = parts[0];
            let mut act = poisoned(&b, m * i);
            b.swiglu_stacked(&mut act, &out, m, i);
            let (gate, up): (Vec<f32>, Vec<f32>) = (
                got.chunks(n).flat_map(|row| row[..i].to_vec()).collect(),
                got.chunks(n).flat_map(|row| row[i..].to_vec()).collect(),
            );
            let mut want = poisoned(&b, m * i);
            b.swiglu(&mut want, &b.upload(&gate), &b.upload(&up));
            assert_eq!(
                bits(&b.download(&act)),
                bits(&b.download(&want)),
                "{m} rows: swiglu_stacked"
            );
        }
    }
    let w = b.upload(&rand_vec(&mut r, 8, 1.0));
    assert!(make(false).stack_rows(&[&w]).is_none(), "stacking switched off");
}

#[cfg(feature = "emu")]
mod stacked_emu {
    use mmr1_fast::backend::cuda::{emu::Schedule, CudaBackend};
    use mmr1_fast::backend::precision::Precision;
    use mmr1_fast::backend::Backend;

    #[test]
    fn stacked_gemms() {
        let make = |on| {
            CudaBackend::emulator_with(&Schedule::CI)
                .with_precision(Precision::Bf16)
                .unwrap()
                .with_stacked_gemms(on)
        };
        super::stacked_gemms(make, true);
        let f32_mode = CudaBackend::emulator_with(&Schedule::CI).with_stacked_gemms(true);
        let w = f32_mode.upload(&[1.0, 2.0]);
        assert!(f32_mode.stack_rows(&[&w]).is_none(), "f32 GEMMs: no stacks");
    }
}

#[cfg(feature = "cuda")]
mod stacked_gpu {
    mod gpu {
        use mmr1_fast::backend::cuda::CudaBackend;
        use mmr1_fast::backend::precision::Precision;

        #[test]
        #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
        fn stacked_gemms() {
            let make = |on| {
                CudaBackend::new(0)
                    .expect("GPU test asked for, but there is no GPU")
                    .with_precision(Precision::Bf16)
                    .unwrap()
                    .with_stacked_gemms(on)
            };
            super::super::stacked_gemms(make, false);
        }
    }
}
