//! Supervised fine-tuning of a Qwen2.5-VL model on conversations with images: the SFT run of
//! `train::sft` (same settings, schedule, data order, step-global token normalization, state
//! file), with each micro-batch packed by `VlModel::pack`, its images decoded and preprocessed
//! when the step uses them (the pixel rows travel with the micro-batch), and the forward and
//! backward of `VlModel`.
//!
//! `freeze_vision` (the default of `mmr1-fast sft`) trains the language model only, as
//! LLaMA-Factory's `freeze_vision_tower` (default true), with which MMR1's ShareGPT cold-start
//! data is laid out, does: the vision tower gets no backward and the optimizer holds no state
//! for it, so every `visual.*` tensor stays bit-identical. The merger is part of the tower
//! (`visual.merger.*`) and is frozen with it. Unfrozen, one AdamW step covers both parameter
//! sets, so gradient clipping sees the global norm of all of them.

use super::checkpoint::{finite_param, save_checkpoint_with};
use super::sft::{epoch_order, SftConfig, SftState, SftStepMetrics};
use super::{LossBatch, SftLoss, TokenLoss};
use crate::backend::Backend;
use crate::data::sft_data::SftExample;
use crate::data::vl_sft_data::VlSftExample;
use crate::model::params::ParamSpec;
use crate::model::safetensors_io::SaveDtype;
use crate::model::vl_forward::VlModel;
use crate::model::vl_prompt::VlImages;
use crate::model::vl_save::write_vl_model_files_from;
use crate::model::Acts;
use crate::optim::AdamW;
use anyhow::{bail, Context, Result};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

pub struct VlSftTrainer<B: Backend> {
    pub model: VlModel<B>,
    /// The checkpoint directory the model came from: its `preprocessor_config.json` makes the
    /// pixels, and its processor and tokenizer files go with every save.
    pub model_dir: PathBuf,
    /// AdamW over the decoder's parameters, then the vision tower's unless it is frozen.
    pub opt: AdamW<B>,
    pub freeze_vision: bool,
    pub data: Vec<VlSftExample>,
    pub state: SftState,
    acts: Option<Acts<B>>,
    /// Gradient accumulators in the optimizer's order (decoder, then vision unless frozen).
    grads: Vec<B::Buf>,
    order: Vec<usize>,
    next_epoch_rng: ChaCha8Rng,
}

impl<B: Backend> VlSftTrainer<B> {
    /// A fresh run on `model` (loaded from `model_dir`).
    pub fn new(
        be: &B,
        model: VlModel<B>,
        model_dir: &Path,
        data: Vec<VlSftExample>,
        cfg: SftConfig,
        freeze_vision: bool,
    ) -> Result<Self> {
        cfg.validate()?;
        if data.is_empty() {
            bail!("the SFT dataset is empty");
        }
        for (i, e) in data.iter().enumerate() {
            model
                .text
                .check_ids(&e.ex.ids)
                .map_err(|err| anyhow::anyhow!("example {}: {err}", i + 1))?;
        }
        let plain: Vec<SftExample> = data.iter().map(|e| e.ex.clone()).collect();
        let state = SftState::fresh(&plain, &cfg);
        let (text_grads, vision_grads) = model.zero_grads(be);
        let mut grads = text_grads;
        if !freeze_vision {
            grads.extend(vision_grads);
        }
        // Moments shaped like the trained parameters (the gradients have their shapes).
        let opt = AdamW::new(be, &grads, cfg.adamw);
        let (order, next_epoch_rng) = epoch_order(data.len(), &state.epoch_rng);
        Ok(VlSftTrainer {
            model,
            model_dir: model_dir.to_path_buf(),
            opt,
            freeze_vision,
            data,
            state,
            acts: None,
            grads,
            order,
            next_epoch_rng,
        })
    }

    pub fn done(&self) -> bool {
        self.state.step >= self.state.total_steps
    }

    /// One optimizer step: the next `batch_size` sequences of the epoch (fewer at its end).
    pub fn step(&mut self, be: &B) -> Result<SftStepMetrics> {
        let t0 = std::time::Instant::now();
        let n = self.data.len();
        if self.state.cursor >= n {
            self.state.epoch += 1;
            self.state.cursor = 0;
            self.state.epoch_rng = self.next_epoch_rng.clone();
            let (order, next) = epoch_order(n, &self.state.epoch_rng);
            self.order = order;
            self.next_epoch_rng = next;
        }
        let cfg = &self.state.config;
        let end = (self.state.cursor + cfg.batch_size).min(n);
        let seqs: Vec<&VlSftExample> =
            self.order[self.state.cursor..end].iter().map(|&i| &self.data[i]).collect();
        // The step's loss is the mean over ALL its response tokens, whatever the micro-batches.
        let step_tokens: usize = seqs.iter().map(|e| e.ex.trained_targets()).sum();
        let lens: Vec<usize> = seqs.iter().map(|e| e.ex.ids.len()).collect();
        let micro = super::pack_ranges(&lens, 0..seqs.len(), cfg.micro_batch_tokens);
        for g in &mut self.grads {
            be.fill(g, 0.0);
        }
        let mut loss = 0.0;
        for r in &micro {
            loss += micro_step(
                be,
                &self.model,
                &self.model_dir,
                self.freeze_vision,
                &mut self.acts,
                &mut self.grads,
                &seqs[r.clone()],
                step_tokens,
            )?;
        }
        let n_seqs = seqs.len();
        let lr = self.state.schedule.lr_at(self.state.step);
        let rep = self.optimizer_step(be, lr);
        self.state.step += 1;
        self.state.cursor = end;
        if rep.skipped {
            self.state.skipped_steps += 1;
        }
        let tokens: usize = lens.iter().sum();
        let secs = t0.elapsed().as_secs_f64();
        Ok(SftStepMetrics {
            step: self.state.step,
            epoch: self.state.epoch as f64 + end as f64 / n as f64,
            loss,
            lr,
            grad_norm: rep.grad_norm,
            clip_scale: rep.clip_scale,
            skipped: rep.skipped,
            sequences: n_seqs,
            tokens,
            trained_tokens: step_tokens,
            micro_batches: micro.len(),
            seconds: secs,
            tokens_per_s: tokens as f64 / secs.max(1e-9),
            device_memory: be.memory_stats(),
        })
    }

    /// AdamW over the trained parameters as one set (one global gradient norm). The buffers
    /// are moved, not copied, into one list for the step and back.
    fn optimizer_step(&mut self, be: &B, lr: f32) -> crate::optim::StepReport {
        let n_text = self.model.text.params.len();
        let mut params = std::mem::take(&mut self.model.text.params);
        if !self.freeze_vision {
            params.append(&mut self.model.vision.params);
        }
        let rep = self.opt.step(be, &mut params, &self.grads, lr);
        if !self.freeze_vision {
            self.model.vision.params = params.split_off(n_text);
        }
        self.model.text.params = params;
        rep
    }

    /// The trained parameters, in the optimizer's order, with their names.
    fn trained(&self) -> Vec<(&ParamSpec, &B::Buf)> {
        let m = &self.model;
        let mut v: Vec<(&ParamSpec, &B::Buf)> =
            m.text.layout.specs.iter().zip(&m.text.params).collect();
        if !self.freeze_vision {
            v.extend(m.vision.layout.specs.iter().zip(&m.vision.params));
        }
        v
    }

    /// Saves `out/checkpoint-{step}` (a Qwen2.5-VL Hugging Face directory with the processor
    /// and tokenizer files, plus the optimizer and trainer state) and moves `out/latest`.
    pub fn save(&self, be: &B, out: &Path, dtype: SaveDtype) -> Result<PathBuf> {
        let step = self.state.step;
        let write_model = |dir: &Path| self.write_model(be, dir, dtype, step);
        let trained = self.trained();
        save_checkpoint_with(be, out, step, write_model, &trained, &self.opt, &self.state, dtype)
    }

    /// Writes the model's Hugging Face files into `dir` (e.g. the finished model into OUT).
    pub fn write_model(&self, be: &B, dir: &Path, dtype: SaveDtype, step: u64) -> Result<()> {
        let m = &self.model;
        let n_text = m.text.params.len();
        let specs: Vec<&ParamSpec> =
            m.text.layout.specs.iter().chain(&m.vision.layout.specs).collect();
        let tensor = |i: usize| {
            let buf = if i < n_text { &m.text.params[i] } else { &m.vision.params[i - n_text] };
            finite_param(be, step, &specs[i].name, buf)
        };
        write_vl_model_files_from(
            dir,
            &m.cfg,
            &m.text.layout,
            &m.vision.layout,
            tensor,
            dtype,
            Some(&self.model_dir),
        )
        .with_context(|| format!("writing the model to {}", dir.display()))
    }
}

/// Forward, SFT loss and backward of one packed micro-batch; gradients ACCUMULATE.
#[allow(clippy::too_many_arguments)]
fn micro_step<B: Backend>(
    be: &B,
    m: &VlModel<B>,
    model_dir: &Path,
    freeze_vision: bool,
    acts_slot: &mut Option<Acts<B>>,
    grads: &mut [B::Buf],
    part: &[&VlSftExample],
    step_tokens: usize,
) -> Result<f64> {
    let paths: Vec<PathBuf> = part.iter().flat_map(|e| e.images.iter().cloned()).collect();
    let images = VlImages::load(&paths, model_dir, &m.cfg.vision)?;
    let grids: Vec<[usize; 3]> = part.iter().flat_map(|e| e.grids.iter().copied()).collect();
    if images.grids != grids {
        let i = images.grids.iter().zip(&grids).position(|(a, b)| a != b).unwrap_or(0);
        bail!(
            "image {}: preprocessing gives patch grid {:?}, its header promised {:?} (the file changed since the data was loaded?)",
            paths[i].display(),
            images.grids.get(i),
            grids.get(i)
        );
    }
    let seqs: Vec<(&[u32], &[[usize; 3]])> =
        part.iter().map(|e| (e.ex.ids.as_slice(), e.grids.as_slice())).collect();
    let batch = m.pack(&seqs)?;
    let ids: Vec<&[u32]> = part.iter().map(|e| e.ex.ids.as_slice()).collect();
    let rows = LossBatch::pack(&ids, |j, pos| part[j].ex.trained[pos]);
    let mut lossfn = SftLoss::new(&rows.row_mask(), step_tokens);
    let pixels = (!images.grids.is_empty()).then(|| be.upload(&images.pixels));
    let va = m.forward(be, &batch, pixels.as_ref(), acts_slot)?;
    let acts = acts_slot.as_ref().expect("forward planned the activations");
    let (targets, _) = batch.packed.next_token_targets();
    let (lp, ent) = m.text.token_logprobs(be, acts, &targets, lossfn.inv_temp());
    let g = lossfn.eval(&lp, &ent);
    let (text_grads, vision_grads) = grads.split_at_mut(m.text.params.len());
    m.backward(
        be,
        &batch,
        pixels.as_ref(),
        acts,
        va.as_ref(),
        &targets,
        &g.dlp,
        g.dent.as_deref(),
        lossfn.inv_temp(),
        text_grads,
        (!freeze_vision).then_some(vision_grads),
    )?;
    Ok(g.loss)
}
