//! Kernel benches on the real GPU (`cargo bench --features cuda --bench kernels`).
//!
//! Sizes are those of a Qwen2.5-1.5B-like layer over 4096 tokens. Each bench times a batch of
//! launches between two stream synchronizations (so launch queuing overlaps, as in training),
//! and reports bytes (GB/s) or FLOPs (elements/s = FLOP/s) per call through criterion. The
//! minimal byte / FLOP counts also go to `target/kernel-bench-meta.jsonl` for
//! scripts/gpu-check.sh's roofline table.

#[cfg(feature = "cuda")]
mod gpu {
    use criterion::{Criterion, Throughput};
    use mmr1_fast::backend::cpu::rope_inv_freq;
    use mmr1_fast::backend::cuda::device::Device;
    use mmr1_fast::backend::cuda::{
        driver::CudaDevice, AttnKernel, CudaBackend, DecodeKernel, FlashDkv, FlashDq, FlashFwd,
        FlashIo, FlashMask,
    };
    use mmr1_fast::backend::{AdamwStep, AttnShape, AttnSpan, Backend, Tr};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::io::Write;
    use std::time::{Duration, Instant};

    type B = CudaBackend<CudaDevice>;
    type Buf = <B as Backend>::Buf;

    fn rand_buf(b: &B, r: &mut ChaCha8Rng, n: usize, scale: f32) -> Buf {
        let h: Vec<f32> = (0..n).map(|_| r.gen_range(-scale..scale)).collect();
        b.upload(&h)
    }

    struct Meta(std::fs::File);
    impl Meta {
        fn record(&mut self, id: &str, bytes: f64, flops: f64) {
            writeln!(self.0, "{{\"id\":\"{id}\",\"bytes\":{bytes},\"flops\":{flops}}}").unwrap();
        }
    }

    /// Times `f` over `iters` calls bracketed by synchronizations.
    fn timed(b: &B, iters: u64, mut f: impl FnMut()) -> Duration {
        b.device().synchronize();
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        b.device().synchronize();
        t.elapsed()
    }

    pub fn main() {
        let mut b = match CudaBackend::new(0) {
            Ok(b) => b,
            Err(e) => {
                println!("SKIPPED: no CUDA device ({e})");
                return;
            }
        };
        println!("device: {}", b.name());
        let _ = std::fs::create_dir_all("target");
        let mut meta = Meta(std::fs::File::create("target/kernel-bench-meta.jsonl").unwrap());
        let mut c = Criterion::default()
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_millis(1000))
            .sample_size(10)
            .configure_from_args();
        let mut r = ChaCha8Rng::seed_from_u64(0);
        let (t, d, ffn, h, hkv, hd, vocab) =
            (4096usize, 1536usize, 8960usize, 12usize, 2usize, 128usize, 151936usize);

        // ---- memory-bound elementwise ops
        let n = 64 << 20;
        let mut x = rand_buf(&b, &mut r, n, 1.0);
        let y = rand_buf(&b, &mut r, n, 1.0);
        let mut g = c.benchmark_group("elementwise");
        let bench = |g: &mut criterion::BenchmarkGroup<_>,
                     meta: &mut Meta,
                     id: &str,
                     bytes: usize,
                     f: &mut dyn FnMut()| {
            g.throughput(Throughput::Bytes(bytes as u64));
            g.bench_function(id, |bch| bch.iter_custom(|it| timed(&b, it, &mut *f)));
            meta.record(id, bytes as f64, 0.0);
        };
        bench(&mut g, &mut meta, "fill", 4 * n, &mut || b.fill(&mut x, 0.5));
        let mut z = b.zeros(n);
        bench(&mut g, &mut meta, "copy", 8 * n, &mut || b.copy(&mut z, 0, &y, 0, n));
        bench(&mut g, &mut meta, "add_assign", 12 * n, &mut || b.add_assign(&mut z, &y));
        bench(&mut g, &mut meta, "scale", 8 * n, &mut || b.scale(&mut z, 0.999));
        bench(&mut g, &mut meta, "sum_squares", 4 * n, &mut || {
            std::hint::black_box(b.sum_squares(&y));
        });
        let (mut pm, mut pv) = (b.zeros(n), b.zeros(n));
        let hp = AdamwStep {
            lr: 1e-5,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.01,
            step: 3,
            grad_scale: 1.0,
        };
        bench(&mut g, &mut meta, "adamw", 28 * n, &mut || {
            b.adamw(&mut z, &y, &mut pm, &mut pv, hp)
        });
        // AdamW that also writes the weight's bf16 shadow (what bf16 training runs): 2 bytes
        // more a value than `adamw`, instead of a conversion pass of 6.
        let shadow16 = b.device().alloc(2 * n);
        bench(&mut g, &mut meta, "adamw_bf16shadow", 30 * n, &mut || {
            use mmr1_fast::backend::cuda::device::Arg;
            b.device().launch(
                "adamw_bf16shadow_f32",
                [n.div_ceil(256).clamp(1, 4096) as u32, 1, 1],
                [256, 1, 1],
                0,
                &[
                    Arg::Ptr(z.mem()),
                    Arg::Ptr(y.mem()),
                    Arg::Ptr(pm.mem()),
                    Arg::Ptr(pv.mem()),
                    Arg::Ptr(&shadow16),
                    Arg::I64(n as i64),
                    Arg::F32(hp.lr),
                    Arg::F32(hp.beta1),
                    Arg::F32(hp.beta2),
                    Arg::F32(hp.eps),
                    Arg::F32(hp.weight_decay),
                    Arg::F32(1.0),
                    Arg::F32(1.0),
                    Arg::F32(1.0),
                ],
            )
        });
        drop(shadow16);
        // The optimizer side over Qwen2.5-0.5B's 290 parameter tensors (docs/perf.md,
        // "Optimizer side in fewer launches"): a call per tensor, as before, against one call
        // for the list (`sum_squares_many`: 2 launches and one download instead of 2 launches
        // and a download per tensor; `fill_many`: one launch instead of 290).
        let lens: Vec<usize> = {
            use mmr1_fast::commands::init_model::Arch;
            let layout = mmr1_fast::model::params::ParamLayout::new(&Arch::Qwen25_0_5b.config());
            layout.specs.iter().map(|s| s.numel()).collect()
        };
        let total: usize = lens.iter().sum();
        let mut grads: Vec<Buf> = lens
            .iter()
            .map(|&len| {
                let mut x = b.zeros(len);
                b.fill(&mut x, 1e-3);
                x
            })
            .collect();
        bench(&mut g, &mut meta, "grad_norm_per_tensor_q0.5b", 4 * total, &mut || {
            std::hint::black_box(grads.iter().map(|x| b.sum_squares(x)).sum::<f64>());
        });
        bench(&mut g, &mut meta, "grad_norm_many_q0.5b", 4 * total, &mut || {
            let all: Vec<&Buf> = grads.iter().collect();
            std::hint::black_box(b.sum_squares_many(&all));
        });
        bench(&mut g, &mut meta, "zero_grads_per_tensor_q0.5b", 4 * total, &mut || {
            for x in grads.iter_mut() {
                b.fill(x, 0.0);
            }
        });
        bench(&mut g, &mut meta, "zero_grads_many_q0.5b", 4 * total, &mut || {
            let mut all: Vec<&mut Buf> = grads.iter_mut().collect();
            b.fill_many(&mut all, 0.0);
        });
        drop(grads);
        // f32 -> bf16 GEMM operand conversions: the baseline (one value a thread) and what the
        // GEMMs use (8 a thread, 16-byte accesses; device::launch_f32_to_bf16). 6 bytes a value.
        let out16 = b.device().alloc(2 * n);
        bench(&mut g, &mut meta, "f32_to_bf16", 6 * n, &mut || {
            use mmr1_fast::backend::cuda::device::Arg;
            b.device().launch(
                "f32_to_bf16",
                [n.div_ceil(256).clamp(1, 4096) as u32, 1, 1],
                [256, 1, 1],
                0,
                &[Arg::Ptr(&out16), Arg::Ptr(y.mem()), Arg::I64(n as i64)],
            )
        });
        bench(&mut g, &mut meta, "f32_to_bf16_x8", 6 * n, &mut || {
            mmr1_fast::backend::cuda::device::launch_f32_to_bf16(b.device(), &out16, y.mem(), n)
        });
        drop((pm, pv, x, out16));
        let nf = t * ffn;
        let (gate, up) = (rand_buf(&b, &mut r, nf, 3.0), rand_buf(&b, &mut r, nf, 1.0));
        let (mut o1, mut o2) = (b.zeros(nf), b.zeros(nf));
        bench(&mut g, &mut meta, "swiglu", 12 * nf, &mut || b.swiglu(&mut o1, &gate, &up));
        bench(&mut g, &mut meta, "swiglu_backward", 20 * nf, &mut || {
            b.swiglu_backward(&mut o1, &mut o2, &y, &gate, &up)
        });
        let mut xb = rand_buf(&b, &mut r, t * ffn, 1.0);
        let bias = rand_buf(&b, &mut r, ffn, 1.0);
        bench(&mut g, &mut meta, "add_bias", 8 * t * ffn, &mut || {
            b.add_bias(&mut xb, &bias, t, ffn)
        });
        let mut dbias = b.zeros(ffn);
        bench(&mut g, &mut meta, "bias_backward", 4 * t * ffn, &mut || {
            b.bias_backward(&mut dbias, &xb, t, ffn)
        });
        // A k/v projection's bias (128 columns at Qwen2.5-0.5B): 4 blocks of columns alone, so
        // the rows are cut into slices (col_slices).
        let kv = 128;
        bench(&mut g, &mut meta, "bias_backward_kv128", 4 * t * kv, &mut || {
            b.bias_backward(&mut dbias, &xb, t, kv)
        });
        g.finish();
        drop((gate, up, o1, o2, xb, z, y));

        // ---- decoder ops
        let mut g = c.benchmark_group("decoder");
        let xs = rand_buf(&b, &mut r, t * d, 2.0);
        let w = rand_buf(&b, &mut r, d, 1.0);
        let (mut out, mut rstd, mut dx, mut dw) =
            (b.zeros(t * d), b.zeros(t), b.zeros(t * d), b.zeros(d));
        bench(&mut g, &mut meta, "rmsnorm", 8 * t * d, &mut || {
            b.rmsnorm(&mut out, &mut rstd, &xs, &w, t, d, 1e-6)
        });
        bench(&mut g, &mut meta, "rmsnorm_backward", 16 * t * d, &mut || {
            b.rmsnorm_backward(&mut dx, &mut dw, &out, &xs, &w, &rstd, t, d)
        });
        let table = rand_buf(&b, &mut r, 32768 * d, 1.0);
        let ids: Vec<u32> = (0..t).map(|_| r.gen_range(0..32768)).collect();
        bench(&mut g, &mut meta, "embedding", 8 * t * d, &mut || {
            b.embedding(&mut out, &table, &ids, d)
        });
        let mut dtable = b.zeros(32768 * d);
        bench(&mut g, &mut meta, "embedding_backward", 12 * t * d, &mut || {
            b.embedding_backward(&mut dtable, &xs, &ids, d)
        });
        drop((table, dtable));
        let mut qx = rand_buf(&b, &mut r, t * h * hd, 1.0);
        let pos: Vec<u32> = (0..t as u32).collect();
        bench(&mut g, &mut meta, "rope", 8 * t * h * hd, &mut || {
            b.rope(&mut qx, &pos, h, hd, &rope_inv_freq(hd, 1e6), false)
        });

        // logprobs over a real vocabulary: 1024 rows x 151936
        let rows = 1024;
        let logits = rand_buf(&b, &mut r, rows * vocab, 4.0);
        let targets: Vec<u32> = (0..rows).map(|_| r.gen_range(0..vocab as u32)).collect();
        let (mut lp, mut ent) = (b.zeros(rows), b.zeros(rows));
        bench(&mut g, &mut meta, "logprobs", 4 * rows * vocab, &mut || {
            b.logprobs(&mut lp, &mut ent, &logits, &targets, rows, vocab, 1.0)
        });
        let mut dlog = b.zeros(rows * vocab);
        bench(&mut g, &mut meta, "logprobs_backward", 8 * rows * vocab, &mut || {
            b.logprobs_backward(&mut dlog, &logits, &targets, &lp, &ent, rows, vocab, 1.0)
        });
        drop((logits, dlog));
        g.finish();

        // ---- FLOP-bound: attention (4 sequences of 1024) and matmul
        let mut g = c.benchmark_group("flops");
        let fbench = |g: &mut criterion::BenchmarkGroup<_>,
                      meta: &mut Meta,
                      id: &str,
                      flops: f64,
                      f: &mut dyn FnMut()| {
            g.throughput(Throughput::Elements(flops as u64));
            g.bench_function(id, |bch| bch.iter_custom(|it| timed(&b, it, &mut *f)));
            meta.record(id, 0.0, flops);
        };
        let spans: Vec<AttnSpan> = (0..4)
            .map(|i| AttnSpan { q_start: i * 1024, q_len: 1024, kv_start: i * 1024, kv_len: 1024 })
            .collect();
        let shape = AttnShape { n_heads: h, n_kv_heads: hkv, head_dim: hd };
        let q = rand_buf(&b, &mut r, t * h * hd, 1.0);
        let (k, v) =
            (rand_buf(&b, &mut r, t * hkv * hd, 1.0), rand_buf(&b, &mut r, t * hkv * hd, 1.0));
        let (mut ao, mut lse) = (b.zeros(t * h * hd), b.zeros(t * h));
        // causal, per sequence and head: QK^T and PV each 2 hd flops for L(L+1)/2 (query, key) pairs
        let fwd_flops = 4.0 * h as f64 * 2.0 * (1024.0 * 1025.0 / 2.0) * 2.0 * hd as f64;
        fbench(&mut g, &mut meta, "attention", fwd_flops, &mut || {
            b.attention(&mut ao, &mut lse, &q, &k, &v, &spans, shape)
        });
        let (mut dq, mut dk, mut dv) =
            (b.zeros(t * h * hd), b.zeros(t * hkv * hd), b.zeros(t * hkv * hd));
        let dout = rand_buf(&b, &mut r, t * h * hd, 1.0);
        fbench(&mut g, &mut meta, "attention_backward", fwd_flops * 2.5, &mut || {
            b.attention_backward(
                &mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &ao, &lse, &spans, shape,
            )
        });
        for (m, n, kk) in [(4096usize, 4096usize, 4096usize), (4096, 8960, 1536)] {
            let (a, bm) = (rand_buf(&b, &mut r, m * kk, 1.0), rand_buf(&b, &mut r, kk * n, 1.0));
            let mut cm = b.zeros(m * n);
            let fl = 2.0 * (m * n * kk) as f64;
            fbench(&mut g, &mut meta, &format!("matmul_{m}x{n}x{kk}_NT"), fl, &mut || {
                b.matmul(&mut cm, &a, Tr::N, &bm, Tr::T, m, n, kk, 0.0)
            });
            fbench(&mut g, &mut meta, &format!("gemm_kernel_{m}x{n}x{kk}_NT"), fl, &mut || {
                b.matmul_kernel(&mut cm, &a, Tr::N, &bm, Tr::T, m, n, kk, 0.0)
            });
        }
        g.finish();

        // ---- tensor cores: bf16 GEMM (cuBLAS GemmEx, f32 accumulation) on bf16 operands
        // converted once, at 4096^3 and at Qwen2.5-1.5B's shapes over 4096 tokens (forward
        // X W^T, and the two backward GEMMs of the MLP up projection); flash attention.
        let mut g = c.benchmark_group("tensor");
        let dev = b.device();
        let gemms: [(&str, usize, usize, usize, Tr, Tr); 8] = [
            ("4096x4096x4096_NT", 4096, 4096, 4096, Tr::N, Tr::T),
            ("qkv_4096x2048x1536_NT", t, 2048, d, Tr::N, Tr::T),
            ("o_4096x1536x1536_NT", t, d, d, Tr::N, Tr::T),
            ("up_4096x8960x1536_NT", t, ffn, d, Tr::N, Tr::T),
            ("down_4096x1536x8960_NT", t, d, ffn, Tr::N, Tr::T),
            ("lmhead_4096x151936x1536_NT", t, vocab, d, Tr::N, Tr::T),
            ("up_dx_4096x1536x8960_NN", t, d, ffn, Tr::N, Tr::N),
            ("up_dw_8960x1536x4096_TN", ffn, d, t, Tr::T, Tr::N),
        ];
        for (name, m, n, kk, ta, tb) in gemms {
            let a16 = dev.to_bf16(rand_buf(&b, &mut r, m * kk, 1.0).mem(), m * kk);
            let b16 = dev.to_bf16(rand_buf(&b, &mut r, kk * n, 1.0).mem(), kk * n);
            let mut out = dev.alloc(m * n * 4);
            let fl = 2.0 * (m * n * kk) as f64;
            let id = format!("gemm_bf16_{name}");
            g.throughput(Throughput::Elements(fl as u64));
            g.bench_function(&id, |bch| {
                bch.iter_custom(|it| {
                    timed(&b, it, || {
                        dev.gemm_bf16(&mut out, false, &a16, ta, &b16, tb, m, n, kk, 0.0).unwrap()
                    })
                })
            });
            meta.record(&id, 0.0, fl);
        }
        g.finish();
        b.set_attention(AttnKernel::Flash);
        let mut g = c.benchmark_group("tensor");
        // (sequences, length, heads, kv heads, head dim): torch's comparison shape, then the
        // model's (Qwen2.5-1.5B's heads), then Qwen2.5-0.5B's (head dim 64: the pipelined dQ).
        let shapes = [
            (2usize, 4096usize, 16usize, 16usize, hd),
            (4, 1024, h, hkv, hd),
            (4, 1024, 14, 2, 64),
        ];
        for (ns, len, hh, hk, hd) in shapes {
            let tt = ns * len;
            let spans: Vec<AttnSpan> = (0..ns)
                .map(|i| AttnSpan { q_start: i * len, q_len: len, kv_start: i * len, kv_len: len })
                .collect();
            let shape = AttnShape { n_heads: hh, n_kv_heads: hk, head_dim: hd };
            let q = rand_buf(&b, &mut r, tt * hh * hd, 1.0);
            let (k, v) =
                (rand_buf(&b, &mut r, tt * hk * hd, 1.0), rand_buf(&b, &mut r, tt * hk * hd, 1.0));
            let (mut ao, mut lse) = (b.zeros(tt * hh * hd), b.zeros(tt * hh));
            let fl = ns as f64
                * hh as f64
                * 2.0
                * (len as f64 * (len as f64 + 1.0) / 2.0)
                * 2.0
                * hd as f64;
            let (mut dq, mut dk, mut dv) =
                (b.zeros(tt * hh * hd), b.zeros(tt * hk * hd), b.zeros(tt * hk * hd));
            let dout = rand_buf(&b, &mut r, tt * hh * hd, 1.0);
            // The default storage (bf16 copies of the walked tensors, conversions timed with
            // the kernels) under the ids PyTorch is compared with, then the f32 tile loads,
            // then the wide, the pipelined and the wgmma (sm_90) forwards (their backward is the
            // default's: not benched again), then
            // every key tile masked (the kernels before the diagonal-only mask).
            let (n, plain, kv) = (FlashFwd::Narrow, FlashDq::Plain, FlashDkv::Plain);
            let (wq, wkv) = (FlashDq::Wgmma, FlashDkv::Wgmma);
            let diag = FlashMask::Diagonal;
            let variants = [
                (FlashIo::Bf16, n, plain, kv, diag, ""),
                (FlashIo::F32, n, plain, kv, diag, "_f32io"),
                (FlashIo::Bf16, FlashFwd::Wide, plain, kv, diag, "_wide"),
                (FlashIo::Bf16, FlashFwd::Pipe, plain, kv, diag, "_pipe"),
                (FlashIo::Bf16, FlashFwd::Wgmma, plain, kv, diag, "_wgmma"),
                (FlashIo::Bf16, n, FlashDq::Pipe, kv, diag, "_dqpipe"),
                (FlashIo::Bf16, n, wq, kv, diag, "_dqwgmma"),
                (FlashIo::Bf16, n, plain, wkv, diag, "_dkvwgmma"),
                (FlashIo::Bf16, n, wq, wkv, diag, "_bwdwgmma"),
                (FlashIo::Bf16, n, plain, kv, FlashMask::Every, "_maskevery"),
            ];
            for (io, fwd, dq_kernel, dkv_kernel, mask, suffix) in variants {
                if dq_kernel == FlashDq::Pipe && hd != 64 {
                    continue; // the pipelined dQ kernel exists at head dim 64 only
                }
                let wgmma = fwd == FlashFwd::Wgmma || dq_kernel == wq || dkv_kernel == wkv;
                if wgmma && !b.device().has_wgmma() {
                    continue; // sm_90 only (it would time the mma.sync kernels again)
                }
                b.set_flash_io(io);
                b.set_flash_fwd(fwd);
                b.set_flash_dq(dq_kernel);
                b.set_flash_dkv(dkv_kernel);
                b.set_flash_mask(mask);
                let tag = format!("{ns}x{len}_h{hh}kv{hk}_d{hd}{suffix}");
                let id = format!("flash_fwd_{tag}");
                g.throughput(Throughput::Elements(fl as u64));
                g.bench_function(&id, |bch| {
                    bch.iter_custom(|it| {
                        timed(&b, it, || b.attention(&mut ao, &mut lse, &q, &k, &v, &spans, shape))
                    })
                });
                meta.record(&id, 0.0, fl);
                if fwd != FlashFwd::Narrow {
                    continue;
                }
                let id = format!("flash_bwd_{tag}");
                g.throughput(Throughput::Elements((fl * 2.5) as u64));
                g.bench_function(&id, |bch| {
                    bch.iter_custom(|it| {
                        timed(&b, it, || {
                            b.attention_backward(
                                &mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &ao, &lse, &spans,
                                shape,
                            )
                        })
                    })
                });
                meta.record(&id, 0.0, fl * 2.5);
            }
            b.set_flash_io(FlashIo::default());
            b.set_flash_fwd(FlashFwd::default());
            b.set_flash_dq(FlashDq::default());
            b.set_flash_dkv(FlashDkv::default());
            b.set_flash_mask(FlashMask::default());
        }
        // Decode: 32 sequences with 4096 cached keys each, one new query each; the bytes are
        // the K and V cache rows read (f32 storage, then bf16).
        let (ns, len) = (32usize, 4096usize);
        let spans: Vec<AttnSpan> = (0..ns)
            .map(|i| AttnSpan { q_start: i, q_len: 1, kv_start: i * len, kv_len: len })
            .collect();
        let shape = AttnShape { n_heads: h, n_kv_heads: hkv, head_dim: hd };
        let q = rand_buf(&b, &mut r, ns * h * hd, 1.0);
        let (k, v) = (
            rand_buf(&b, &mut r, ns * len * hkv * hd, 1.0),
            rand_buf(&b, &mut r, ns * len * hkv * hd, 1.0),
        );
        let (mut ao, mut lse) = (b.zeros(ns * h * hd), b.zeros(ns * h));
        // The same keys and values in a KV cache of bf16 storage (`Backend::kv_cache_buf`, the
        // default under flash attention): half the bytes.
        let rows: Vec<usize> = (0..ns * len).collect();
        let (mut k16, mut v16) =
            (b.kv_cache_buf(b.len(&k), shape), b.kv_cache_buf(b.len(&v), shape));
        b.scatter_rows(&mut k16, &rows, &k, hkv * hd);
        b.scatter_rows(&mut v16, &rows, &v, hkv * hd);
        // Every decode kernel (DecodeKernel) on the same inputs, side by side, on each cache.
        for (kernel, tag) in [
            (DecodeKernel::Split, ""),
            (DecodeKernel::Staged, "staged_"),
            (DecodeKernel::Mma, "mma_"),
        ] {
            b.set_decode_kernel(kernel);
            for (kc, vc, value_bytes, cache) in [(&k, &v, 4, ""), (&k16, &v16, 2, "bf16cache_")] {
                let bytes = 2 * ns * len * hkv * hd * value_bytes;
                let id = format!("flash_decode_{tag}{cache}{ns}x{len}_h{h}kv{hkv}_d{hd}");
                g.throughput(Throughput::Bytes(bytes as u64));
                g.bench_function(&id, |bch| {
                    bch.iter_custom(|it| {
                        timed(&b, it, || b.attention(&mut ao, &mut lse, &q, kc, vc, &spans, shape))
                    })
                });
                meta.record(&id, bytes as f64, 0.0);
            }
        }
        b.set_decode_kernel(DecodeKernel::default());
        g.finish();

        // ---- the optimizer over Qwen2.5-0.5B's 290 parameter tensors (docs/perf.md, "One
        // AdamW launch"): AdamW a launch per tensor, as optim.rs did, against one launch for
        // the list (`adamw_many`), with f32 GEMMs (28 bytes a value: p, m, v read and
        // written, g read) and with bf16 GEMMs, where every weight's bf16 shadow is written
        // too (30 bytes a value) and adopted per tensor, as a bf16 training step runs it.
        let mut g = c.benchmark_group("optimizer");
        let filled = |b: &B, v: f32| -> Vec<Buf> {
            lens.iter()
                .map(|&len| {
                    let mut x = b.zeros(len);
                    b.fill(&mut x, v);
                    x
                })
                .collect()
        };
        let (mut ps, gs) = (filled(&b, 0.01), filled(&b, 1e-3));
        let (mut ms, mut vs) = (filled(&b, 0.0), filled(&b, 0.0));
        for bf16 in [false, true] {
            b.device_mut().set_gemm_bf16(bf16);
            let (sfx, bytes) = if bf16 { ("_bf16shadow", 30 * total) } else { ("", 28 * total) };
            g.throughput(Throughput::Bytes(bytes as u64));
            let id = format!("adamw_per_tensor{sfx}_q0.5b");
            g.bench_function(&id, |bch| {
                bch.iter_custom(|it| {
                    timed(&b, it, || {
                        let lists = ps.iter_mut().zip(&gs).zip(ms.iter_mut()).zip(vs.iter_mut());
                        for (((p, gr), m), v) in lists {
                            b.adamw(p, gr, m, v, hp);
                        }
                    })
                })
            });
            meta.record(&id, bytes as f64, 0.0);
            let id = format!("adamw_many{sfx}_q0.5b");
            g.bench_function(&id, |bch| {
                bch.iter_custom(|it| {
                    timed(&b, it, || b.adamw_many(&mut ps, &gs, &mut ms, &mut vs, hp))
                })
            });
            meta.record(&id, bytes as f64, 0.0);
        }
        b.device_mut().set_gemm_bf16(false);
        drop((ps, gs, ms, vs));
        g.finish();
        c.final_summary();
    }
}

fn main() {
    #[cfg(feature = "cuda")]
    gpu::main();
    #[cfg(not(feature = "cuda"))]
    println!("SKIPPED: kernel benches need --features cuda");
}
