//! Accuracy of a model on RL items: the `eval` command, and the trainer before and after each
//! phase. k responses per item; an item passes when any is correct (pass@k with n = k samples,
//! where the unbiased estimator 1 - C(n-c, k) / C(n, k) reduces to "c > 0"). Greedy decoding
//! with temperature 0 and k = 1.

use crate::backend::rl_ops::RlOps;
use crate::data::prompt::PromptStyle;
use crate::data::rl_items::RlItem;
use crate::model::vl_forward::VlModel;
use crate::model::Qwen2;
use crate::rl::graded::{
    sample_and_grade, sample_and_grade_batches, BatchSink, GradeParams, GradedRollout,
};
use crate::rl::partial_results::Partial;
use crate::rl::reward::RewardConfig;
use crate::rl::rollout::SamplingParams;
use crate::rl::vl_rollout::{sample_and_grade_vl, sample_and_grade_vl_batches};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

#[derive(Clone, Debug, PartialEq)]
pub struct EvalParams {
    /// Responses per item (pass@k).
    pub k: usize,
    /// 0 is greedy (then k must be 1: greedy responses are all the same).
    pub temperature: f32,
    pub top_p: f32,
    pub max_new_tokens: usize,
    pub prompt_style: PromptStyle,
    pub seed: u64,
    /// Evaluate only the first `max_items` items (0: all).
    pub max_items: usize,
    /// Items decoded together.
    pub batch_items: usize,
}

impl Default for EvalParams {
    /// Greedy, one response, MMR1 training prompt (so the format rate means something).
    fn default() -> Self {
        EvalParams {
            k: 1,
            temperature: 0.0,
            top_p: 1.0,
            max_new_tokens: 512,
            prompt_style: PromptStyle::default(),
            seed: 0,
            max_items: 0,
            batch_items: 8,
        }
    }
}

impl EvalParams {
    pub fn validate(&self) -> Result<()> {
        if self.k == 0 {
            bail!("k must be at least 1");
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bail!("temperature must be >= 0 (got {})", self.temperature);
        }
        if self.temperature == 0.0 && self.k > 1 {
            bail!("k = {} with temperature 0: greedy responses are identical; use a temperature > 0 for pass@k", self.k);
        }
        if self.batch_items == 0 {
            bail!("batch_items must be positive");
        }
        self.sampling().validate()
    }

    fn grade(&self) -> GradeParams {
        GradeParams {
            sampling: self.sampling(),
            per_item: self.k,
            prompt_style: self.prompt_style,
            batch_items: self.batch_items,
            seed: self.seed,
            // Accuracy is what is reported; the weights only matter for a total nobody reads here.
            reward: RewardConfig::default(),
        }
    }

    fn sampling(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: 0,
            max_new_tokens: self.max_new_tokens,
            stop_ids: vec![],
            stop_strings: vec![],
            kv_slots: 0,
        }
    }
}

/// The evaluation of one item: one line of the results file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ItemResult {
    pub id: String,
    pub answer: String,
    pub responses: Vec<String>,
    pub extracted: Vec<Option<String>>,
    pub correct: Vec<bool>,
    pub format_ok: Vec<bool>,
    /// Any response correct (pass@k).
    pub pass: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub items: usize,
    pub k: usize,
    /// Fraction of items passed (pass@k; plain accuracy for k = 1).
    pub accuracy: f64,
    /// Fraction of all responses that are correct (the pass@1 estimate when k > 1).
    pub response_accuracy: f64,
    /// Fraction of all responses in the MMR1 format.
    pub format_rate: f64,
    /// Wall-clock seconds.
    pub seconds: f64,
    pub results: Vec<ItemResult>,
}

/// Evaluates `items` (the first `max_items` of them when set). See [`evaluate_with_progress`].
pub fn evaluate<B: RlOps>(
    model: &Qwen2<B>,
    be: &B,
    tok: &Tokenizer,
    items: &[RlItem],
    params: &EvalParams,
) -> Result<EvalReport> {
    evaluate_with_progress(model, be, tok, items, params, |_| {})
}

/// [`evaluate`], calling `on_progress(done)` with the number of items finished so far.
pub fn evaluate_with_progress<B: RlOps>(
    model: &Qwen2<B>,
    be: &B,
    tok: &Tokenizer,
    items: &[RlItem],
    params: &EvalParams,
    on_progress: impl FnMut(usize),
) -> Result<EvalReport> {
    params.validate()?;
    let t0 = Instant::now();
    let items =
        if params.max_items > 0 { &items[..params.max_items.min(items.len())] } else { items };
    let graded = sample_and_grade(model, be, tok, items, &params.grade(), on_progress)?;
    Ok(summarize(items, graded, params.k, t0))
}

/// [`evaluate_with_progress`] for a Qwen2.5-VL model (items may hold images, their paths
/// resolved; `model_dir` holds preprocessor_config.json). Items decode one at a time.
pub fn evaluate_vl_with_progress<B: RlOps>(
    model: &VlModel<B>,
    model_dir: &Path,
    be: &B,
    tok: &Tokenizer,
    items: &[RlItem],
    params: &EvalParams,
    on_progress: impl FnMut(usize),
) -> Result<EvalReport> {
    params.validate()?;
    let t0 = Instant::now();
    let items =
        if params.max_items > 0 { &items[..params.max_items.min(items.len())] } else { items };
    let graded =
        sample_and_grade_vl(model, model_dir, be, tok, items, &params.grade(), on_progress)?;
    Ok(summarize(items, graded, params.k, t0))
}

/// Accuracy, pass@k and format rate of graded responses, one result per item.
fn summarize(
    items: &[RlItem],
    graded: Vec<Vec<GradedRollout>>,
    k: usize,
    t0: Instant,
) -> EvalReport {
    let results =
        items.iter().zip(graded).enumerate().map(|(i, (it, rs))| item_result(i, it, rs)).collect();
    report(results, k, t0.elapsed().as_secs_f64())
}

/// The result of item `i` from its graded responses.
fn item_result(i: usize, item: &RlItem, rs: Vec<GradedRollout>) -> ItemResult {
    let c: Vec<bool> = rs.iter().map(|r| r.verdict.accuracy >= 1.0).collect();
    ItemResult {
        id: item.id_or(i),
        answer: item.answer.clone().unwrap_or_default(),
        extracted: rs.iter().map(|r| r.verdict.extracted.clone()).collect(),
        format_ok: rs.iter().map(|r| r.verdict.format >= 1.0).collect(),
        responses: rs.into_iter().map(|r| r.text).collect(),
        pass: c.iter().any(|&x| x),
        correct: c,
    }
}

/// The report of per-item results (the figures are counts over them, so results read back from
/// a file give the report of the run that wrote them).
pub fn report(results: Vec<ItemResult>, k: usize, seconds: f64) -> EvalReport {
    let count = |f: fn(&ItemResult) -> usize| results.iter().map(f).sum::<usize>();
    let responses = count(|r| r.correct.len());
    let correct = count(|r| r.correct.iter().filter(|&&x| x).count());
    let formatted = count(|r| r.format_ok.iter().filter(|&&x| x).count());
    let frac = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    EvalReport {
        items: results.len(),
        k,
        accuracy: frac(results.iter().filter(|r| r.pass).count(), results.len()),
        response_accuracy: frac(correct, responses),
        format_rate: frac(formatted, responses),
        seconds,
        results,
    }
}

/// [`evaluate_with_progress`] that keeps each finished batch's results in `partial` (see
/// `rl::partial_results`), starting after the batches already there: an evaluation stopped by
/// a crash or a kill continues where it stopped, with the results an uninterrupted run gives.
pub fn evaluate_resumable<B: RlOps>(
    model: &Qwen2<B>,
    be: &B,
    tok: &Tokenizer,
    items: &[RlItem],
    params: &EvalParams,
    partial: &mut Partial<ItemResult>,
    on_progress: impl FnMut(usize),
) -> Result<EvalReport> {
    resumable(items, params, partial, on_progress, |items, grade, first, sink| {
        sample_and_grade_batches(model, be, tok, items, grade, first, sink)
    })
}

/// [`evaluate_resumable`] for a Qwen2.5-VL model (see [`evaluate_vl_with_progress`]).
#[allow(clippy::too_many_arguments)]
pub fn evaluate_vl_resumable<B: RlOps>(
    model: &VlModel<B>,
    model_dir: &Path,
    be: &B,
    tok: &Tokenizer,
    items: &[RlItem],
    params: &EvalParams,
    partial: &mut Partial<ItemResult>,
    on_progress: impl FnMut(usize),
) -> Result<EvalReport> {
    resumable(items, params, partial, on_progress, |items, grade, first, sink| {
        sample_and_grade_vl_batches(model, model_dir, be, tok, items, grade, first, sink)
    })
}

/// Both resumable evaluations: `run(items, grade, first, sink)` decodes the items from `first`
/// on, a batch at a time, into `sink`.
fn resumable(
    items: &[RlItem],
    params: &EvalParams,
    partial: &mut Partial<ItemResult>,
    mut on_progress: impl FnMut(usize),
    run: impl FnOnce(&[RlItem], &GradeParams, usize, BatchSink<'_>) -> Result<()>,
) -> Result<EvalReport> {
    params.validate()?;
    let t0 = Instant::now();
    let items =
        if params.max_items > 0 { &items[..params.max_items.min(items.len())] } else { items };
    let first = partial.done().len();
    on_progress(first);
    run(items, &params.grade(), first, &mut |start, graded| {
        keep_batch(partial, items, start, graded, &mut on_progress)
    })?;
    Ok(report(partial.done().to_vec(), params.k, t0.elapsed().as_secs_f64()))
}

/// A finished batch's results, appended to the partial file, then reported as progress.
fn keep_batch(
    partial: &mut Partial<ItemResult>,
    items: &[RlItem],
    start: usize,
    graded: Vec<Vec<GradedRollout>>,
    on_progress: &mut impl FnMut(usize),
) -> Result<()> {
    let results: Vec<ItemResult> = graded
        .into_iter()
        .enumerate()
        .map(|(k, rs)| item_result(start + k, &items[start + k], rs))
        .collect();
    partial.append(&results)?;
    on_progress(start + results.len());
    Ok(())
}
