//! `mmr1-fast generate`: a completion for one prompt, with the KV cache.

use crate::backend::Backend;
use crate::model::Qwen2;
use crate::rl::rollout::{generate, SamplingParams};
use crate::tokenizer::{apply_chat_template, Message, Tokenizer, QWEN25_DEFAULT_SYSTEM};
use anyhow::Result;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Hugging Face model directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// The user's message (wrapped in the Qwen chat template unless --raw).
    #[arg(long)]
    pub prompt: String,
    /// At most this many new tokens (prompt + new tokens must fit the model's
    /// max_position_embeddings).
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// System prompt (default: Qwen2.5's).
    #[arg(long)]
    pub system: Option<String>,
    /// Feed the prompt text as is, without the chat template.
    #[arg(long)]
    pub raw: bool,
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

pub fn run(args: &GenerateArgs) -> Result<()> {
    crate::with_backend!(args.device, precision = args.precision, be => run_on(be, args))
}

fn run_on<B: Backend>(be: &B, args: &GenerateArgs) -> Result<()> {
    let model = Qwen2::load(be, &args.model)?;
    let tok = Tokenizer::from_dir(&args.model)?;
    tok.check_matches(&args.model.join("tokenizer.json"), &model.cfg)?;
    let text = if args.raw {
        args.prompt.clone()
    } else {
        let sys = args.system.as_deref().unwrap_or(QWEN25_DEFAULT_SYSTEM);
        apply_chat_template(
            &[Message::new("system", sys), Message::new("user", &args.prompt)],
            None,
            true,
        )
    };
    let ids = tok.encode(&text)?;
    let mut stop_ids = tok.stop_ids();
    stop_ids.extend(model.cfg.eos_ids());
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        max_new_tokens: args.max_new_tokens,
        stop_ids,
        stop_strings: vec![],
    };
    let out = generate(&model, be, &[ids], 1, &params, args.seed, Some(&tok), |_| {})?;
    let r = &out[0];
    let body: Vec<u32> =
        r.tokens.iter().copied().filter(|t| !params.stop_ids.contains(t)).collect();
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", tok.decode(&body, false)?)?;
    eprintln!("[{} tokens, stop: {:?}]", r.tokens.len(), r.stop);
    Ok(())
}
