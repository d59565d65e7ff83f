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

use super::checkpoint::{read_trainer_state, StateKind};
use super::sft::{
    epoch_order, next_step_range, DataInfo, SftConfig, SftState, SftStepMetrics, StepDone,
};
use super::vl_checkpoint::{load_vl_checkpoint, save_vl_checkpoint, write_vl_model};
use super::vl_step::{vl_adamw_step, vl_micro_step, vl_trained_grads, VlMicro};
use super::{LossBatch, SftLoss};
use crate::backend::Backend;
use crate::data::sft_data::{fingerprint, SftExample};
use crate::data::vl_sft_data::VlSftExample;
use crate::model::safetensors_io::SaveDtype;
use crate::model::vl_forward::VlModel;
use crate::model::vl_prompt::VlImages;
use crate::model::Acts;
use crate::optim::AdamW;
use anyhow::{bail, Result};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `trainer_state.json` of a Qwen2.5-VL SFT run: the text run's state and whether the vision
/// tower is frozen (which fixes what the optimizer state covers). Nested, not flattened:
/// serde's flatten cannot carry the RNG state's u128.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VlSftState {
    pub sft: SftState,
    pub freeze_vision: bool,
}

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
        let grads = vl_trained_grads(be, &model, !freeze_vision);
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

    /// Continues the run saved in checkpoint directory `dir` (written by [`Self::save`]: a
    /// Qwen2.5-VL directory with its processor files, which then serve as the model
    /// directory); `data` must be the dataset it was trained on, which is checked. The f32
    /// master weights are used when the model file is bf16.
    pub fn resume(be: &B, dir: &Path, data: Vec<VlSftExample>) -> Result<Self> {
        let st: VlSftState = read_trainer_state(dir)?;
        if st.sft.kind != StateKind::Sft {
            bail!("{}: trainer state is of kind {:?}, not an SFT run", dir.display(), st.sft.kind);
        }
        let plain: Vec<SftExample> = data.iter().map(|e| e.ex.clone()).collect();
        let info = DataInfo { examples: data.len(), fingerprint: fingerprint(&plain) };
        if info != st.sft.data {
            bail!(
                "{}: the checkpoint was trained on other data ({} examples, fingerprint {}) than given now ({} examples, fingerprint {}); \
                 resume needs the same file, images, --max-len and chat settings",
                dir.display(),
                st.sft.data.examples,
                st.sft.data.fingerprint,
                info.examples,
                info.fingerprint
            );
        }
        if st.sft.cursor > data.len() || st.sft.step > st.sft.total_steps {
            bail!(
                "{}: trainer state is inconsistent (cursor {}, step {} of {})",
                dir.display(),
                st.sft.cursor,
                st.sft.step,
                st.sft.total_steps
            );
        }
        let (model, opt) = load_vl_checkpoint(be, dir, st.freeze_vision)?;
        let grads = vl_trained_grads(be, &model, !st.freeze_vision);
        let (order, next_epoch_rng) = epoch_order(data.len(), &st.sft.epoch_rng);
        Ok(VlSftTrainer {
            model,
            model_dir: dir.to_path_buf(),
            opt,
            freeze_vision: st.freeze_vision,
            data,
            state: st.sft,
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
        let range = next_step_range(&mut self.state, &mut self.order, &mut self.next_epoch_rng, n);
        let (cfg, end) = (&self.state.config, range.end);
        let seqs: Vec<&VlSftExample> = self.order[range].iter().map(|&i| &self.data[i]).collect();
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
        let done = StepDone {
            loss,
            sequences: n_seqs,
            tokens: lens.iter().sum(),
            trained_tokens: step_tokens,
            micro_batches: micro.len(),
            started: t0,
            device_memory: be.memory_stats(),
        };
        Ok(self.state.finish_step(end, n, &rep, done))
    }

    /// AdamW over the trained parameters as one set (one global gradient norm).
    fn optimizer_step(&mut self, be: &B, lr: f32) -> crate::optim::StepReport {
        vl_adamw_step(be, &mut self.model, &mut self.opt, &self.grads, lr, !self.freeze_vision)
    }

    /// Saves `out/checkpoint-{step}` (a Qwen2.5-VL Hugging Face directory with the processor
    /// and tokenizer files, plus the optimizer and trainer state) and moves `out/latest`.
    pub fn save(&self, be: &B, out: &Path, dtype: SaveDtype) -> Result<PathBuf> {
        let state = VlSftState { sft: self.state.clone(), freeze_vision: self.freeze_vision };
        let (m, step) = (&self.model, self.state.step);
        save_vl_checkpoint(
            be,
            m,
            &self.model_dir,
            self.freeze_vision,
            out,
            step,
            &self.opt,
            &state,
            dtype,
        )
    }

    /// Writes the model's Hugging Face files into `dir` (e.g. the finished model into OUT).
    pub fn write_model(&self, be: &B, dir: &Path, dtype: SaveDtype, step: u64) -> Result<()> {
        write_vl_model(be, &self.model, dir, dtype, step, &self.model_dir)
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
    let micro = VlMicro::with_images(be, m.pack(&seqs)?, &images)?;
    let ids: Vec<&[u32]> = part.iter().map(|e| e.ex.ids.as_slice()).collect();
    let rows = LossBatch::pack(&ids, |j, pos| part[j].ex.trained[pos]);
    let mut lossfn = SftLoss::new(&rows.row_mask(), step_tokens);
    let chunk = m.text.logit_chunk_rows();
    let one_pass = super::step::head_one_pass_from_env();
    vl_micro_step(be, m, &micro, &mut lossfn, acts_slot, grads, !freeze_vision, chunk, one_pass)
}
