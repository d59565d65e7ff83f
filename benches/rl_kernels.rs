//! RL kernel benches on the real GPU (`cargo bench --features cuda --bench rl_kernels`): the
//! fused GRPO loss at 4M tokens, group advantages at 64k responses, VAS scores at 1,000 items x
//! 8 rollouts x 1k tokens. Each prints one line `RLBENCH {"id":..,"s":..,"bytes":..}` (median
//! seconds of a call, minimal bytes a call must move) that scripts/gpu-check.sh turns into a
//! table beside PyTorch doing the same work (benches/rl_kernels_torch.py).

#[cfg(feature = "cuda")]
mod gpu {
    use mmr1_fast::backend::cuda::device::Device;
    use mmr1_fast::backend::cuda::rl::vas_score::DeviceRollouts;
    use mmr1_fast::backend::cuda::{driver::CudaDevice, CudaBackend};
    use mmr1_fast::backend::rl_ops::{AdvBuf, LossBufs};
    use mmr1_fast::backend::Backend;
    use mmr1_fast::rl::advantage::AdvantageConfig;
    use mmr1_fast::rl::grpo::{KlConfig, KlEstimator, LossConfig, Normalizer};
    use mmr1_fast::rl::vas::TdsMetric;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::time::Instant;

    type B = CudaBackend<CudaDevice>;

    /// Median seconds of `f` over `iters` synchronized calls, after 3 warm-up calls.
    fn median(b: &B, iters: usize, mut f: impl FnMut()) -> f64 {
        for _ in 0..3 {
            f();
        }
        let mut ts: Vec<f64> = (0..iters)
            .map(|_| {
                b.device().synchronize();
                let t = Instant::now();
                f();
                b.device().synchronize();
                t.elapsed().as_secs_f64()
            })
            .collect();
        ts.sort_by(f64::total_cmp);
        ts[ts.len() / 2]
    }

    fn report(id: &str, s: f64, bytes: f64) {
        println!("RLBENCH {{\"id\":\"{id}\",\"s\":{s},\"bytes\":{bytes}}}");
        println!("{id:40} {:9.1} us  {:7.0} GB/s", s * 1e6, bytes / s / 1e9);
    }

    pub fn main() {
        let b = match CudaBackend::new(0) {
            Ok(b) => b,
            Err(e) => {
                println!("SKIPPED: no CUDA device ({e})");
                return;
            }
        };
        println!("device: {}", b.name());
        let mut r = ChaCha8Rng::seed_from_u64(0);

        // ---- fused GRPO loss: 2048 responses x 2048 tokens = 4M tokens, MMR1's loss (vanilla
        // clip, k3 KL) plus an entropy bonus, token-mean.
        let (rows, len) = (2048usize, 2048usize);
        let n = rows * len;
        let rand = |r: &mut ChaCha8Rng, lo: f32, hi: f32| -> Vec<f32> {
            (0..n).map(|_| r.gen_range(lo..hi)).collect()
        };
        let lp = rand(&mut r, -5.0, -0.01);
        let old: Vec<f32> = lp.iter().map(|&x| x - r.gen_range(-0.3..0.3)).collect();
        let refl: Vec<f32> = lp.iter().map(|&x| x - r.gen_range(-0.5..0.5)).collect();
        let ent = rand(&mut r, 0.1, 4.0);
        let mask: Vec<f32> = (0..n).map(|i| if i % len < len - 100 { 1.0 } else { 0.0 }).collect();
        let adv: Vec<f32> = (0..rows).map(|_| r.gen_range(-2.0..2.0)).collect();
        let offsets: Vec<usize> = (0..=rows).map(|i| i * len).collect();
        let (d_lp, d_old, d_ref, d_ent, d_mask, d_adv) = (
            b.upload(&lp),
            b.upload(&old),
            b.upload(&refl),
            b.upload(&ent),
            b.upload(&mask),
            b.upload(&adv),
        );
        let (mut dlp, mut dent) = (b.zeros(n), b.zeros(n));
        let mut cfg = LossConfig::mmr1();
        cfg.kl = Some(KlConfig { estimator: KlEstimator::K3, coef: 0.01 });
        cfg.entropy_coef = 0.001;
        let norm = Normalizer::count(&mask, &offsets, len);
        let x = LossBufs {
            logp: &d_lp,
            logp_old: &d_old,
            advantages: AdvBuf::PerResponse(&d_adv),
            mask: &d_mask,
            ref_logp: Some(&d_ref),
            entropy: Some(&d_ent),
            pg_mask: None,
            selected: None,
            offsets: &offsets,
        };
        let s = median(&b, 20, || {
            b.grpo_loss(&x, &cfg, norm, &mut dlp, Some(&mut dent));
        });
        // reads logp, old, ref, entropy, mask; writes dlogp, dentropy
        report("grpo_loss_4M_vanilla_k3_entropy", s, (n * 7 * 4) as f64);

        // ---- group advantages: 8192 and 131,072 prompts x 8 responses, GRPO (verl); the
        // batch statistics span 32 and 512 blocks.
        for (groups, id) in [(8192usize, "group_adv_64k_grpo"), (131_072, "group_adv_1M_grpo")] {
            let g = 8usize;
            let rw: Vec<f32> = (0..groups * g).map(|_| r.gen_range(0..2) as f32).collect();
            let goff: Vec<usize> = (0..=groups).map(|i| i * g).collect();
            let d_rw = b.upload(&rw);
            let mut d_a = b.zeros(rw.len());
            let acfg = AdvantageConfig::verl();
            let s = median(&b, 20, || {
                b.group_advantages(&d_rw, &goff, None, &acfg, &mut d_a);
            });
            report(id, s, (rw.len() * 8) as f64);
        }

        // ---- VAS scores: 1000 items x 8 rollouts x 1024 tokens, self-BLEU-4 and distinct-4.
        let (items, k, tl) = (1000usize, 8usize, 1024usize);
        let toks: Vec<u32> = (0..items * k * tl).map(|_| r.gen_range(0..2000u32)).collect();
        let roll: Vec<usize> = (0..=items * k).map(|i| i * tl).collect();
        let it: Vec<usize> = (0..=items).map(|i| i * k).collect();
        let corr: Vec<f32> = (0..items * k).map(|_| r.gen_range(0..2) as f32).collect();
        let d_t = b.upload_tokens(&toks);
        let d_c = b.upload(&corr);
        let dr = DeviceRollouts { tokens: &d_t, rollouts: &roll, items: &it, correct: &d_c };
        for (id, m) in [
            ("vas_1000x8x1k_self_bleu4", TdsMetric::InverseSelfBleu { max_n: 4 }),
            ("vas_1000x8x1k_distinct4", TdsMetric::DistinctN { max_n: 4 }),
        ] {
            let s = median(&b, 5, || {
                b.vas_scores(&dr, 0.8, 0.2, m);
            });
            report(id, s, (toks.len() * 4) as f64);
        }
        // The CPU reference on the same items, all cores (rayon-free: std threads).
        let cpu = |m: TdsMetric| {
            let t = Instant::now();
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            std::thread::scope(|sc| {
                for c in 0..threads {
                    let (toks, roll, corr) = (&toks, &roll, &corr);
                    sc.spawn(move || {
                        for i in (c..items).step_by(threads) {
                            let ts: Vec<&[u32]> =
                                (i * k..(i + 1) * k).map(|j| &toks[roll[j]..roll[j + 1]]).collect();
                            mmr1_fast::rl::vas::score_item(
                                &corr[i * k..(i + 1) * k],
                                &ts,
                                0.8,
                                0.2,
                                m,
                            );
                        }
                    });
                }
            });
            t.elapsed().as_secs_f64()
        };
        let s = cpu(TdsMetric::InverseSelfBleu { max_n: 4 });
        println!(
            "RLBENCH {{\"id\":\"vas_1000x8x1k_self_bleu4_cpu_threads\",\"s\":{s},\"bytes\":0}}"
        );
    }
}

fn main() {
    #[cfg(feature = "cuda")]
    gpu::main();
    #[cfg(not(feature = "cuda"))]
    println!("SKIPPED: built without the `cuda` feature");
}
