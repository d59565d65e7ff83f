//! Answer equivalence: multiple-choice letters, then normalized strings, then structure
//! (tuples, intervals, sets) and value.

use super::expr::{close, expr_equal, parse, MAX_PARSE_CHARS};
use super::extract::reference_answer;
use super::matrix::{constant_cells, matrix_expression};
use super::normalize::{normalize, strip_assignment, Norm};
use super::relation::{double_inequality_interval, is_label, relations_equal, stated_value};

/// Most elements compared in a tuple / set; longer lists are compared as strings only.
const MAX_ELEMENTS: usize = 64;
/// Deepest nesting of shapes compared (a set of tuples is depth 2).
const MAX_SHAPE_DEPTH: usize = 4;

/// The shape of an answer.
enum Shape {
    Scalar(String),
    /// `(1, 2)`, `[0, 1)`: elementwise and in order; the bracket characters must match too,
    /// so the interval `(0, 1)` differs from `[0, 1]`.
    Tuple(char, char, Vec<String>),
    /// `\{1, 2\}`, `{1, 2}`, a bare `1, 2`, `1; 2`, `1 \text{ and } 2`, `x = 2 \text{ or }
    /// x = 3`, `\pm 3` (usually "all solutions"): order-insensitive.
    Set(Vec<String>),
    /// `[a, b) \cup (c, d)`: order-insensitive.
    Union(Vec<String>),
    /// `pmatrix` / `bmatrix` / `matrix` / `array` environments: rows of cells; the delimiters
    /// are presentation only.
    Matrix(Vec<Vec<String>>),
}

/// Whether the ASCII word `w` of `b` at `i..` stands alone (not part of a longer word or a
/// command name).
fn word_at(b: &[u8], i: usize, w: &str) -> bool {
    b[i..].starts_with(w.as_bytes())
        && (i == 0 || !(b[i - 1].is_ascii_alphabetic() || b[i - 1] == b'\\'))
        && b.get(i + w.len()).is_none_or(|c| !c.is_ascii_alphabetic())
}

/// Splits on top-level separators: `,` and `;`, and the words "and" / "or" (left by
/// `\text{ and }`). Empty parts (`19, 46, and 82`) are dropped.
fn split_top(s: &str) -> Vec<String> {
    let b = s.as_bytes();
    let mut parts = vec![String::new()];
    let mut depth = 0i32;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            b',' | b';' if depth == 0 => {
                parts.push(String::new());
                i += 1;
                continue;
            }
            b'a' | b'o' if depth == 0 && (word_at(b, i, "and") || word_at(b, i, "or")) => {
                parts.push(String::new());
                i += if c == b'a' { 3 } else { 2 };
                continue;
            }
            _ => {}
        }
        // Separators are ASCII, so whole UTF-8 sequences are copied byte by byte.
        let len = s[i..].chars().next().map_or(1, char::len_utf8);
        if let Some(last) = parts.last_mut() {
            last.push_str(&s[i..i + len]);
        }
        i += len;
    }
    parts.into_iter().map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect()
}

/// Splits on a top-level `sep` only.
fn split_at(s: &str, sep: u8) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, &c) in s.as_bytes().iter().enumerate() {
        match c {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            c if c == sep && depth == 0 => {
                parts.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(s[start..].trim());
    parts
}

/// `p=5,q=2;p=7,q=2`: solutions separated by `;`, each assigning the same names in the same
/// order, as the set of tuples `(5, 2), (7, 2)`. `None` for anything else.
fn assignment_groups(s: &str) -> Option<Vec<String>> {
    let groups = split_at(s, b';');
    if groups.len() < 2 {
        return None;
    }
    let mut names: Option<Vec<&str>> = None;
    let mut tuples = Vec::with_capacity(groups.len());
    for g in groups {
        let items = split_at(g, b',');
        if items.len() < 2 {
            return None;
        }
        let mut these = Vec::with_capacity(items.len());
        let mut values = Vec::with_capacity(items.len());
        for item in items {
            let (name, value) = item.split_once('=')?;
            let (name, value) = (name.trim(), value.trim());
            if !is_label(name) || value.is_empty() || value.contains(['=', '<', '>']) {
                return None;
            }
            these.push(name);
            values.push(value);
        }
        if names.get_or_insert_with(|| these.clone()) != &these {
            return None;
        }
        tuples.push(format!("({})", values.join(", ")));
    }
    Some(tuples)
}

/// The elements of an answer written as a plain list in order: a bare `1, 3`, or one in
/// LaTeX grouping braces `{1, 3}` (which typeset as `1, 3`), not a set `\{1, 3\}`. Such a list
/// also answers an ordered pair `(1, 3)`, element by element in order.
fn listed_in_order(s: &str) -> Option<Vec<String>> {
    let s = s.trim();
    let inner = if s.starts_with('{') && wraps_whole(s) { &s[1..s.len() - 1] } else { s };
    if inner.starts_with("\\{")
        || inner.contains(" or ")
        || inner.contains(" and ")
        || assignment_groups(inner).is_some()
    {
        return None;
    }
    let parts = split_top(inner);
    (parts.len() > 1).then_some(parts)
}

/// Splits on top-level `\cup`.
fn split_union(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    let b = s.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            b'\\'
                if depth == 0
                    && b[i + 1..].starts_with(b"cup")
                    && b.get(i + 4).is_none_or(|c| !c.is_ascii_alphabetic()) =>
            {
                parts.push(s[start..i].trim().to_string());
                start = i + 4;
            }
            _ => {}
        }
    }
    parts.push(s[start..].trim().to_string());
    parts
}

/// `1,000` / `12,345,678.5` / `1 000`: every separator sits between a run of 1-3 digits (the
/// first group, not starting with 0) or exactly 3 (later groups) and exactly three digits.
fn thousands(s: &str) -> Option<String> {
    let sep = if s.contains(',') {
        ','
    } else if s.contains(' ') && s.bytes().all(|c| c.is_ascii_digit() || c == b' ' || c == b'.') {
        ' '
    } else {
        return None;
    };
    let b = s.as_bytes();
    for (i, _) in s.match_indices(sep) {
        let before = b[..i].iter().rev().take_while(|c| c.is_ascii_digit()).count();
        let after = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        let group_start = i - before;
        let first_group = group_start == 0 || b[group_start - 1] != sep as u8;
        if after != 3
            || before == 0
            || (first_group && (before > 3 || b[group_start] == b'0'))
            || (!first_group && before != 3)
        {
            return None;
        }
    }
    Some(s.replace(sep, ""))
}

/// `1,5` / `0,111`: a number written with a decimal comma, as the number with a point. Only
/// when the comma is the sole separator and no space surrounds it (`1, 5` is a list).
fn decimal_comma(s: &str) -> Option<String> {
    let t = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = t.split_once(',')?;
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|c| c.is_ascii_digit());
    (digits(int) && digits(frac)).then(|| s.replacen(',', ".", 1))
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

/// The rows and cells of a matrix environment filling all of `s` (optionally inside one pair
/// of brackets: `\left[\begin{array}{cc}..\end{array}\right]`). `vmatrix` (a determinant) is
/// not a matrix.
pub(crate) fn matrix(s: &str) -> Option<Vec<Vec<String>>> {
    let mut s = s.trim();
    if s.len() >= 2 && s.starts_with(['(', '[']) && wraps_whole(s) {
        s = s[1..s.len() - 1].trim();
    }
    let rest = s.strip_prefix("\\begin{")?;
    let (env, rest) = rest.split_once('}')?;
    if !matches!(env, "pmatrix" | "bmatrix" | "Bmatrix" | "matrix" | "array" | "smallmatrix") {
        return None;
    }
    let mut body = rest.strip_suffix(&format!("\\end{{{env}}}"))?;
    if env == "array" {
        // The column spec: `{cc}`, `{c|c}`.
        body = body.trim_start().strip_prefix('{')?.split_once('}')?.1;
    }
    if body.contains("\\begin{") {
        return None;
    }
    let mut rows: Vec<Vec<String>> =
        body.split("\\\\").map(|r| r.split('&').map(|c| c.trim().to_string()).collect()).collect();
    // A trailing `\\` leaves an empty last row.
    if rows.len() > 1 && rows.last().is_some_and(|r: &Vec<String>| r.len() == 1 && r[0].is_empty())
    {
        rows.pop();
    }
    let width = rows.first()?.len();
    rows.iter().all(|r| r.len() == width && r.iter().all(|c| !c.is_empty())).then_some(rows)
}

fn shape(s: &str) -> Shape {
    let s = s.trim();
    if let Some(m) = matrix(s) {
        return Shape::Matrix(m);
    }
    let union = split_union(s);
    if union.len() > 1 {
        return Shape::Union(union);
    }
    if let Some(inner) = s.strip_prefix("\\{").and_then(|x| x.strip_suffix("\\}")) {
        return Shape::Set(split_top(inner));
    }
    if s.starts_with('{') && wraps_whole(s) {
        let parts = split_top(&s[1..s.len() - 1]);
        if parts.len() > 1 {
            return Shape::Set(parts);
        }
    }
    let (first, last) = (s.chars().next(), s.chars().last());
    if let (Some(o @ ('(' | '[')), Some(c @ (')' | ']'))) = (first, last) {
        if s.len() >= 2 && wraps_whole(s) {
            let inner = &s[1..s.len() - 1];
            let parts = split_top(inner);
            if parts.len() > 1 && !inner.contains(" or ") && !inner.contains(" and ") {
                return Shape::Tuple(o, c, parts);
            }
        }
    }
    if let Some(tuples) = assignment_groups(s) {
        return Shape::Set(tuples);
    }
    let parts = split_top(s);
    if parts.len() > 1 {
        return match thousands(s) {
            Some(n) => Shape::Scalar(n),
            None => Shape::Set(parts),
        };
    }
    if let Some(n) = thousands(s) {
        return Shape::Scalar(n);
    }
    // `\pm a` / `b \pm a`: both values.
    if s.matches("\\pm").count() == 1 {
        let plus = s.replacen("\\pm", "+", 1);
        let minus = s.replacen("\\pm", "-", 1);
        return Shape::Set(vec![plus, minus]);
    }
    Shape::Scalar(s.to_string())
}

/// The shape of what `s` states: an element may state its value (`x = 2`, `AB = 4`,
/// `(x, y) = (5, 8)`), or assign one name (`y_1 = -2x^2 + 4x + 3`, as a whole answer's
/// `y = ..` is stripped by `normalize`).
fn value_shape(s: &str) -> Shape {
    match shape(s) {
        Shape::Scalar(x) => {
            let v = stated_value(&x);
            let v = if v.len() < x.len() { v } else { strip_assignment(&x) };
            if v.len() < x.len() {
                shape(v)
            } else {
                Shape::Scalar(x)
            }
        }
        other => other,
    }
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
    let (va, vb) = (stated_value(a), stated_value(b));
    if key(va) == key(vb) {
        return true;
    }
    if let (Some(x), Some(y)) = (parse(va), parse(vb)) {
        // Two written numbers are compared as written (absolute 1e-9, no relative tolerance):
        // `16386.16` is not `16386.17`, although they agree to 6e-7 relative. The relative
        // tolerance is for computed values (`1.41421356` for `\sqrt{2}`).
        if let (Some(p), Some(q)) = (x.literal(), y.literal()) {
            return (p - q).abs() <= 1e-9;
        }
        return expr_equal(&x, &y);
    }
    relations_equal(a, b)
}

/// Equal as sets: every element of each side equals one of the other (`{1, 1, 2}` = `{2, 1}`,
/// as Math-Verify compares SymPy sets).
fn set_equal(a: &[String], b: &[String], depth: usize) -> bool {
    if a.is_empty() || b.is_empty() || a.len() > MAX_ELEMENTS || b.len() > MAX_ELEMENTS {
        return a.is_empty() && b.is_empty();
    }
    // Identical texts first (one key per element), the structural comparison only for the rest.
    let (ka, kb): (Vec<String>, Vec<String>) =
        (a.iter().map(|x| key(x)).collect(), b.iter().map(|x| key(x)).collect());
    let within = |x: &[String], kx: &[String], y: &[String], ky: &[String]| {
        x.iter()
            .zip(kx)
            .all(|(p, kp)| ky.contains(kp) || y.iter().any(|q| shape_equal(p, q, depth + 1)))
    };
    within(a, &ka, b, &kb) && within(b, &kb, a, &ka)
}

/// Structural equality: same shape, elements equal (recursively, so sets of tuples and unions
/// of intervals compare as such).
fn shape_equal(a: &str, b: &str, depth: usize) -> bool {
    if key(a) == key(b) {
        return true;
    }
    if depth > MAX_SHAPE_DEPTH {
        return false;
    }
    match (value_shape(a), value_shape(b)) {
        (Shape::Scalar(x), Shape::Scalar(y)) => scalar_equal(&x, &y),
        (Shape::Tuple(o1, c1, x), Shape::Tuple(o2, c2, y)) => {
            o1 == o2
                && c1 == c2
                && x.len() == y.len()
                && x.len() <= MAX_ELEMENTS
                && x.iter().zip(&y).all(|(p, q)| shape_equal(p, q, depth + 1))
        }
        (Shape::Set(x), Shape::Set(y)) | (Shape::Union(x), Shape::Union(y)) => {
            set_equal(&x, &y, depth)
        }
        (Shape::Matrix(x), Shape::Matrix(y)) => {
            x.len() == y.len()
                && x.iter().zip(&y).all(|(r, q)| {
                    r.len() == q.len() && r.iter().zip(q).all(|(p, q)| scalar_equal(p, q))
                })
        }
        // Arithmetic on constant matrices left in the answer (`A + B`, `A B`) by its value.
        (Shape::Scalar(x), Shape::Matrix(y)) => matrix_value_equal(&x, &y),
        (Shape::Matrix(x), Shape::Scalar(y)) => matrix_value_equal(&y, &x),
        // A list written in order answers an ordered pair (`{1, 3}` or `1, 3` for `(1, 3)`).
        (Shape::Set(_), Shape::Tuple('(', ')', y)) => in_order(a, &y, depth),
        (Shape::Tuple('(', ')', x), Shape::Set(_)) => in_order(b, &x, depth),
        // A decimal comma on either side (`1,5` for 1.5); a spaced `1, 5` stays a list.
        (Shape::Set(_), Shape::Scalar(y)) => decimal_comma(a).is_some_and(|x| scalar_equal(&x, &y)),
        (Shape::Scalar(x), Shape::Set(_)) => decimal_comma(b).is_some_and(|y| scalar_equal(&x, &y)),
        _ => false,
    }
}

/// Whether `expr` is arithmetic on constant matrices whose value is the constant matrix `m`.
fn matrix_value_equal(expr: &str, m: &[Vec<String>]) -> bool {
    let (Some(v), Some(w)) = (matrix_expression(expr), constant_cells(m)) else { return false };
    v.len() == w.len()
        && v.iter()
            .zip(&w)
            .all(|(r, q)| r.len() == q.len() && r.iter().zip(q).all(|(a, b)| close(*a, *b)))
}

/// Whether `list` is written as a plain list whose elements equal `tuple`'s in order.
fn in_order(list: &str, tuple: &[String], depth: usize) -> bool {
    listed_in_order(list).is_some_and(|x| {
        x.len() == tuple.len() && x.iter().zip(tuple).all(|(p, q)| shape_equal(p, q, depth + 1))
    })
}

fn normalized_equal(a: &str, b: &str) -> bool {
    if key(a) == key(b) {
        return true;
    }
    if a.chars().count() > MAX_PARSE_CHARS || b.chars().count() > MAX_PARSE_CHARS {
        return false;
    }
    shape_equal(a, b, 0)
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
    // Equations whose assignment normalization stripped (`y = -\frac12 x + \frac34` against
    // `2x + 4y - 3 = 0`).
    if (p.full != p.text || r.full != r.text) && relations_equal(&p.full, &r.full) {
        return true;
    }
    // A reference `a <= x < b` also accepts the interval `[a, b)` (not the reverse, as in
    // Math-Verify's default `allow_set_relation_comp = False`).
    if double_inequality_interval(&r.text).is_some_and(|i| normalized_equal(&p.text, &i)) {
        return true;
    }
    // A reference in percent also accepts the fraction (`0.5` for `50%`). The reverse is not
    // done: a predicted `50%` is compared as the written number 50.
    r.percent && !p.percent && normalized_equal(&p.text, &format!("({})/100", r.text))
}

/// Whether a predicted answer is equivalent to the reference answer.
///
/// In order:
/// 0. identical text (whitespace aside) is equal; a reference holding a `\boxed{}` is a whole
///    solution and its boxed answer is the reference (so is the "final answer is X" of a long
///    reference);
/// 1. if the reference is a choice letter (bare A-J, or marked `(K)` / `Option K`), the
///    prediction's letter (`B`, `(B)`, `B.`, `B)`, `\text{B}`, `Option B`, `(B) 12 cm`) must be
///    the same letter, case-insensitively;
/// 2. normalized strings equal (see `normalize`: whitespace, `\left`/`\right`, `\dfrac`/`\tfrac`,
///    `\text` wrappers, units, degrees, `%`/`pct`, currency, `\!`, trailing period, a leading
///    `x =`, `\approx`, relations spelled `<=` / `>=` / `!=`);
/// 3. words only: case-insensitive (`\text{yes}` = `Yes`);
/// 4. same shape and every element equal: scalar; tuple / interval with the same brackets; set
///    (`\{..\}`, `{..}`, a bare list split at `,` `;` "and" "or", `\pm`) compared as sets;
///    union of intervals order-free; matrix (`pmatrix` = `bmatrix` = `array`) cell by cell,
///    or by value for arithmetic on constant matrices (`A + B`, `A B`); a list written in
///    order (`{1, 3}`, `1, 3`) answers the pair `(1, 3)`; `p=5,q=2;p=7,q=2` is `(5,2),(7,2)`.
///    Elements may state their value (`x = 2`, `AB = 4`, `x = 1+1 = 2`). Numbers: two written
///    numbers within 1e-9 (`16386.16` != `16386.17`); computed values 1e-6 relative / 1e-9
///    absolute; decimal commas (`1,5`, never a spaced `1, 5`) and thousands separators
///    (`1,000`, `1 000`); `\pi` required on both sides or neither; free variables compared at
///    seeded sample points (Math-Verify-style);
/// 5. relations: the same inequality or equation after moving all to one side (`5 >= x` =
///    `x <= 5`, `2x + 4y - 3 = 0` = `y = -x/2 + 3/4`); a reference `a < x <= b` also accepts
///    `(a, b]` (not the reverse).
///
/// Percent: `%` is stripped like a unit, so `50%` = `50`; `50%` (prediction) != `0.5`; but a
/// reference `50%` also accepts `0.5`.
pub fn is_equivalent(pred: &str, reference: &str) -> bool {
    // The same text is the same answer, whatever a reference's box or phrase would extract.
    if key(pred) == key(reference) {
        return true;
    }
    let (p, r) = (normalize(pred), normalize(&reference_answer(reference)));
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
