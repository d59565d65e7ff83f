//! Checkpoint crash safety by fault injection: a failure at every file-system step of a save
//! (each file's create / write / fsync / rename, the directory rename, the `latest` pointer)
//! must leave the previous checkpoint and `latest` intact and loadable, and the next save must
//! succeed over whatever the failure left. Saving the same step twice replaces, never merges.

use crate::common;
use common::*;
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::fs::fault;
use mmr1_fast::model::safetensors_io::SaveDtype;
use mmr1_fast::model::Qwen2;
use mmr1_fast::optim::{AdamW, AdamwConfig};
use mmr1_fast::train::checkpoint::{latest_checkpoint, load_checkpoint, save_checkpoint};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

struct Snapshot {
    model: Qwen2<Cpu>,
    opt: AdamW<Cpu>,
    state: Value,
}

/// A model and optimizer state that differ from seed to seed in every tensor.
fn snapshot(seed: u64) -> Snapshot {
    let model = random_model(tiny_config(29, false), seed);
    let mut opt = AdamW::new(&Cpu, &model.params, AdamwConfig::default());
    for (i, m) in opt.m.iter_mut().enumerate() {
        let n = m.len();
        *m = (0..n).map(|j| (seed as f32) * 0.01 + (i * 7 + j) as f32 * 1e-4).collect();
    }
    opt.step = seed * 10;
    Snapshot { model, opt, state: json!({"kind": "test", "seed": seed}) }
}

fn save(out: &Path, step: u64, s: &Snapshot, tokenizer: Option<&Path>) -> anyhow::Result<PathBuf> {
    save_checkpoint(&Cpu, out, step, &s.model, &s.opt, &s.state, SaveDtype::F32, tokenizer)
}

/// `latest` names `expect_dir` and that directory loads back exactly `s`.
fn assert_latest_is(out: &Path, expect_dir: &str, s: &Snapshot, ctx: &str) {
    let dir = latest_checkpoint(out)
        .unwrap_or_else(|e| panic!("{ctx}: latest is broken: {e:#}"))
        .unwrap_or_else(|| panic!("{ctx}: latest is gone"));
    assert_eq!(dir.file_name().unwrap(), expect_dir, "{ctx}: latest moved");
    let ck = load_checkpoint::<Cpu, Value>(&Cpu, &dir)
        .unwrap_or_else(|e| panic!("{ctx}: {} does not load: {e:#}", dir.display()));
    assert_eq!(ck.state, s.state, "{ctx}: trainer state");
    assert_eq!(ck.opt.step, s.opt.step, "{ctx}: optimizer step");
    assert!(ck.model.to_host(&Cpu) == s.model.to_host(&Cpu), "{ctx}: weights differ");
    assert!(ck.opt.m == s.opt.m && ck.opt.v == s.opt.v, "{ctx}: optimizer moments differ");
}

/// The number of fault points one save passes (so the loops below cover every one of them).
fn points_of(f: impl FnOnce()) -> u64 {
    fault::disarm();
    f();
    let n = fault::passed();
    fault::disarm();
    n
}

#[test]
fn a_failure_at_any_step_of_a_save_keeps_the_previous_checkpoint() {
    let tok = fixture("tokenizer.json");
    let tok_dir = tempfile::tempdir().unwrap();
    std::fs::copy(&tok, tok_dir.path().join("tokenizer.json")).unwrap();
    let tok_path = tok_dir.path().join("tokenizer.json");
    let (a, b) = (snapshot(1), snapshot(2));
    let probe = tempfile::tempdir().unwrap();
    save(probe.path(), 1, &a, Some(&tok_path)).unwrap();
    let n = points_of(|| {
        save(probe.path(), 2, &b, Some(&tok_path)).unwrap();
    });
    // config, model, tokenizer, optimizer, trainer state: 4 points each; the directory's
    // create, fsync and rename, the phase directory's fsync, and `latest`.
    assert!(n >= 5 * 4 + 4 + 4, "only {n} fault points in a save: a step is not covered");
    for k in 0..n {
        let out = tempfile::tempdir().unwrap();
        save(out.path(), 1, &a, Some(&tok_path)).unwrap();
        fault::fail_at(k);
        let err = save(out.path(), 2, &b, Some(&tok_path));
        fault::disarm();
        let err = format!("{:#}", err.err().unwrap_or_else(|| panic!("point {k}: save succeeded")));
        assert!(err.contains("injected fault"), "point {k}: unexpected error {err}");
        let ctx = format!("failure at point {k} ({err})");
        // `latest` may only move once the new checkpoint is complete: the last point is the
        // rename of `latest` itself.
        assert_latest_is(out.path(), "checkpoint-1", &a, &ctx);
        // Restart: the next save succeeds over the leftovers and is what `latest` names.
        save(out.path(), 2, &b, Some(&tok_path)).unwrap();
        assert_latest_is(out.path(), "checkpoint-2", &b, &format!("{ctx}, then saved again"));
        assert_latest_is_clean(out.path());
    }
}

/// No temporary files or directories survive a completed save.
fn assert_latest_is_clean(out: &Path) {
    for e in walk(out) {
        let name = e.file_name().unwrap().to_str().unwrap().to_string();
        assert!(
            !name.ends_with(".tmp") && !name.ends_with(".old"),
            "leftover {} after a completed save",
            e.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn resaving_the_latest_step_replaces_it_and_a_failure_never_mixes_the_two() {
    let tok = fixture("tokenizer.json");
    let (a, b) = (snapshot(3), snapshot(4));
    let probe = tempfile::tempdir().unwrap();
    save(probe.path(), 5, &a, Some(&tok)).unwrap();
    let n = points_of(|| {
        save(probe.path(), 5, &b, None).unwrap();
    });
    // Same step twice, clean: the second replaces the first, files the first had and the
    // second has not (tokenizer.json) are gone.
    let dir = probe.path().join("checkpoint-5");
    assert!(!dir.join("tokenizer.json").exists(), "re-save merged the old directory into the new");
    assert_latest_is(probe.path(), "checkpoint-5", &b, "clean re-save");
    assert_latest_is_clean(probe.path());
    for k in 0..n {
        let out = tempfile::tempdir().unwrap();
        save(out.path(), 5, &a, Some(&tok)).unwrap();
        fault::fail_at(k);
        let r = save(out.path(), 5, &b, None);
        fault::disarm();
        assert!(r.is_err(), "point {k}: save succeeded");
        // Whole A or whole B, never a mixture, and loadable.
        let dir = latest_checkpoint(out.path())
            .unwrap_or_else(|e| panic!("point {k}: latest is broken: {e:#}"))
            .unwrap();
        let ck = load_checkpoint::<Cpu, Value>(&Cpu, &dir)
            .unwrap_or_else(|e| panic!("point {k}: does not load: {e:#}"));
        let which = if ck.state == a.state { &a } else { &b };
        let has_tok = dir.join("tokenizer.json").exists();
        assert_eq!(has_tok, which.state == a.state, "point {k}: files of A and B mixed");
        assert_latest_is(out.path(), "checkpoint-5", which, &format!("point {k}"));
        save(out.path(), 5, &b, None).unwrap();
        assert_latest_is(out.path(), "checkpoint-5", &b, &format!("point {k}, then saved again"));
        assert!(!out.path().join("checkpoint-5/tokenizer.json").exists());
        assert_latest_is_clean(out.path());
    }
}

// ---- the `latest` pointer, pruning and damaged optimizer state -----------------------------

#[test]
fn latest_must_name_a_checkpoint_directory_inside_the_phase_directory() {
    let out = tempfile::tempdir().unwrap();
    let o = out.path();
    assert!(latest_checkpoint(o).unwrap().is_none(), "no latest file: no checkpoint");
    std::fs::create_dir(o.join("checkpoint-1")).unwrap();
    std::fs::create_dir(o.join("sub")).unwrap();
    std::fs::create_dir(o.join("sub/checkpoint-1")).unwrap();
    std::fs::write(o.join("latest"), "checkpoint-1\n").unwrap();
    assert_eq!(latest_checkpoint(o).unwrap().unwrap(), o.join("checkpoint-1"));
    // Each rule alone: empty, a path with '/', a parent reference without '/'.
    for bad in ["\n", "sub/checkpoint-1\n", "..\n", "checkpoint-1/..\n"] {
        std::fs::write(o.join("latest"), bad).unwrap();
        let e = format!("{:#}", latest_checkpoint(o).unwrap_err());
        assert!(e.contains("does not name a checkpoint directory"), "{bad:?}: {e}");
    }
    std::fs::write(o.join("latest"), "checkpoint-7\n").unwrap();
    let e = format!("{:#}", latest_checkpoint(o).unwrap_err());
    assert!(e.contains("does not exist"), "{e}");
    // A file where the directory should be is not a checkpoint either.
    std::fs::write(o.join("checkpoint-7"), "x").unwrap();
    assert!(latest_checkpoint(o).is_err());
}

#[test]
fn prune_keeps_the_newest_by_step_number_and_always_the_latest() {
    use mmr1_fast::train::checkpoint::{prune_checkpoints, step_of};
    assert_eq!(step_of(Path::new("/x/checkpoint-12")), 12);
    assert_eq!(step_of(Path::new("/x/checkpoint-abc")), 0);
    assert_eq!(step_of(Path::new("/x/other-3")), 0);
    let out = tempfile::tempdir().unwrap();
    let o = out.path();
    // Name order (10 < 2 < 3 < 9) differs from step order (2 < 3 < 9 < 10).
    // Complete checkpoints (trainer state and optimizer present); prune never counts a
    // half-written one.
    for s in [2, 3, 9, 10] {
        let d = o.join(format!("checkpoint-{s}"));
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("trainer_state.json"), "{}").unwrap();
        std::fs::write(d.join("optimizer.safetensors"), "").unwrap();
    }
    std::fs::create_dir(o.join("other")).unwrap();
    std::fs::write(o.join("checkpoint-1.txt"), "a file, not a checkpoint").unwrap();
    std::fs::write(o.join("latest"), "checkpoint-2\n").unwrap();
    prune_checkpoints(o, 2).unwrap();
    let left = |o: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(o)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        left(o),
        ["checkpoint-1.txt", "checkpoint-10", "checkpoint-2", "checkpoint-9", "latest", "other"],
        "keep the 2 newest steps (9, 10) and the one `latest` names (2)"
    );
    // keep 0 is treated as 1; latest moved to 10.
    std::fs::write(o.join("latest"), "checkpoint-10\n").unwrap();
    prune_checkpoints(o, 0).unwrap();
    assert_eq!(left(o), ["checkpoint-1.txt", "checkpoint-10", "latest", "other"]);
}

#[test]
fn damaged_optimizer_moments_are_refused() {
    let out = tempfile::tempdir().unwrap();
    // exp_avg_sq must be >= 0 (zeros are fine: a fresh optimizer).
    let mut s = snapshot(5);
    s.opt.v[1][3] = -1e-3;
    let dir = save(out.path(), 1, &s, None).unwrap();
    let e = format!("{:#}", load_checkpoint::<Cpu, Value>(&Cpu, &dir).err().unwrap());
    assert!(e.contains("negative") && e.contains("exp_avg_sq"), "{e}");
    let mut s = snapshot(5);
    s.opt.m[2][0] = f32::NAN;
    let dir = save(out.path(), 2, &s, None).unwrap();
    let e = format!("{:#}", load_checkpoint::<Cpu, Value>(&Cpu, &dir).err().unwrap());
    assert!(e.contains("NaN") && e.contains("exp_avg"), "{e}");
    // A positive second moment loads.
    let mut s = snapshot(5);
    s.opt.v[1][3] = 1e-3;
    let dir = save(out.path(), 3, &s, None).unwrap();
    let ck = load_checkpoint::<Cpu, Value>(&Cpu, &dir).unwrap();
    assert_eq!(ck.opt.v[1][3], 1e-3);
}

/// A run that diverged after `step`: that step's checkpoint is renamed `.diverged` (an older
/// one of the same name replaced), `latest` and resuming move to the newest remaining complete
/// checkpoint, and with none left `latest` is removed (without one, nothing to remove).
#[test]
fn a_diverged_checkpoint_is_set_aside_and_latest_moves_back() {
    use mmr1_fast::train::checkpoint::{resume_checkpoint, set_aside_diverged};
    let out = tempfile::tempdir().unwrap();
    let o = out.path();
    assert_eq!(set_aside_diverged(o, 7).unwrap(), None, "empty directory, no latest");
    assert!(!o.join("latest").exists());
    for s in [2, 3] {
        let d = o.join(format!("checkpoint-{s}"));
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("trainer_state.json"), format!("{{\"step\": {s}}}")).unwrap();
        std::fs::write(d.join("optimizer.safetensors"), "").unwrap();
    }
    std::fs::create_dir(o.join("checkpoint-3.diverged")).unwrap();
    std::fs::write(o.join("checkpoint-3.diverged/stale"), "from an earlier divergence").unwrap();
    std::fs::write(o.join("latest"), "checkpoint-3\n").unwrap();
    assert_eq!(resume_checkpoint(o).unwrap(), Some(o.join("checkpoint-3")));

    assert_eq!(set_aside_diverged(o, 3).unwrap(), Some(o.join("checkpoint-2")));
    assert!(!o.join("checkpoint-3").exists());
    let kept = o.join("checkpoint-3.diverged");
    assert!(kept.join("trainer_state.json").is_file() && !kept.join("stale").exists());
    assert_eq!(std::fs::read_to_string(o.join("latest")).unwrap(), "checkpoint-2\n");
    assert_eq!(resume_checkpoint(o).unwrap(), Some(o.join("checkpoint-2")));

    assert_eq!(set_aside_diverged(o, 2).unwrap(), None);
    assert!(o.join("checkpoint-2.diverged").is_dir());
    assert!(!o.join("latest").exists(), "no checkpoint left: latest removed");
    assert_eq!(resume_checkpoint(o).unwrap(), None);
}

/// Weights that blew up are never saved: the error names the step and the tensor, and nothing
/// is left behind (no checkpoint, no temporary directory, `latest` untouched). A directory
/// without its optimizer file is not a complete checkpoint to resume from.
#[test]
fn non_finite_weights_are_refused_and_half_written_checkpoints_are_not_resumed() {
    use mmr1_fast::train::checkpoint::resume_checkpoint;
    let out = tempfile::tempdir().unwrap();
    let o = out.path();
    let good = snapshot(6);
    save(o, 1, &good, None).unwrap();
    let mut bad = snapshot(7);
    bad.model.params[2][5] = f32::INFINITY;
    let name = bad.model.layout.specs[2].name.clone();
    let e = format!("{:#}", save(o, 2, &bad, None).unwrap_err());
    assert!(
        e.contains("weights after step 2 are not finite")
            && e.contains(&format!("tensor {name}"))
            && e.contains("checkpoint-2 was not saved"),
        "{e}"
    );
    assert!(!o.join("checkpoint-2").exists() && !o.join(".checkpoint-2.tmp").exists());
    assert_latest_is(o, "checkpoint-1", &good, "after a refused save");
    // checkpoint-3 with its trainer state but no optimizer file (a copy cut short).
    std::fs::create_dir(o.join("checkpoint-3")).unwrap();
    std::fs::write(o.join("checkpoint-3/trainer_state.json"), "{}").unwrap();
    assert_eq!(resume_checkpoint(o).unwrap(), Some(o.join("checkpoint-1")));
}

/// A model whose optimizer holds only some of its parameters (the VL trainer with a frozen
/// vision tower, `save_checkpoint_with`): the optimizer file has the moments of the trained
/// parameters only, the f32 master copies of all of them when the model file is rounded, and
/// loads back bit-exactly.
#[test]
fn frozen_parameters_get_master_weights_and_no_moments() {
    use mmr1_fast::model::params::ParamSpec;
    use mmr1_fast::train::checkpoint::{load_optimizer, save_checkpoint_with};
    let s = snapshot(3);
    let (n, k) = (s.model.params.len(), s.model.params.len() / 2);
    assert!(k > 0 && n > k);
    let specs = &s.model.layout.specs;
    let pairs = |r: std::ops::Range<usize>| -> Vec<(&ParamSpec, &Vec<f32>)> {
        r.map(|i| (&specs[i], &s.model.params[i])).collect()
    };
    let (trained, frozen) = (pairs(0..k), pairs(k..n));
    let mut opt = AdamW::new(&Cpu, &s.model.params[..k], AdamwConfig::default());
    opt.m = s.opt.m[..k].to_vec();
    opt.v = s.opt.m[..k].iter().map(|m| m.iter().map(|x| x * x + 1e-3).collect()).collect();
    opt.step = 7;
    let out = tempfile::tempdir().unwrap();
    let no_model = |_: &Path| Ok(());
    let dir = save_checkpoint_with(
        &Cpu,
        out.path(),
        5,
        no_model,
        &trained,
        &frozen,
        &opt,
        &json!({}),
        SaveDtype::Bf16,
    )
    .unwrap();
    let names = |r: std::ops::Range<usize>| -> Vec<&ParamSpec> { r.map(|i| &specs[i]).collect() };
    let (back, masters) = load_optimizer::<Cpu>(&Cpu, &dir, &names(0..k), &names(k..n)).unwrap();
    assert_eq!((back.m, back.v, back.step), (opt.m.clone(), opt.v.clone(), 7));
    assert_eq!(masters.unwrap(), s.model.params, "master weights of trained and frozen");
    let bytes = std::fs::read(dir.join("optimizer.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let count = |p: &str| st.names().iter().filter(|x| x.starts_with(p)).count();
    assert_eq!((count("exp_avg."), count("exp_avg_sq."), count("master.")), (k, k, n));
}

#[test]
fn a_zero_load_builds_the_ranks_shard_and_stage_0_the_replicated_state() {
    // load_checkpoint_sharded exists so that a ZeRO resume never holds the whole moments on a
    // device: at stage 1 / 2 the optimizer comes back as this rank's flat block (world 1: the
    // whole flat vector, in layout order), at stage 0 as load_checkpoint's per-tensor state.
    // (A ZeRO run given the replicated state would still compute the same bits, through the
    // replicated step: only this check sees the difference.)
    use mmr1_fast::dist::Single;
    use mmr1_fast::train::checkpoint::load_checkpoint_sharded;
    let s = snapshot(5);
    let out = tempfile::tempdir().unwrap();
    let dir = save(out.path(), 3, &s, None).unwrap();
    let flat_m: Vec<f32> = s.opt.m.iter().flatten().copied().collect();
    for stage in [1u8, 2] {
        let ck = load_checkpoint_sharded::<Cpu, Value>(&Cpu, &dir, &Single, stage).unwrap();
        let z = ck.opt.zero.as_ref().unwrap_or_else(|| panic!("stage {stage}: not sharded"));
        assert_eq!((z.stage, z.range.clone()), (stage, 0..flat_m.len()), "stage {stage}");
        assert_eq!(ck.opt.m.len(), 1, "stage {stage}: one flat block");
        assert_eq!(ck.opt.m[0], flat_m, "stage {stage}: the block's first moments");
        assert_eq!(ck.opt.step, s.opt.step, "stage {stage}: step");
    }
    let ck = load_checkpoint_sharded::<Cpu, Value>(&Cpu, &dir, &Single, 0).unwrap();
    assert!(ck.opt.zero.is_none(), "stage 0 must stay replicated");
    assert_eq!(ck.opt.m, s.opt.m, "stage 0: per-tensor first moments");
}
