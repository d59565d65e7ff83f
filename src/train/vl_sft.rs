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

use super::checkpoint::{
    finite_param, load_optimizer, read_trainer_state, save_checkpoint_with, StateKind,
};
use super::sft::{
    epoch_order, next_step_range, DataInfo, SftConfig, SftState, SftStepMetrics, StepDone,
};
use super::{LossBatch, SftLoss, TokenLoss};
use crate::backend::Backend;
use crate::data::sft_data::{fingerprint, SftExample};
use crate::data::vl_sft_data::VlSftExample;
use crate::model::params::ParamSpec;
use crate::model::safetensors_io::SaveDtype;
use crate::model::vision_forward::VisionTower;
use crate::model::vl::VlHost;
use crate::model::vl_forward::VlModel;
use crate::model::vl_prompt::VlImages;
use crate::model::vl_save::write_vl_model_files_from;
use crate::model::Acts;
use crate::model::Qwen2;
use crate::optim::AdamW;
use anyhow::{bail, Context, Result};
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
        let h = VlHost::load(dir)?;
        let text_specs: Vec<&ParamSpec> = h.text_layout.specs.iter().collect();
        let vision_specs: Vec<&ParamSpec> = h.vision_layout.specs.iter().collect();
        let (trained, frozen) = if st.freeze_vision {
            (text_specs, vision_specs)
        } else {
            ([text_specs, vision_specs].concat(), vec![])
        };
        let (opt, masters) = load_optimizer(be, dir, &trained, &frozen)?;
        let (mut text, mut vision) = (h.text, h.vision);
        if let Some(mut all) = masters {
            // Masters come in (trained, frozen) order: decoder first either way.
            vision = all.split_off(text.len());
            text = all;
        }
        let model = VlModel {
            text: Qwen2::from_host(be, h.cfg.text.clone(), h.text_layout, &text),
            vision: VisionTower::from_host(be, h.cfg.vision.clone(), h.vision_layout, &vision),
            cfg: h.cfg,
        };
        let mut grads = model.text.zero_grads(be);
        if !st.freeze_vision {
            grads.extend(model.vision.zero_grads(be));
        }
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

    /// The trained parameters, in the optimizer's order, and the frozen ones, with names.
    #[allow(clippy::type_complexity)]
    fn param_sets(&self) -> (Vec<(&ParamSpec, &B::Buf)>, Vec<(&ParamSpec, &B::Buf)>) {
        let m = &self.model;
        let mut trained: Vec<(&ParamSpec, &B::Buf)> =
            m.text.layout.specs.iter().zip(&m.text.params).collect();
        let vision: Vec<(&ParamSpec, &B::Buf)> =
            m.vision.layout.specs.iter().zip(&m.vision.params).collect();
        if self.freeze_vision {
            (trained, vision)
        } else {
            trained.extend(vision);
            (trained, vec![])
        }
    }

    /// Saves `out/checkpoint-{step}` (a Qwen2.5-VL Hugging Face directory with the processor
    /// and tokenizer files, plus the optimizer and trainer state) and moves `out/latest`.
    pub fn save(&self, be: &B, out: &Path, dtype: SaveDtype) -> Result<PathBuf> {
        let step = self.state.step;
        let write_model = |dir: &Path| self.write_model(be, dir, dtype, step);
        let (trained, frozen) = self.param_sets();
        let state = VlSftState { sft: self.state.clone(), freeze_vision: self.freeze_vision };
        save_checkpoint_with(
            be,
            out,
            step,
            write_model,
            &trained,
            &frozen,
            &self.opt,
            &state,
            dtype,
        )
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
    let (lp, ent) = m.text.token_logprobs(be, acts, &targets, TokenLoss::<B>::inv_temp(&lossfn));
    // The VL backward takes host gradients per row; the loss works on backend buffers.
    let g = lossfn.eval(be, &be.upload(&lp), &be.upload(&ent));
    let rows_n = targets.len();
    let dlp = be.download(&g.dlp)[..rows_n].to_vec();
    let dent = g.dent.as_ref().map(|d| be.download(d)[..rows_n].to_vec());
    let (text_grads, vision_grads) = grads.split_at_mut(m.text.params.len());
    m.backward(
        be,
        &batch,
        pixels.as_ref(),
        acts,
        va.as_ref(),
        &targets,
        &dlp,
        dent.as_deref(),
        TokenLoss::<B>::inv_temp(&lossfn),
        text_grads,
        (!freeze_vision).then_some(vision_grads),
    )?;
    Ok(g.loss)
}
