//! RL items in the MMR1 schema: `problem` (or `question`), `answer`, optional `images` (or
//! `image`: one path or a list), `id` and multiple-choice `options` (or `choices`: a list, or
//! an object keyed by the letters A, B, C...). verl's rows read too: `prompt` as a list of
//! chat messages (one user turn, whose text, or text and image parts, is the problem, after an
//! optional system turn) and `reward_model.ground_truth` as the answer. A record-level
//! `system` string is the system turn unless the prompt has its own (as in SFT data).

use super::jsonl::{read_jsonl, BadLines};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(try_from = "RawRlItem")]
pub struct RlItem {
    /// Defaults to the 0-based index of the item in its file.
    pub id: Option<String>,
    pub problem: String,
    /// A string, or a number (its decimal text).
    pub answer: Option<String>,
    /// Image files; `load_rl_items_with_images` resolves them relative to the JSONL file.
    pub images: Vec<String>,
    /// Option texts in letter order (A first).
    pub options: Option<Vec<String>>,
    /// The prompt's system turn, replacing the chat template's default one (`None`: the
    /// template's own, Qwen2.5's "You are Qwen, ..."; verl's `apply_chat_template` does the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
}

/// An item as written: the MMR1 fields and verl's (`prompt` messages, `reward_model`).
#[derive(Deserialize)]
struct RawRlItem {
    #[serde(default, deserialize_with = "super::jsonl::opt_id_string")]
    id: Option<String>,
    #[serde(alias = "question", alias = "prompt", deserialize_with = "problem_text")]
    problem: (Option<String>, String),
    #[serde(default, deserialize_with = "system_text")]
    system: Option<String>,
    #[serde(default, deserialize_with = "super::jsonl::opt_answer_string")]
    answer: Option<String>,
    #[serde(default)]
    reward_model: Option<RewardModel>,
    #[serde(default, alias = "image", deserialize_with = "one_or_many")]
    images: Vec<String>,
    #[serde(default, alias = "choices", deserialize_with = "options_list")]
    options: Option<Vec<String>>,
}

/// verl's `reward_model` column: the reference is its `ground_truth`.
#[derive(Deserialize)]
struct RewardModel {
    #[serde(default, deserialize_with = "super::jsonl::opt_answer_string")]
    ground_truth: Option<String>,
}

impl TryFrom<RawRlItem> for RlItem {
    type Error = String;

    fn try_from(r: RawRlItem) -> std::result::Result<Self, String> {
        let truth = r.reward_model.and_then(|m| m.ground_truth);
        let answer = match (r.answer, truth) {
            (Some(a), Some(t)) if a != t => {
                return Err(format!(
                    "\"answer\" {a:?} and reward_model.ground_truth {t:?} differ: keep one"
                ))
            }
            (a, t) => a.or(t),
        };
        // The prompt's own system turn wins over a record-level one, as in SFT data.
        let (own_system, problem) = r.problem;
        let system = own_system.or(r.system.filter(|s| !s.is_empty()));
        Ok(RlItem { id: r.id, problem, answer, images: r.images, options: r.options, system })
    }
}

/// The problem: a string, or verl's `prompt` messages (one user turn; its text and image
/// parts as `sft_data` reads a message, each image part an `<image>` marker).
fn problem_text<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<(Option<String>, String), D::Error> {
    use serde::de::Error;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok((None, s)),
        v @ serde_json::Value::Array(_) => super::sft_data::system_and_user_prompt(&v)
            .map_err(|e| D::Error::custom(format!("{e:#}"))),
        other => Err(D::Error::custom(format!(
            "the problem must be a string or a list of chat messages, not {}",
            super::jsonl::json_kind(&other)
        ))),
    }
}

/// A record-level `system` string (LLaMA-Factory's system column), or null.
fn system_text<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    use serde::de::Error;
    match Option::<serde_json::Value>::deserialize(d)? {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(D::Error::custom(format!(
            "\"system\" must be a string, not {}",
            super::jsonl::json_kind(&other)
        ))),
    }
}

impl RlItem {
    pub fn id_or(&self, index: usize) -> String {
        self.id.clone().unwrap_or_else(|| index.to_string())
    }
}

/// `"image": "a.png"` or `"images": ["a.png", "b.png"]` (or null); entries as
/// `data::image_ref` reads them (paths, `file://` URLs, `{"path": ...}` objects).
fn one_or_many<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    super::image_ref::image_paths(v.as_ref(), "images").map_err(serde::de::Error::custom)
}

/// `options`: null, a list of texts (or numbers), or an object keyed by letters (`"A"`,
/// `"(b)"`, `"C."`) running from A without a gap, as MathVista- and MMMU-style tables have it.
fn options_list<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Vec<String>>, D::Error> {
    use serde::de::Error;
    use serde_json::Value;
    let text = |v: &Value| match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        other => {
            Err(D::Error::custom(format!("an option must be a text or a number, not {other}")))
        }
    };
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(list)) => list.iter().map(text).collect::<Result<_, _>>().map(Some),
        Some(Value::Object(map)) => {
            let mut keyed = Vec::with_capacity(map.len());
            for (k, v) in &map {
                let letter = k.trim().trim_start_matches('(').trim_end_matches([')', '.', ':']);
                let mut cs = letter.chars();
                match (cs.next(), cs.next()) {
                    (Some(c), None) if c.is_ascii_alphabetic() => {
                        keyed.push((c.to_ascii_uppercase(), text(v)?))
                    }
                    _ => {
                        return Err(D::Error::custom(format!(
                            "options keyed by {k:?}: an object of options is keyed by the letters A, B, C..."
                        )))
                    }
                }
            }
            keyed.sort();
            for (i, (c, _)) in keyed.iter().enumerate() {
                if *c as usize != 'A' as usize + i {
                    return Err(D::Error::custom(format!(
                        "options keyed by {:?}: the letters must run from A without a gap or repeat",
                        keyed.iter().map(|(c, _)| *c).collect::<String>()
                    )));
                }
            }
            Ok(Some(keyed.into_iter().map(|(_, t)| t).collect()))
        }
        Some(other) => Err(D::Error::custom(format!(
            "\"options\" must be a list of texts or an object keyed by letters, not {other}"
        ))),
    }
}

/// Loads RL items; an item without an answer (or with an empty one) is an error naming
/// its line, as is a duplicate id. Items with images are refused: this is the loader of the
/// text-only paths (training, scoring); `eval` of a Qwen2.5-VL checkpoint uses
/// [`load_rl_items_with_images`].
pub fn load_rl_items(path: &Path, bad: BadLines) -> Result<Vec<RlItem>> {
    load(path, bad, Images::Refuse)
}

/// [`load_rl_items`] for grading alone (`reward`, `score --from-rollouts`): items may name
/// images, which are resolved but not opened (grading reads the answer only).
pub fn load_rl_items_to_grade(path: &Path, bad: BadLines) -> Result<Vec<RlItem>> {
    load(path, bad, Images::Unread)
}

/// What a loader does with an item's images.
#[derive(Clone, Copy, PartialEq)]
enum Images {
    Refuse,
    Check,
    Unread,
}

/// [`load_rl_items`] accepting `images`: each path is resolved relative to the JSONL file's
/// folder (absolute paths stay) and must be an existing file whose header decodes; a missing
/// or unreadable one is an error naming the line, the item id and the path, before any model
/// time is spent (with `BadLines::Skip`, the item is skipped and counted).
pub fn load_rl_items_with_images(path: &Path, bad: BadLines) -> Result<Vec<RlItem>> {
    load(path, bad, Images::Check)
}

fn resolve_image(jsonl: &Path, image: &str) -> PathBuf {
    jsonl.parent().unwrap_or(Path::new("")).join(image)
}

fn load(path: &Path, bad: BadLines, images: Images) -> Result<Vec<RlItem>> {
    let lines = read_jsonl::<RlItem>(path, bad, |it| {
        match &it.answer {
            None => bail!("item has no \"answer\""),
            Some(a) if a.trim().is_empty() => bail!("item has an empty \"answer\""),
            _ => {}
        }
        if it.problem.trim().is_empty() {
            bail!("item has an empty \"problem\"");
        }
        if !it.images.is_empty() && images == Images::Refuse {
            bail!("item has images; this command runs text-only here (items with images need a Qwen2.5-VL checkpoint)");
        }
        if images == Images::Unread {
            return Ok(());
        }
        let who = it.id.as_ref().map(|id| format!("item {id:?}: ")).unwrap_or_default();
        for im in &it.images {
            let p = resolve_image(path, im);
            if !p.is_file() {
                bail!("{who}image {im:?} not found (looked for {})", p.display());
            }
            // The header must decode too: a broken file is found here, before model time.
            image::ImageReader::open(&p)
                .and_then(|r| r.with_guessed_format())
                .map_err(anyhow::Error::from)
                .and_then(|r| r.into_dimensions().map_err(anyhow::Error::from))
                .map_err(|e| {
                    anyhow::anyhow!("{who}image {im:?} ({}) cannot be read: {e}", p.display())
                })?;
        }
        Ok(())
    })?;
    let mut items: Vec<RlItem> = Vec::with_capacity(lines.records.len());
    let mut seen = std::collections::HashMap::new();
    for (line, mut it) in lines.records {
        let id = it.id_or(items.len());
        if let Some(prev) = seen.insert(id.clone(), line) {
            bail!("{}:{line}: id {id:?} already used on line {prev}", path.display());
        }
        it.id = Some(id);
        for im in &mut it.images {
            *im = resolve_image(path, im).to_string_lossy().into_owned();
        }
        items.push(it);
    }
    if items.is_empty() {
        bail!("{}: no items", path.display());
    }
    Ok(items)
}
