//! Checkpoints as Hugging Face model directories plus the trainer's own state:
//!
//! ```text
//! OUT/checkpoint-{step}/config.json            the model's config, re-serialized
//!                       model.safetensors      weights (f32, or bf16 on request); tied models have no lm_head
//!                       tokenizer.json         copied from the source model, when it has one
//!                       trainer_state.json     step, epoch, data cursor, RNG state, schedule, ...
//!                       optimizer.safetensors  AdamW exp_avg.* / exp_avg_sq.* (+ master.* f32 weights
//!                                              when the model file is bf16), step count in metadata
//! OUT/latest                                   "checkpoint-{step}", written atomically
//! ```
//!
//! Crash safety: every file is written atomically, the directory is assembled under a temporary
//! name and renamed into place, and `latest` moves only after that. A kill at any point leaves
//! the previous checkpoint and `latest` intact. Re-saving the step `latest` names moves the old
//! directory aside first; a kill between that and the new one's rename is rolled back by
//! [`latest_checkpoint`]. `tests/suite/checkpoint_faults.rs` injects a failure at every step
//! ([`crate::fs::fault`]) to prove it.

use crate::backend::Backend;
use crate::fs::{fault, rename, sync_dir, write_atomic};
use crate::model::params::ParamSpec;
use crate::model::safetensors_io::{
    load_params, to_f32_checked, write_model_files_from, write_safetensors, SaveDtype,
};
use crate::model::{ParamLayout, Qwen2, Qwen2Config};
use crate::optim::{AdamW, AdamwConfig};
use anyhow::{anyhow, bail, Context, Result};
use safetensors::SafeTensors;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

pub const TRAINER_STATE: &str = "trainer_state.json";
pub const OPTIMIZER: &str = "optimizer.safetensors";
const OPT_FORMAT: &str = "mmr1-fast adamw v1";

/// Which trainer wrote a checkpoint's `trainer_state.json` (its `kind`), checked on resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateKind {
    Sft,
    Rl,
}

/// Why `save_checkpoint` refused to save: the weights after `step` are not finite.
#[derive(Debug)]
pub struct NonFiniteWeights {
    pub step: u64,
    pub tensor: String,
}

impl std::fmt::Display for NonFiniteWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the weights after step {} are not finite (tensor {}); checkpoint-{} was not saved",
            self.step, self.tensor, self.step
        )
    }
}

impl std::error::Error for NonFiniteWeights {}

/// The optimizer state a checkpoint writes: on the model's backend (`&AdamW<B>` converts), or
/// in host memory (a ZeRO run's moments gathered to the writing rank,
/// `dist::zero::consolidated`), never whole on a device.
pub enum OptState<'a, B: Backend> {
    Device(&'a AdamW<B>),
    Host(&'a AdamW<crate::backend::cpu::Cpu>),
}

impl<'a, B: Backend> From<&'a AdamW<B>> for OptState<'a, B> {
    fn from(o: &'a AdamW<B>) -> Self {
        OptState::Device(o)
    }
}

impl<B: Backend> OptState<'_, B> {
    fn tensors(&self) -> usize {
        match self {
            OptState::Device(o) => o.m.len(),
            OptState::Host(o) => o.m.len(),
        }
    }
    fn step_and_cfg(&self) -> (u64, crate::optim::AdamwConfig) {
        match self {
            OptState::Device(o) => (o.step, o.cfg),
            OptState::Host(o) => (o.step, o.cfg),
        }
    }
    /// Moment `i` (first when `first`, else second) as host values.
    fn moment(&self, be: &B, i: usize, first: bool) -> Vec<f32> {
        match self {
            OptState::Device(o) => be.download(if first { &o.m[i] } else { &o.v[i] }),
            OptState::Host(o) => if first { &o.m[i] } else { &o.v[i] }.clone(),
        }
    }
}

/// Saves a full training checkpoint as `out/checkpoint-{step}` and points `out/latest` at it.
/// Returns the checkpoint directory.
#[allow(clippy::too_many_arguments)]
pub fn save_checkpoint<'a, B: Backend + 'a, S: Serialize>(
    be: &B,
    out: &Path,
    step: u64,
    model: &Qwen2<B>,
    opt: impl Into<OptState<'a, B>>,
    trainer_state: &S,
    dtype: SaveDtype,
    tokenizer: Option<&Path>,
) -> Result<PathBuf> {
    // Every tensor is fetched from the backend when the writer reaches it and dropped after:
    // saving holds at most one tensor beyond what training holds.
    let param = |i: usize| finite_param(be, step, &model.layout.specs[i].name, &model.params[i]);
    let write_model = |tmp: &Path| {
        write_model_files_from(tmp, &model.cfg, &model.layout, param, dtype, tokenizer)
    };
    let trained: Vec<(&ParamSpec, &B::Buf)> =
        model.layout.specs.iter().zip(&model.params).collect();
    save_checkpoint_with(be, out, step, write_model, &trained, &[], opt, trainer_state, dtype)
}

/// A parameter downloaded for saving, refused when not finite: a checkpoint is something to
/// resume from, never keep weights that have blown up.
pub fn finite_param<B: Backend>(
    be: &B,
    step: u64,
    name: &str,
    buf: &B::Buf,
) -> Result<Cow<'static, [f32]>> {
    let h = be.download(buf);
    if h.iter().any(|x| !x.is_finite()) {
        return Err(NonFiniteWeights { step, tensor: name.to_string() }.into());
    }
    Ok(Cow::Owned(h))
}

/// [`save_checkpoint`] for any model: `write_model(dir)` writes the Hugging Face files of the
/// model into the checkpoint directory being assembled; `trained` are the parameters the
/// optimizer holds state for, in the optimizer's order, whose moments go to the optimizer
/// file under their names; `frozen` the model's other parameters. When `dtype` is not f32 the
/// f32 master weights of both go there too (a frozen tensor must come back bit-identical).
#[allow(clippy::too_many_arguments)]
pub fn save_checkpoint_with<'a, B: Backend + 'a, S: Serialize>(
    be: &B,
    out: &Path,
    step: u64,
    write_model: impl FnOnce(&Path) -> Result<()>,
    trained: &[(&ParamSpec, &B::Buf)],
    frozen: &[(&ParamSpec, &B::Buf)],
    opt: impl Into<OptState<'a, B>>,
    trainer_state: &S,
    dtype: SaveDtype,
) -> Result<PathBuf> {
    let _r = crate::nvtx_ranges::range(c"checkpoint");
    let opt: OptState<'a, B> = opt.into();
    if trained.len() != opt.tensors() {
        bail!(
            "save_checkpoint: {} trained parameters but optimizer state for {}",
            trained.len(),
            opt.tensors()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let name = format!("checkpoint-{step}");
    let final_dir = out.join(&name);
    let tmp = out.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("cannot remove stale {}", tmp.display()))?;
    }
    fault::point("create dir", &tmp)?;
    std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;

    if let Err(e) = write_model(&tmp) {
        std::fs::remove_dir_all(&tmp).ok();
        return Err(e);
    }

    // Optimizer file: (name, shape) of each tensor and where its values live.
    enum Src {
        M,
        V,
        Master,
    }
    let mut heads: Vec<(String, Vec<usize>)> = Vec::new();
    let mut srcs: Vec<(Src, usize)> = Vec::new();
    let all: Vec<&(&ParamSpec, &B::Buf)> = trained.iter().chain(frozen).collect();
    for (i, (s, _)) in all.iter().enumerate() {
        if i < trained.len() {
            heads.push((format!("exp_avg.{}", s.name), s.shape.clone()));
            srcs.push((Src::M, i));
            heads.push((format!("exp_avg_sq.{}", s.name), s.shape.clone()));
            srcs.push((Src::V, i));
        }
        if dtype != SaveDtype::F32 {
            // The model file is rounded; exact resumption needs the f32 master weights.
            heads.push((format!("master.{}", s.name), s.shape.clone()));
            srcs.push((Src::Master, i));
        }
    }
    let (opt_step, opt_cfg) = opt.step_and_cfg();
    let meta = HashMap::from([
        ("format".to_string(), OPT_FORMAT.to_string()),
        ("step".to_string(), opt_step.to_string()),
        ("config".to_string(), serde_json::to_string(&opt_cfg)?),
    ]);
    let opt_tensor = |j: usize| {
        let (src, i) = &srcs[j];
        Ok(Cow::Owned(match src {
            Src::M => opt.moment(be, *i, true),
            Src::V => opt.moment(be, *i, false),
            Src::Master => be.download(all[*i].1),
        }))
    };
    write_safetensors(&tmp.join(OPTIMIZER), &heads, SaveDtype::F32, Some(&meta), opt_tensor)?;
    write_atomic(&tmp.join(TRAINER_STATE), &serde_json::to_vec_pretty(trainer_state)?)?;
    sync_dir(&tmp)?;

    // Move into place. A checkpoint of the same step (a re-run) is replaced, never merged.
    if final_dir.exists() {
        let old = out.join(format!(".{name}.old"));
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        rename(&final_dir, &old)?;
        rename(&tmp, &final_dir)?;
        fault::point("remove", &old)?;
        std::fs::remove_dir_all(&old)?;
    } else {
        rename(&tmp, &final_dir)?;
    }
    sync_dir(out)?;
    write_atomic(&out.join("latest"), format!("{name}\n").as_bytes())?;
    Ok(final_dir)
}

/// The checkpoint `out/latest` points at, or `None` when there is no `latest` file.
pub fn latest_checkpoint(out: &Path) -> Result<Option<PathBuf>> {
    let p = out.join("latest");
    if !p.exists() {
        return Ok(None);
    }
    let name =
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    let name = name.trim();
    if name.is_empty() || name.contains('/') || name.contains("..") {
        bail!("{}: does not name a checkpoint directory ({name:?})", p.display());
    }
    let dir = out.join(name);
    let moved_aside = out.join(format!(".{name}.old"));
    if !dir.exists() && moved_aside.is_dir() {
        // A re-save of this step was killed between moving the old directory aside and
        // renaming the new one into place: put the old one back.
        rename(&moved_aside, &dir)?;
    }
    if !dir.is_dir() {
        bail!("{} points at {}, which does not exist", p.display(), dir.display());
    }
    Ok(Some(dir))
}

/// The step of a complete checkpoint directory's name, `checkpoint-N` exactly (directories
/// being assembled are `.checkpoint-N.tmp`, set-aside ones `checkpoint-N.diverged`).
fn complete_step(p: &Path) -> Option<u64> {
    let n = p.file_name()?.to_str()?.strip_prefix("checkpoint-")?;
    let step = n.parse().ok()?;
    (p.join(TRAINER_STATE).is_file() && p.join(OPTIMIZER).is_file()).then_some(step)
}

/// The complete checkpoints of a phase directory, oldest first.
pub fn complete_checkpoints(out: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(out) else { return vec![] };
    let mut v: Vec<(u64, PathBuf)> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .filter_map(|p| Some((complete_step(&p)?, p)))
        .collect();
    v.sort();
    v
}

/// The checkpoint to resume from: the newest complete checkpoint directory. That is the one
/// `latest` names, unless the run was killed between moving a checkpoint into place and
/// moving `latest` (or `latest` was lost): then it is newer, and a note says so.
pub fn resume_checkpoint(out: &Path) -> Result<Option<PathBuf>> {
    let newest = complete_checkpoints(out).pop().map(|(_, p)| p);
    let latest = latest_checkpoint(out).ok().flatten();
    if let Some(n) = &newest {
        if latest.as_ref() != Some(n) {
            eprintln!(
                "note: {}: resuming from {}, the newest complete checkpoint (`latest` {})",
                out.display(),
                n.display(),
                latest.map_or("is missing".into(), |l| format!("names {}", l.display()))
            );
        }
    }
    Ok(newest)
}

/// A run diverged on the step after `step`: the weights of `checkpoint-{step}`, if it was
/// saved, are what produced the non-finite numbers, so it is renamed
/// `checkpoint-{step}.diverged` (kept for inspection, never resumed from) and `latest` moves
/// to the newest remaining checkpoint. Returns that checkpoint: the one to resume from.
pub fn set_aside_diverged(out: &Path, step: u64) -> Result<Option<PathBuf>> {
    let bad = out.join(format!("checkpoint-{step}"));
    if bad.is_dir() {
        let to = out.join(format!("checkpoint-{step}.diverged"));
        if to.exists() {
            std::fs::remove_dir_all(&to)?;
        }
        std::fs::rename(&bad, &to)
            .with_context(|| format!("cannot rename {} to {}", bad.display(), to.display()))?;
    }
    let good = complete_checkpoints(out).pop().map(|(_, p)| p);
    let latest = out.join("latest");
    match &good {
        Some(p) => {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            write_atomic(&latest, format!("{name}\n").as_bytes())?;
        }
        None if latest.exists() => std::fs::remove_file(&latest)?,
        None => {}
    }
    Ok(good)
}

/// Everything a checkpoint holds, loaded and checked.
pub struct LoadedCheckpoint<B: Backend, S> {
    pub model: Qwen2<B>,
    pub opt: AdamW<B>,
    pub state: S,
}

/// Loads a checkpoint directory written by `save_checkpoint`: the model (f32 master weights
/// when the model file is bf16), the AdamW state and the trainer state. Every tensor must be
/// present with the layout's shape and finite; errors name the file and the tensor.
pub fn load_checkpoint<B: Backend, S: DeserializeOwned>(
    be: &B,
    dir: &Path,
) -> Result<LoadedCheckpoint<B, S>> {
    let cfg = Qwen2Config::load(dir)?;
    let layout = ParamLayout::new(&cfg);
    let state = read_trainer_state(dir)?;
    let specs: Vec<&ParamSpec> = layout.specs.iter().collect();
    let (opt, masters) = load_optimizer(be, dir, &specs, &[])?;
    let host = match masters {
        Some(h) => h,
        None => load_params(dir, &layout)?,
    };
    let model = Qwen2::from_host_vecs(be, cfg, layout, host);
    Ok(LoadedCheckpoint { model, opt, state })
}

/// [`load_checkpoint`] for rank `comm.rank()` of a ZeRO-`stage` run: the optimizer state is
/// read into host memory and only the rank's block is uploaded (`dist::zero::shard_host`), so
/// the whole moments never sit on a device. Stage 0 is `load_checkpoint`.
pub fn load_checkpoint_sharded<B: Backend, S: DeserializeOwned>(
    be: &B,
    dir: &Path,
    comm: &dyn crate::dist::Collective<B>,
    stage: u8,
) -> Result<LoadedCheckpoint<B, S>> {
    if stage == 0 {
        return load_checkpoint(be, dir);
    }
    let cfg = Qwen2Config::load(dir)?;
    let layout = ParamLayout::new(&cfg);
    let state = read_trainer_state(dir)?;
    let specs: Vec<&ParamSpec> = layout.specs.iter().collect();
    let (host_opt, masters) = load_optimizer(&crate::backend::cpu::Cpu, dir, &specs, &[])?;
    let opt = crate::dist::zero::shard_host(be, comm, host_opt, stage)?;
    let host = match masters {
        Some(h) => h,
        None => load_params(dir, &layout)?,
    };
    let model = Qwen2::from_host(be, cfg, layout, &host);
    Ok(LoadedCheckpoint { model, opt, state })
}

/// Parameter values on the host, one `Vec` per tensor.
pub type HostParams = Vec<Vec<f32>>;

/// `dir/trainer_state.json`, parsed; errors name the file.
pub fn read_trainer_state<S: DeserializeOwned>(dir: &Path) -> Result<S> {
    let state_path = dir.join(TRAINER_STATE);
    let text = std::fs::read_to_string(&state_path)
        .with_context(|| format!("cannot read {}", state_path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: not a valid trainer state", state_path.display()))
}

/// The AdamW state of `dir/optimizer.safetensors` for the `trained` parameters (in the
/// optimizer's order), and, when the file holds f32 master weights (the model file is
/// rounded), those of `trained` then `frozen`, in that order (`None` otherwise: the model
/// file is exact). Every tensor must be present with its shape and finite; errors name the
/// file and the tensor.
pub fn load_optimizer<B: Backend>(
    be: &B,
    dir: &Path,
    trained: &[&ParamSpec],
    frozen: &[&ParamSpec],
) -> Result<(AdamW<B>, Option<HostParams>)> {
    let opt_path = dir.join(OPTIMIZER);
    let file =
        File::open(&opt_path).with_context(|| format!("cannot open {}", opt_path.display()))?;
    // SAFETY: opened read-only; checkpoints are not modified while a run reads them.
    let bytes = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("cannot map {}", opt_path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow!("{}: not a valid safetensors file ({e})", opt_path.display()))?;
    let (_, meta) =
        SafeTensors::read_metadata(&bytes).map_err(|e| anyhow!("{}: {e}", opt_path.display()))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(OPT_FORMAT) {
        bail!(
            "{}: not an mmr1-fast optimizer state (format {:?})",
            opt_path.display(),
            meta.get("format")
        );
    }
    let step: u64 = meta
        .get("step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("{}: metadata has no valid \"step\"", opt_path.display()))?;
    let opt_cfg: AdamwConfig =
        serde_json::from_str(meta.get("config").map(String::as_str).unwrap_or(""))
            .with_context(|| format!("{}: metadata has no valid \"config\"", opt_path.display()))?;
    let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let view = st
            .tensor(name)
            .map_err(|_| anyhow!("{}: tensor {name} is missing", opt_path.display()))?;
        if view.shape() != shape {
            bail!(
                "{}: tensor {name} has shape {:?}, the config implies {:?}",
                opt_path.display(),
                view.shape(),
                shape
            );
        }
        let (data, finite) = to_f32_checked(&view)
            .with_context(|| format!("{}: tensor {name}", opt_path.display()))?;
        if !finite {
            bail!("{}: tensor {name} holds NaN or infinite values", opt_path.display());
        }
        Ok(data)
    };
    let has_master = st.names().iter().any(|n| n.starts_with("master."));
    let masters = if has_master {
        let all = trained.iter().chain(frozen);
        Some(all.map(|s| get(&format!("master.{}", s.name), &s.shape)).collect::<Result<_>>()?)
    } else {
        None
    };
    let mut m = Vec::with_capacity(trained.len());
    let mut v = Vec::with_capacity(trained.len());
    for s in trained {
        m.push(be.upload_vec(get(&format!("exp_avg.{}", s.name), &s.shape)?));
        let vv = get(&format!("exp_avg_sq.{}", s.name), &s.shape)?;
        if vv.iter().any(|&x| x < 0.0) {
            bail!("{}: tensor exp_avg_sq.{} has negative entries", opt_path.display(), s.name);
        }
        v.push(be.upload_vec(vv));
    }
    Ok((AdamW { cfg: opt_cfg, m, v, step, zero: None }, masters))
}

/// Deletes all but the newest `keep` checkpoints of a phase directory (the one `latest`
/// names is always kept).
pub fn prune_checkpoints(dir: &Path, keep: usize) -> Result<()> {
    let latest = latest_checkpoint(dir)?;
    let cks: Vec<PathBuf> = complete_checkpoints(dir).into_iter().map(|(_, p)| p).collect();
    let n = cks.len();
    for p in cks.into_iter().take(n.saturating_sub(keep.max(1))) {
        if Some(&p) != latest.as_ref() {
            std::fs::remove_dir_all(&p)
                .with_context(|| format!("cannot remove old checkpoint {}", p.display()))?;
        }
    }
    Ok(())
}

/// The step number in a `checkpoint-N` directory name (0 when it has none).
pub fn step_of(ck: &Path) -> u64 {
    ck.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("checkpoint-"))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
