//! `mmr1-fast eval`: accuracy of a model on RL items (greedy by default, pass@k when
//! sampling), with per-item results for inspection.

use crate::backend::rl_ops::RlOps;
use crate::data::jsonl::{write_jsonl, BadLines};
use crate::data::prompt::PromptStyle;
use crate::data::rl_items::{load_rl_items, load_rl_items_with_images, RlItem};
use crate::model::vl_forward::VlModel;
use crate::model::vl_prompt::is_vl_checkpoint;
use crate::model::Qwen2;
use crate::rl::evaluate::{
    evaluate_resumable, evaluate_vl_resumable, evaluate_vl_with_progress, evaluate_with_progress,
    EvalParams, EvalReport, ItemResult,
};
use crate::rl::partial_results::{fingerprint, Partial};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Hugging Face model directory (config.json, *.safetensors, tokenizer.json): a Qwen2 or a
    /// Qwen2.5-VL checkpoint (the latter reads items with images).
    #[arg(long)]
    pub model: PathBuf,
    /// Held-out RL items (JSONL, MMR1 schema), one per line, e.g.
    /// {"id": "q1", "problem": "What is 2+3?", "answer": "5"}. With a Qwen2.5-VL checkpoint an
    /// item may name images, relative to the JSONL file's folder:
    /// {"problem": "<image>How many cats?", "answer": "3", "image": "imgs/cats.png"} or
    /// "images": ["a.png", "b.jpg"]; each <image> marker of the problem is one image (without
    /// markers the images go before the problem). A missing image is an error naming its line.
    /// verl's rows (prompt messages, reward_model.ground_truth) and JSON arrays read too:
    /// every accepted form is in docs/data.md.
    #[arg(long)]
    pub data: PathBuf,
    /// Per-item results (JSONL): id, answer, responses, extracted, correct, format_ok, pass.
    /// Finished batches are kept in OUT.partial as they finish: run the same command again
    /// after a crash or a kill and it continues from there, with the results an uninterrupted
    /// run writes.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Responses per item; an item passes when any is correct (pass@k). k > 1 needs a
    /// temperature above 0.
    #[arg(long, default_value_t = 1)]
    pub k: usize,
    /// 0 is greedy (MMR1 validates at 0.5 when sampling).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling: draw from the smallest set of most likely tokens whose probability
    /// reaches p (1 = the whole vocabulary).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Tokens a response may take before it is cut (an unfinished response has no answer).
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    /// mmr1 (the training prompt: the format rate is meaningful), mmr1-eval (the paper's
    /// benchmark prompt: boxed answer only) or plain.
    #[arg(long, value_enum, default_value_t = PromptStyle::Mmr1)]
    pub prompt_style: PromptStyle,
    /// Sampling seed: every response draws from its own Philox stream of this seed, so the
    /// same seed, model, items and device give the same responses.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Evaluate only the first N items (0: all).
    #[arg(long, default_value_t = 0)]
    pub max_items: usize,
    /// Items decoded together (a Qwen2.5-VL checkpoint: at most 64 responses per KV cache,
    /// each holding a copy of its prompt's pixels).
    #[arg(long, default_value_t = 8)]
    pub batch_items: usize,
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

pub fn run(args: &EvalArgs) -> Result<()> {
    let params = EvalParams {
        k: args.k,
        temperature: args.temperature,
        top_p: args.top_p,
        max_new_tokens: args.max_new_tokens,
        prompt_style: args.prompt_style,
        seed: args.seed,
        max_items: args.max_items,
        batch_items: args.batch_items,
    };
    // Flags are checked by name before the model is loaded: a typo should not cost a load.
    if args.k == 0 {
        bail!("--k must be at least 1");
    }
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        bail!("--temperature must be >= 0 (got {})", args.temperature);
    }
    if args.k > 1 && args.temperature == 0.0 {
        bail!("--k {} needs --temperature > 0: greedy responses are all the same", args.k);
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1] (got {})", args.top_p);
    }
    if args.max_new_tokens == 0 || args.batch_items == 0 {
        bail!("--max-new-tokens and --batch-items must be positive");
    }
    params.validate()?;
    if is_vl_checkpoint(&args.model)? {
        let items = load_rl_items_with_images(&args.data, args.bad_lines)?;
        return crate::with_backend!(args.device, precision = args.precision, be => run_vl(be, args, &items, &params));
    }
    let items = load_rl_items(&args.data, args.bad_lines)?;
    crate::with_backend!(args.device, precision = args.precision, be => run_on(be, args, &items, &params))
}

fn run_vl<B: RlOps>(be: &B, args: &EvalArgs, items: &[RlItem], params: &EvalParams) -> Result<()> {
    let model = VlModel::load(be, &args.model)?;
    let tok = Tokenizer::from_dir(&args.model)?;
    tok.check_matches(&args.model.join("tokenizer.json"), &model.cfg.text)?;
    let n = if args.max_items > 0 { args.max_items.min(items.len()) } else { items.len() };
    let pb = crate::progress::bar(n as u64, "evaluating");
    let progress = |done: usize| pb.set_position(done as u64);
    let report = match &args.out {
        Some(out) => evaluate_to_file(be, args, out, items, n, |partial| {
            let m = &args.model;
            evaluate_vl_resumable(&model, m, be, &tok, items, params, partial, progress)
        })?,
        None => evaluate_vl_with_progress(&model, &args.model, be, &tok, items, params, progress)?,
    };
    pb.finish_and_clear();
    report_out(args, &report)
}

fn run_on<B: RlOps>(be: &B, args: &EvalArgs, items: &[RlItem], params: &EvalParams) -> Result<()> {
    let model = Qwen2::load(be, &args.model)?;
    let tok = Tokenizer::from_dir(&args.model)?;
    tok.check_matches(&args.model.join("tokenizer.json"), &model.cfg)?;
    let n = if args.max_items > 0 { args.max_items.min(items.len()) } else { items.len() };
    let pb = crate::progress::bar(n as u64, "evaluating");
    let progress = |done: usize| pb.set_position(done as u64);
    let report = match &args.out {
        Some(out) => evaluate_to_file(be, args, out, items, n, |partial| {
            evaluate_resumable(&model, be, &tok, items, params, partial, progress)
        })?,
        None => evaluate_with_progress(&model, be, &tok, items, params, progress)?,
    };
    pb.finish_and_clear();
    report_out(args, &report)
}

/// `run(partial)` with this evaluation's partial results (`rl::partial_results`; saying so when
/// it continues a run), then its results written to `out` and the partial file removed.
fn evaluate_to_file<B: RlOps>(
    be: &B,
    args: &EvalArgs,
    out: &Path,
    items: &[RlItem],
    n: usize,
    run: impl FnOnce(&mut Partial<ItemResult>) -> Result<EvalReport>,
) -> Result<EvalReport> {
    let flags = (args.k, args.temperature, args.top_p, args.max_new_tokens, args.prompt_style);
    let settings = format!(
        "{flags:?}|seed {}|batch {}|{}|{:?}",
        args.seed,
        args.batch_items,
        be.name(),
        args.precision
    );
    let fp = fingerprint(&args.model, &items[..n], &settings)?;
    let mut p = Partial::open(out, &fp, n, args.batch_items)?;
    if !p.done().is_empty() {
        eprintln!(
            "continuing the evaluation in {}: {} of {n} items done",
            p.path().display(),
            p.done().len()
        );
    }
    let report = run(&mut p)?;
    write_jsonl(out, &report.results)?;
    p.finish()?;
    Ok(report)
}

fn report_out(args: &EvalArgs, report: &EvalReport) -> Result<()> {
    let what = if report.k == 1 { "accuracy".to_string() } else { format!("pass@{}", report.k) };
    println!(
        "{what} {:.4}, response accuracy {:.4}, format {:.4}, {} items x {} responses, {:.1}s{}",
        report.accuracy,
        report.response_accuracy,
        report.format_rate,
        report.items,
        report.k,
        report.seconds,
        args.out.as_ref().map(|p| format!("; wrote {}", p.display())).unwrap_or_default()
    );
    Ok(())
}
