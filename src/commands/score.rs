//! `mmr1-fast score`: the Variance-Aware Sampling scoring pass as a data-curation tool. Each
//! item gets its pass rate, OVS, TDS and VPS, from fresh rollouts of a model or from
//! rollouts made elsewhere.

use crate::backend::rl_ops::RlOps;
use crate::data::jsonl::{id_string, read_jsonl, write_jsonl, BadLines};
use crate::data::prompt::PromptStyle;
use crate::data::rl_items::{
    load_rl_items, load_rl_items_to_grade, load_rl_items_with_images, RlItem,
};
use crate::model::vl_forward::VlModel;
use crate::model::vl_prompt::is_vl_checkpoint;
use crate::model::Qwen2;
use crate::rl::graded::reward_item;
use crate::rl::graded::GradeParams;
use crate::rl::partial_results::{fingerprint, Partial};
use crate::rl::reward::RewardConfig;
use crate::rl::rollout::SamplingParams;
use crate::rl::scoring::{
    score_rollouts_on, score_with_model_resumable, score_with_vl_model_resumable, ScoreRecord,
    VpsParams,
};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Result};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct ScoreArgs {
    /// Hugging Face model directory that makes the rollouts (with --data).
    #[arg(long, required_unless_present = "from_rollouts", requires = "data")]
    pub model: Option<PathBuf>,
    /// RL items to score (JSONL, MMR1 schema). With a Qwen2.5-VL --model, items may name
    /// images ("image": "a.png" or "images": [...], relative to the JSONL file); each <image>
    /// marker of the problem is one image (without markers the images go before it); other
    /// accepted forms (verl's rows, JSON arrays): docs/data.md. With
    /// --from-rollouts: the items the rollouts answer, to grade each "response" that has no
    /// "accuracy" (the accuracy reward of `reward`).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Score rollouts made elsewhere instead (no model): JSONL lines {"id": .., "tokens":
    /// [ids], "reward": r} or with "accuracy" (0..1). Without "accuracy", a rollout is graded
    /// against --data when given, else counts as correct when reward >= 0.5 (which suits a 0/1
    /// accuracy reward; give "accuracy" when the reward also holds a format term). A line may
    /// give its "response" text instead of "tokens" (vLLM's or transformers' outputs) with
    /// --tokenizer. Example: score --from-rollouts vllm.jsonl --data items.jsonl --tokenizer
    /// MODEL_DIR --out scores.jsonl, with lines {"id": "q1", "response": "..."}.
    #[arg(long, conflicts_with_all = ["model", "rollouts_out"])]
    pub from_rollouts: Option<PathBuf>,
    /// With --from-rollouts: the tokenizer (a model directory or a tokenizer.json) that turns
    /// each "response" without "tokens" into the token ids TDS is computed on (the text's ids
    /// as the tokenizer encodes them; a stop token the generator dropped is not added back).
    #[arg(long, requires = "from_rollouts")]
    pub tokenizer: Option<PathBuf>,
    /// Scores (JSONL), one line per item: id, n, pass_rate, ovs, tds, vps. Scoring with a
    /// model keeps its finished batches in OUT.partial: run the same command again after a
    /// crash or a kill and it continues from there, with the scores of an uninterrupted pass.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write every rollout (JSONL: id, response, tokens, reward, accuracy), to re-score
    /// later with --from-rollouts.
    #[arg(long)]
    pub rollouts_out: Option<PathBuf>,
    /// Rollouts per item, N (MMR1: 8; 16 and 32 scored about the same).
    #[arg(long, default_value_t = 8)]
    pub rollouts_per_item: usize,
    /// Rollout temperature (MMR1: 0.6). Must be positive: greedy rollouts are identical.
    #[arg(long, default_value_t = 0.6)]
    pub temperature: f32,
    /// Nucleus sampling: draw from the smallest set of most likely tokens whose probability
    /// reaches p (1 = the whole vocabulary).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Tokens a rollout may take before it is cut (an unfinished rollout has no answer).
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    /// Sampling seed: every response draws from its own Philox stream of this seed, so the
    /// same seed, model, items and device give the same responses.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = PromptStyle::Mmr1)]
    pub prompt_style: PromptStyle,
    /// Items decoded together (memory grows with batch-items * rollouts-per-item).
    #[arg(long, default_value_t = 8)]
    pub batch_items: usize,
    /// Weight of OVS in VPS (MMR1: 0.8).
    #[arg(long, default_value_t = crate::rl::vas::PAPER_ALPHA)]
    pub alpha: f32,
    /// Weight of TDS in VPS (MMR1: 0.2).
    #[arg(long, default_value_t = crate::rl::vas::PAPER_BETA)]
    pub beta: f32,
    /// A malformed line in --data or --from-rollouts: stop with its line number, or skip it.
    #[arg(long, value_enum, default_value_t = BadLines::Stop)]
    pub bad_lines: BadLines,
    /// Backend: auto (GPU 0 when usable, else the CPU), cpu, cuda, cuda:N, or emu (the CUDA
    /// kernels on the host emulator: slow, exact; a build with --features emu).
    #[arg(long, default_value = "auto")]
    pub device: crate::backend::select::DeviceChoice,
    /// Arithmetic of matmuls and attention: auto (bf16 on a GPU and on emu, f32 on the CPU),
    /// bf16 (bf16 tensor-core GEMMs with f32 accumulation, flash attention; norms, softmax,
    /// log-probs, loss and optimizer stay f32), or f32 (SGEMM, reference attention: matches
    /// the CPU to f32 rounding). The CPU runs f32 only. See docs/perf.md.
    #[arg(long, default_value = "auto")]
    pub precision: crate::backend::precision::PrecisionChoice,
}

#[derive(Deserialize)]
struct RolloutLine {
    #[serde(deserialize_with = "id_string")]
    id: String,
    #[serde(default)]
    tokens: Option<Vec<u32>>,
    #[serde(default, alias = "text")]
    response: Option<String>,
    #[serde(default)]
    reward: Option<f32>,
    #[serde(default)]
    accuracy: Option<f32>,
}

/// What a rollouts file is read with: a tokenizer for lines given as text, items to grade
/// lines without an accuracy.
struct RolloutSources {
    tokenizer: Option<Tokenizer>,
    items: Option<(Vec<RlItem>, HashMap<String, usize>, PathBuf)>,
}

impl RolloutLine {
    /// Checks a line against what it can be resolved with (before any is resolved, so that
    /// `--bad-lines skip` skips it like a malformed one).
    fn check_with(&self, src: &RolloutSources) -> Result<()> {
        if self.tokens.is_none() {
            match (&self.response, &src.tokenizer) {
                (None, _) => bail!("rollout has no \"tokens\" (nor a \"response\" to tokenize)"),
                (Some(_), None) => bail!(
                    "rollout has no \"tokens\": give --tokenizer (the model directory) to tokenize its \"response\""
                ),
                (Some(_), Some(_)) => {}
            }
        }
        if let (None, Some((_, ids, path))) = (self.accuracy, &src.items) {
            if !ids.contains_key(&self.id) {
                bail!("unknown id {:?} (no such item in {})", self.id, path.display());
            }
            if self.response.is_none() {
                bail!("rollout has no \"response\" to grade against --data (nor an \"accuracy\")");
            }
            return Ok(()); // graded: a "reward" is not used
        }
        self.check()
    }

    /// The id, correctness and token ids of a checked line.
    fn resolve(&self, src: &RolloutSources) -> Result<(String, f32, Vec<u32>)> {
        let tokens = match (&self.tokens, &self.response, &src.tokenizer) {
            (Some(t), _, _) => t.clone(),
            (None, Some(text), Some(tok)) => tok.encode(text)?,
            _ => unreachable!("check_with requires tokens or a response and a tokenizer"),
        };
        let correct = match (self.accuracy, &src.items, &self.response) {
            (None, Some((items, ids, _)), Some(text)) => {
                let item = reward_item(&items[ids[&self.id]]);
                RewardConfig::default().grade(text, &item).accuracy
            }
            _ => self.correctness(),
        };
        Ok((self.id.clone(), correct, tokens))
    }

    fn check(&self) -> Result<()> {
        match (self.accuracy, self.reward) {
            (Some(a), _) if !(0.0..=1.0).contains(&a) => {
                bail!("\"accuracy\" must be in [0, 1] (got {a})")
            }
            (None, Some(r)) if !r.is_finite() => {
                bail!("\"reward\" must be a finite number (got {r})")
            }
            (None, None) => bail!(
                "rollout has neither \"accuracy\" nor \"reward\" (give --data to grade its \"response\")"
            ),
            _ => Ok(()),
        }
    }

    fn correctness(&self) -> f32 {
        self.accuracy.unwrap_or_else(|| if self.reward.unwrap_or(0.0) >= 0.5 { 1.0 } else { 0.0 })
    }
}

pub fn run(args: &ScoreArgs) -> Result<()> {
    for (name, w) in [("--alpha", args.alpha), ("--beta", args.beta)] {
        if !(w >= 0.0 && w.is_finite()) {
            bail!("{name} must be a finite number >= 0 (got {w})");
        }
    }
    let vps = VpsParams { alpha: args.alpha, beta: args.beta, ..VpsParams::default() };
    let scores = match (&args.from_rollouts, &args.model, &args.data) {
        (Some(path), _, data) => {
            let scores = from_rollouts(path, data.as_deref(), args, vps)?;
            write_jsonl(&args.out, &scores)?;
            scores
        }
        // Writes --out (and --rollouts-out) itself, before it lets its partial file go.
        (None, Some(model), Some(data)) => with_model(args, model, data, vps)?,
        _ => bail!("give --model and --data, or --from-rollouts"),
    };
    let n = scores.len() as f64;
    let mean = |f: fn(&ScoreRecord) -> f32| scores.iter().map(|s| f(s) as f64).sum::<f64>() / n;
    println!(
        "{} items, {} rollouts: mean pass rate {:.4}, mean VPS {:.4}, {} items with outcome variance (0 < pass rate < 1); wrote {}",
        scores.len(),
        scores.iter().map(|s| s.n).sum::<usize>(),
        mean(|s| s.pass_rate),
        mean(|s| s.vps),
        scores.iter().filter(|s| s.ovs > 0.0).count(),
        args.out.display()
    );
    Ok(())
}

/// Scores a rollouts file on `--device` (cuda / emu: the VAS scoring kernel); lines given as
/// text are tokenized by --tokenizer, lines without an accuracy graded against `data`.
fn from_rollouts(
    path: &Path,
    data: Option<&Path>,
    args: &ScoreArgs,
    vps: VpsParams,
) -> Result<Vec<ScoreRecord>> {
    let tokenizer = match &args.tokenizer {
        Some(p) if p.is_dir() => Some(Tokenizer::from_dir(p)?),
        Some(p) => Some(Tokenizer::from_file(p)?),
        None => None,
    };
    let items = match data {
        Some(d) => {
            let items = load_rl_items_to_grade(d, args.bad_lines)?;
            let ids = items.iter().enumerate().map(|(i, it)| (it.id_or(i), i)).collect();
            Some((items, ids, d.to_path_buf()))
        }
        None => None,
    };
    let src = RolloutSources { tokenizer, items };
    let lines = read_jsonl::<RolloutLine>(path, args.bad_lines, |r| r.check_with(&src))?;
    if lines.records.is_empty() {
        bail!("{}: no rollouts", path.display());
    }
    let resolved = lines
        .records
        .iter()
        .map(|(n, r)| r.resolve(&src).map_err(|e| anyhow::anyhow!("{}:{n}: {e:#}", path.display())))
        .collect::<Result<Vec<_>>>()?;
    let rollouts = || resolved.iter().map(|(id, c, t)| (id.as_str(), *c, t.as_slice()));
    let scores = crate::with_backend!(args.device, be => score_rollouts_on(be, rollouts(), vps))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let single = scores.iter().filter(|s| s.n < 2).count();
    if single > 0 {
        eprintln!("warning: {}: {single} item(s) have a single rollout: their TDS is 0 and their pass rate one sample", path.display());
    }
    Ok(scores)
}

fn with_model(
    args: &ScoreArgs,
    model_dir: &Path,
    data: &Path,
    vps: VpsParams,
) -> Result<Vec<ScoreRecord>> {
    if args.rollouts_per_item < 2 {
        bail!("--rollouts-per-item must be at least 2 (got {}): OVS and TDS measure spread across rollouts", args.rollouts_per_item);
    }
    if !(args.temperature > 0.0 && args.temperature.is_finite()) {
        bail!(
            "--temperature must be > 0 for scoring (got {}): greedy rollouts are identical",
            args.temperature
        );
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1] (got {})", args.top_p);
    }
    if args.max_new_tokens == 0 || args.batch_items == 0 {
        bail!("--max-new-tokens and --batch-items must be positive");
    }
    // Items with images are read (and their files checked) only for a Qwen2.5-VL model.
    let vl = is_vl_checkpoint(model_dir)?;
    let items = if vl {
        load_rl_items_with_images(data, args.bad_lines)?
    } else {
        load_rl_items(data, args.bad_lines)?
    };
    crate::with_backend!(args.device, precision = args.precision, be => score_on(be, args, model_dir, vl, &items, vps))
}

fn score_on<B: RlOps>(
    be: &B,
    args: &ScoreArgs,
    model_dir: &Path,
    vl: bool,
    items: &[RlItem],
    vps: VpsParams,
) -> Result<Vec<ScoreRecord>> {
    let tok = Tokenizer::from_dir(model_dir)?;
    let grade = GradeParams {
        sampling: SamplingParams {
            temperature: args.temperature,
            top_p: args.top_p,
            top_k: 0,
            max_new_tokens: args.max_new_tokens,
            stop_ids: vec![], // the model's and tokenizer's, filled in by sample_and_grade
            stop_strings: vec![],
            kv_slots: 0,
        },
        per_item: args.rollouts_per_item,
        prompt_style: args.prompt_style,
        batch_items: args.batch_items,
        seed: args.seed,
        reward: RewardConfig::default(),
    };
    // Finished batches are kept in OUT.partial (rl::partial_results): a rerun of the same
    // command continues an interrupted pass.
    let flags = (args.rollouts_per_item, args.temperature, args.top_p, args.max_new_tokens);
    let settings = format!(
        "{flags:?}|{:?}|seed {}|batch {}|{}|{:?}",
        args.prompt_style,
        args.seed,
        args.batch_items,
        be.name(),
        args.precision
    );
    let fp = fingerprint(model_dir, items, &settings)?;
    let mut partial = Partial::open(&args.out, &fp, items.len(), args.batch_items)?;
    if !partial.done().is_empty() {
        let (done, n) = (partial.done().len(), items.len());
        eprintln!(
            "continuing the scoring pass in {}: {done} of {n} items done",
            partial.path().display()
        );
    }
    let pb = crate::progress::bar(items.len() as u64, "scoring");
    let progress = |done: usize| pb.set_position(done as u64);
    let p = &mut partial;
    let (scores, rollouts) = if vl {
        let model = VlModel::load(be, model_dir)?;
        tok.check_matches(&model_dir.join("tokenizer.json"), &model.cfg.text)?;
        score_with_vl_model_resumable(&model, model_dir, be, &tok, items, &grade, vps, p, progress)?
    } else {
        let model = Qwen2::load(be, model_dir)?;
        tok.check_matches(&model_dir.join("tokenizer.json"), &model.cfg)?;
        score_with_model_resumable(&model, be, &tok, items, &grade, vps, p, progress)?
    };
    pb.finish_and_clear();
    if let Some(p) = &args.rollouts_out {
        write_jsonl(p, &rollouts)?;
    }
    write_jsonl(&args.out, &scores)?;
    partial.finish()?;
    Ok(scores)
}
