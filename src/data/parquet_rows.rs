//! Parquet data files (what verl's preprocessing and Hugging Face `datasets` write), read as the
//! same records as JSONL: each row becomes one JSON object, named by its 1-based row number
//! where a JSONL record is named by its line. Nested columns keep their shape (a list of
//! structs is a list of objects, a map an object), so verl's `prompt` messages and
//! `reward_model` struct, and a `messages` column, read exactly as their JSON forms do.
//!
//! Images stored in the file (the `datasets` `Image` feature: a struct of `bytes` and `path`)
//! are written once to a content-addressed cache folder and the row names the cached file
//! (`{"path": ...}`), so everything after loading works on image files as before and a row's
//! JSON stays small. The folder is `MMR1_IMAGE_CACHE`, else `$XDG_CACHE_HOME/mmr1-fast/images`,
//! else `~/.cache/mmr1-fast/images`.

use anyhow::{anyhow, Context, Result};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Whether `head` (a file's first bytes) starts like a parquet file.
pub fn is_parquet(head: &[u8]) -> bool {
    head.starts_with(b"PAR1")
}

/// The folder that embedded images are written to (see the module doc).
pub fn image_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MMR1_IMAGE_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("mmr1-fast").join("images")
}

/// The rows of the parquet file at `path` as JSON text, with their 1-based row numbers (the
/// shape of `jsonl::text_lines`); embedded images are written under `images`.
pub fn parquet_records(
    path: &Path,
    images: &Path,
) -> Result<Vec<(usize, std::result::Result<String, String>)>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| anyhow!("{}: not a readable parquet file: {e}", path.display()))?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| anyhow!("{}: cannot read the rows: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, row) in rows.enumerate() {
        let n = i + 1;
        // A row that does not decode stops the file (the reader cannot go past it); a codec
        // this build leaves out (zstd, brotli) says how to rewrite the file.
        let row = row.map_err(|e| {
            let e = e.to_string();
            let hint = if e.contains("Disabled feature") {
                "; rewrite the file with a codec read here (snappy, gzip, lz4, none): \
                 pyarrow.parquet.write_table(table, path, compression=\"snappy\")"
            } else {
                ""
            };
            anyhow!("{}: row {n}: {e}{hint}", path.display())
        })?;
        let value =
            row_json(&row, images).with_context(|| format!("{}: row {n}", path.display()))?;
        out.push((n, Ok(value.to_string())));
    }
    Ok(out)
}

/// A row (or a struct column) as a JSON object; an image struct as `{"path": <cached file>}`.
fn row_json(row: &Row, images: &Path) -> Result<Value> {
    if let Some(bytes) = image_bytes(row) {
        let path = cache_image(bytes, images)?;
        let mut o = Map::new();
        o.insert("bytes".into(), Value::Null);
        o.insert("path".into(), Value::String(path.to_string_lossy().into_owned()));
        return Ok(Value::Object(o));
    }
    let mut o = Map::new();
    for (name, field) in row.get_column_iter() {
        o.insert(name.clone(), field_json(field, images)?);
    }
    Ok(Value::Object(o))
}

fn field_json(field: &Field, images: &Path) -> Result<Value> {
    Ok(match field {
        Field::Group(row) => row_json(row, images)?,
        Field::ListInternal(list) => Value::Array(
            list.elements().iter().map(|f| field_json(f, images)).collect::<Result<_>>()?,
        ),
        Field::MapInternal(map) => {
            let mut o = Map::new();
            for (k, v) in map.entries() {
                let key = match k {
                    Field::Str(s) => s.clone(),
                    other => other.to_json_value().to_string(),
                };
                o.insert(key, field_json(v, images)?);
            }
            Value::Object(o)
        }
        // Scalars as parquet's JSON conversion writes them (other bytes as base64 text).
        other => other.to_json_value(),
    })
}

/// The bytes of an image struct: a group whose fields are `bytes` (binary, not null) and
/// optionally `path` (the name the image had when it was stored), as `datasets` writes it.
fn image_bytes(row: &Row) -> Option<&[u8]> {
    let mut bytes = None;
    for (name, field) in row.get_column_iter() {
        match (name.as_str(), field) {
            ("bytes", Field::Bytes(b)) => bytes = Some(b.data()),
            ("path", Field::Str(_) | Field::Null) => {}
            _ => return None,
        }
    }
    bytes
}

/// Writes `bytes` to `dir/<xxh3-128 of the bytes>.<format>` unless that file is already there
/// (with those bytes' length), atomically: a file of the cache is whole or absent, whatever
/// processes share the folder (the ranks of a data-parallel run load the same file at once:
/// each writes a temporary file of its own, and renames it over the same content).
fn cache_image(bytes: &[u8], dir: &Path) -> Result<PathBuf> {
    let ext = if bytes.starts_with(b"\x89PNG") {
        "png"
    } else if bytes.starts_with(b"\xFF\xD8\xFF") {
        "jpg"
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        "webp"
    } else {
        "img"
    };
    let hash = twox_hash::XxHash3_128::oneshot(bytes);
    let path = dir.join(format!("{hash:032x}.{ext}"));
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64) {
        return Ok(path);
    }
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create the image cache {} (set MMR1_IMAGE_CACHE to a writable folder)",
            dir.display()
        )
    })?;
    let tmp = dir.join(format!(
        ".{hash:032x}.{}.{:?}.tmp",
        std::process::id(),
        std::thread::current().id()
    ));
    let written = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow!("cannot write an embedded image to {}: {e}", path.display()));
    }
    Ok(path)
}
