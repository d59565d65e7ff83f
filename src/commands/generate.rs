//! `mmr1-fast generate`: a completion for one prompt, with the KV cache.

use crate::backend::rl_ops::RlOps;
use crate::model::vl_forward::VlModel;
use crate::model::vl_prompt::{
    expand_image_placeholders, is_vl_checkpoint, VlImages, IMAGE_PLACEHOLDER,
    QWEN25_VL_DEFAULT_SYSTEM,
};
use crate::model::Qwen2;
use crate::rl::rollout::{generate, Rollout, SamplingParams};
use crate::rl::vl_rollout::generate_vl;
use crate::tokenizer::{Message, Tokenizer, QWEN25_DEFAULT_SYSTEM};
use anyhow::{bail, Result};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Hugging Face model directory (config.json, *.safetensors, tokenizer.json): a Qwen2 or a
    /// Qwen2.5-VL checkpoint (the latter also reads preprocessor_config.json when given --image).
    #[arg(long)]
    pub model: PathBuf,
    /// The user's message (wrapped in the checkpoint's chat template, or the built-in Qwen
    /// ChatML, unless --raw). With --image the
    /// template puts one <|vision_start|><|image_pad|><|vision_end|> per image before it; with
    /// --raw write those yourself, one per image, in the order of the images.
    #[arg(long)]
    pub prompt: String,
    /// An image (PNG, JPEG or WebP) for a Qwen2.5-VL checkpoint; repeat for several. Example:
    /// --image photo.jpg --prompt "What is in the picture?"
    #[arg(long = "image", value_name = "PATH")]
    pub images: Vec<PathBuf>,
    /// At most this many new tokens (prompt + new tokens must fit the model's
    /// max_position_embeddings).
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling: draw from the smallest set of most likely tokens whose probability
    /// reaches p (1 = the whole vocabulary).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sampling seed (a Philox stream: the same seed, model, prompt and device give the same
    /// text).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// System prompt. Default: what the checkpoint's chat template writes without one (its
    /// tokenizer_config.json / chat_template.jinja / chat_template.json); for a checkpoint
    /// without a template, the built-in Qwen ChatML with Qwen2.5's system prompt (for a
    /// Qwen2.5-VL checkpoint "You are a helpful assistant.").
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
    // Sampling flags by name, before a model is loaded (the sampler checks them again, unnamed).
    let mut c = crate::ranges::Checks::new();
    c.non_negative("--temperature", args.temperature as f64);
    c.open_closed("--top-p", args.top_p as f64, 0.0, 1.0);
    c.at_least("--max-new-tokens", args.max_new_tokens as u64, 1);
    c.finish("generate arguments")?;
    if is_vl_checkpoint(&args.model)? {
        crate::with_backend!(args.device, precision = args.precision, be => run_vl(be, args))
    } else {
        if let Some(p) = args.images.first() {
            bail!(
                "--image {}: {} is not a vision-language checkpoint (config.json model_type is not \"qwen2_5_vl\"); images need a Qwen2.5-VL model",
                p.display(),
                args.model.display()
            );
        }
        crate::with_backend!(args.device, precision = args.precision, be => run_on(be, args))
    }
}

/// The prompt text: the chat template (system, user with `n_images` image blocks first,
/// assistant header) unless --raw.
/// A checkpoint's own template (when it has one) decides the system turn unless --system
/// gives one; the built-in ChatML uses `default_system`.
fn prompt_text(
    args: &GenerateArgs,
    tok: &Tokenizer,
    default_system: &str,
    n_images: usize,
) -> Result<String> {
    if args.raw {
        return Ok(args.prompt.clone());
    }
    let user =
        Message::new("user", &format!("{}{}", IMAGE_PLACEHOLDER.repeat(n_images), args.prompt));
    let msgs = match &args.system {
        Some(sys) => vec![Message::new("system", sys), user],
        None => vec![user],
    };
    tok.render_chat(&msgs, Some(default_system), true)
}

fn sampling(args: &GenerateArgs, tok: &Tokenizer, eos: Vec<u32>) -> SamplingParams {
    let mut stop_ids = tok.stop_ids();
    stop_ids.extend(eos);
    SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        max_new_tokens: args.max_new_tokens,
        stop_ids,
        stop_strings: vec![],
        kv_slots: 0,
    }
}

fn print_response(tok: &Tokenizer, r: &Rollout, params: &SamplingParams) -> Result<()> {
    let body: Vec<u32> =
        r.tokens.iter().copied().filter(|t| !params.stop_ids.contains(t)).collect();
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", tok.decode(&body, false)?)?;
    eprintln!("[{} tokens, stop: {:?}]", r.tokens.len(), r.stop);
    Ok(())
}

fn run_on<B: RlOps>(be: &B, args: &GenerateArgs) -> Result<()> {
    let model = Qwen2::load(be, &args.model)?;
    let tok = Tokenizer::from_dir(&args.model)?;
    tok.check_matches(&args.model.join("tokenizer.json"), &model.cfg)?;
    let ids = tok.encode(&prompt_text(args, &tok, QWEN25_DEFAULT_SYSTEM, 0)?)?;
    let params = sampling(args, &tok, model.cfg.eos_ids());
    let out = generate(&model, be, &[ids], 1, &params, args.seed, Some(&tok), |_| {})?;
    print_response(&tok, &out[0], &params)
}

/// A Qwen2.5-VL checkpoint: the images preprocessed, their placeholders expanded, then the
/// VL decode (M-RoPE; without images the same tokens as a text model).
fn run_vl<B: RlOps>(be: &B, args: &GenerateArgs) -> Result<()> {
    let model = VlModel::load(be, &args.model)?;
    let tok = Tokenizer::from_dir(&args.model)?;
    tok.check_matches(&args.model.join("tokenizer.json"), &model.cfg.text)?;
    let images = VlImages::load(&args.images, &args.model, &model.cfg.vision)?;
    let ids = tok.encode(&prompt_text(args, &tok, QWEN25_VL_DEFAULT_SYSTEM, args.images.len())?)?;
    let counts = images.token_counts(model.cfg.vision.spatial_merge_size);
    let mut e = expand_image_placeholders(&[ids], model.cfg.image_token_id, &counts)?;
    let ids = e.seqs.remove(0);
    let params = sampling(args, &tok, model.cfg.text.eos_ids());
    let pixels = (!images.grids.is_empty()).then(|| be.upload(&images.pixels));
    let r = generate_vl(&model, be, &ids, &images.grids, pixels.as_ref(), &params, args.seed)?;
    print_response(&tok, &r, &params)
}
