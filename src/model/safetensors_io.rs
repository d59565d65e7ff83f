//! Reading and writing Hugging Face safetensors checkpoints: one `model.safetensors`, or
//! shards listed by `model.safetensors.index.json`; f32, f16 and bf16 on disk. Files are
//! memory-mapped (memmap2) so loading a large model does not copy it twice.

use super::config::Qwen2Config;
use super::params::ParamLayout;
use crate::fs::write_atomic;
use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Converts a tensor's bytes to f32, whatever of f32/f16/bf16 it is stored as.
pub fn to_f32(view: &TensorView<'_>) -> Result<Vec<f32>> {
    let b = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => {
            b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        }
        Dtype::F16 => {
            b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
        }
        Dtype::BF16 => {
            b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
        }
        other => bail!("dtype {other:?} is not supported (expected F32, F16 or BF16)"),
    })
}

/// The safetensors files of a model directory, in a stable order.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("cannot read {}", index.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", index.display()))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .with_context(|| format!("{}: no \"weight_map\" object", index.display()))?;
        let mut files: Vec<String> =
            map.values().filter_map(|f| f.as_str().map(String::from)).collect();
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    bail!("{}: no model.safetensors or model.safetensors.index.json", dir.display())
}

/// Loads every tensor the layout names from `dir`, as f32, checking names and shapes.
pub fn load_params(dir: &Path, layout: &ParamLayout) -> Result<Vec<Vec<f32>>> {
    load_specs(dir, &layout.specs)
}

/// Loads the named tensors (any parameter set: decoder, vision tower) from `dir`, as f32, in
/// the order given, checking that each exists, has the expected shape and is finite.
pub fn load_specs(dir: &Path, specs: &[super::params::ParamSpec]) -> Result<Vec<Vec<f32>>> {
    let files = weight_files(dir)?;
    let mut maps = Vec::with_capacity(files.len());
    for f in &files {
        let file = File::open(f).with_context(|| format!("cannot open {}", f.display()))?;
        // SAFETY: the file is opened read-only and not modified while mapped by this process.
        let mmap =
            unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", f.display()))?;
        maps.push(mmap);
    }
    let mut parsed = Vec::with_capacity(files.len());
    for (f, m) in files.iter().zip(&maps) {
        let st = SafeTensors::deserialize(m)
            .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file ({e})", f.display()))?;
        parsed.push(st);
    }
    let mut where_is: HashMap<String, usize> = HashMap::new();
    for (i, st) in parsed.iter().enumerate() {
        for name in st.names() {
            where_is.insert(name.to_string(), i);
        }
    }
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let Some(&fi) = where_is.get(&spec.name) else {
            bail!("{}: tensor {} is missing", dir.display(), spec.name);
        };
        let view = parsed[fi].tensor(&spec.name).map_err(|e| anyhow::anyhow!("{e}"))?;
        if view.shape() != spec.shape.as_slice() {
            bail!(
                "{}: tensor {} has shape {:?}, the config implies {:?}",
                files[fi].display(),
                spec.name,
                view.shape(),
                spec.shape
            );
        }
        let data = to_f32(&view)
            .with_context(|| format!("{}: tensor {}", files[fi].display(), spec.name))?;
        if data.iter().any(|x| !x.is_finite()) {
            bail!("{}: tensor {} holds NaN or infinite values", files[fi].display(), spec.name);
        }
        out.push(data);
    }
    Ok(out)
}

/// Storage dtype of a written checkpoint.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum SaveDtype {
    // The aliases read config.toml files written before the names were lower-case.
    #[serde(alias = "F32")]
    F32,
    #[serde(alias = "Bf16")]
    Bf16,
}

/// Writes tensors to `path` atomically: a temporary file in the same directory, fsync, rename.
/// A process killed mid-write leaves the old file (or none), never a truncated one.
pub fn save_tensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, &[f32])],
    dtype: SaveDtype,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, d)| match dtype {
            SaveDtype::F32 => bytemuck::cast_slice::<f32, u8>(d).to_vec(),
            SaveDtype::Bf16 => {
                d.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect()
            }
        })
        .collect();
    let st_dtype = match dtype {
        SaveDtype::F32 => Dtype::F32,
        SaveDtype::Bf16 => Dtype::BF16,
    };
    let mut views = BTreeMap::new();
    for ((name, shape, _), b) in tensors.iter().zip(&bytes) {
        let view = TensorView::new(st_dtype, shape.clone(), b)
            .map_err(|e| anyhow::anyhow!("tensor {name}: {e}"))?;
        views.insert(name.clone(), view);
    }
    let data = safetensors::serialize(views, metadata)
        .map_err(|e| anyhow::anyhow!("serializing {}: {e}", path.display()))?;
    write_atomic(path, &data)
}

/// Writes a Hugging Face model directory's files (config.json, model.safetensors,
/// tokenizer.json when `tokenizer` is given) into `dir`, which must exist.
pub fn write_model_files(
    dir: &Path,
    cfg: &Qwen2Config,
    layout: &ParamLayout,
    host: &[Vec<f32>],
    dtype: SaveDtype,
    tokenizer: Option<&Path>,
) -> Result<()> {
    // The dtype key (transformers 4: torch_dtype, 5: dtype) says what the file holds.
    let mut cfg = cfg.clone();
    let name = match dtype {
        SaveDtype::F32 => "float32",
        SaveDtype::Bf16 => "bfloat16",
    };
    // Keep whichever key the config had; a config with neither gets torch_dtype (what
    // released checkpoints use).
    let key = if cfg.extra.contains_key("dtype") { "dtype" } else { "torch_dtype" };
    cfg.extra.insert(key.into(), serde_json::Value::String(name.into()));
    if key == "dtype" {
        cfg.extra.remove("torch_dtype");
    }
    let json = serde_json::to_vec_pretty(&cfg)?;
    write_atomic(&dir.join("config.json"), &json)?;
    let tensors: Vec<(String, Vec<usize>, &[f32])> = layout
        .specs
        .iter()
        .zip(host)
        .map(|(s, h)| (s.name.clone(), s.shape.clone(), h.as_slice()))
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    save_tensors(&dir.join("model.safetensors"), &tensors, dtype, Some(meta))?;
    if let Some(src) = tokenizer {
        let data = std::fs::read(src).with_context(|| format!("cannot read {}", src.display()))?;
        write_atomic(&dir.join("tokenizer.json"), &data)?;
        // tokenizer_config.json carries the chat template for transformers; copy it if present.
        let tc = src.with_file_name("tokenizer_config.json");
        if tc.exists() {
            write_atomic(&dir.join("tokenizer_config.json"), &std::fs::read(&tc)?)?;
        }
    }
    Ok(())
}
