//! `train --demo-ablation` end to end, shrunk to seconds: a short SFT, 2 seeds x 3 settings x
//! 3 RL steps. Checks the report's structure, that every run started from the one SFT
//! checkpoint, and that each VAS run's vps.jsonl (MMR1 Figure 3) has the right shapes with
//! transition rows summing to the previous bin counts; `plot` then draws both PNGs.

use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mmr1-fast"))
}

fn json(p: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn two_seed_ablation_runs_every_setting_from_one_sft_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("abl");
    let sets = [
        "sft.epochs=1",
        "sft.batch_size=800", // 6 SFT steps
        "rl.steps=3",
        "rl.batch_size=4",
        "rl.group_size=4",
        "vas.initial_scoring=false",
        "vas.t_update=1",
        "eval.every=2",
        "eval.max_items=8",
        "output.checkpoint_every=0",
    ];
    let mut cmd = bin();
    cmd.args(["train", "--demo-ablation", "--seeds", "2", "--out", out.to_str().unwrap()]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "ablation failed: {}", String::from_utf8_lossy(&o.stderr));

    let r = json(&out.join("ablation.json"));
    assert_eq!(r["seeds"], serde_json::json!([1, 2]));
    assert_eq!(r["lambdas"], serde_json::json!([0.0, 0.5, 1.0]));
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 6, "3 settings x 2 seeds");
    let sft = r["sft_checkpoint"].as_str().unwrap();
    let hash = r["sft_hash"].as_str().unwrap();
    assert!(Path::new(sft).starts_with(&out), "{sft}");
    let mut start_evals = Vec::new();
    for run in runs {
        assert_eq!(run["start"].as_str().unwrap(), sft, "{run}");
        assert_eq!(run["start_hash"].as_str().unwrap(), hash, "{run}");
        assert_eq!(run["steps"], serde_json::json!([1, 2, 3]));
        // The start model, step 2, and after RL (step 3).
        assert_eq!(run["eval_steps"], serde_json::json!([0, 2, 3]), "{run}");
        start_evals.push(run["eval_accuracy"][0].as_f64().unwrap());
        let dir = Path::new(run["dir"].as_str().unwrap());
        let cfg = std::fs::read_to_string(dir.join("config.toml")).unwrap();
        assert!(cfg.contains(&format!("dir = \"{sft}\"")), "{cfg}");
    }
    // Same weights, greedy decoding: every run's step-0 evaluation is the same number.
    assert!(start_evals.windows(2).all(|w| w[0] == w[1]), "{start_evals:?}");

    let settings = r["settings"].as_array().unwrap();
    assert_eq!(settings.len(), 3);
    for st in settings {
        let curves = st["curves"].as_array().unwrap();
        let names: Vec<&str> = curves.iter().map(|c| c["metric"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            ["zero_var_frac", "grad_norm", "clip_frac", "batch_accuracy", "val_accuracy"]
        );
        for c in curves {
            let y = c["y"].as_array().unwrap();
            assert_eq!(y.len(), c["x"].as_array().unwrap().len());
            for iv in y {
                let (m, lo, hi) = (
                    iv["mean"].as_f64().unwrap(),
                    iv["lo"].as_f64().unwrap(),
                    iv["hi"].as_f64().unwrap(),
                );
                assert!(lo <= m && m <= hi && iv["n"] == 2, "{iv}");
            }
        }
        assert_eq!(st["summaries"].as_array().unwrap().len(), 5);
    }
    let paired = r["paired"].as_array().unwrap();
    assert_eq!(paired.len(), 2 * 5, "lambda 0.5 and 1, five summaries each");
    assert!(paired.iter().all(|d| d["diff"]["n"] == 2));
    // PPO mini-batches: after the first of four updates the ratio leaves 1.
    let clip_means: Vec<f64> =
        settings.iter().map(|s| s["summaries"][2][1]["mean"].as_f64().unwrap()).collect();
    assert!(clip_means.iter().all(|c| c.is_finite() && *c >= 0.0), "{clip_means:?}");

    let md = std::fs::read_to_string(out.join("ablation.md")).unwrap();
    for h in
        ["### Per setting", "### Paired differences", "### Validation accuracy", "lambda 1 (VAS)"]
    {
        assert!(md.contains(h), "ablation.md lacks {h:?}:\n{md}");
    }
    assert!(std::fs::metadata(out.join("ablation.png")).unwrap().len() > 1000);

    // Figure 3 records of a VAS run: one per refresh (t_update 1: every step).
    let vas_dir = out.join("seed-1").join("lambda-1");
    let recs: Vec<serde_json::Value> = std::fs::read_to_string(vas_dir.join("vps.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.iter().map(|r| r["step"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3]);
    let items = 256; // the demo's RL items
    let mut prev_counts: Vec<u64> = vec![0; recs[0]["counts"].as_array().unwrap().len()];
    *prev_counts.last_mut().unwrap() = items; // all unscored before the first refresh
    for rec in &recs {
        let counts: Vec<u64> =
            rec["counts"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).collect();
        let m = rec["transition"].as_array().unwrap();
        assert_eq!(rec["bin_edges"].as_array().unwrap().len(), counts.len());
        assert_eq!(m.len(), counts.len());
        assert_eq!(counts.iter().sum::<u64>(), items);
        for (i, row) in m.iter().enumerate() {
            let row: Vec<u64> =
                row.as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).collect();
            assert_eq!(row.len(), counts.len());
            assert_eq!(row.iter().sum::<u64>(), prev_counts[i], "row {i} of step {}", rec["step"]);
        }
        for (j, &c) in counts.iter().enumerate() {
            let col: u64 = m.iter().map(|row| row[j].as_u64().unwrap()).sum();
            assert_eq!(col, c);
        }
        // A batch of 4 items is refreshed per step: at most 4 re-scored.
        assert!(rec["refreshed"].as_u64().unwrap() <= 4);
        prev_counts = counts;
    }
    assert!(!out.join("seed-1").join("lambda-0").join("vps.jsonl").exists(), "uniform: no VAS");

    let o = bin().args(["plot", vas_dir.to_str().unwrap(), "--no-text"]).output().unwrap();
    assert!(o.status.success(), "plot failed: {}", String::from_utf8_lossy(&o.stderr));
    assert!(vas_dir.join("curves.png").exists() && vas_dir.join("curves-vps.png").exists());
}
