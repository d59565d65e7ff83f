//! A Qwen2.5-VL model as a GRPO policy (`rl::policy::Policy`): each sequence belongs to an RL
//! item, whose image files ([`VlPolicy::item_images`]) are decoded and preprocessed (with the
//! checkpoint's `preprocessor_config.json`) when a rollout or a micro-batch needs them; rollouts decode
//! through the VL KV cache (`rl::vl_rollout`), micro-batches pack with `VlModel::pack` and run
//! the VL forward / backward (`train::vl_step`, the SFT trainer's micro-step). With
//! `freeze_vision` the tower gets no backward and no optimizer state.

use super::decode_scheduler::Rollouts;
use super::policy::Policy;
use super::rollout::{mix_seed, SamplingParams};
use super::vl_rollout::generate_vl_scheduled;
use crate::backend::rl_ops::RlOps;
use crate::backend::Backend;
use crate::dist::Collective;
use crate::model::vision_forward::VisionTower;
use crate::model::vl_forward::VlModel;
use crate::model::vl_prompt::VlImages;
use crate::model::{GradHook, Qwen2};
use crate::optim::{AdamW, AdamwConfig, StepReport};
use crate::tokenizer::Tokenizer;
use crate::train::vl_step::{
    vl_adamw_step, vl_forward_logprobs, vl_micro_step, vl_trained_grads, VlMicro,
};
use crate::train::{LossBatch, TokenLoss, Workspace};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct VlPolicy<B: Backend> {
    pub model: VlModel<B>,
    /// The directory whose `preprocessor_config.json` makes the pixels and whose processor
    /// and tokenizer files go with every save (the starting checkpoint).
    pub dir: PathBuf,
    /// The vision tower (merger included) is not trained.
    pub freeze_vision: bool,
    /// The image files of every RL item (resolved paths; empty for a text-only item), shared
    /// with the reference policy.
    pub item_images: Arc<Vec<Vec<PathBuf>>>,
}

impl<B: Backend> VlPolicy<B> {
    pub fn load(be: &B, dir: &Path, freeze_vision: bool) -> Result<Self> {
        let model = VlModel::load(be, dir)?;
        Ok(VlPolicy::new(model, dir, freeze_vision))
    }

    /// The policy of `model`, whose processor files are in `dir`, with no item images yet
    /// (see [`VlPolicy::with_item_images`]).
    pub fn new(model: VlModel<B>, dir: &Path, freeze_vision: bool) -> Self {
        let item_images = Arc::new(vec![]);
        VlPolicy { model, dir: dir.to_path_buf(), freeze_vision, item_images }
    }

    /// The policy reading RL item `i`'s images from `images[i]`.
    pub fn with_item_images(mut self, images: Arc<Vec<Vec<PathBuf>>>) -> Self {
        self.item_images = images;
        self
    }

    /// The image files of RL item `item`.
    fn images_of(&self, item: usize) -> Result<&[PathBuf]> {
        match self.item_images.get(item) {
            Some(v) => Ok(v),
            None => bail!(
                "RL item {item} has no image list ({} items known to the policy)",
                self.item_images.len()
            ),
        }
    }

    /// A copy of the weights on the same backend (the frozen reference policy).
    pub fn copy(&self, be: &B) -> Self {
        let m = &self.model;
        let text = m.text.to_host(be);
        let vision: Vec<Vec<f32>> = m.vision.params.iter().map(|p| be.download(p)).collect();
        VlPolicy {
            model: VlModel {
                cfg: m.cfg.clone(),
                text: Qwen2::from_host(be, m.text.cfg.clone(), m.text.layout.clone(), &text),
                vision: VisionTower::from_host(
                    be,
                    m.vision.cfg.clone(),
                    m.vision.layout.clone(),
                    &vision,
                ),
            },
            dir: self.dir.clone(),
            freeze_vision: self.freeze_vision,
            item_images: self.item_images.clone(),
        }
    }
}

impl<B: RlOps> Policy<B> for VlPolicy<B> {
    type Micro = VlMicro<B>;

    fn text(&self) -> &Qwen2<B> {
        &self.model.text
    }

    fn workspace(&self, be: &B) -> Workspace<B> {
        let grads = vl_trained_grads(be, &self.model, !self.freeze_vision);
        Workspace::with_grads(be, grads, self.model.text.logit_chunk_rows())
    }

    fn new_optimizer(
        &self,
        be: &B,
        _comm: &dyn Collective<B>,
        cfg: AdamwConfig,
        zero: u8,
    ) -> Result<AdamW<B>> {
        refuse_zero(zero)?;
        // Moments shaped like the trained parameters (their gradients have their shapes).
        Ok(AdamW::new(be, &vl_trained_grads(be, &self.model, !self.freeze_vision), cfg))
    }

    fn roll_out(
        &self,
        be: &B,
        _tok: &Tokenizer,
        prompts: &[Vec<u32>],
        items: &[usize],
        group: usize,
        sampling: &SamplingParams,
        seed: u64,
        first: usize,
        mut on_token: impl FnMut(usize),
    ) -> Result<Rollouts> {
        if items.len() != prompts.len() {
            bail!("{} prompts but {} items", prompts.len(), items.len());
        }
        let mut imgs = Vec::with_capacity(items.len());
        for &item in items {
            let paths = self.images_of(item)?;
            let im = VlImages::load(paths, &self.dir, &self.model.cfg.vision)
                .with_context(|| format!("RL item {item}"))?;
            imgs.push(im);
        }
        let batch: Vec<(&[u32], &VlImages)> =
            prompts.iter().zip(&imgs).map(|(p, im)| (p.as_slice(), im)).collect();
        // generate_at's rule: response g of batch prompt k has seed (k * G + g).
        let seeds: Vec<u64> = (0..prompts.len() * group)
            .map(|s| mix_seed(seed, (first * group + s) as u64))
            .collect();
        let out = generate_vl_scheduled(&self.model, be, &batch, group, sampling, &seeds)?;
        for (s, r) in out.rollouts.iter().enumerate() {
            for _ in 0..r.tokens.len() {
                on_token(s);
            }
        }
        Ok(out)
    }

    fn pack(
        &self,
        be: &B,
        seqs: &[Vec<u32>],
        items: &[usize],
        trained: impl Fn(usize, usize) -> bool,
    ) -> Result<(VlMicro<B>, Vec<usize>)> {
        // The VL batch lays the sequences back to back as `Packed::new` does, so the text
        // path's rows are this batch's rows.
        let rows = LossBatch::pack(seqs, trained).rows;
        let parts: Vec<(&[u32], &[PathBuf])> = seqs
            .iter()
            .zip(items)
            .map(|(s, &i)| Ok((s.as_slice(), self.images_of(i)?)))
            .collect::<Result<_>>()?;
        Ok((VlMicro::load(be, &self.model, &self.dir, &parts)?, rows))
    }

    fn forward_logprobs(
        &self,
        be: &B,
        m: &VlMicro<B>,
        rows: &[usize],
        inv_temp: f32,
        ws: &mut Workspace<B>,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let chunk = ws.logit_chunk;
        vl_forward_logprobs(be, &self.model, m, rows, inv_temp, chunk, &mut ws.acts)
    }

    fn micro_step(
        &self,
        be: &B,
        m: &VlMicro<B>,
        loss: &mut dyn TokenLoss<B>,
        ws: &mut Workspace<B>,
        hook: Option<&mut dyn GradHook<B>>,
    ) -> Result<f64> {
        if hook.is_some() {
            // Bucketed ZeRO-2 is text-only, as every ZeRO stage.
            return Err(refuse_zero(2).expect_err("stage 2 is refused"));
        }
        let train_vision = !self.freeze_vision;
        let (chunk, one_pass) = (ws.logit_chunk, ws.head_one_pass);
        let (acts, grads) = (&mut ws.acts, &mut ws.grads);
        vl_micro_step(be, &self.model, m, loss, acts, grads, train_vision, chunk, one_pass)
    }

    fn optimizer_step(
        &mut self,
        be: &B,
        comm: &dyn Collective<B>,
        opt: &mut AdamW<B>,
        grads: &mut [B::Buf],
        lr: f32,
    ) -> Result<StepReport> {
        comm.all_reduce_sum(be, grads)?;
        Ok(vl_adamw_step(be, &mut self.model, opt, grads, lr, !self.freeze_vision))
    }

    fn optimizer_step_block(
        &mut self,
        _be: &B,
        _comm: &dyn Collective<B>,
        _opt: &mut AdamW<B>,
        _block: B::Buf,
        _lr: f32,
    ) -> Result<StepReport> {
        Err(refuse_zero(2).expect_err("stage 2 is refused"))
    }
}

/// ZeRO sharding (`dist.zero` 1 or 2) is built for text models: a Qwen2.5-VL run is one
/// process with its optimizer state whole.
pub fn refuse_zero(zero: u8) -> Result<()> {
    ensure!(
        zero == 0,
        "dist.zero = {zero}: ZeRO sharding is built for text models; a Qwen2.5-VL run is one \
         process with its optimizer state whole (set dist.zero = 0)"
    );
    Ok(())
}
