//! `mmr1-fast plot`: a PNG of the requested size with curves on it, and bad input refused.

mod common;
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
