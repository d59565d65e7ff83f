//! Numbers written in prose, outside any math delimiter: `... which is 1,000.99€`, `... is 2/3.`
//!
//! A response that boxes nothing, states no answer phrase and has no math span after its
//! last number still answers with that number. Math-Verify (huggingface/Math-Verify,
//! `parser.py::lazy_expr_regex`) reads such numbers with its lowest-priority patterns, and the
//! rightmost match of those and of the plain LaTeX spans wins. The same patterns, in short:
//! - a number starts the text, or follows whitespace, `=` or `*` (markdown `**`), optionally
//!   after a currency sign: `7`, `-3`, `.5`, `1,000.99`, `1 000`, `2,74` (decimal comma), with
//!   an optional percent (`100%`, `28 percent`); so `AZYUK2A` holds no number;
//! - an arithmetic expression starts the same way and is made of digits, `.`, spaces and
//!   `+ - * × / ^ ( ) ÷` with at least one operator (`2/3`, `(1/2) * (4/3)`), and must be
//!   followed by the end, whitespace, `.`, `,`, `:`, `)` or `$` (so `3/4x` is not read).
//!
//! Byte offsets are kept on UTF-8 boundaries: every step moves by whole chars.

const CURRENCY: &[char] = &['$', '€', '£', '¥', '₹', '₽', '₩'];
const OPERATORS: &[char] = &['+', '-', '*', '×', '/', '^', '(', ')', '÷'];
/// Longest expression scanned from one start, so a pathological input stays linear.
const MAX_RUN: usize = 200;

/// A number or expression found in prose: byte range of its text (without a currency sign).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Found {
    pub start: usize,
    pub end: usize,
}

fn digits(b: &[u8], from: usize) -> usize {
    b[from.min(b.len())..].iter().take_while(|c| c.is_ascii_digit()).count()
}

/// Whether a number may start at `i`: the start of the text, or after whitespace, `=`, `*`.
fn prefix_ok(s: &str, i: usize) -> bool {
    s[..i].chars().next_back().is_none_or(|c| c.is_whitespace() || c == '=' || c == '*')
}

/// End of a plain number starting at `i` (after any currency sign), with its percent.
fn number_end(s: &str, i: usize) -> Option<usize> {
    let b = s.as_bytes();
    let k = i + usize::from(b.get(i) == Some(&b'-'));
    let first = digits(b, k);
    let mut end = if first == 0 {
        // `.5`
        if b.get(k) == Some(&b'.') && digits(b, k + 1) > 0 {
            k + 1 + digits(b, k + 1)
        } else {
            return None;
        }
    } else {
        let mut end = k + first;
        // Thousands groups (`1,000,000`, `1 000`): a first group of 1-3 digits not starting
        // with 0, then groups of exactly three.
        if first <= 3 && b[k] != b'0' {
            while matches!(b.get(end), Some(b',' | b' '))
                && digits(b, end + 1) == 3
                && !b.get(end + 4).is_some_and(u8::is_ascii_digit)
            {
                end += 4;
            }
        }
        // A decimal point or comma (`2,74`).
        if matches!(b.get(end), Some(b'.' | b',')) && digits(b, end + 1) > 0 {
            end += 1 + digits(b, end + 1);
        }
        end
    };
    // Percent: `100%`, `100 %`, `28 percent`, `28 pct`.
    let rest = &s[end..];
    let spaced = rest.trim_start();
    let gap = rest.len() - spaced.len();
    if spaced.starts_with('%') {
        end += gap + 1;
    } else {
        for word in ["percentage", "percent", "pct"] {
            let w = spaced.get(..word.len());
            if w.is_some_and(|w| w.eq_ignore_ascii_case(word))
                && !spaced[word.len()..].starts_with(|c: char| c.is_alphabetic())
            {
                end += gap + word.len();
                break;
            }
        }
    }
    Some(end)
}

/// End of an arithmetic expression starting at `i` (at least one operator, then the allowed
/// suffix).
fn expression_end(s: &str, i: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut k = i;
    for c in [b'-', b'(', b'-'] {
        if b.get(k) == Some(&c) {
            k += 1;
        }
    }
    if !b.get(k).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let mut end = i;
    for (n, c) in s[i..].char_indices() {
        if !(c.is_ascii_digit() || c == '.' || c == ' ' || c == '\t' || OPERATORS.contains(&c)) {
            break;
        }
        if n >= MAX_RUN {
            return None; // too long to be an answer; a later start reads its tail
        }
        end = i + n + c.len_utf8();
    }
    // Trailing spaces, periods and dangling operators are not part of it.
    let mut text = &s[i..end];
    loop {
        let t = text.trim_end_matches([' ', '\t', '.']);
        let t = t.trim_end_matches(['+', '-', '*', '×', '/', '^', '(', '÷']);
        if t.len() == text.len() {
            break;
        }
        text = t;
    }
    // Unmatched closing parentheses at the end belong to the prose (`(which is 2/3)`).
    while text.ends_with(')') && text.matches(')').count() > text.matches('(').count() {
        text = &text[..text.len() - 1];
    }
    let end = i + text.len();
    let body = &text[k - i..];
    let has_op = body.contains(|c: char| OPERATORS.contains(&c) && c != '(' && c != ')')
        || body.contains(['(', ')']);
    let suffix_ok = s[end..]
        .chars()
        .next()
        .is_none_or(|c| c.is_whitespace() || matches!(c, '.' | ',' | ':' | ')' | '$'));
    (has_op && suffix_ok && body.ends_with(|c: char| c.is_ascii_digit() || c == ')')).then_some(end)
}

/// Words that change the value of the number they stand next to (also read by
/// `normalize::prose_words`: such a word after a quantity is not a noun to drop).
pub(crate) const MODIFIERS: &[&str] = &[
    "root",
    "roots",
    "sqrt",
    "square",
    "squared",
    "cube",
    "cubed",
    "power",
    "log",
    "ln",
    "sin",
    "cos",
    "tan",
    "pi",
    "times",
    "over",
    "divided",
    "plus",
    "minus",
    "negative",
    "inverse",
    "reciprocal",
    "half",
    "halves",
    "third",
    "thirds",
    "quarter",
    "quarters",
    "fifths",
    "dozen",
    "hundred",
    "hundreds",
    "thousand",
    "thousands",
    "million",
    "millions",
    "billion",
    "billions",
    "trillion",
    "trillions",
    "dozens",
    "factorial",
    "e",
];

/// Whether a word next to `f` in `s` changes its value: the word after it, or the word before
/// it (skipping `of`, `the`, `a`): `square root of 2`, `negative 3`, `2 squared`, `3 dozen`.
pub(crate) fn modified(s: &str, f: Found) -> bool {
    let word = |w: &str| MODIFIERS.contains(&w.to_ascii_lowercase().as_str());
    let letters = |c: char| !c.is_alphabetic();
    let after = s[f.end..].split(letters).find(|w| !w.is_empty());
    let gap_after =
        s[f.end..].find(|c: char| c.is_alphabetic()).map_or("", |k| &s[f.end..f.end + k]);
    if gap_after.trim().is_empty() && after.is_some_and(word) {
        return true;
    }
    let before = s[..f.start]
        .rsplit(letters)
        .filter(|w| !w.is_empty())
        .find(|w| !matches!(w.to_ascii_lowercase().as_str(), "of" | "the" | "a"));
    let tail = s[..f.start].trim_end_matches(|c: char| c.is_whitespace() || CURRENCY.contains(&c));
    before.is_some_and(|w| word(w) && !tail.ends_with(|c: char| !c.is_alphabetic()))
}

/// The number or expression that starts at `i`, if one does (the longer reading wins).
fn found_at(s: &str, i: usize) -> Option<Found> {
    if !prefix_ok(s, i) {
        return None;
    }
    let start = match s[i..].chars().next() {
        Some(c) if CURRENCY.contains(&c) => i + c.len_utf8(),
        _ => i,
    };
    let n = number_end(s, start);
    let e = expression_end(s, start);
    let end = n.max(e)?;
    Some(Found { start, end })
}

/// Every number of `s` from left to right, each starting after the previous one ends.
pub(crate) fn numbers(s: &str) -> Vec<Found> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        if let Some(f) = found_at(s, i) {
            out.push(f);
            i = f.end.max(i + 1);
            while !s.is_char_boundary(i) {
                i += 1;
            }
            continue;
        }
        i += s[i..].chars().next().map_or(1, char::len_utf8);
    }
    out
}

/// The number that ends last in `s` (the longest of those ending there), as Math-Verify picks
/// the rightmost match; none inside the sorted, disjoint byte ranges `math` (math spans, read
/// as LaTeX).
pub(crate) fn last_number(s: &str, math: &[(usize, usize)]) -> Option<Found> {
    let mut best: Option<Found> = None;
    // `math` is sorted and disjoint (as `extract::math_regions` gives it): walk it alongside.
    let mut region = 0;
    for (i, _) in s.char_indices() {
        while math.get(region).is_some_and(|&(_, b)| b <= i) {
            region += 1;
        }
        if math.get(region).is_some_and(|&(a, _)| a <= i) {
            continue;
        }
        if let Some(f) = found_at(s, i) {
            if best.is_none_or(|b| f.end > b.end) {
                best = Some(f);
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last(s: &str) -> Option<&str> {
        last_number(s, &[]).map(|f| &s[f.start..f.end])
    }

    #[test]
    fn reads_numbers_in_prose() {
        assert_eq!(last("the number is not 10 which is 1,000.99€"), Some("1,000.99"));
        assert_eq!(last("so the number is 10 which is 1,000.99m²"), Some("1,000.99"));
        assert_eq!(last("Soucis : 2,74 $ a.."), Some("2,74"));
        assert_eq!(last("the probability is 2/3."), Some("2/3"));
        assert_eq!(last("it increases by 100%."), Some("100%"));
        assert_eq!(last("it costs $5 today"), Some("5"));
        assert_eq!(last("1 000 apples"), Some("1 000"));
        assert_eq!(last("(which is 2/3)"), Some("2/3"));
        assert_eq!(last("that is (2/3)"), Some("(2/3)"));
        assert_eq!(last("a value of .5"), Some(".5"));
        assert_eq!(last("AZYUK2A"), None);
        assert_eq!(last("x2 and y3"), None);
        assert_eq!(last("so 3/4x"), Some("3")); // the expression needs a suffix, the number not
        assert_eq!(last("I am not sure."), None);
        assert_eq!(last("é 中 5 🙂"), Some("5"));
        let long = "(1/2) * ".repeat(100);
        let got = last(&long).unwrap_or_default();
        assert!(
            got.len() <= MAX_RUN && got.starts_with("(1/2)") && got.ends_with("(1/2)"),
            "{got}"
        );
        assert_eq!(last_number("5 $x = 6$", &[(2, 9)]), Some(Found { start: 0, end: 1 }));
        let m = |s: &str| last_number(s, &[]).is_some_and(|f| modified(s, f));
        assert!(m("so x is the square root of 2"));
        assert!(m("the result is negative 3."));
        assert!(m("it is 2 squared"));
        assert!(m("it is 2 pi"));
        assert!(!m("there are 2 apples"));
        assert!(!m("the angle is 90 degrees"));
        assert!(!m("the root is at x, 2"));
        let n = numbers("Jane started 3 hours ago, 2 days");
        assert_eq!(n.len(), 2);
    }
}
