//! Incremental decoding with the KV cache gives the logits of the full forward, and a
//! sequence's results do not depend on what else is in its batch.

use crate::common;
use common::*;
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::model::Packed;

#[test]
fn decode_with_cache_matches_full_forward() {
    let model = random_model(tiny_config(97, false), 1);
    let be = Cpu;
    let seqs = [random_ids(13, 97, 2), random_ids(5, 97, 3), random_ids(9, 97, 4)];
    // Full forward: logits of every position of every sequence.
    let batch = Packed::new(&seqs);
    let mut acts = None;
    model.forward(&be, &batch, &mut acts).unwrap();
    let all_rows: Vec<usize> = (0..batch.tokens()).collect();
    let full = model.logits_of_rows(&be, &acts.as_ref().unwrap().xn_f, &all_rows);
    // Cached: prefill the first 3 tokens of each, then one token at a time, ragged.
    let mut cache = model.new_cache(&be, 3, 16);
    let v = 97;
    let mut pos = [0usize; 3];
    let mut steps = 0;
    loop {
        let inputs: Vec<(usize, &[u32])> = (0..3)
            .filter(|&s| pos[s] < seqs[s].len())
            .map(|s| {
                let n = if pos[s] == 0 { 3.min(seqs[s].len()) } else { 1 };
                (s, &seqs[s][pos[s]..pos[s] + n])
            })
            .collect();
        if inputs.is_empty() {
            break;
        }
        let logits = model.decode_step(&be, &mut cache, &inputs).unwrap();
        for (j, &(s, toks)) in inputs.iter().enumerate() {
            pos[s] += toks.len();
            let row = batch.spans[s].q_start + pos[s] - 1;
            let err = rel_l2(&logits[j * v..(j + 1) * v], &full[row * v..(row + 1) * v]);
            assert!(err < 1e-5, "seq {s} pos {}: rel err {err}", pos[s]);
        }
        steps += 1;
    }
    assert!(steps >= 11, "the test must exercise many decode steps");
}

#[test]
fn logprobs_are_batch_invariant() {
    let model = random_model(tiny_config(61, true), 5);
    let be = Cpu;
    let a = random_ids(11, 61, 6);
    let b = random_ids(7, 61, 7);
    let c = random_ids(19, 61, 8);
    let run = |seqs: &[&Vec<u32>]| {
        let batch = Packed::new(seqs);
        let mut acts = None;
        model.forward(&be, &batch, &mut acts).unwrap();
        let (t, _) = batch.next_token_targets();
        let (lp, _) = model.token_logprobs(&be, acts.as_ref().unwrap(), &t, 1.0 / 0.6);
        lp
    };
    let alone = run(&[&a]);
    let packed = run(&[&b, &a, &c]);
    let off = b.len();
    assert_eq!(
        &packed[off..off + a.len() - 1],
        &alone[..a.len() - 1],
        "log-probs of a sequence changed with its neighbours"
    );
}

#[test]
fn cache_overflow_and_bad_ids_are_errors() {
    let model = random_model(tiny_config(50, true), 9);
    let be = Cpu;
    let mut cache = model.new_cache(&be, 1, 4);
    let err = model.decode_step(&be, &mut cache, &[(0, &[1, 2, 3, 4, 5])]).unwrap_err();
    assert!(err.to_string().contains("KV cache holds 4"), "{err}");
    let err = model.decode_step(&be, &mut cache, &[(0, &[1, 50])]).unwrap_err();
    assert!(err.to_string().contains("token id 50"), "{err}");
}
