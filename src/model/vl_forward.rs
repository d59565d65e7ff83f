//! A Qwen2.5-VL model on a backend: the vision tower and the Qwen2 decoder, and the forward
//! pass of packed sequences holding images, as transformers' `Qwen2_5_VLModel.forward`
//! computes it: the token embeddings of the image placeholders are replaced, in order, by the
//! merged vision features (`masked_scatter`), and the decoder rotates by M-RoPE
//! (`mrope::mrope_positions`, `rope_tables::mrope_angles`) instead of 1D positions.

use super::backward::UploadedGrads;
use super::forward::{Acts, Packed};
use super::mrope::mrope_positions;
use super::rope_tables::mrope_angles;
use super::vision_config::Qwen2VlConfig;
use super::vision_forward::{VisionActs, VisionPlan, VisionTower};
use super::vl::VlHost;
use super::Qwen2;
use crate::backend::chunked_logprob::{RowGrads, RowLogprobs};
use crate::backend::{AttnSpan, Backend};
use anyhow::{Context, Result};
use std::path::Path;

pub struct VlModel<B: Backend> {
    pub cfg: Qwen2VlConfig,
    pub text: Qwen2<B>,
    pub vision: VisionTower<B>,
}

/// Packed sequences with images: the decoder's batch (with its M-RoPE angles), the patch grids
/// of all images in order, and where their placeholder runs sit (packed row, length).
#[derive(Clone, Debug)]
pub struct VlBatch {
    pub packed: Packed,
    pub grids: Vec<[usize; 3]>,
    pub image_rows: Vec<(usize, usize)>,
}

impl<B: Backend> VlModel<B> {
    /// Loads a `Qwen2_5_VLForConditionalGeneration` directory (either config layout) onto `be`.
    pub fn load(be: &B, dir: &Path) -> Result<Self> {
        let h = VlHost::load(dir)?;
        Ok(VlModel {
            text: Qwen2::from_host_vecs(be, h.cfg.text.clone(), h.text_layout, h.text),
            vision: VisionTower::from_host(be, h.cfg.vision.clone(), h.vision_layout, &h.vision),
            cfg: h.cfg,
        })
    }

    /// Packs `(ids, grids of that sequence's images)` back to back. Every maximal run of
    /// `image_token_id` is one image and must be exactly as long as its merged patch count;
    /// errors name the sequence and the image.
    pub fn pack(&self, seqs: &[(&[u32], &[[usize; 3]])]) -> Result<VlBatch> {
        let c = &self.cfg;
        let hd = c.text.head_dim();
        let mut packed = Packed { rope_angles: Some(Vec::new()), ..Packed::default() };
        let (mut grids, mut image_rows) = (Vec::new(), Vec::new());
        for (si, &(ids, g)) in seqs.iter().enumerate() {
            self.text.check_ids(ids).with_context(|| format!("sequence {si}"))?;
            let pos = mrope_positions(ids, g, c.image_token_id, c.vision.spatial_merge_size)
                .with_context(|| format!("sequence {si}"))?;
            let start = packed.ids.len();
            let angles = mrope_angles(&pos, hd, c.text.rope_theta(), c.mrope_section);
            packed.rope_angles.as_mut().expect("set above").extend(angles);
            packed.ids.extend_from_slice(ids);
            packed.positions.extend(0..ids.len() as u32);
            packed.spans.push(AttnSpan {
                q_start: start,
                q_len: ids.len(),
                kv_start: start,
                kv_len: ids.len(),
            });
            let mut i = 0;
            while i < ids.len() {
                if ids[i] != c.image_token_id {
                    i += 1;
                    continue;
                }
                let s = i;
                while i < ids.len() && ids[i] == c.image_token_id {
                    i += 1;
                }
                image_rows.push((start + s, i - s));
            }
            grids.extend_from_slice(g);
        }
        Ok(VlBatch { packed, grids, image_rows })
    }

    /// The vision tower on `pixels` (all images of the batch, in order, `[patches, patch_dim]`),
    /// then the decoder with the features in place of the image placeholders. The decoder's
    /// activations go to `acts` (re-planned when the token count changes); the vision tower's
    /// are returned (`None` for a batch without images).
    pub fn forward(
        &self,
        be: &B,
        batch: &VlBatch,
        pixels: Option<&B::Buf>,
        acts: &mut Option<Acts<B>>,
    ) -> Result<Option<VisionActs<B>>> {
        let t = batch.packed.tokens();
        let d = self.cfg.text.hidden_size;
        self.cfg.text.check_window(batch.packed.spans.iter().map(|s| s.kv_len))?;
        if acts.as_ref().map(|a| a.t) != Some(t) {
            *acts = Some(self.text.alloc_acts(be, t));
        }
        let a = acts.as_mut().expect("planned above");
        be.embedding(
            &mut a.resid[0],
            &self.text.params[self.text.layout.embed],
            &batch.packed.ids,
            d,
        );
        let vision = if batch.grids.is_empty() {
            None
        } else {
            let pixels = pixels.context("the batch holds images but no pixel values were given")?;
            let plan = VisionPlan::new(&self.vision.cfg, &batch.grids)?;
            let va = self.vision.forward(be, pixels, &plan)?;
            // Image features in image order fill the placeholder runs in sequence order.
            let mut f = 0;
            for &(row, len) in &batch.image_rows {
                be.copy(&mut a.resid[0], row * d, &va.features, f * d, len * d);
                f += len;
            }
            Some(va)
        };
        self.text.run_layers(be, &batch.packed, a, None);
        Ok(vision)
    }
}

impl<B: Backend> VlModel<B> {
    /// Zeroed gradients: (decoder, vision tower), each in its layout order.
    pub fn zero_grads(&self, be: &B) -> (Vec<B::Buf>, Vec<B::Buf>) {
        (self.text.zero_grads(be), self.vision.zero_grads(be))
    }

    /// Accumulates the gradients of a loss with d(loss)/d(target log-prob of row) = `dlp[row]`
    /// (and optionally d/d(entropy) `dent`), as `Qwen2::backward` defines them, through the
    /// decoder and, via the image rows of the input embeddings, through the vision tower
    /// (`vision_grads`; `None` keeps the tower frozen and skips its backward). The embedding
    /// table gets nothing from image rows: transformers overwrites them (`masked_scatter`).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        be: &B,
        batch: &VlBatch,
        pixels: Option<&B::Buf>,
        acts: &Acts<B>,
        vision_acts: Option<&VisionActs<B>>,
        targets: &[u32],
        dlp: &[f32],
        dent: Option<&[f32]>,
        inv_temp: f32,
        text_grads: &mut [B::Buf],
        vision_grads: Option<&mut [B::Buf]>,
    ) -> Result<()> {
        let up = UploadedGrads::new(be, batch.packed.tokens(), dlp, dent);
        let chunk = self.text.logit_chunk_rows();
        let g = up.row_grads();
        self.backward_buf(
            be,
            batch,
            pixels,
            acts,
            vision_acts,
            targets,
            g,
            None,
            inv_temp,
            chunk,
            text_grads,
            vision_grads,
        )
    }

    /// [`VlModel::backward`] with the upstream gradient in backend buffers (`g.rows`: the rows
    /// it may be non-zero on), the head run in chunks of `chunk` rows and, with `lp_out`,
    /// writing the log-probs of `g.rows` (`Qwen2::backward_hooked`).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_buf(
        &self,
        be: &B,
        batch: &VlBatch,
        pixels: Option<&B::Buf>,
        acts: &Acts<B>,
        vision_acts: Option<&VisionActs<B>>,
        targets: &[u32],
        g: RowGrads<'_, B>,
        lp_out: Option<RowLogprobs<'_, B>>,
        inv_temp: f32,
        chunk: usize,
        text_grads: &mut [B::Buf],
        vision_grads: Option<&mut [B::Buf]>,
    ) -> Result<()> {
        let mut scratch = None;
        self.text.backward_to_embeddings_buf(
            be,
            &batch.packed,
            acts,
            targets,
            g,
            lp_out,
            inv_temp,
            chunk,
            text_grads,
            &mut scratch,
        );
        // The input embeddings' gradient: image rows to the vision tower, token rows to the
        // embedding table.
        let d = self.cfg.text.hidden_size;
        let p = &batch.packed;
        let s = scratch.as_mut().expect("planned by backward_to_embeddings");
        let n_img: usize = batch.image_rows.iter().map(|r| r.1).sum();
        let mut dfeat = be.zeros(n_img * d);
        let zeros = be.zeros(batch.image_rows.iter().map(|r| r.1).max().unwrap_or(0) * d);
        let mut f = 0;
        for &(row, len) in &batch.image_rows {
            be.copy(&mut dfeat, f * d, s.dembed(), row * d, len * d);
            be.copy(s.dembed_mut(), row * d, &zeros, 0, len * d);
            f += len;
        }
        let embed = self.text.layout.embed;
        be.embedding_backward(&mut text_grads[embed], s.dembed(), &p.ids, d);
        if let Some(vg) = vision_grads {
            if n_img > 0 {
                let va = vision_acts.context("vision backward needs the forward's VisionActs")?;
                let pixels = pixels.context("vision backward needs the pixel values")?;
                let plan = VisionPlan::new(&self.vision.cfg, &batch.grids)?;
                self.vision.backward(be, pixels, &plan, va, &dfeat, vg);
            }
        }
        Ok(())
    }
}
