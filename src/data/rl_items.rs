//! RL items in the MMR1 schema: `problem` (or `question`), `answer`, optional `images`,
//! `id` and multiple-choice `options`.

use super::jsonl::{read_jsonl, BadLines};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RlItem {
    /// Defaults to the 0-based index of the item in its file.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(alias = "question", alias = "prompt")]
    pub problem: String,
    #[serde(default)]
    pub answer: Option<String>,
    #[serde(default)]
    pub images: Vec<String>,
    #[serde(default)]
    pub options: Option<Vec<String>>,
}

impl RlItem {
    pub fn id_or(&self, index: usize) -> String {
        self.id.clone().unwrap_or_else(|| index.to_string())
    }
}

/// Loads RL items; an item without an answer (or with an empty one) is an error naming
/// its line, as is a duplicate id. Image items are refused until the vision tower exists.
pub fn load_rl_items(path: &Path, bad: BadLines) -> Result<Vec<RlItem>> {
    let lines = read_jsonl::<RlItem>(path, bad, |it| {
        match &it.answer {
            None => bail!("item has no \"answer\""),
            Some(a) if a.trim().is_empty() => bail!("item has an empty \"answer\""),
            _ => {}
        }
        if it.problem.trim().is_empty() {
            bail!("item has an empty \"problem\"");
        }
        if !it.images.is_empty() {
            bail!("item has images; this build trains text-only Qwen2 models (Qwen2.5-VL support is planned)");
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
        items.push(it);
    }
    if items.is_empty() {
        bail!("{}: no items", path.display());
    }
    Ok(items)
}
