//! Where the time of one SFT step goes, at the shape of `benches/train_step.rs`: forward,
//! backward (the head in one pass: the log-probs come from its logits, as `micro_step` runs
//! an SFT loss), the loss value and AdamW timed separately, then the step's GEMMs alone (the same
//! shapes through `Backend::matmul`), medians over N steps after 2 warm-up steps. A profiler
//! stand-in for machines without `perf`.
//!
//! `RAYON_NUM_THREADS=2 cargo run --release --example step_phases [-- N]`

use mmr1_fast::backend::chunked_logprob::{Dlp, RowGrads, RowLogprobs};
use mmr1_fast::backend::cpu::{rope_inv_freq, Cpu};
use mmr1_fast::backend::{Backend, Tr};
use mmr1_fast::model::init::{init_params, Init};
use mmr1_fast::model::{Packed, ParamLayout, Qwen2, Qwen2Config};
use mmr1_fast::optim::{AdamW, AdamwConfig};
use mmr1_fast::train::{SftLoss, TokenLoss, Workspace};
use rand::{Rng, SeedableRng};
use std::time::Instant;

/// This process's CPU time so far (user + system, all threads), from /proc/self/stat (clock
/// ticks, usually 10 ms: time enough steps); NaN where there is no /proc.
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // utime and stime are fields 14 and 15 counting from the pid; counted here after the
    // parenthesized command name (which may hold spaces): field 3, the state, comes first.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (tick(11) + tick(12)) / 100.0 // USER_HZ is 100 on Linux
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let n: usize = std::env::args().nth(1).map_or(10, |s| s.parse().expect("N: a step count"));
    let cfg: Qwen2Config = serde_json::from_value(serde_json::json!({
        "hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 2048,
        "tie_word_embeddings": false, "rope_theta": 10000.0, "rms_norm_eps": 1e-6
    }))
    .unwrap();
    let layout = ParamLayout::new(&cfg);
    let host = init_params(&layout, Init::HuggingFace { std: 0.02 }, 0);
    let be = Cpu;
    let mut model = Qwen2::from_host(&be, cfg.clone(), layout, &host);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let seqs: Vec<Vec<u32>> =
        (0..8).map(|_| (0..128).map(|_| rng.gen_range(0..2048)).collect()).collect();
    let batch = Packed::new(&seqs);
    let (_, has) = batch.next_token_targets();
    let mut loss = SftLoss::new(&has, has.iter().filter(|&&h| h).count());
    let mut opt = AdamW::new(&be, &model.params, AdamwConfig::default());
    let mut ws = Workspace::new(&model, &be);

    let names = ["zero grads", "forward", "backward", "loss", "AdamW", "step"];
    let mut times: Vec<Vec<f64>> = vec![vec![]; names.len()];
    let mut cpu0 = 0.0;
    for it in 0..n + 2 {
        if it == 2 {
            cpu0 = process_cpu_seconds();
        }
        let t0 = Instant::now();
        ws.zero_grads(&be);
        let t1 = Instant::now();
        model.forward(&be, &batch, &mut ws.acts).unwrap();
        let t2 = Instant::now();
        let (targets, _) = batch.next_token_targets();
        let dlp = TokenLoss::<Cpu>::constant_dlp(&loss, &be).expect("SFT's gradient is known");
        let acts = ws.acts.as_ref().unwrap();
        let rows = TokenLoss::<Cpu>::rows(&loss);
        let rg = RowGrads { dlp: Dlp::Given(&dlp), dent: None, rows };
        let (mut lp, mut ent) = (be.zeros(batch.tokens()), be.zeros(batch.tokens()));
        let out = RowLogprobs { lp: &mut lp, entropy: &mut ent };
        let chunk = ws.logit_chunk;
        let (grads, scratch) = (&mut ws.grads, &mut ws.scratch);
        model
            .backward_hooked(
                &be,
                &batch,
                acts,
                &targets,
                rg,
                Some(out),
                1.0,
                chunk,
                grads,
                scratch,
                None,
            )
            .unwrap();
        let t3 = Instant::now();
        TokenLoss::<Cpu>::eval(&mut loss, &be, &lp, &ent);
        let t4 = Instant::now();
        opt.step(&be, &mut model.params, &ws.grads, 1e-4);
        let t5 = Instant::now();
        if it >= 2 {
            for (k, (a, b)) in
                [(t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5), (t0, t5)].iter().enumerate()
            {
                times[k].push((*b - *a).as_secs_f64() * 1e3);
            }
        }
    }
    let cpu1 = process_cpu_seconds();
    for (name, t) in names.iter().zip(times) {
        println!("{name:>12}: {:8.2} ms median", median(t));
    }
    println!(
        "{:>12}: {:8.2} ms per step ({} threads; all threads' user + system time, which a \
         loaded machine inflates far less than the wall clock)",
        "CPU time",
        (cpu1 - cpu0) * 1e3 / n as f64,
        rayon::current_num_threads()
    );
    // The forward's and backward's GEMMs alone: (m, n, k, count per step).
    let (t, d, i, kvd, v, l) = (1024usize, 256usize, 704usize, 128usize, 2048usize, 4usize);
    let shapes = [
        ("fwd q,o", t, d, d, 2 * l),
        ("fwd k,v", t, kvd, d, 2 * l),
        ("fwd gate,up", t, i, d, 2 * l),
        ("fwd down", t, d, i, l),
        ("head logits (the backward's)", t, v, d, 1),
        ("head dh", t, d, v, 1),
        ("head dW", v, d, t, 1),
        ("bwd dx (N,N) d<-d", t, d, d, 2 * l),
        ("bwd dx (N,N) d<-kvd", t, d, kvd, 2 * l),
        ("bwd dx (N,N) d<-i", t, d, i, 2 * l),
        ("bwd dx (N,N) i<-d", t, i, d, l),
        ("bwd dW (T,N) d,d", d, d, t, 2 * l),
        ("bwd dW (T,N) kvd,d", kvd, d, t, 2 * l),
        ("bwd dW (T,N) i,d", i, d, t, 2 * l),
        ("bwd dW (T,N) d,i", d, i, t, l),
    ];
    let mut total = 0.0;
    for (name, m, nn, k, count) in shapes {
        let (ta, tb) = if name.contains("(T,N)") || name == "head dW" {
            (Tr::T, Tr::N)
        } else if name.starts_with("fwd") || name.starts_with("head (") {
            (Tr::N, Tr::T)
        } else {
            (Tr::N, Tr::N)
        };
        let a = be.upload(&vec![0.5f32; m * k]);
        let b = be.upload(&vec![0.25f32; nn * k]);
        let mut c = be.zeros(m * nn);
        let mut ts = vec![];
        for _ in 0..n + 2 {
            let t0 = Instant::now();
            be.matmul(&mut c, &a, ta, &b, tb, m, nn, k, 1.0);
            ts.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        let ms = median(ts[2..].to_vec());
        let gflops = 2.0 * (m * nn * k) as f64 / ms / 1e6;
        total += ms * count as f64;
        println!(
            "{name:>28}: {ms:7.3} ms x {count:2} = {:7.2} ms ({gflops:5.1} GFLOP/s)",
            ms * count as f64
        );
    }
    println!("{:>28}: {total:7.2} ms", "GEMMs of a step");
    ops(&be, &model, &batch, n);
}

/// The step's other ops, one call each at the step's shapes, times their count per step.
fn ops(be: &Cpu, model: &Qwen2<Cpu>, batch: &Packed, n: usize) {
    let c = &model.cfg;
    let (t, d, i, v, l) = (batch.tokens(), c.hidden_size, c.intermediate_size, c.vocab_size, 4);
    let kvd = c.n_kv_heads() * c.head_dim();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut rnd =
        |len: usize| be.upload(&(0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect::<Vec<_>>());
    let (q, k, vv, dout) = (rnd(t * d), rnd(t * kvd), rnd(t * kvd), rnd(t * d));
    let (x, w) = (rnd(t * d), rnd(d));
    let (gate, up) = (rnd(t * i), rnd(t * i));
    let logits = rnd(t * v);
    let (targets, _) = batch.next_token_targets();
    let dlp = rnd(t);
    let zeros_t = be.zeros(t);
    let (mut o, mut lse, mut dq, mut dk, mut dv) = (
        be.zeros(t * d),
        be.zeros(t * c.num_attention_heads),
        be.zeros(t * d),
        be.zeros(t * kvd),
        be.zeros(t * kvd),
    );
    be.attention(&mut o, &mut lse, &q, &k, &vv, &batch.spans, model.attn_shape());
    let time = |name: &str, count: usize, f: &mut dyn FnMut()| {
        let mut ts = vec![];
        for _ in 0..n + 2 {
            let t0 = Instant::now();
            f();
            ts.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        let ms = median(ts[2..].to_vec());
        println!("{name:>28}: {ms:7.3} ms x {count:2} = {:7.2} ms", ms * count as f64);
        ms * count as f64
    };
    let mut total = 0.0;
    let (mut a1, mut a2) = (be.zeros(t * d), be.zeros(t));
    total += time("attention", l, &mut || {
        be.attention(&mut a1, &mut lse, &q, &k, &vv, &batch.spans, model.attn_shape())
    });
    total += time("attention_backward", l, &mut || {
        be.attention_backward(
            &mut dq,
            &mut dk,
            &mut dv,
            &dout,
            &q,
            &k,
            &vv,
            &o,
            &lse,
            &batch.spans,
            model.attn_shape(),
        )
    });
    total += time("rmsnorm", 2 * l + 1, &mut || be.rmsnorm(&mut a1, &mut a2, &x, &w, t, d, 1e-6));
    let (mut dx, mut dw, rstd) = (be.zeros(t * d), be.zeros(d), rnd(t));
    total += time("rmsnorm_backward", 2 * l + 1, &mut || {
        be.rmsnorm_backward(&mut dx, &mut dw, &dout, &x, &w, &rstd, t, d)
    });
    let mut qq = q.clone();
    total += time("rope (q; k is half)", 3 * l, &mut || {
        be.rope(
            &mut qq,
            &batch.positions,
            c.num_attention_heads,
            c.head_dim(),
            &rope_inv_freq(c.head_dim(), 1e4),
            false,
        )
    });
    let (mut act, mut dg, mut du) = (be.zeros(t * i), be.zeros(t * i), be.zeros(t * i));
    total += time("swiglu", l, &mut || be.swiglu(&mut act, &gate, &up));
    total +=
        time("swiglu_backward", l, &mut || be.swiglu_backward(&mut dg, &mut du, &gate, &gate, &up));
    let (mut lp, mut ent) = (be.zeros(t), be.zeros(t));
    total +=
        time("logprobs", 1, &mut || be.logprobs(&mut lp, &mut ent, &logits, &targets, t, v, 1.0));
    let mut dlogits = be.zeros(t * v);
    total += time("logprobs_backward", 1, &mut || {
        be.logprobs_backward(&mut dlogits, &logits, &targets, &dlp, &zeros_t, t, v, 1.0)
    });
    let mut db = be.zeros(d);
    total += time("bias_backward (q)", 3 * l, &mut || be.bias_backward(&mut db, &dout, t, d));
    let mut xa = x.clone();
    total += time("add_assign", 6 * l, &mut || be.add_assign(&mut xa, &dout));
    total += time("copy (t x d)", 2 * l, &mut || be.copy(&mut xa, 0, &dout, 0, t * d));
    let n_params: usize = model.params.iter().map(|p| p.len()).sum();
    let (mut p, g, mut m1, mut m2) =
        (rnd(n_params), rnd(n_params), be.zeros(n_params), be.zeros(n_params));
    let hp = mmr1_fast::backend::AdamwStep {
        lr: 1e-4,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        step: 1,
        grad_scale: 1.0,
    };
    total +=
        time("adamw (all params as one)", 1, &mut || be.adamw(&mut p, &g, &mut m1, &mut m2, hp));
    total += time("sum_squares (all params)", 1, &mut || {
        std::hint::black_box(be.sum_squares(&g));
    });
    println!("{:>28}: {total:7.2} ms", "other ops of a step");
}
