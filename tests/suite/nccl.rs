//! The NCCL collective (src/dist/nccl.rs, `dist.collective`).
//!
//! Here (no GPU): the choice is refused by name where NCCL cannot run (a CPU or emulator
//! device), a bad value names the flag, and `auto` keeps the plain path on the CPU. The padded
//! exchanges and the missing-library message are unit tests (src/dist/padded.rs, nccl.rs).
//!
//! On a GPU (`gpu::`, ignored here; scripts/gpu-check.sh runs them with libnccl on the
//! library path): NCCL in a world of one equals `Single` bit for bit on every operation, and
//! a short `sft` and `train` with `--collective nccl` end with the plain run's weights and
//! metrics. More than one GPU: never run here (docs/distributed.md).

use crate::sft_common;
use sft_common::*;
use std::path::Path;
use std::process::{Command, Output};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mmr1-fast")
}

fn failed(o: &Output) -> String {
    assert!(!o.status.success(), "expected a failure:\n{}", String::from_utf8_lossy(&o.stdout));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn sft_args(model: &Path, data: &Path, out: &Path) -> Vec<String> {
    let mut v: Vec<String> = vec!["sft".into(), "--model".into(), model.display().to_string()];
    v.extend(["--data".into(), data.display().to_string(), "--out".into()]);
    v.push(out.display().to_string());
    // 9 examples, 4 a step: 3 steps (the last of one sequence).
    for (k, x) in [("--epochs", "1"), ("--batch-size", "4"), ("--micro-batch-tokens", "40")] {
        v.extend([k.to_string(), x.to_string()]);
    }
    v.extend(["--lr".into(), "1e-2".into(), "--seed".into(), "3".into()]);
    v
}

#[test]
fn nccl_off_a_gpu_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    write_tiny_model(&model, 16, 5);
    let data = tmp.path().join("data.jsonl");
    std::fs::write(&data, synthetic_jsonl(9)).unwrap();
    let out = tmp.path().join("out");
    let mut a = sft_args(&model, &data, &out);
    a.extend(["--device", "cpu", "--collective", "nccl"].map(String::from));
    let e = failed(&Command::new(bin()).args(&a).output().unwrap());
    assert!(e.contains("dist.collective = nccl") && e.contains("GPU"), "{e}");
    assert!(!out.join("metrics.jsonl").exists(), "nothing is trained before the refusal");
    // A value that is not a collective names the accepted ones.
    let mut a = sft_args(&model, &data, &out);
    a.extend(["--device", "cpu", "--collective", "gloo"].map(String::from));
    let e = failed(&Command::new(bin()).args(&a).output().unwrap());
    assert!(e.contains("--collective") && e.contains("auto") && e.contains("nccl"), "{e}");
    let e = failed(
        &Command::new(bin())
            .args(["train", "--out", out.to_str().unwrap(), "--collective", "gloo"])
            .output()
            .unwrap(),
    );
    assert!(e.contains("--collective (dist.collective)") && e.contains("\"gloo\""), "{e}");
    // auto on the CPU is the plain path: the run trains.
    let mut a = sft_args(&model, &data, &out);
    a.extend(["--device", "cpu", "--collective", "auto"].map(String::from));
    let o = Command::new(bin()).args(&a).env("RAYON_NUM_THREADS", "1").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("metrics.jsonl").is_file());
}

#[cfg(feature = "cuda")]
use crate::kernel_check;

#[cfg(feature = "cuda")]
mod gpu {
    use super::kernel_check::{rand_vec, rng};
    use super::*;
    use clap::Parser;
    use mmr1_fast::backend::cpu::Cpu;
    use mmr1_fast::backend::cuda::driver::CudaDevice;
    use mmr1_fast::backend::cuda::CudaBackend;
    use mmr1_fast::backend::Backend;
    use mmr1_fast::dist::launch::{CollectiveChoice, World};
    use mmr1_fast::dist::{Collective, NcclComm, Single};
    use mmr1_fast::model::Qwen2;

    fn gpu() -> CudaBackend<CudaDevice> {
        match CudaBackend::new(0) {
            Ok(b) => b,
            Err(e) => panic!("GPU test asked for, but there is no GPU: {e}"),
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Ragged tensors, an empty one, and one longer than a padded round (16M values), so the
    /// reduce-scatter and all-gather take two rounds.
    const LENS: [usize; 6] = [7, 1, 0, 12, 5, (1 << 24) + 3];

    #[test]
    #[ignore = "needs a GPU and libnccl: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn nccl_in_a_world_of_one_equals_single_bit_for_bit() {
        let be = gpu();
        let comm = NcclComm::single(&be).unwrap();
        assert_eq!((Collective::<CudaBackend<CudaDevice>>::rank(&comm), comm.world()), (0, 1));
        let host: Vec<Vec<f32>> = LENS
            .iter()
            .enumerate()
            .map(|(i, &n)| rand_vec(&mut rng(i as u64 + 1), n, 3.0))
            .collect();
        let up = |h: &[Vec<f32>]| h.iter().map(|x| be.upload(x)).collect::<Vec<_>>();
        let down =
            |b: &[_]| -> Vec<f32> { b.iter().flat_map(|x| be.download(x)).collect::<Vec<f32>>() };
        let flat = host.concat();
        // all-reduce and broadcast: in place, the values themselves.
        let (mut a, mut s) = (up(&host), up(&host));
        comm.all_reduce_sum(&be, &mut a).unwrap();
        Single.all_reduce_sum(&be, &mut s).unwrap();
        assert_eq!(bits(&down(&a)), bits(&down(&s)));
        assert_eq!(bits(&down(&a)), bits(&flat), "all-reduce");
        comm.broadcast(&be, &mut a, 0).unwrap();
        assert_eq!(bits(&down(&a)), bits(&flat), "broadcast");
        assert!(comm.broadcast(&be, &mut a, 1).is_err(), "broadcast from rank 1 of 1");
        // reduce-scatter: the one block is everything.
        let rs = be.download(&comm.reduce_scatter_sum(&be, &a).unwrap());
        let single = be.download(&Single.reduce_scatter_sum(&be, &s).unwrap());
        assert_eq!(bits(&rs), bits(&single));
        assert_eq!(bits(&rs), bits(&flat), "reduce-scatter");
        // all-gather into buffers poisoned with NaN.
        let other = rand_vec(&mut rng(99), flat.len(), 3.0);
        let poison: Vec<Vec<f32>> = LENS.iter().map(|&n| vec![f32::NAN; n]).collect();
        let mut g = up(&poison);
        comm.all_gather(&be, &be.upload(&other), &mut g).unwrap();
        assert_eq!(bits(&down(&g)), bits(&other), "all-gather");
        assert!(comm.all_gather(&be, &be.upload(&other[1..]), &mut g).is_err(), "short block");
        // The host side: Single's results.
        let mut xs = [1.5, -2.0, 1e300];
        comm.all_reduce_sum_host(&mut xs).unwrap();
        assert_eq!(xs, [1.5, -2.0, 1e300]);
        assert_eq!(comm.all_gather_host(&[3.0, 4.0]).unwrap(), vec![vec![3.0, 4.0]]);
        assert_eq!(comm.all_gather_bytes(b"abcde").unwrap(), vec![b"abcde".to_vec()]);
        assert_eq!(comm.gather_to_root(&[0.25, 7.0], 0).unwrap(), vec![vec![0.25, 7.0]]);
        comm.barrier().unwrap();
        // Picked through the launcher's choice, as the commands do.
        let world = World::Single;
        let c = world.comm_for(&be, CollectiveChoice::Nccl).unwrap();
        assert_eq!((c.rank(), c.world()), (0, 1));
        // auto in a world of one keeps the plain path (no NCCL).
        world.comm_for(&be, CollectiveChoice::Auto).unwrap();
    }

    #[derive(Parser)]
    struct Sft {
        #[command(flatten)]
        args: mmr1_fast::commands::sft::SftArgs,
    }

    #[derive(Parser)]
    struct Train {
        #[command(flatten)]
        args: mmr1_fast::commands::train::TrainArgs,
    }

    fn weights(dir: &Path) -> Vec<f32> {
        Qwen2::load(&Cpu, dir).unwrap().to_host(&Cpu).concat()
    }

    /// metrics.jsonl without what depends on the clock or the allocator.
    fn metrics(out: &Path) -> Vec<serde_json::Value> {
        fn strip(v: &mut serde_json::Value) {
            if let Some(m) = v.as_object_mut() {
                m.retain(|k, _| {
                    !["time", "second", "per_s", "memory", "wall", "elapsed"]
                        .iter()
                        .any(|w| k.contains(w))
                });
                m.values_mut().for_each(strip);
            }
        }
        let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        text.lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                strip(&mut v);
                v
            })
            .collect()
    }

    /// The NCCL run `nccl` ended as the plain run `plain` did. On a difference, `again` runs
    /// the plain run once more, so the message says whether plain GPU runs repeat themselves
    /// (a difference is then NCCL's) or not (the check cannot tell).
    fn same_run(
        plain: &Path,
        nccl: &Path,
        weights_of: impl Fn(&Path) -> Vec<f32>,
        again: impl FnOnce() -> std::path::PathBuf,
        what: &str,
    ) {
        let (a, b) = (weights_of(plain), weights_of(nccl));
        let (ma, mb) = (metrics(plain), metrics(nccl));
        assert!(!ma.is_empty());
        if bits(&a) == bits(&b) && ma == mb {
            return;
        }
        let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        let p2 = again();
        let repeats = bits(&weights_of(&p2)) == bits(&a) && metrics(&p2) == metrics(plain);
        panic!(
            "{what}: weights or metrics differ from the plain run (max |weight diff| {d:e}, \
             metrics equal: {}); a second plain run {} the first",
            ma == mb,
            if repeats { "repeats" } else { "does NOT repeat" }
        );
    }

    #[test]
    #[ignore = "needs a GPU and libnccl: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn sft_with_nccl_in_a_world_of_one_equals_the_plain_run() {
        let tmp = tempfile::tempdir().unwrap();
        let model = tmp.path().join("model");
        write_tiny_model(&model, 32, 5);
        let data = tmp.path().join("data.jsonl");
        std::fs::write(&data, synthetic_jsonl(9)).unwrap();
        let run = |out: &Path, collective: &str, zero: &str| {
            // The command's flags, after the program name (`sft` is the subcommand's).
            let mut a = vec!["mmr1-fast".to_string()];
            a.extend(sft_args(&model, &data, out).into_iter().skip(1));
            a.extend(["--device", "cuda", "--collective", collective].map(String::from));
            a.extend(["--zero".to_string(), zero.to_string()]);
            let s = Sft::parse_from(&a);
            mmr1_fast::commands::sft::run(&s.args, &World::Single).unwrap();
        };
        let dir = |n: &str| tmp.path().join(n);
        run(&dir("plain"), "auto", "0");
        run(&dir("nccl"), "nccl", "0");
        let again = || {
            run(&dir("plain2"), "auto", "0");
            dir("plain2")
        };
        same_run(&dir("plain"), &dir("nccl"), weights, again, "sft --collective nccl");
        // ZeRO-2 over NCCL (its bucketed reduce-scatter and all-gather in a world of one)
        // against ZeRO-2 on the plain collective: the same algorithm, so the same bits. Not
        // against ZeRO-0 here: there a micro-batch's weight gradients accumulate in the GEMM
        // (beta 1), under ZeRO-2 in the bucket reduction, and cuBLAS picks other kernels for
        // beta 0 and 1 (2026-11-27, H100: grad norms 7e-10 apart). The CPU and emulator tests
        // compare ZeRO-2 with ZeRO-0 (tests/suite/dp_sft.rs).
        run(&dir("plain-z2"), "auto", "2");
        run(&dir("nccl-z2"), "nccl", "2");
        let again = || {
            run(&dir("plain-z2b"), "auto", "2");
            dir("plain-z2b")
        };
        let what = "sft --collective nccl --zero 2";
        same_run(&dir("plain-z2"), &dir("nccl-z2"), weights, again, what);
    }

    #[test]
    #[ignore = "needs a GPU and libnccl: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn train_with_nccl_in_a_world_of_one_equals_the_plain_run() {
        use mmr1_fast::pipeline::config::TrainConfig;
        let tmp = tempfile::tempdir().unwrap();
        // The demo's model and data, cut small: 24 SFT examples, 4 RL items, no evaluation.
        let mut cfg = TrainConfig::demo();
        mmr1_fast::pipeline::demo_setup::materialize_demo(&mut cfg, tmp.path()).unwrap();
        let cut = |p: &Path, n: usize| {
            let t = std::fs::read_to_string(p).unwrap();
            let kept: String = t.lines().take(n).map(|l| format!("{l}\n")).collect();
            std::fs::write(p, kept).unwrap();
        };
        cut(&cfg.data.sft, 24);
        cut(&cfg.data.rl, 4);
        let sets = [
            format!("model.dir={:?}", cfg.model.dir),
            format!("data.sft={:?}", cfg.data.sft),
            format!("data.rl={:?}", cfg.data.rl),
            "data.eval=\"\"".to_string(),
            "sft.epochs=1".into(),
            "sft.batch_size=8".into(),
            "rl.steps=2".into(),
            "rl.batch_size=4".into(),
            "rl.group_size=4".into(),
            "rl.max_new_tokens=16".into(),
            "rl.mini_batches=2".into(),
            "rl.kl_coef=0.01".into(),
            "rl.overlong_buffer_len=8".into(),
            "rl.overlong_penalty_factor=1.0".into(),
            "vas.t_update=1".into(),
            "vas.score_rollouts=2".into(),
            "output.checkpoint_every=2".into(),
        ];
        let run = |out: &Path, collective: &str| {
            let mut a: Vec<String> = vec!["mmr1-fast".into(), "--out".into()];
            a.push(out.display().to_string());
            for s in &sets {
                a.extend(["--set".into(), s.clone()]);
            }
            a.extend(["--device", "cuda", "--collective", collective].map(String::from));
            let t = Train::parse_from(&a);
            mmr1_fast::commands::train::run(&t.args, &World::Single).unwrap();
        };
        let dir = |n: &str| tmp.path().join(n);
        run(&dir("plain"), "auto");
        run(&dir("nccl"), "nccl");
        let again = || {
            run(&dir("plain2"), "auto");
            dir("plain2")
        };
        let ck = |o: &Path| weights(&o.join("rl/checkpoint-2"));
        same_run(&dir("plain"), &dir("nccl"), ck, again, "train --collective nccl");
    }
}
