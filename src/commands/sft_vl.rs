//! `mmr1-fast sft` when `--model` is a Qwen2.5-VL checkpoint: the data may carry images
//! (`data::vl_sft_data`), the trainer is `train::vl_sft::VlSftTrainer`, and every save writes
//! a Qwen2.5-VL directory (`model::vl_save`). The flags are `sft`'s; `--resume` continues
//! from a checkpoint's own config, tokenizer and preprocessor files.

use super::sft::{refuse_changed_settings, report, say_resuming, SftArgs};
use crate::backend::Backend;
use crate::data::vl_sft_data::load_vl_sft_dataset;
use crate::model::vl_forward::VlModel;
use crate::model::vl_prompt::QWEN25_VL_DEFAULT_SYSTEM;
use crate::model::Qwen2VlConfig;
use crate::pipeline::metrics::{MetricsLog, Phase, Record};
use crate::pipeline::run_dir::RunLock;
use crate::tokenizer::Tokenizer;
use crate::train::checkpoint::{latest_checkpoint, read_trainer_state, resume_checkpoint};
use crate::train::vl_sft::{VlSftState, VlSftTrainer};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

pub fn run_on<B: Backend>(be: &B, args: &SftArgs) -> Result<()> {
    let resume_dir = match args.resume.as_deref() {
        None => None,
        Some("latest") => Some(resume_checkpoint(&args.out)?.with_context(|| {
            format!("--resume: {} has no complete checkpoint", args.out.display())
        })?),
        Some(dir) => Some(PathBuf::from(dir)),
    };
    // A checkpoint is a complete Qwen2.5-VL directory: its config, tokenizer and
    // preprocessor are the run's when resuming.
    let model_dir = resume_dir.clone().unwrap_or_else(|| args.model.clone());
    let vl_cfg = Qwen2VlConfig::load(&model_dir)?;
    let tok_path = model_dir.join("tokenizer.json");
    let tok = Tokenizer::from_file(&tok_path)?;
    tok.check_matches(&tok_path, &vl_cfg.text)?;
    let system = tok.builtin_default_system(QWEN25_VL_DEFAULT_SYSTEM, args.no_default_system);
    let mut trainer = match &resume_dir {
        Some(dir) => {
            let st: VlSftState = read_trainer_state(dir)
                .with_context(|| format!("--resume: {} is not a checkpoint", dir.display()))?;
            refuse_changed_settings(args, &st.sft.config)?;
            // The flag is taken as given when it is not its default (true).
            if !args.freeze_vision && st.freeze_vision {
                bail!(
                    "--resume continues with the settings the run was started with; the run froze the vision tower, given --freeze-vision false. Drop it, or start a new run in another --out"
                );
            }
            let (data, _) = load_vl_sft_dataset(
                &args.data,
                &tok,
                system,
                st.sft.config.max_len,
                &model_dir,
                &vl_cfg,
            )?;
            let t = VlSftTrainer::resume(be, dir, data)?;
            say_resuming(dir, &t.state);
            t
        }
        None => {
            let cfg = args.config();
            cfg.validate()?;
            // The data (images included: every file must exist and have a readable header)
            // is checked before the weights are read.
            let (data, dropped) =
                load_vl_sft_dataset(&args.data, &tok, system, cfg.max_len, &model_dir, &vl_cfg)?;
            if dropped > 0 {
                eprintln!(
                    "note: {dropped} examples have no assistant token within --max-len {}; skipped",
                    cfg.max_len
                );
            }
            let model = VlModel::load(be, &model_dir)?;
            VlSftTrainer::new(be, model, &model_dir, data, cfg, args.freeze_vision)?
        }
    };
    let n_tok: usize = trainer.data.iter().map(|e| e.ex.ids.len()).sum();
    let n_img: usize = trainer.data.iter().map(|e| e.images.len()).sum();
    eprintln!(
        "sft (Qwen2.5-VL, vision tower {}): {} examples ({} tokens, {} images), {} steps of {} sequences, lr {:?}",
        if trainer.freeze_vision { "frozen" } else { "trained" },
        trainer.data.len(),
        n_tok,
        n_img,
        trainer.state.total_steps,
        trainer.state.config.batch_size,
        trainer.state.schedule
    );
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let _lock = RunLock::acquire(&args.out)?;
    if args.resume.is_none() {
        // A fresh run never mixes with another run's checkpoints or metrics.
        crate::pipeline::run_dir::prepare_fresh_sft(&args.out, args.overwrite)?;
    }
    // A resumed run's log is cut back to its checkpoint, so no step is logged twice.
    let keep = resume_dir.is_some().then_some((Phase::Sft, trainer.state.step));
    let mut metrics = MetricsLog::open(&args.out, keep)?;
    let mut done_here = 0u64;
    while !trainer.done() && args.max_steps.is_none_or(|m| done_here < m) {
        let m = trainer.step(be)?;
        done_here += 1;
        report(&m, trainer.state.total_steps);
        metrics.write(&Record::Sft(m.clone()))?;
        if args.save_every > 0 && m.step % args.save_every == 0 {
            let dir = trainer.save(be, &args.out, args.save_dtype)?;
            eprintln!("saved {}", dir.display());
        }
    }
    if latest_checkpoint(&args.out)?
        != Some(args.out.join(format!("checkpoint-{}", trainer.state.step)))
    {
        let dir = trainer.save(be, &args.out, args.save_dtype)?;
        eprintln!("saved {}", dir.display());
    }
    if trainer.done() {
        trainer.write_model(be, &args.out, args.save_dtype, trainer.state.step)?;
        eprintln!("final model written to {}", args.out.display());
    }
    Ok(())
}
