//! Reading JSONL files line by line with errors that name the file and the line. A file whose
//! first character is `[` is read as one JSON array of records instead (LLaMA-Factory's and
//! MMR1's cold-start `.json` files), each record named by the line it starts on; a parquet file
//! (verl's and Hugging Face datasets' format) as its rows, each named by its row number
//! (`parquet_rows`).

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// What to do with a line that does not parse.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum BadLines {
    /// Stop with an error naming the line (the default: data problems should be seen).
    #[default]
    Stop,
    /// Skip the line, count it, and report the count.
    Skip,
}

/// Parsed records with their 1-based line numbers, and how many lines were skipped.
pub struct Lines<T> {
    pub records: Vec<(usize, T)>,
    pub skipped: usize,
}

/// The records of a JSONL file, as text, with the 1-based line each starts on: its non-blank
/// lines, or, when the file's first character is `[`, the elements of that JSON array. A
/// record that is not UTF-8 is an `Err` saying where it breaks (so `--bad-lines skip` can skip
/// it like any bad line). A UTF-8 byte-order mark at the start of the file (as some Windows
/// editors write) is dropped.
pub fn text_lines(path: &Path) -> Result<Vec<(usize, std::result::Result<String, String>)>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut reader = BufReader::new(f);
    let head = reader.fill_buf().with_context(|| format!("cannot read {}", path.display()))?;
    if super::parquet_rows::is_parquet(head) {
        let images = super::parquet_rows::image_cache_dir();
        return super::parquet_rows::parquet_records(path, &images);
    }
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    if head.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        let mut bytes = Vec::new();
        reader
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
        return array_elements(body).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()));
    }
    let mut out = Vec::new();
    for (i, line) in reader.split(b'\n').enumerate() {
        let n = i + 1;
        let mut line = line.with_context(|| format!("{}:{n}: cannot read line", path.display()))?;
        if n == 1 && line.starts_with(b"\xEF\xBB\xBF") {
            line.drain(..3);
        }
        if let Some(t) = utf8_record(line, "line") {
            out.push((n, t));
        }
    }
    Ok(out)
}

/// A record's text, or where it is not UTF-8; `None` when it is blank.
fn utf8_record(bytes: Vec<u8>, what: &str) -> Option<std::result::Result<String, String>> {
    let text = String::from_utf8(bytes).map_err(|e| {
        format!("not valid UTF-8 (at byte {} of the {what})", e.utf8_error().valid_up_to())
    });
    (!text.as_ref().is_ok_and(|t| t.trim().is_empty())).then_some(text)
}

/// The top-level elements of a JSON array, as text with the 1-based line each starts on. A
/// byte scan that tracks strings and nesting (UTF-8 continuation bytes never equal the ASCII
/// bytes it looks for); each element is parsed later, so a malformed one is reported at its
/// own line and `--bad-lines skip` can skip it.
fn array_elements(body: &[u8]) -> Result<Vec<(usize, std::result::Result<String, String>)>> {
    let mut out = Vec::new();
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let (mut line, mut start, mut start_line) = (1usize, 0usize, 1usize);
    let mut closed = false;
    for (i, &b) in body.iter().enumerate() {
        if closed {
            if b == b'\n' {
                line += 1;
            } else if !b.is_ascii_whitespace() {
                bail!("line {line}: text after the closing ] of the JSON array");
            }
            continue;
        }
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                b'\n' => line += 1,
                _ => {}
            }
            continue;
        }
        match b {
            b'\n' => line += 1,
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth == 1 {
                    (start, start_line) = (i + 1, line);
                }
            }
            b'}' if depth == 1 => bail!("line {line}: a }} closes the JSON array"),
            b']' | b',' if depth == 1 => {
                let el = &body[start..i];
                match utf8_record(el.to_vec(), "record") {
                    Some(t) => out.push((element_line(el, start_line), t)),
                    // A blank after the last comma (`[a, b, ]`) is let pass, as before.
                    None if b == b']' => {}
                    None => bail!("line {line}: an empty element in the JSON array"),
                }
                (start, start_line) = (i + 1, line);
                closed = b == b']';
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if !closed {
        bail!("the JSON array is not closed (no ] at the end of the file)");
    }
    Ok(out)
}

/// The line an element's first non-blank character is on (`from`: the line its slice starts).
fn element_line(el: &[u8], from: usize) -> usize {
    let lead = el.iter().take_while(|b| b.is_ascii_whitespace()).filter(|&&b| b == b'\n').count();
    from + lead
}

/// What a JSON value is, for error messages ("found a list").
pub(crate) fn json_kind(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Reads every non-blank line of `path` as a `T`; `check` may reject a parsed record.
pub fn read_jsonl<T: DeserializeOwned>(
    path: &Path,
    bad: BadLines,
    check: impl Fn(&T) -> Result<()>,
) -> Result<Lines<T>> {
    let mut out = Lines { records: vec![], skipped: 0 };
    for (n, line) in text_lines(path)? {
        let parsed = line
            .map_err(anyhow::Error::msg)
            .and_then(|l| serde_json::from_str::<T>(&l).map_err(anyhow::Error::from))
            .and_then(|r| check(&r).map(|_| r));
        match (parsed, bad) {
            (Ok(r), _) => out.records.push((n, r)),
            (Err(e), BadLines::Stop) => bail!("{}:{n}: {e:#}", path.display()),
            (Err(_), BadLines::Skip) => out.skipped += 1,
        }
    }
    if out.skipped > 0 {
        eprintln!("warning: {}: skipped {} bad line(s)", path.display(), out.skipped);
    }
    Ok(out)
}

/// Deserializes an item id written as a string or an integer (items without an `id` are
/// named by their 0-based index, which users naturally write as a number).
pub fn id_string<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    use serde::de::Error;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        other => {
            Err(D::Error::custom(format!("\"id\" must be a string or an integer, not {other}")))
        }
    }
}

/// [`id_string`] for a field that may be absent or null.
pub fn opt_id_string<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct Id(#[serde(deserialize_with = "id_string")] String);
    Ok(Option::<Id>::deserialize(d)?.map(|Id(s)| s))
}

/// An answer written as a string or as a JSON number (`"answer": 72`, `"answer": 3.5`, as
/// datasets converted from GSM8K-style tables have it): the number's shortest decimal text.
pub fn opt_answer_string<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    use serde::de::Error;
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(serde_json::Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => {
            Err(D::Error::custom(format!("\"answer\" must be a string or a number, not {other}")))
        }
    }
}

/// Writes one JSON object per line, atomically (a reader never sees half a file).
pub fn write_jsonl<T: serde::Serialize>(path: &Path, records: &[T]) -> Result<()> {
    let mut s = String::new();
    for r in records {
        s.push_str(&serde_json::to_string(r)?);
        s.push('\n');
    }
    crate::fs::write_atomic(path, s.as_bytes())
}
