//! The model's backward pass against finite differences of its own forward, one parameter
//! tensor at a time (directional derivatives along random directions, so f32 noise stays
//! small), with tied and untied heads, GQA, ragged packing, temperature and entropy.

use crate::common;
use common::*;
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::model::init::normal;
use mmr1_fast::model::{Packed, Qwen2};
use mmr1_fast::train::{micro_step, SftLoss, Workspace};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// L = sum_r a_r lp_r + b_r ent_r over rows with a target, in f64.
fn loss(model: &Qwen2<Cpu>, batch: &Packed, a: &[f32], b: &[f32], inv_temp: f32) -> f64 {
    let mut acts = None;
    model.forward(&Cpu, batch, &mut acts).unwrap();
    let (t, _) = batch.next_token_targets();
    let (lp, ent) = model.token_logprobs(&Cpu, acts.as_ref().unwrap(), &t, inv_temp);
    (0..lp.len()).map(|r| a[r] as f64 * lp[r] as f64 + b[r] as f64 * ent[r] as f64).sum()
}

fn check_model(tied: bool, seed: u64) {
    let be = Cpu;
    let mut model = random_model(tiny_config(97, tied), seed);
    let seqs =
        [random_ids(9, 97, seed + 1), random_ids(4, 97, seed + 2), random_ids(12, 97, seed + 3)];
    let batch = Packed::new(&seqs);
    let (targets, has) = batch.next_token_targets();
    let mut rng = ChaCha8Rng::seed_from_u64(seed + 4);
    let a: Vec<f32> = normal(&mut rng, batch.tokens(), 1.0)
        .iter()
        .zip(&has)
        .map(|(x, h)| if *h { *x } else { 0.0 })
        .collect();
    let b: Vec<f32> = normal(&mut rng, batch.tokens(), 1.0)
        .iter()
        .zip(&has)
        .map(|(x, h)| if *h { *x } else { 0.0 })
        .collect();
    let inv_temp = 1.0 / 0.7;

    let mut acts = None;
    model.forward(&be, &batch, &mut acts).unwrap();
    let mut grads = model.zero_grads(&be);
    model.backward(
        &be,
        &batch,
        acts.as_ref().unwrap(),
        &targets,
        &a,
        Some(&b),
        inv_temp,
        &mut grads,
    );

    for (pi, grad) in grads.iter().enumerate() {
        let name = model.layout.specs[pi].name.clone();
        let n = model.params[pi].len();
        let u = normal(&mut rng, n, 1.0);
        let analytic: f64 = grad.iter().zip(&u).map(|(g, x)| *g as f64 * *x as f64).sum();
        let p0 = model.params[pi].clone();
        let mut central = |eps: f32| {
            model.params[pi] = p0.iter().zip(&u).map(|(p, x)| p + eps * x).collect();
            let up = loss(&model, &batch, &a, &b, inv_temp);
            model.params[pi] = p0.iter().zip(&u).map(|(p, x)| p - eps * x).collect();
            let dn = loss(&model, &batch, &a, &b, inv_temp);
            (up - dn) / (2.0 * eps as f64)
        };
        // Richardson extrapolation cancels the eps^2 term of central differences: the model is
        // strongly curved at these random weights, and f32 noise forbids a tiny eps.
        let (d1, d2) = (central(2e-3), central(1e-3));
        let numeric = (4.0 * d2 - d1) / 3.0;
        model.params[pi] = p0;
        // f32 rounding leaves ~1e-3 absolute noise in `numeric`; derivatives here are O(1..100).
        let err = (analytic - numeric).abs();
        assert!(
            err < 2e-3 * analytic.abs().max(numeric.abs()) + 5e-3,
            "{name} (tied={tied}): analytic {analytic:.6} numeric {numeric:.6} abs err {err:.2e}"
        );
    }
}

#[test]
fn model_backward_matches_finite_differences_untied() {
    check_model(false, 11);
}

#[test]
fn model_backward_matches_finite_differences_tied() {
    check_model(true, 21);
}

#[test]
fn backward_accumulates_and_micro_batching_does_not_change_gradients() {
    let be = Cpu;
    let model = random_model(tiny_config(61, false), 31);
    let seqs = [random_ids(7, 61, 32), random_ids(10, 61, 33), random_ids(5, 61, 34)];
    // Train on the second half of each sequence (a "response").
    let trained_of = |s: &[u32]| (0..s.len()).map(|i| i >= s.len() / 2).collect::<Vec<bool>>();
    let step_tokens: usize =
        seqs.iter().map(|s| trained_of(s).iter().skip(1).filter(|&&b| b).count()).sum();
    let run = |groups: &[&[Vec<u32>]]| {
        let mut ws = Workspace::new(&model, &be);
        let mut total = 0.0;
        for g in groups {
            let batch = Packed::new(g);
            let mut trained = vec![false; batch.tokens()];
            for (s, sp) in g.iter().zip(&batch.spans) {
                let tr = trained_of(s);
                for i in 0..sp.q_len - 1 {
                    trained[sp.q_start + i] = tr[i + 1];
                }
            }
            total +=
                micro_step(&be, &model, &batch, &mut SftLoss::new(&trained, step_tokens), &mut ws)
                    .unwrap();
        }
        (total, ws.grads)
    };
    let (l1, g1) = run(&[&seqs[..]]);
    let (l2, g2) = run(&[&seqs[..1], &seqs[1..]]);
    assert!((l1 - l2).abs() < 1e-6 * l1.abs(), "loss {l1} vs {l2}");
    for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
        let e = rel_l2(a, b);
        assert!(
            e < 1e-5,
            "{}: micro-batched gradient differs, rel {e:e}",
            model.layout.specs[i].name
        );
    }
    // Accumulation: a second backward adds the same gradient again.
    let batch = Packed::new(&seqs);
    let mut acts = None;
    model.forward(&be, &batch, &mut acts).unwrap();
    let (t, has) = batch.next_token_targets();
    let dlp: Vec<f32> = has.iter().map(|&h| if h { -0.1 } else { 0.0 }).collect();
    let mut g = model.zero_grads(&be);
    model.backward(&be, &batch, acts.as_ref().unwrap(), &t, &dlp, None, 1.0, &mut g);
    let once = g.clone();
    model.backward(&be, &batch, acts.as_ref().unwrap(), &t, &dlp, None, 1.0, &mut g);
    for (a, b) in g.iter().zip(&once) {
        let twice: Vec<f32> = b.iter().map(|x| 2.0 * x).collect();
        assert!(rel_l2(a, &twice) < 1e-6);
    }
}

/// A loss with fixed gradients: `dlp`, `dent` as given, at temperature `1 / inv_temp`.
struct Fixed {
    dlp: Vec<f32>,
    dent: Vec<f32>,
    inv_temp: f32,
    rows: Vec<usize>,
}

impl mmr1_fast::train::TokenLoss<Cpu> for Fixed {
    fn inv_temp(&self) -> f32 {
        self.inv_temp
    }
    fn rows(&self) -> &[usize] {
        &self.rows
    }
    fn eval(
        &mut self,
        _be: &Cpu,
        _lp: &Vec<f32>,
        _ent: &Vec<f32>,
    ) -> mmr1_fast::train::LossGrad<Cpu> {
        mmr1_fast::train::LossGrad {
            loss: 0.0,
            dlp: self.dlp.clone(),
            dent: Some(self.dent.clone()),
        }
    }
}

/// `micro_step` (log-probs and their gradient in backend buffers, the head through the chunked
/// path) gives `backward`'s gradient bit for bit, on a ragged subset of active rows (prompt-like
/// rows and each sequence's last row have no gradient).
#[test]
fn micro_step_gives_the_gradient_of_backward_bit_for_bit() {
    let be = Cpu;
    for tied in [false, true] {
        let model = random_model(tiny_config(53, tied), 71);
        let seqs = [random_ids(6, 53, 72), random_ids(11, 53, 73), random_ids(3, 53, 74)];
        let batch = Packed::new(&seqs);
        let (targets, has) = batch.next_token_targets();
        let mut rng = ChaCha8Rng::seed_from_u64(75);
        let mut dlp = normal(&mut rng, batch.tokens(), 1.0);
        let dent = normal(&mut rng, batch.tokens(), 0.5);
        for (r, g) in dlp.iter_mut().enumerate() {
            if !has[r] || r % 4 == 1 {
                *g = 0.0;
            }
        }
        let dent: Vec<f32> =
            dent.iter().zip(&dlp).map(|(e, g)| if *g == 0.0 { 0.0 } else { *e }).collect();
        let inv_temp = 1.0 / 0.7;
        let mut ws = Workspace::new(&model, &be);
        let rows = (0..dlp.len()).filter(|&r| dlp[r] != 0.0).collect();
        let mut fixed = Fixed { dlp: dlp.clone(), dent: dent.clone(), inv_temp, rows };
        micro_step(&be, &model, &batch, &mut fixed, &mut ws).unwrap();

        let mut acts = None;
        model.forward(&be, &batch, &mut acts).unwrap();
        let mut grads = model.zero_grads(&be);
        let a = acts.as_ref().unwrap();
        model.backward(&be, &batch, a, &targets, &dlp, Some(&dent), inv_temp, &mut grads);
        for (i, (k, r)) in ws.grads.iter().zip(&grads).enumerate() {
            let same = k.iter().zip(r).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "tied {tied}: {} differs", model.layout.specs[i].name);
            assert!(k.iter().all(|x| x.is_finite()));
        }
        assert!(grads.iter().flatten().any(|&g| g != 0.0));
    }
}
