//! `mmr1-fast reward`: grades responses produced anywhere (vLLM, transformers, another run)
//! with the MMR1 verifiable rewards, one verdict per response.

use crate::data::jsonl::{id_string, read_jsonl, write_jsonl, BadLines};
use crate::data::rl_items::load_rl_items_to_grade;
use crate::rl::graded::reward_item;
use crate::rl::reward::RewardConfig;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct RewardArgs {
    /// RL items (JSONL, MMR1 schema: problem, answer, optional id and options; an id may be an
    /// integer, an answer a number; options, or choices, a list or an object keyed A, B, ...;
    /// verl's rows too: docs/data.md).
    #[arg(long)]
    pub data: PathBuf,
    /// Responses (JSONL): {"id": <item id>, "response": "<text>"} ("text" is accepted too);
    /// several lines may share an id.
    #[arg(long)]
    pub responses: PathBuf,
    /// Verdicts (JSONL), one per response, in input order: id, index (the response's position
    /// among those of its id), extracted, accuracy, format, reward.
    #[arg(long)]
    pub out: PathBuf,
    /// Weight of accuracy in the reward (MMR1: 1).
    #[arg(long, default_value_t = 1.0)]
    pub accuracy_weight: f32,
    /// Weight of format in the reward (MMR1: 1).
    #[arg(long, default_value_t = 1.0)]
    pub format_weight: f32,
    /// A malformed line (in either file) or a response to an unknown id: stop with its line
    /// number, or skip it and count it.
    #[arg(long, value_enum, default_value_t = BadLines::Stop)]
    pub bad_lines: BadLines,
}

#[derive(Deserialize)]
struct ResponseLine {
    #[serde(deserialize_with = "id_string")]
    id: String,
    #[serde(alias = "text")]
    response: String,
}

#[derive(Serialize)]
struct VerdictLine<'a> {
    id: &'a str,
    index: usize,
    extracted: Option<String>,
    accuracy: f32,
    format: f32,
    reward: f32,
}

pub fn run(args: &RewardArgs) -> Result<()> {
    for (name, w) in
        [("--accuracy-weight", args.accuracy_weight), ("--format-weight", args.format_weight)]
    {
        if !w.is_finite() {
            bail!("{name} must be a finite number (got {w})");
        }
    }
    let cfg =
        RewardConfig { accuracy_weight: args.accuracy_weight, format_weight: args.format_weight };
    let items = load_rl_items_to_grade(&args.data, args.bad_lines)?;
    let by_id: HashMap<String, usize> =
        items.iter().enumerate().map(|(i, it)| (it.id_or(i), i)).collect();
    let data = args.data.display().to_string();
    let lines = read_jsonl::<ResponseLine>(&args.responses, args.bad_lines, |r| {
        if !by_id.contains_key(&r.id) {
            bail!("unknown id {:?} (no such item in {data})", r.id);
        }
        Ok(())
    })?;
    if lines.records.is_empty() {
        bail!("{}: no responses", args.responses.display());
    }
    let mut out = Vec::with_capacity(lines.records.len());
    // Per item: (responses so far, correct ones), for the index column and the pass rates.
    let mut seen = vec![(0usize, 0usize); items.len()];
    let (mut acc_sum, mut fmt_sum, mut reward_sum) = (0f64, 0f64, 0f64);
    for (_, r) in &lines.records {
        let i = by_id[&r.id];
        let v = cfg.grade(&r.response, &reward_item(&items[i]));
        let reward = cfg.total(&v);
        acc_sum += v.accuracy as f64;
        fmt_sum += v.format as f64;
        reward_sum += reward as f64;
        out.push(VerdictLine {
            id: &r.id,
            index: seen[i].0,
            extracted: v.extracted,
            accuracy: v.accuracy,
            format: v.format,
            reward,
        });
        seen[i].0 += 1;
        seen[i].1 += (v.accuracy >= 1.0) as usize;
    }
    write_jsonl(&args.out, &out)?;
    let n = lines.records.len() as f64;
    let (mut none, mut wrong, mut mixed, mut right) = (0, 0, 0, 0);
    for &(k, c) in &seen {
        match (k, c) {
            (0, _) => none += 1,
            (_, 0) => wrong += 1,
            _ if c == k => right += 1,
            _ => mixed += 1,
        }
    }
    println!(
        "{} responses: accuracy {:.4}, format {:.4}, reward {:.4}; items: {wrong} pass rate 0, {mixed} in (0, 1), {right} pass rate 1, {none} without responses{}; wrote {}",
        lines.records.len(),
        acc_sum / n,
        fmt_sum / n,
        reward_sum / n,
        if lines.skipped > 0 { format!("; {} line(s) skipped", lines.skipped) } else { String::new() },
        args.out.display()
    );
    Ok(())
}
