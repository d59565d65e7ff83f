//! The micro-step of a Qwen2.5-VL model, shared by its SFT trainer (`train::vl_sft`) and its
//! GRPO policy (`rl::vl_policy`): a packed micro-batch with its pixel rows ([`VlMicro`]),
//! forward with per-row target log-probs, a [`TokenLoss`], and the backward through the
//! decoder and (unless frozen) the vision tower; and the AdamW step over the trained
//! parameter sets. The text path's counterpart is `train::step`.

use super::TokenLoss;
use crate::backend::Backend;
use crate::model::vl_forward::{VlBatch, VlModel};
use crate::model::vl_prompt::VlImages;
use crate::model::Acts;
use crate::optim::{AdamW, StepReport};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// A packed VL micro-batch and the pixel rows of its images (in image order; `None` when it
/// holds none).
pub struct VlMicro<B: Backend> {
    pub batch: VlBatch,
    pub pixels: Option<B::Buf>,
}

impl<B: Backend> VlMicro<B> {
    /// Packs `seqs` (ids with expanded placeholder runs, and the image files of each sequence
    /// in order) with `model.pack`, decoding and preprocessing the images with `model_dir`'s
    /// `preprocessor_config.json`. A sequence's images are decoded once per distinct list
    /// (GRPO's responses of one prompt share theirs).
    pub fn load(
        be: &B,
        model: &VlModel<B>,
        model_dir: &Path,
        seqs: &[(&[u32], &[PathBuf])],
    ) -> Result<Self> {
        let mut pixels: Vec<f32> = Vec::new();
        let mut grids: Vec<Vec<[usize; 3]>> = Vec::with_capacity(seqs.len());
        let mut seen: Vec<(&[PathBuf], VlImages)> = Vec::new();
        for &(_, paths) in seqs {
            let k = match seen.iter().position(|(p, _)| *p == paths) {
                Some(k) => k,
                None => {
                    seen.push((paths, VlImages::load(paths, model_dir, &model.cfg.vision)?));
                    seen.len() - 1
                }
            };
            pixels.extend_from_slice(&seen[k].1.pixels);
            grids.push(seen[k].1.grids.clone());
        }
        let packed: Vec<(&[u32], &[[usize; 3]])> =
            seqs.iter().zip(&grids).map(|(&(ids, _), g)| (ids, g.as_slice())).collect();
        let batch = model.pack(&packed)?;
        let pixels = (!batch.grids.is_empty()).then(|| be.upload(&pixels));
        Ok(VlMicro { batch, pixels })
    }

    /// A batch whose images were preprocessed already (`images` in the batch's image order).
    pub fn with_images(be: &B, batch: VlBatch, images: &VlImages) -> Result<Self> {
        if images.grids != batch.grids {
            bail!(
                "the images' patch grids {:?} are not the batch's {:?}",
                images.grids,
                batch.grids
            );
        }
        let pixels = (!images.grids.is_empty()).then(|| be.upload(&images.pixels));
        Ok(VlMicro { batch, pixels })
    }
}

/// Forward of `m` (activations into `acts`) and, per packed row of `rows` (the others hold
/// junk), the target's log-prob and the entropy at `inv_temp`, the head in chunks of `chunk`
/// rows. GRPO's old/reference passes give the rows and chunk of the micro-step's loss
/// (`vl_micro_step`), whose head computes the same rows in the same chunks: the first PPO
/// epoch's ratio is exactly 1.
pub fn vl_forward_logprobs<B: Backend>(
    be: &B,
    model: &VlModel<B>,
    m: &VlMicro<B>,
    rows: &[usize],
    inv_temp: f32,
    chunk: usize,
    acts: &mut Option<Acts<B>>,
) -> Result<(Vec<f32>, Vec<f32>)> {
    model.forward(be, &m.batch, m.pixels.as_ref(), acts)?;
    let a = acts.as_ref().expect("forward planned the activations");
    let (targets, _) = m.batch.packed.next_token_targets();
    let (lp, ent) = model.text.token_logprobs_of_rows_buf(be, a, &targets, rows, inv_temp, chunk);
    let t = targets.len();
    Ok((be.download(&lp)[..t].to_vec(), be.download(&ent)[..t].to_vec()))
}

/// Forward, `loss`, and backward of one micro-batch; gradients ACCUMULATE into `grads`
/// (the decoder's, then the vision tower's when `train_vision`). Returns the loss
/// contribution (`LossGrad::loss`). The head as the text step runs it
/// (`train::step::loss_and_backward`): the loss's rows only, in chunks of `chunk` rows, and in
/// one pass for a loss whose gradient is known before its log-probs when `one_pass`
/// (`Workspace::head_one_pass`); the log-probs and their gradient stay on the device.
#[allow(clippy::too_many_arguments)]
pub fn vl_micro_step<B: Backend>(
    be: &B,
    model: &VlModel<B>,
    m: &VlMicro<B>,
    loss: &mut dyn TokenLoss<B>,
    acts: &mut Option<Acts<B>>,
    grads: &mut [B::Buf],
    train_vision: bool,
    chunk: usize,
    one_pass: bool,
) -> Result<f64> {
    let inv_temp = loss.inv_temp();
    let forward = crate::nvtx_ranges::range(c"forward");
    let vision = model.forward(be, &m.batch, m.pixels.as_ref(), acts)?;
    drop(forward);
    let a = acts.as_ref().expect("forward planned the activations");
    let (targets, _) = m.batch.packed.next_token_targets();
    let (text_grads, vision_grads) = grads.split_at_mut(model.text.params.len());
    let text = &model.text;
    super::step::loss_and_backward(
        be,
        loss,
        targets.len(),
        one_pass,
        |rows| text.token_logprobs_of_rows_buf(be, a, &targets, rows, inv_temp, chunk),
        |g, out| {
            let (p, v) = (m.pixels.as_ref(), vision.as_ref());
            let vg = train_vision.then_some(vision_grads);
            model.backward_buf(
                be, &m.batch, p, a, v, &targets, g, out, inv_temp, chunk, text_grads, vg,
            )
        },
    )
}

/// Zeroed gradient accumulators in the optimizer's order: the decoder's, then the vision
/// tower's when `train_vision` (a frozen tower has none, and no optimizer state).
pub fn vl_trained_grads<B: Backend>(be: &B, model: &VlModel<B>, train_vision: bool) -> Vec<B::Buf> {
    let (mut grads, vision) = model.zero_grads(be);
    if train_vision {
        grads.extend(vision);
    }
    grads
}

/// AdamW over the trained parameters as one set (one global gradient norm): the decoder's,
/// then the tower's when `train_vision`. The buffers are moved, not copied, into one list
/// for the step and back.
pub fn vl_adamw_step<B: Backend>(
    be: &B,
    model: &mut VlModel<B>,
    opt: &mut AdamW<B>,
    grads: &[B::Buf],
    lr: f32,
    train_vision: bool,
) -> StepReport {
    let n_text = model.text.params.len();
    let mut params = std::mem::take(&mut model.text.params);
    if train_vision {
        params.append(&mut model.vision.params);
    }
    let rep = opt.step(be, &mut params, grads, lr);
    if train_vision {
        model.vision.params = params.split_off(n_text);
    }
    model.text.params = params;
    rep
}
