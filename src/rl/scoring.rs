//! The VAS scoring pass over a dataset (MMR1 Algorithm 1's "initial VPS for every prompt"):
//! N rollouts per item with the policy, graded by accuracy, scored by [`score_item`]. Used
//! by the `score` command and by the trainer; the JSONL record types are the command's files.

use crate::backend::rl_ops::{RlOps, RolloutBatch};
use crate::data::rl_items::RlItem;
use crate::model::vl_forward::VlModel;
use crate::model::Qwen2;
use crate::rl::graded::{
    sample_and_grade, sample_and_grade_batches, BatchSink, GradeParams, GradedRollout,
};
use crate::rl::partial_results::Partial;
use crate::rl::vas::{RolloutScores, TdsMetric};
use crate::rl::vl_rollout::{sample_and_grade_vl, sample_and_grade_vl_batches};
use crate::tokenizer::Tokenizer;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One line of a scores file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreRecord {
    pub id: String,
    pub n: usize,
    pub pass_rate: f32,
    pub ovs: f32,
    pub tds: f32,
    pub vps: f32,
}

impl ScoreRecord {
    pub fn new(id: String, s: RolloutScores) -> Self {
        ScoreRecord { id, n: s.n, pass_rate: s.pass_rate, ovs: s.ovs, tds: s.tds, vps: s.vps }
    }
}

/// One line of a rollouts file: written by `score --rollouts-out`, read by
/// `score --from-rollouts` (which needs only `id`, `tokens` and `accuracy` or `reward`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutRecord {
    pub id: String,
    pub response: String,
    /// Generated ids, exact length, stop token included: what TDS is computed on.
    pub tokens: Vec<u32>,
    pub reward: f32,
    pub accuracy: f32,
}

/// VPS weights and diversity measure.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VpsParams {
    pub alpha: f32,
    pub beta: f32,
    pub tds_metric: TdsMetric,
}

impl Default for VpsParams {
    /// The paper's alpha 0.8, beta 0.2, TDS = 1 - self-BLEU-4.
    fn default() -> Self {
        VpsParams {
            alpha: super::vas::PAPER_ALPHA,
            beta: super::vas::PAPER_BETA,
            tds_metric: TdsMetric::default(),
        }
    }
}

/// Scores every item from `grade.per_item` fresh rollouts (correctness = the binary accuracy
/// verdict, as the paper's P(x)); returns the scores and the rollouts, both in item order.
/// `on_progress(done)` is called with the number of items finished so far. The scores are
/// computed on `be` (the VAS kernel on the CUDA backend).
pub fn score_with_model<B: RlOps>(
    model: &Qwen2<B>,
    be: &B,
    tok: &Tokenizer,
    items: &[RlItem],
    grade: &GradeParams,
    vps: VpsParams,
    on_progress: impl FnMut(usize),
) -> Result<(Vec<ScoreRecord>, Vec<RolloutRecord>)> {
    let graded = sample_and_grade(model, be, tok, items, grade, on_progress)?;
    score_graded(be, items, graded, vps)
}

/// [`score_with_model`] for a Qwen2.5-VL model: items may hold images (paths resolved), whose
/// rollouts come from [`sample_and_grade_vl`] (`model_dir` holds the checkpoint's
/// preprocessor_config.json); scoring is the same.
#[allow(clippy::too_many_arguments)]
pub fn score_with_vl_model<B: RlOps>(
    model: &VlModel<B>,
    model_dir: &Path,
    be: &B,
    tok: &Tokenizer,
    items: &[RlItem],
    grade: &GradeParams,
    vps: VpsParams,
    on_progress: impl FnMut(usize),
) -> Result<(Vec<ScoreRecord>, Vec<RolloutRecord>)> {
    let graded = sample_and_grade_vl(model, model_dir, be, tok, items, grade, on_progress)?;
    score_graded(be, items, graded, vps)
}

/// [`score_with_model`] that keeps each finished batch's graded rollouts in `partial`
/// (`rl::partial_results`), starting after the batches already there: a scoring pass stopped by
/// a crash or a kill continues where it stopped, with the scores an uninterrupted pass gives.
#[allow(clippy::too_many_arguments)]
pub fn score_with_model_resumable<B: RlOps>(
    model: &Qwen2<B>,
    be: &B,
    tok: &Tokenizer,
    items: &[RlItem],
    grade: &GradeParams,
    vps: VpsParams,
    partial: &mut Partial<Vec<GradedRollout>>,
    on_progress: impl FnMut(usize),
) -> Result<(Vec<ScoreRecord>, Vec<RolloutRecord>)> {
    resumable(be, items, vps, partial, on_progress, |first, sink| {
        sample_and_grade_batches(model, be, tok, items, grade, first, sink)
    })
}

/// [`score_with_model_resumable`] for a Qwen2.5-VL model (see [`score_with_vl_model`]).
#[allow(clippy::too_many_arguments)]
pub fn score_with_vl_model_resumable<B: RlOps>(
    model: &VlModel<B>,
    model_dir: &Path,
    be: &B,
    tok: &Tokenizer,
    items: &[RlItem],
    grade: &GradeParams,
    vps: VpsParams,
    partial: &mut Partial<Vec<GradedRollout>>,
    on_progress: impl FnMut(usize),
) -> Result<(Vec<ScoreRecord>, Vec<RolloutRecord>)> {
    resumable(be, items, vps, partial, on_progress, |first, sink| {
        sample_and_grade_vl_batches(model, model_dir, be, tok, items, grade, first, sink)
    })
}

/// Both resumable scoring passes: `run(first, sink)` decodes the items from `first` on, a
/// batch at a time, into `sink`; each batch is kept, then the whole is scored.
fn resumable<B: RlOps>(
    be: &B,
    items: &[RlItem],
    vps: VpsParams,
    partial: &mut Partial<Vec<GradedRollout>>,
    mut on_progress: impl FnMut(usize),
    run: impl FnOnce(usize, BatchSink<'_>) -> Result<()>,
) -> Result<(Vec<ScoreRecord>, Vec<RolloutRecord>)> {
    let first = partial.done().len();
    on_progress(first);
    run(first, &mut |start, graded| {
        partial.append(&graded)?;
        on_progress(start + graded.len());
        Ok(())
    })?;
    score_graded(be, items, partial.done().to_vec(), vps)
}

/// Scores and rollout records of graded rollouts (one group per item, in item order).
fn score_graded<B: RlOps>(
    be: &B,
    items: &[RlItem],
    graded: Vec<Vec<GradedRollout>>,
    vps: VpsParams,
) -> Result<(Vec<ScoreRecord>, Vec<RolloutRecord>)> {
    let ids: Vec<String> = (0..items.len()).map(|i| items[i].id_or(i)).collect();
    let groups: Vec<(Vec<f32>, Vec<&[u32]>)> = graded
        .iter()
        .map(|rs| {
            (
                rs.iter().map(|r| r.verdict.accuracy).collect(),
                rs.iter().map(|r| r.tokens.as_slice()).collect(),
            )
        })
        .collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let scores = score_groups_on(be, &id_refs, &groups, vps)?;
    drop(groups);
    let mut rollouts = Vec::with_capacity(graded.iter().map(Vec::len).sum());
    for (id, rs) in ids.iter().zip(graded) {
        rollouts.extend(rs.into_iter().map(|r| RolloutRecord {
            id: id.clone(),
            response: r.text,
            tokens: r.tokens,
            reward: r.reward,
            accuracy: r.verdict.accuracy,
        }));
    }
    Ok((scores, rollouts))
}

/// Scores given rollouts: `(id, correctness, tokens)` grouped by id in order of first
/// appearance, one record per id.
pub fn score_rollouts<'a>(
    rollouts: impl IntoIterator<Item = (&'a str, f32, &'a [u32])>,
    vps: VpsParams,
) -> Vec<ScoreRecord> {
    score_rollouts_on(&crate::backend::cpu::Cpu, rollouts, vps)
        .expect("the CPU backend scores items of any size")
}

/// [`score_rollouts`] on a backend: the CPU reference, or the VAS scoring kernel of the CUDA
/// backend (kernels/vas_score.cu). An error names an item with more rollouts than the backend
/// scores at once.
pub fn score_rollouts_on<'a, B: RlOps>(
    be: &B,
    rollouts: impl IntoIterator<Item = (&'a str, f32, &'a [u32])>,
    vps: VpsParams,
) -> Result<Vec<ScoreRecord>> {
    let mut order: Vec<&str> = Vec::new();
    let mut groups: std::collections::HashMap<&str, (Vec<f32>, Vec<&[u32]>)> = Default::default();
    for (id, c, t) in rollouts {
        let g = groups.entry(id).or_insert_with(|| {
            order.push(id);
            Default::default()
        });
        g.0.push(c);
        g.1.push(t);
    }
    let groups: Vec<(Vec<f32>, Vec<&[u32]>)> =
        order.iter().map(|id| groups.remove(id).unwrap()).collect();
    score_groups_on(be, &order, &groups, vps)
}

/// Score records of items given as (correctness, token ids) per rollout, on `be`, packed in
/// one batch. An error names an item with more rollouts than the backend scores at once.
fn score_groups_on<B: RlOps>(
    be: &B,
    ids: &[&str],
    groups: &[(Vec<f32>, Vec<&[u32]>)],
    vps: VpsParams,
) -> Result<Vec<ScoreRecord>> {
    // Packed in item order: item i owns rollouts items[i]..items[i + 1].
    let (mut tokens, mut offs, mut items, mut correct) = (vec![], vec![0], vec![0], vec![]);
    for (id, (c, t)) in ids.iter().zip(groups) {
        if let Some(max) = be.rl_vas_max_rollouts().filter(|&m| c.len() > m) {
            anyhow::bail!(
                "item {id} has {} rollouts; {} scores at most {max} per item (use --device cpu)",
                c.len(),
                be.name()
            );
        }
        for r in t {
            tokens.extend_from_slice(r);
            offs.push(tokens.len());
        }
        correct.extend_from_slice(c);
        items.push(correct.len());
    }
    let batch = RolloutBatch { tokens: &tokens, rollouts: &offs, items: &items, correct: &correct };
    let _r = crate::nvtx_ranges::range(c"scoring");
    let s = be.rl_vas_scores(&batch, vps.alpha, vps.beta, vps.tds_metric);
    Ok(ids.iter().zip(s).map(|(id, s)| ScoreRecord::new(id.to_string(), s)).collect())
}
