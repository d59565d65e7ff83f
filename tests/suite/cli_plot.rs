//! `mmr1-fast plot`: a PNG of the requested size with curves on it, and bad input refused.

use crate::common;
use common::*;
use serde_json::json;
use std::collections::HashSet;
use std::path::Path;

/// A small run: SFT steps, the initial scoring event, RL steps (entropy null, as when not computed),
/// evaluations, and a torn last line as a crash leaves it.
fn write_run(dir: &Path) {
    let mut lines = vec![
        r#"{"phase":"eval","of":"sft","step":0,"label":"before SFT","accuracy":0.0,"format":0.0}"#
            .to_string(),
    ];
    for s in 1..=12 {
        let f = s as f64;
        lines.push(
            json!({"phase": "sft", "step": s, "loss": 3.0 / f, "lr": 1e-4 * f, "grad_norm": 1.5, "tokens_per_s": 900.0})
                .to_string(),
        );
    }
    lines.push(
        r#"{"phase":"eval","of":"sft","step":12,"label":"after SFT","accuracy":0.3,"format":0.5}"#
            .into(),
    );
    lines.push(r#"{"event":"initial_scoring","phase":"rl","step":0,"items":8,"vps":{"mean":0.1,"min":0.0,"max":0.2}}"#.into());
    for s in 1..=6 {
        let f = s as f64;
        lines.push(
            json!({"phase": "rl", "step": s, "reward_mean": 0.2 + 0.1 * f, "accuracy": 0.1 + 0.1 * f,
                   "zero_var_frac": 0.5 - 0.05 * f, "grad_norm": 1.0 / f, "clip_frac": 0.01 * f, "kl": 0.002 * f,
                   "entropy": null, "response_len": 40.0 - f, "vps": {"mean": 0.1, "min": 0.0, "max": 0.2},
                   "time": {"step": 1.0}})
            .to_string(),
        );
    }
    lines.push(
        r#"{"phase":"eval","of":"rl","step":6,"label":"after RL","accuracy":0.6,"format":0.9}"#
            .into(),
    );
    lines.push(r#"{"phase":"rl","step":7,"rew"#.into());
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    write_lines(dir, "metrics.jsonl", &refs);
}

/// Width and height from the PNG signature and IHDR chunk (the first chunk, by the spec).
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

/// Distinct colors of a decoded 8-bit RGB(A) PNG.
fn colors(path: &Path) -> HashSet<[u8; 3]> {
    let dec = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let step = info.color_type.samples();
    assert!(step >= 3, "{:?}", info.color_type);
    buf[..info.buffer_size()].chunks_exact(step).map(|p| [p[0], p[1], p[2]]).collect()
}

#[test]
fn draws_panels_at_the_requested_size() {
    let tmp = tempfile::tempdir().unwrap();
    write_run(tmp.path());
    let dir = tmp.path().to_str().unwrap();

    // Without text the output cannot depend on the fonts of the machine.
    let out = cli(&["plot", dir, "--width", "640", "--height", "360", "--no-text"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("8 panels"));
    assert!(stderr.contains("skipped 1 malformed line"), "{stderr}");
    assert!(stderr.contains("1. SFT loss") && stderr.contains("8. RL response length"), "{stderr}");
    let png = tmp.path().join("curves.png");
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(png_size(&bytes), (640, 360));
    let c = colors(&png);
    // White, grid greys, and the series colors (blue and red lines, antialiased).
    assert!(
        c.contains(&[255, 255, 255]) && c.contains(&[31, 119, 180]) && c.contains(&[214, 39, 40]),
        "{}",
        c.len()
    );

    // With text if this machine has a font, without otherwise; either way a PNG, elsewhere.
    let other = tmp.path().join("other.png");
    let stdout = cli_ok(&["plot", dir, "--out", other.to_str().unwrap()]);
    assert!(stdout.contains("other.png"), "{stdout}");
    assert_eq!(png_size(&std::fs::read(&other).unwrap()), (1600, 900));
}

#[test]
fn bad_input_is_refused_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let missing = tmp.path().join("nope");
    assert!(cli_err(&["plot", missing.to_str().unwrap()]).contains("not a directory"));
    assert!(cli_err(&["plot", dir]).contains("metrics.jsonl not found"));

    write_lines(tmp.path(), "metrics.jsonl", &[""]);
    assert!(cli_err(&["plot", dir]).contains("is empty"));
    write_lines(tmp.path(), "metrics.jsonl", &["not json", "{\"phase\":"]);
    assert!(cli_err(&["plot", dir]).contains("none of its 2 lines"));
    write_lines(
        tmp.path(),
        "metrics.jsonl",
        &[r#"{"event":"initial_scoring","step":0}"#, r#"{"phase":"sft","step":1}"#],
    );
    assert!(cli_err(&["plot", dir]).contains("no SFT, RL or eval steps"));

    write_run(tmp.path());
    assert!(cli_err(&["plot", dir, "--out", tmp.path().join("c.jpg").to_str().unwrap()])
        .contains("must end in .png"));
    assert!(cli_err(&["plot", dir, "--width", "10"]).contains("--width"));
    let unwritable = tmp.path().join("no/such/dir/c.png");
    assert!(cli_err(&["plot", dir, "--no-text", "--out", unwritable.to_str().unwrap()])
        .contains("cannot create"));
    assert!(!tmp.path().join("curves.png").exists(), "nothing written on error");
}

/// Every line a real run writes (SFT steps, the initial VAS scoring, RL steps, periodic and
/// closing evaluations) reads back as a typed record that writes out to the same line (so no
/// key is dropped or renamed on the way), and the plot draws a curve from each kind.
#[test]
fn metrics_written_by_the_trainer_round_trip_through_the_plot_reader() {
    use mmr1_fast::pipeline::metrics::{read_metrics_file, Record};
    use mmr1_fast::pipeline::plot::panels;
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    let b = base.to_str().unwrap();
    // Materialize the demo (model and data) with nothing to train, then train on a few items.
    cli_ok(&["train", "--out", b, "--set", "sft.epochs=0", "--set", "rl.steps=0"]);
    let head = |name: &str, n: usize| -> String {
        let text = std::fs::read_to_string(base.join("demo").join(name)).unwrap();
        let lines: Vec<&str> = text.lines().take(n).collect();
        write_lines(tmp.path(), name, &lines)
    };
    let (sft, rl, eval) = (head("sft.jsonl", 8), head("rl.jsonl", 4), head("eval.jsonl", 2));
    let run = tmp.path().join("run");
    let config = base.join("config.toml");
    let sets = [
        format!("data.sft={sft}"),
        format!("data.rl={rl}"),
        format!("data.eval={eval}"),
        "sft.epochs=1".into(),
        "sft.batch_size=4".into(),
        "rl.steps=2".into(),
        "rl.batch_size=2".into(),
        "rl.group_size=2".into(),
        "rl.mini_batches=1".into(),
        "rl.max_new_tokens=8".into(),
        // 4 responses a step on 3 KV slots: the 4th takes the first slot that frees.
        "rl.rollout_slots=3".into(),
        "vas.score_rollouts=2".into(),
        "vas.t_update=1".into(),
        "eval.every=1".into(),
        "eval.max_items=2".into(),
    ];
    let mut args = vec!["train", "--config", config.to_str().unwrap(), "--out"];
    args.push(run.to_str().unwrap());
    for s in &sets {
        args.extend(["--set", s.as_str()]);
    }
    cli_ok(&args);

    let path = run.join("metrics.jsonl");
    let lines = read_lines(&path);
    let file = read_metrics_file(&path).unwrap();
    assert_eq!((file.lines, file.not_json, file.unknown), (lines.len(), 0, 0));
    assert_eq!(file.records.len(), lines.len());
    for (line, rec) in lines.iter().zip(&file.records) {
        assert_eq!(&rec.to_json(), line, "a record must write back the line it was read from");
    }
    let count = |f: fn(&Record) -> bool| file.records.iter().filter(|r| f(r)).count();
    assert_eq!(count(|r| matches!(r, Record::Sft(_))), 2);
    assert_eq!(count(|r| matches!(r, Record::Rl(_))), 2);
    for r in &file.records {
        if let Record::Rl(r) = r {
            let occ = r.rollout_occupancy;
            assert!(occ > 0.0 && occ <= 1.0, "step {}: rollout occupancy {occ}", r.step);
            assert!(r.rollout_tokens_per_s > 0.0, "step {}: {}", r.step, r.rollout_tokens_per_s);
        }
    }
    assert_eq!(count(|r| matches!(r, Record::InitialScoring(_))), 1);
    assert!(count(|r| matches!(r, Record::Eval(_))) >= 4, "periodic and closing evaluations");

    let titles: Vec<&str> = panels(&file.records).iter().map(|p| p.title).collect();
    assert_eq!(titles.len(), 8, "a curve of every panel: {titles:?}");
    let stdout = cli_ok(&["plot", run.to_str().unwrap(), "--no-text"]);
    assert!(stdout.contains("8 panels"), "{stdout}");
}
