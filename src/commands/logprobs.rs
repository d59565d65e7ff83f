//! `mmr1-fast logprobs`: teacher-forced log-probs of token sequences, written to safetensors.

use crate::backend::Backend;
use crate::model::safetensors_io::{save_tensors, SaveDtype};
use crate::model::vl_forward::VlModel;
use crate::model::vl_prompt::{expand_image_placeholders, is_vl_checkpoint, VlImages};
use crate::model::{Acts, Packed, Qwen2};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct LogprobsArgs {
    /// Hugging Face model directory (config.json + *.safetensors): a Qwen2 or a Qwen2.5-VL
    /// checkpoint (the latter also reads preprocessor_config.json when given --image).
    #[arg(long)]
    pub model: PathBuf,
    /// JSON file holding a list of token-id sequences, e.g. [[151644, 872, 198], [9707, 11]].
    /// With --image, each image token (<|image_pad|>, 151655 in Qwen2.5-VL) is one image and
    /// is expanded to the image's merged patch count, as the Hugging Face processor does:
    /// write [..., 151652, 151655, 151653, ...] (vision_start, image_pad, vision_end) per image.
    #[arg(long)]
    pub tokens: PathBuf,
    /// An image (PNG, JPEG or WebP) for a Qwen2.5-VL checkpoint; repeat for several. The images
    /// fill the sequences' image tokens in order, across sequences. Example:
    /// --image cat.png --image chart.jpg
    #[arg(long = "image", value_name = "PATH")]
    pub images: Vec<PathBuf>,
    /// Output safetensors file: `logprobs.{i}` [len_i - 1] (log p(token t+1 | prefix)) and
    /// `last_logits.{i}` [vocab] (logits after the final token), f32. With images, len_i is
    /// the length after the image tokens are expanded.
    #[arg(long)]
    pub out: PathBuf,
    /// Divide logits by this temperature before the log-softmax (as GRPO does).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
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

pub fn run(args: &LogprobsArgs) -> Result<()> {
    if !(args.temperature > 0.0 && args.temperature.is_finite()) {
        bail!("--temperature must be a finite number > 0 (got {})", args.temperature);
    }
    let text = std::fs::read_to_string(&args.tokens)
        .with_context(|| format!("cannot read {}", args.tokens.display()))?;
    let seqs: Vec<Vec<u32>> = serde_json::from_str(&text).with_context(|| {
        format!("{}: expected a JSON list of lists of token ids", args.tokens.display())
    })?;
    if seqs.is_empty() {
        bail!("{}: no sequences (expected e.g. [[151644, 872, 198]])", args.tokens.display());
    }
    if let Some(i) = seqs.iter().position(|s| s.is_empty()) {
        bail!("{}: sequence {i} is empty", args.tokens.display());
    }
    if is_vl_checkpoint(&args.model)? {
        crate::with_backend!(args.device, precision = args.precision, be => run_vl(be, args, &seqs))
    } else {
        if let Some(p) = args.images.first() {
            bail!(
                "--image {}: {} is not a vision-language checkpoint (config.json model_type is not \"qwen2_5_vl\"); images need a Qwen2.5-VL model",
                p.display(),
                args.model.display()
            );
        }
        crate::with_backend!(args.device, precision = args.precision, be => run_on(be, args, &seqs))
    }
}

fn run_on<B: Backend>(be: &B, args: &LogprobsArgs, seqs: &[Vec<u32>]) -> Result<()> {
    let model = Qwen2::load(be, &args.model)?;
    for (i, s) in seqs.iter().enumerate() {
        model.check_ids(s).with_context(|| format!("{}: sequence {i}", args.tokens.display()))?;
    }
    let batch = Packed::new(seqs);
    let mut acts = None;
    // Forward only: one layer's activation buffers serve every layer.
    model.forward_with(be, &batch, &mut acts, true)?;
    let acts = acts.expect("forward planned the activations");
    write_out(be, args, &model, &batch, &acts, seqs.len())
}

/// A Qwen2.5-VL checkpoint: images preprocessed, placeholders expanded, the VL forward (M-RoPE;
/// without images it is the text model's forward).
fn run_vl<B: Backend>(be: &B, args: &LogprobsArgs, seqs: &[Vec<u32>]) -> Result<()> {
    let model = VlModel::load(be, &args.model)?;
    let images = VlImages::load(&args.images, &args.model, &model.cfg.vision)?;
    let counts = images.token_counts(model.cfg.vision.spatial_merge_size);
    let e = expand_image_placeholders(seqs, model.cfg.image_token_id, &counts)
        .with_context(|| format!("{}", args.tokens.display()))?;
    let with_grids: Vec<(&[u32], &[[usize; 3]])> = e
        .seqs
        .iter()
        .zip(&e.images)
        .map(|(s, r)| (s.as_slice(), &images.grids[r.clone()]))
        .collect();
    let batch = model.pack(&with_grids).with_context(|| format!("{}", args.tokens.display()))?;
    let pixels = (!images.grids.is_empty()).then(|| be.upload(&images.pixels));
    let mut acts = None;
    model.forward(be, &batch, pixels.as_ref(), &mut acts)?;
    let acts = acts.expect("forward planned the activations");
    write_out(be, args, &model.text, &batch.packed, &acts, e.seqs.len())
}

fn write_out<B: Backend>(
    be: &B,
    args: &LogprobsArgs,
    model: &Qwen2<B>,
    batch: &Packed,
    acts: &Acts<B>,
    n_seqs: usize,
) -> Result<()> {
    let (targets, has_target) = batch.next_token_targets();
    let (lp, _) = model.token_logprobs(be, acts, &targets, 1.0 / args.temperature);
    let last_rows: Vec<usize> = batch.spans.iter().map(|s| s.q_start + s.q_len - 1).collect();
    let last_logits = model.logits_of_rows(be, &acts.xn_f, &last_rows);
    let v = model.cfg.vocab_size;
    let mut tensors: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
    for (i, sp) in batch.spans.iter().enumerate() {
        let n = sp.q_len - 1;
        tensors.push((format!("logprobs.{i}"), vec![n], &lp[sp.q_start..sp.q_start + n]));
        tensors.push((format!("last_logits.{i}"), vec![v], &last_logits[i * v..(i + 1) * v]));
    }
    save_tensors(&args.out, &tensors, SaveDtype::F32, None)?;
    let total: f64 = lp.iter().zip(&has_target).filter(|(_, h)| **h).map(|(x, _)| *x as f64).sum();
    let n_pred = batch.tokens() - n_seqs;
    println!(
        "{} sequences, {} predicted tokens, mean log-prob {:.4}; wrote {}",
        n_seqs,
        n_pred,
        if n_pred > 0 { total / n_pred as f64 } else { 0.0 },
        args.out.display()
    );
    Ok(())
}
