//! How data files name an image: a path (relative to the data file, or absolute), a
//! `file://` URL, or an object with a `path`, as Hugging Face datasets' `Image` feature is
//! written to JSON (`{"bytes": ..., "path": ...}`). Remote URLs and bytes embedded in JSON
//! are refused by name: the engine reads image files (a Parquet file's embedded images are
//! written to files as it is read, `data::parquet_rows`).

use anyhow::{bail, Result};
use serde_json::Value;

/// The path an image entry names (not yet resolved against the data file's folder).
pub fn image_path(v: &Value) -> Result<String> {
    match v {
        Value::String(s) => path_of(s),
        Value::Object(o) => match (o.get("path"), o.get("bytes")) {
            (Some(Value::String(s)), _) => path_of(s),
            (_, Some(b)) if !b.is_null() => bail!(
                "an image given as bytes embedded in JSON is not read; save it to a file and \
                 name its path, or save the dataset as Parquet (whose images are read)"
            ),
            _ => bail!("an image object must name its file: {{\"path\": \"a.png\"}}"),
        },
        other => bail!(
            "an image must be a path (a string) or {{\"path\": ...}}, found {}",
            super::jsonl::json_kind(other)
        ),
    }
}

/// A path or `file://` URL as a path; `http(s)://` and `data:` refused.
pub fn path_of(s: &str) -> Result<String> {
    if let Some(path) = s.strip_prefix("file://") {
        return Ok(path.to_string());
    }
    let lower = s.to_ascii_lowercase();
    if ["http://", "https://", "data:"].iter().any(|p| lower.starts_with(p)) {
        let shown: String = s.chars().take(40).collect();
        bail!(
            "image {shown:?}...: remote and inline (data:) images are not read; save the image \
             to a file and name its path"
        );
    }
    if s.is_empty() {
        bail!("an image path is empty");
    }
    Ok(s.to_string())
}

/// The entries of an `image` / `images` field: one entry or a list of them (null: none).
pub fn image_paths(v: Option<&Value>, key: &str) -> Result<Vec<String>> {
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, x)| image_path(x).map_err(|e| anyhow::anyhow!("{key}[{i}]: {e}")))
            .collect(),
        Some(one) => Ok(vec![image_path(one).map_err(|e| anyhow::anyhow!("{key}: {e}"))?]),
    }
}
