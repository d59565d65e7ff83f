//! What the pipeline (`run`, `sft_phase`, `rl_phase`) does with its model beyond the GRPO
//! trainer's needs (`rl::policy::Policy`): load it, evaluate it, copy it as the frozen
//! reference, checkpoint and resume it, and run the SFT phase on it. Implemented by the text
//! model (`Qwen2`, with exactly the calls the pipeline made before) and by a Qwen2.5-VL policy
//! (`VlPolicy`: `VlSftTrainer` for SFT, Qwen2.5-VL checkpoint directories).

use super::inputs::RunInputs;
use super::metrics::MetricsLog;
use super::sft_phase::SftPhase;
use crate::backend::rl_ops::RlOps;
use crate::backend::Backend;
use crate::data::rl_items::RlItem;
use crate::dist::{sync_replicas, Collective};
use crate::model::safetensors_io::SaveDtype;
use crate::model::vl_forward::VlModel;
use crate::model::Qwen2;
use crate::optim::AdamW;
use crate::rl::evaluate::{
    evaluate_vl_with_progress, evaluate_with_progress, EvalParams, EvalReport,
};
use crate::rl::policy::Policy;
use crate::rl::vl_policy::{refuse_zero, VlPolicy};
use crate::tokenizer::Tokenizer;
use crate::train::checkpoint::{
    load_checkpoint, load_checkpoint_sharded, read_trainer_state, save_checkpoint, OptState,
};
use crate::train::vl_checkpoint::{load_vl_checkpoint, save_vl_checkpoint};
use anyhow::{bail, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A model that can be evaluated on RL items (greedy or sampled, graded).
pub trait EvalModel<B: RlOps> {
    fn evaluate(
        &self,
        be: &B,
        tok: &Tokenizer,
        items: &[RlItem],
        params: &EvalParams,
        on_progress: impl FnMut(usize),
    ) -> Result<EvalReport>;
}

impl<B: RlOps> EvalModel<B> for Qwen2<B> {
    fn evaluate(
        &self,
        be: &B,
        tok: &Tokenizer,
        items: &[RlItem],
        params: &EvalParams,
        on_progress: impl FnMut(usize),
    ) -> Result<EvalReport> {
        evaluate_with_progress(self, be, tok, items, params, on_progress)
    }
}

/// A Qwen2.5-VL model and the directory of its `preprocessor_config.json`, as evaluated.
pub struct VlEval<'a, B: Backend>(pub &'a VlModel<B>, pub &'a Path);

impl<B: RlOps> EvalModel<B> for VlEval<'_, B> {
    fn evaluate(
        &self,
        be: &B,
        tok: &Tokenizer,
        items: &[RlItem],
        params: &EvalParams,
        on_progress: impl FnMut(usize),
    ) -> Result<EvalReport> {
        evaluate_vl_with_progress(self.0, self.1, be, tok, items, params, on_progress)
    }
}

impl<B: RlOps> EvalModel<B> for VlPolicy<B> {
    fn evaluate(
        &self,
        be: &B,
        tok: &Tokenizer,
        items: &[RlItem],
        params: &EvalParams,
        on_progress: impl FnMut(usize),
    ) -> Result<EvalReport> {
        VlEval(&self.model, &self.dir).evaluate(be, tok, items, params, on_progress)
    }
}

/// The pipeline's model (see the module doc).
pub trait RunPolicy<B: RlOps>: Policy<B> + EvalModel<B> + Sized {
    /// The run's starting model, `inputs.cfg.model.dir`.
    fn load_start(be: &B, inputs: &RunInputs) -> Result<Self>;

    /// A copy of the weights (the frozen reference policy of the KL term).
    fn frozen_copy(&self, be: &B) -> Self;

    /// Rank 0's weights and optimizer state on every rank of a data-parallel run.
    fn sync_replicas(&mut self, be: &B, comm: &dyn Collective<B>, opt: &mut AdamW<B>)
        -> Result<()>;

    /// Saves `out/checkpoint-{step}` (model files, optimizer, `state`) and moves `out/latest`.
    #[allow(clippy::too_many_arguments)]
    fn save_checkpoint<S: Serialize>(
        &self,
        be: &B,
        out: &Path,
        step: u64,
        opt: OptState<'_, B>,
        state: &S,
        dtype: SaveDtype,
        inputs: &RunInputs,
    ) -> Result<PathBuf>;

    /// The model, optimizer and trainer state of a checkpoint written by
    /// [`RunPolicy::save_checkpoint`]; the optimizer this rank's block of it under ZeRO
    /// (`dist.zero`).
    fn load_checkpoint<S: DeserializeOwned>(
        be: &B,
        ck: &Path,
        inputs: &RunInputs,
        comm: &dyn Collective<B>,
    ) -> Result<(Self, AdamW<B>, S)>;

    /// The reference policy: a checkpoint (its f32 master weights when present) or a model
    /// directory.
    fn load_reference(be: &B, dir: &Path, inputs: &RunInputs) -> Result<Self>;

    /// The cold-start SFT phase from `self` (or from checkpoint `ck`) to its end; returns the
    /// trained model and the phase's last step.
    fn run_sft(
        self,
        phase: &SftPhase<'_, B>,
        ck: Option<&Path>,
        log: &mut MetricsLog,
    ) -> Result<(Self, u64)>;
}

impl<B: RlOps> RunPolicy<B> for Qwen2<B> {
    fn load_start(be: &B, inputs: &RunInputs) -> Result<Self> {
        Qwen2::load(be, &inputs.cfg.model.dir)
    }

    fn frozen_copy(&self, be: &B) -> Self {
        Qwen2::from_host(be, self.cfg.clone(), self.layout.clone(), &self.to_host(be))
    }

    fn sync_replicas(
        &mut self,
        be: &B,
        comm: &dyn Collective<B>,
        opt: &mut AdamW<B>,
    ) -> Result<()> {
        sync_replicas(be, comm, self, opt)
    }

    fn save_checkpoint<S: Serialize>(
        &self,
        be: &B,
        out: &Path,
        step: u64,
        opt: OptState<'_, B>,
        state: &S,
        dtype: SaveDtype,
        inputs: &RunInputs,
    ) -> Result<PathBuf> {
        save_checkpoint(be, out, step, self, opt, state, dtype, Some(&inputs.tokenizer_path))
    }

    fn load_checkpoint<S: DeserializeOwned>(
        be: &B,
        ck: &Path,
        inputs: &RunInputs,
        comm: &dyn Collective<B>,
    ) -> Result<(Self, AdamW<B>, S)> {
        let l = load_checkpoint_sharded::<B, S>(be, ck, comm, inputs.cfg.dist.zero)?;
        Ok((l.model, l.opt, l.state))
    }

    fn load_reference(be: &B, dir: &Path, _inputs: &RunInputs) -> Result<Self> {
        if dir.join("trainer_state.json").exists() {
            Ok(load_checkpoint::<B, serde_json::Value>(be, dir)?.model)
        } else {
            Qwen2::load(be, dir)
        }
    }

    fn run_sft(
        self,
        phase: &SftPhase<'_, B>,
        ck: Option<&Path>,
        log: &mut MetricsLog,
    ) -> Result<(Self, u64)> {
        let tr = phase.run(self, ck, log)?;
        Ok((tr.model, tr.state.step))
    }
}

impl<B: RlOps> RunPolicy<B> for VlPolicy<B> {
    fn load_start(be: &B, inputs: &RunInputs) -> Result<Self> {
        let dir = &inputs.cfg.model.dir;
        let p = VlPolicy::load(be, dir, inputs.cfg.model.freeze_vision)?;
        Ok(p.with_item_images(inputs.rl_images.clone()))
    }

    fn frozen_copy(&self, be: &B) -> Self {
        self.copy(be)
    }

    fn sync_replicas(
        &mut self,
        _be: &B,
        comm: &dyn Collective<B>,
        _opt: &mut AdamW<B>,
    ) -> Result<()> {
        if comm.world() > 1 {
            bail!("data-parallel training of a Qwen2.5-VL model is not supported yet: run `train` in one process (without mpirun, or with -np 1)");
        }
        Ok(())
    }

    fn save_checkpoint<S: Serialize>(
        &self,
        be: &B,
        out: &Path,
        step: u64,
        opt: OptState<'_, B>,
        state: &S,
        dtype: SaveDtype,
        _inputs: &RunInputs,
    ) -> Result<PathBuf> {
        let OptState::Device(opt) = opt else {
            bail!("a Qwen2.5-VL run's optimizer state is never sharded (dist.zero = 0)");
        };
        let (m, freeze) = (&self.model, self.freeze_vision);
        save_vl_checkpoint(be, m, &self.dir, freeze, out, step, opt, state, dtype)
    }

    fn load_checkpoint<S: DeserializeOwned>(
        be: &B,
        ck: &Path,
        inputs: &RunInputs,
        _comm: &dyn Collective<B>,
    ) -> Result<(Self, AdamW<B>, S)> {
        refuse_zero(inputs.cfg.dist.zero)?;
        // What the optimizer state covers is the run's setting (a resume cannot change it).
        let freeze = inputs.cfg.model.freeze_vision;
        let state = read_trainer_state(ck)?;
        let (model, opt) = load_vl_checkpoint(be, ck, freeze)?;
        // The processor and tokenizer files stay those of the run's model directory.
        let p = VlPolicy::new(model, &inputs.cfg.model.dir, freeze);
        Ok((p.with_item_images(inputs.rl_images.clone()), opt, state))
    }

    fn load_reference(be: &B, dir: &Path, inputs: &RunInputs) -> Result<Self> {
        let freeze = inputs.cfg.model.freeze_vision;
        let model = if dir.join("trainer_state.json").exists() {
            load_vl_checkpoint(be, dir, freeze)?.0
        } else {
            VlModel::load(be, dir)?
        };
        let p = VlPolicy::new(model, &inputs.cfg.model.dir, freeze);
        Ok(p.with_item_images(inputs.rl_images.clone()))
    }

    fn run_sft(
        self,
        phase: &SftPhase<'_, B>,
        ck: Option<&Path>,
        log: &mut MetricsLog,
    ) -> Result<(Self, u64)> {
        let (dir, images) = (self.dir.clone(), self.item_images.clone());
        let tr = phase.run_vl(self.model, ck, log)?;
        let step = tr.state.step;
        let p = VlPolicy::new(tr.model, &dir, tr.freeze_vision);
        Ok((p.with_item_images(images), step))
    }
}
