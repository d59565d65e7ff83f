//! String normalization of answers before comparison.
//!
//! The rules follow the common core of verl's `math` reward (`strip_string`, itself from the
//! MATH benchmark's grader) and Math-Verify's LaTeX normalization, as named in MMR1
//! (arXiv 2509.21268, "units, `\text`, degrees, fractions, case").

use super::extract::{brace_matches, undouble_backslashes};

/// A normalized answer: canonical text plus whether a percent sign was removed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Norm {
    pub text: String,
    pub percent: bool,
    /// `text` before a leading assignment was stripped (`y = 2x`), for comparing equations.
    pub full: String,
}

/// Commands whose single braced argument is kept and the command dropped.
const UNWRAP: &[&str] = &[
    "text",
    "textbf",
    "textit",
    "textrm",
    "textnormal",
    "textup",
    "textsf",
    "texttt",
    "mathrm",
    "mathbf",
    "mathit",
    "mathsf",
    "mathtt",
    "mathnormal",
    "mbox",
    "hbox",
    "boldsymbol",
    "bm",
    "boxed",
    "fbox",
    "underline",
];

/// Trailing unit words that are dropped (compared lowercase). `h` and `l` are left out on
/// purpose: they are height / length variables in geometry answers far more often than hours
/// or litres.
const UNITS: &[&str] = &[
    "mm",
    "cm",
    "dm",
    "m",
    "km",
    "meter",
    "meters",
    "metre",
    "metres",
    "millimeter",
    "millimeters",
    "centimeter",
    "centimeters",
    "kilometer",
    "kilometers",
    "in",
    "inch",
    "inches",
    "ft",
    "foot",
    "feet",
    "yd",
    "yard",
    "yards",
    "mi",
    "mile",
    "miles",
    "sq",
    "square",
    "cubic",
    "unit",
    "units",
    "degree",
    "degrees",
    "deg",
    "radian",
    "radians",
    "dollar",
    "dollars",
    "cent",
    "cents",
    "yuan",
    "euro",
    "euros",
    "g",
    "mg",
    "kg",
    "gram",
    "grams",
    "kilogram",
    "kilograms",
    "lb",
    "lbs",
    "pound",
    "pounds",
    "oz",
    "ounce",
    "ounces",
    "ml",
    "liter",
    "liters",
    "litre",
    "litres",
    "s",
    "sec",
    "second",
    "seconds",
    "min",
    "mins",
    "minute",
    "minutes",
    "hr",
    "hrs",
    "hour",
    "hours",
    "day",
    "days",
    "week",
    "weeks",
    "month",
    "months",
    "year",
    "years",
    "mph",
    "kmh",
    "percent",
    "percentage",
    "pct",
    "point",
    "points",
    "times",
];

/// Text wrappers whose words are prose: a quantity followed by one (`10 \text{ apples}`) is
/// the quantity.
const PROSE_WRAPPERS: &[&str] =
    &["text", "textrm", "textnormal", "textit", "textup", "textsf", "mbox", "hbox", "mathrm"];

/// Words after a quantity that make the answer something else than that value (`5 \text{ or
/// more}`, `\frac12 \text{ of the pie}`, `3 \text{ less than } x`): a wrapper holding one is
/// kept. Words that change the number itself (`2 \text{ million}`, `3 \text{ dozen}`) are
/// `prose::MODIFIERS`.
const NOT_A_VALUE: &[&str] = &[
    "or", "and", "not", "no", "more", "less", "fewer", "than", "least", "most", "under", "above",
    "below", "of", "per", "if", "but", "except", "only", "to", "percent",
];

/// `words` is a few prose words (`apples`, `red apples`, `students'`, `(apples)`), none of
/// which changes a quantity ([`NOT_A_VALUE`], `prose::MODIFIERS`); the first has two letters
/// or more, so a lone variable (`\text{ x}`) is not a word.
fn prose_words(words: &str) -> bool {
    let ws: Vec<&str> = words.split_whitespace().collect();
    let word = |w: &&str| {
        let w = w.trim_end_matches(['.', ',']).trim_start_matches('(').trim_end_matches(')');
        w.starts_with(|c: char| c.is_ascii_alphabetic())
            && w.chars().all(|c| c.is_ascii_alphabetic() || c == '-' || c == '\'')
            && !NOT_A_VALUE.contains(&w.to_ascii_lowercase().as_str())
            && !super::prose::MODIFIERS.contains(&w.to_ascii_lowercase().as_str())
    };
    !ws.is_empty()
        && ws.len() <= 4
        && ws[0].chars().filter(char::is_ascii_alphabetic).count() >= 2
        && ws.iter().all(word)
}

/// Drops prose nouns after a quantity, as a person reads `10 \text{ apples}` (Math-Verify reads
/// the letters as a product of variables): a trailing text wrapper of [`prose_words`] after
/// something that ends like a quantity (a digit, `}`, `)`, `\pi`), spacing between them
/// (`\,`, `~`, `\ `) ignored; or a whole answer `\text{12 students}`, a number then such
/// words. Runs before the wrappers are dropped: only a wrapper says the letters are words.
fn strip_prose_nouns(s: &str) -> String {
    let t = s.trim().trim_end_matches('.').trim_end();
    let Some(inner) = t.strip_suffix('}') else { return s.to_string() };
    let Some(open) = inner.rfind('{') else { return s.to_string() };
    let words = &inner[open + 1..];
    let before = &inner[..open];
    let cmd_len = before.bytes().rev().take_while(u8::is_ascii_alphabetic).count();
    let cmd = &before[before.len() - cmd_len..];
    let Some(rest) = before[..before.len() - cmd_len].strip_suffix('\\') else {
        return s.to_string();
    };
    if !PROSE_WRAPPERS.contains(&cmd) || words.contains('\\') {
        return s.to_string();
    }
    // `\text{12 students}`: the number alone.
    if rest.trim().is_empty() {
        let words = words.trim();
        let (num, tail) = words.split_once(' ').unwrap_or((words, ""));
        let number = num.starts_with(|c: char| c.is_ascii_digit())
            && num.chars().all(|c| c.is_ascii_digit() || c == '.' || c == ',');
        return if number && prose_words(tail) { num.to_string() } else { s.to_string() };
    }
    if !prose_words(words) {
        return s.to_string();
    }
    let mut q = rest.trim_end();
    while let Some(r) =
        ["\\,", "\\;", "\\:", "\\ ", "\\quad", "~"].iter().find_map(|sp| q.strip_suffix(sp))
    {
        q = r.trim_end();
    }
    let quantity =
        q.ends_with(|c: char| c.is_ascii_digit() || c == '}' || c == ')') || q.ends_with("\\pi");
    if quantity && !q.ends_with("\\}") {
        q.to_string()
    } else {
        s.to_string()
    }
}

/// Replaces characters that have an ASCII / LaTeX spelling, so "−3" (U+2212) equals "-3".
fn map_unicode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\u{2212}' | '\u{2013}' | '\u{2012}' | '\u{FE63}' | '\u{FF0D}' => out.push('-'),
            '\u{00D7}' | '\u{00B7}' | '\u{22C5}' | '\u{2217}' => out.push('*'),
            '\u{00F7}' => out.push('/'),
            '\u{03C0}' => out.push_str("\\pi "),
            '\u{221E}' => out.push_str("\\infty "),
            '\u{221A}' => out.push_str("\\sqrt"),
            '\u{00B0}' | '\u{2103}' => {} // degree sign (and degree-Celsius) is a unit
            '\u{00B2}' => out.push_str("^2"),
            '\u{00B3}' => out.push_str("^3"),
            '\u{FF08}' => out.push('('),
            '\u{FF09}' => out.push(')'),
            '\u{FF0C}' => out.push(','),
            '\u{FF05}' => out.push('%'),
            // Currency signs are units, like `\$`.
            '\u{20AC}' | '\u{00A3}' | '\u{00A5}' => {}
            '\u{2264}' => out.push_str("<="),
            '\u{2265}' => out.push_str(">="),
            '\u{2260}' => out.push_str("!="),
            '\u{FF1A}' => out.push(':'),
            c if c.is_whitespace() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Drops `\text{..}`-style wrappers, keeping their argument (nested ones too).
fn unwrap_styles(s: &str) -> String {
    let b = s.as_bytes();
    let matches = brace_matches(s);
    let mut keep = vec![true; b.len()];
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        let name_end = i + 1 + b[i + 1..].iter().take_while(|c| c.is_ascii_alphabetic()).count();
        if name_end == i + 1 {
            i += 2; // escaped character
            continue;
        }
        let name = &s[i + 1..name_end];
        let mut j = name_end;
        while b.get(j) == Some(&b' ') {
            j += 1;
        }
        if UNWRAP.contains(&name) && b.get(j) == Some(&b'{') {
            if let Some(close) = matches[j] {
                keep[i..=j].iter_mut().for_each(|k| *k = false);
                keep[close] = false;
                i = j + 1;
                continue;
            }
        }
        i = name_end;
    }
    // Only ASCII bytes were dropped, so the rest is still valid UTF-8.
    let bytes: Vec<u8> = b.iter().zip(&keep).filter(|(_, k)| **k).map(|(c, _)| *c).collect();
    String::from_utf8(bytes).unwrap_or_default()
}

/// Rewrites LaTeX commands to canonical forms, reading whole command names so `\right` never
/// matches inside `\rightarrow`.
fn map_commands(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '$' {
            i += 1; // math delimiters carry no meaning here
            continue;
        }
        if c == '~' {
            out.push(' ');
            i += 1;
            continue;
        }
        if c != '\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let start = i + 1;
        let mut end = start;
        while end < chars.len() && chars[end].is_ascii_alphabetic() {
            end += 1;
        }
        if end == start {
            // Single-character command.
            match chars.get(start) {
                None => out.push('\\'),
                // `\!` is a negative space: `16,\!386` is one number, so it joins what follows.
                Some('!') => {
                    i = start + 1;
                    while chars.get(i).is_some_and(|c| c.is_whitespace()) {
                        i += 1;
                    }
                    continue;
                }
                Some(',' | ';' | ':' | ' ') => out.push(' '),
                Some('(' | ')' | '[' | ']' | '$') => {}
                Some('%') => out.push('%'),
                Some(&other) => {
                    out.push('\\');
                    out.push(other);
                }
            }
            i = start + 1;
            continue;
        }
        let name: String = chars[start..end].iter().collect();
        let mut next = end;
        let rep: &str = match name.as_str() {
            "left" | "right" | "bigl" | "bigr" | "Bigl" | "Bigr" | "big" | "Big" => {
                // `\left.` / `\right.` are invisible delimiters.
                if chars.get(end) == Some(&'.') {
                    next += 1;
                }
                ""
            }
            "quad" | "qquad" | "displaystyle" | "textstyle" => " ",
            "dfrac" | "tfrac" | "cfrac" => "\\frac",
            "dbinom" | "tbinom" => "\\binom",
            "circ" | "degree" => "",
            "cdot" | "times" | "ast" => "*",
            "div" => "/",
            // Relations get their ASCII spelling, so `x \geq 5` = `x >= 5`.
            "le" | "leq" | "leqslant" => "<=",
            "ge" | "geq" | "geqslant" => ">=",
            "ne" | "neq" => "!=",
            "lt" => "<",
            "gt" => ">",
            "varnothing" => "\\emptyset",
            "ldots" | "cdots" => "\\dots",
            "lbrace" => "\\{",
            "rbrace" => "\\}",
            "infin" => "\\infty",
            _ => {
                out.push('\\');
                out.push_str(&name);
                i = end;
                continue;
            }
        };
        out.push_str(rep);
        // Keep a command that follows a removed one from fusing with a preceding letter.
        if rep.starts_with('\\') && chars.get(next).is_some_and(|c| c.is_ascii_alphabetic()) {
            out.push(' ');
        }
        i = next;
    }
    out
}

/// `x = 5` -> `5`: a single-variable assignment (one letter, optional subscript, or a Greek
/// command) with exactly one `=`. Relations (`\le`, `<=`, `!=`) are left alone.
pub(crate) fn strip_assignment(s: &str) -> &str {
    if s.matches('=').count() != 1 {
        return s;
    }
    let Some((lhs, rhs)) = s.split_once('=') else {
        return s;
    };
    let (lhs, rhs) = (lhs.trim(), rhs.trim());
    if rhs.is_empty() || lhs.ends_with(['<', '>', '!', ':']) {
        return s;
    }
    let (base, sub) = match lhs.split_once('_') {
        Some((b, sub)) => (b, Some(sub)),
        None => (lhs, None),
    };
    let base_ok = (base.len() == 1 && base.as_bytes()[0].is_ascii_alphabetic())
        || (base.len() > 2
            && base.starts_with('\\')
            && base[1..].bytes().all(|c| c.is_ascii_alphabetic())
            && GREEK.contains(&&base[1..]));
    let sub_ok = match sub {
        None => true,
        Some(x) => {
            let x = x.strip_prefix('{').and_then(|x| x.strip_suffix('}')).unwrap_or(x);
            !x.is_empty() && x.len() <= 3 && x.bytes().all(|c| c.is_ascii_alphanumeric())
        }
    };
    if base_ok && sub_ok {
        rhs
    } else {
        s
    }
}

pub(crate) const GREEK: &[&str] = &[
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "varepsilon",
    "zeta",
    "eta",
    "theta",
    "vartheta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "rho",
    "sigma",
    "tau",
    "upsilon",
    "phi",
    "varphi",
    "chi",
    "psi",
    "omega",
    "Gamma",
    "Delta",
    "Theta",
    "Lambda",
    "Xi",
    "Sigma",
    "Phi",
    "Psi",
    "Omega",
];

/// Drops trailing unit words (`5 cm`, `5cm`, `12 square meters`, `3 m^2`, `60 km/h`) when what
/// is left ends like a quantity (a digit, `}`, `)` or `\pi`).
fn strip_units(s: &str) -> (String, bool) {
    let mut t = s.trim_end();
    let mut percent = false;
    loop {
        let mut body = t;
        for exp in ["^{2}", "^{3}", "^2", "^3"] {
            if let Some(b) = body.strip_suffix(exp) {
                body = b;
                break;
            }
        }
        let word_len =
            body.bytes().rev().take_while(|c| c.is_ascii_alphabetic() || *c == b'/').count();
        if word_len == 0 {
            break;
        }
        let (rest, word) = body.split_at(body.len() - word_len);
        let lower = word.to_ascii_lowercase();
        // Inside a rate (`km/h`) `h` is unambiguous.
        let rate = lower.contains('/');
        let is_unit = lower.split('/').all(|w| UNITS.contains(&w) || (rate && w == "h"));
        if !is_unit || rest.ends_with('\\') || rest.trim().is_empty() {
            break;
        }
        percent |= matches!(lower.as_str(), "percent" | "percentage" | "pct");
        t = rest.trim_end();
    }
    let quantity_end =
        t.ends_with(|c: char| c.is_ascii_digit() || c == '}' || c == ')') || t.ends_with("\\pi");
    if t.len() < s.trim_end().len() && quantity_end {
        (t.to_string(), percent)
    } else {
        (s.to_string(), false)
    }
}

fn trim_periods(s: &str) -> &str {
    s.trim().trim_end_matches('.').trim_end()
}

/// Normalizes one answer string. Order matters: wrappers are removed before units (so
/// `\text{ cm}` becomes a unit word) and before the assignment strip.
pub(crate) fn normalize(s: &str) -> Norm {
    let s = map_unicode(&undouble_backslashes(s));
    let s = unwrap_styles(&strip_prose_nouns(&s));
    let mut s = map_commands(&s);
    s = s.replace("{,}", ",").replace("{, }", ",");
    // A removed `\circ` leaves `90^{}` or `90^`.
    s = s.replace("^{}", "").replace("^{ }", "");
    let mut percent = false;
    if s.contains('%') {
        percent = true;
        s = s.replace('%', "");
    }
    // `x = \frac13 \approx 0.33` states `\frac13`; `x \approx 0.33` states 0.33.
    if let Some(k) = s.find("\\approx") {
        s = if s[..k].contains('=') {
            s[..k].to_string()
        } else if s[..k].trim().is_empty() {
            s[k + "\\approx".len()..].to_string()
        } else {
            s.replacen("\\approx", "=", 1)
        };
    }
    let mut t = trim_periods(&s).trim_end_matches('^').trim_end().to_string();
    let full = t.split_whitespace().collect::<Vec<_>>().join(" ");
    t = strip_assignment(&t).to_string();
    let (u, unit_percent) = strip_units(&t);
    percent |= unit_percent;
    let t = trim_periods(&u);
    let text = t.split_whitespace().collect::<Vec<_>>().join(" ");
    Norm { text, percent, full }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_common_forms() {
        let n = |s: &str| normalize(s).text;
        assert_eq!(n(r"\text{yes}"), "yes");
        assert_eq!(n(r"90^\circ"), "90");
        assert_eq!(n(r"90^{\circ}"), "90");
        assert_eq!(n("90°"), "90");
        assert_eq!(n(r"\dfrac{1}{2}"), r"\frac{1}{2}");
        assert_eq!(n(r"\left( 1, 2 \right)"), "( 1, 2 )");
        assert_eq!(n(r"x \rightarrow 5"), r"x \rightarrow 5");
        assert_eq!(n(r"5\text{ cm}"), "5");
        assert_eq!(n("5cm"), "5");
        assert_eq!(n("12 square meters"), "12");
        assert_eq!(n(r"10 \text{ apples}"), "10");
        assert_eq!(n(r"4\,\text{red apples}."), "4");
        assert_eq!(n(r"4~\mbox{ apples}"), "4");
        assert_eq!(n(r"\frac{1}{2}\text{ pies}"), r"\frac{1}{2}");
        assert_eq!(n(r"\text{12 students}"), "12");
        assert_eq!(n(r"2 \text{ (apples)}"), "2");
        // Words that change the quantity, a variable, a set, no quantity: kept.
        assert_eq!(n(r"2 \text{ million}"), "2 million");
        assert_eq!(n(r"5 \text{ or more}"), "5 or more");
        assert_eq!(n(r"5\text{ x}"), "5 x");
        assert_eq!(n(r"\{1, 2\} \text{ apples}"), r"\{1, 2\} apples");
        assert_eq!(n(r"\text{Yes}"), "Yes");
        assert_eq!(n(r"x \text{ apples}"), "x apples");
        assert_eq!(n("3 m^2"), "3");
        assert_eq!(n("60 km/h"), "60");
        assert_eq!(n(r"\$5.00"), "5.00");
        assert_eq!(n("$x = 5$."), "5");
        assert_eq!(n("y_1 = 3"), "3");
        assert_eq!(n("x <= 3"), "x <= 3");
        assert_eq!(n(r"1{,}000"), "1,000");
        assert_eq!(n("\u{2212}3"), "-3");
        assert_eq!(n("h"), "h");
        assert_eq!(n("2h"), "2h");
        assert!(normalize(r"50\%").percent);
        assert_eq!(n(r"50\%"), "50");
        assert_eq!(n("50 percent"), "50");
        assert!(normalize("50 percent").percent);
    }
}
