//! The CUDA emulator is a hostile GPU (kernels/emu/cuda_emu.h): each bug planted in
//! kernels/emu/planted_bugs.cu is reported under at least one of the CI schedules, and each
//! fixed variant passes them all. Also the sm_90 launch limits and the device-side id checks.
//! Run with `--nocapture` to see how many outputs each schedule gets wrong.
#![cfg(feature = "emu")]

use mmr1_fast::backend::cuda::device::{Arg, Device};
use mmr1_fast::backend::cuda::emu::{EmuDevice, EmuMem, Schedule};
use mmr1_fast::backend::cuda::CudaBackend;
use mmr1_fast::backend::Backend;
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

fn up(d: &EmuDevice, v: &[f32]) -> EmuMem {
    d.upload(bytemuck::cast_slice(v))
}
fn down(d: &EmuDevice, m: &EmuMem, n: usize) -> Vec<f32> {
    bytemuck::cast_slice(&d.download(m, n * 4)).to_vec()
}
thread_local!(static EXPECTING_PANIC: Cell<bool> = const { Cell::new(false) });

/// The panic message of `f`, or None when it returned. The expected panic is not printed.
fn panic_of(f: impl FnOnce()) -> Option<String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !EXPECTING_PANIC.with(|e| e.get()) {
                default(info)
            }
        }));
    });
    EXPECTING_PANIC.with(|e| e.set(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    EXPECTING_PANIC.with(|e| e.set(false));
    r.err().map(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}
fn single(s: Schedule) -> EmuDevice {
    EmuDevice::with_schedules(&[s])
}
/// A few more random seeds than CI's, for the measurements printed.
fn measured() -> Vec<Schedule> {
    let mut v = Schedule::CI.to_vec();
    v.extend([Schedule::Random(2), Schedule::Random(3), Schedule::Starve(1)]);
    v
}

/// Runs a planted kernel under every schedule of `measured()`, prints the number of wrong
/// outputs of each, and checks that CI's schedules report it: some single schedule gives
/// wrong outputs, and the multi-schedule device (as kernels_vs_cpu runs) fails the launch as
/// schedule-dependent. The fixed variant is right under every schedule.
fn check_race(what: &str, run: &dyn Fn(&EmuDevice, i32) -> usize) {
    let counts: Vec<(String, usize)> =
        measured().iter().map(|&s| (s.to_string(), run(&single(s), 0))).collect();
    eprintln!("{what}: wrong outputs per schedule {counts:?}");
    assert!(
        counts[..Schedule::CI.len()].iter().any(|c| c.1 > 0),
        "{what}: no CI schedule shows the race"
    );
    let all = EmuDevice::with_schedules(&Schedule::CI);
    let msg = panic_of(|| {
        run(&all, 0);
    })
    .unwrap_or_else(|| panic!("{what}: the multi-schedule emulator did not report the race"));
    assert!(msg.contains("schedule-dependent"), "{what}: {msg}");
    for s in measured() {
        assert_eq!(run(&single(s), 1), 0, "{what}: the fixed kernel is wrong under {s}");
    }
    assert_eq!(run(&all, 1), 0);
}

#[test]
fn missing_barrier_writer_below_and_above_the_readers() {
    for (n, writer) in [(1024u32, 0i32), (1024, 1023), (32, 0), (32, 31)] {
        check_race(&format!("missing barrier, writer thread {writer} of {n}"), &|d, fixed| {
            let input = up(d, &[3.25]);
            let out = d.alloc(n as usize * 4);
            d.launch(
                "planted_missing_barrier",
                [1, 1, 1],
                [n, 1, 1],
                0,
                &[Arg::Ptr(&out), Arg::Ptr(&input), Arg::I32(writer), Arg::I32(fixed)],
            );
            let o = down(d, &out, n as usize);
            o.iter().enumerate().filter(|(t, v)| **v != 3.25 + *t as f32).count()
        });
    }
}

/// A kernel that updates buffers it reaches through a device table (`BufSpan` rows, as the
/// optimizer's `fill_many_f32` and `adamw_many_f32` do), none of them a launch argument: the
/// several-schedule emulator runs each schedule from the same contents of those buffers (the
/// fixed kernel's `+=` lands once, not once per schedule) and compares them, so the planted
/// race through the table is reported, naming the table.
#[test]
fn a_race_through_a_device_table() {
    // Ragged lengths; 256-thread blocks, one block per 512 values (so threads also stride).
    let lens = [300usize, 1, 77, 513];
    let host: Vec<Vec<f32>> = lens
        .iter()
        .enumerate()
        .map(|(k, &n)| (0..n).map(|i| 1.0 + ((i * 7 + k * 3) % 13) as f32 * 0.25).collect())
        .collect();
    // What each element should become: its own value plus (fixed) 1 + (i % 7) / 2, or (the
    // racy kernel's intent) its right neighbour as it was before the launch.
    let want = |k: usize, i: usize, fixed: i32| -> f32 {
        let h = &host[k];
        h[i] + if fixed == 1 {
            1.0 + 0.5 * (i % 7) as f32
        } else if i + 1 < h.len() {
            h[i + 1]
        } else {
            1.0
        }
    };
    let run = |d: &EmuDevice, fixed: i32| -> usize {
        let bufs: Vec<EmuMem> = host.iter().map(|h| up(d, h)).collect();
        let (mut rows, mut first) = (Vec::<u64>::new(), 0u64);
        for (b, &n) in bufs.iter().zip(&lens) {
            let blocks = n.div_ceil(512) as u64;
            rows.extend([d.addr(b), n as u64, first, blocks]);
            first += blocks;
        }
        let table = d.upload(bytemuck::cast_slice(&rows));
        d.launch(
            "planted_table_accumulate",
            [first as u32, 1, 1],
            [256, 1, 1],
            0,
            &[Arg::Ptr(&table), Arg::I32(lens.len() as i32), Arg::I32(fixed)],
        );
        let mut wrong = 0;
        for (k, (b, &n)) in bufs.iter().zip(&lens).enumerate() {
            let got = down(d, b, n);
            wrong += (0..n).filter(|&i| got[i].to_bits() != want(k, i, fixed).to_bits()).count();
        }
        wrong
    };
    check_race("in-place update through a device table, 256 threads", &run);
    let msg = panic_of(|| {
        run(&EmuDevice::with_schedules(&Schedule::CI), 0);
    })
    .expect("reported");
    assert!(msg.contains("reached through a device table (argument 0"), "{msg}");
}

#[test]
fn shared_buffer_reused_without_barrier() {
    let n = 256usize;
    let x: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 * 0.5).collect();
    check_race("shared buffer reused without a barrier, 256 threads", &|d, fixed| {
        let input = up(d, &x);
        let out = d.alloc(n * 4);
        d.launch(
            "planted_reuse_without_barrier",
            [1, 1, 1],
            [n as u32, 1, 1],
            0,
            &[Arg::Ptr(&out), Arg::Ptr(&input), Arg::I32(fixed)],
        );
        let o = down(d, &out, n);
        (0..n).filter(|&t| o[t] != 2.0 * x[(t + 2) % n] + x[(t + 1) % n]).count()
    });
}

#[test]
fn syncwarp_where_syncthreads_is_needed() {
    let x: Vec<f32> = (0..32).map(|i| i as f32 - 7.5).collect();
    check_race("__syncwarp instead of __syncthreads between warps, 64 threads", &|d, fixed| {
        let input = up(d, &x);
        let out = d.alloc(32 * 4);
        d.launch(
            "planted_syncwarp_for_syncthreads",
            [1, 1, 1],
            [64, 1, 1],
            0,
            &[Arg::Ptr(&out), Arg::Ptr(&input), Arg::I32(fixed)],
        );
        let o = down(d, &out, 32);
        (0..32).filter(|&t| o[t] != x[t]).count()
    });
}

#[test]
fn exited_lanes_and_divergent_syncthreads_are_errors() {
    for s in Schedule::CI {
        let d = single(s);
        let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
        let (input, out) = (up(&d, &x), d.alloc(64 * 4));
        let exited = |fixed: i32| {
            panic_of(|| {
                d.launch(
                    "planted_exited_lane",
                    [1, 1, 1],
                    [64, 1, 1],
                    0,
                    &[Arg::Ptr(&out), Arg::Ptr(&input), Arg::I32(fixed)],
                )
            })
        };
        let msg =
            exited(0).unwrap_or_else(|| panic!("{s}: shuffle naming an exited lane accepted"));
        assert!(msg.contains("exited"), "{s}: {msg}");
        assert!(exited(1).is_none());
        let sync = |fixed: i32| {
            panic_of(|| {
                d.launch(
                    "planted_divergent_syncthreads",
                    [1, 1, 1],
                    [64, 1, 1],
                    0,
                    &[Arg::Ptr(&out), Arg::I32(fixed)],
                )
            })
        };
        let msg = sync(0).unwrap_or_else(|| panic!("{s}: divergent __syncthreads accepted"));
        assert!(msg.contains("__syncthreads"), "{s}: {msg}");
        assert!(sync(1).is_none());
    }
}

fn shuffle(d: &EmuDevice, threads: u32, mask: u32, src: i32) -> Vec<f32> {
    let x: Vec<f32> = (0..threads).map(|i| i as f32 + 0.5).collect();
    let (input, out) = (up(d, &x), d.alloc(threads as usize * 4));
    d.launch(
        "planted_shuffle",
        [1, 1, 1],
        [threads, 1, 1],
        0,
        &[Arg::Ptr(&out), Arg::Ptr(&input), Arg::U32(mask), Arg::I32(src)],
    );
    down(d, &out, threads as usize)
}

#[test]
fn shuffle_from_a_missing_lane_or_one_outside_the_mask_is_poison() {
    for s in Schedule::CI {
        let d = single(s);
        // 48 threads: the second warp has lanes 0..15 only, lane 31 does not exist.
        let o = shuffle(&d, 48, u32::MAX, 31);
        assert!(o[..32].iter().all(|v| *v == 31.5), "{s}: {o:?}");
        assert!(o[32..].iter().all(|v| v.is_nan()), "{s}: read a lane outside the block: {o:?}");
        // Lanes 0..15 shuffle among themselves; lane 20 is not in their mask.
        let o = shuffle(&d, 64, 0xffff, 20);
        for w in 0..2 {
            assert!(
                o[32 * w..32 * w + 16].iter().all(|v| v.is_nan()),
                "{s}: lane outside the mask"
            );
        }
        // The fixed variant: a source inside block and mask.
        let o = shuffle(&d, 64, 0xffff, 5);
        for t in [0usize, 15, 32, 47] {
            assert_eq!(o[t], (t / 32 * 32) as f32 + 5.5, "{s}: thread {t}");
        }
    }
}

#[test]
fn lanes_at_different_warp_ops_or_widths_are_an_error() {
    for s in Schedule::CI {
        let d = single(s);
        let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
        let run = |op: i32, fixed: i32| {
            let (input, out) = (up(&d, &x), d.alloc(64 * 4));
            d.launch(
                "planted_divergent_shuffle",
                [1, 1, 1],
                [64, 1, 1],
                0,
                &[Arg::Ptr(&out), Arg::Ptr(&input), Arg::I32(op), Arg::I32(fixed)],
            );
            down(&d, &out, 64)
        };
        for op in [0, 1] {
            let msg = panic_of(|| {
                run(op, 0);
            })
            .unwrap_or_else(|| panic!("{s}: divergent warp op {op} not reported"));
            assert!(msg.contains("different warp ops"), "{s}: {msg}");
            assert!(msg.contains("planted_divergent_shuffle"), "the error names the kernel: {msg}");
        }
        let o = run(0, 1);
        assert_eq!(o[0], 1.0);
        assert_eq!(o[1], 0.0);
    }
}

#[test]
fn read_of_unwritten_shared_memory_is_poison() {
    for s in Schedule::CI {
        let d = single(s);
        let x: Vec<f32> = (0..64).map(|i| i as f32 + 1.0).collect();
        for dynamic in [0, 1] {
            let run = |fixed: i32| {
                let (input, out) = (up(&d, &x), d.alloc(64 * 4));
                d.launch(
                    "planted_unwritten_shared",
                    [2, 1, 1],
                    [64, 1, 1],
                    256,
                    &[Arg::Ptr(&out), Arg::Ptr(&input), Arg::I32(dynamic), Arg::I32(fixed)],
                );
                down(&d, &out, 64)
            };
            let o = run(0);
            assert_eq!(o.iter().filter(|v| v.is_nan()).count(), 32, "{s} dynamic={dynamic}: {o:?}");
            let o = run(1);
            assert!((0..64).all(|t| o[t] == x[63 - t]), "{s} dynamic={dynamic}: {o:?}");
        }
    }
}

/// cp.async writes shared memory only at the wait that covers its commit group: a read before
/// it sees the poison (NaN), under every schedule but the reverse one (which lands copies at
/// their issue too: `cp_async_over_a_pending_read_is_a_race`), so the multi-schedule run
/// reports it as schedule-dependent; the correct pipeline reads the inputs under all.
#[test]
fn cp_async_read_before_its_wait_sees_poison() {
    let n = 96usize; // three warps
    let x: Vec<f32> = (0..8 * n).map(|i| i as f32 * 0.25 - 17.0).collect();
    let run = |d: &EmuDevice, bug: i32| {
        let (input, out) = (up(d, &x), d.alloc(8 * n * 4));
        d.launch(
            "planted_cp_async_wait",
            [2, 1, 1],
            [n as u32, 1, 1],
            (8 * n * 4) as u32,
            &[Arg::Ptr(&out), Arg::Ptr(&input), Arg::I32(bug)],
        );
        down(d, &out, 8 * n)
    };
    let all = EmuDevice::with_schedules(&Schedule::CI);
    assert_eq!(run(&all, 0), x, "every schedule: the correct pipeline");
    for bug in 1..=3 {
        let msg = panic_of(|| {
            run(&all, bug);
        });
        assert!(msg.is_some_and(|m| m.contains("schedule-dependent")), "bug {bug}: not reported");
    }
    for s in Schedule::CI {
        let d = single(s);
        let eager = s == Schedule::Reverse;
        assert_eq!(run(&d, 0), x, "{s}: the correct pipeline");
        let nan_in = |o: &[f32]| o.iter().filter(|v| v.is_nan()).count();
        for (bug, what, first_half_nan, second_half_nan) in [
            (1, "group A read before any wait", true, false),
            (2, "group B read after wait_group 1", false, true),
            // with B uncommitted, A is the newest committed group: wait_group 1 leaves it pending too
            (3, "group B never committed", true, true),
        ] {
            let o = run(&d, bug);
            let (a, b) = o.split_at(4 * n);
            assert_eq!(nan_in(a) == 4 * n, first_half_nan && !eager, "{s}: {what}: {a:?}");
            assert_eq!(nan_in(b) == 4 * n, second_half_nan && !eager, "{s}: {what}: {b:?}");
            assert!(a.iter().chain(b).all(|v| v.is_nan() || x.contains(v)), "{s}: {what}");
        }
    }
}

/// A cp.async issued over shared memory another thread has not finished reading: the GPU may
/// land it at once, the emulator lands it at the issue under the reverse schedule (at the wait
/// under the others), so the read sees the new data there and the schedules disagree.
#[test]
fn cp_async_over_a_pending_read_is_a_race() {
    check_race("cp.async over a pending read", &|d, fixed| {
        let n = 64usize;
        let x: Vec<f32> = (0..8 * n).map(|i| i as f32 * 0.5 - 3.0).collect();
        let (input, out) = (up(d, &x), d.alloc(4 * n * 4));
        d.launch(
            "planted_cp_async_over_a_read",
            [1, 1, 1],
            [n as u32, 1, 1],
            (4 * n * 4) as u32,
            &[Arg::Ptr(&out), Arg::Ptr(&input), Arg::I32(fixed)],
        );
        let o = down(d, &out, 4 * n);
        o.iter().zip(&x).filter(|(g, w)| g != w).count()
    });
}

/// ldmatrix reads rows that other lanes of the warp write: without a __syncwarp between, the
/// schedules disagree on whether a row is read before or after its write. With it, the
/// rows the lanes overwrite right after the ldmatrix do not change what it loaded: the warp's
/// load completes as one instruction on the GPU, and on the emulator each lane reads its row
/// when it reaches the instruction (a lane that runs on past the warp's meeting cannot change
/// another lane's fragment).
#[test]
fn ldmatrix_of_rows_written_without_syncwarp_is_a_race() {
    let x: Vec<f32> = (0..64).map(|i| (i + 1) as f32).collect();
    check_race("ldmatrix of rows written without __syncwarp", &|d, fixed| {
        let (input, out) = (up(d, &x), d.alloc(64 * 4));
        d.launch(
            "planted_ldmatrix_rows",
            [1, 1, 1],
            [32, 1, 1],
            0,
            &[Arg::Ptr(&out), Arg::Ptr(&input), Arg::I32(fixed)],
        );
        let o = down(d, &out, 64);
        // Lane l holds row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1 (PTX ISA, ldmatrix).
        (0..64).filter(|&i| o[i] != x[8 * (i / 8) + 2 * (i / 2 % 4) + i % 2]).count()
    });
}

/// wgmma computes at the wait that covers its commit group, from shared memory as it is then:
/// accumulators read before the wait are NaN, a B tile overwritten before it gives the new
/// tile's product, an uncommitted operation is not waited for, and rewriting A's registers
/// before the wait is an error; the correct order gives the column sums of B (every element
/// of A is 1).
#[test]
fn wgmma_results_arrive_at_their_wait() {
    for s in Schedule::CI {
        let d = single(s);
        let x: Vec<f32> = (0..16 * 64).map(|i| ((i * 7 % 23) as f32 - 11.0) * 0.25).collect();
        let run = |bug: i32| {
            let (input, out) = (up(&d, &x), d.alloc(64 * 64 * 4));
            d.launch(
                "planted_wgmma_async",
                [1, 1, 1],
                [128, 1, 1],
                16 * 64 * 2,
                &[Arg::Ptr(&out), Arg::Ptr(&input), Arg::I32(bug)],
            );
            down(&d, &out, 64 * 64)
        };
        let sums: Vec<f32> = (0..64).map(|n| (0..16).map(|k| x[k * 64 + n]).sum()).collect();
        let want: Vec<f32> = (0..64 * 64).map(|i| sums[i % 64]).collect();
        assert_eq!(run(0), want, "{s}: the correct order");
        assert!(run(1).iter().all(|v| v.is_nan()), "{s}: accumulators read before the wait");
        assert!(run(2).iter().all(|v| *v == 0.0), "{s}: B overwritten before the wait");
        assert!(run(3).iter().all(|v| v.is_nan()), "{s}: never committed");
        let err = panic_of(|| {
            run(4);
        })
        .expect("A registers rewritten before the wait: no error");
        assert!(err.contains("A registers"), "{s}: {err}");
    }
}

#[test]
fn sm90_launch_limits() {
    let d = single(Schedule::Forward);
    let out = d.alloc(4 * 1024);
    let fill = |grid: [u32; 3], block: [u32; 3]| {
        panic_of(|| {
            d.launch("fill_f32", grid, block, 0, &[Arg::Ptr(&out), Arg::I64(1), Arg::F32(1.0)])
        })
    };
    let msg = fill([1, 70_000, 1], [32, 1, 1]).expect("oversize grid y accepted");
    assert!(msg.contains("grid") && msg.contains("fill_f32") && msg.contains("70000"), "{msg}");
    assert!(fill([1, 1, 65_536], [32, 1, 1]).is_some(), "oversize grid z accepted");
    assert!(fill([1, 1, 1], [1, 1, 65]).is_some(), "blockDim.z 65 accepted");
    assert!(fill([1, 1, 1], [1025, 1, 1]).is_some(), "1025 threads accepted");
    assert!(fill([1, 1, 1], [64, 32, 1]).is_some(), "2048 threads accepted");
    assert!(fill([1, 65_535, 1], [1, 1, 1]).is_none(), "the largest grid y refused");
    // Static shared memory above 48 KB.
    let msg = panic_of(|| {
        d.launch("planted_big_static_shared", [1, 1, 1], [32, 1, 1], 0, &[Arg::Ptr(&out)])
    })
    .expect("52 KB of static shared memory accepted");
    assert!(msg.contains("48 KB"), "{msg}");
    // __launch_bounds__(128).
    let bounded = |t: u32| {
        panic_of(|| d.launch("planted_bounded", [1, 1, 1], [t, 1, 1], 0, &[Arg::Ptr(&out)]))
    };
    assert!(bounded(256)
        .expect("256 threads past __launch_bounds__(128)")
        .contains("__launch_bounds__"));
    assert!(bounded(128).is_none());
    // Dynamic shared memory above 48 KB needs the opt-in.
    let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let input = up(&d, &x);
    let dynamic = |bytes: u32| {
        panic_of(|| {
            d.launch(
                "planted_unwritten_shared",
                [1, 1, 1],
                [64, 1, 1],
                bytes,
                &[Arg::Ptr(&out), Arg::Ptr(&input), Arg::I32(1), Arg::I32(1)],
            )
        })
    };
    assert!(dynamic(64 * 1024).expect("64 KB dynamic without opt-in").contains("opt-in"));
    d.set_max_dynamic_shared("planted_unwritten_shared", 100 * 1024);
    assert!(dynamic(64 * 1024).is_none());
    assert!(dynamic(101 * 1024).is_some(), "more than the opted-in size accepted");
}

#[test]
fn ids_out_of_range_are_reported_by_the_kernel() {
    let b = CudaBackend::emulator();
    let (vocab, dim) = (5usize, 3usize);
    let table = b.upload(&(0..vocab * dim).map(|i| i as f32).collect::<Vec<_>>());
    let mut out = b.zeros(2 * dim);
    b.embedding(&mut out, &table, &[4, 1], dim);
    assert_eq!(b.download(&out), vec![12.0, 13.0, 14.0, 3.0, 4.0, 5.0]);
    let msg = panic_of(|| b.embedding(&mut out, &table, &[1, 5], dim)).expect("id 5 of 5 accepted");
    assert!(msg.contains("embedding_f32") && msg.contains("device check failed"), "{msg}");
    let mut dt = b.zeros(vocab * dim);
    let g = b.upload(&[1.0; 6]);
    let msg = panic_of(|| b.embedding_backward(&mut dt, &g, &[0, 7], dim)).expect("id 7 accepted");
    assert!(msg.contains("embedding_bwd_f32"), "{msg}");
    let logits = b.upload(&[0.5f32; 2 * 10]);
    let (mut lp, mut ent) = (b.zeros(2), b.zeros(2));
    let msg = panic_of(|| b.logprobs(&mut lp, &mut ent, &logits, &[3, 10], 2, 10, 1.0))
        .expect("target 10 of 10 accepted");
    assert!(msg.contains("logprobs_f32") && msg.contains("targets"), "{msg}");
}

#[test]
fn schedules_parse() {
    assert_eq!(Schedule::parse("random:7"), Ok(Schedule::Random(7)));
    assert_eq!(Schedule::parse(" starve "), Ok(Schedule::Starve(0)));
    assert_eq!(Schedule::parse_list("ci").unwrap(), Schedule::CI.to_vec());
    assert_eq!(
        Schedule::parse_list("forward,reverse").unwrap(),
        vec![Schedule::Forward, Schedule::Reverse]
    );
    assert!(Schedule::parse("sideways").unwrap_err().contains("sideways"));
    assert!(Schedule::parse("random:x").is_err());
    for s in Schedule::CI {
        assert_eq!(Schedule::parse(&s.to_string()), Ok(s));
    }
}
