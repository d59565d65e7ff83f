//! Data parallelism over MPI (feature `mpi`, CPU backend): real processes started by
//! `mpirun`, as a user launches them.
//!
//! - The collective itself (`MpiComm`) on 3 ranks: rank-order sums (the same bits as
//!   `ThreadGroup` and on every rank), broadcast, gathers of ragged lengths, barrier, and a
//!   length mismatch failing on every rank alike. This test binary runs itself under
//!   `mpirun` (the `#[ignore]`d `rank_body` is what each rank runs).
//! - `mpirun -np 2 mmr1-fast sft ...` and `mpirun -np 2 mmr1-fast train ...` (cold-start SFT,
//!   then GRPO + VAS with refreshes) end at the weights of the same command in one plain
//!   process, log each step exactly once, and (`train`) hold the same VPS table as the one
//!   process (every rank checks its table against rank 0's after each refresh: a rank that
//!   drifts fails the run). A third 2-rank `train`, with ZeRO-2, has rank 1 killed (SIGKILL)
//!   once RL step 2 is logged (rank 0 is then writing rl/checkpoint-2), is resumed by a new
//!   `mpirun -np 2 ... --zero 1 --resume`, logs every step once and ends at the
//!   uninterrupted run's bits.
//! - ZeRO (`--zero 1|2`, `dist::zero`): sft and train on 2 ranks give the `--zero 0` run's
//!   weights and checkpoint optimizer files bit for bit.
//!
//! Tolerance, as in docs/distributed.md: the ranks' summed gradient is the one-process
//! gradient with its f32 additions in another order, so weights agree to f32 rounding
//! amplified by AdamW, not bit for bit. Bound: lr * 1e-3 per optimizer step (measured values
//! are printed as `MEASURED`); the weights must also move by far more than the bound, so a
//! run that did not train cannot pass.
#![cfg(feature = "mpi")]

use crate::sft_common;
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::backend::Backend;
use mmr1_fast::dist::{Collective, MpiComm};
use mmr1_fast::model::Qwen2;
use sft_common::*;
use std::path::Path;
use std::process::{Command, Output};

/// `mpirun -np n` (as root too, and with more ranks than cores), or fails saying what to
/// install.
fn mpirun(n: usize) -> Command {
    let found = Command::new("mpirun").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "mpirun not found: the `mpi` feature's tests need Open MPI \
         (Debian: apt-get install openmpi-bin libopenmpi-dev)"
    );
    let mut c = Command::new("mpirun");
    c.args(["-np", &n.to_string(), "--oversubscribe", "--bind-to", "none"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        // Two ranks on two cores: one compute thread each.
        .env("RAYON_NUM_THREADS", "1");
    c
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mmr1-fast")
}

fn ok(o: &Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{what} failed ({}):\n{err}", o.status);
    err
}

// ---- the collective ----------------------------------------------------------------------

#[test]
fn mpi_collectives_on_three_ranks() {
    let exe = std::env::current_exe().unwrap();
    let o = mpirun(3)
        .arg(exe)
        .args([
            "--exact",
            "dp_mpi::rank_body",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    ok(&o, "mpirun -np 3 rank_body");
    assert_eq!(out.matches("RANK_OK").count(), 3, "every rank reports:\n{out}");
}

#[test]
#[ignore = "one rank of mpi_collectives_on_three_ranks: runs under mpirun only"]
fn rank_body() {
    if std::env::var("OMPI_COMM_WORLD_SIZE").is_err() {
        // Run by `--include-ignored` outside mpirun: mpi_collectives_on_three_ranks runs it.
        eprintln!("rank_body: not started by mpirun; nothing to do");
        return;
    }
    let comm = MpiComm::init().unwrap();
    let be = Cpu;
    let c: &dyn Collective<Cpu> = &comm;
    let (r, n) = (c.rank(), c.world());
    assert_eq!(n, 3, "started by mpirun -np 3");
    // Sums whose f32 value depends on the order: rank order is ((a + b) + c), from rank 0.
    let vals = [[1.0e8f32, 1.0, -3.5, 0.1], [-1.0e8, 0.25, 7.0, 0.2], [1.0, 0.5, 1e-3, 0.3]];
    let mut bufs = vec![be.upload(&vals[r][..1]), be.upload(&vals[r][1..])];
    c.all_reduce_sum(&be, &mut bufs).unwrap();
    let got: Vec<u32> = bufs.iter().flat_map(|b| be.download(b)).map(f32::to_bits).collect();
    let want: Vec<u32> =
        (0..4).map(|i| ((vals[0][i] + vals[1][i]) + vals[2][i]).to_bits()).collect();
    assert_eq!(got, want, "rank {r}: rank-order f32 sum");
    let mut h = [r as f64 + 0.5, 1e16, -(r as f64)];
    c.all_reduce_sum_host(&mut h).unwrap();
    assert_eq!(h, [4.5, 3e16, -3.0]);
    // Broadcast from rank 1.
    let x = r as f32;
    let mut bufs = vec![be.upload(&[x, x + 0.5]), be.upload(&[-x])];
    c.broadcast(&be, &mut bufs, 1).unwrap();
    assert_eq!(bufs.iter().flat_map(|b| be.download(b)).collect::<Vec<_>>(), vec![1.0, 1.5, -1.0]);
    // Gathers of ragged lengths (rank 0 sends nothing), and of nothing at all.
    let g = c.all_gather_host(&vec![r as f64; r]).unwrap();
    assert_eq!(g, vec![vec![], vec![1.0], vec![2.0, 2.0]]);
    assert_eq!(c.all_gather_host(&[]).unwrap(), vec![Vec::<f64>::new(); 3]);
    assert_eq!(c.all_gather_bytes(&[]).unwrap(), vec![Vec::<u8>::new(); 3]);
    let bytes: Vec<u8> =
        (0..(5 * r as u8)).map(|i| i.wrapping_mul(53).wrapping_add(r as u8)).collect();
    let gb = c.all_gather_bytes(&bytes).unwrap();
    for (k, v) in gb.iter().enumerate() {
        let w: Vec<u8> =
            (0..(5 * k as u8)).map(|i| i.wrapping_mul(53).wrapping_add(k as u8)).collect();
        assert_eq!(v, &w, "rank {r}: bytes of rank {k}");
    }
    // The default byte packing (through f64 gathers) agrees with MPI's own byte gather.
    struct ViaHost<'a>(&'a MpiComm);
    impl Collective<Cpu> for ViaHost<'_> {
        fn rank(&self) -> usize {
            Collective::<Cpu>::rank(self.0)
        }
        fn world(&self) -> usize {
            Collective::<Cpu>::world(self.0)
        }
        fn all_reduce_sum(&self, be: &Cpu, b: &mut [Vec<f32>]) -> anyhow::Result<()> {
            self.0.all_reduce_sum(be, b)
        }
        fn broadcast(&self, be: &Cpu, b: &mut [Vec<f32>], root: usize) -> anyhow::Result<()> {
            self.0.broadcast(be, b, root)
        }
        fn all_reduce_sum_host(&self, xs: &mut [f64]) -> anyhow::Result<()> {
            Collective::<Cpu>::all_reduce_sum_host(self.0, xs)
        }
        fn all_gather_host(&self, xs: &[f64]) -> anyhow::Result<Vec<Vec<f64>>> {
            Collective::<Cpu>::all_gather_host(self.0, xs)
        }
        fn barrier(&self) -> anyhow::Result<()> {
            Collective::<Cpu>::barrier(self.0)
        }
        fn reduce_scatter_sum(&self, be: &Cpu, b: &[Vec<f32>]) -> anyhow::Result<Vec<f32>> {
            self.0.reduce_scatter_sum(be, b)
        }
        fn reduce_scatter_range(
            &self,
            be: &Cpu,
            b: &[Vec<f32>],
            start: usize,
            total: usize,
        ) -> anyhow::Result<Vec<f32>> {
            self.0.reduce_scatter_range(be, b, start, total)
        }
        fn all_gather(&self, be: &Cpu, m: &Vec<f32>, b: &mut [Vec<f32>]) -> anyhow::Result<()> {
            self.0.all_gather(be, m, b)
        }
        fn gather_to_root(&self, xs: &[f32], root: usize) -> anyhow::Result<Vec<Vec<f32>>> {
            Collective::<Cpu>::gather_to_root(self.0, xs, root)
        }
    }
    assert_eq!(ViaHost(&comm).all_gather_bytes(&bytes).unwrap(), gb);
    c.barrier().unwrap();
    // ZeRO's exchanges: each rank's block of the flat concatenation is the same slice of the
    // all-reduce, bit for bit, and the all-gather puts the blocks back. Lengths 4+0+3 = 7
    // over 3 ranks (blocks 3, 2, 2; a boundary inside a tensor), and 2 (rank 2's block empty).
    for lens in [&[4usize, 0, 3][..], &[2][..]] {
        let vals: Vec<Vec<f32>> = lens
            .iter()
            .enumerate()
            .map(|(t, &k)| {
                (0..k)
                    .map(|i| ((i + 3 * t + 1) as f32 * 0.37).powi(r as i32 * 3 + 1) - 1.3)
                    .collect()
            })
            .collect();
        let bufs: Vec<Vec<f32>> = vals.iter().map(|v| be.upload(v)).collect();
        let mut summed = bufs.clone();
        c.all_reduce_sum(&be, &mut summed).unwrap();
        let summed = summed.concat();
        let block = c.reduce_scatter_sum(&be, &bufs).unwrap();
        let range = mmr1_fast::dist::shard(summed.len(), r, n);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&be.download(&block)), bits(&summed[range]), "rank {r}: {lens:?}");
        let mut back: Vec<Vec<f32>> = lens.iter().map(|&k| vec![f32::NAN; k]).collect();
        c.all_gather(&be, &block, &mut back).unwrap();
        assert_eq!(bits(&back.concat()), bits(&summed), "rank {r}: all-gather {lens:?}");
        // ZeRO-2's buckets: every piece of the flat vector (a boundary inside or outside the
        // blocks, empty pieces) gives this rank's part of its block, the all-reduce's bits.
        let flat: Vec<f32> = vals.concat();
        let total = flat.len();
        for lo in 0..=total {
            for hi in lo..=total {
                let part = c.reduce_scatter_range(&be, &[flat[lo..hi].to_vec()], lo, total);
                let part = be.download(&part.unwrap());
                let want = mmr1_fast::dist::block_in_piece(total, r, n, lo..hi);
                let want = &summed[lo + want.start..lo + want.end];
                assert_eq!(bits(&part), bits(want), "rank {r}: piece {lo}..{hi} of {lens:?}");
            }
        }
    }
    // Ragged host gathers to one rank (rank 0 sends nothing); the others receive nothing.
    let mine: Vec<f32> = (0..r).map(|i| (10 * r + i) as f32).collect();
    let g = c.gather_to_root(&mine, 1).unwrap();
    if r == 1 {
        assert_eq!(g, vec![vec![], vec![10.0], vec![20.0, 21.0]]);
    } else {
        assert!(g.is_empty());
    }
    let e = c.reduce_scatter_sum(&be, &[vec![1.0; 2 + r]]).unwrap_err().to_string();
    assert!(e.contains("rank 1 passed 3 values, rank 0 passed 2"), "{e}");
    // A length mismatch fails on every rank alike (and leaves none waiting).
    let mut bad = vec![be.upload(&vec![1.0; 2 + r])];
    let e = c.all_reduce_sum(&be, &mut bad).unwrap_err().to_string();
    assert!(e.contains("rank 1 passed 3 values, rank 0 passed 2"), "{e}");
    let mut bad = vec![1.0; 1 + r];
    let e = c.all_reduce_sum_host(&mut bad).unwrap_err().to_string();
    assert!(e.contains("rank 1 passed 2 values, rank 0 passed 1"), "{e}");
    // NCCL's bootstrap over MPI (dist::nccl::bootstrap_id, no GPU needed): rank 0's 128-byte
    // id reaches every rank (each rank's maker would make its own), and a rank that cannot
    // open NCCL fails every rank, naming it.
    #[cfg(feature = "cuda")]
    {
        use mmr1_fast::dist::nccl::bootstrap_id;
        let made = |k: usize| -> [u8; 128] { std::array::from_fn(|i| (i * 5 + k) as u8) };
        assert_eq!(bootstrap_id(c, Ok(()), || Ok(made(r))).unwrap(), made(0), "rank {r}");
        let probed = if r == 2 { Err("NCCL library not found".into()) } else { Ok(()) };
        let e = bootstrap_id(c, probed, || Ok(made(r))).unwrap_err().to_string();
        assert!(e.contains("1 of 3 rank(s): rank 2: NCCL library not found"), "{e}");
    }
    println!("RANK_OK {r}");
}

// ---- the commands --------------------------------------------------------------------------

/// Starts `launch` (an `mpirun -np 2 ... train` into `out`), and once RL step 2 is logged
/// kills rank 1 (SIGKILL; Open MPI's ranks are mpirun's children, rank in their environment);
/// mpirun then ends the job. Returns the last RL step logged before the kill.
fn kill_rank_1_during_rl(launch: &mut Command, out: &Path) -> u64 {
    use std::time::{Duration, Instant};
    let mut child = launch
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let rank_1 = |parent: u32| -> Option<u32> {
        for e in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
            let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
            let ppid = status.lines().find_map(|l| l.strip_prefix("PPid:")).map(|v| v.trim());
            if ppid != Some(&parent.to_string()) {
                continue;
            }
            let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
            if env.split(|&b| b == 0).any(|v| v == b"OMPI_COMM_WORLD_RANK=1") {
                return Some(pid);
            }
        }
        None
    };
    let t0 = Instant::now();
    loop {
        // Read while rank 0 appends: a line may be torn.
        let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap_or_default();
        let logged: Vec<u64> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["phase"] == "rl" && v.get("event").is_none())
            .filter_map(|v| v["step"].as_u64())
            .collect();
        // After step 2 is logged, rank 0 writes rl/checkpoint-2: the kill may land during
        // the write (atomic: the resume starts from it or from the SFT checkpoint).
        if let Some(&last) = logged.last().filter(|&&l| l >= 2) {
            let pid = rank_1(child.id()).expect("rank 1 of the launch");
            let killed = Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
            assert!(killed.success());
            let status = child.wait().unwrap();
            assert!(!status.success(), "mpirun reports the killed rank");
            return last;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before it could be killed after RL step 2");
        }
        assert!(t0.elapsed() < Duration::from_secs(600), "no RL step logged in 10 minutes");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Steps of `phase` ("sft" / "rl") in metrics.jsonl, in order (RL: step records only).
fn steps_logged(out: &Path, phase: &str) -> Vec<u64> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["phase"] == phase && v.get("event").is_none())
        .map(|v| v["step"].as_u64().unwrap())
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn weights(dir: &Path) -> Vec<f32> {
    Qwen2::load(&Cpu, dir).unwrap().to_host(&Cpu).concat()
}

/// Max |a - b| and max |a - start| (how far training moved the weights).
fn compare(a: &[f32], b: &[f32], start: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    let moved = a.iter().zip(start).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    (d, moved)
}

#[test]
fn sft_on_two_ranks_matches_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    write_tiny_model(&model, 32, 5);
    let data = tmp.path().join("data.jsonl");
    std::fs::write(&data, synthetic_jsonl(11)).unwrap();
    let lr = 1e-2f32;
    let args = |out: &Path| -> Vec<String> {
        let mut v: Vec<String> =
            ["sft", "--model", model.to_str().unwrap(), "--data"].map(String::from).to_vec();
        v.push(data.to_str().unwrap().into());
        v.extend(["--out".into(), out.to_str().unwrap().into()]);
        // 11 examples, 5 a step, 2 epochs: 6 steps, the last of one sequence (rank 1 has none).
        for (k, x) in [("--epochs", "2"), ("--batch-size", "5"), ("--micro-batch-tokens", "40")] {
            v.extend([k.to_string(), x.to_string()]);
        }
        v.extend(["--lr".into(), lr.to_string(), "--save-every".into(), "4".into()]);
        v.extend(["--device".into(), "cpu".into(), "--seed".into(), "3".into()]);
        v
    };
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    ok(
        &Command::new(bin()).args(args(&one)).env("RAYON_NUM_THREADS", "1").output().unwrap(),
        "sft",
    );
    let err = ok(&mpirun(2).arg(bin()).args(args(&two)).output().unwrap(), "mpirun -np 2 sft");
    assert!(err.contains("2 ranks"), "rank 0 announces the world:\n{err}");
    // Rank 0 alone prints the steps.
    assert_eq!(err.matches("step 6/6").count(), 1, "{err}");
    for out in [&one, &two] {
        assert_eq!(steps_logged(out, "sft"), (1..=6).collect::<Vec<_>>(), "{}", out.display());
        assert!(out.join("checkpoint-4").is_dir() && out.join("checkpoint-6").is_dir());
    }
    // ZeRO-1 and ZeRO-2 on the same 2 ranks: the replicated run's bits (dist::zero), and
    // checkpoints that hold the same consolidated optimizer state.
    // (ZeRO-2 with --grad-buckets false: the bucketed exchange adds several micro-batches
    // in another order, checked below.)
    for stage in ["1", "2"] {
        let z = tmp.path().join(format!("zero{stage}"));
        let mut a = args(&z);
        a.extend(["--zero".into(), stage.into(), "--grad-buckets".into(), "false".into()]);
        let err = ok(&mpirun(2).arg(bin()).args(a).output().unwrap(), "mpirun -np 2 sft --zero");
        assert!(err.contains(&format!("ZeRO-{stage}")), "rank 0 reports the stage:\n{err}");
        assert_eq!(steps_logged(&z, "sft"), (1..=6).collect::<Vec<_>>());
        assert_eq!(bits(&weights(&z)), bits(&weights(&two)), "sft --zero {stage}: weights");
        for ck in ["checkpoint-4", "checkpoint-6"] {
            let opt =
                |out: &Path| std::fs::read(out.join(ck).join("optimizer.safetensors")).unwrap();
            assert!(opt(&z) == opt(&two), "sft --zero {stage}: {ck}'s optimizer state");
        }
    }
    let bound = lr * 1e-3 * 6.0;
    // ZeRO-2 with the gradients reduce-scattered in buckets during the backward (the default
    // at --zero 2), stopped after the checkpoint of step 4 and resumed unbucketed: each step
    // logged once, and the --zero 0 run's weights to f32 rounding (several micro-batches per
    // rank, rank 1 none in step 6: the sums' order differs, dist::buckets).
    let zb = tmp.path().join("zero2-buckets");
    let base = [args(&zb), vec!["--zero".into(), "2".into()]].concat();
    let first = mpirun(2).arg(bin()).args(&base).args(["--max-steps", "4"]).output().unwrap();
    let err = ok(&first, "mpirun -np 2 sft --zero 2");
    assert!(err.contains("reduce-scattered during the backward"), "bucketed:\n{err}");
    let resumed = ["--resume", "latest", "--grad-buckets", "false"];
    ok(&mpirun(2).arg(bin()).args(&base).args(resumed).output().unwrap(), "resume unbucketed");
    assert_eq!(steps_logged(&zb, "sft"), (1..=6).collect::<Vec<_>>());
    let (d, moved) = compare(&weights(&zb), &weights(&two), &weights(&model));
    eprintln!("MEASURED sft 2 ranks --zero 2 bucketed (resumed unbucketed) vs --zero 0: max weight diff {d:.3e} (bound {bound:.1e}), moved {moved:.3e}");
    assert!(d <= bound && moved > 100.0 * bound, "bucketed ZeRO-2: {d} (moved {moved})");
    let (a, b, start) = (weights(&one), weights(&two), weights(&model));
    let (d, moved) = compare(&a, &b, &start);
    eprintln!("MEASURED sft 2 ranks vs 1 process: max weight diff {d:.3e} (bound {bound:.1e}), moved {moved:.3e}");
    assert!(d <= bound, "weights differ by {d} > {bound}");
    assert!(moved > 100.0 * bound, "training moved the weights only {moved}");
}

#[test]
fn train_on_two_ranks_matches_one_process() {
    use mmr1_fast::pipeline::config::TrainConfig;
    let tmp = tempfile::tempdir().unwrap();
    // The demo's model and data, cut small: 40 SFT examples, 8 RL items, no evaluation.
    let mut cfg = TrainConfig::demo();
    mmr1_fast::pipeline::demo_setup::materialize_demo(&mut cfg, tmp.path()).unwrap();
    let cut = |p: &Path, n: usize| {
        let t = std::fs::read_to_string(p).unwrap();
        std::fs::write(p, t.lines().take(n).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    };
    cut(&cfg.data.sft, 40);
    cut(&cfg.data.rl, 8);
    let sets = [
        format!("model.dir={:?}", cfg.model.dir),
        format!("data.sft={:?}", cfg.data.sft),
        format!("data.rl={:?}", cfg.data.rl),
        "data.eval=\"\"".to_string(),
        "model.device=\"cpu\"".into(),
        "sft.epochs=1".into(),
        "sft.batch_size=16".into(),
        "rl.steps=4".into(),
        "rl.batch_size=4".into(),
        "rl.group_size=4".into(),
        "rl.max_new_tokens=24".into(),
        "rl.mini_batches=2".into(),
        "rl.kl_coef=0.01".into(),
        // A few SFT steps leave accuracy at 0, so every group's accuracy reward is equal: DAPO's
        // overlong shaping (responses run into the last 16 of 24 tokens) gives the groups
        // reward variance, hence a real policy gradient.
        "rl.overlong_buffer_len=16".into(),
        "rl.overlong_penalty_factor=1.0".into(),
        "vas.t_update=2".into(),
        "vas.score_rollouts=2".into(),
        "output.checkpoint_every=2".into(),
    ];
    let args = |out: &Path| -> Vec<String> {
        let mut v = vec!["train".to_string(), "--out".into(), out.to_str().unwrap().into()];
        for s in &sets {
            v.extend(["--set".into(), s.clone()]);
        }
        v
    };
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    ok(
        &Command::new(bin()).args(args(&one)).env("RAYON_NUM_THREADS", "1").output().unwrap(),
        "train",
    );
    let err = ok(&mpirun(2).arg(bin()).args(args(&two)).output().unwrap(), "mpirun -np 2 train");
    assert!(err.contains("data parallel: 2 ranks"), "{err}");
    // The same 2 ranks with ZeRO-1 (optimizer moments sharded).
    let four = tmp.path().join("four");
    let mut zero1 = args(&four);
    zero1.extend(["--zero".into(), "1".into()]);
    ok(&mpirun(2).arg(bin()).args(zero1).output().unwrap(), "mpirun -np 2 train --zero 1");
    // The same 2-rank run with ZeRO-2, rank 1 killed during RL, then resumed by a new 2-rank
    // launch with ZeRO-1: the consolidated checkpoint is sharded again for the new stage.
    let three = tmp.path().join("three");
    let mut zero2 = args(&three);
    zero2.extend(["--zero".into(), "2".into()]);
    let killed_at = kill_rank_1_during_rl(mpirun(2).arg(bin()).args(zero2), &three);
    let resume = ["train", "--zero", "1", "--resume", three.to_str().unwrap()];
    ok(&mpirun(2).arg(bin()).args(resume).output().unwrap(), "mpirun -np 2 train --resume");
    eprintln!("MEASURED train: rank 1 killed after RL step {killed_at} was logged");
    for out in [&one, &two, &three, &four] {
        assert_eq!(steps_logged(out, "sft"), vec![1, 2, 3], "{}", out.display());
        assert_eq!(steps_logged(out, "rl"), vec![1, 2, 3, 4], "{}", out.display());
    }
    // ZeRO gives the replicated run's bits, and resuming is exact (CPU): the killed and
    // resumed ZeRO run ends at the uninterrupted run's bits, optimizer state included.
    let ck = |out: &Path| out.join("rl/checkpoint-4");
    let w2 = bits(&weights(&ck(&two)));
    assert_eq!(bits(&weights(&ck(&four))), w2, "train --zero 1 differs from --zero 0");
    assert_eq!(bits(&weights(&ck(&three))), w2, "the killed and resumed --zero 2 run differs");
    let opt = |out: &Path| std::fs::read(ck(out).join("optimizer.safetensors")).unwrap();
    assert!(opt(&four) == opt(&two) && opt(&three) == opt(&two), "optimizer state differs");
    // The groups had reward variance (a real policy gradient, not only the KL term).
    let text = std::fs::read_to_string(two.join("metrics.jsonl")).unwrap();
    let zero_var: Vec<f64> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["phase"] == "rl" && v.get("event").is_none())
        .map(|v| v["zero_var_frac"].as_f64().unwrap())
        .collect();
    assert!(zero_var.iter().all(|&z| z < 1.0), "zero-variance fractions {zero_var:?}");
    let state = |out: &Path| -> serde_json::Value {
        let p = out.join("rl/checkpoint-4/trainer_state.json");
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let (s1, s2) = (state(&one), state(&two));
    assert_eq!(s1["table"], s2["table"], "the VPS table of 2 ranks is the one process's");
    assert_eq!(s1["sampler_rng"], s2["sampler_rng"]);
    let (a, b) = (weights(&one.join("rl/checkpoint-4")), weights(&two.join("rl/checkpoint-4")));
    let (sa, sb) = (weights(&one.join("sft/checkpoint-3")), weights(&two.join("sft/checkpoint-3")));
    // SFT: 3 steps at sft.lr, bound lr * 1e-4 per step as tests/suite/dp_sft.rs.
    let (d_sft, _) = compare(&sa, &sb, &sa);
    let bound_sft = cfg.sft.lr * 3.0 * 1e-4;
    // GRPO: 4 steps x 2 mini-batches at rl.lr, from the SFT result. AdamW's first steps move
    // every weight by about lr whatever its gradient's size, so a weight whose gradient nearly
    // cancels carries the rounding difference at a visible fraction of lr (one weight of
    // 213,696 differs by 4.4e-6 = 0.04 lr here): bound the largest difference by 0.05 lr per
    // step, and the whole difference (L2) by 1e-3 of the distance GRPO moved the weights.
    let (d, moved) = compare(&a, &b, &sa);
    let l2 = |x: &[f32], y: &[f32]| -> f64 {
        x.iter().zip(y).map(|(p, q)| ((p - q) as f64).powi(2)).sum::<f64>().sqrt()
    };
    let rel = l2(&a, &b) / l2(&a, &sa);
    let bound = cfg.rl.lr * 8.0 * 0.05;
    eprintln!(
        "MEASURED train 2 ranks vs 1 process: after SFT max weight diff {d_sft:.3e} (bound \
         {bound_sft:.1e}); after GRPO max diff {d:.3e} (bound {bound:.1e}), L2 diff / L2 \
         GRPO move {rel:.2e} (bound 1e-3), GRPO moved max {moved:.3e}"
    );
    assert!(d_sft <= bound_sft, "SFT weights differ by {d_sft} > {bound_sft}");
    assert!(d <= bound, "GRPO weights differ by {d} > {bound}");
    assert!(rel <= 1e-3, "GRPO weights differ by {rel} of their movement");
    // Adam moves weights by about lr a step: a run that did not train cannot pass.
    assert!(moved > cfg.rl.lr * 8.0 * 0.5, "GRPO moved the weights only {moved}");
}
