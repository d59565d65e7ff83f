//! Answer equivalence: multiple-choice letters, then normalized strings, then structure
//! (tuples, intervals, sets) and value.

use super::expr::{expr_equal, parse, MAX_PARSE_CHARS};
use super::normalize::{normalize, Norm};

/// Most elements compared in a tuple / set; longer lists are compared as strings only.
const MAX_ELEMENTS: usize = 64;

/// The shape of an answer.
enum Shape {
    Scalar(String),
    /// `(1, 2)`, `[0, 1)`: elementwise and in order; the bracket characters must match too,
    /// so the interval `(0, 1)` differs from `[0, 1]`.
    Tuple(char, char, Vec<String>),
    /// `\{1, 2\}` or a bare `1, 2` (usually "all solutions"): order-insensitive.
    Set(Vec<String>),
}

/// Splits on commas outside any bracket.
fn split_top(s: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut depth = 0i32;
    for c in s.chars() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(String::new());
                continue;
            }
            _ => {}
        }
        if let Some(last) = parts.last_mut() {
            last.push(c);
        }
    }
    parts.into_iter().map(|p| p.trim().to_string()).collect()
}

/// `1,000` / `12,345,678.5`: every comma sits between a run of 1-3 digits (the first group) or
/// exactly 3 (later groups) and exactly three digits.
fn thousands(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if !s.contains(',') {
        return None;
    }
    for (i, _) in s.match_indices(',') {
        let before = b[..i].iter().rev().take_while(|c| c.is_ascii_digit()).count();
        let after = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        let group_start = i - before;
        let first_group = group_start == 0 || b[group_start - 1] != b',';
        if after != 3 || before == 0 || (first_group && before > 3) || (!first_group && before != 3)
        {
            return None;
        }
    }
    Some(s.replace(',', ""))
}

/// Whether the bracket at byte 0 closes exactly at the last byte (so `(1)+(2)` is no tuple).
fn wraps_whole(s: &str) -> bool {
    let mut depth = 0i32;
    let n = s.chars().count();
    for (k, c) in s.chars().enumerate() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            _ => {}
        }
        if depth == 0 {
            return k == n - 1;
        }
    }
    false
}

fn shape(s: &str) -> Shape {
    let s = s.trim();
    if let Some(inner) = s.strip_prefix("\\{").and_then(|x| x.strip_suffix("\\}")) {
        return Shape::Set(if inner.trim().is_empty() { vec![] } else { split_top(inner) });
    }
    let (first, last) = (s.chars().next(), s.chars().last());
    if let (Some(o @ ('(' | '[')), Some(c @ (')' | ']'))) = (first, last) {
        if s.len() >= 2 && wraps_whole(s) {
            let inner = &s[1..s.len() - 1];
            let parts = split_top(inner);
            if parts.len() > 1 {
                return Shape::Tuple(o, c, parts);
            }
        }
    }
    let parts = split_top(s);
    if parts.len() > 1 {
        return match thousands(s) {
            Some(n) => Shape::Scalar(n),
            None => Shape::Set(parts),
        };
    }
    Shape::Scalar(s.to_string())
}

fn key(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

/// Words only (`Yes`, `north east`, any script): compared case-insensitively, and never by
/// value, since as a product of variables `no` would equal `on`.
fn is_words(s: &str) -> bool {
    s.chars().filter(|c| c.is_alphabetic()).count() >= 2
        && s.chars().all(|c| c.is_alphabetic() || c == ' ' || c == '-' || c == '\'')
}

fn scalar_equal(a: &str, b: &str) -> bool {
    if key(a) == key(b) {
        return true;
    }
    if is_words(a) || is_words(b) {
        return is_words(a) && is_words(b) && a.to_lowercase() == b.to_lowercase();
    }
    match (parse(a), parse(b)) {
        (Some(x), Some(y)) => expr_equal(&x, &y),
        _ => false,
    }
}

fn elements_equal(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| scalar_equal(x, y))
}

/// Order-insensitive, greedy (each element of `a` takes the first unused equal one of `b`).
fn multiset_equal(a: &[String], b: &[String]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut used = vec![false; b.len()];
    a.iter().all(|x| {
        let found = (0..b.len()).find(|&j| !used[j] && scalar_equal(x, &b[j]));
        found.map(|j| used[j] = true).is_some()
    })
}

fn normalized_equal(a: &str, b: &str) -> bool {
    if key(a) == key(b) {
        return true;
    }
    if a.chars().count() > MAX_PARSE_CHARS || b.chars().count() > MAX_PARSE_CHARS {
        return false;
    }
    match (shape(a), shape(b)) {
        (Shape::Scalar(x), Shape::Scalar(y)) => scalar_equal(&x, &y),
        (Shape::Tuple(o1, c1, x), Shape::Tuple(o2, c2, y)) => {
            o1 == o2 && c1 == c2 && x.len() <= MAX_ELEMENTS && elements_equal(&x, &y)
        }
        (Shape::Set(x), Shape::Set(y)) => x.len() <= MAX_ELEMENTS && multiset_equal(&x, &y),
        _ => false,
    }
}

/// How a choice letter was written.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Label {
    /// `B`
    Bare,
    /// `(B)`, `B.`, `B)`, `B:`, `Option B`
    Marked,
}

/// Reads a choice label at the start of `s`: `B`, `(B)`, `B.`, `B)`, `B:`, optionally after
/// "Option" / "Choice". With `trailing`, text may follow a marked label (`(B) 12 cm`).
fn choice_label(s: &str, trailing: bool) -> Option<(char, Label, &str)> {
    let mut s = s.trim();
    let mut label = Label::Bare;
    for word in ["option", "choice"] {
        if s.len() > word.len() && s.as_bytes()[..word.len()].eq_ignore_ascii_case(word.as_bytes())
        {
            let rest = &s[word.len()..];
            if rest.starts_with([' ', ':', '(']) {
                s = rest.trim_start_matches([' ', ':']);
                label = Label::Marked;
            }
        }
    }
    let b = s.as_bytes();
    let (letter, rest) = if b.first() == Some(&b'(') {
        if b.len() >= 3 && b[1].is_ascii_alphabetic() && b[2] == b')' {
            label = Label::Marked;
            (b[1] as char, &s[3..])
        } else {
            return None;
        }
    } else if b.first().is_some_and(u8::is_ascii_alphabetic) {
        let rest = &s[1..];
        match rest.chars().next() {
            None => (b[0] as char, rest),
            Some('.' | ')' | ':') => {
                label = Label::Marked;
                (b[0] as char, &rest[1..])
            }
            Some(_) => return None,
        }
    } else {
        return None;
    };
    let rest = rest.trim();
    if !rest.is_empty() && (!trailing || label == Label::Bare) {
        return None;
    }
    Some((letter.to_ascii_uppercase(), label, rest))
}

/// A reference that is a multiple-choice letter: a bare single letter A-J (either case), or a
/// marked letter A-Z (`(K)`, `Option K`). Bare letters past J are more likely variables.
fn reference_choice(norm: &str) -> Option<char> {
    let (c, label, _) = choice_label(norm, false)?;
    (label == Label::Marked || c <= 'J').then_some(c)
}

/// The choice letter of a prediction, case-insensitive, text after a marked label allowed.
fn predicted_choice(norm: &str) -> Option<char> {
    choice_label(norm, true).map(|(c, _, _)| c)
}

fn norms_equal(p: &Norm, r: &Norm) -> bool {
    if normalized_equal(&p.text, &r.text) {
        return true;
    }
    // A reference in percent also accepts the fraction (`0.5` for `50%`). The reverse is not
    // done: a predicted `50%` is compared as the written number 50.
    r.percent && !p.percent && normalized_equal(&p.text, &format!("({})/100", r.text))
}

/// Whether a predicted answer is equivalent to the reference answer.
///
/// In order:
/// 1. if the reference is a choice letter (bare A-J, or marked `(K)` / `Option K`), the
///    prediction's letter (`B`, `(B)`, `B.`, `B)`, `\text{B}`, `Option B`, `(B) 12 cm`) must be
///    the same letter, case-insensitively;
/// 2. normalized strings equal (see `normalize`: whitespace, `\left`/`\right`, `\dfrac`, `\text`
///    wrappers, units, degrees, `%`, `$`, trailing period, a leading `x =`);
/// 3. words only: case-insensitive (`\text{yes}` = `Yes`);
/// 4. same shape (scalar, tuple/interval with the same brackets, set or bare list order-free)
///    and every element equal by value, 1e-6 relative / 1e-9 absolute, `\pi` required on both
///    sides or neither, free variables compared at sample points (Math-Verify-style).
///
/// Percent: `%` is stripped like a unit, so `50%` = `50`; `50%` (prediction) != `0.5`; but a
/// reference `50%` also accepts `0.5`.
pub fn is_equivalent(pred: &str, reference: &str) -> bool {
    let (p, r) = (normalize(pred), normalize(reference));
    if let Some(want) = reference_choice(&r.text) {
        if let Some(got) = predicted_choice(&p.text) {
            return got == want;
        }
    }
    norms_equal(&p, &r)
}

/// Strips an option's own label (`A. 5 cm`, `(A) 5 cm`) to its text.
fn option_text(option: &str) -> String {
    let n = normalize(option);
    match choice_label(&n.text, true) {
        Some((_, Label::Marked, rest)) if !rest.is_empty() => rest.to_string(),
        _ => option.to_string(),
    }
}

/// [`is_equivalent`], plus the options of a multiple-choice item: a letter reference also
/// accepts the text of that option, and a text reference also accepts the letter of an option
/// whose text matches it.
pub fn is_equivalent_with_options(pred: &str, reference: &str, options: Option<&[String]>) -> bool {
    if is_equivalent(pred, reference) {
        return true;
    }
    let Some(options) = options else { return false };
    let (p, r) = (normalize(pred), normalize(reference));
    let index = |c: char| (c as usize).checked_sub('A' as usize);
    match (reference_choice(&r.text), predicted_choice(&p.text)) {
        (Some(want), None) => index(want)
            .and_then(|i| options.get(i))
            .is_some_and(|o| is_equivalent(pred, &option_text(o))),
        (None, Some(got)) => index(got)
            .and_then(|i| options.get(i))
            .is_some_and(|o| is_equivalent(&option_text(o), reference)),
        _ => false,
    }
}
