//! Final-answer extraction and the MMR1 format check.
//!
//! Everything here works on ASCII patterns found with `str::find`, so every slice index lands on
//! a UTF-8 boundary: no input can make these functions panic.

use super::prose;
use std::borrow::Cow;

/// For every byte index holding an unescaped `{`, the index of its matching `}` (one linear
/// stack pass, so many unbalanced `\boxed{` cannot make extraction quadratic).
///
/// A backslash escapes the next character, so `\{` / `\}` (literal set braces) do not group and
/// `\\{` does.
pub(crate) fn brace_matches(s: &str) -> Vec<Option<usize>> {
    let b = s.as_bytes();
    let mut out = vec![None; b.len()];
    let mut stack = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'{' => stack.push(i),
            b'}' => {
                if let Some(open) = stack.pop() {
                    out[open] = Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Trims whitespace but keeps a space that a trailing backslash escapes (`a\ `), so that
/// re-boxing an extracted answer gives back the same answer.
pub(crate) fn trim_answer(s: &str) -> &str {
    let s = s.trim_start();
    let t = s.trim_end();
    let trailing_backslashes = t.bytes().rev().take_while(|&c| c == b'\\').count();
    if trailing_backslashes % 2 == 1 && t.len() < s.len() {
        // `t` ends in a lone backslash that escaped the whitespace we just cut: keep one char.
        let next = s[t.len()..].chars().next().map_or(0, char::len_utf8);
        &s[..t.len() + next]
    } else {
        t
    }
}

/// Whether every unescaped brace of `s` has its partner.
fn balanced(s: &str) -> bool {
    let matches = brace_matches(s);
    let b = s.as_bytes();
    let (mut opens, mut closes, mut i) = (0usize, 0usize, 0);
    while i < b.len() {
        match b[i] {
            // A final lone backslash would escape whatever closes a re-boxed answer.
            b'\\' if i + 1 == b.len() => return false,
            b'\\' => i += 1,
            b'{' => opens += 1,
            b'}' => closes += 1,
            _ => {}
        }
        i += 1;
    }
    opens == closes && matches.iter().filter(|m| m.is_some()).count() == opens
}

/// Result of scanning for `\boxed{..}` / `\fbox{..}`.
enum Boxed<'a> {
    /// No box command at all.
    Absent,
    /// The last box is cut off (`\boxed{12` at the end of a truncated response).
    Unbalanced,
    /// The last box, with the boxes just before it that only connectors separate
    /// (`\boxed{1}, \boxed{2}`, `\(\boxed{6}\) and \(\boxed{8}\)`), in order.
    Found(Vec<&'a str>),
}

/// Whether the text between two boxes only joins them: whitespace, math delimiters,
/// punctuation and the words "and" / "or" (bare or in `\text{}`), `\quad`.
fn connector(gap: &str) -> bool {
    let mut t = gap.to_string();
    for token in ["\\text{", "\\qquad", "\\quad", "\\(", "\\)", "\\[", "\\]", "\\,", "\\ "] {
        t = t.replace(token, " ");
    }
    t.split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '$' | '}' | '.'))
        .all(|w| w.is_empty() || w == "and" || w == "or")
}

/// Words that revise or sequence answers: boxes with one of them between keep only the last
/// (`\boxed{1}, then \boxed{2}`, `\boxed{3}, no: \boxed{4}`).
const REVISING: &[&str] = &[
    "then",
    "but",
    "wait",
    "actually",
    "instead",
    "not",
    "no",
    "so",
    "hence",
    "thus",
    "therefore",
    "finally",
    "correct",
    "corrected",
    "wrong",
    "incorrect",
    "rather",
    "otherwise",
];

/// Whether two boxes list two answers (after Math-Verify's `latex2sympy2_extended`
/// `extract_boxed_content`, which joins boxes closer than 70 characters with `and` / `or` /
/// `,` / `;` between them): only connectors between them; or under 10 characters of
/// punctuation; or, for two different answers, under 70 characters with a separator, at most
/// four other words (`\boxed{1} papers and \boxed{2} bins`, `\boxed{(3, 3)} \text{ for part (a)
/// and } \boxed{(1, 1)}`, `y_1 = \boxed{..} \) and \( y_2 = \boxed{..}`), no sentence break and
/// no revising word.
fn joins(gap: &str, before: &str, after: &str) -> bool {
    if connector(gap) {
        return true;
    }
    if gap.len() >= 70 || before.trim() == after.trim() {
        return false;
    }
    // `\boxed{35 cm} ++++++ \boxed{4}`; but a relation or arrow links one value to the next
    // (`\boxed{\frac12} = \boxed{0.5}`, `\boxed{3} -> \boxed{4}`).
    if gap.len() < 10
        && !gap.contains(|c: char| c.is_alphanumeric() || matches!(c, '\\' | '=' | '<' | '>' | '→'))
    {
        return true;
    }
    let sentence_break = gap.contains(['!', '?', '\n'])
        || gap
            .match_indices('.')
            .any(|(k, _)| gap[k + 1..].starts_with(char::is_whitespace) || k + 1 == gap.len());
    let mut t = gap.to_string();
    for token in ["\\text{", "\\qquad", "\\quad", "\\(", "\\)", "\\[", "\\]", "\\,", "\\ "] {
        t = t.replace(token, " ");
    }
    let words: Vec<&str> = t
        .split(|c: char| {
            c.is_whitespace() || matches!(c, ',' | ';' | '$' | '{' | '}' | '(' | ')' | ':')
        })
        .filter(|w| !w.is_empty())
        .collect();
    let separated = gap.contains([',', ';']) || words.iter().any(|w| *w == "and" || *w == "or");
    let others: Vec<&&str> = words.iter().filter(|w| **w != "and" && **w != "or").collect();
    separated
        && !sentence_break
        && others.len() <= 4
        && !others.iter().any(|w| REVISING.contains(&w.to_ascii_lowercase().as_str()))
}

/// The last *outermost* box, so `\boxed{\boxed{5}}` yields `\boxed{5}` (normalization unwraps
/// it later) and re-boxing an extracted answer round-trips; with the boxes joined to it by
/// connectors only (several answers boxed one by one).
fn last_boxed(s: &str) -> Boxed<'_> {
    const CMDS: [&str; 2] = ["\\boxed", "\\fbox"];
    let b = s.as_bytes();
    let matches = brace_matches(s);
    // (start of the command, content, end of the box)
    let mut found: Vec<(usize, &str, usize)> = Vec::new();
    let mut unbalanced_last = false;
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        let Some(cmd) = CMDS.iter().find(|c| b[i..].starts_with(c.as_bytes())) else {
            // Skip the escaped character so `\\boxed` text and `\{` are not misread.
            i += 2;
            continue;
        };
        let begin = i;
        let mut j = i + cmd.len();
        if b.get(j).is_some_and(|c| c.is_ascii_alphabetic()) {
            i = j; // `\boxedfoo` is another command
            continue;
        }
        while b.get(j).is_some_and(|c| c.is_ascii_whitespace()) {
            j += 1;
        }
        match b.get(j) {
            Some(b'{') => match matches[j] {
                Some(close) => {
                    found.push((begin, &s[j + 1..close], close + 1));
                    unbalanced_last = false;
                    i = close + 1;
                }
                None => {
                    unbalanced_last = true;
                    i = j + 1;
                }
            },
            // TeX also accepts `\boxed 5` / `\boxed5`: the argument is the next token.
            Some(_) => {
                let end =
                    s[j..].find(|c: char| c.is_whitespace() || c == '$').map_or(s.len(), |k| j + k);
                found.push((begin, &s[j..end], end));
                unbalanced_last = false;
                i = end;
            }
            None => {
                unbalanced_last = true;
                i = j;
            }
        }
    }
    if unbalanced_last {
        return Boxed::Unbalanced;
    }
    let Some(&(mut first, _, _)) = found.last() else { return Boxed::Absent };
    let mut k = found.len() - 1;
    while k > 0 && joins(&s[found[k - 1].2..first], found[k - 1].1, found[k].1) {
        k -= 1;
        first = found[k].0;
    }
    let mut group: Vec<&str> = Vec::new();
    for &(_, x, _) in &found[k..] {
        // The same answer boxed twice in a row is one answer.
        if group.last().is_none_or(|y| y.trim() != x.trim()) {
            group.push(x);
        }
    }
    Boxed::Found(group)
}

/// The math spans of `s` (`$..$`, `$$..$$`, `\(..\)`, `\[..\]`), in order. Inline spans
/// (`$`, `\(`) do not cross a line break, as in LaTeX.
fn math_spans(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let rest = &s[i..];
        let (open, close, inline) = if rest.starts_with("$$") {
            ("$$", "$$", false)
        } else if rest.starts_with('$') {
            ("$", "$", true)
        } else if rest.starts_with("\\(") {
            ("\\(", "\\)", true)
        } else if rest.starts_with("\\[") {
            ("\\[", "\\]", false)
        } else if rest.starts_with('\\') {
            i += rest.chars().nth(1).map_or(1, |c| 1 + c.len_utf8()); // `\$` is no delimiter
            continue;
        } else {
            i += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        };
        let body = &rest[open.len()..];
        // The closing delimiter is not an escaped `\$` inside the span.
        let end = body
            .match_indices(close)
            .map(|(k, _)| k)
            .find(|&k| !(close == "$" && body[..k].ends_with('\\')));
        match end {
            Some(k) if !(inline && body[..k].contains('\n')) => {
                if !body[..k].trim().is_empty() {
                    out.push(body[..k].trim());
                }
                i += open.len() + k + close.len();
            }
            _ => i += open.len(),
        }
    }
    out
}

/// Byte ranges of `s` between math delimiters, delimiters included, inline ones across line
/// breaks too: the text a number in prose must stay out of (`Answer $ \n 9 \n $` is broken
/// math, not the prose number 9). A lone `$` is a currency sign.
fn math_regions(s: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let rest = &s[i..];
        let (open, close) = if rest.starts_with("$$") {
            ("$$", "$$")
        } else if rest.starts_with('$') {
            ("$", "$")
        } else if rest.starts_with("\\(") {
            ("\\(", "\\)")
        } else if rest.starts_with("\\[") {
            ("\\[", "\\]")
        } else if rest.starts_with('\\') {
            i += rest.chars().nth(1).map_or(1, |c| 1 + c.len_utf8());
            continue;
        } else {
            i += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        };
        let body = &rest[open.len()..];
        let end = body
            .match_indices(close)
            .map(|(k, _)| k)
            .find(|&k| !(close == "$" && body[..k].ends_with('\\')));
        match end {
            Some(k) => {
                out.push((i, i + open.len() + k + close.len()));
                i += open.len() + k + close.len();
            }
            None => i += open.len(),
        }
    }
    out
}

/// Byte offset of the last case-insensitive occurrence of ASCII `pat` in `s`.
fn rfind_ascii_ci(s: &str, pat: &str) -> Option<usize> {
    let (h, p) = (s.as_bytes(), pat.as_bytes());
    if p.len() > h.len() {
        return None;
    }
    (0..=h.len() - p.len()).rev().find(|&i| h[i..i + p.len()].eq_ignore_ascii_case(p))
}

/// "... the answer is X" / "Answer: X": the rest of the line after the last such phrase.
fn answer_phrase(s: &str) -> Option<Cow<'_, str>> {
    let at = ["answer is", "answer:"]
        .iter()
        .filter_map(|p| rfind_ascii_ci(s, p).map(|i| (i, p.len())))
        .max_by_key(|&(i, _)| i)?;
    let rest = &s[at.0 + at.1..];
    let line = rest.split('\n').next().unwrap_or("");
    // Markdown emphasis (`**Answer:** 5`) and a colon after "is" carry no content.
    let line = line.trim_start_matches(|c: char| c == ':' || c == '*' || c.is_whitespace());
    let line = line.trim_end_matches(|c: char| c == '*' || c.is_whitespace());
    let line = trim_answer(line);
    (!line.is_empty()).then(|| phrase_value(line))
}

/// Offset of `part` (a slice of `whole`) in `whole`.
fn offset(whole: &str, part: &str) -> usize {
    part.as_ptr() as usize - whole.as_ptr() as usize
}

/// Words of two or more letters that are not LaTeX command names.
fn word_count(s: &str) -> usize {
    let mut n = 0;
    let mut prev = ' ';
    let mut run = 0;
    for c in s.chars().chain([' ']) {
        if c.is_alphabetic() {
            if run == 0 && prev == '\\' {
                run = usize::MAX / 2; // a command name
            }
            run += 1;
        } else {
            if (2..usize::MAX / 2).contains(&run) {
                n += 1;
            }
            run = 0;
        }
        prev = c;
    }
    n
}

/// The answer inside a phrase's line: its last math span when the line ends with one
/// (`$28\%$. I hope it is correct.` -> `28\%`), several spans joined by connectors as a list
/// (`"$12$ and $13$".` -> `12, 13`), the single token after " is " (`The largest $n$ is 34.`
/// -> `34.`), the one number of a sentence (`Jane started Sphere 3 hours ago.` -> `3`), else
/// the line up to a following sentence (`(-6, 10). I hope it is correct.` -> `(-6, 10).`).
fn phrase_value(line: &str) -> Cow<'_, str> {
    let line = match line.find(". ") {
        Some(k) if line[k + 2..].starts_with(|c: char| c.is_ascii_uppercase()) => &line[..k + 1],
        _ => line,
    };
    let spans = math_spans(line);
    if spans.len() >= 2 {
        // Only quotes, delimiters and a period around the spans, connectors between them.
        let outside = |t: &str| {
            t.replace("\\(", "")
                .replace("\\)", "")
                .replace("\\[", "")
                .replace("\\]", "")
                .trim_matches(|c: char| {
                    c.is_whitespace() || matches!(c, '$' | '"' | '\'' | '\\' | '.')
                })
                .is_empty()
        };
        let first = spans[0];
        let last = spans[spans.len() - 1];
        let listed = outside(&line[..offset(line, first)])
            && outside(&line[offset(line, last) + last.len()..])
            && spans
                .windows(2)
                .all(|w| connector(&line[offset(line, w[0]) + w[0].len()..offset(line, w[1])]));
        if listed {
            return Cow::Owned(spans.join(", "));
        }
    }
    if let Some(last) = spans.last() {
        let end = offset(line, last) + last.len();
        let tail = line[end..].trim_start_matches(['$', ')', ']', '\\']);
        if tail.trim().trim_end_matches('.').is_empty() {
            return Cow::Borrowed(last);
        }
    }
    // "The largest $n$ is 34." -> `34.`: a single token after the last " is ".
    if let Some(k) = line.rfind(" is ") {
        let value = line[k + 4..].trim();
        if !value.is_empty() && !value.contains(char::is_whitespace) {
            return Cow::Borrowed(value);
        }
    }
    // A sentence with one number and no math states that number.
    if spans.is_empty() && word_count(line) >= 2 {
        if let [one] = prose::numbers(line)[..] {
            if !prose::modified(line, one) {
                return Cow::Borrowed(&line[one.start..one.end]);
            }
        }
    }
    Cow::Borrowed(line)
}

/// The "final answer is X" phrase that follows the box whose content is `boxed` (a slice of
/// `region`), if any.
fn phrase_after<'a>(region: &'a str, boxed: &str) -> Option<Cow<'a, str>> {
    let end = offset(region, boxed) + boxed.len();
    let tail = region.get(end..)?;
    rfind_ascii_ci(tail, "final answer")?;
    answer_phrase(tail)
}

/// The content of the last `<answer>` block; a missing `</answer>` (stop string eaten by the
/// sampler, or truncation) takes the rest of the text.
fn answer_block(s: &str) -> Option<&str> {
    let open = s.rfind("<answer>")? + "<answer>".len();
    let rest = &s[open..];
    Some(rest.find("</answer>").map_or(rest, |k| &rest[..k]))
}

/// Over-escaped text (`\\frac{1}{2}`, `\\boxed{5}` from a JSON or Python string written with
/// doubled backslashes) with its backslashes undoubled. Only when no single-backslash command
/// occurs at all, so a real line break `\\` before a letter in a matrix is left alone.
pub(crate) fn undouble_backslashes(s: &str) -> std::borrow::Cow<'_, str> {
    let b = s.as_bytes();
    let (mut doubled, mut single) = (false, false);
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b.get(i + 1) == Some(&b'\\') {
                doubled |= b.get(i + 2).is_some_and(u8::is_ascii_alphabetic);
                i += 2;
                continue;
            }
            single |= b.get(i + 1).is_some_and(u8::is_ascii_alphabetic) && !escaped_newline(b, i);
        }
        i += 1;
    }
    if !doubled || single {
        return std::borrow::Cow::Borrowed(s);
    }
    // Undouble, and read a literal `\n` of the same over-escaped string as the line break.
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'\\') {
            out.push('\\');
            i += 2;
        } else if b[i] == b'\\' && escaped_newline(b, i) {
            out.push('\n');
            i += 2;
        } else {
            let len = s[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&s[i..i + len]);
            i += len;
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A single `\n` at `i` that is an escaped line break rather than a command (`\neq`, `\nu`):
/// `n` followed by no lowercase letter (`\n\n`, `\nBut`, `\n**Final`).
fn escaped_newline(b: &[u8], i: usize) -> bool {
    b.get(i + 1) == Some(&b'n') && !b.get(i + 2).is_some_and(u8::is_ascii_lowercase)
}

/// The answer a reference states. References are usually bare answers and are used as they
/// are; a reference holding a box is a whole solution (MATH-style), and its boxed answer is
/// the reference, as is the "The answer is X" of a long reference.
pub(crate) fn reference_answer(reference: &str) -> std::borrow::Cow<'_, str> {
    let r = undouble_backslashes(reference);
    let found = if r.contains("\\boxed") || r.contains("\\fbox") {
        extract_answer(&r)
    } else if r.len() > 120 {
        // Only the phrase: the last math span of a long reference need not be all of it.
        answer_phrase(&r).map(|x| trim_answer(&x).to_string())
    } else {
        None
    };
    match found {
        Some(x) => std::borrow::Cow::Owned(x),
        None => r,
    }
}

/// Extracts the final answer from a model response.
///
/// Order (the convention of verl's `math` reward and Math-Verify's boxed-first extraction,
/// MMR1 arXiv 2509.21268 §"Rewards"):
/// 1. the scan region is the text after the last `</think>` when there is one (the reasoning is
///    scratch work: a box inside `<think>` does not count once thinking is closed), else the
///    whole text;
/// 2. the last outermost `\boxed{..}` / `\fbox{..}` (nested braces honoured). If the last box is
///    unbalanced (`\boxed{12` in a truncated response) the answer is `None`: no fallback to an
///    earlier box or to later rules;
/// 3. else the last `<answer>..</answer>` block: its "answer is X" phrase if it has one, else its
///    whole content;
/// 4. else the last "answer is X" / "Answer: X" line (its last math span when the line ends
///    with one);
/// 5. else whichever ends last of the last math span (`$..$`, `\(..\)`, `\[..\]`, `$$..$$`)
///    and the last number written in prose (`.. which is 1,000.99€`, `.. is 2/3.`; see
///    `prose`), as Math-Verify falls back to the rightmost LaTeX expression or number; not
///    when the response was cut off inside `<think>`.
///
/// Text after the first chat-template turn marker (`<|im_end|>`, `<|im_start|>`,
/// `<|endoftext|>`, `<|eot_id|>`) is a turn the model should not have written and is ignored.
/// Boxes that list answers (`\boxed{2}, \boxed{3}`, `\boxed{6} and \boxed{8}`, `\boxed{1}
/// papers and \boxed{2} bins`; see `joins`) are one answer, `2, 3`. Text written with doubled
/// backslashes throughout is undoubled first.
///
/// The result is trimmed; empty answers (`\boxed{}`) and answers with unbalanced braces are
/// `None`.
pub fn extract_answer(text: &str) -> Option<String> {
    let text = undouble_backslashes(text);
    let text = this_turn(&text);
    let region = match text.rfind("</think>") {
        Some(k) => &text[k + "</think>".len()..],
        None => text,
    };
    let found = match last_boxed(region) {
        // A final-answer phrase after the last box restates the answer (a box can hold an
        // intermediate result: `.. = \boxed{255}. .. The final answer is $10,455$.`).
        Boxed::Found(x) if phrase_after(region, x[x.len() - 1]).is_some() => {
            phrase_after(region, x[x.len() - 1])
        }
        Boxed::Found(x) if x.len() == 1 => Some(Cow::Borrowed(x[0])),
        Boxed::Found(x) => {
            Some(Cow::Owned(x.iter().map(|a| trim_answer(a)).collect::<Vec<_>>().join(", ")))
        }
        Boxed::Unbalanced => None,
        Boxed::Absent => match answer_block(region) {
            Some(block) => Some(answer_phrase(block).unwrap_or(Cow::Borrowed(block))),
            // The last math span or number only of a finished response: in reasoning cut off
            // inside `<think>` it is scratch work.
            None => answer_phrase(region).or_else(|| {
                let cut_in_thinking = text.contains("<think>") && !text.contains("</think>");
                if cut_in_thinking {
                    return None;
                }
                let span = math_spans(region).last().map(|x| (offset(region, x) + x.len(), *x));
                let number = prose::last_number(region, &math_regions(region))
                    .filter(|&f| !prose::modified(region, f))
                    .map(|f| (f.end, &region[f.start..f.end]));
                // The rightmost wins; a number inside the last span ends with it (or earlier).
                match (span, number) {
                    (Some((e, x)), Some((f, y))) => Some(Cow::Borrowed(if f > e { y } else { x })),
                    (a, b) => a.or(b).map(|(_, x)| Cow::Borrowed(x)),
                }
            }),
        },
    }?;
    let found = trim_answer(&found);
    // Unbalanced braces (`answer is \frac{1}{2`) are a malformed answer, like an unclosed box;
    // rejecting them also makes every extracted answer survive being boxed again.
    (!found.is_empty() && balanced(found)).then(|| found.to_string())
}

/// Markers of chat templates that end or start a turn: what follows the first one is a turn
/// the model should not have written (`... is 2/3. <|im_start|>user ...`).
const TURN_MARKERS: [&str; 5] =
    ["<|im_end|>", "<|im_start|>", "<|endoftext|>", "<|eot_id|>", "<|end|>"];

/// `text` up to its first turn marker after some content (markers that open the text, as
/// `<|im_start|>assistant`, are skipped).
fn this_turn(text: &str) -> &str {
    let mut start = 0;
    loop {
        let rest = text[start..].trim_start();
        match TURN_MARKERS.iter().find(|m| rest.starts_with(*m)) {
            Some(m) => start = text.len() - rest.len() + m.len(),
            None => break,
        }
    }
    match TURN_MARKERS.iter().filter_map(|m| text[start..].find(m)).min() {
        Some(k) => &text[..start + k],
        None => text,
    }
}

/// The MMR1 output template: `<think> reasoning </think>` then `<answer> .. \boxed{..} .. </answer>`
/// (arXiv 2509.21268, training system prompt).
///
/// Precisely: optional whitespace, `<think>`, anything, `</think>`, optional whitespace,
/// `<answer>`, content containing a brace-balanced `\boxed{..}` (an empty box is still the
/// template; accuracy judges the content), `</answer>`, optional whitespace. "Whitespace" is
/// any Unicode whitespace. Each of the four tags must occur exactly once (no nested or repeated
/// blocks), tags are exact lowercase with no attributes, and nothing else may sit outside the
/// two blocks.
pub fn format_ok(text: &str) -> bool {
    const TAGS: [&str; 4] = ["<think>", "</think>", "<answer>", "</answer>"];
    if TAGS.iter().any(|t| text.matches(t).count() != 1) {
        return false;
    }
    let Some(rest) = text.trim_start().strip_prefix("<think>") else {
        return false;
    };
    let Some((_, rest)) = rest.split_once("</think>") else {
        return false;
    };
    let Some(rest) = rest.trim_start().strip_prefix("<answer>") else {
        return false;
    };
    let Some((answer, tail)) = rest.split_once("</answer>") else {
        return false;
    };
    if !tail.trim().is_empty() {
        return false;
    }
    // Only a complete box counts; a bare `\boxed 5` is not the template's `\boxed{}`.
    let b = answer.as_bytes();
    let matches = brace_matches(answer);
    let mut from = 0;
    while let Some(k) = answer[from..].find("\\boxed") {
        let mut j = from + k + "\\boxed".len();
        while b.get(j).is_some_and(|c| c.is_ascii_whitespace()) {
            j += 1;
        }
        if b.get(j) == Some(&b'{') && matches[j].is_some() {
            return true;
        }
        from = from + k + 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undoubles_over_escaped_text() {
        assert_eq!(undouble_backslashes(r"\\frac{1}{2}\nBut"), "\\frac{1}{2}\nBut");
        assert_eq!(undouble_backslashes(r"\\boxed{4}\n\n**A**"), "\\boxed{4}\n\n**A**");
        // A real single-backslash command (`\neq`) means the text is not over-escaped.
        assert_eq!(undouble_backslashes(r"\\frac{1}{2} \neq 0"), r"\\frac{1}{2} \neq 0");
        assert_eq!(undouble_backslashes(r"\\frac{1}{2} \\neq 0"), r"\frac{1}{2} \neq 0");
    }

    #[test]
    fn cuts_at_the_end_of_the_turn() {
        assert_eq!(this_turn("is 2/3. <|im_start|>user 5"), "is 2/3. ");
        assert_eq!(
            this_turn("<|im_start|>assistant is 4<|im_end|> 5"),
            "<|im_start|>assistant is 4"
        );
        assert_eq!(this_turn("no marker"), "no marker");
        assert_eq!(this_turn("<|im_end|>"), "<|im_end|>");
    }

    #[test]
    fn finds_math_regions_across_lines() {
        assert_eq!(math_regions("a $ \n 9 \n $ b"), vec![(2, 11)]);
        assert_eq!(math_regions("costs $5"), vec![]);
        assert_eq!(math_regions(r"\(x\) and \[y\]"), vec![(0, 5), (10, 15)]);
    }
}
