//! Every loss, gradient, advantage and metric against fixtures written by the upstream code
//! itself (`scripts/make_parity_fixtures.py`: verl 0.9.1, TRL 1.16.0, MMR1 d8161a0, nltk 3.9.1;
//! the provenance block of each fixture names the versions). Values agree at float64
//! rounding, except where upstream itself rounds differently, each named at its tolerance:
//! verl's and MMR1's `masked_mean` divide metrics by `N + 1e-8`, and MMR1's `kl_penalty` casts
//! the log-probs to float32.

use mmr1_fast::rl::advantage::{advantages_f64, AdvEstimator, AdvantageConfig, ScaleRewards};
use mmr1_fast::rl::grpo::{
    cov_selection, high_entropy_mask, policy_loss_f64, Aggregation, CovParams, KlConfig,
    KlEstimator, LossConfig, LossInputs, LossOutputF64, Normalizer, PolicyLoss,
};
use mmr1_fast::rl::vas::self_bleu;
use serde_json::Value;
use std::collections::HashMap;

/// float64 rounding of a few operations (exp, sums of up to a few hundred terms).
const F64: f64 = 1e-12;
/// Upstream's `masked_mean(x) = sum / (N + 1e-8)` in metrics: relative 1e-8 / N.
const MASKED_MEAN: f64 = 2e-8;
/// MMR1 computes its KL term in float32.
const F32: f64 = 2e-6;
/// The adversarial batch (log-ratios and reference gaps of 15 to 30) has gradient terms up to
/// e^55 that cancel; float64 rounding of those terms, relative to the largest gradient.
const ADVERSARIAL: f64 = 1e-8;

fn tol_for(batch: &str, tol: f64) -> f64 {
    if batch == "adversarial" {
        tol.max(ADVERSARIAL)
    } else {
        tol
    }
}

fn fixture(name: &str) -> Value {
    let p = format!("{}/tests/fixtures/parity/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}")))
        .unwrap()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn close(got: f64, want: f64, tol: f64) -> bool {
    (got - want).abs() <= tol * (1.0 + want.abs())
}

#[track_caller]
fn check(got: f64, want: f64, tol: f64, what: &str) {
    assert!(close(got, want, tol), "{what}: got {got:.17e}, want {want:.17e} (tol {tol:e})");
}

/// One padded upstream batch, packed row by row (every position of a row, padding masked).
struct Batch {
    width: usize,
    logp: Vec<f64>,
    old: Vec<f64>,
    adv: Vec<f64>,
    mask: Vec<f64>,
    refl: Vec<f64>,
    ent: Vec<f64>,
    offsets: Vec<usize>,
}

fn batches() -> HashMap<String, Batch> {
    let v = fixture("batches.json");
    let mut out = HashMap::new();
    for (name, b) in v.as_object().unwrap() {
        if name == "provenance" {
            continue;
        }
        let rows = b["rows"].as_u64().unwrap() as usize;
        let width = b["width"].as_u64().unwrap() as usize;
        out.insert(
            name.clone(),
            Batch {
                width,
                logp: f64s(&b["logp"]),
                old: f64s(&b["old"]),
                adv: f64s(&b["adv"]),
                mask: f64s(&b["mask"]),
                refl: f64s(&b["ref"]),
                ent: f64s(&b["ent"]),
                offsets: (0..=rows).map(|r| r * width).collect(),
            },
        );
    }
    out
}

fn name<T: serde::de::DeserializeOwned>(s: &str) -> T {
    serde_json::from_value(Value::String(s.into())).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Runs the loss on a batch; returns the output.
fn run(b: &Batch, cfg: &LossConfig, pg_mask: Option<&[f64]>, with_entropy: bool) -> LossOutputF64 {
    let sel = cov_selection(
        cfg.policy,
        &cfg.cov,
        &b.adv,
        &b.logp,
        &b.old,
        &b.mask,
        cfg.clip_eps_low,
        cfg.clip_eps_high,
        0,
    );
    let inp = LossInputs {
        logp: &b.logp,
        logp_old: &b.old,
        advantages: &b.adv,
        mask: &b.mask,
        ref_logp: Some(&b.refl),
        entropy: with_entropy.then_some(b.ent.as_slice()),
        pg_mask,
        selected: Some(&sel),
        offsets: &b.offsets,
    };
    policy_loss_f64(&inp, cfg, Normalizer::count(&b.mask, &b.offsets, b.width))
}

#[track_caller]
fn check_loss_grad(o: &LossOutputF64, c: &Value, tol: f64, what: &str) {
    check(o.loss, c["loss"].as_f64().unwrap(), tol, &format!("{what}: loss"));
    let want = f64s(&c["grad"]);
    assert_eq!(want.len(), o.dlogp.len());
    // Gradients are compared relative to the largest one of the case.
    let scale = want.iter().fold(1.0f64, |m, g| m.max(g.abs()));
    for (t, (&g, &w)) in o.dlogp.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= tol * scale, "{what}: dloss/dlogp[{t}] got {g:e}, want {w:e}");
    }
}

#[test]
fn verl_losses_gradients_and_metrics() {
    let bs = batches();
    let v = fixture("verl.json");
    let cases = v["cases"].as_array().unwrap();
    let mut seen = std::collections::HashSet::new();
    for c in cases {
        let policy: PolicyLoss = name(c["policy"].as_str().unwrap());
        let agg: Aggregation = name(c["agg"].as_str().unwrap());
        let est: KlEstimator = name(c["kl"].as_str().unwrap());
        let kl_coef = c["kl_coef"].as_f64().unwrap();
        let ent = c["entropy_coef"].as_f64().unwrap();
        seen.insert((format!("{policy:?}"), format!("{agg:?}"), format!("{est:?}")));
        let cfg = LossConfig {
            policy,
            agg,
            kl: (kl_coef > 0.0).then_some(KlConfig { estimator: est, coef: kl_coef }),
            entropy_coef: ent,
            clip_eps_high: c["clip_eps_high"].as_f64().unwrap(),
            cov: CovParams {
                clip_cov_ratio: c["clip_cov_ratio"].as_f64().unwrap(),
                kl_cov_ratio: c["kl_cov_ratio"].as_f64().unwrap(),
                ppo_kl_coef: c["ppo_kl_coef"].as_f64().unwrap(),
                ..CovParams::default()
            },
            ..LossConfig::verl()
        };
        let b = &bs[c["batch"].as_str().unwrap()];
        let what = format!("verl {} {policy:?} {agg:?} {est:?}", c["batch"]);
        let o = run(b, &cfg, None, ent != 0.0);
        check_loss_grad(&o, c, tol_for(c["batch"].as_str().unwrap(), F64), &what);
        let m = &c["metrics"];
        check(o.metrics.pg_loss, m["pg_loss"].as_f64().unwrap(), F64, &format!("{what}: pg_loss"));
        if kl_coef > 0.0 {
            check(
                o.metrics.kl,
                m["kl_mean"].as_f64().unwrap(),
                MASKED_MEAN,
                &format!("{what}: kl"),
            );
        }
        for (key, got) in [
            ("pg_clipfrac", o.metrics.clip_frac),
            ("ppo_kl", o.metrics.approx_kl),
            ("pg_clipfrac_lower", o.metrics.dual_clip_frac),
        ] {
            if let Some(w) = m.get(key) {
                check(got, w.as_f64().unwrap(), MASKED_MEAN, &format!("{what}: {key}"));
            }
        }
    }
    // Every policy loss, aggregation and KL estimator is pinned.
    let count = |f: &dyn Fn(&(String, String, String)) -> String| {
        seen.iter().map(f).collect::<std::collections::HashSet<_>>().len()
    };
    assert_eq!(count(&|s| s.0.clone()), 8, "policy losses");
    assert_eq!(count(&|s| s.1.clone()), 5, "aggregations");
    assert_eq!(count(&|s| s.2.clone()), 7, "KL estimators");
}

#[test]
fn trl_losses_gradients_and_metrics() {
    let bs = batches();
    let v = fixture("trl.json");
    for c in v["cases"].as_array().unwrap() {
        let lt = c["loss_type"].as_str().unwrap();
        let seq = c["level"].as_str().unwrap() == "sequence";
        let policy = match lt {
            "cispo" => PolicyLoss::Cispo,
            "sapo" => PolicyLoss::Sapo,
            _ if seq => PolicyLoss::Gspo,
            _ => PolicyLoss::Vanilla,
        };
        let agg: Aggregation = match lt {
            "cispo" => Aggregation::TokenMean,
            "sapo" => Aggregation::SeqMeanTokenMean,
            other => name(other),
        };
        let beta = c["beta"].as_f64().unwrap();
        let q = c["top_entropy_quantile"].as_f64().unwrap();
        let cfg = LossConfig {
            policy,
            agg,
            kl: (beta > 0.0).then_some(KlConfig { estimator: KlEstimator::K3, coef: beta }),
            trl_delta: c["delta"].as_f64(),
            kl_ratio_weighted: c["use_bias_correction_kl"].as_bool().unwrap(),
            clip_eps_high: c["clip_eps_high"].as_f64().unwrap(),
            ..LossConfig::trl()
        };
        let b = &bs[c["batch"].as_str().unwrap()];
        let pg_mask = (q < 1.0).then(|| high_entropy_mask(&b.ent, &b.mask, q));
        let what = format!("trl {} {lt} {} q={q}", c["batch"], c["level"]);
        let o = run(b, &cfg, pg_mask.as_deref(), true);
        check_loss_grad(&o, c, tol_for(c["batch"].as_str().unwrap(), F64), &what);
        let m = &c["metrics"];
        check(o.metrics.entropy.unwrap(), m["entropy"].as_f64().unwrap(), F64, &what);
        if beta > 0.0 {
            check(o.metrics.kl, m["kl"].as_f64().unwrap(), F64, &format!("{what}: kl"));
        }
        if !seq {
            let mm = o.metrics;
            for (key, got) in [
                ("clip_ratio_low_mean", mm.clip_frac_low),
                ("clip_ratio_high_mean", mm.clip_frac_high),
                ("clip_ratio_region_mean", mm.clip_frac_low + mm.clip_frac_high),
                ("cispo_clip_ratio", mm.clip_frac_high),
            ] {
                if let Some(w) = m.get(key) {
                    check(got, w.as_f64().unwrap(), F64, &format!("{what}: {key}"));
                }
            }
        }
    }
}

#[test]
fn mmr1_released_code() {
    let bs = batches();
    let v = fixture("mmr1.json");
    for c in v["cases"].as_array().unwrap() {
        let kl = c["kl"]
            .as_str()
            .map(|s| KlConfig { estimator: name(s), coef: c["kl_coef"].as_f64().unwrap() });
        let cfg = LossConfig { kl, ..LossConfig::mmr1() };
        let b = &bs[c["batch"].as_str().unwrap()];
        let what = format!("mmr1 {} {:?}", c["batch"], c["kl"]);
        let o = run(b, &cfg, None, false);
        let tol = if kl.is_some() { F32 } else { MASKED_MEAN };
        check_loss_grad(&o, c, tol_for(c["batch"].as_str().unwrap(), tol), &what);
        let m = &c["metrics"];
        check(o.metrics.pg_loss, m["pg_loss"].as_f64().unwrap(), MASKED_MEAN, &what);
        check(o.metrics.clip_frac, m["pg_clipfrac"].as_f64().unwrap(), MASKED_MEAN, &what);
        check(o.metrics.approx_kl, m["ppo_kl"].as_f64().unwrap(), MASKED_MEAN, &what);
        if kl.is_some() {
            check(o.metrics.kl, m["kl_mean"].as_f64().unwrap(), F32, &format!("{what}: kl"));
        }
    }
}

fn offsets_of(sizes: &[usize]) -> Vec<usize> {
    let mut o = vec![0];
    for s in sizes {
        o.push(o.last().unwrap() + s);
    }
    o
}

#[test]
fn verl_advantage_estimators() {
    let v = fixture("verl.json");
    for c in v["advantages"].as_array().unwrap() {
        let sizes: Vec<usize> = c["group_sizes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        let lens: Vec<usize> =
            c["lengths"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        let estimator: AdvEstimator = name(c["estimator"].as_str().unwrap());
        let scale = if c["norm_by_std"].as_bool().unwrap() {
            ScaleRewards::Group
        } else {
            ScaleRewards::None
        };
        let cfg = AdvantageConfig { estimator, scale, ..AdvantageConfig::verl() };
        let (a, _) = advantages_f64(&f64s(&c["rewards"]), &offsets_of(&sizes), Some(&lens), &cfg);
        for (i, (&g, w)) in a.iter().zip(f64s(&c["advantages"])).enumerate() {
            check(g, w, F64, &format!("verl {estimator:?} {} row {i}", c["layout"]));
        }
    }
}

#[test]
fn trl_scale_rewards() {
    let v = fixture("trl.json");
    for c in v["advantages"].as_array().unwrap() {
        let g = c["group_size"].as_u64().unwrap() as usize;
        let r = f64s(&c["rewards"]);
        let scale: ScaleRewards = name(c["scale_rewards"].as_str().unwrap());
        let cfg = AdvantageConfig { scale, ..AdvantageConfig::trl() };
        let offs: Vec<usize> = (0..=r.len() / g).map(|k| k * g).collect();
        let (a, _) = advantages_f64(&r, &offs, None, &cfg);
        for (i, (&x, w)) in a.iter().zip(f64s(&c["advantages"])).enumerate() {
            check(x, w, F64, &format!("trl scale_rewards={scale:?} G={g} row {i}"));
        }
    }
}

#[test]
fn mmr1_grpo_advantages() {
    let v = fixture("mmr1.json");
    for c in v["advantages"].as_array().unwrap() {
        let sizes: Vec<usize> = c["group_sizes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        let r = f64s(&c["rewards"]);
        let (a, _) = advantages_f64(&r, &offsets_of(&sizes), None, &AdvantageConfig::verl());
        for (i, (&x, w)) in a.iter().zip(f64s(&c["advantages"])).enumerate() {
            check(x, w, F64, &format!("mmr1 {sizes:?} row {i}"));
        }
    }
}

#[test]
fn self_bleu_matches_nltk_method2() {
    let v = fixture("self_bleu.json");
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() > 50);
    for c in cases {
        let rolls: Vec<Vec<u32>> = c["rollouts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect())
            .collect();
        let refs: Vec<&[u32]> = rolls.iter().map(|r| r.as_slice()).collect();
        let n = c["max_n"].as_u64().unwrap() as usize;
        let want = c["self_bleu"].as_f64().unwrap();
        check(self_bleu(&refs, n), want, F64, &format!("self-BLEU-{n} {rolls:?}"));
    }
    // The example: [[1,2],[1,2],[1,3]], n = 4 (nltk 0.638 as mean self-BLEU).
    let (a, b): (&[u32], &[u32]) = (&[1, 2], &[1, 3]);
    let want = cases
        .iter()
        .find(|c| c["rollouts"] == serde_json::json!([[1, 2], [1, 2], [1, 3]]) && c["max_n"] == 4)
        .unwrap()["self_bleu"]
        .as_f64()
        .unwrap();
    check(self_bleu(&[a, a, b], 4), want, F64, "issue example");
}

/// The mode names are validated when the configuration is parsed: an unknown name is an error
/// that names the key and lists the choices, verl's and TRL's names alike.
#[test]
fn train_rejects_unknown_mode_names_with_the_choices() {
    for (set, choices) in [
        ("rl.loss_agg=bogus", &["token-mean", "seq-mean-token-sum-norm", "dr_grpo"][..]),
        ("rl.kl_estimator=k4", &["low_var_kl", "k3+", "mse"][..]),
        ("rl.policy_loss=ppo2", &["gspo", "clip_cov", "geo_mean", "cispo", "sapo"][..]),
        ("rl.adv_estimator=y", &["rloo", "reinforce_plus_plus_baseline"][..]),
        ("rl.scale_rewards=z", &["group", "batch", "none"][..]),
        ("rl.convention=x", &["mmr1", "verl", "trl"][..]),
    ] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_mmr1-fast"))
            .args(["train", "--set", set])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && !err.contains("panicked"), "{set}: {err}");
        let key = set.split('=').next().unwrap();
        assert!(err.contains(key), "{set}: the error names the key: {err}");
        for c in choices {
            assert!(err.contains(&format!("`{c}`")), "{set}: the error lists {c}: {err}");
        }
    }
}
