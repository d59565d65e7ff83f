//! The built-in demo: a synthetic verifiable task (sums of single digits with 0 to 4 carries,
//! chain of thought in MMR1's `<think>`/`<answer>`/`\boxed{}` format), a character-level
//! tokenizer built in code with the `tokenizers` crate, and a tiny Qwen2 config. No downloads.

use super::prompt::{render_prompt_chatml, PromptStyle};
use super::rl_items::RlItem;
use crate::model::Qwen2Config;
use crate::tokenizer::Tokenizer;
use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

/// Chat special tokens (one id each, dropped when decoding without specials).
pub const SPECIAL: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
/// MMR1's format tags, one id each so the tiny model learns the template quickly.
pub const TAGS: [&str; 5] = ["<think>", "</think>", "<answer>", "</answer>", "\\boxed{"];

/// A character-level tokenizer: every printable ASCII character and the newline is a token,
/// plus the special tokens and tags above. Saved as a standard tokenizer.json.
pub fn demo_tokenizer() -> Result<Tokenizer> {
    char_tokenizer(&SPECIAL, &TAGS)
}

/// The demo tokenizers' construction: `<unk>` (id 0), the newline and printable ASCII one id
/// each, then `special` (dropped when decoding without specials) and `words` (kept whole, one
/// id each), in that order.
pub fn char_tokenizer(special: &[&str], words: &[&str]) -> Result<Tokenizer> {
    let mut vocab: HashMap<String, u32> = HashMap::new();
    vocab.insert("<unk>".into(), 0);
    for c in std::iter::once('\n').chain((32u8..127).map(|b| b as char)) {
        let n = vocab.len() as u32;
        vocab.insert(c.to_string(), n);
    }
    for t in special.iter().chain(words.iter()) {
        let n = vocab.len() as u32;
        vocab.insert(t.to_string(), n);
    }
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("<unk>".into())
        .build()
        .map_err(|e| anyhow::anyhow!("demo tokenizer: {e}"))?;
    let mut tok = tokenizers::Tokenizer::new(model);
    let split =
        Split::new(SplitPattern::Regex(r"(?s).".into()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| anyhow::anyhow!("demo tokenizer: {e}"))?;
    tok.with_pre_tokenizer(Some(split));
    tok.with_decoder(Some(Fuse::new()));
    tok.add_special_tokens(&special.iter().map(|s| AddedToken::from(*s, true)).collect::<Vec<_>>());
    tok.add_tokens(&words.iter().map(|s| AddedToken::from(*s, false)).collect::<Vec<_>>());
    Ok(Tokenizer::from_inner(tok))
}

/// The demo model: small enough to train on two CPU cores in a minute or two.
pub fn demo_config(vocab_size: usize) -> Qwen2Config {
    let json = serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "hidden_size": 96, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": vocab_size,
        "tie_word_embeddings": true, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 256, "torch_dtype": "float32",
        "bos_token_id": null, "eos_token_id": vocab_size as u64 - (TAGS.len() + 1) as u64,
    });
    serde_json::from_value(json).expect("demo config is valid")
}

/// The task: add single digits, with a chosen number of carries (additions whose running
/// sum crosses a multiple of ten). Difficulty is the carry count, drawn uniformly from
/// `0..=max_carries`, so the item pool is mixed the way MMR1's data is: the imperfect teacher
/// (see [`teacher_solution`]) never errs without a carry, so after SFT carry-free items are
/// always solved, while items with many carries are almost never solved, and only the items
/// in between give a GRPO group reward variance. This is the situation VAS is built for.
#[derive(Clone, Copy, Debug)]
pub struct DemoTask {
    pub max_carries: usize,
}

impl Default for DemoTask {
    fn default() -> Self {
        DemoTask { max_carries: 4 }
    }
}

/// Number of additions in `terms` (left to right) whose running sum crosses a multiple of ten.
pub fn carries(terms: &[u32]) -> usize {
    let mut acc = terms[0];
    let mut k = 0;
    for &t in &terms[1..] {
        k += usize::from(acc % 10 + t >= 10);
        acc += t;
    }
    k
}

impl DemoTask {
    /// Terms of one item: `k` carries, `k + 1` or `k + 2` terms (at least 2), digits 1-9
    /// drawn until the carry count is `k` (a few tries: about half of all additions carry).
    fn draw(&self, rng: &mut ChaCha8Rng) -> Vec<u32> {
        let k = rng.gen_range(0..=self.max_carries);
        let n = rng.gen_range((k + 1).max(2)..=k + 2);
        loop {
            let terms: Vec<u32> = (0..n).map(|_| rng.gen_range(1..=9)).collect();
            if carries(&terms) == k {
                return terms;
            }
        }
    }

    /// `count` items with ids `{prefix}{i}`, deterministic in `seed`.
    pub fn items(&self, count: usize, seed: u64, prefix: &str) -> Vec<RlItem> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..count)
            .map(|i| {
                let terms = self.draw(&mut rng);
                let expr: Vec<String> = terms.iter().map(|t| t.to_string()).collect();
                RlItem {
                    id: Some(format!("{prefix}{i}")),
                    problem: format!("Add {}", expr.join("+")),
                    answer: Some(terms.iter().sum::<u32>().to_string()),
                    images: vec![],
                    options: None,
                    system: None,
                }
            })
            .collect()
    }
}

/// The worked solution of an item: running sums, then the boxed total.
pub fn demo_solution(item: &RlItem) -> String {
    teacher_solution(item, 0.0, 0)
}

/// A worked solution from an imperfect teacher, the kind of cold-start data SFT imitates:
/// at an addition that carries (crosses a multiple of ten) it drops the carry with
/// probability `slip` (deterministic in `seed` and the item), and goes on from the wrong
/// sum. SFT learns the slips along with the method; only a verifiable reward (RL) can tell
/// the model they are wrong, which is what the demo shows.
pub fn teacher_solution(item: &RlItem, slip: f64, seed: u64) -> String {
    let terms: Vec<u32> =
        item.problem.trim_start_matches("Add ").split('+').filter_map(|t| t.parse().ok()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(
        seed ^ crate::rl::rollout::mix_seed(
            0,
            item.problem.len() as u64 * 1_000_003 + terms.iter().fold(7, |h, &t| h * 31 + t as u64),
        ),
    );
    let mut steps = Vec::new();
    let mut acc = terms[0];
    for t in &terms[1..] {
        let carries = acc % 10 + t >= 10;
        let next = if carries && rng.gen_bool(slip) { acc + t - 10 } else { acc + t };
        steps.push(format!("{acc}+{t}={next}"));
        acc = next;
    }
    format!("<think>{}</think><answer>\\boxed{{{acc}}}</answer>", steps.join(" "))
}

/// The prompt a demo item is asked with (no instruction and no system turn: short sequences).
pub fn demo_prompt(item: &RlItem) -> String {
    render_prompt_chatml(&item.problem, PromptStyle::Plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_round_trips_and_keeps_tags_whole() {
        let tok = demo_tokenizer().unwrap();
        let item = &DemoTask::default().items(1, 3, "t")[0];
        let text = format!("{}{}<|im_end|>", demo_prompt(item), demo_solution(item));
        let ids = tok.encode(&text).unwrap();
        assert_eq!(tok.decode(&ids, true).unwrap(), text);
        for t in TAGS.iter().chain(SPECIAL.iter()) {
            assert_eq!(tok.encode(t).unwrap().len(), 1, "{t} must be one token");
        }
        assert!(!ids.contains(&0), "no unknown tokens in demo text");
        let cfg = demo_config(tok.vocab_size());
        assert_eq!(cfg.eos_ids(), vec![tok.token_id("<|im_end|>").unwrap()]);
    }

    #[test]
    fn difficulty_is_the_carry_count_and_is_mixed() {
        assert_eq!(carries(&[7, 8, 6]), 2);
        assert_eq!(carries(&[1, 2, 3]), 0);
        let task = DemoTask::default();
        let mut seen = vec![0usize; task.max_carries + 1];
        for it in task.items(500, 9, "x") {
            let terms: Vec<u32> = it
                .problem
                .trim_start_matches("Add ")
                .split('+')
                .map(|t| t.parse().unwrap())
                .collect();
            assert!(terms.len() >= 2 && terms.len() <= carries(&terms) + 2, "{}", it.problem);
            seen[carries(&terms)] += 1;
        }
        // Uniform over 0..=max_carries: every level holds a fair share of the pool.
        assert!(seen.iter().all(|&c| c > 500 / (task.max_carries + 1) / 2), "{seen:?}");
    }

    #[test]
    fn solutions_are_correct() {
        for it in DemoTask::default().items(50, 1, "x") {
            let sol = demo_solution(&it);
            assert!(
                sol.ends_with(&format!("\\boxed{{{}}}</answer>", it.answer.as_ref().unwrap())),
                "{sol}"
            );
        }
    }
}
