//! The `mmr1-fast` command line: parses arguments and hands each command to `commands::*`.

use clap::{Parser, Subcommand};
use mmr1_fast::commands;
use mmr1_fast::dist::launch::World;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "mmr1-fast", version, about = "Train Qwen2-family reasoning models the MMR1 way: cold-start SFT, then GRPO with Variance-Aware Sampling.", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Teacher-forced log-prob of every token of given token-id sequences.
    ///
    /// Example (seqs.json: [[151644, 872, 198, 9707], [9707, 11, 1879]]):
    ///
    ///   mmr1-fast logprobs --model models/qwen2.5-0.5b --tokens seqs.json --out lp.safetensors
    Logprobs(commands::logprobs::LogprobsArgs),
    /// Complete one prompt with the model (greedy with --temperature 0).
    ///
    /// The prompt goes through the checkpoint's chat template (--raw: as given). Example:
    ///
    ///   mmr1-fast generate --model models/qwen2.5-0.5b-instruct --prompt "What is 17 * 23?"
    Generate(commands::generate::GenerateArgs),
    /// Cold-start supervised fine-tuning on JSONL conversations (assistant tokens only).
    ///
    /// Example (a line of sft.jsonl: {"messages": [{"role": "user", "content": "2+3?"},
    /// {"role": "assistant", "content": "<think>2+3=5</think><answer>\boxed{5}</answer>"}]}):
    ///
    ///   mmr1-fast sft --model models/qwen2.5-0.5b-instruct --data sft.jsonl --out runs/sft
    ///
    /// A killed run continues from its newest checkpoint with the same command and --resume;
    /// the final model (config, safetensors, tokenizer) is written into OUT.
    Sft(commands::sft::SftArgs),
    /// The MMR1 pipeline: cold-start SFT, then GRPO with Variance-Aware Sampling. With no
    /// arguments: the built-in demo (a tiny model learns multi-digit sums, no downloads).
    Train(commands::train::TrainArgs),
    /// Grade responses made anywhere (vLLM, transformers, another run) with the MMR1 rewards.
    ///
    /// Each response gets `accuracy` (its final answer, the last \boxed{} or the <answer>
    /// block, matches the item's reference) and `format` (the response is
    /// <think>..</think><answer>..\boxed{}..</answer>); `reward` is accuracy_weight * accuracy
    /// + format_weight * format, 1 and 1 in MMR1. Example:
    ///
    ///   mmr1-fast reward --data items.jsonl --responses responses.jsonl --out verdicts.jsonl
    ///
    /// responses.jsonl: {"id": "q17", "response": "<think>..</think><answer>\boxed{4}</answer>"}
    /// per line, any number per id. The summary counts items by pass rate: items in (0, 1)
    /// are the ones whose rollouts keep GRPO's reward variance.
    Reward(commands::reward::RewardArgs),
    /// Score items for Variance-Aware Sampling: pass rate, OVS, TDS and VPS per item.
    ///
    /// N rollouts per item are graded by accuracy; pass rate p = the fraction correct,
    /// OVS = p (1 - p) (outcome variance, 0.25 at p = 0.5, 0 when all agree), TDS = 1 -
    /// self-BLEU-4 of the rollouts' token ids (0 identical, 1 nothing shared),
    /// VPS = alpha OVS + beta TDS. High-VPS items are those GRPO still learns from; use the
    /// scores to filter or weight a dataset. With a model:
    ///
    ///   mmr1-fast score --model DIR --data items.jsonl --out scores.jsonl --rollouts-out r.jsonl
    ///
    /// or from rollouts made elsewhere ({"id", "tokens", "reward" or "accuracy"} per line; the
    /// --rollouts-out file is one):
    ///
    ///   mmr1-fast score --from-rollouts rollouts.jsonl --out scores.jsonl
    Score(commands::score::ScoreArgs),
    /// Accuracy of a model on held-out items (greedy by default; pass@k with --k and a
    /// temperature).
    ///
    /// Each item is prompted as in training (--prompt-style), answered, and graded like the
    /// reward's accuracy term; the summary gives accuracy (pass@k for k > 1: any of k samples
    /// correct), the accuracy over all responses, and the rate of MMR1-formatted responses.
    /// Example:
    ///
    ///   mmr1-fast eval --model runs/demo/final --data heldout.jsonl --out results.jsonl
    Eval(commands::eval::EvalArgs),
    /// Draw a run's training curves from OUT_DIR/metrics.jsonl to a PNG grid of panels.
    ///
    /// Panels: SFT loss and learning rate; RL reward mean and accuracy (they part when the
    /// format term pays); the fraction of zero-variance groups (all rollouts right or all
    /// wrong: no GRPO advantage, what Variance-Aware Sampling keeps low); RL grad norm; the
    /// fraction of clipped probability ratios and the KL to the reference model (how far
    /// updates move the policy); eval accuracy before SFT, after SFT and after RL on one step
    /// axis; response length. Panels without data are left out. Example:
    ///
    ///   mmr1-fast plot runs/demo            # writes runs/demo/curves.png
    ///
    /// Titles and labels need a TTF font (found on the system, or --font); without one the
    /// curves are drawn unlabelled and the panel order is printed.
    Plot(commands::plot::PlotArgs),
    /// Write a Qwen2.5- or Qwen2.5-VL-shaped model with random weights (published shapes, Hugging Face
    /// layout): benchmarks and tests at real sizes without a download.
    ///
    /// Example:
    ///
    ///   mmr1-fast init-model --arch qwen2.5-0.5b --out models/q05
    ///
    /// Sizes: qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-3b, qwen2.5-7b (0.49B to 7.6B parameters;
    /// the host holds them in f32 while writing, 30 GB for 7B). --layers N keeps the widths
    /// with fewer layers. Qwen2.5-VL: qwen2.5-vl-3b, qwen2.5-vl-7b (3.75B, 8.29B; written one
    /// tensor at a time, with the published preprocessor_config.json), qwen2.5-vl-tiny (the
    /// visual demo's model, with its tokenizer).
    InitModel(commands::init_model::InitModelArgs),
}

/// Runs a training command as one rank of the world its launcher started (`mpirun -np N`;
/// a plain process is a world of one). See `dist::launch`.
fn ranked(f: impl FnOnce(&World) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let world = World::from_env()?;
    let r = f(&world);
    world.finish(r)
}

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    // `--temperature -1` is a value (which the command then refuses with its reason), not an
    // unknown flag `-1`.
    let matches = Cli::command().mut_subcommands(|c| c.allow_negative_numbers(true)).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match &cli.command {
        Command::Logprobs(a) => commands::logprobs::run(a),
        Command::Generate(a) => commands::generate::run(a),
        Command::Sft(a) => ranked(|w| commands::sft::run(a, w)),
        Command::Train(a) => ranked(|w| commands::train::run(a, w)),
        Command::Reward(a) => commands::reward::run(a),
        Command::Score(a) => commands::score::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::Plot(a) => commands::plot::run(a),
        Command::InitModel(a) => commands::init_model::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
