//! Relations in answers: equations, inequalities and chains of them.
//!
//! Works on normalized text, where every relation has its ASCII spelling (`<=`, `>=`, `!=`,
//! `<`, `>`, `=`; see `normalize`). Three uses, after Math-Verify's conventions
//! (huggingface/Math-Verify, `tests/test_all.py::test_relations_math`):
//! - the value of a chain `x = 5+5+1 = 11` is its last side;
//! - a labelled value (`|AB| = 1`, `(p, q) = (3, 2)`, `V_1 : V_2 = 11 : 21`) is its value;
//! - two single relations are equal when they are the same relation after moving everything
//!   to one side: `5 >= x` = `x <= 5`, `-x > -1` = `x < 1`, `2x + 4y - 3 = 0` =
//!   `y = -\frac12 x + \frac34` (sides compared up to a constant factor, positive for
//!   inequalities, at sample points: see `expr::proportional`).
//!
//! A double inequality `a < x <= b` of the reference is also the interval `(a, b]`.

use super::expr::{parse, proportional, Expr, Op};

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Rel {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

/// Splits `s` at its top-level relation signs: sides and the relations between them.
/// `None` when there is no relation.
pub(crate) fn split(s: &str) -> Option<(Vec<&str>, Vec<Rel>)> {
    let b = s.as_bytes();
    let (mut sides, mut rels) = (Vec::new(), Vec::new());
    let (mut depth, mut start, mut i) = (0i32, 0usize, 0usize);
    while i < b.len() {
        let two = b.get(i + 1) == Some(&b'=');
        let rel = match b[i] {
            b'(' | b'[' | b'{' => {
                depth += 1;
                None
            }
            b')' | b']' | b'}' => {
                depth -= 1;
                None
            }
            _ if depth != 0 => None,
            b'<' if two => Some((Rel::Le, 2)),
            b'>' if two => Some((Rel::Ge, 2)),
            b'!' if two => Some((Rel::Ne, 2)),
            b'<' => Some((Rel::Lt, 1)),
            b'>' => Some((Rel::Gt, 1)),
            b'=' => Some((Rel::Eq, 1)),
            _ => None,
        };
        if let Some((r, len)) = rel {
            sides.push(s[start..i].trim());
            rels.push(r);
            i += len;
            start = i;
            continue;
        }
        i += 1;
    }
    if rels.is_empty() {
        return None;
    }
    sides.push(s[start..].trim());
    Some((sides, rels))
}

/// Whether `s` reads as a name rather than a value: no digit outside subscripts, and at least
/// one letter (`|AB|`, `f(x)`, `(p, q)`, `V_{1} : V_{2}`, `\frac{NO}{BO}`).
pub(crate) fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let mut letters = 0;
    while i < b.len() {
        match b[i] {
            b'_' => {
                // Skip the subscript: `_1`, `_{12}`.
                i += 1;
                if b.get(i) == Some(&b'{') {
                    while i < b.len() && b[i] != b'}' {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit() => return false,
            c if c.is_ascii_alphabetic() => letters += 1,
            _ => {}
        }
        i += 1;
    }
    letters > 0
}

/// Whether `s` is a plain value: no letters outside LaTeX command names.
fn is_constant(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_alphabetic() {
                i += 1;
            }
            match &s[start..i] {
                "text" => return false,
                // An environment name (`\begin{pmatrix}`) is no variable.
                "begin" | "end" if b.get(i) == Some(&b'{') => {
                    while i < b.len() && b[i] != b'}' {
                        i += 1;
                    }
                }
                _ => {}
            }
            continue;
        }
        if b[i].is_ascii_alphabetic() {
            return false;
        }
        i += 1;
    }
    !s.trim().is_empty()
}

/// The value an answer states: the last side of an `=` chain whose last side is a plain value
/// (`x = 5+5+1 = 11` -> `11`), or the value of a labelled one (`|AB| = 1` -> `1`). Also drops
/// a leading `x \in`. Anything else is returned unchanged.
pub(crate) fn stated_value(s: &str) -> &str {
    let s = s.trim();
    if let Some(k) = s.find("\\in ") {
        if is_label(&s[..k]) && !s[..k].contains(['<', '>', '=']) {
            return s[k + "\\in ".len()..].trim();
        }
    }
    let Some((sides, rels)) = split(s) else { return s };
    if !rels.iter().all(|r| *r == Rel::Eq) || sides.iter().any(|x| x.is_empty()) {
        return s;
    }
    let last = sides[sides.len() - 1];
    let chain = sides.len() > 2 && is_constant(last);
    // `|AB| = 1`, and a computation `A + B = C` of plain values (Math-Verify's "last `=`").
    let labelled = sides.len() == 2 && (is_label(sides[0]) || is_constant(sides[0]));
    if chain || (labelled && is_constant(last)) {
        last
    } else {
        s
    }
}

/// `a < x <= b` (or the reverse, `b >= x > a`) as the interval `(a, b]`, when the middle is a
/// name. `None` otherwise.
pub(crate) fn double_inequality_interval(s: &str) -> Option<String> {
    let (sides, rels) = split(s)?;
    if rels.len() != 2 || !is_label(sides[1]) || sides[0].is_empty() || sides[2].is_empty() {
        return None;
    }
    let open = |r: Rel| matches!(r, Rel::Lt | Rel::Gt);
    let (lo, hi, lo_open, hi_open) = match (rels[0], rels[1]) {
        (Rel::Lt | Rel::Le, Rel::Lt | Rel::Le) => {
            (sides[0], sides[2], open(rels[0]), open(rels[1]))
        }
        (Rel::Gt | Rel::Ge, Rel::Gt | Rel::Ge) => {
            (sides[2], sides[0], open(rels[1]), open(rels[0]))
        }
        _ => return None,
    };
    Some(format!(
        "{}{lo}, {hi}{}",
        if lo_open { '(' } else { '[' },
        if hi_open { ')' } else { ']' }
    ))
}

/// One relation as `lhs - rhs REL 0` with REL one of `>`, `>=`, `=`, `!=`.
fn one_sided(s: &str) -> Option<(Expr, Rel)> {
    let (sides, rels) = split(s)?;
    if rels.len() != 1 {
        return None;
    }
    let (l, r) = (parse(sides[0])?, parse(sides[1])?);
    let diff = |a: Expr, b: Expr| Expr::Bin(Op::Sub, Box::new(a), Box::new(b));
    Some(match rels[0] {
        Rel::Lt => (diff(r, l), Rel::Gt),
        Rel::Le => (diff(r, l), Rel::Ge),
        rel => (diff(l, r), rel),
    })
}

/// Whether two single relations are the same (see the module docs). Both must parse fully and
/// involve the same variables; constant relations (`1 < 2`) are never equal this way.
pub(crate) fn relations_equal(a: &str, b: &str) -> bool {
    let (Some((x, ra)), Some((y, rb))) = (one_sided(a), one_sided(b)) else { return false };
    if ra != rb {
        return false;
    }
    // An inequality may only be scaled by a positive factor; an (in)equation by any non-zero one.
    let positive = matches!(ra, Rel::Gt | Rel::Ge);
    proportional(&x, &y, positive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_intervals_and_relations() {
        assert_eq!(stated_value("x = 5+5+1 = 7 = 11"), "11");
        assert_eq!(stated_value("|AB| = 1"), "1");
        assert_eq!(stated_value("(p,q)=(3,2)"), "(3,2)");
        assert_eq!(stated_value("x \\in [-2,7]"), "[-2,7]");
        assert_eq!(stated_value("2x+4y-3=0"), "2x+4y-3=0");
        assert_eq!(stated_value("1+2 = 3"), "3");
        assert_eq!(
            stated_value(
                r"\begin{pmatrix}1\end{pmatrix} + \begin{pmatrix}2\end{pmatrix} = \begin{pmatrix}3\end{pmatrix}"
            ),
            r"\begin{pmatrix}3\end{pmatrix}"
        );
        assert_eq!(stated_value("y = x + 1"), "y = x + 1");
        assert_eq!(double_inequality_interval("-2 <= x < 7").as_deref(), Some("[-2, 7)"));
        assert_eq!(double_inequality_interval("7 > x >= -2").as_deref(), Some("[-2, 7)"));
        assert_eq!(double_inequality_interval("1 < 2 < 3"), None);
        assert!(relations_equal("5 >= x", "x <= 5"));
        assert!(relations_equal("-x > -1", "x < 1"));
        assert!(relations_equal("2x+4y-3=0", "y=-\\frac{1}{2}x+\\frac{3}{4}"));
        assert!(!relations_equal("x < 5", "x <= 5"));
        assert!(!relations_equal("x > 5", "x < 5"));
        assert!(!relations_equal("-x > 1", "x > -1"));
        assert!(!relations_equal("x^2 = 4", "x = 2"));
        assert!(!relations_equal("1 < 2", "2 > 1"));
    }
}
