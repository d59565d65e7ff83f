//! Continuous batching of rollouts (`rl::decode_scheduler`): the responses decode on a bounded
//! number of KV-cache slots, a finished response's slot taking the next waiting prompt in the
//! same decode step as the other slots' tokens. Every response (tokens, log-probs as bits,
//! stop reason) is the one decoded with a slot per response, for 1, 2, 3, n - 1 and n slots,
//! ragged prompts, stop ids, stop strings, max_new_tokens and groups of 1 and 4, on the CPU and
//! on the emulator (f32, and bf16 with the flash kernels); a step that mixes prefills with
//! decodes gives each sequence the logits it gets alone; the cache holds `slots` sequences;
//! and the slots are busier than fixed chunks run to their longest response.
//! The VL rollouts share the scheduler: tests/suite/vl_train.rs `batched_rollouts_equal_single_ones`.

use crate::common;
use common::*;
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::backend::rl_ops::RlOps;
use mmr1_fast::backend::Backend;
use mmr1_fast::data::demo::{demo_config, demo_tokenizer};
use mmr1_fast::model::kv_cache::KvCache;
use mmr1_fast::model::{Qwen2, Qwen2Config};
use mmr1_fast::rl::decode_scheduler::{
    decode_scheduled, kv_values_per_token, Batch, Feed, Schedule, SlotStats,
};
use mmr1_fast::rl::rollout::{generate_scheduled, mix_seed, Rollout, SamplingParams, StopReason};
use mmr1_fast::tokenizer::Tokenizer;

const VOCAB: usize = 97;

fn model_on<B: Backend>(be: &B, cfg: Qwen2Config) -> Qwen2<B> {
    random_model_on(be, cfg, 3)
}

/// Head dim 16: the flash kernels exist for it (the tiny config's 8 runs the reference
/// prefill kernel beside the flash decode kernel).
#[cfg(feature = "emu")]
fn flash_config() -> Qwen2Config {
    let json = serde_json::json!({
        "hidden_size": 64, "intermediate_size": 67, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": VOCAB,
        "tie_word_embeddings": false, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 256
    });
    serde_json::from_value(json).unwrap()
}

/// Ragged prompts: 1, 4, 9, 2 and 6 tokens.
fn prompts() -> Vec<Vec<u32>> {
    [1, 4, 9, 2, 6].iter().enumerate().map(|(i, &n)| random_ids(n, VOCAB, 40 + i as u64)).collect()
}

fn params(temperature: f32, top_p: f32, stop_ids: Vec<u32>, slots: usize) -> SamplingParams {
    SamplingParams {
        temperature,
        top_p,
        top_k: 0,
        max_new_tokens: 9,
        stop_ids,
        stop_strings: vec![],
        kv_slots: slots,
    }
}

/// A response as bits: tokens, log-prob bits, stop reason.
type Bits = (Vec<u32>, Vec<u32>, StopReason);

fn bits(r: &[Rollout]) -> Vec<Bits> {
    r.iter()
        .map(|o| (o.tokens.clone(), o.logprobs.iter().map(|x| x.to_bits()).collect(), o.stop))
        .collect()
}

/// Stop ids seen mid-response in `r`, so that some responses end early and others do not.
fn stop_ids_for(r: &[Rollout]) -> Vec<u32> {
    let mut ids: Vec<u32> = r.iter().filter_map(|x| x.tokens.get(2).copied()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids.truncate(2);
    ids
}

/// For groups of 1 and 4 and each (temperature, top_p): with stop ids making the lengths
/// ragged, the responses on `slots(n)` slots equal, bit for bit, those on n slots; the cache
/// holds exactly `slots` sequences; every response's tokens are one busy slot-step each.
fn check_slot_counts<B: RlOps>(
    be: &B,
    model: &Qwen2<B>,
    name: &str,
    rules: &[(f32, f32)],
    slots: impl Fn(usize) -> Vec<usize>,
) {
    let prompts = prompts();
    let cap = 9 + 9;
    for group in [1, 4] {
        let n = prompts.len() * group;
        for &(t, top_p) in rules {
            let gen = |p: &SamplingParams| {
                generate_scheduled(model, be, &prompts, group, p, 7, 0, None, |_| {}).unwrap()
            };
            let plain = gen(&params(t, top_p, vec![], n)).rollouts;
            let stops = stop_ids_for(&plain);
            let all = gen(&params(t, top_p, stops.clone(), n));
            let want = bits(&all.rollouts);
            let lens: Vec<usize> = all.rollouts.iter().map(|r| r.tokens.len()).collect();
            let what = format!("{name} group {group} T {t} top_p {top_p} stops {stops:?}");
            assert!(lens.iter().any(|&l| l < 9) && lens.iter().any(|&l| l > 1), "{what}: {lens:?}");
            for s in slots(n) {
                let got = gen(&params(t, top_p, stops.clone(), s));
                for (i, (x, y)) in bits(&got.rollouts).iter().zip(&want).enumerate() {
                    assert_eq!(x, y, "{what}: {s} slots, response {i}");
                }
                assert_eq!(got.rollouts.len(), n, "{what}: {s} slots");
                let st = got.stats;
                assert_eq!(st.slots, s, "{what}");
                assert_eq!(st.kv_values, s * cap * kv_values_per_token(model), "{what}: cache");
                assert_eq!(st.busy_slot_steps, lens.iter().sum::<usize>(), "{what}: {s} slots");
                assert_eq!(st.sampled, st.busy_slot_steps, "{what}");
                // Each response's prompt prefilled, or shared from a slot prefilling it in the
                // same step; every prompt computed at least once.
                let prompt_tokens: usize = prompts.iter().map(|p| p.len() * group).sum();
                assert_eq!(st.prefilled + st.shared, prompt_tokens, "{what}: every prompt once");
                assert!(st.prefilled * group >= prompt_tokens, "{what}: a prompt never computed");
                assert!(st.steps >= lens.iter().max().copied().unwrap(), "{what}");
            }
        }
    }
}

/// 1, 2, 3, n - 1 and n slots.
fn all_counts(n: usize) -> Vec<usize> {
    vec![1, 2, 3, n - 1, n]
}

#[test]
fn cpu_responses_do_not_depend_on_the_slot_count() {
    let be = Cpu;
    let model = model_on(&be, tiny_config(VOCAB, false));
    check_slot_counts(&be, &model, "cpu", &[(0.0, 1.0), (0.9, 1.0), (1.3, 0.8)], all_counts);
}

#[cfg(feature = "emu")]
#[test]
fn emulator_responses_do_not_depend_on_the_slot_count() {
    use mmr1_fast::backend::cuda::CudaBackend;
    let be = CudaBackend::emulator();
    let model = model_on(&be, tiny_config(VOCAB, false));
    check_slot_counts(&be, &model, "emu f32", &[(1.1, 0.9)], all_counts);
}

/// The emulator at bf16 (bf16 GEMMs, flash attention: what `--device emu` runs): a mixed
/// step's decode rows take the flash decode kernel as in a decode-only step, its prefills the
/// flash prefill kernel, so the slot count changes no bit here either.
#[cfg(feature = "emu")]
#[test]
fn emulator_bf16_flash_responses_do_not_depend_on_the_slot_count() {
    use mmr1_fast::backend::cuda::CudaBackend;
    use mmr1_fast::backend::precision::Precision;
    let be = CudaBackend::emulator().with_precision(Precision::Bf16).unwrap();
    let model = model_on(&be, flash_config());
    check_slot_counts(&be, &model, "emu bf16 flash", &[(0.9, 1.0)], |n| vec![2, n - 1]);
}

/// One decode step with a prefill beside decodes (a slot reset and refilled while the others
/// decode) gives each sequence the logits, bit for bit, that it gets decoded alone.
fn check_mixed_step<B: RlOps>(be: &B, model: &Qwen2<B>, name: &str) {
    let seqs = [random_ids(12, VOCAB, 1), random_ids(7, VOCAB, 2), random_ids(10, VOCAB, 3)];
    // Alone: each sequence in its own 1-slot cache, a 5-token prefill (all of it if shorter)
    // then a token a step; the logits of every step.
    let alone: Vec<Vec<Vec<f32>>> = seqs
        .iter()
        .map(|s| {
            let mut c = model.new_cache(be, 1, 16);
            let mut out = vec![model.decode_step(be, &mut c, &[(0, &s[..5])]).unwrap()];
            for t in 5..s.len() {
                out.push(model.decode_step(be, &mut c, &[(0, &s[t..t + 1])]).unwrap());
            }
            out
        })
        .collect();
    // Together on 2 slots: seq 0 and 1 start; when seq 1 ends its slot is reset and seq 2's
    // prefill goes in beside seq 0's decode.
    let mut c = model.new_cache(be, 2, 16);
    let v = VOCAB;
    let mut pos = [5usize, 5, 5];
    let mut at = [0usize; 3];
    let mut slot_of = [Some(0usize), Some(1), None];
    let first = model.decode_step(be, &mut c, &[(0, &seqs[0][..5]), (1, &seqs[1][..5])]).unwrap();
    for (j, s) in [0, 1].into_iter().enumerate() {
        assert_eq!(bits32(&first[j * v..(j + 1) * v]), bits32(&alone[s][0]), "{name}: seq {s}");
        at[s] = 1;
    }
    let mut mixed = 0;
    loop {
        let mut inputs: Vec<(usize, &[u32])> = vec![];
        let mut who = vec![];
        for s in 0..3 {
            if slot_of[s].is_none() && s == 2 && slot_of[1].is_none() {
                c.reset(1);
                slot_of[2] = Some(1);
                inputs.push((1, &seqs[2][..5]));
                who.push(2);
                continue;
            }
            if let Some(slot) = slot_of[s] {
                if pos[s] < seqs[s].len() {
                    inputs.push((slot, &seqs[s][pos[s]..pos[s] + 1]));
                    who.push(s);
                }
            }
        }
        if inputs.is_empty() {
            break;
        }
        mixed += usize::from(inputs.iter().any(|i| i.1.len() > 1) && inputs.len() > 1);
        let logits = model.decode_step(be, &mut c, &inputs).unwrap();
        for (j, &s) in who.iter().enumerate() {
            let row = &logits[j * v..(j + 1) * v];
            assert_eq!(bits32(row), bits32(&alone[s][at[s]]), "{name}: seq {s} step {}", at[s]);
            at[s] += 1;
            if inputs[j].1.len() == 1 {
                pos[s] += 1;
            }
        }
        if pos[1] == seqs[1].len() && slot_of[1] == Some(1) {
            slot_of[1] = None;
        }
    }
    assert_eq!(mixed, 1, "{name}: one step mixes a prefill with a decode");
    assert_eq!(at, [8, 3, 6], "{name}: every step of every sequence compared");
}

fn bits32(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn cpu_mixed_prefill_and_decode_step_is_batch_invariant() {
    check_mixed_step(&Cpu, &model_on(&Cpu, tiny_config(VOCAB, false)), "cpu");
}

#[cfg(feature = "emu")]
#[test]
fn emulator_mixed_prefill_and_decode_step_is_batch_invariant() {
    use mmr1_fast::backend::cuda::CudaBackend;
    use mmr1_fast::backend::precision::Precision;
    let be = CudaBackend::emulator();
    check_mixed_step(&be, &model_on(&be, tiny_config(VOCAB, false)), "emu f32");
    let be = CudaBackend::emulator().with_precision(Precision::Bf16).unwrap();
    check_mixed_step(&be, &model_on(&be, flash_config()), "emu bf16 flash");
    check_mixed_step(&be, &model_on(&be, tiny_config(VOCAB, false)), "emu bf16 head dim 8");
}

/// Stop strings (they need a tokenizer: the demo task's) end responses as with a slot each.
#[test]
fn stop_strings_end_responses_as_with_a_slot_each() {
    let tok: Tokenizer = demo_tokenizer().unwrap();
    let model = random_model(demo_config(tok.vocab_size()), 5);
    let prompts: Vec<Vec<u32>> =
        ["1+2=", "hello", "<think>"].iter().map(|p| tok.encode(p).unwrap()).collect();
    let base = SamplingParams {
        temperature: 4.0,
        max_new_tokens: 16,
        stop_ids: vec![tok.token_id("x").unwrap(), tok.token_id("q").unwrap()],
        stop_strings: vec!["5".into(), "ab".into(), "e ".into()],
        ..Default::default()
    };
    let gen = |slots: usize| {
        let p = SamplingParams { kv_slots: slots, ..base.clone() };
        generate_scheduled(&model, &Cpu, &prompts, 4, &p, 3, 0, Some(&tok), |_| {}).unwrap()
    };
    let all = gen(12);
    let reasons: Vec<StopReason> = all.rollouts.iter().map(|r| r.stop).collect();
    for reason in [StopReason::StopToken, StopReason::StopString, StopReason::MaxTokens] {
        assert!(reasons.contains(&reason), "{reason:?} must occur: {reasons:?}");
    }
    for s in [1, 2, 3, 11] {
        assert_eq!(bits(&gen(s).rollouts), bits(&all.rollouts), "{s} slots");
    }
}

/// A prefill budget of one token a step (at most one prompt enters a step) changes the steps,
/// not the responses; `decode_scheduled` driven directly with its step closure.
#[test]
fn a_small_prefill_budget_admits_one_prompt_a_step() {
    let model = model_on(&Cpu, tiny_config(VOCAB, false));
    let prompts = prompts();
    let views: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
    let seeds: Vec<u64> = (0..10).map(|s| mix_seed(5, s)).collect();
    let batch = Batch { prompts: &views, group: 2, seeds: &seeds };
    let p = params(1.0, 1.0, vec![3, 50, 71], 0);
    let run = |schedule: Schedule| {
        let mut widest_prefill = 0;
        let step = |c: &mut KvCache<Cpu>, feeds: &[Feed<'_>]| {
            widest_prefill = widest_prefill.max(feeds.iter().filter(|f| f.prefill).count());
            let inputs: Vec<(usize, &[u32])> = feeds.iter().map(|f| (f.slot, f.tokens)).collect();
            model.decode_step_logits(&Cpu, c, &inputs)
        };
        let r = decode_scheduled(&model, &Cpu, &batch, &p, schedule, None, step, |_| {}).unwrap();
        (r, widest_prefill)
    };
    // Each response prefills its own prompt here (no sharing), so that prefills count prompts.
    let (all, wide) = run(Schedule { slots: 10, prefill_tokens: 1 << 20, share_prompts: false });
    let (one, narrow) = run(Schedule { slots: 4, prefill_tokens: 1, share_prompts: false });
    assert_eq!((wide, narrow), (10, 1), "prefills per step");
    assert_eq!(bits(&one.rollouts), bits(&all.rollouts));
    assert!(one.stats.steps > all.stats.steps);
}

/// On ragged lengths the slots are busier than in fixed chunks of as many slots run to their
/// longest response (the path the VL rollouts took before), and the steps fewer.
#[test]
fn slots_are_busier_than_chunks_run_to_their_longest_response() {
    let model = model_on(&Cpu, tiny_config(VOCAB, false));
    let prompts = prompts();
    let mut p = params(1.2, 1.0, vec![], 0);
    p.max_new_tokens = 24;
    let plain = generate_scheduled(&model, &Cpu, &prompts, 4, &p, 11, 0, None, |_| {}).unwrap();
    p.stop_ids = stop_ids_for(&plain.rollouts);
    for slots in [2, 4, 8] {
        p.kv_slots = slots;
        let r = generate_scheduled(&model, &Cpu, &prompts, 4, &p, 11, 0, None, |_| {}).unwrap();
        let lens: Vec<usize> = r.rollouts.iter().map(|o| o.tokens.len()).collect();
        let continuous = r.stats.occupancy();
        let chunked = SlotStats::chunked_occupancy(&lens, slots);
        let chunk_steps: usize = lens.chunks(slots).map(|c| *c.iter().max().unwrap()).sum();
        println!(
            "{slots} slots, lengths {lens:?}: occupancy {continuous:.3} in {} steps, chunked {chunked:.3} in {chunk_steps} steps",
            r.stats.steps
        );
        assert!(continuous > chunked, "{slots} slots: {continuous} vs chunked {chunked}");
        assert!(r.stats.steps < chunk_steps);
    }
}

/// The automatic slot count is one per response while the cache fits the budget, fewer past
/// it, never 0; an explicit count is kept up to the response count.
#[test]
fn automatic_slot_count_follows_the_memory_budget() {
    use mmr1_fast::rl::decode_scheduler::KV_BUDGET_BYTES;
    let model = model_on(&Cpu, tiny_config(VOCAB, false));
    let per_token = kv_values_per_token(&model) * 4;
    assert_eq!(Schedule::new(&Cpu, &model, 0, 40, 18).slots, 40);
    let cap = KV_BUDGET_BYTES / per_token / 8;
    assert_eq!(Schedule::new(&Cpu, &model, 0, 40, cap).slots, 8);
    assert_eq!(Schedule::new(&Cpu, &model, 0, 40, usize::MAX).slots, 1);
    assert_eq!(Schedule::new(&Cpu, &model, 3, 40, 18).slots, 3);
    assert_eq!(Schedule::new(&Cpu, &model, 64, 40, 18).slots, 40);
}

/// The device allocator sees the bound: on fresh emulators, a rollout on 2 slots peaks lower
/// than on a slot per response by at least the 18 slots of cache it did not allocate.
#[cfg(feature = "emu")]
#[test]
fn fewer_slots_allocate_less_device_memory() {
    use mmr1_fast::backend::cuda::CudaBackend;
    let prompts = prompts();
    let peak = |slots: usize| {
        let be = CudaBackend::emulator();
        let model = model_on(&be, tiny_config(VOCAB, false));
        let p = params(1.0, 1.0, vec![], slots);
        let r = generate_scheduled(&model, &be, &prompts, 4, &p, 3, 0, None, |_| {}).unwrap();
        let m = be.memory_stats().expect("the emulator counts its memory");
        (m.peak_in_use_bytes, r.stats.kv_values * 4)
    };
    let (all, kv_all) = peak(20);
    let (two, kv_two) = peak(2);
    println!("peak in use: 20 slots {all} B (KV {kv_all} B), 2 slots {two} B (KV {kv_two} B)");
    assert_eq!(kv_all, 10 * kv_two);
    assert!(all >= two + (kv_all - kv_two) as u64, "20 slots {all} B vs 2 slots {two} B");
}

/// Where the backend keeps the KV cache in bf16 (the emulator under flash attention, at a head
/// dim the flash kernels serve), the same budget holds twice the slots; asked for f32 caches,
/// the f32 count.
#[cfg(feature = "emu")]
#[test]
fn a_bf16_cache_doubles_the_automatic_slot_count() {
    use mmr1_fast::backend::cuda::{AttnKernel, CudaBackend, KvCacheStorage};
    use mmr1_fast::rl::decode_scheduler::KV_BUDGET_BYTES;
    let slots = |storage: KvCacheStorage| {
        let be = CudaBackend::emulator()
            .with_attention(AttnKernel::Flash)
            .with_kv_cache_storage(storage);
        let model = model_on(&be, flash_config());
        let cap = KV_BUDGET_BYTES / (kv_values_per_token(&model) * 4) / 8;
        Schedule::new(&be, &model, 0, 40, cap).slots
    };
    assert_eq!(slots(KvCacheStorage::Bf16), 16);
    assert_eq!(slots(KvCacheStorage::F32), 8);
}

/// Responses to one prompt share its prefill (`Schedule::share_prompts`): those that start in
/// the step that prefills it, and, on fewer slots than responses, those that start later while
/// a slot still decodes a response to it (its prompt rows copied, its logits row kept). The
/// prompt is computed once a group where every response starts at once, and every response
/// keeps its bits (tokens and log-probs) against each response prefilling its own prompt.
/// Stop ids make the lengths ragged, so slots free at different steps.
fn check_shared_prefills<B: RlOps>(be: &B, model: &Qwen2<B>, name: &str) {
    let prompts = prompts();
    let views: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
    let group = 4;
    let n = views.len() * group;
    let seeds: Vec<u64> = (0..n).map(|s| mix_seed(9, s as u64)).collect();
    let batch = Batch { prompts: &views, group, seeds: &seeds };
    let run = |slots: usize, share_prompts: bool, p: &SamplingParams| {
        let step = |c: &mut KvCache<B>, feeds: &[Feed<'_>]| {
            let inputs: Vec<(usize, &[u32])> = feeds.iter().map(|f| (f.slot, f.tokens)).collect();
            model.decode_step_logits(be, c, &inputs)
        };
        let schedule = Schedule { slots, prefill_tokens: 1 << 20, share_prompts };
        decode_scheduled(model, be, &batch, p, schedule, None, step, |_| {}).unwrap()
    };
    let plain = run(n, false, &params(1.0, 1.0, vec![], 0));
    let p = params(1.0, 1.0, stop_ids_for(&plain.rollouts), 0);
    let off = run(n, false, &p);
    let prompt_tokens: usize = prompts.iter().map(|p| p.len()).sum();
    assert_eq!((off.stats.prefilled, off.stats.shared), (group * prompt_tokens, 0), "{name}");
    for slots in [n, 3, 6] {
        let on = run(slots, true, &p);
        let what = format!("{name}, {slots} slots");
        assert_eq!(bits(&on.rollouts), bits(&off.rollouts), "{what}: a response changed");
        assert_eq!(on.stats.prefilled + on.stats.shared, group * prompt_tokens, "{what}");
        assert!(on.stats.shared > 0, "{what}: nothing shared");
        assert_eq!(on.stats.busy_slot_steps, off.stats.busy_slot_steps, "{what}");
        if slots == n {
            assert_eq!(on.stats.prefilled, prompt_tokens, "{what}: each prompt computed once");
        }
    }
}

#[test]
fn cpu_shared_prefills_change_no_bit() {
    check_shared_prefills(&Cpu, &model_on(&Cpu, tiny_config(VOCAB, false)), "cpu");
}

/// On the emulator: f32 (reference attention, f32 cache), and bf16 with flash attention at
/// head dim 16, whose KV cache holds bf16 values (the copies move them as they are).
#[cfg(feature = "emu")]
#[test]
fn emulator_shared_prefills_change_no_bit() {
    use mmr1_fast::backend::cuda::CudaBackend;
    use mmr1_fast::backend::precision::Precision;
    let be = CudaBackend::emulator();
    check_shared_prefills(&be, &model_on(&be, tiny_config(VOCAB, false)), "emu f32");
    let be = CudaBackend::emulator().with_precision(Precision::Bf16).unwrap();
    check_shared_prefills(&be, &model_on(&be, flash_config()), "emu bf16 flash");
}
