//! Checkpoints of a Qwen2.5-VL model (its SFT run and its RL phase): a Qwen2.5-VL Hugging
//! Face directory (`model::vl_save`: config, weights, the source directory's processor and
//! tokenizer files) plus `optimizer.safetensors` and `trainer_state.json`, assembled by
//! `checkpoint::save_checkpoint_with`. The optimizer state covers the trained tensors only: the
//! decoder's, and the vision tower's unless it is frozen; with a rounded (bf16) model file the
//! f32 masters of every tensor, frozen ones included, go to the optimizer file so that a
//! resume (and a frozen tower) is bit-exact.

use super::checkpoint::{finite_param, load_optimizer, save_checkpoint_with};
use crate::backend::Backend;
use crate::model::params::ParamSpec;
use crate::model::safetensors_io::SaveDtype;
use crate::model::vision_forward::VisionTower;
use crate::model::vl::VlHost;
use crate::model::vl_forward::VlModel;
use crate::model::vl_save::write_vl_model_files_from;
use crate::model::Qwen2;
use crate::optim::AdamW;
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The trained parameters, in the optimizer's order (decoder, then the tower unless
/// frozen), and the frozen ones, with their names.
#[allow(clippy::type_complexity)]
pub fn vl_param_sets<B: Backend>(
    m: &VlModel<B>,
    freeze_vision: bool,
) -> (Vec<(&ParamSpec, &B::Buf)>, Vec<(&ParamSpec, &B::Buf)>) {
    let mut trained: Vec<(&ParamSpec, &B::Buf)> =
        m.text.layout.specs.iter().zip(&m.text.params).collect();
    let vision: Vec<(&ParamSpec, &B::Buf)> =
        m.vision.layout.specs.iter().zip(&m.vision.params).collect();
    if freeze_vision {
        (trained, vision)
    } else {
        trained.extend(vision);
        (trained, vec![])
    }
}

/// Writes the model's Hugging Face files into `dir`; `assets` is the directory whose
/// processor, tokenizer and generation files go with it. A non-finite tensor is refused
/// (`checkpoint::NonFiniteWeights`, after `step`).
pub fn write_vl_model<B: Backend>(
    be: &B,
    m: &VlModel<B>,
    dir: &Path,
    dtype: SaveDtype,
    step: u64,
    assets: &Path,
) -> Result<()> {
    let n_text = m.text.params.len();
    let specs: Vec<&ParamSpec> = m.text.layout.specs.iter().chain(&m.vision.layout.specs).collect();
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
        Some(assets),
    )
    .with_context(|| format!("writing the model to {}", dir.display()))
}

/// Saves `out/checkpoint-{step}` of a VL model and moves `out/latest` (see the module doc).
#[allow(clippy::too_many_arguments)]
pub fn save_vl_checkpoint<B: Backend, S: Serialize>(
    be: &B,
    m: &VlModel<B>,
    assets: &Path,
    freeze_vision: bool,
    out: &Path,
    step: u64,
    opt: &AdamW<B>,
    state: &S,
    dtype: SaveDtype,
) -> Result<PathBuf> {
    let write_model = |dir: &Path| write_vl_model(be, m, dir, dtype, step, assets);
    let (trained, frozen) = vl_param_sets(m, freeze_vision);
    save_checkpoint_with(be, out, step, write_model, &trained, &frozen, opt, state, dtype)
}

/// The model and optimizer of a VL checkpoint directory written by [`save_vl_checkpoint`]
/// (the f32 masters when the model file is rounded); `freeze_vision` says what the optimizer
/// state covers.
pub fn load_vl_checkpoint<B: Backend>(
    be: &B,
    dir: &Path,
    freeze_vision: bool,
) -> Result<(VlModel<B>, AdamW<B>)> {
    let h = VlHost::load(dir)?;
    let text_specs: Vec<&ParamSpec> = h.text_layout.specs.iter().collect();
    let vision_specs: Vec<&ParamSpec> = h.vision_layout.specs.iter().collect();
    let (trained, frozen) = if freeze_vision {
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
    Ok((model, opt))
}
