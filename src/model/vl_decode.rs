//! Incremental decoding of a Qwen2.5-VL model with a KV cache: the decoder's `decode_step`
//! with M-RoPE. A slot's first step (its prefill) may hold images: their placeholder
//! embeddings are replaced by the vision features and its positions come from
//! `mrope_positions`, which also gives the slot's `delta`; every later token of the slot sits at
//! `index + delta` on all three axes, as transformers' `compute_3d_position_ids` continues
//! after the prompt (`cache_length + rope_deltas`).

use super::kv_cache::KvCache;
use super::mrope::{mrope_positions, MropePositions};
use super::rope_tables::mrope_angles;
use super::vision_forward::VisionPlan;
use super::vl_forward::VlModel;
use crate::backend::Backend;
use anyhow::{bail, Context, Result};

/// One slot's new tokens in a VL decode step, and the patch grids of the images they hold
/// (only in the slot's first step).
#[derive(Clone, Copy, Debug)]
pub struct VlStep<'a> {
    pub slot: usize,
    pub tokens: &'a [u32],
    pub grids: &'a [[usize; 3]],
}

impl<B: Backend> VlModel<B> {
    /// Appends each step's tokens to its slot and returns the logits `[steps.len(), vocab]`
    /// (host) of each slot's last new token. `deltas[slot]` is the slot's M-RoPE offset: set by
    /// its first step, read by the later ones. `pixels` holds the images of all steps, in order.
    /// For readers of the logits; decoding samples from [`VlModel::decode_step_logits`].
    pub fn decode_step(
        &self,
        be: &B,
        cache: &mut KvCache<B>,
        steps: &[VlStep<'_>],
        deltas: &mut [i64],
        pixels: Option<&B::Buf>,
    ) -> Result<Vec<f32>> {
        Ok(be.download(&self.decode_step_logits(be, cache, steps, deltas, pixels)?))
    }

    /// [`VlModel::decode_step`] with the logits left in a backend buffer `[steps.len() x vocab]`
    /// for the sampler on the backend (`RlOps::rl_sample`).
    pub fn decode_step_logits(
        &self,
        be: &B,
        cache: &mut KvCache<B>,
        steps: &[VlStep<'_>],
        deltas: &mut [i64],
        pixels: Option<&B::Buf>,
    ) -> Result<B::Buf> {
        for st in steps.iter().filter(|st| cache.lens.get(st.slot).is_some_and(|&n| n > 0)) {
            self.check_no_late_images(st)?;
        }
        let grids: Vec<[usize; 3]> = steps.iter().flat_map(|s| s.grids.iter().copied()).collect();
        // The tower runs before the decoder step: an error here leaves the cache untouched.
        let features = if grids.is_empty() {
            None
        } else {
            let pixels = pixels.context("the step holds images but no pixel values were given")?;
            Some(self.image_features(be, &grids, pixels)?)
        };
        self.decode_step_features(be, cache, steps, deltas, features.as_ref())
    }

    /// The vision tower's merged features (`[rows, hidden]`) of images `grids` (their patch
    /// rows in `pixels`, in order), without the activations a backward would need.
    pub fn image_features(&self, be: &B, grids: &[[usize; 3]], pixels: &B::Buf) -> Result<B::Buf> {
        let plan = VisionPlan::new(&self.vision.cfg, grids)?;
        Ok(self.vision.forward(be, pixels, &plan)?.features)
    }

    /// [`VlModel::decode_step_logits`] with the vision tower's output given: `features` holds
    /// the merged features (`[rows, hidden]`) of every image of the steps, in order (several
    /// slots prefilled with one prompt can share one tower pass, each copying its rows).
    pub fn decode_step_features(
        &self,
        be: &B,
        cache: &mut KvCache<B>,
        steps: &[VlStep<'_>],
        deltas: &mut [i64],
        features: Option<&B::Buf>,
    ) -> Result<B::Buf> {
        let c = &self.cfg;
        let hd = c.text.head_dim();
        let mut angles = Vec::new();
        let mut grids = Vec::new();
        let mut image_rows = Vec::new();
        let mut row0 = 0;
        for st in steps {
            if st.slot >= deltas.len() || st.slot >= cache.lens.len() {
                bail!("KV cache slot {} does not exist ({} slots)", st.slot, cache.lens.len());
            }
            let start = cache.lens[st.slot];
            let pos = if start == 0 {
                let p = mrope_positions(
                    st.tokens,
                    st.grids,
                    c.image_token_id,
                    c.vision.spatial_merge_size,
                )
                .with_context(|| format!("slot {}", st.slot))?;
                deltas[st.slot] = p.delta;
                p
            } else {
                self.check_no_late_images(st)?;
                let first = start as i64 + deltas[st.slot];
                let axis: Vec<u32> =
                    (0..st.tokens.len() as i64).map(|i| (first + i) as u32).collect();
                MropePositions { axes: [axis.clone(), axis.clone(), axis], delta: deltas[st.slot] }
            };
            angles.extend(mrope_angles(&pos, hd, c.text.rope_theta(), c.mrope_section));
            let mut i = 0;
            while i < st.tokens.len() {
                if st.tokens[i] != c.image_token_id {
                    i += 1;
                    continue;
                }
                let s = i;
                while i < st.tokens.len() && st.tokens[i] == c.image_token_id {
                    i += 1;
                }
                image_rows.push((row0 + s, i - s));
            }
            grids.extend_from_slice(st.grids);
            row0 += st.tokens.len();
        }
        let d = c.text.hidden_size;
        let rows: usize = image_rows.iter().map(|r| r.1).sum();
        let features = match features {
            _ if grids.is_empty() => None,
            None => bail!("the step holds images but no vision features were given"),
            Some(f) if be.len(f) < rows * d => bail!(
                "the step's {} image rows need {} feature values, {} were given",
                rows,
                rows * d,
                be.len(f)
            ),
            Some(f) => Some(f),
        };
        let inputs: Vec<(usize, &[u32])> = steps.iter().map(|s| (s.slot, s.tokens)).collect();
        self.text.decode_step_with(be, cache, &inputs, |batch, embeds| {
            batch.rope_angles = Some(angles);
            if let Some(f) = features {
                let mut at = 0;
                for &(row, len) in &image_rows {
                    be.copy(embeds, row * d, f, at * d, len * d);
                    at += len;
                }
            }
            Ok(())
        })
    }

    /// A slot's images belong to its first step (the prefill): a later step holding one is
    /// refused.
    fn check_no_late_images(&self, st: &VlStep<'_>) -> Result<()> {
        if !st.grids.is_empty() || st.tokens.contains(&self.cfg.image_token_id) {
            bail!(
                "slot {}: images can only be given in the slot's first step (its prefill)",
                st.slot
            );
        }
        Ok(())
    }
}
