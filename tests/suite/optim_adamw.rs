//! AdamW, clipping and schedules against torch (tests/fixtures/adamw.safetensors) and
//! Hugging Face's schedule formulas.

use crate::common;
use common::*;
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::backend::Backend;
use mmr1_fast::model::safetensors_io::to_f32;
use mmr1_fast::optim::{clip_scale, grad_norm, AdamW, AdamwConfig, LrSchedule};
use mmr1_fast::ranges::Checks;
use safetensors::SafeTensors;

fn golden() -> impl Fn(&str) -> Vec<f32> {
    let bytes = std::fs::read(fixture("adamw.safetensors")).unwrap();
    move |n: &str| {
        let st = SafeTensors::deserialize(&bytes).unwrap();
        to_f32(&st.tensor(n).unwrap_or_else(|_| panic!("adamw golden has no {n}"))).unwrap()
    }
}

#[test]
fn three_adamw_steps_match_torch() {
    let g = golden();
    let be = Cpu;
    let cfg =
        AdamwConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, max_grad_norm: None };
    let mut params = vec![g("p0")];
    let mut opt = AdamW::new(&be, &params, cfg);
    for s in 1..=3 {
        let rep = opt.step(&be, &mut params, &[g(&format!("g{s}"))], 1e-2);
        assert!(!rep.skipped && rep.clip_scale == 1.0);
        let e = rel_l2(&params[0], &g(&format!("p{s}")));
        assert!(e < 1e-6, "step {s}: params rel L2 {e:e}");
    }
    assert_eq!(opt.step, 3);
    assert!(rel_l2(&opt.m[0], &g("exp_avg3")) < 1e-6, "exp_avg");
    assert!(rel_l2(&opt.v[0], &g("exp_avg_sq3")) < 1e-6, "exp_avg_sq");
}

#[test]
fn clipping_matches_torch() {
    let g = golden();
    let be = Cpu;
    // One tensor.
    let grads = vec![g("clip_g")];
    let norm = grad_norm(&be, &grads);
    assert!((norm - g("clip_total_norm")[0] as f64).abs() < 1e-5 * norm);
    let s = clip_scale(norm, 1.0);
    let out: Vec<f32> = grads[0].iter().map(|x| x * s).collect();
    assert!(rel_l2(&out, &g("clip_out")) < 1e-6);
    // Two tensors share one global norm.
    let grads = vec![g("clip2_a"), g("clip2_b")];
    let norm = grad_norm(&be, &grads);
    assert!((norm - g("clip2_total_norm")[0] as f64).abs() < 1e-5 * norm);
    let s = clip_scale(norm, 1.0);
    for (gr, name) in grads.iter().zip(["clip2_a_out", "clip2_b_out"]) {
        let out: Vec<f32> = gr.iter().map(|x| x * s).collect();
        assert!(rel_l2(&out, &g(name)) < 1e-6, "{name}");
    }
    // Below the bound nothing changes.
    assert_eq!(clip_scale(0.5, 1.0), 1.0);
    // torch adds 1e-6 to the norm: visible only at norms near 1e-6 (the fixture's norm of 5
    // cannot tell `+ 1e-6` from `- 1e-6`): 1e-6 / (3e-6 + 1e-6) = 0.25, not 1e-6 / 2e-6.
    assert!((clip_scale(3e-6, 1e-6) - 0.25).abs() < 1e-6, "{}", clip_scale(3e-6, 1e-6));
}

#[test]
fn config_check_names_every_bad_key() {
    let check = |cfg: AdamwConfig| {
        let mut c = Checks::new();
        cfg.check(&mut c, "rl.");
        c.finish("optimizer").err().map(|e| e.to_string())
    };
    assert_eq!(check(AdamwConfig::default()), None);
    assert_eq!(check(AdamwConfig { max_grad_norm: None, ..AdamwConfig::default() }), None);
    let bad = AdamwConfig {
        beta1: 1.0,
        beta2: -0.1,
        eps: 0.0,
        weight_decay: f32::NAN,
        max_grad_norm: Some(0.0),
    };
    let msg = check(bad).expect("every field is out of range");
    for key in ["rl.beta1", "rl.beta2", "rl.eps", "rl.weight_decay", "rl.grad_clip"] {
        assert!(msg.contains(key), "{key} not named in: {msg}");
    }
}

#[test]
fn clipped_step_equals_step_on_clipped_gradient() {
    let g = golden();
    let be = Cpu;
    let cfg = AdamwConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        max_grad_norm: Some(1.0),
    };
    let mut p1 = vec![g("p0")];
    let mut o1 = AdamW::new(&be, &p1, cfg);
    let rep = o1.step(&be, &mut p1, &[g("clip_g")], 1e-2);
    assert!((rep.grad_norm - 5.0).abs() < 1e-3 && rep.clip_scale < 0.21);
    let mut p2 = vec![g("p0")];
    let mut o2 = AdamW::new(&be, &p2, AdamwConfig { max_grad_norm: None, ..cfg });
    o2.step(&be, &mut p2, &[g("clip_out")], 1e-2);
    assert!(rel_l2(&p1[0], &p2[0]) < 1e-6);
}

#[test]
fn non_finite_gradient_skips_the_step() {
    let be = Cpu;
    let mut params = vec![vec![1.0f32, 2.0, 3.0]];
    let mut opt = AdamW::new(&be, &params, AdamwConfig::default());
    for bad in [f32::NAN, f32::INFINITY] {
        let rep = opt.step(&be, &mut params, &[vec![0.1, bad, 0.3]], 1e-2);
        assert!(rep.skipped && !rep.grad_norm.is_finite());
        assert_eq!(params[0], vec![1.0, 2.0, 3.0], "a skipped step must not touch the parameters");
        assert_eq!(opt.step, 0);
        assert!(be.download(&opt.m[0]).iter().all(|&x| x == 0.0));
    }
    let rep = opt.step(&be, &mut params, &[vec![0.1, 0.2, 0.3]], 1e-2);
    assert!(!rep.skipped && opt.step == 1 && params[0] != vec![1.0, 2.0, 3.0]);
}

#[test]
fn schedules_follow_hugging_face() {
    // transformers.get_cosine_with_min_lr_schedule_with_warmup(num_warmup_steps=10,
    // num_training_steps=100), base lr 1e-3, min_lr 1e-4:
    // step < 10: lr * step/10; else min + (lr-min) * 0.5 * (1 + cos(pi * (step-10)/90)).
    let s = LrSchedule::Cosine { lr: 1e-3, warmup_steps: 10, total_steps: 100, min_lr: 1e-4 };
    let close = |a: f32, b: f64| (a as f64 - b).abs() < 1e-9 + 1e-6 * b.abs();
    assert_eq!(s.lr_at(0), 0.0);
    assert!(close(s.lr_at(5), 5e-4));
    assert!(close(s.lr_at(10), 1e-3));
    assert!(close(s.lr_at(55), 1e-4 + 9e-4 * 0.5));
    assert!(close(s.lr_at(100), 1e-4));
    assert!(close(s.lr_at(1000), 1e-4), "past the end it stays at min_lr");
    let mut prev = f32::INFINITY;
    for k in 10..=100 {
        assert!(s.lr_at(k) <= prev, "cosine must not increase after warm-up");
        prev = s.lr_at(k);
    }
    // No warm-up: step 0 already runs at the full rate (a `<=` warm-up test would give 0).
    let nw = LrSchedule::Cosine { lr: 1e-3, warmup_steps: 0, total_steps: 10, min_lr: 0.0 };
    assert_eq!(nw.lr_at(0), 1e-3);
    let c = LrSchedule::Constant { lr: 1e-6, warmup_steps: 0 };
    assert!((0..50).all(|k| c.lr_at(k) == 1e-6));
    let cw = LrSchedule::Constant { lr: 1.0, warmup_steps: 4 };
    assert_eq!([0, 1, 2, 3, 4, 9].map(|k| cw.lr_at(k)), [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]);
    assert_eq!(LrSchedule::warmup_steps_for(95, 0.1), 10, "HF rounds warm-up up");
    // Serializable (it is stored in trainer_state.json).
    let j = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<LrSchedule>(&j).unwrap(), s);
}
