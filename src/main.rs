//! The `mmr1-fast` command line: parses arguments and hands each command to `commands::*`.

use clap::{Parser, Subcommand};
use mmr1_fast::commands;
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
    Logprobs(commands::logprobs::LogprobsArgs),
    /// Complete one prompt with the model (greedy with --temperature 0).
    Generate(commands::generate::GenerateArgs),
    /// Cold-start supervised fine-tuning on JSONL conversations (assistant tokens only).
    Sft(commands::sft::SftArgs),
    /// The MMR1 pipeline: cold-start SFT, then GRPO with Variance-Aware Sampling. With no
    /// arguments: the built-in demo (a tiny model learns multi-digit sums, no downloads).
    Train(commands::train::TrainArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Logprobs(a) => commands::logprobs::run(a),
        Command::Generate(a) => commands::generate::run(a),
        Command::Sft(a) => commands::sft::run(a),
        Command::Train(a) => commands::train::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
