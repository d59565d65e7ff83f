//! One AdamW step in `torch.optim.AdamW`'s order (decoupled weight decay, Loshchilov & Hutter
//! 2019): the gradient times `grad_scale` (the clip factor), the decay, the moments, then the
//! bias-corrected update, formed in f64.

use crate::AdamwStep;
use rayon::prelude::*;

pub fn adamw(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], hp: AdamwStep) {
    let bc1 = 1.0 - (hp.beta1 as f64).powi(hp.step as i32);
    let bc2 = 1.0 - (hp.beta2 as f64).powi(hp.step as i32);
    p.par_iter_mut().zip(g.par_iter()).zip(m.par_iter_mut().zip(v.par_iter_mut())).for_each(
        |((p, &g), (m, v))| {
            let g = g * hp.grad_scale;
            *p -= hp.lr * hp.weight_decay * *p;
            *m = hp.beta1 * *m + (1.0 - hp.beta1) * g;
            *v = hp.beta2 * *v + (1.0 - hp.beta2) * g * g;
            let mhat = *m as f64 / bc1;
            let vhat = *v as f64 / bc2;
            *p -= (hp.lr as f64 * mhat / (vhat.sqrt() + hp.eps as f64)) as f32;
        },
    );
}
