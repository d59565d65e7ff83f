//! SFT training steps on a device, for `scripts/gpu-check.sh`: the step time and the device
//! memory at `--precision bf16` vs `f32`, and with the caching allocator on or off
//! (`MMR1_CACHING_ALLOCATOR=0`), and with the weights' bf16 shadows on or off
//! (`MMR1_BF16_SHADOWS=0`), and with activation recomputation on or off (`--recompute`).
//! Prints one JSON line (plus the per-step lines on stderr).
//!
//! ```text
//! cargo run --release --features cuda --example device_step -- \
//!     --device cuda --precision bf16 [--shape qwen2.5-0.5b|1.5b|3b|7b|tiny] [--layers N] \
//!     [--seqs 4] [--len 1024] [--steps 6] [--mode train|logprobs|decode] [--recompute on|off]
//!     [--new 128] [--sampling device|host] [--group 1] [--slots 0] [--stop-ids 0]
//! ```
//! `--mode logprobs` times the log-prob pass instead (forward and per-token log-probs, no
//! backward: what GRPO's old-policy and reference passes cost).
//! `--mode decode` times a rollout: `--seqs` prompts of `--len` random tokens, then `--new`
//! tokens each (temperature 0.6, top_p 1, no stop ids: every sequence runs to the end), through
//! `rollout::generate`, which samples on the device (`--sampling device`), or through the same
//! loop with each step's logits downloaded and sampled on the host (`--sampling host`, how
//! decoding worked before). Tokens/s counts the generated tokens; the JSON line also says how
//! many bytes a decode step downloaded. Continuous batching (`rl::decode_scheduler`):
//! `--group G` responses per prompt on `--slots S` KV-cache slots (0: automatic, one per
//! response within the 8 GiB budget), `--stop-ids N` makes token ids `0..N` stop ids, so that
//! responses end at ragged lengths (near-uniform random-weight logits: a mean near vocab / N
//! tokens, capped by `--new`); the JSON line adds the slots, their occupancy, the decode steps
//! and the KV cache's bytes, and per decode step of the last rollout (prefill included) the
//! host->device copies and, with `MMR1_PROFILE=1`, the kernel launches and their device time
//! (a table by kernel on stderr): a decode step is launch bound, so these are its cost.
//! Steps: forward, per-token log-probs, token cross-entropy, backward, clip, AdamW, on one
//! packed batch of `--seqs` random sequences of `--len` tokens; the first step is a warm-up
//! (it fills the allocator's cache and compiles nothing: kernels are loaded at start).
//! Reported: median step seconds over the steps after the first, tokens/s, peak device memory
//! in use and reserved, and the allocations per steady step that were fresh (0 with the cache).
//! With `MMR1_PROFILE=1`: the device time of each kernel and GEMM shape per steady step (a
//! table on stderr, the top 40 in the JSON line).

use anyhow::{bail, Result};
use mmr1_fast::backend::precision::PrecisionChoice;
use mmr1_fast::backend::rl_ops::RlOps;
use mmr1_fast::backend::select::DeviceChoice;
use mmr1_fast::backend::{profile, Backend};
use mmr1_fast::commands::init_model::Arch;
use mmr1_fast::model::init::{init_params, Init};
use mmr1_fast::model::{Packed, ParamLayout, Qwen2, Qwen2Config};
use mmr1_fast::optim::{AdamW, AdamwConfig};
use mmr1_fast::rl::decode_scheduler::SlotStats;
use mmr1_fast::rl::rollout::{draw_token, generate_scheduled, mix_seed, SamplingParams};
use mmr1_fast::train::{forward_logprobs, micro_step, SftLoss, Workspace};
use rand::{Rng, SeedableRng};
use std::time::Instant;

struct Opts {
    device: DeviceChoice,
    precision: PrecisionChoice,
    shape: String,
    layers: Option<usize>,
    seqs: usize,
    len: usize,
    steps: usize,
    logprobs_only: bool,
    decode: bool,
    new_tokens: usize,
    host_sampling: bool,
    recompute: bool,
    group: usize,
    slots: usize,
    stop_ids: u32,
}

fn parse() -> Result<Opts> {
    let mut o = Opts {
        device: DeviceChoice::Auto,
        precision: PrecisionChoice::Auto,
        shape: "qwen2.5-0.5b".into(),
        layers: None,
        seqs: 4,
        len: 1024,
        steps: 6,
        logprobs_only: false,
        decode: false,
        new_tokens: 128,
        host_sampling: false,
        recompute: false,
        group: 1,
        slots: 0,
        stop_ids: 0,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for kv in args.chunks(2) {
        let [k, v] = kv else { bail!("expected --key value pairs, got {args:?}") };
        let e = |x: String| anyhow::anyhow!("{k}: {x}");
        match k.as_str() {
            "--device" => o.device = v.parse().map_err(e)?,
            "--precision" => o.precision = v.parse().map_err(e)?,
            "--shape" => o.shape = v.clone(),
            "--layers" => o.layers = Some(v.parse()?),
            "--seqs" => o.seqs = v.parse()?,
            "--len" => o.len = v.parse()?,
            "--steps" => o.steps = v.parse()?,
            "--mode" => {
                (o.logprobs_only, o.decode) = match v.as_str() {
                    "train" => (false, false),
                    "logprobs" => (true, false),
                    "decode" => (false, true),
                    m => bail!("--mode {m}: train, logprobs or decode"),
                }
            }
            "--new" => o.new_tokens = v.parse()?,
            "--group" => o.group = v.parse()?,
            "--slots" => o.slots = v.parse()?,
            "--stop-ids" => o.stop_ids = v.parse()?,
            "--sampling" => {
                o.host_sampling = match v.as_str() {
                    "device" => false,
                    "host" => true,
                    m => bail!("--sampling {m}: device or host"),
                }
            }
            "--recompute" => {
                o.recompute = match v.as_str() {
                    "on" => true,
                    "off" => false,
                    r => bail!("--recompute {r}: on or off"),
                }
            }
            _ => bail!("unknown option {k} (see the top of examples/device_step.rs)"),
        }
    }
    if o.steps < 2 {
        bail!("--steps must be at least 2 (the first is a warm-up)");
    }
    if o.group == 0 {
        bail!("--group must be at least 1");
    }
    if o.host_sampling && (o.group > 1 || o.slots > 0 || o.stop_ids > 0) {
        bail!("--sampling host decodes one response per prompt on a slot each, without stop ids");
    }
    Ok(o)
}

/// A published Qwen2.5 shape (`init-model`'s table; `--layers` overrides the depth) or a tiny
/// model for smoke runs.
fn config(o: &Opts) -> Result<Qwen2Config> {
    let mut cfg = if o.shape == "tiny" {
        serde_json::from_value(serde_json::json!({
            "hidden_size": 64, "intermediate_size": 72, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 97,
            "tie_word_embeddings": true, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
            "max_position_embeddings": 32768
        }))?
    } else {
        let arch = <Arch as clap::ValueEnum>::from_str(&o.shape, true).map_err(|_| {
            anyhow::anyhow!("unknown --shape {}: qwen2.5-0.5b|1.5b|3b|7b or tiny", o.shape)
        })?;
        arch.config()
    };
    if let Some(l) = o.layers {
        cfg.num_hidden_layers = l;
    }
    Ok(cfg)
}

fn run<B: RlOps>(be: &B, o: &Opts) -> Result<()> {
    if o.decode {
        return run_decode(be, o);
    }
    let cfg = config(o)?;
    let vocab = cfg.vocab_size as u32;
    let layout = ParamLayout::new(&cfg);
    let n_params: usize = layout.specs.iter().map(|s| s.numel()).sum();
    let host = init_params(&layout, Init::HuggingFace { std: 0.02 }, 0);
    let mut model = Qwen2::from_host(be, cfg, layout, &host);
    drop(host);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let seqs: Vec<Vec<u32>> =
        (0..o.seqs).map(|_| (0..o.len).map(|_| rng.gen_range(0..vocab)).collect()).collect();
    let batch = Packed::new(&seqs);
    let (_, has) = batch.next_token_targets();
    let mut loss_fn = SftLoss::new(&has, has.iter().filter(|&&h| h).count());
    // The log-prob pass needs no optimizer state (and its peak memory should not count one).
    let mut opt = (!o.logprobs_only).then(|| AdamW::new(be, &model.params, AdamwConfig::default()));
    // Nor gradient buffers: the backward allocates none in a log-prob pass.
    let mut ws = if o.logprobs_only {
        Workspace::without_grads(&model, be)
    } else {
        Workspace::new(&model, be)
    }
    .with_recompute(o.recompute);
    let (mut secs, mut fresh, mut losses) = (Vec::new(), Vec::new(), Vec::new());
    let mut warm_profile = Vec::new();
    for s in 0..o.steps {
        if s == 1 {
            warm_profile = be.kernel_profile(); // the steady steps' kernels are what follows
        }
        let t = Instant::now();
        if o.logprobs_only {
            // The log-probs came back to the host: the pass is done.
            let (_, lp, _) = forward_logprobs(be, &model, &batch, 1.0, &mut ws)?;
            let dt = t.elapsed().as_secs_f64();
            let mean = -lp.iter().map(|&x| x as f64).sum::<f64>() / lp.len() as f64;
            eprintln!("pass {s}: {dt:.3} s, mean -log p {mean:.4}");
            secs.push(dt);
            fresh.push(be.memory_stats().map_or(0, |m| m.fresh_allocs));
            losses.push(mean);
            continue;
        }
        ws.zero_grads(be);
        let loss = micro_step(be, &model, &batch, &mut loss_fn, &mut ws)?;
        let opt = opt.as_mut().expect("train mode has an optimizer");
        let rep = opt.step(be, &mut model.params, &ws.grads, 1e-5);
        // grad_norm and the loss came back to the host: the step's work is done.
        let dt = t.elapsed().as_secs_f64();
        let f = be.memory_stats().map_or(0, |m| m.fresh_allocs);
        eprintln!(
            "step {s}: {dt:.3} s, loss {loss:.4}, grad norm {:.3}, fresh allocations so far {f}",
            rep.grad_norm
        );
        secs.push(dt);
        fresh.push(f);
        losses.push(loss);
    }
    let mut steady = secs[1..].to_vec();
    steady.sort_by(f64::total_cmp);
    let median = steady[steady.len() / 2];
    let tokens = batch.tokens();
    let mem = be.memory_stats();
    let fresh_per_step = (fresh[o.steps - 1] - fresh[1]) as f64 / (o.steps - 2).max(1) as f64;
    // MMR1_PROFILE=1: device time per kernel over the steady steps (CUDA events; they add a
    // little host work per launch, so the step times of a profiled run read slightly high).
    let profile = profile::since(&warm_profile, &be.kernel_profile());
    let per = o.steps - 1;
    if !profile.is_empty() {
        eprint!("device time per steady step, by kernel:\n{}", profile::table(&profile, per, 40));
    }
    let conv: Vec<_> = profile.iter().filter(|k| k.name.starts_with("f32_to_bf16")).collect();
    let profile_top: Vec<_> = profile
        .iter()
        .take(40)
        .map(|k| {
            serde_json::json!({"name": k.name, "calls_per_step": k.calls as f64 / per as f64,
                               "ms_per_step": k.seconds * 1e3 / per as f64})
        })
        .collect();
    let line = serde_json::json!({
        "device": be.name(),
        "precision": o.precision.to_string(),
        "caching": std::env::var("MMR1_CACHING_ALLOCATOR").map_or(true, |v| v != "0" && v != "off"),
        "bf16_shadows": std::env::var("MMR1_BF16_SHADOWS").map_or(true, |v| v != "0"),
        "act_shadows": std::env::var("MMR1_ACT_SHADOWS").map_or(true, |v| v != "0"),
        "shadow_hits": mem.map(|m| m.shadow_hits),
        "shape": o.shape, "layers": model.cfg.num_hidden_layers,
        "mode": if o.logprobs_only { "logprobs" } else { "train" },
        "recompute": o.recompute,
        "params": n_params, "tokens": tokens,
        "step_s_median": median, "step_s_first": secs[0],
        "tokens_per_s": tokens as f64 / median,
        // 6 N per trained token, 2 N per token of a forward-only pass.
        "model_tflops": if o.logprobs_only { 2.0 } else { 6.0 } * n_params as f64 * tokens as f64 / median / 1e12,
        "peak_in_use_bytes": mem.map(|m| m.peak_in_use_bytes),
        "peak_reserved_bytes": mem.map(|m| m.peak_reserved_bytes),
        "fresh_allocs_first_step": fresh[0],
        "fresh_allocs_per_steady_step": fresh_per_step,
        "loss_first": losses[0], "loss_last": losses[o.steps - 1],
        "profile_ms_per_step_total": profile.iter().map(|k| k.seconds).sum::<f64>() * 1e3 / per as f64,
        "profile": profile_top,
        // GEMM operand conversions (f32_to_bf16*: weight and activation shadows and
        // temporaries) per steady step, whatever their rank in the profile.
        "conversions_per_step": conv.iter().map(|k| k.calls).sum::<u64>() as f64 / per as f64,
        "conversions_ms_per_step": conv.iter().map(|k| k.seconds).sum::<f64>() * 1e3 / per as f64,
    });
    println!("{line}");
    Ok(())
}

/// `--mode decode`: rollouts timed (see the top of the file).
fn run_decode<B: RlOps>(be: &B, o: &Opts) -> Result<()> {
    let cfg = config(o)?;
    let vocab = cfg.vocab_size;
    let layout = ParamLayout::new(&cfg);
    let n_params: usize = layout.specs.iter().map(|s| s.numel()).sum();
    let host = init_params(&layout, Init::HuggingFace { std: 0.02 }, 0);
    let model = Qwen2::from_host(be, cfg, layout, &host);
    drop(host);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let prompts: Vec<Vec<u32>> =
        (0..o.seqs).map(|_| (0..o.len).map(|_| rng.gen_range(0..vocab as u32)).collect()).collect();
    let p = SamplingParams {
        max_new_tokens: o.new_tokens,
        stop_ids: (0..o.stop_ids).collect(),
        kv_slots: o.slots,
        ..SamplingParams::default()
    };
    let (mut secs, mut rates, mut checksums) = (Vec::new(), Vec::new(), Vec::new());
    let (mut downloaded, mut uploads) = (0u64, 0u64);
    let (mut decode_steps, mut tokens) = (0, 0);
    let mut slots = SlotStats::default();
    let mut rollout_profile = Vec::new();
    for s in 0..o.steps {
        let before = be.memory_stats().map_or(0, |m| m.downloaded_bytes);
        let uploads_before = be.memory_stats().map_or(0, |m| m.uploads);
        let profile_before = be.kernel_profile();
        let t = Instant::now();
        let toks: Vec<Vec<u32>> = if o.host_sampling {
            host_sampled(&model, be, &prompts, &p, s as u64)?
        } else {
            let r =
                generate_scheduled(&model, be, &prompts, o.group, &p, s as u64, 0, None, |_| {})?;
            slots = r.stats;
            r.rollouts.into_iter().map(|r| r.tokens).collect()
        };
        let dt = t.elapsed().as_secs_f64();
        downloaded = be.memory_stats().map_or(0, |m| m.downloaded_bytes) - before;
        uploads = be.memory_stats().map_or(0, |m| m.uploads) - uploads_before;
        rollout_profile = profile::since(&profile_before, &be.kernel_profile());
        let n: usize = toks.iter().map(|t| t.len()).sum();
        let sum: u64 = toks.iter().flatten().map(|&t| t as u64).sum();
        let longest = toks.iter().map(|t| t.len()).max().unwrap_or(0);
        eprintln!(
            "rollout {s}: {dt:.3} s, {n} tokens (longest {longest}), {:.0} tokens/s, {} slots {:.3} busy in {} steps",
            n as f64 / dt,
            slots.slots,
            slots.occupancy(),
            slots.steps
        );
        decode_steps = if o.host_sampling { longest } else { slots.steps };
        tokens = n;
        secs.push(dt);
        rates.push(n as f64 / dt);
        checksums.push(sum);
    }
    let mut steady = secs[1..].to_vec();
    steady.sort_by(f64::total_cmp);
    let median = steady[steady.len() / 2];
    // Runs may sample different token counts (stop ids, a seed each): the median rate.
    let mut steady_rates = rates[1..].to_vec();
    steady_rates.sort_by(f64::total_cmp);
    let rate = steady_rates[steady_rates.len() / 2];
    let mem = be.memory_stats();
    // Per decode step of the last rollout, its prefill included (one step of `decode_steps`):
    // launches where the backend profiles them (MMR1_PROFILE=1), host->device copies always.
    // A launch-bound step costs about launches x (4-6 us) + uploads x (5-10 us) of host time.
    let per_step = decode_steps.max(1);
    let launches = rollout_profile.iter().map(|k| k.calls).sum::<u64>();
    if !rollout_profile.is_empty() {
        eprint!(
            "last rollout per decode step ({} launches), by kernel:\n{}",
            launches as f64 / per_step as f64,
            profile::table(&rollout_profile, per_step, 40)
        );
    }
    let line = serde_json::json!({
        "device": be.name(),
        "precision": o.precision.to_string(),
        "shape": o.shape, "layers": model.cfg.num_hidden_layers,
        "mode": "decode", "sampling": if o.host_sampling { "host" } else { "device" },
        "params": n_params, "seqs": o.seqs, "prompt_len": o.len, "new_tokens": o.new_tokens,
        "tokens": tokens,
        "step_s_median": median, "step_s_first": secs[0],
        "tokens_per_s": rate,
        // 2 N per generated token (attention over the cache not counted).
        "model_tflops": 2.0 * n_params as f64 * rate / 1e12,
        "downloaded_bytes_per_decode_step": downloaded as f64 / decode_steps.max(1) as f64,
        "uploads_per_decode_step": uploads as f64 / per_step as f64,
        "launches_per_decode_step": (!rollout_profile.is_empty())
            .then(|| launches as f64 / per_step as f64),
        "profile_ms_per_decode_step": (!rollout_profile.is_empty()).then(|| {
            rollout_profile.iter().map(|k| k.seconds).sum::<f64>() * 1e3 / per_step as f64
        }),
        "group": o.group, "stop_ids": o.stop_ids,
        "slots": (!o.host_sampling).then_some(slots.slots),
        "occupancy": (!o.host_sampling).then(|| slots.occupancy()),
        "decode_steps": decode_steps,
        // Prompt tokens computed, and those copied from another slot's prefill of the prompt.
        "prefilled": (!o.host_sampling).then_some(slots.prefilled),
        "shared_prefill": (!o.host_sampling).then_some(slots.shared),
        "kv_cache_bytes": (!o.host_sampling)
            .then(|| slots.kv_values * be.kv_cache_value_bytes(model.attn_shape())),
        "peak_in_use_bytes": mem.map(|m| m.peak_in_use_bytes),
        "token_checksums": checksums,
        // Decode steps replayed as CUDA graphs or run op by op by choice (MMR1_GRAPHS), over
        // all rollouts.
        "replay": be.replay_stats(),
    });
    println!("{line}");
    Ok(())
}

/// `generate`'s loop for prompts without stop ids, with each step's logits downloaded and
/// sampled on the host (`draw_token`): the decoding of before `RlOps::rl_sample`, to time
/// against. Seeds as `generate` gives them, so both draw the same tokens from the same logits.
fn host_sampled<B: Backend>(
    model: &Qwen2<B>,
    be: &B,
    prompts: &[Vec<u32>],
    p: &SamplingParams,
    base_seed: u64,
) -> Result<Vec<Vec<u32>>> {
    let n = prompts.len();
    let vocab = model.cfg.vocab_size;
    let cap = prompts.iter().map(|q| q.len()).max().unwrap_or(0) + p.max_new_tokens;
    let mut cache = model.new_cache(be, n, cap);
    let seeds: Vec<u64> = (0..n).map(|s| mix_seed(base_seed, s as u64)).collect();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut feed: Vec<Vec<u32>> = prompts.to_vec();
    for _ in 0..p.max_new_tokens {
        let inputs: Vec<(usize, &[u32])> = (0..n).map(|s| (s, &feed[s][..])).collect();
        let logits = model.decode_step(be, &mut cache, &inputs)?;
        for s in 0..n {
            let row = &logits[s * vocab..(s + 1) * vocab];
            let (tok, _) = draw_token(row, p, seeds[s], out[s].len())?;
            out[s].push(tok);
            feed[s] = vec![tok];
        }
    }
    Ok(out)
}

fn main() -> Result<()> {
    let o = parse()?;
    mmr1_fast::with_backend!(o.device, precision = o.precision, be => run(be, &o))
}
