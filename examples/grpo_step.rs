//! One whole GRPO step at a real Qwen2.5 shape (random weights, random prompts), phase by
//! phase, for `scripts/gpu-check.sh` beside `benches/grpo_step_gpu_torch.py` (HF `generate`
//! and the same update in PyTorch): the rollout (`--prompts` x `--group` responses of exactly
//! `--new` tokens, temperature 0.6, on the device's sampler with continuous batching), the
//! rewards and group advantages, VAS scores of the step's rollouts (pass rate and
//! 1 - self-BLEU-4; MMR1 scores separate rollouts every T_update steps, so this is the cost
//! of one scoring of this size, at the paper's alpha and beta), then the update (the reference
//! log-prob pass, the GRPO loss with k3 KL 0.01, backward, clip, AdamW: MMR1's settings, one
//! optimizer step). On-policy the update takes the old log-probs from its own forward;
//! `--old-logprob-pass` runs their pass as well, the work the PyTorch side does.
//!
//! The reward is a rule both sides compute from the token ids alone (1 when the response's
//! id sum is even): random-weight responses have no answers to grade, and a rule that splits
//! groups gives the update nonzero advantages.
//!
//! Prints the per-step phases on stderr and one JSON line: median seconds per phase over the
//! steps after the first, tokens generated and trained, peak device memory.
//!
//! ```text
//! cargo run --release --features cuda --example grpo_step -- --device cuda \
//!     [--shape qwen2.5-0.5b] [--prompts 32] [--group 8] [--len 128] [--new 128] [--steps 2]
//! ```

use anyhow::{bail, Result};
use clap::Parser;
use mmr1_fast::backend::precision::PrecisionChoice;
use mmr1_fast::backend::rl_ops::{RlOps, RolloutBatch};
use mmr1_fast::backend::select::DeviceChoice;
use mmr1_fast::commands::init_model::Arch;
use mmr1_fast::model::init::{init_params, Init};
use mmr1_fast::model::{ParamLayout, Qwen2};
use mmr1_fast::optim::{AdamW, AdamwConfig};
use mmr1_fast::pipeline::config::TrainConfig;
use mmr1_fast::pipeline::rl_phase::grpo_settings;
use mmr1_fast::rl::reward::Verdict;
use mmr1_fast::rl::rollout::generate_scheduled;
use mmr1_fast::rl::scoring::VpsParams;
use mmr1_fast::rl::trainer::{group_advantages, update, Experience};
use mmr1_fast::train::Workspace;
use rand::{Rng, SeedableRng};
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Time one GRPO step (rollout, rewards, VAS scores, update) at a Qwen2.5 shape")]
struct Opts {
    /// cpu, cuda[:N], emu or auto.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// bf16 or f32 (auto: bf16 on a GPU).
    #[arg(long, default_value = "auto")]
    precision: PrecisionChoice,
    /// A published shape (qwen2.5-0.5b|1.5b|3b|7b), random weights.
    #[arg(long, default_value = "qwen2.5-0.5b")]
    shape: String,
    /// Fewer decoder layers than the shape has (quick runs).
    #[arg(long)]
    layers: Option<usize>,
    /// Prompts per step.
    #[arg(long, default_value_t = 32)]
    prompts: usize,
    /// Responses per prompt (MMR1: 8).
    #[arg(long, default_value_t = 8)]
    group: usize,
    /// Tokens per prompt.
    #[arg(long, default_value_t = 128)]
    len: usize,
    /// Tokens per response (every response runs to it: no stop ids).
    #[arg(long, default_value_t = 128)]
    new: usize,
    /// Steps; the first is a warm-up.
    #[arg(long, default_value_t = 2)]
    steps: usize,
    /// Tokens per micro-batch of the update (rl.micro_batch_tokens).
    #[arg(long, default_value_t = 16384)]
    micro_tokens: usize,
    /// Run the old log-probs' own forward pass (rl.old_logprob_pass), as the PyTorch side does.
    #[arg(long)]
    old_logprob_pass: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// 1 when the response's token ids sum to an even number (see the top of the file).
fn reward_of(tokens: &[u32]) -> f32 {
    (tokens.iter().map(|&t| t as u64).sum::<u64>() % 2 == 0) as u8 as f32
}

fn run<B: RlOps>(be: &B, o: &Opts) -> Result<()> {
    if o.steps < 2 || o.prompts == 0 || o.group == 0 || o.len == 0 || o.new == 0 {
        bail!("--steps >= 2 (the first is a warm-up); --prompts, --group, --len, --new >= 1");
    }
    let arch = <Arch as clap::ValueEnum>::from_str(&o.shape, true)
        .map_err(|_| anyhow::anyhow!("unknown --shape {}: qwen2.5-0.5b|1.5b|3b|7b", o.shape))?;
    let mut cfg = arch.config();
    if let Some(l) = o.layers {
        cfg.num_hidden_layers = l;
    }
    let vocab = cfg.vocab_size as u32;
    let layout = ParamLayout::new(&cfg);
    let n_params: usize = layout.specs.iter().map(|s| s.numel()).sum();
    let host = init_params(&layout, Init::HuggingFace { std: 0.02 }, 0);
    let mut policy = Qwen2::from_host(be, cfg.clone(), layout.clone(), &host);
    // MMR1's reference policy is the starting checkpoint.
    let reference = Qwen2::from_host(be, cfg, layout, &host);
    drop(host);

    let mut tc = TrainConfig::default();
    tc.rl.group_size = o.group;
    tc.rl.max_new_tokens = o.new;
    tc.rl.micro_batch_tokens = o.micro_tokens;
    tc.rl.old_logprob_pass = o.old_logprob_pass;
    let s = grpo_settings(&tc, vec![]);
    let mut opt = AdamW::new(
        be,
        &policy.params,
        AdamwConfig { weight_decay: tc.rl.weight_decay, ..AdamwConfig::default() },
    );
    let mut ws = Workspace::new(&policy, be);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let prompts: Vec<Vec<u32>> =
        (0..o.prompts).map(|_| (0..o.len).map(|_| rng.gen_range(0..vocab)).collect()).collect();

    let (mut t_roll, mut t_adv, mut t_score, mut t_update, mut t_step) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut generated, mut zero_var, mut losses) = (0, vec![], vec![]);
    for step in 0..o.steps {
        let t0 = Instant::now();
        let r = generate_scheduled(
            &policy,
            be,
            &prompts,
            o.group,
            &s.sampling,
            step as u64,
            0,
            None,
            |_| {},
        )?;
        let responses: Vec<Vec<u32>> = r.rollouts.into_iter().map(|r| r.tokens).collect();
        let t1 = Instant::now();

        let rewards: Vec<f32> = responses.iter().map(|t| reward_of(t)).collect();
        let lens: Vec<usize> = responses.iter().map(|t| t.len()).collect();
        let (advantages, stats) = group_advantages(be, &rewards, &lens, o.group, &s.adv);
        let t2 = Instant::now();

        let (mut flat, mut roll_offs) = (vec![], vec![0]);
        for t in &responses {
            flat.extend_from_slice(t);
            roll_offs.push(flat.len());
        }
        let items: Vec<usize> = (0..=o.prompts).map(|k| k * o.group).collect();
        let batch =
            RolloutBatch { tokens: &flat, rollouts: &roll_offs, items: &items, correct: &rewards };
        let vps = VpsParams::default(); // the paper's alpha, beta and 1 - self-BLEU-4
        let scores = be.rl_vas_scores(&batch, vps.alpha, vps.beta, vps.tds_metric);
        assert_eq!(scores.len(), o.prompts);
        let t3 = Instant::now();

        generated = flat.len();
        let verdicts = rewards
            .iter()
            .map(|&r| Verdict { extracted: None, accuracy: r, format: 0.0 })
            .collect();
        let exp = Experience {
            items: (0..o.prompts).collect(),
            prompts: prompts.clone(),
            responses,
            verdicts,
            rewards,
            advantages,
            group_size: o.group,
            rollout: r.stats,
        };
        let rep = update(&mut policy, Some(&reference), &mut opt, be, &exp, &s, tc.rl.lr, &mut ws)?;
        let t4 = Instant::now();
        let secs = |a: Instant, b: Instant| (b - a).as_secs_f64();
        eprintln!(
            "step {step}: rollout {:.3} s ({generated} tokens), rewards + advantages {:.4} s, VAS scores {:.4} s, \
             update {:.3} s, total {:.3} s; loss {:.5}, zero-variance groups {}",
            secs(t0, t1),
            secs(t1, t2),
            secs(t2, t3),
            secs(t3, t4),
            secs(t0, t4),
            rep.loss,
            stats.num_zero_variance
        );
        if step > 0 {
            t_roll.push(secs(t0, t1));
            t_adv.push(secs(t1, t2));
            t_score.push(secs(t2, t3));
            t_update.push(secs(t3, t4));
            t_step.push(secs(t0, t4));
        }
        zero_var.push(stats.num_zero_variance);
        losses.push(rep.loss);
    }
    let trained = o.prompts * o.group * (o.len + o.new);
    let mem = be.memory_stats();
    let (step_s, roll_s) = (median(t_step), median(t_roll));
    let line = serde_json::json!({
        "device": be.name(), "precision": o.precision.to_string(), "mode": "grpo",
        "shape": o.shape, "params": n_params, "prompts": o.prompts, "group": o.group,
        "prompt_len": o.len, "new_tokens": o.new, "generated_tokens": generated,
        "update_tokens": trained, "micro_batch_tokens": o.micro_tokens,
        "rollout_s": roll_s, "rewards_advantages_s": median(t_adv),
        "vas_scores_s": median(t_score), "update_s": median(t_update), "step_s_median": step_s,
        "decode_tokens_per_s": generated as f64 / roll_s,
        "peak_in_use_bytes": mem.map(|m| m.peak_in_use_bytes),
        "zero_variance_groups": zero_var, "losses": losses,
        "replay": be.replay_stats(),
    });
    println!("{line}");
    Ok(())
}

fn main() -> Result<()> {
    let o = Opts::parse();
    mmr1_fast::with_backend!(o.device, precision = o.precision, be => run(be, &o))
}
