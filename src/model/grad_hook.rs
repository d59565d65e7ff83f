//! What the backward tells its caller as it goes: which parameter gradients a micro-batch's
//! backward has finished with. ZeRO stage 2 (`dist::buckets`) reduce-scatters those tensors
//! at once and releases their buffers, so the whole f32 gradient never exists on a device;
//! the model knows nothing of ranks or collectives, only the order in which it finishes.
//!
//! The order (`ParamLayout::backward_buckets`), each bucket as soon as the backward is done
//! with it:
//! - untied output head: the HEAD bucket (`lm_head`, final norm) after the final norm's
//!   backward; the decoder layers from the last to the first; the embedding table after the
//!   embedding backward;
//! - tied (the head IS the embedding table, touched first and last): the layers from the last
//!   to the first, then the END bucket (embedding table, final norm) after the embedding
//!   backward, so its gradient is live during the whole backward.
//!
//! A released gradient buffer (length 0, as the hook or ZeRO-2 leaves it) is a zero gradient:
//! the backward allocates it again, zeroed, just before it first accumulates into it
//! (`Qwen2::ready_grads`).

use super::params::ParamLayout;
use crate::backend::Backend;
use anyhow::Result;

/// Receives the backward's finished gradients, bucket by bucket, in the order of
/// [`ParamLayout::backward_buckets`].
pub trait GradHook<B: Backend> {
    /// The backward of the current micro-batch will not touch the gradients of parameters
    /// `tensors` (indices in layout order, ascending) again: the hook may read them, reduce
    /// them, and release them (replace the buffers by empty ones).
    fn finished(&mut self, be: &B, tensors: &[usize], grads: &mut [B::Buf]) -> Result<()>;
}

impl ParamLayout {
    /// The buckets a backward reports to a [`GradHook`], in its order (module comment): with
    /// an untied head `[lm_head, final norm]`, the layers from the last, `[embedding]`; tied,
    /// the layers from the last, then `[embedding, final norm]`. Every parameter is in
    /// exactly one bucket; indices ascending within a bucket.
    pub fn backward_buckets(&self) -> Vec<Vec<usize>> {
        let layers = self.layers.iter().rev().map(|w| w.tensors());
        match self.lm_head {
            Some(h) => std::iter::once(vec![self.final_norm, h])
                .chain(layers)
                .chain(std::iter::once(vec![self.embed]))
                .collect(),
            None => layers.chain(std::iter::once(vec![self.embed, self.final_norm])).collect(),
        }
    }

    /// Gradient values a bucketed backward holds at its peak (besides the rank's block): the
    /// largest bucket when the head is untied (each bucket is released before the next is
    /// allocated); tied, the end bucket is live from the head's backward to the end, so it
    /// plus the largest layer.
    pub fn bucketed_grad_peak(&self) -> usize {
        let n = |i: usize| self.specs[i].numel();
        let layer = self.layers.iter().map(|w| w.tensors().into_iter().map(n).sum()).max();
        let layer = layer.unwrap_or(0);
        match self.lm_head {
            Some(h) => (n(h) + n(self.final_norm)).max(layer).max(n(self.embed)),
            None => n(self.embed) + n(self.final_norm) + layer,
        }
    }
}

impl super::params::LayerIdx {
    /// This layer's parameter indices, ascending.
    pub fn tensors(&self) -> Vec<usize> {
        let mut v = vec![
            self.input_norm,
            self.q_w,
            self.q_b,
            self.k_w,
            self.k_b,
            self.v_w,
            self.v_b,
            self.o_w,
            self.post_norm,
            self.gate_w,
            self.up_w,
            self.down_w,
        ];
        v.sort_unstable();
        v
    }
}

impl<B: Backend> super::Qwen2<B> {
    /// Allocates, zeroed, every gradient of `tensors` that was released (its buffer is not
    /// the parameter's size): a released gradient is a zero gradient.
    pub(crate) fn ready_grads(&self, be: &B, tensors: &[usize], grads: &mut [B::Buf]) {
        for &i in tensors {
            let n = self.layout.specs[i].numel();
            if be.len(&grads[i]) != n {
                grads[i] = be.zeros(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::GradHook;
    use crate::backend::cpu::Cpu;
    use crate::backend::Backend;
    use crate::model::init::{init_params, Init};
    use crate::model::{ParamLayout, Qwen2};
    use crate::train::{micro_step, micro_step_hooked, LossBatch, SftLoss, Workspace};
    use anyhow::Result;

    /// Copies each finished bucket, releases it, and counts the live gradient values.
    struct Recorder {
        seen: Vec<Vec<usize>>,
        grads: Vec<Vec<f32>>,
        peak: usize,
    }

    impl GradHook<Cpu> for Recorder {
        fn finished(&mut self, be: &Cpu, tensors: &[usize], grads: &mut [Vec<f32>]) -> Result<()> {
            self.peak = self.peak.max(grads.iter().map(|g| be.len(g)).sum());
            for &t in tensors {
                // Two micro-batches: the second adds to the first's released copy.
                let g = std::mem::take(&mut grads[t]);
                if self.grads[t].is_empty() {
                    self.grads[t] = g;
                } else {
                    self.grads[t].iter_mut().zip(&g).for_each(|(a, b)| *a += b);
                }
            }
            self.seen.push(tensors.to_vec());
            Ok(())
        }
    }

    #[test]
    fn buckets_cover_every_parameter_once_in_backward_order() {
        for tie in [true, false] {
            let mut cfg = crate::data::demo::demo_config(40);
            cfg.tie_word_embeddings = tie;
            let lay = ParamLayout::new(&cfg);
            let b = lay.backward_buckets();
            assert_eq!(b.len(), cfg.num_hidden_layers + 1 + usize::from(!tie));
            let last_layer = lay.layers[cfg.num_hidden_layers - 1].tensors();
            assert_eq!(b[usize::from(!tie)], last_layer, "the last layer comes first");
            let mut all: Vec<usize> = b.concat();
            all.sort_unstable();
            assert_eq!(all, (0..lay.specs.len()).collect::<Vec<_>>());
            assert!(b.iter().all(|k| k.windows(2).all(|w| w[0] < w[1])), "ascending");
        }
    }

    /// A hooked backward reports the buckets in `backward_buckets` order, each holding its
    /// FINAL gradient (the unhooked backward's bits, over two micro-batches whose second
    /// finds every buffer released), and holds at most `bucketed_grad_peak` values at once.
    #[test]
    fn hooked_backward_reports_final_gradients_bucket_by_bucket() {
        for tie in [true, false] {
            let mut cfg = crate::data::demo::demo_config(40);
            cfg.tie_word_embeddings = tie;
            let lay = ParamLayout::new(&cfg);
            let host = init_params(&lay, Init::HuggingFace { std: 0.2 }, 7);
            let model = Qwen2::from_host(&Cpu, cfg, lay.clone(), &host);
            let seqs = [vec![3u32, 9, 14, 2, 30, 7, 7], vec![5, 1, 22, 38, 11]];
            let step = |ws: &mut Workspace<Cpu>, hook: Option<&mut dyn GradHook<Cpu>>, k: usize| {
                let lb = LossBatch::pack(&seqs[k..k + 1], |_, pos| pos >= 2);
                let mut loss = SftLoss::new(&lb.row_mask(), 9);
                micro_step_hooked(&Cpu, &model, &lb.batch, &mut loss, ws, hook).unwrap();
            };
            let mut want = Workspace::new(&model, &Cpu);
            for k in 0..2 {
                let lb = LossBatch::pack(&seqs[k..k + 1], |_, pos| pos >= 2);
                let mut loss = SftLoss::new(&lb.row_mask(), 9);
                micro_step(&Cpu, &model, &lb.batch, &mut loss, &mut want).unwrap();
            }
            let mut ws = Workspace::new(&model, &Cpu);
            ws.release_grads(&Cpu);
            let mut rec = Recorder { seen: vec![], grads: vec![vec![]; lay.specs.len()], peak: 0 };
            for k in 0..2 {
                step(&mut ws, Some(&mut rec), k);
                assert!(ws.grads.iter().all(|g| g.is_empty()), "every bucket was released");
            }
            let order = lay.backward_buckets();
            assert_eq!(rec.seen, [order.clone(), order].concat(), "tie {tie}");
            assert_eq!(rec.peak, lay.bucketed_grad_peak(), "tie {tie}: live values at the peak");
            assert!(rec.peak < lay.numel());
            for (t, (a, b)) in rec.grads.iter().zip(&want.grads).enumerate() {
                // (a0 + a1) here, the GEMM's own accumulation there: equal to rounding.
                let err = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                let mag = b.iter().map(|x| x.abs()).fold(0f32, f32::max);
                assert!(err <= 1e-5 * mag.max(1e-30), "tie {tie}: tensor {t}: {err} of {mag}");
                assert!(mag > 0.0, "tie {tie}: tensor {t} has a gradient");
            }
        }
    }
}
