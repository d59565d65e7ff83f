//! `mmr1-fast sft`: cold-start supervised fine-tuning on JSONL conversations.

use crate::backend::Backend;
use crate::data::sft_data::load_sft_dataset;
use crate::dist::launch::World;
use crate::dist::{sync_replicas, zero, Collective, Single};
use crate::model::safetensors_io::write_model_files;
use crate::model::safetensors_io::SaveDtype;
use crate::model::Qwen2;
use crate::optim::AdamwConfig;
use crate::pipeline::metrics::{MetricsLog, Phase, Record};
use crate::pipeline::run_dir::{prepare_fresh_sft, RunLock};
use crate::ranges::Checks;
use crate::tokenizer::{Tokenizer, QWEN25_DEFAULT_SYSTEM};
use crate::train::checkpoint::{latest_checkpoint, resume_checkpoint};
use crate::train::sft::{SftConfig, SftStepMetrics, SftTrainer};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug, Clone)]
pub struct SftArgs {
    /// Hugging Face model directory to start from (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL training data (or one JSON array of records, LLaMA-Factory's `.json`), per record:
    /// `messages` (a content is a string or a list of {"type": "text"|"image"|"image_url", ...}
    /// parts), TRL's `prompt`/`completion` message lists, ShareGPT `conversations`,
    /// `problem`/`solution`, or alpaca `instruction`/`input`/`output`/`history`; a record-level
    /// "system" string is the system turn (unless the conversation opens with its own). With a
    /// Qwen2.5-VL `--model`, a record may name images, relative to the data file's folder:
    /// "image": "a.png" or "images": ["a.png", "b.jpg"] (or each image part names its file:
    /// "image", "path", "url"); each <image> marker or image part of a user or system turn is
    /// one image (with neither, the images open the first user turn). All forms: docs/data.md.
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory: checkpoints, `latest`, metrics.jsonl and the final model.
    #[arg(long)]
    pub out: PathBuf,
    /// Passes over the data (MMR1 cold start: 1).
    #[arg(long, default_value_t = SftConfig::default().epochs)]
    pub epochs: usize,
    /// Peak learning rate (MMR1 cold start: 1e-5).
    #[arg(long, default_value_t = SftConfig::default().lr)]
    pub lr: f32,
    /// Final learning rate of the cosine decay.
    #[arg(long, default_value_t = SftConfig::default().min_lr)]
    pub min_lr: f32,
    /// Constant learning rate after warm-up instead of cosine decay.
    #[arg(long)]
    pub constant_lr: bool,
    /// Sequences per optimizer step (MMR1 cold start: 32).
    #[arg(long, default_value_t = SftConfig::default().batch_size)]
    pub batch_size: usize,
    /// Tokens per packed micro-batch (gradients accumulate over the step's micro-batches).
    #[arg(long, default_value_t = SftConfig::default().micro_batch_tokens)]
    pub micro_batch_tokens: usize,
    /// Sequences are cut to this many tokens (MMR1 cold start: 16384).
    #[arg(long, default_value_t = SftConfig::default().max_len)]
    pub max_len: usize,
    /// Fraction of the optimizer steps over which the learning rate rises linearly from 0 to
    /// --lr (in [0, 1)).
    #[arg(long, default_value_t = SftConfig::default().warmup_ratio)]
    pub warmup_ratio: f64,
    /// AdamW's decoupled weight decay (applied to every parameter).
    #[arg(long, default_value_t = SftConfig::default().adamw.weight_decay)]
    pub weight_decay: f32,
    /// Global gradient-norm bound (0 disables clipping).
    #[arg(long, default_value_t = SftConfig::default().adamw.max_grad_norm.unwrap_or(0.0))]
    pub grad_clip: f32,
    /// AdamW's first-moment decay.
    #[arg(long, default_value_t = AdamwConfig::default().beta1)]
    pub beta1: f32,
    /// AdamW's second-moment decay.
    #[arg(long, default_value_t = AdamwConfig::default().beta2)]
    pub beta2: f32,
    /// AdamW's epsilon, added to the root of the second moment.
    #[arg(long, default_value_t = AdamwConfig::default().eps)]
    pub eps: f32,
    /// Data-order seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Save a checkpoint every N optimizer steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    pub save_every: u64,
    /// Weight dtype of saved models (optimizer state and master weights stay f32).
    #[arg(long, value_enum, default_value = "f32")]
    pub save_dtype: SaveDtype,
    /// Do not insert the default system prompt (Qwen2.5's; Qwen2.5-VL's for a VL checkpoint)
    /// into conversations without one. For the built-in Qwen ChatML only: a checkpoint with its
    /// own chat template (tokenizer_config.json, chat_template.jinja) is rendered by it, which
    /// decides the system turn as transformers does (MMR1_CHAT_TEMPLATE=chatml: the built-in).
    #[arg(long)]
    pub no_default_system: bool,
    /// Qwen2.5-VL checkpoints: train the language model only; the vision tower (and its
    /// merger) gets no gradient and no optimizer state (LLaMA-Factory's default, with which
    /// MMR1's cold-start data is laid out). `--freeze-vision false` trains it too.
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub freeze_vision: bool,
    /// Continue a run: from its newest complete checkpoint when given without a value, else
    /// from the checkpoint directory given. The run's saved settings are used (a training
    /// flag that differs from them is refused); data must be the same.
    #[arg(long, num_args = 0..=1, default_missing_value = "latest")]
    pub resume: Option<String>,
    /// Replace the run (checkpoints, `latest`, metrics.jsonl) already in --out. Without it, a
    /// fresh run into a directory holding another run's checkpoints is refused.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Stop after this many optimizer steps in this invocation (the run can be resumed).
    #[arg(long)]
    pub max_steps: Option<u64>,
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
    /// Activation recomputation: keep only each layer's input during the forward and re-run
    /// the layer's forward in the backward. Saves the activations of all layers but one (for
    /// larger models or longer micro-batches on a GPU) for about 20-25% more compute per
    /// step; the results are the same bits. May differ on --resume. See docs/perf.md.
    #[arg(long)]
    pub recompute: bool,
    /// ZeRO stage of a data-parallel run (mpirun -np N): 0 every rank holds the whole AdamW
    /// state; 1 each rank holds the moments of its 1/N of the parameters (8/N bytes a
    /// parameter instead of 8); 2 also shards the gradients (see --grad-buckets). The
    /// weights are the same as with 0 to rounding (docs/distributed.md). A resumed run may
    /// take another stage.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub zero: u8,
    /// With --zero 2 (ignored otherwise): reduce-scatter the gradients in buckets (one
    /// decoder layer each) during the backward, so each rank holds 1/N of the f32 gradient
    /// plus the buckets in flight, not the whole gradient (the real ZeRO-2 saving). false:
    /// one reduce-scatter per step. Equal to rounding (bit for bit with one micro-batch per
    /// rank); a resumed run may switch. docs/distributed.md.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub grad_buckets: bool,
    /// The collective of a data-parallel run's device buffers: auto (NCCL for N > 1 ranks on
    /// GPUs, MPI otherwise), mpi (GPU buffers staged through host memory), or nccl (NCCL also
    /// in a world of one, to check it against the plain path on one GPU). docs/distributed.md.
    #[arg(long, default_value = "auto")]
    pub collective: crate::dist::launch::CollectiveChoice,
}

impl SftArgs {
    /// Range checks of every numeric flag, named as typed, before any work.
    pub fn validate(&self) -> Result<()> {
        let mut c = Checks::new();
        c.at_least("--epochs", self.epochs as u64, 1);
        c.positive("--lr", self.lr as f64);
        c.closed("--min-lr", self.min_lr as f64, 0.0, self.lr as f64);
        c.at_least("--batch-size", self.batch_size as u64, 1);
        c.at_least("--micro-batch-tokens", self.micro_batch_tokens as u64, 1);
        c.at_least("--max-len", self.max_len as u64, 2);
        c.closed_open("--warmup-ratio", self.warmup_ratio, 0.0, 1.0);
        c.non_negative("--weight-decay", self.weight_decay as f64);
        c.non_negative("--grad-clip", self.grad_clip as f64);
        c.closed_open("--beta1", self.beta1 as f64, 0.0, 1.0);
        c.closed_open("--beta2", self.beta2 as f64, 0.0, 1.0);
        c.positive("--eps", self.eps as f64);
        c.finish("sft arguments")
    }

    pub fn config(&self) -> SftConfig {
        SftConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            micro_batch_tokens: self.micro_batch_tokens,
            max_len: self.max_len,
            lr: self.lr,
            min_lr: self.min_lr,
            warmup_ratio: self.warmup_ratio,
            cosine: !self.constant_lr,
            adamw: AdamwConfig {
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
                weight_decay: self.weight_decay,
                max_grad_norm: (self.grad_clip > 0.0).then_some(self.grad_clip),
            },
            seed: self.seed,
        }
    }
}

/// The command as rank `world.rank()` of the launched world (a world of one without mpirun).
pub fn run(args: &SftArgs, world: &World) -> Result<()> {
    let device = world.device(args.device)?;
    crate::with_backend!(device, precision = args.precision, be => {
        run_ranked(be, args, &*world.comm_for(be, args.collective)?)
    })
}

/// The SFT command on any backend, in one process (tests call this directly).
pub fn run_on<B: Backend>(be: &B, args: &SftArgs) -> Result<()> {
    run_ranked(be, args, &Single)
}

/// The SFT command as one rank of a data-parallel group: every rank reads the same data and
/// model, packs its shard of each step's sequences (`SftTrainer::step_with`), and takes the
/// same optimizer step; rank 0 alone prints, logs metrics and writes checkpoints and the final
/// model, while the others wait at a barrier after each write (so no rank runs ahead of a
/// checkpoint it could be resumed from).
pub fn run_ranked<B: Backend>(be: &B, args: &SftArgs, comm: &dyn Collective<B>) -> Result<()> {
    args.validate()?;
    let lead = comm.rank() == 0;
    if args.model.join("config.json").is_file()
        && crate::model::vl_prompt::is_vl_checkpoint(&args.model)?
    {
        if comm.world() > 1 {
            bail!("data-parallel SFT of a Qwen2.5-VL model is not supported yet: run it in one process");
        }
        if args.zero > 0 {
            bail!("--zero {}: sharded optimizer state is built for text models only; Qwen2.5-VL SFT runs with --zero 0", args.zero);
        }
        return super::sft_vl::run_on(be, args);
    }
    if !args.freeze_vision {
        bail!(
            "--freeze-vision false: {} is a text model, it has no vision tower",
            args.model.display()
        );
    }
    // One run per directory: rank 0 locks it before its checkpoints or metrics are read, and
    // clears a fresh run's way; the other ranks wait for that.
    let mut lock = None;
    if lead {
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("cannot create {}", args.out.display()))?;
        lock = Some(RunLock::acquire(&args.out)?);
        if args.resume.is_none() {
            prepare_fresh_sft(&args.out, args.overwrite)?;
        }
    }
    comm.barrier()?;
    let resume_dir = match args.resume.as_deref() {
        None => None,
        Some("latest") => Some(resume_checkpoint(&args.out)?.with_context(|| {
            format!("--resume: {} has no complete checkpoint", args.out.display())
        })?),
        Some(dir) => Some(PathBuf::from(dir)),
    };
    // The tokenizer of the checkpoint when resuming (it is a copy), else the model's.
    let tok_path = resume_dir
        .as_ref()
        .map(|d| d.join("tokenizer.json"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| args.model.join("tokenizer.json"));
    let tok = Tokenizer::from_file(&tok_path)?;
    let system = tok.builtin_default_system(QWEN25_DEFAULT_SYSTEM, args.no_default_system);

    let mut trainer = match &resume_dir {
        Some(dir) => {
            let st: crate::train::sft::SftState = serde_json::from_str(
                &std::fs::read_to_string(dir.join(crate::train::checkpoint::TRAINER_STATE))
                    .with_context(|| format!("--resume: {} is not a checkpoint", dir.display()))?,
            )
            .with_context(|| format!("{}: invalid trainer state", dir.display()))?;
            refuse_changed_settings(args, &st.config)?;
            let (data, _) = load_sft_dataset(&args.data, &tok, system, st.config.max_len)?;
            let t = SftTrainer::resume_ranked(be, dir, data, comm, args.zero)?;
            say_resuming(dir, &t.state);
            t
        }
        None => {
            let cfg = args.config();
            cfg.validate()?;
            let (data, dropped) = load_sft_dataset(&args.data, &tok, system, cfg.max_len)?;
            if dropped > 0 {
                eprintln!(
                    "note: {dropped} examples have no assistant token within --max-len {}; skipped",
                    cfg.max_len
                );
            }
            let model = Qwen2::load(be, &args.model)?;
            tok.check_matches(&tok_path, &model.cfg)?;
            SftTrainer::new_ranked(be, model, data, cfg, comm, args.zero)?
        }
    };
    trainer.ws.recompute = args.recompute;
    trainer.grad_buckets = args.grad_buckets;
    // Ranks that loaded independently start as exact replicas of rank 0.
    sync_replicas(be, comm, &mut trainer.model, &mut trainer.opt)?;
    let n_tok: usize = trainer.data.iter().map(|e| e.ids.len()).sum();
    if lead {
        eprintln!(
            "sft: {} examples ({} tokens), {} steps of {} sequences, lr {:?}{}",
            trainer.data.len(),
            n_tok,
            trainer.state.total_steps,
            trainer.state.config.batch_size,
            trainer.state.schedule,
            if comm.world() > 1 { format!(", {} ranks", comm.world()) } else { String::new() }
        );
        if comm.world() > 1 || args.zero > 0 {
            eprintln!("{}", trainer.state_note(be, comm.world()));
        }
    }
    // Rank 0 owns the output directory: the lock, the metrics log, the checkpoints.
    let mut owned = None;
    if let Some(lock) = lock.take() {
        // A resumed run's log is cut back to its checkpoint, so no step is logged twice; a
        // fresh run starts a new log.
        let keep = resume_dir.is_some().then_some((Phase::Sft, trainer.state.step));
        owned = Some((lock, MetricsLog::open(&args.out, keep)?));
    }
    let save = |trainer: &SftTrainer<B>| -> Result<()> {
        // Sharded moments are gathered first (every rank takes part); rank 0 writes.
        let full = zero::consolidated(be, comm, &trainer.opt)?;
        if lead {
            let opt = zero::for_save(&trainer.opt, &full);
            let dir = trainer.save_with(be, &args.out, args.save_dtype, Some(&tok_path), opt)?;
            eprintln!("saved {}", dir.display());
        }
        comm.barrier()
    };
    let mut done_here = 0u64;
    while !trainer.done() && args.max_steps.is_none_or(|m| done_here < m) {
        let m = trainer.step_with(be, comm)?;
        done_here += 1;
        if let Some((_, metrics)) = owned.as_mut() {
            report(&m, trainer.state.total_steps);
            metrics.write(&Record::Sft(m.clone()))?;
        }
        if args.save_every > 0 && m.step % args.save_every == 0 {
            save(&trainer)?;
        }
    }
    // Always end on a checkpoint (unless the last step just wrote one): rank 0 looks, and
    // every rank follows its answer.
    let need = lead
        && latest_checkpoint(&args.out)?
            != Some(args.out.join(format!("checkpoint-{}", trainer.state.step)));
    if comm.all_gather_host(&[f64::from(u8::from(need))])?[0][0] == 1.0 {
        save(&trainer)?;
    }
    if trainer.done() {
        if lead {
            // The finished model, loadable from OUT itself (e.g. as GRPO's starting point).
            write_final(&args.out, &trainer, be, args.save_dtype, &tok_path)?;
            eprintln!("final model written to {}", args.out.display());
        }
        comm.barrier()?;
    }
    Ok(())
}

/// A resumed run trains with the settings saved in its checkpoint. A flag given now that
/// differs from them would be silently ignored, so it is refused, named. (A flag is taken as
/// given when it differs from its default.)
pub(super) fn refuse_changed_settings(args: &SftArgs, saved: &SftConfig) -> Result<()> {
    #[derive(clap::Parser)]
    struct Defaults {
        #[command(flatten)]
        args: SftArgs,
    }
    let d = <Defaults as clap::Parser>::parse_from(["sft", "--model=m", "--data=d", "--out=o"]);
    let flat = |c: &SftConfig| -> Vec<(String, serde_json::Value)> {
        let v = serde_json::to_value(c).expect("config serializes");
        let mut out = Vec::new();
        for (k, x) in v.as_object().expect("a struct") {
            match x.as_object() {
                Some(o) => out.extend(o.iter().map(|(k2, y)| (k2.clone(), y.clone()))),
                None => out.push((k.clone(), x.clone())),
            }
        }
        out
    };
    let (now, default, then) = (flat(&args.config()), flat(&d.args.config()), flat(saved));
    let mut changed = Vec::new();
    for (((k, v), (_, dv)), (_, sv)) in now.iter().zip(&default).zip(&then) {
        if v != dv && v != sv {
            changed.push(format!("{k} (the run has {sv}, given {v})"));
        }
    }
    if !changed.is_empty() {
        bail!(
            "--resume continues with the settings the run was started with; these flags differ: {}. \
             Drop them, or start a new run in another --out",
            changed.join(", ")
        );
    }
    Ok(())
}

fn write_final<B: Backend>(
    out: &Path,
    t: &SftTrainer<B>,
    be: &B,
    dtype: SaveDtype,
    tok: &Path,
) -> Result<()> {
    write_model_files(out, &t.model.cfg, &t.model.layout, &t.model.to_host(be), dtype, Some(tok))
}

pub(super) fn report(m: &SftStepMetrics, total: u64) {
    let skip = if m.skipped { "  SKIPPED (non-finite grad norm)" } else { "" };
    eprintln!(
        "step {}/{}  epoch {:.3}  loss {:.4}  lr {:.3e}  grad_norm {:.4}  tokens {}  {:.0} tok/s{}",
        m.step, total, m.epoch, m.loss, m.lr, m.grad_norm, m.tokens, m.tokens_per_s, skip
    );
    if m.skipped {
        // verl prints a warning and skips; keep it visible.
        eprintln!("warning: step {} skipped: gradient norm is {}", m.step, m.grad_norm);
    }
}

/// The line a resumed `sft` run (text or vision-language) prints before training.
pub(super) fn say_resuming(dir: &Path, s: &crate::train::sft::SftState) {
    eprintln!(
        "resuming {} at step {}/{} (epoch {}, example {}); the run's saved settings apply",
        dir.display(),
        s.step,
        s.total_steps,
        s.epoch,
        s.cursor
    );
}
