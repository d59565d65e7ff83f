//! A checkpoint's own chat template, rendered as transformers' `apply_chat_template` renders
//! it, so that prompts and SFT conversations are the text the model was tuned on and that
//! transformers and vLLM would give it. Where transformers looks (`tokenization_utils_base`,
//! `processing_utils`): `chat_template.jinja` beside the tokenizer, else the `chat_template`
//! of `tokenizer_config.json` (a string, or a list of named templates: "default" is used),
//! else `chat_template.json` (a processor's, as Qwen2.5-VL checkpoints have).
//!
//! Jinja as transformers sets it up (`utils/chat_template_utils._compile_jinja_template`):
//! `trim_blocks` and `lstrip_blocks`, loop controls, `raise_exception(msg)`, `strftime_now(fmt)`,
//! a `tojson` that writes like Python's `json.dumps` (no ASCII or HTML escaping, `", "` and
//! `": "` separators), and the special tokens (`bos_token`, `eos_token`, ...) as variables;
//! Python's string methods (`.strip()`, `.split()`, `.startswith()`...) through minijinja's
//! pycompat. Not supported: `{% generation %}` blocks (transformers' assistant masks), which
//! are refused by name when the template is read.

use crate::tokenizer::Message;
use anyhow::{bail, Context, Result};
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};
use std::ops::Range;
use std::path::{Path, PathBuf};

const NAME: &str = "chat";

/// A compiled chat template and the special tokens it may name.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    /// The file it came from (for error messages).
    origin: PathBuf,
    specials: Vec<(String, String)>,
}

impl ChatTemplate {
    /// The template of the tokenizer files in `dir`, where transformers looks for it; `None`
    /// when there is none.
    pub fn from_dir(dir: &Path) -> Result<Option<Self>> {
        let config = read_json(&dir.join("tokenizer_config.json"))?;
        let specials = config.as_ref().map(special_tokens).unwrap_or_default();
        let jinja = dir.join("chat_template.jinja");
        if jinja.exists() {
            let src = std::fs::read_to_string(&jinja)
                .with_context(|| format!("cannot read {}", jinja.display()))?;
            return Self::new(src, jinja, specials).map(Some);
        }
        if let Some(c) = &config {
            if let Some(src) = template_of(c.get("chat_template")).with_context(|| {
                format!("{}: chat_template", dir.join("tokenizer_config.json").display())
            })? {
                return Self::new(src, dir.join("tokenizer_config.json"), specials).map(Some);
            }
        }
        let processor = dir.join("chat_template.json");
        if let Some(c) = read_json(&processor)? {
            if let Some(src) = template_of(c.get("chat_template"))
                .with_context(|| format!("{}: chat_template", processor.display()))?
            {
                return Self::new(src, processor, specials).map(Some);
            }
        }
        Ok(None)
    }

    /// Compiles `source` (read from `origin`); a syntax error names the file and the line.
    pub fn new(source: String, origin: PathBuf, specials: Vec<(String, String)>) -> Result<Self> {
        if source.contains("{% generation %}") || source.contains("{%- generation") {
            bail!(
                "{}: the chat template uses {{% generation %}} blocks, which this engine does \
                 not support; set MMR1_CHAT_TEMPLATE=chatml to use the built-in Qwen ChatML",
                origin.display()
            );
        }
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source).map_err(|e| {
            anyhow::anyhow!("{}: the chat template does not compile: {e:#}", origin.display())
        })?;
        Ok(ChatTemplate { env, origin, specials })
    }

    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self.env.get_template(NAME).expect("added in new");
        let mut ctx: Vec<(String, Value)> =
            self.specials.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect();
        ctx.push(("messages".into(), Value::from_serialize(messages)));
        ctx.push(("add_generation_prompt".into(), Value::from(add_generation_prompt)));
        let ctx: std::collections::BTreeMap<String, Value> = ctx.into_iter().collect();
        tmpl.render(ctx).map_err(|e| {
            anyhow::anyhow!("{}: rendering the chat template failed: {e:#}", self.origin.display())
        })
    }

    /// The whole conversation rendered, with the byte ranges of the assistant turns: for the
    /// turn at `i`, what rendering `messages[..=i]` adds to rendering `messages[..i]` with the
    /// generation prompt (the reply and its end-of-turn text, as the built-in template's spans).
    /// A template that renders earlier turns differently once later ones follow (one that drops
    /// old reasoning, say) cannot give spans this way and is an error naming the turn.
    pub fn render_with_spans(&self, messages: &[Message]) -> Result<(String, Vec<Range<usize>>)> {
        let full = self.render(messages, false)?;
        let mut spans = Vec::new();
        for (i, m) in messages.iter().enumerate().filter(|(_, m)| m.role == "assistant") {
            let before = self.render(&messages[..i], true)?;
            let through = self.render(&messages[..=i], false)?;
            if !through.starts_with(&before) || !full.starts_with(&through) {
                bail!(
                    "{}: the chat template renders message {i} ({}) differently once later \
                     messages follow, so the assistant tokens to train cannot be found; set \
                     MMR1_CHAT_TEMPLATE=chatml to use the built-in Qwen ChatML",
                    self.origin.display(),
                    m.role
                );
            }
            spans.push(before.len()..through.len());
        }
        Ok((full, spans))
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    Ok(Some(v))
}

/// A `chat_template` field: a string, or transformers' list of `{name, template}` (the one
/// named "default").
fn template_of(v: Option<&serde_json::Value>) -> Result<Option<String>> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Array(list)) => {
            let named =
                |n: &str| list.iter().find(|t| t.get("name").and_then(|x| x.as_str()) == Some(n));
            let t = named("default").context("a list of templates with none named \"default\"")?;
            let s = t.get("template").and_then(|x| x.as_str()).context("no \"template\" string")?;
            Ok(Some(s.to_string()))
        }
        Some(other) => bail!("expected a string or a list of templates, found {other}"),
    }
}

/// The special tokens of `tokenizer_config.json` (a string or an added-token object with
/// `content`), which transformers passes to the template as variables.
fn special_tokens(config: &serde_json::Value) -> Vec<(String, String)> {
    ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"]
        .iter()
        .filter_map(|&k| {
            let v = config.get(k)?;
            let s = v.as_str().or_else(|| v.get("content")?.as_str())?;
            Some((k.to_string(), s.to_string()))
        })
        .collect()
}

fn raise_exception(msg: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// transformers' `strftime_now`: the local time formatted; the formats chat templates use
/// (`%d %b %Y`, `%Y-%m-%d`) from the UTC date.
fn strftime_now(fmt: String) -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    strftime_day(&fmt, days)
}

/// `fmt` with `%Y %m %d %b %B %%` of the day `days` after 1970-01-01; other codes kept as
/// written.
fn strftime_day(fmt: &str, days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    const FULL: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('b') => out.push_str(MONTHS[m as usize - 1]),
            Some('B') => out.push_str(FULL[m as usize - 1]),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 to (year, month, day) (H. Hinnant's civil-from-days algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// transformers' `tojson` filter: `json.dumps(x, ensure_ascii=False, indent=indent)`, i.e.
/// Python's separators (`", "`, `": "`; `","` at line ends when indented), keys in their order.
fn tojson(v: Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_py_json(&v, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn write_py_json(
    v: &Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), Error> {
    use minijinja::value::ValueKind as K;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    let quoted = |s: &str| serde_json::to_string(s).expect("a string serializes");
    match v.kind() {
        K::Undefined | K::None => out.push_str("null"),
        K::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        K::String => out.push_str(&quoted(v.as_str().unwrap_or_default())),
        K::Number => {
            let j = serde_json::to_value(v)
                .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
            out.push_str(&j.to_string());
        }
        kind => {
            // A map writes `"key": value` items, a sequence its values; the layout is one.
            let is_map = kind == K::Map;
            let items: Vec<Value> = v.try_iter()?.collect();
            out.push(if is_map { '{' } else { '[' });
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                if is_map {
                    out.push_str(&quoted(&x.to_string()));
                    out.push_str(": ");
                    write_py_json(&v.get_item(x)?, indent, depth + 1, out)?;
                } else {
                    write_py_json(x, indent, depth + 1, out)?;
                }
            }
            if !items.is_empty() {
                newline(out, depth);
            }
            out.push(if is_map { '}' } else { ']' });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_819), (2027, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        // Python: (date(2026, 11, 27) - date(1970, 1, 1)).days, and 2024-02-29.
        assert_eq!(civil_from_days(20_784), (2026, 11, 27));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        // Around March 1 (the algorithm's year start), a non-leap century, an era's ends.
        for (days, ymd) in [
            (11_017, (2000, 3, 1)),
            (47_540, (2100, 2, 28)),
            (47_541, (2100, 3, 1)),
            (-135_080, (1600, 3, 1)),
            (157_113, (2400, 2, 29)),
        ] {
            assert_eq!(civil_from_days(days), ymd, "{days}");
        }
    }

    #[test]
    fn strftime_formats_a_day() {
        assert_eq!(
            strftime_day("%Y-%m-%d|%d %b %Y|%B|100%%|%H|%", 20_784),
            "2026-11-27|27 Nov 2026|November|100%|%H|%"
        );
        assert_eq!(strftime_day("%d %B", 19_782), "29 February");
        // The template function: today's UTC date in the same format, a year of this century.
        let t = ChatTemplate::new("{{ strftime_now('%Y-%m-%d') }}".into(), "t".into(), vec![])
            .unwrap()
            .render(&[], false)
            .unwrap();
        let (y, m, d) = (&t[..4], &t[5..7], &t[8..]);
        assert!(
            t.len() == 10
                && ("2026".."2100").contains(&y)
                && ("01".."13").contains(&m)
                && ("01".."32").contains(&d),
            "{t}"
        );
    }

    #[test]
    fn tojson_writes_like_python() {
        let t = ChatTemplate::new(
            "{{ x | tojson }}|{{ y | tojson(indent=2) }}".into(),
            PathBuf::from("t"),
            vec![],
        )
        .unwrap();
        let tmpl = t.env.get_template(NAME).unwrap();
        let ctx = minijinja::context! {
            x => Value::from_serialize(serde_json::json!({"b": [1, 2.5, "é<"], "a": {"x": null}, "e": []})),
            y => Value::from_serialize(serde_json::json!({"k": [[1], {"a": 2}, []]})),
        };
        // Python: json.dumps(..., ensure_ascii=False): no escaping of é or <.
        let s = tmpl.render(ctx).unwrap();
        assert_eq!(
            s,
            "{\"a\": {\"x\": null}, \"b\": [1, 2.5, \"é<\"], \"e\": []}|{\n  \"k\": [\n    [\n      1\n    ],\n    {\n      \"a\": 2\n    },\n    []\n  ]\n}"
        );
    }
}
