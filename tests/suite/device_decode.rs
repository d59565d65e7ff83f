//! Decoding samples on the backend (`Qwen2::decode_step_logits` + `RlOps::rl_sample`, used by
//! `rollout::generate`): the logits stay in the backend's memory and only the sampled ids and
//! log-probs cross to the host, and the responses are those of sampling the downloaded logits
//! on the host (`decode_step` + `draw_token`, the path decoding took before), on the CPU and on
//! the CUDA emulator, over seeds, greedy, temperatures, top-k, top-p, stop ids and ragged
//! prompts. The emulator's responses equal the CPU's token for token (their logits differ
//! in the last bits: log-probs agree to 1e-5).
//!
//! On a GPU (`gpu::`, #[ignore]d, run by scripts/gpu-check.sh) the same oracle on the CUDA
//! backend: identical tokens; log-probs within 1 f32 ulp (the device's exp/log may differ
//! from the host's in the last bit of an f64), and the same download count.
#![cfg(any(feature = "emu", feature = "cuda"))]

use crate::common;
use common::*;
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::backend::cuda::CudaBackend;
use mmr1_fast::backend::rl_ops::RlOps;
use mmr1_fast::backend::Backend;
use mmr1_fast::model::Qwen2;
use mmr1_fast::rl::rollout::{draw_token, generate, mix_seed, SamplingParams, StopReason};

const VOCAB: usize = 97;

fn model_on<B: Backend>(be: &B) -> Qwen2<B> {
    random_model_on(be, tiny_config(VOCAB, false), 3)
}

/// Ragged prompts: 1, 4 and 9 tokens.
fn prompts() -> Vec<Vec<u32>> {
    [1, 4, 9].iter().enumerate().map(|(i, &n)| random_ids(n, VOCAB, 40 + i as u64)).collect()
}

/// (temperature, top_p, top_k) cases: greedy, plain, nucleus, top-k, both.
const RULES: [(f32, f32, usize); 5] =
    [(0.0, 1.0, 0), (0.7, 1.0, 0), (1.3, 0.9, 0), (1.0, 1.0, 5), (0.9, 0.8, 7)];

fn params(rule: (f32, f32, usize), stop_ids: Vec<u32>) -> SamplingParams {
    SamplingParams {
        temperature: rule.0,
        top_p: rule.1,
        top_k: rule.2,
        max_new_tokens: 9,
        stop_ids,
        stop_strings: vec![],
        kv_slots: 0,
    }
}

type Response = (Vec<u32>, Vec<f32>, StopReason);

/// The oracle: `generate`'s loop with the logits downloaded every step and sampled on the
/// host by `draw_token` (the CPU rule), as decoding worked before it sampled on the backend.
fn host_sampled<B: Backend>(
    model: &Qwen2<B>,
    be: &B,
    prompts: &[Vec<u32>],
    group: usize,
    p: &SamplingParams,
    base_seed: u64,
) -> Vec<Response> {
    let n = prompts.len() * group;
    let cap = prompts.iter().map(|q| q.len()).max().unwrap() + p.max_new_tokens;
    let mut cache = model.new_cache(be, n, cap);
    let seeds: Vec<u64> = (0..n).map(|s| mix_seed(base_seed, s as u64)).collect();
    let mut out: Vec<Response> = (0..n).map(|_| (vec![], vec![], StopReason::MaxTokens)).collect();
    let mut feed: Vec<Vec<u32>> = (0..n).map(|s| prompts[s / group].clone()).collect();
    let mut active: Vec<usize> = (0..n).collect();
    while !active.is_empty() {
        let inputs: Vec<(usize, &[u32])> = active.iter().map(|&s| (s, &feed[s][..])).collect();
        let logits = model.decode_step(be, &mut cache, &inputs).unwrap();
        let mut still = vec![];
        for (j, &s) in active.iter().enumerate() {
            let row = &logits[j * VOCAB..(j + 1) * VOCAB];
            let (tok, lp) = draw_token(row, p, seeds[s], out[s].0.len()).unwrap();
            out[s].0.push(tok);
            out[s].1.push(lp);
            if p.stop_ids.contains(&tok) {
                out[s].2 = StopReason::StopToken;
            } else if out[s].0.len() < p.max_new_tokens {
                feed[s] = vec![tok];
                still.push(s);
            }
        }
        active = still;
    }
    out
}

fn device_sampled<B: RlOps>(
    model: &Qwen2<B>,
    be: &B,
    prompts: &[Vec<u32>],
    group: usize,
    p: &SamplingParams,
    base_seed: u64,
) -> Vec<Response> {
    let outs = generate(model, be, prompts, group, p, base_seed, None, |_| {}).unwrap();
    outs.into_iter().map(|o| (o.tokens, o.logprobs, o.stop)).collect()
}

/// Equality of responses: tokens and stop reasons exactly, log-probs within `ulps` f32 ulps
/// (compared as bits, so NaN cannot pass).
fn assert_close(a: &[Response], b: &[Response], ulps: i64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: response count");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.0, y.0, "{what}: response {i} tokens");
        assert_eq!(x.2, y.2, "{what}: response {i} stop reason");
        for (p, q) in x.1.iter().zip(&y.1) {
            let d = (p.to_bits() as i64 - q.to_bits() as i64).abs();
            assert!(p.is_finite() && d <= ulps, "{what}: response {i} log-prob {p} vs {q}");
        }
    }
}

/// Stop ids that end some responses early and not others: the most frequent first tokens of
/// greedy decoding would end everything at once, so take two tokens seen mid-response.
fn stop_ids_for(r: &[Response]) -> Vec<u32> {
    let mut ids: Vec<u32> = r.iter().filter_map(|x| x.0.get(3).copied()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids.truncate(2);
    ids
}

/// Every rule with and without stop ids (chosen from the CPU's responses, so that some end
/// early and the active set turns ragged), for each seed of `seeds(rule index)`.
fn check_backend<B: RlOps>(be: &B, name: &str, ulps: i64, seeds: impl Fn(usize) -> Vec<u64>) {
    let model = model_on(be);
    let cpu_model = model_on(&Cpu);
    let prompts = prompts();
    for (ri, &rule) in RULES.iter().enumerate() {
        for seed in seeds(ri) {
            let plain = params(rule, vec![]);
            let stops = stop_ids_for(&host_sampled(&cpu_model, &Cpu, &prompts, 2, &plain, seed));
            for p in [plain, params(rule, stops)] {
                let what = format!("{name} rule {ri} seed {seed} stop ids {:?}", p.stop_ids);
                let want = host_sampled(&model, be, &prompts, 2, &p, seed);
                let got = device_sampled(&model, be, &prompts, 2, &p, seed);
                assert_close(&got, &want, ulps, &what);
                let stopped = want.iter().filter(|r| r.2 == StopReason::StopToken).count();
                let ragged = stopped > 0 && stopped < want.len();
                assert!(p.stop_ids.is_empty() || ragged || rule.0 == 0.0, "{what}: not ragged");
            }
        }
    }
}

#[test]
fn cpu_decoding_samples_as_the_host_rule_does() {
    check_backend(&Cpu, "cpu", 0, |_| vec![5, 1234, 99]);
}

/// Fewer cases than on the CPU: the emulator runs every kernel on host fibers (~1 s a
/// generate call here).
#[cfg(feature = "emu")]
#[test]
fn emulator_decoding_samples_as_the_host_rule_does() {
    check_backend(&CudaBackend::emulator(), "emu", 0, |ri| vec![5 + 1000 * ri as u64]);
}

#[cfg(feature = "emu")]
#[test]
fn emulator_responses_equal_cpu_responses() {
    let emu = CudaBackend::emulator();
    let (mc, me) = (model_on(&Cpu), model_on(&emu));
    let prompts = prompts();
    let mut worst = 0.0f32;
    for (ri, &rule) in RULES.iter().enumerate() {
        for seed in [9u64 + ri as u64] {
            let p = params(rule, vec![11, 60]);
            let c = device_sampled(&mc, &Cpu, &prompts, 3, &p, seed);
            let e = device_sampled(&me, &emu, &prompts, 3, &p, seed);
            for (i, (x, y)) in c.iter().zip(&e).enumerate() {
                assert_eq!(x.0, y.0, "rule {ri} seed {seed} response {i}: tokens differ");
                assert_eq!(x.2, y.2, "rule {ri} seed {seed} response {i}: stop reason");
                for (a, b) in x.1.iter().zip(&y.1) {
                    let d = (a - b).abs();
                    assert!(d <= 1e-5, "rule {ri} seed {seed} response {i}: log-prob {a} vs {b}");
                    worst = worst.max(d);
                }
            }
        }
    }
    println!("ERR emu vs cpu decode log-probs: worst abs {worst:.3e}");
}

/// What crosses to the host per decode step is O(rows): the sampled ids and log-probs, never
/// the `[rows x vocab]` logits. The counter itself is checked to see the logits when they are
/// downloaded (`decode_step`, the host-logits path).
fn check_downloads<B: RlOps>(be: &B) {
    let model = model_on(be);
    let prompts = prompts();
    let stats = || be.memory_stats().expect("the backend counts downloads");
    let p = params((0.8, 0.9, 0), vec![]);
    let before = stats();
    let outs = generate(&model, be, &prompts, 2, &p, 3, None, |_| {}).unwrap();
    let after = stats();
    let sampled: usize = outs.iter().map(|o| o.tokens.len()).sum();
    let steps = outs.iter().map(|o| o.tokens.len()).max().unwrap();
    let bytes = (after.downloaded_bytes - before.downloaded_bytes) as usize;
    let count = (after.downloads - before.downloads) as usize;
    println!(
        "decode downloads: {count} copies, {bytes} bytes for {sampled} tokens in {steps} steps"
    );
    // A token id (4 bytes) and its log-prob (4 bytes) per sampled row, two copies a step
    // (the logits would be 4 * VOCAB = 388 bytes a row).
    assert_eq!(bytes, 8 * sampled, "bytes downloaded per sampled token");
    assert_eq!(count, 2 * steps, "downloads per decode step");

    // The counter sees a logits download.
    let mut cache = model.new_cache(be, 2, 8);
    let before = stats();
    model.decode_step(be, &mut cache, &[(0, &[1, 2]), (1, &[3])]).unwrap();
    let bytes = (stats().downloaded_bytes - before.downloaded_bytes) as usize;
    assert_eq!(bytes, 2 * VOCAB * 4, "decode_step downloads its [rows x vocab] logits");
}

#[cfg(feature = "emu")]
#[test]
fn decoding_downloads_ids_and_logprobs_not_logits() {
    check_downloads(&CudaBackend::emulator());
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::*;
    fn gpu() -> CudaBackend<mmr1_fast::backend::cuda::driver::CudaDevice> {
        match CudaBackend::new(0) {
            Ok(b) => b,
            Err(e) => panic!("GPU test asked for, but there is no GPU: {e}"),
        }
    }
    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn decoding_samples_as_the_host_rule_does() {
        check_backend(&gpu(), "cuda", 1, |_| vec![5, 1234]);
    }
    #[test]
    #[ignore = "needs a GPU: scripts/gpu-check.sh runs it (--include-ignored)"]
    fn decoding_downloads_ids_and_logprobs_not_logits() {
        check_downloads(&gpu());
    }
}
