//! `mmr1-fast sft` when `--model` is a Qwen2.5-VL checkpoint: the data may carry images
//! (`data::vl_sft_data`), the trainer is `train::vl_sft::VlSftTrainer`, and every save writes
//! a Qwen2.5-VL directory (`model::vl_save`). The flags are `sft`'s.

use super::sft::{report, SftArgs};
use crate::backend::Backend;
use crate::data::vl_sft_data::load_vl_sft_dataset;
use crate::model::vl_forward::VlModel;
use crate::model::vl_prompt::QWEN25_VL_DEFAULT_SYSTEM;
use crate::model::Qwen2VlConfig;
use crate::pipeline::metrics::{MetricsLog, Record};
use crate::pipeline::run_dir::RunLock;
use crate::tokenizer::Tokenizer;
use crate::train::checkpoint::latest_checkpoint;
use crate::train::vl_sft::VlSftTrainer;
use anyhow::{bail, Context, Result};

pub fn run_on<B: Backend>(be: &B, args: &SftArgs) -> Result<()> {
    if args.resume.is_some() {
        bail!(
            "--resume of a Qwen2.5-VL SFT run is not supported yet; its checkpoints are complete Hugging Face directories: start a new run from one with --model"
        );
    }
    let cfg = args.config();
    cfg.validate()?;
    let vl_cfg = Qwen2VlConfig::load(&args.model)?;
    let tok_path = args.model.join("tokenizer.json");
    let tok = Tokenizer::from_file(&tok_path)?;
    tok.check_matches(&tok_path, &vl_cfg.text)?;
    let system = (!args.no_default_system).then_some(QWEN25_VL_DEFAULT_SYSTEM);
    // The data (images included: every file must exist and have a readable header) is checked
    // before the weights are read.
    let (data, dropped) =
        load_vl_sft_dataset(&args.data, &tok, system, cfg.max_len, &args.model, &vl_cfg)?;
    if dropped > 0 {
        eprintln!(
            "note: {dropped} examples have no assistant token within --max-len {}; skipped",
            cfg.max_len
        );
    }
    let model = VlModel::load(be, &args.model)?;
    let mut trainer = VlSftTrainer::new(be, model, &args.model, data, cfg, args.freeze_vision)?;
    let n_tok: usize = trainer.data.iter().map(|e| e.ex.ids.len()).sum();
    let n_img: usize = trainer.data.iter().map(|e| e.images.len()).sum();
    eprintln!(
        "sft (Qwen2.5-VL, vision tower {}): {} examples ({} tokens, {} images), {} steps of {} sequences, lr {:?}",
        if args.freeze_vision { "frozen" } else { "trained" },
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
    let mut metrics = MetricsLog::open(&args.out, None)?;
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
