//! What the backward tells its caller as it goes: which parameter gradients a micro-batch's
//! backward has finished with. ZeRO stage 2 (`dist::buckets`) reduce-scatters those tensors
//! at once and releases their buffers, so the whole f32 gradient never exists on a device;
//! the model knows nothing of ranks or collectives, only the order in which it finishes.
//!
//! The order (`ParamLayout::backward_buckets`): decoder layers from the last to the first,
//! each as soon as its layer backward is done, then one END bucket with the tensors the
//! backward touches first and last (the output head, which is the embedding table when tied,
//! the final norm, and the embedding table), after the embedding backward.
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
    /// The buckets a backward reports to a [`GradHook`], in its order: each decoder layer's
    /// tensors from the last layer to the first, then the end bucket (embedding, final norm,
    /// `lm_head` when untied). Every parameter is in exactly one bucket.
    pub fn backward_buckets(&self) -> Vec<Vec<usize>> {
        let mut out: Vec<Vec<usize>> = self.layers.iter().rev().map(|w| w.tensors()).collect();
        let mut end = vec![self.embed, self.final_norm];
        end.extend(self.lm_head);
        end.sort_unstable();
        out.push(end);
        out
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
    use crate::model::ParamLayout;

    #[test]
    fn buckets_cover_every_parameter_once_in_backward_order() {
        for tie in [true, false] {
            let mut cfg = crate::data::demo::demo_config(40);
            cfg.tie_word_embeddings = tie;
            let lay = ParamLayout::new(&cfg);
            let b = lay.backward_buckets();
            assert_eq!(b.len(), cfg.num_hidden_layers + 1);
            assert_eq!(b[0], lay.layers[cfg.num_hidden_layers - 1].tensors(), "last layer first");
            let mut all: Vec<usize> = b.concat();
            all.sort_unstable();
            assert_eq!(all, (0..lay.specs.len()).collect::<Vec<_>>());
            assert!(b.last().unwrap().contains(&lay.head()));
        }
    }
}
