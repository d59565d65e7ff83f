//! Flash attention (bf16 tensor cores, `AttnKernel::Flash`) against the f32 CPU reference:
//! ragged packed sequences, GQA groups 1/2/4, head dims 16/32/64/128, decode-style spans
//! (queries the last positions of longer sequences), outputs poisoned with NaN first.
//!
//! Tolerance: relative L2 <= 1e-2 against f32 (Q, K, V, P, dO, dS are rounded to bf16 at the
//! tensor cores, 8 significant bits; accumulation is f32). Measured errors are printed as
//! `ERR` lines (about 2e-3 to 5e-3 at these shapes).
//!
//! Runs on the CUDA emulator with `--features emu` and on the GPU with `--features cuda`.
#![cfg(any(feature = "emu", feature = "cuda"))]

use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::backend::cuda::device::Device;
use mmr1_fast::backend::cuda::{
    AttnKernel, CudaBackend, DecodeKernel, FlashDkv, FlashDq, FlashFwd, FlashIo, FlashMask,
    KvCacheStorage,
};
use mmr1_fast::backend::{AttnShape, AttnSpan, Backend};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::kernel_check;
use kernel_check::{poisoned, rand_vec, rel_err};

const TOL: f64 = 1e-2;

struct Case {
    spans: Vec<AttnSpan>,
    shape: AttnShape,
    q_rows: usize,
    kv_rows: usize,
}

fn sh(h: usize, hkv: usize, d: usize) -> AttnShape {
    AttnShape { n_heads: h, n_kv_heads: hkv, head_dim: d }
}

/// Whole sequences packed one after another (each query sees its own sequence's keys).
fn packed(lens: &[usize], shape: AttnShape) -> Case {
    offset(&lens.iter().map(|&l| (l, 0)).collect::<Vec<_>>(), shape)
}

/// Spans whose queries are the last `q_len` of `q_len + offset` keys (a prefill after cached
/// tokens), packed one after another.
fn offset(spans: &[(usize, usize)], shape: AttnShape) -> Case {
    let (mut q_at, mut kv_at) = (0, 0);
    let spans = spans
        .iter()
        .map(|&(q_len, off)| {
            let s = AttnSpan { q_start: q_at, q_len, kv_start: kv_at, kv_len: q_len + off };
            (q_at, kv_at) = (q_at + q_len, kv_at + q_len + off);
            s
        })
        .collect();
    Case { spans, shape, q_rows: q_at, kv_rows: kv_at }
}

fn cases() -> Vec<Case> {
    vec![
        // GQA 2, head dim 64: a one-token sequence, a ragged one, one over a tile boundary.
        packed(&[1, 37, 70], sh(4, 2, 64)),
        // GQA 4, head dim 128, three query tiles in one sequence.
        packed(&[13, 130], sh(4, 1, 128)),
        packed(&[9, 20], sh(2, 1, 16)),
        packed(&[66], sh(2, 2, 32)),
        // Decode-style: queries are the last q_len positions; q row 2 is in no span.
        Case {
            spans: vec![
                AttnSpan { q_start: 0, q_len: 1, kv_start: 0, kv_len: 90 },
                AttnSpan { q_start: 3, q_len: 3, kv_start: 90, kv_len: 10 },
                AttnSpan { q_start: 1, q_len: 1, kv_start: 100, kv_len: 1 },
                AttnSpan { q_start: 6, q_len: 70, kv_start: 101, kv_len: 75 },
            ],
            shape: sh(4, 2, 64),
            q_rows: 76,
            kv_rows: 176,
        },
    ]
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

type Out = [Vec<f32>; 5];

fn run<B: Backend>(b: &B, c: &Case, x: &[Vec<f32>; 4]) -> Out {
    let AttnShape { n_heads: h, n_kv_heads: hkv, head_dim: d } = c.shape;
    let (q, k, v) = (b.upload(&x[0]), b.upload(&x[1]), b.upload(&x[2]));
    let (mut o, mut lse) = (poisoned(b, c.q_rows * h * d), poisoned(b, c.q_rows * h));
    b.attention(&mut o, &mut lse, &q, &k, &v, &c.spans, c.shape);
    let mut dq = poisoned(b, c.q_rows * h * d);
    let (mut dk, mut dv) = (poisoned(b, c.kv_rows * hkv * d), poisoned(b, c.kv_rows * hkv * d));
    let dout = b.upload(&x[3]);
    b.attention_backward(&mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &o, &lse, &c.spans, c.shape);
    [b.download(&o), b.download(&lse), b.download(&dq), b.download(&dk), b.download(&dv)]
}

fn inputs(r: &mut ChaCha8Rng, c: &Case) -> [Vec<f32>; 4] {
    let AttnShape { n_heads: h, n_kv_heads: hkv, head_dim: d } = c.shape;
    [
        // Large queries: peaked softmax rows whose maximum moves from tile to tile.
        rand_vec(r, c.q_rows * h * d, 3.0),
        rand_vec(r, c.kv_rows * hkv * d, 1.0),
        rand_vec(r, c.kv_rows * hkv * d, 1.0),
        rand_vec(r, c.q_rows * h * d, 1.0),
    ]
}

fn covered(c: &Case) -> (Vec<bool>, Vec<bool>) {
    let (mut q, mut kv) = (vec![false; c.q_rows], vec![false; c.kv_rows]);
    for s in &c.spans {
        q[s.q_start..s.q_start + s.q_len].iter_mut().for_each(|x| *x = true);
        kv[s.kv_start..s.kv_start + s.kv_len].iter_mut().for_each(|x| *x = true);
    }
    (q, kv)
}

fn rows_of(v: &[f32], mask: &[bool], width: usize) -> Vec<f32> {
    v.chunks(width).zip(mask).filter(|(_, m)| **m).flat_map(|(r, _)| r.iter().copied()).collect()
}

fn flash_vs_cpu<Dv: Device>(b: &CudaBackend<Dv>) {
    let mut r = ChaCha8Rng::seed_from_u64(30);
    for c in cases() {
        let AttnShape { n_heads: h, n_kv_heads: hkv, head_dim: d } = c.shape;
        let x = inputs(&mut r, &c);
        let want = run(&Cpu, &c, &x);
        let got = run(b, &c, &x);
        let (qm, kvm) = covered(&c);
        let tag = format!(
            "{:?} {:?}",
            c.shape,
            c.spans.iter().map(|s| (s.q_len, s.kv_len)).collect::<Vec<_>>()
        );
        let widths = [h * d, h, h * d, hkv * d, hkv * d];
        for (i, name) in ["out", "lse", "dq", "dk", "dv"].iter().enumerate() {
            let m = if i < 3 { &qm } else { &kvm };
            let err = rel_err(
                &format!("flash {name} {tag}"),
                &rows_of(&got[i], m, widths[i]),
                &rows_of(&want[i], m, widths[i]),
            );
            assert!(err <= TOL, "flash {name} {tag}: relative L2 error {err:.3e} > {TOL:.0e}");
        }
        for (i, m) in qm.iter().enumerate() {
            if !m {
                assert!(
                    got[0][i * h * d..(i + 1) * h * d].iter().all(|x| x.is_nan()),
                    "flash attention wrote an uncovered row"
                );
            }
        }
    }
}

/// Bit-reproducible from run to run, independent of the neighbours in the batch, and really
/// the flash kernels (their bf16 rounding differs from the f32 reference in the last bits).
fn flash_deterministic<Dv: Device>(b: &mut CudaBackend<Dv>) {
    let mut r = ChaCha8Rng::seed_from_u64(31);
    let shape = sh(4, 2, 64);
    let c = packed(&[5, 70, 7], shape);
    let x = inputs(&mut r, &c);
    let all = run(b, &c, &x);
    let again = run(b, &c, &x);
    for i in 0..5 {
        assert_eq!(bits(&all[i]), bits(&again[i]), "flash output {i} is not bit-reproducible");
    }
    let (w, wk) = (shape.n_heads * shape.head_dim, shape.n_kv_heads * shape.head_dim);
    let sub = |v: &[f32], width: usize| v[5 * width..75 * width].to_vec();
    let c1 = packed(&[70], shape);
    let x1 = [sub(&x[0], w), sub(&x[1], wk), sub(&x[2], wk), sub(&x[3], w)];
    let one = run(b, &c1, &x1);
    for (i, width) in [w, shape.n_heads, w, wk, wk].into_iter().enumerate() {
        assert_eq!(
            bits(&one[i]),
            bits(&sub(&all[i], width)),
            "flash output {i} depends on the batch"
        );
    }
    b.set_attention(AttnKernel::Reference);
    let exact = run(&*b, &c, &x);
    b.set_attention(AttnKernel::Flash);
    assert_ne!(bits(&exact[0]), bits(&all[0]), "the flash kernels did not run");
}

/// The kernels reading bf16 copies of Q, K, V, dO (`FlashIo::Bf16`, the default) compute the
/// same bits as those converting the f32 tiles themselves, at every case's head dim, group and
/// span layout; a prefill against a K/V buffer over twice the rows it reads keeps the f32
/// kernels (checked by the caller through the profile).
fn flash_io_same_bits<Dv: Device>(b: &mut CudaBackend<Dv>) {
    let mut r = ChaCha8Rng::seed_from_u64(34);
    let mut all = cases();
    // 3 + 40 query rows at the end of 50- and 60-row sequences in a 400-row cache.
    all.push(Case {
        spans: vec![
            AttnSpan { q_start: 0, q_len: 3, kv_start: 0, kv_len: 50 },
            AttnSpan { q_start: 3, q_len: 40, kv_start: 200, kv_len: 60 },
        ],
        shape: sh(4, 2, 64),
        q_rows: 43,
        kv_rows: 400,
    });
    // K/V buffers 1.5x the rows read (60 rows, spans over 20 + 20): still the bf16 copies.
    all.push(Case {
        spans: vec![
            AttnSpan { q_start: 0, q_len: 20, kv_start: 0, kv_len: 20 },
            AttnSpan { q_start: 20, q_len: 20, kv_start: 40, kv_len: 20 },
        ],
        shape: sh(2, 2, 16),
        q_rows: 40,
        kv_rows: 60,
    });
    for c in all {
        let x = inputs(&mut r, &c);
        b.set_flash_io(FlashIo::F32);
        let f32_io = run(&*b, &c, &x);
        b.set_flash_io(FlashIo::Bf16);
        let bf16_io = run(&*b, &c, &x);
        for (i, name) in ["out", "lse", "dq", "dk", "dv"].iter().enumerate() {
            assert_eq!(
                bits(&bf16_io[i]),
                bits(&f32_io[i]),
                "flash {name} {:?}: bf16 storage changed the bits",
                c.shape
            );
        }
    }
}

/// `got` (a variant's forward and backward outputs: out, lse, dq, dk, dv) against `want` (the
/// default's) on the rows the spans write, which must all be written: bit for bit when `exact`
/// (the emulator), else within 1e-6 (ptxas may contract two kernels' arithmetic differently;
/// whether the bits agree is printed). Rows in no span stay poisoned (NaN) under both.
fn assert_same_outputs(c: &Case, got: &Out, want: &Out, what: &str, exact: bool) {
    assert_close_outputs(c, got, want, what, if exact { None } else { Some(1e-6) });
}

/// `assert_same_outputs` with the GPU's tolerance given: `None` bit for bit, `Some(tol)` within
/// `tol` relative L2 (whether the bits agree is printed).
fn assert_close_outputs(c: &Case, got: &Out, want: &Out, what: &str, tol: Option<f64>) {
    let (qc, kvc) = covered(c);
    let AttnShape { n_heads: h, n_kv_heads: hkv, head_dim: d } = c.shape;
    let rows = [(&qc, h * d), (&qc, h), (&qc, h * d), (&kvc, hkv * d), (&kvc, hkv * d)];
    for (i, name) in ["out", "lse", "dq", "dk", "dv"].iter().enumerate() {
        let what = format!("flash {name} {what}");
        let (mask, width) = rows[i];
        let written = rows_of(&got[i], mask, width);
        assert!(written.iter().all(|x| x.is_finite()), "{what}: unwritten values");
        match tol {
            None => assert_eq!(bits(&got[i]), bits(&want[i]), "{what} changed the bits"),
            Some(tol) => {
                let err = rel_err(&what, &written, &rows_of(&want[i], mask, width));
                eprintln!("{what}: bit-identical {}", bits(&got[i]) == bits(&want[i]));
                assert!(err <= tol, "{what}: relative error {err:.2e}");
            }
        }
    }
}

/// Masking only the key tiles that cross a warp's diagonal (`FlashMask::Diagonal`, the default)
/// gives the bits of masking every tile (`Every`), forward (narrow and wide), dQ and dK/dV, in
/// both storages. The long sequences are what make the skip run: 300 and 200 rows give query
/// tiles whose warps see whole 64-key tiles before their first row, and the dK/dV kernel's
/// whole 64-query tiles after a warp's last key (its test is its own); the short ones cover
/// tiles where the two agree by masking. Queries 62 and 14 keys into their span put a warp's
/// first row one key before the end of a key tile (forward, dQ) and a warp's last key one past
/// a query tile's first query (dK/dV), where a predicate off by one key lets a row see a
/// future key: the bits move (planted by hand in each kernel: docs/testing.md). Packed
/// sequences alone never meet that edge (their warps start at multiples of 16).
/// `exact`: bit for bit (the emulator); on a GPU within 1e-6 (ptxas may contract the two
/// branches' arithmetic differently), and whether the bits agree is printed.
fn flash_mask_same_bits<Dv: Device>(b: &mut CudaBackend<Dv>, exact: bool) {
    let mut r = ChaCha8Rng::seed_from_u64(36);
    let mut all = cases();
    all.push(packed(&[300, 45], sh(4, 2, 64)));
    all.push(packed(&[200], sh(2, 1, 128)));
    all.push(packed(&[3, 257], sh(2, 2, 16)));
    all.push(offset(&[(150, 62), (90, 14), (70, 63)], sh(4, 2, 64)));
    all.push(offset(&[(140, 62), (20, 30)], sh(2, 1, 128)));
    for c in all {
        let x = inputs(&mut r, &c);
        let tag =
            format!("{:?} {:?}", c.shape, c.spans.iter().map(|s| s.q_len).collect::<Vec<_>>());
        for (io, fwd) in [
            (FlashIo::Bf16, FlashFwd::Narrow),
            (FlashIo::F32, FlashFwd::Narrow),
            (FlashIo::Bf16, FlashFwd::Wide),
            (FlashIo::Bf16, FlashFwd::Pipe),
        ] {
            b.set_flash_io(io);
            b.set_flash_fwd(fwd);
            b.set_flash_mask(FlashMask::Every);
            let every = run(&*b, &c, &x);
            b.set_flash_mask(FlashMask::Diagonal);
            let diag = run(&*b, &c, &x);
            let what = format!("{tag} {io:?} {fwd:?}: diagonal-only mask");
            assert_same_outputs(&c, &diag, &every, &what, exact);
        }
    }
    b.set_flash_io(FlashIo::default());
    b.set_flash_fwd(FlashFwd::default());
    b.set_flash_mask(FlashMask::default());
}

/// The wide forward (4 warps of 32 rows, Q in shared memory) and the pipelined one (the next
/// key tile's S = Q K^T ahead of the softmax, three K/V buffers) give the narrow one's bits:
/// head dims 64 and 128, GQA groups 1, 2 and 7, ragged sequences whose last query tile leaves
/// a warp's second row tile partly or wholly empty (37, 70, 130, 145 rows), a one-row
/// sequence (one key tile: the pipeline's "next" S comes from the same tile), and 300 rows
/// (three query tiles, five key tiles: buffers reused round the three). `exact`: bit for bit
/// (the emulator); on a GPU within 1e-6 (the kernels' softmax is the same source, but ptxas
/// may contract it into FMAs differently), and whether the bits agree is printed.
fn flash_fwd_wide_same_bits<Dv: Device>(b: &mut CudaBackend<Dv>, exact: bool) {
    let mut r = ChaCha8Rng::seed_from_u64(35);
    let cases = [
        packed(&[1, 37, 70], sh(4, 2, 64)),
        packed(&[13, 130], sh(4, 1, 128)),
        packed(&[145, 2], sh(14, 2, 64)),
        packed(&[300], sh(2, 2, 128)),
    ];
    for c in cases {
        let x = inputs(&mut r, &c);
        let AttnShape { n_heads: h, head_dim: d, .. } = c.shape;
        let (q, k, v) = (b.upload(&x[0]), b.upload(&x[1]), b.upload(&x[2]));
        let mut fwd = |which: FlashFwd| {
            b.set_flash_fwd(which);
            let (mut o, mut lse) = (poisoned(&*b, c.q_rows * h * d), poisoned(&*b, c.q_rows * h));
            b.attention(&mut o, &mut lse, &q, &k, &v, &c.spans, c.shape);
            (b.download(&o), b.download(&lse))
        };
        let narrow = fwd(FlashFwd::Narrow);
        for which in [FlashFwd::Wide, FlashFwd::Pipe] {
            let got = fwd(which);
            let tag = format!("{which:?} {:?}", c.shape);
            assert!(got.0.iter().all(|x| x.is_finite()), "{tag} forward: unwritten rows");
            if exact {
                assert_eq!(bits(&got.0), bits(&narrow.0), "{tag} forward out");
                assert_eq!(bits(&got.1), bits(&narrow.1), "{tag} forward lse");
            } else {
                let same = bits(&got.0) == bits(&narrow.0) && bits(&got.1) == bits(&narrow.1);
                eprintln!("{tag} vs narrow forward: bit-identical {same}");
                assert!(rel_err(&format!("{tag} out"), &got.0, &narrow.0) <= 1e-6, "{tag}");
                assert!(rel_err(&format!("{tag} lse"), &got.1, &narrow.1) <= 1e-6, "{tag}");
            }
        }
        b.set_flash_fwd(FlashFwd::default());
    }
}

/// The wgmma forward (kernels/flash_wgmma.cu) gives the narrow one's results: the cases
/// of `flash_fwd_wide_same_bits` (a warpgroup's 64 rows partly or wholly past a tile's rows, a
/// one-row sequence, three query tiles of 300 rows) plus spans whose queries start 14 and 62
/// keys in (a warp's rows see the first tile partly; a warpgroup walks tiles some of its
/// warps see nothing of). `exact`: bit for bit (the emulator: the same products summed in the
/// same order); on an sm_90 GPU within 1e-5 relative L2 (wgmma may round its internal sums
/// otherwise than mma.sync; a layout slip is O(1)), and whether the bits agree is printed.
fn flash_fwd_wgmma_same_bits<Dv: Device>(b: &mut CudaBackend<Dv>, exact: bool) {
    let mut r = ChaCha8Rng::seed_from_u64(36);
    let cases = [
        packed(&[1, 37, 70], sh(4, 2, 64)),
        packed(&[13, 130], sh(4, 1, 128)),
        packed(&[145, 2], sh(14, 2, 64)),
        packed(&[300], sh(2, 2, 128)),
        offset(&[(14, 90), (62, 140)], sh(4, 2, 128)),
        // The last row of a warpgroup sees exactly one key of a tile (rows 64 and 128).
        packed(&[65, 129], sh(2, 1, 64)),
    ];
    for c in cases {
        let x = inputs(&mut r, &c);
        let AttnShape { n_heads: h, head_dim: d, .. } = c.shape;
        let (q, k, v) = (b.upload(&x[0]), b.upload(&x[1]), b.upload(&x[2]));
        let mut fwd = |which: FlashFwd| {
            b.set_flash_fwd(which);
            let (mut o, mut lse) = (poisoned(&*b, c.q_rows * h * d), poisoned(&*b, c.q_rows * h));
            b.attention(&mut o, &mut lse, &q, &k, &v, &c.spans, c.shape);
            (b.download(&o), b.download(&lse))
        };
        let narrow = fwd(FlashFwd::Narrow);
        let got = fwd(FlashFwd::Wgmma);
        b.set_flash_fwd(FlashFwd::default());
        let (rows, _) = covered(&c);
        let tag = format!("wgmma {:?}", c.shape);
        let out = |v: &[f32]| rows_of(v, &rows, h * d);
        let lse = |v: &[f32]| rows_of(v, &rows, h);
        assert!(out(&got.0).iter().all(|x| x.is_finite()), "{tag} forward: unwritten rows");
        if exact {
            assert_eq!(bits(&got.0), bits(&narrow.0), "{tag} forward out");
            assert_eq!(bits(&got.1), bits(&narrow.1), "{tag} forward lse");
        } else {
            let same = bits(&got.0) == bits(&narrow.0) && bits(&got.1) == bits(&narrow.1);
            eprintln!("{tag} vs narrow forward: bit-identical {same}");
            assert!(rel_err(&format!("{tag} out"), &out(&got.0), &out(&narrow.0)) <= 1e-5, "{tag}");
            assert!(rel_err(&format!("{tag} lse"), &lse(&got.1), &lse(&narrow.1)) <= 1e-5, "{tag}");
        }
    }
}

/// The wgmma dQ kernel (kernels/flash_wgmma.cu; bf16 storage, head dims 64 and 128) gives the
/// plain one's results in every output of the backward, under both masks: the cases of
/// `flash_dq_pipe_same_bits` at both head dims, and warpgroups whose last row sees one key of
/// a tile. `exact`: bit for bit (the emulator); on an sm_90 GPU within 1e-5.
fn flash_dq_wgmma_same_bits<Dv: Device>(b: &mut CudaBackend<Dv>, exact: bool) {
    let cases = [
        packed(&[1, 37, 70], sh(4, 2, 64)),
        packed(&[200], sh(2, 1, 128)), // 4 key tiles: the 3 buffers reused
        packed(&[130], sh(7, 1, 64)),
        offset(&[(150, 62), (90, 14), (70, 63)], sh(2, 1, 128)),
        packed(&[65, 129], sh(2, 2, 64)),
    ];
    // Both masks reach the same fa_dq_dscores: every-tile masking on the first two cases only
    // (CI's time).
    let rounds = [(FlashMask::Diagonal, None)];
    let set = |b: &mut CudaBackend<Dv>, on: bool| {
        b.set_flash_dq(if on { FlashDq::Wgmma } else { FlashDq::Plain })
    };
    backward_variant_same_bits(
        b,
        40,
        &cases[..2],
        &[(FlashMask::Every, None)],
        "wgmma dQ",
        exact,
        set,
    );
    backward_variant_same_bits(b, 38, &cases, &rounds, "wgmma dQ", exact, set);
}

/// The backward with a variant (`set(b, true)`) against the default kernels (`set(b, false)`)
/// on `cases`, each under `rounds` of (mask, dK/dV split threshold): every output within 1e-5
/// (`exact`: bit for bit).
fn backward_variant_same_bits<Dv: Device>(
    b: &mut CudaBackend<Dv>,
    seed: u64,
    cases: &[Case],
    rounds: &[(FlashMask, Option<usize>)],
    what: &str,
    exact: bool,
    set: impl Fn(&mut CudaBackend<Dv>, bool),
) {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    for c in cases {
        let x = inputs(&mut r, c);
        for &(mask, split_below) in rounds {
            b.set_flash_mask(mask);
            b.set_flash_dkv_split_below(split_below);
            set(b, false);
            let plain = run(&*b, c, &x);
            set(b, true);
            let got = run(&*b, c, &x);
            set(b, false);
            let tag = format!("{:?} {mask:?} split below {split_below:?}: {what}", c.shape);
            assert_close_outputs(c, &got, &plain, &tag, (!exact).then_some(1e-5));
        }
    }
    b.set_flash_mask(FlashMask::default());
    b.set_flash_dkv_split_below(None);
}

/// The wgmma dK/dV kernel (kernels/flash_wgmma.cu; bf16 storage, head dims 64 and 128) gives
/// the plain one's results in every output of the backward, under both masks: GQA groups 1, 2
/// and 7 (7: the group split over blocks, partials summed), key tiles of under 64 rows (the
/// second warpgroup idle) and between 64 and 128, query tiles of under 64 rows, offset spans
/// whose first query tiles the second warpgroup's keys do not see (it walks them with P = 0),
/// and a block walking every head of its group. `exact`: bit for bit (the emulator); on an sm_90 GPU within 1e-5.
fn flash_dkv_wgmma_same_bits<Dv: Device>(b: &mut CudaBackend<Dv>, exact: bool) {
    let cases = [
        packed(&[1, 37, 70], sh(4, 2, 64)),
        packed(&[200], sh(2, 1, 128)), // up to 4 query tiles a block: buffers reused
        packed(&[130], sh(7, 1, 64)),
        offset(&[(150, 62), (90, 14), (70, 63)], sh(2, 1, 128)),
        packed(&[65, 129, 200], sh(4, 4, 64)),
    ];
    // The group split over blocks (the default at these sizes), and walked by one block (what
    // long sequences do: a block then walks head after head, and a warpgroup skips a head's
    // first query tiles that none of its keys sees), each under one mask (both masks go
    // through the same fa_dkv_scores; two rounds, not four, for CI's time).
    let rounds = [(FlashMask::Diagonal, None), (FlashMask::Every, Some(0))];
    let set = |b: &mut CudaBackend<Dv>, on: bool| {
        b.set_flash_dkv(if on { FlashDkv::Wgmma } else { FlashDkv::Plain })
    };
    backward_variant_same_bits(b, 39, &cases, &rounds, "wgmma dK/dV", exact, set);
}

/// The pipelined dQ kernel (the next key tile's S and dP ahead of this tile's dS; head dim 64,
/// bf16 storage) gives the plain one's bits, in every output of the backward, under both masks:
/// GQA groups 2 and 7, ragged and offset spans (a warp's first row one key before a tile's
/// end), a one-row sequence (one key tile), 300 rows (five key tiles round three buffers); a
/// head dim 128 case runs the plain kernel either way. `exact` as in the tests above.
fn flash_dq_pipe_same_bits<Dv: Device>(b: &mut CudaBackend<Dv>, exact: bool) {
    let mut r = ChaCha8Rng::seed_from_u64(37);
    let all = [
        packed(&[1, 37, 70], sh(4, 2, 64)),
        packed(&[300], sh(2, 1, 64)),
        packed(&[130], sh(7, 1, 64)),
        offset(&[(150, 62), (90, 14), (70, 63)], sh(2, 1, 64)),
        packed(&[100], sh(2, 1, 128)),
    ];
    for c in all {
        let x = inputs(&mut r, &c);
        for mask in [FlashMask::Diagonal, FlashMask::Every] {
            b.set_flash_mask(mask);
            b.set_flash_dq(FlashDq::Plain);
            let plain = run(&*b, &c, &x);
            b.set_flash_dq(FlashDq::Pipe);
            let pipe = run(&*b, &c, &x);
            b.set_flash_dq(FlashDq::default());
            assert_same_outputs(
                &c,
                &pipe,
                &plain,
                &format!("{:?} {mask:?}: pipelined dQ", c.shape),
                exact,
            );
        }
    }
    b.set_flash_mask(FlashMask::default());
}

/// Decode steps (one query per sequence, the last position) go to the decode kernels: the
/// split and staged ones compute in f32 and are held to the f32 tolerance (`tol` 1e-5), the
/// mma one rounds Q and P to bf16 for the tensor cores and is held to the flash kernels'
/// (`TOL`; ~2e-3 on the emulator). GQA groups of 7 and 4, chunks of each size split and
/// merged (32 keys: 128, 129, 200; 64: 300; 128: 700; the mma kernel's 64-key tiles: partial
/// ones at 5, 129, 200, 300), a one-key sequence, and a query row in no span.
fn decode_vs_cpu<Dv: Device>(b: &CudaBackend<Dv>, tol: f64) {
    let mut r = ChaCha8Rng::seed_from_u64(32);
    for (lens, shape) in
        [(vec![1usize, 5, 128, 129, 300, 700], sh(14, 2, 64)), (vec![200, 3], sh(8, 2, 128))]
    {
        let AttnShape { n_heads: h, n_kv_heads: hkv, head_dim: d } = shape;
        let (mut spans, mut at) = (Vec::new(), 0);
        for (i, &l) in lens.iter().enumerate() {
            // q row i + 1: row 0 is in no span
            spans.push(AttnSpan { q_start: i + 1, q_len: 1, kv_start: at, kv_len: l });
            at += l;
        }
        let (q_rows, kv_rows) = (lens.len() + 1, at);
        let q = rand_vec(&mut r, q_rows * h * d, 3.0);
        let (k, v) =
            (rand_vec(&mut r, kv_rows * hkv * d, 1.0), rand_vec(&mut r, kv_rows * hkv * d, 1.0));
        let fwd = |be: &dyn Fn(&mut Vec<f32>, &mut Vec<f32>)| {
            let (mut o, mut l) = (vec![f32::NAN; q_rows * h * d], vec![f32::NAN; q_rows * h]);
            be(&mut o, &mut l);
            (o, l)
        };
        let want = fwd(&|o, l| Cpu.attention(o, l, &q, &k, &v, &spans, shape));
        let got = fwd(&|o, l| {
            let (qg, kg, vg) = (b.upload(&q), b.upload(&k), b.upload(&v));
            let (mut og, mut lg) = (b.upload(o), b.upload(l));
            b.attention(&mut og, &mut lg, &qg, &kg, &vg, &spans, shape);
            *o = b.download(&og);
            *l = b.download(&lg);
        });
        assert!(got.0[..h * d].iter().all(|x| x.is_nan()), "decode wrote the uncovered row");
        let tag = format!("{shape:?} {lens:?}");
        let e = rel_err(&format!("decode out {tag}"), &got.0[h * d..], &want.0[h * d..]);
        assert!(e <= tol, "decode out {tag}: relative L2 error {e:.3e}");
        let e = rel_err(&format!("decode lse {tag}"), &got.1[h..], &want.1[h..]);
        assert!(e <= tol, "decode lse {tag}: relative L2 error {e:.3e}");
    }
}

/// The staged decode kernel (cp.async tiles, head dims 64 and 128) against the split one on
/// the same inputs: the same work items and arithmetic, so the same bits where the compiler
/// contracts both alike (`exact`: the emulator, built with -ffp-contract=off); on a GPU within
/// 1e-6 (each is also held to the CPU reference by `decode_vs_cpu`). Keys at and around the
/// 32-key tile and chunk edges (chunks of 32, 64 and 128 keys), GQA groups 1, 4, 6, 7 and 8,
/// inputs of both signs.
fn decode_staged_vs_split<Dv: Device>(b: &mut CudaBackend<Dv>, exact: bool) {
    let mut r = ChaCha8Rng::seed_from_u64(33);
    let lens = vec![1usize, 2, 31, 32, 33, 63, 64, 65, 127, 128, 129, 161, 300, 577];
    for shape in [sh(14, 2, 64), sh(12, 2, 128), sh(4, 4, 64), sh(8, 2, 128), sh(8, 1, 64)] {
        let AttnShape { n_heads: h, n_kv_heads: hkv, head_dim: d } = shape;
        let (mut spans, mut at) = (Vec::new(), 0);
        for (i, &l) in lens.iter().enumerate() {
            spans.push(AttnSpan { q_start: i, q_len: 1, kv_start: at, kv_len: l });
            at += l;
        }
        let q = rand_vec(&mut r, lens.len() * h * d, 3.0);
        let (k, v) = (rand_vec(&mut r, at * hkv * d, 1.0), rand_vec(&mut r, at * hkv * d, 1.0));
        let (qg, kg, vg) = (b.upload(&q), b.upload(&k), b.upload(&v));
        let mut run = |kernel: DecodeKernel| {
            b.set_decode_kernel(kernel);
            let (mut o, mut l) = (poisoned(&*b, lens.len() * h * d), poisoned(&*b, lens.len() * h));
            b.attention(&mut o, &mut l, &qg, &kg, &vg, &spans, shape);
            (b.download(&o), b.download(&l))
        };
        let (split, staged) = (run(DecodeKernel::Split), run(DecodeKernel::Staged));
        b.set_decode_kernel(DecodeKernel::default());
        let tag = format!("{shape:?}");
        assert!(staged.0.iter().chain(&staged.1).all(|x| x.is_finite()), "staged {tag}: unwritten");
        if exact {
            assert_eq!(bits(&staged.0), bits(&split.0), "staged vs split out {tag}");
            assert_eq!(bits(&staged.1), bits(&split.1), "staged vs split lse {tag}");
        } else {
            let same = bits(&staged.0) == bits(&split.0);
            eprintln!("decode staged vs split {tag}: bit-identical {same}");
            assert!(rel_err(&format!("staged out {tag}"), &staged.0, &split.0) <= 1e-6, "{tag}");
            assert!(rel_err(&format!("staged lse {tag}"), &staged.1, &split.1) <= 1e-6, "{tag}");
        }
    }
}

fn round_bf16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| half::bf16::from_f32(*x).to_f32()).collect()
}

/// KV caches in bf16 storage (`Backend::kv_cache_buf` under flash attention), as written: the
/// q/k/v epilogue (fused, and op by op through `scatter_rows`) leaves in a bf16 cache the
/// roundings of what it leaves in an f32 cache, rows it does not write stay zero, and q, k, v
/// come out the same. The flash head dims get bf16 caches, others (the reference attention
/// serves them) f32 ones; `KvCacheStorage::F32` keeps f32.
fn kv_cache_bf16_writes<Dv: Device>(b: &mut CudaBackend<Dv>) {
    use mmr1_fast::backend::cpu::rope_inv_freq;
    use mmr1_fast::backend::fused_ops::{self, CacheRows, Qkv, Rope1d};
    let mut r = ChaCha8Rng::seed_from_u64(34);
    for (rows, shape) in
        [(5, sh(14, 2, 64)), (3, sh(4, 1, 128)), (7, sh(4, 2, 16)), (4, sh(2, 1, 20))]
    {
        let AttnShape { n_heads: h, n_kv_heads: hkv, head_dim: d } = shape;
        let bf16 = d != 20;
        assert_eq!(b.kv_cache_value_bytes(shape), if bf16 { 2 } else { 4 }, "{shape:?}");
        b.set_kv_cache_storage(KvCacheStorage::F32);
        assert_eq!(b.kv_cache_value_bytes(shape), 4, "{shape:?}: f32 asked for");
        b.set_kv_cache_storage(KvCacheStorage::Bf16);
        let cap = 3 * rows + 1;
        let cache_rows: Vec<usize> = (0..rows).map(|t| (7 * t + 2) % cap).collect();
        let host: Vec<Vec<f32>> =
            [rows * h * d, rows * hkv * d, rows * hkv * d, h * d, hkv * d, hkv * d]
                .iter()
                .map(|&n| rand_vec(&mut r, n, 2.0))
                .collect();
        let pos: Vec<u32> = (0..rows as u32).map(|p| 11 * p + 3).collect();
        let inv = rope_inv_freq(d, 10000.0);
        for fused in [true, false] {
            let run = |c16: bool| {
                let mut x: Vec<_> = host.iter().map(|v| b.upload(v)).collect();
                let (mut ck, mut cv) = if c16 {
                    (b.kv_cache_buf(cap * hkv * d, shape), b.kv_cache_buf(cap * hkv * d, shape))
                } else {
                    (b.zeros(cap * hkv * d), b.zeros(cap * hkv * d))
                };
                let [q, k, v, bq, bk, bv] = &mut x[..] else { unreachable!() };
                let qkv = Qkv {
                    q,
                    k,
                    v,
                    bq,
                    bk,
                    bv,
                    n_heads: h,
                    n_kv_heads: hkv,
                    head_dim: d,
                    stacked: None,
                };
                let rope = Rope1d { positions: &pos, inv_freq: &inv, factor: 1.0 };
                let dest = Some(CacheRows { k: &mut ck, v: &mut cv, rows: &cache_rows });
                if fused {
                    b.qkv_epilogue(qkv, &rope, dest);
                } else {
                    fused_ops::qkv_epilogue_ops(&*b, qkv, &rope, dest);
                }
                [&x[0], &x[1], &x[2], &ck, &cv].map(|t| b.download(t))
            };
            let (f32c, bf16c) = (run(false), run(true));
            let tag = format!("{shape:?} fused {fused}");
            for i in 0..3 {
                assert_eq!(bits(&bf16c[i]), bits(&f32c[i]), "{tag}: q/k/v {i}");
            }
            for i in 3..5 {
                let want = if bf16 { round_bf16(&f32c[i]) } else { f32c[i].clone() };
                assert_eq!(bits(&bf16c[i]), bits(&want), "{tag}: cache {i}");
                let zero_rows = (0..cap).filter(|c| !cache_rows.contains(c)).count();
                let zeros = bf16c[i].iter().filter(|x| x.to_bits() == 0).count();
                assert!(zeros >= zero_rows * hkv * d, "{tag}: unwritten rows not zero");
                if bf16 {
                    assert_ne!(bits(&bf16c[i]), bits(&f32c[i]), "{tag}: cache {i} not rounded");
                }
            }
        }
    }
}

/// KV caches in bf16 storage, as read: decode steps (every decode kernel, head dims 16 to 128,
/// GQA groups 1 to 7, keys across tile and chunk edges) and a step mixing prefills with decodes
/// against a cache give over a bf16 cache the bits they give over an f32 cache holding the
/// same rounded values (on the emulator; within 1e-6 on a GPU, whose compiler may contract the
/// two instantiations differently), and the cache downloads as those values.
fn kv_cache_bf16_reads<Dv: Device>(b: &mut CudaBackend<Dv>, exact: bool) {
    let mut r = ChaCha8Rng::seed_from_u64(35);
    let lens = [1usize, 31, 32, 33, 129, 161];
    let decodes = || -> Vec<(usize, usize)> { lens.iter().map(|&l| (1, l - 1)).collect() };
    let mixed = vec![(1usize, 89usize), (3, 7), (1, 0), (70, 5), (1, 40)];
    let cases = [
        (decodes(), sh(14, 2, 64)),
        (decodes(), sh(12, 2, 128)),
        (decodes(), sh(4, 4, 16)),
        (decodes(), sh(8, 1, 32)),
        (mixed.clone(), sh(4, 2, 64)),
        (mixed, sh(6, 2, 128)),
    ];
    for (spans, shape) in cases {
        let c = offset(&spans, shape);
        let AttnShape { n_heads: h, n_kv_heads: hkv, head_dim: d } = shape;
        let q = rand_vec(&mut r, c.q_rows * h * d, 3.0);
        let (k, v) = (
            rand_vec(&mut r, c.kv_rows * hkv * d, 1.0),
            rand_vec(&mut r, c.kv_rows * hkv * d, 1.0),
        );
        let rows: Vec<usize> = (0..c.kv_rows).collect();
        let qg = b.upload(&q);
        for kernel in [DecodeKernel::Split, DecodeKernel::Staged, DecodeKernel::Mma] {
            b.set_decode_kernel(kernel);
            let run = |kg: &_, vg: &_| {
                let (mut o, mut l) = (poisoned(&*b, c.q_rows * h * d), poisoned(&*b, c.q_rows * h));
                b.attention(&mut o, &mut l, &qg, kg, vg, &c.spans, shape);
                (b.download(&o), b.download(&l))
            };
            let (k32, v32) = (b.upload(&round_bf16(&k)), b.upload(&round_bf16(&v)));
            let want = run(&k32, &v32);
            let (mut k16, mut v16) =
                (b.kv_cache_buf(k.len(), shape), b.kv_cache_buf(v.len(), shape));
            b.scatter_rows(&mut k16, &rows, &b.upload(&k), hkv * d);
            b.scatter_rows(&mut v16, &rows, &b.upload(&v), hkv * d);
            assert_eq!(bits(&b.download(&k16)), bits(&round_bf16(&k)), "{shape:?}: K cache");
            let got = run(&k16, &v16);
            let tag = format!("{shape:?} {kernel:?} {spans:?}");
            assert!(got.0.iter().chain(&got.1).all(|x| x.is_finite()), "{tag}: unwritten");
            if exact {
                assert_eq!(bits(&got.0), bits(&want.0), "{tag}: out");
                assert_eq!(bits(&got.1), bits(&want.1), "{tag}: lse");
            } else {
                let same = bits(&got.0) == bits(&want.0);
                eprintln!("kv cache bf16 vs f32 of the roundings {tag}: bit-identical {same}");
                assert!(
                    rel_err(&format!("bf16 cache out {tag}"), &got.0, &want.0) <= 1e-6,
                    "{tag}"
                );
                assert!(
                    rel_err(&format!("bf16 cache lse {tag}"), &got.1, &want.1) <= 1e-6,
                    "{tag}"
                );
            }
        }
        b.set_decode_kernel(DecodeKernel::default());
    }
}

#[cfg(feature = "emu")]
mod emu {
    use mmr1_fast::backend::cuda::{AttnKernel, CudaBackend, DecodeKernel};
    #[test]
    fn flash_vs_cpu() {
        super::flash_vs_cpu(&CudaBackend::emulator().with_attention(AttnKernel::Flash));
    }
    #[test]
    fn flash_deterministic() {
        super::flash_deterministic(&mut CudaBackend::emulator().with_attention(AttnKernel::Flash));
    }
    #[test]
    fn flash_io_same_bits() {
        use mmr1_fast::backend::cuda::emu::{EmuDevice, Schedule};
        use mmr1_fast::backend::Backend;
        let dev = EmuDevice::with_schedules(&Schedule::CI).with_profile();
        let mut b = CudaBackend::with_device(dev).with_attention(AttnKernel::Flash);
        super::flash_io_same_bits(&mut b);
        let ran = b.kernel_profile();
        let calls = |name: &str| ran.iter().find(|k| k.name == name).map_or(0, |k| k.calls);
        for d in [16, 32, 64, 128] {
            for kind in ["fwd", "bwd_dq", "bwd_dkv"] {
                for io in ["", "_bf16"] {
                    let name = format!("flash_{kind}{io}_d{d}");
                    assert!(calls(&name) > 0, "{name} never ran");
                }
            }
        }
        // d64 forwards: the packed case in each storage; the decode-style case's prefills (85
        // of its 176 kv rows; its one-query spans go to the decode kernel) and the prefill in
        // a large cache read f32 under both settings.
        assert_eq!((calls("flash_fwd_d64"), calls("flash_fwd_bf16_d64")), (5, 1));
        // d16: the packed case and the 1.5x buffer, in each storage.
        assert_eq!((calls("flash_fwd_d16"), calls("flash_fwd_bf16_d16")), (2, 2));
        // dK/dV partials are summed for the 5 grouped cases (x 2 storages), not for the 2 with
        // one head a kv head, where the kernel writes dK and dV itself.
        assert_eq!(calls("flash_dkv_sum"), 10);
    }
    #[test]
    fn flash_fwd_wide_same_bits() {
        use mmr1_fast::backend::cuda::emu::{EmuDevice, Schedule};
        use mmr1_fast::backend::Backend;
        let dev = EmuDevice::with_schedules(&Schedule::CI).with_profile();
        let mut b = CudaBackend::with_device(dev).with_attention(AttnKernel::Flash);
        let calls = |b: &CudaBackend<EmuDevice>, name: &str| {
            b.kernel_profile().iter().find(|k| k.name == name).map_or(0, |k| k.calls)
        };
        // The narrow forward is the default: the wide and pipelined ones run only when asked.
        super::flash_vs_cpu(&b);
        let others = [
            "flash_fwd_wide_bf16_d64",
            "flash_fwd_wide_bf16_d128",
            "flash_fwd_pipe_bf16_d64",
            "flash_fwd_pipe_bf16_d128",
        ];
        assert_eq!(others.map(|n| calls(&b, n)), [0; 4], "the default ran another forward");
        super::flash_fwd_wide_same_bits(&mut b, true);
        for name in others.into_iter().chain(["flash_fwd_bf16_d128"]) {
            assert!(calls(&b, name) > 0, "{name} never ran");
        }
    }
    #[test]
    fn flash_fwd_wgmma_same_bits() {
        use mmr1_fast::backend::cuda::emu::{EmuDevice, Schedule};
        use mmr1_fast::backend::Backend;
        let dev = EmuDevice::with_schedules(&Schedule::CI).with_profile();
        let mut b = CudaBackend::with_device(dev).with_attention(AttnKernel::Flash);
        let calls = |b: &CudaBackend<EmuDevice>, name: &str| {
            b.kernel_profile().iter().find(|k| k.name == name).map_or(0, |k| k.calls)
        };
        super::flash_fwd_wgmma_same_bits(&mut b, true);
        for name in ["flash_fwd_wg_bf16_d64", "flash_fwd_wg_bf16_d128"] {
            assert!(calls(&b, name) > 0, "{name} never ran");
        }
    }
    #[test]
    fn flash_mask_same_bits() {
        let mut b = CudaBackend::emulator().with_attention(AttnKernel::Flash);
        super::flash_mask_same_bits(&mut b, true);
    }
    #[test]
    fn flash_dq_pipe_same_bits() {
        use mmr1_fast::backend::cuda::emu::{EmuDevice, Schedule};
        use mmr1_fast::backend::Backend;
        let dev = EmuDevice::with_schedules(&Schedule::CI).with_profile();
        let mut b = CudaBackend::with_device(dev).with_attention(AttnKernel::Flash);
        super::flash_dq_pipe_same_bits(&mut b, true);
        let ran = b.kernel_profile();
        let calls = |n: &str| ran.iter().find(|k| k.name == n).map_or(0, |k| k.calls);
        assert!(calls("flash_bwd_dq_pipe_bf16_d64") > 0, "the pipelined dQ never ran");
    }
    #[test]
    fn flash_dq_wgmma_same_bits() {
        use mmr1_fast::backend::cuda::emu::{EmuDevice, Schedule};
        use mmr1_fast::backend::Backend;
        let dev = EmuDevice::with_schedules(&Schedule::CI).with_profile();
        let mut b = CudaBackend::with_device(dev).with_attention(AttnKernel::Flash);
        super::flash_dq_wgmma_same_bits(&mut b, true);
        let ran = b.kernel_profile();
        let calls = |n: &str| ran.iter().find(|k| k.name == n).map_or(0, |k| k.calls);
        for name in ["flash_bwd_dq_wg_bf16_d64", "flash_bwd_dq_wg_bf16_d128"] {
            assert!(calls(name) > 0, "{name} never ran");
        }
    }
    #[test]
    fn flash_dkv_wgmma_same_bits() {
        use mmr1_fast::backend::cuda::emu::{EmuDevice, Schedule};
        use mmr1_fast::backend::Backend;
        let dev = EmuDevice::with_schedules(&Schedule::CI).with_profile();
        let mut b = CudaBackend::with_device(dev).with_attention(AttnKernel::Flash);
        super::flash_dkv_wgmma_same_bits(&mut b, true);
        let ran = b.kernel_profile();
        let calls = |n: &str| ran.iter().find(|k| k.name == n).map_or(0, |k| k.calls);
        for name in ["flash_bwd_dkv_wg_bf16_d64", "flash_bwd_dkv_wg_bf16_d128", "flash_dkv_sum"] {
            assert!(calls(name) > 0, "{name} never ran");
        }
    }
    #[test]
    fn decode_vs_cpu() {
        for (kernel, tol) in [
            (DecodeKernel::Split, 1e-5),
            (DecodeKernel::Staged, 1e-5),
            (DecodeKernel::Mma, super::TOL),
        ] {
            let mut b = CudaBackend::emulator().with_attention(AttnKernel::Flash);
            b.set_decode_kernel(kernel);
            super::decode_vs_cpu(&b, tol);
        }
    }
    #[test]
    fn kv_cache_bf16_writes() {
        super::kv_cache_bf16_writes(&mut CudaBackend::emulator().with_attention(AttnKernel::Flash));
    }
    #[test]
    fn kv_cache_bf16_reads() {
        use mmr1_fast::backend::cuda::emu::{EmuDevice, Schedule};
        use mmr1_fast::backend::Backend;
        let dev = EmuDevice::with_schedules(&Schedule::CI).with_profile();
        let mut b = CudaBackend::with_device(dev).with_attention(AttnKernel::Flash);
        super::kv_cache_bf16_reads(&mut b, true);
        // Every bf16 form ran (the prefills too), so the comparison compared something.
        let ran = b.kernel_profile();
        for name in [
            "flash_decode_split_bf16",
            "flash_decode_staged_bf16_d64",
            "flash_decode_staged_bf16_d128",
            "flash_fwd_bf16_d64",
            "flash_fwd_bf16_d128",
        ] {
            assert!(ran.iter().any(|k| k.name == name && k.calls > 0), "{name} never ran");
        }
    }
    #[test]
    fn decode_staged_vs_split() {
        use mmr1_fast::backend::cuda::emu::{EmuDevice, Schedule};
        use mmr1_fast::backend::Backend;
        let dev = EmuDevice::with_schedules(&Schedule::CI).with_profile();
        let mut b = CudaBackend::with_device(dev).with_attention(AttnKernel::Flash);
        super::decode_staged_vs_split(&mut b, true);
        // Both kernels ran (for both head dims), so the comparison compared something.
        let ran = b.kernel_profile();
        for name in ["flash_decode_split", "flash_decode_staged_d64", "flash_decode_staged_d128"] {
            assert!(ran.iter().any(|k| k.name == name && k.calls > 0), "{name} never ran");
        }
    }
}

#[cfg(feature = "cuda")]
/// GPU tests are #[ignore]d: reported as ignored where there is no GPU, run by
/// scripts/gpu-check.sh with --include-ignored (then a missing GPU is a failure).
mod gpu {
    use mmr1_fast::backend::cuda::{driver::CudaDevice, AttnKernel, CudaBackend, DecodeKernel};
    fn with_gpu(f: impl FnOnce(&mut CudaBackend<CudaDevice>)) {
        match CudaBackend::new(0) {
            Ok(b) => f(&mut b.with_attention(AttnKernel::Flash)),
            Err(e) => panic!("GPU test asked for, but there is no GPU: {e}"),
        }
    }
    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn flash_vs_cpu() {
        with_gpu(|b| super::flash_vs_cpu(&*b));
    }
    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn flash_deterministic() {
        with_gpu(super::flash_deterministic);
    }
    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn flash_io_same_bits() {
        with_gpu(super::flash_io_same_bits);
    }
    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn flash_fwd_wide_same_bits() {
        with_gpu(|b| super::flash_fwd_wide_same_bits(b, false));
    }
    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn flash_mask_same_bits() {
        with_gpu(|b| super::flash_mask_same_bits(b, false));
    }
    /// sm_90 only: skipped with a message on other GPUs.
    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn flash_fwd_wgmma_same_bits() {
        with_gpu(|b| {
            if crate::common::wgmma_or_skip(b.device(), "flash_fwd_wgmma_same_bits") {
                super::flash_fwd_wgmma_same_bits(b, false)
            }
        });
    }
    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn flash_dq_pipe_same_bits() {
        with_gpu(|b| super::flash_dq_pipe_same_bits(b, false));
    }
    /// sm_90 only: skipped with a message on other GPUs.
    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn flash_dq_wgmma_same_bits() {
        with_gpu(|b| {
            if crate::common::wgmma_or_skip(b.device(), "flash_dq_wgmma_same_bits") {
                super::flash_dq_wgmma_same_bits(b, false)
            }
        });
    }
    /// sm_90 only: skipped with a message on other GPUs.
    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn flash_dkv_wgmma_same_bits() {
        with_gpu(|b| {
            if crate::common::wgmma_or_skip(b.device(), "flash_dkv_wgmma_same_bits") {
                super::flash_dkv_wgmma_same_bits(b, false)
            }
        });
    }
    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn decode_vs_cpu() {
        for (kernel, tol) in [
            (DecodeKernel::Split, 1e-5),
            (DecodeKernel::Staged, 1e-5),
            (DecodeKernel::Mma, super::TOL),
        ] {
            with_gpu(|b| {
                b.set_decode_kernel(kernel);
                super::decode_vs_cpu(&*b, tol)
            });
        }
    }
    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn decode_staged_vs_split() {
        with_gpu(|b| super::decode_staged_vs_split(b, false));
    }
    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn kv_cache_bf16_writes() {
        with_gpu(super::kv_cache_bf16_writes);
    }
    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn kv_cache_bf16_reads() {
        with_gpu(|b| super::kv_cache_bf16_reads(b, false));
    }
}
