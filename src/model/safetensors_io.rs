//! Reading and writing Hugging Face safetensors checkpoints: one `model.safetensors`, or
//! shards listed by `model.safetensors.index.json`; f32, f16 and bf16 on disk. Files are
//! memory-mapped (memmap2) so loading a large model does not copy it twice.

use super::config::Qwen2Config;
use super::params::ParamLayout;
use crate::fs::{write_atomic, AtomicFile};
use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Elements per parallel task of [`to_f32`]: large enough that a task's overhead is nothing
/// next to its copy, small enough that both threads of a 2-core machine share a small tensor.
const CONVERT_TASK: usize = 1 << 16;

/// Converts a tensor's bytes to f32, whatever of f32/f16/bf16 it is stored as, on all threads
/// (the bytes are usually a memory-mapped file: this is where loading spends its time).
pub fn to_f32(view: &TensorView<'_>) -> Result<Vec<f32>> {
    Ok(to_f32_checked(view)?.0)
}

/// [`to_f32`], also saying whether every value is finite: the check runs on each task's
/// values while they are in cache, instead of as a second pass over the whole tensor.
///
/// The output starts as `vec![0.0; n]` (fresh zero pages from the allocator, touched once,
/// by the conversion) and f32 data is a plain byte copy on little-endian machines: loading a
/// 2 GB model used to build every value with `from_le_bytes` through a rayon `collect`.
pub fn to_f32_checked(view: &TensorView<'_>) -> Result<(Vec<f32>, bool)> {
    let bytes = view.data();
    type Convert = fn(&[u8], &mut [f32]);
    let (elem, convert): (usize, Convert) = match view.dtype() {
        Dtype::F32 => (4, |src, dst| {
            if cfg!(target_endian = "little") {
                // Byte copy into the f32 buffer: no alignment is assumed of the source.
                bytemuck::cast_slice_mut::<f32, u8>(dst).copy_from_slice(src);
            } else {
                for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                    *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        }),
        Dtype::F16 => (2, |src, dst| {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }),
        Dtype::BF16 => (2, |src, dst| {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }),
        other => bail!("dtype {other:?} is not supported (expected F32, F16 or BF16)"),
    };
    let n = bytes.len() / elem;
    let mut out = vec![0.0f32; n];
    let finite = out
        .par_chunks_mut(CONVERT_TASK)
        .zip(bytes[..n * elem].par_chunks(CONVERT_TASK * elem))
        .map(|(dst, src)| {
            convert(src, dst);
            // Exponent bits all ones: inf or NaN. A fold, not `all`, so the loop vectorizes.
            dst.iter().fold(true, |ok, x| ok & (x.to_bits() & 0x7f80_0000 != 0x7f80_0000))
        })
        .reduce(|| true, |a, b| a & b);
    Ok((out, finite))
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
    let (files, maps) = map_weight_files(dir)?;
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
        let (data, finite) = to_f32_checked(&view)
            .with_context(|| format!("{}: tensor {}", files[fi].display(), spec.name))?;
        if !finite {
            bail!("{}: tensor {} holds NaN or infinite values", files[fi].display(), spec.name);
        }
        out.push(data);
    }
    Ok(out)
}

/// Settles a config that ties the output head to the embedding (`tie_word_embeddings`) against
/// the files, as transformers 5 does in `from_pretrained` (`PreTrainedModel.tie_weights`): when
/// the files also hold an `lm_head.weight` that differs from `model.embed_tokens.weight`, the
/// config is wrong about the checkpoint and the two stay separate (transformers warns, and so
/// does this). `cfg` then says untied, so the layout loads the head and a save writes both
/// tensors under a config every loader reads alike (vLLM, and transformers 4, would otherwise
/// tie and drop the file's head). Equal tensors (`.bin` conversions often store both) stay
/// tied. Returns whether it untied.
pub fn untie_if_the_head_differs(dir: &Path, cfg: &mut Qwen2Config) -> Result<bool> {
    if !cfg.tie_word_embeddings || !tensor_names(dir)?.iter().any(|n| n == "lm_head.weight") {
        return Ok(false);
    }
    let layout = ParamLayout::new(cfg);
    let embed = layout.specs[layout.embed].clone();
    let head =
        super::params::ParamSpec { name: "lm_head.weight".into(), shape: embed.shape.clone() };
    let t = load_specs(dir, &[embed, head])?;
    // torch.equal: values compared, so -0 equals 0 (both are finite: load_specs checked).
    if t[0] == t[1] {
        return Ok(false);
    }
    eprintln!(
        "warning: {}: config.json sets tie_word_embeddings, but the files hold an lm_head.weight \
         that differs from model.embed_tokens.weight: loading them as two tensors, as \
         transformers 5 does (a saved copy says tie_word_embeddings false)",
        dir.display()
    );
    cfg.tie_word_embeddings = false;
    Ok(true)
}

/// The names of every tensor in `dir`'s weight files (headers only).
fn tensor_names(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let (files, maps) = map_weight_files(dir)?;
    for (f, mmap) in files.iter().zip(&maps) {
        let (_, meta) = SafeTensors::read_metadata(mmap)
            .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file ({e})", f.display()))?;
        names.extend(meta.tensors().into_keys());
    }
    Ok(names)
}

/// `dir`'s weight files (`weight_files`) and a read-only memory map of each, in that order.
fn map_weight_files(dir: &Path) -> Result<(Vec<PathBuf>, Vec<Mmap>)> {
    let files = weight_files(dir)?;
    let mut maps = Vec::with_capacity(files.len());
    for f in &files {
        let file = File::open(f).with_context(|| format!("cannot open {}", f.display()))?;
        // SAFETY: the file is opened read-only and not modified while mapped by this process.
        let mmap =
            unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", f.display()))?;
        maps.push(mmap);
    }
    Ok((files, maps))
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

/// Elements converted per step when a tensor is stored as bf16: the only copy saving makes.
const CONVERT_CHUNK: usize = 1 << 16;

/// Writes a safetensors file to `path` atomically (temporary file, fsync, rename), streaming:
/// `data(i)` gives the f32 values of tensor `i` of `tensors` (name, shape) when it is its turn,
/// and they go to the file converted chunk by chunk, so saving holds at most one tensor beyond
/// what the caller already has. The layout is the one `safetensors::serialize` makes (tensors
/// sorted by name, header padded with spaces to 8 bytes), so the files are byte-identical:
/// an 8-byte little-endian header length, the JSON header (`__metadata__`, then per tensor
/// `dtype`, `shape`, `data_offsets` into the data section), then the raw little-endian data.
pub fn write_safetensors<'a>(
    path: &Path,
    tensors: &[(String, Vec<usize>)],
    dtype: SaveDtype,
    metadata: Option<&HashMap<String, String>>,
    mut data: impl FnMut(usize) -> Result<Cow<'a, [f32]>>,
) -> Result<()> {
    let (dtype_name, elem_bytes) = match dtype {
        SaveDtype::F32 => ("F32", 4),
        SaveDtype::Bf16 => ("BF16", 2),
    };
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| tensors[a].0.cmp(&tensors[b].0));
    if let Some(w) = order.windows(2).find(|w| tensors[w[0]].0 == tensors[w[1]].0) {
        bail!("{}: tensor {} given twice", path.display(), tensors[w[0]].0);
    }
    let mut json = String::from("{");
    if let Some(meta) = metadata {
        let sorted: BTreeMap<&String, &String> = meta.iter().collect();
        json += &format!("\"__metadata__\":{}", serde_json::to_string(&sorted)?);
    }
    let mut offset = 0usize;
    for &i in &order {
        let (name, shape) = &tensors[i];
        let bytes = shape.iter().product::<usize>() * elem_bytes;
        if json.len() > 1 {
            json.push(',');
        }
        // Field order as the safetensors crate writes it.
        json += &format!(
            "{}:{{\"dtype\":\"{dtype_name}\",\"shape\":{},\"data_offsets\":[{offset},{}]}}",
            serde_json::to_string(name)?,
            serde_json::to_string(shape)?,
            offset + bytes
        );
        offset += bytes;
    }
    json.push('}');
    let mut json = json.into_bytes();
    json.resize(json.len().next_multiple_of(8), b' ');

    let mut f = AtomicFile::create(path)?;
    f.write_all(&(json.len() as u64).to_le_bytes())?;
    f.write_all(&json)?;
    let mut chunk: Vec<u8> = Vec::new();
    for &i in &order {
        let (name, shape) = &tensors[i];
        let values = data(i)?;
        let n: usize = shape.iter().product();
        if values.len() != n {
            bail!("tensor {name}: {} values for shape {shape:?}", values.len());
        }
        match dtype {
            SaveDtype::F32 if cfg!(target_endian = "little") => {
                f.write_all(bytemuck::cast_slice::<f32, u8>(&values))?
            }
            _ => {
                for part in values.chunks(CONVERT_CHUNK) {
                    chunk.clear();
                    match dtype {
                        SaveDtype::F32 => {
                            part.iter().for_each(|x| chunk.extend_from_slice(&x.to_le_bytes()))
                        }
                        SaveDtype::Bf16 => part.iter().for_each(|x| {
                            chunk.extend_from_slice(&half::bf16::from_f32(*x).to_le_bytes())
                        }),
                    }
                    f.write_all(&chunk)?;
                }
            }
        }
    }
    f.finish()
}

/// Writes tensors held in memory to `path` atomically; see `write_safetensors`.
pub fn save_tensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, &[f32])],
    dtype: SaveDtype,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let heads: Vec<(String, Vec<usize>)> =
        tensors.iter().map(|(n, s, _)| (n.clone(), s.clone())).collect();
    write_safetensors(path, &heads, dtype, metadata.as_ref(), |i| Ok(Cow::Borrowed(tensors[i].2)))
}

/// Writes a Hugging Face model directory's files (config.json, model.safetensors; when
/// `tokenizer` is given, tokenizer.json with its side files and the generation_config.json
/// beside it) into `dir`, which must exist.
pub fn write_model_files(
    dir: &Path,
    cfg: &Qwen2Config,
    layout: &ParamLayout,
    host: &[Vec<f32>],
    dtype: SaveDtype,
    tokenizer: Option<&Path>,
) -> Result<()> {
    let tensor = |i: usize| Ok(Cow::Borrowed(host[i].as_slice()));
    write_model_files_from(dir, cfg, layout, tensor, dtype, tokenizer)
}

/// `write_model_files` with the weights fetched one at a time (`tensor(i)` is parameter `i` of
/// `layout`), so a model on a device is saved without a host copy of all of it.
pub fn write_model_files_from<'a>(
    dir: &Path,
    cfg: &Qwen2Config,
    layout: &ParamLayout,
    tensor: impl FnMut(usize) -> Result<Cow<'a, [f32]>>,
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
    let heads: Vec<(String, Vec<usize>)> =
        layout.specs.iter().map(|s| (s.name.clone(), s.shape.clone())).collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(&dir.join("model.safetensors"), &heads, dtype, Some(&meta), tensor)?;
    if let Some(src) = tokenizer {
        crate::tokenizer::copy_tokenizer_files(src, dir)?;
        // The checkpoint's generation settings (its extra stop ids: `Qwen2Config::eos_ids`),
        // from the source model directory, which holds the tokenizer.
        let src_dir = src.parent().unwrap_or(Path::new("."));
        crate::fs::copy_present(src_dir, dir, ["generation_config.json"])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The streaming writer makes exactly the bytes `safetensors::serialize` makes (names given
    /// out of order, ragged shapes, a scalar-like [1] tensor, f32 and bf16), and the crate
    /// reads them back to the same values.
    #[test]
    fn streamed_file_is_the_crates_file() {
        let dir = tempfile::tempdir().unwrap();
        let shapes: [(&str, Vec<usize>); 4] = [
            ("model.norm.weight", vec![7]),
            ("lm_head.weight", vec![3, 5]),
            ("b", vec![1]),
            ("model.layers.0.mlp.up_proj.weight", vec![70_001]),
        ];
        let values: Vec<Vec<f32>> = shapes
            .iter()
            .enumerate()
            .map(|(t, (_, s))| {
                let n: usize = s.iter().product();
                (0..n).map(|i| ((i * 37 + t * 11) % 101) as f32 * 0.173 - 8.1).collect()
            })
            .collect();
        for dtype in [SaveDtype::F32, SaveDtype::Bf16] {
            let path = dir.path().join("t.safetensors");
            let tensors: Vec<(String, Vec<usize>, &[f32])> = shapes
                .iter()
                .zip(&values)
                .map(|((n, s), v)| (n.to_string(), s.clone(), v.as_slice()))
                .collect();
            let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
            save_tensors(&path, &tensors, dtype, Some(meta.clone())).unwrap();
            let got = std::fs::read(&path).unwrap();

            let (st_dtype, bytes): (Dtype, Vec<Vec<u8>>) = match dtype {
                SaveDtype::F32 => (
                    Dtype::F32,
                    values.iter().map(|v| bytemuck::cast_slice::<f32, u8>(v).to_vec()).collect(),
                ),
                SaveDtype::Bf16 => (
                    Dtype::BF16,
                    values
                        .iter()
                        .map(|v| {
                            v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect()
                        })
                        .collect(),
                ),
            };
            let views: Vec<(String, TensorView<'_>)> = shapes
                .iter()
                .zip(&bytes)
                .map(|((n, s), b)| {
                    (n.to_string(), TensorView::new(st_dtype, s.clone(), b).unwrap())
                })
                .collect();
            let want = safetensors::serialize(views, Some(meta)).unwrap();
            assert_eq!(got, want, "{dtype:?}: the streamed file differs from the crate's");

            let st = SafeTensors::deserialize(&got).unwrap();
            for ((n, s), v) in shapes.iter().zip(&values) {
                let view = st.tensor(n).unwrap();
                assert_eq!(view.shape(), s.as_slice());
                let back = to_f32(&view).unwrap();
                let tol = if dtype == SaveDtype::F32 { 0.0 } else { 0.01 };
                assert!(back.iter().zip(v).all(|(a, b)| (a - b).abs() <= tol * b.abs()), "{n}");
            }
        }
    }

    #[test]
    fn a_tensor_of_the_wrong_size_fails_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let heads = vec![("a".to_string(), vec![2, 3])];
        let err = write_safetensors(&path, &heads, SaveDtype::F32, None, |_| {
            Ok(Cow::Owned(vec![1.0; 5]))
        })
        .unwrap_err();
        assert!(err.to_string().contains("tensor a: 5 values for shape [2, 3]"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "a file was left behind");
    }

    /// The parallel conversion gives, for every dtype, exactly the values an element-by-element
    /// `from_le_bytes` gives, over a length that leaves a ragged last task and a source that
    /// starts at an odd byte (no alignment is assumed); a single NaN or infinity anywhere, the
    /// last element included, makes the check fail.
    #[test]
    fn conversion_is_exact_and_finds_any_non_finite_value() {
        let n = 2 * CONVERT_TASK + 12_345;
        let vals: Vec<f32> =
            (0..n).map(|i| ((i * 7919 % 20011) as f32 - 10005.0) * 1.37e-3).collect();
        let cases: [(Dtype, usize); 3] = [(Dtype::F32, 4), (Dtype::F16, 2), (Dtype::BF16, 2)];
        for (dtype, size) in cases {
            let mut bytes: Vec<u8> = vec![0xAB]; // data starts at byte 1: unaligned
            for x in &vals {
                match dtype {
                    Dtype::F32 => bytes.extend(x.to_le_bytes()),
                    Dtype::F16 => bytes.extend(half::f16::from_f32(*x).to_le_bytes()),
                    _ => bytes.extend(half::bf16::from_f32(*x).to_le_bytes()),
                }
            }
            let want: Vec<u32> = bytes[1..]
                .chunks_exact(size)
                .map(|c| match dtype {
                    Dtype::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                    Dtype::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f32(),
                    _ => half::bf16::from_le_bytes([c[0], c[1]]).to_f32(),
                })
                .map(f32::to_bits)
                .collect();
            let view = TensorView::new(dtype, vec![n], &bytes[1..]).unwrap();
            let (got, finite) = to_f32_checked(&view).unwrap();
            assert!(finite, "{dtype:?}");
            assert!(got.iter().map(|x| x.to_bits()).eq(want.iter().copied()), "{dtype:?}");
            for (at, bad) in [(CONVERT_TASK + 3, f32::NAN), (n - 1, f32::NEG_INFINITY)] {
                let mut b = bytes.clone();
                let p = 1 + at * size;
                match dtype {
                    Dtype::F32 => b[p..p + 4].copy_from_slice(&bad.to_le_bytes()),
                    Dtype::F16 => {
                        b[p..p + 2].copy_from_slice(&half::f16::from_f32(bad).to_le_bytes())
                    }
                    _ => b[p..p + 2].copy_from_slice(&half::bf16::from_f32(bad).to_le_bytes()),
                }
                let view = TensorView::new(dtype, vec![n], &b[1..]).unwrap();
                assert!(!to_f32_checked(&view).unwrap().1, "{dtype:?}: {bad} at {at} not found");
            }
        }
    }
}
