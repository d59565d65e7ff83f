//! A small LaTeX arithmetic parser and evaluator, for numeric / symbolic equivalence.
//!
//! This is the cheap part of what Math-Verify does with SymPy: answers are parsed to an
//! expression tree and compared by value (1e-6 relative or 1e-9 absolute tolerance). Free
//! variables are compared by evaluating both sides at a few fixed points, which decides
//! polynomial / rational identities like `\frac{x}{2}` = `0.5x` with negligible false-positive
//! risk. Anything the grammar does not know makes the parse fail, and the caller falls back to
//! string comparison.

use super::normalize::GREEK;
use std::collections::BTreeSet;

/// Longest answer (in chars) that is parsed; longer answers are only compared as strings.
pub(crate) const MAX_PARSE_CHARS: usize = 1000;
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone)]
pub(crate) enum Expr {
    Num(f64),
    Var(String),
    Pi,
    Inf,
    Neg(Box<Expr>),
    Bin(Op, Box<Expr>, Box<Expr>),
    /// Radicand and optional index (`\sqrt[3]{x}`).
    Sqrt(Box<Expr>, Option<Box<Expr>>),
    Func(Func, Box<Expr>),
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Func {
    Sin,
    Cos,
    Tan,
    Ln,
    Log,
    Exp,
}

struct Parser {
    c: Vec<char>,
    pos: usize,
    depth: usize,
}

type P<T> = Option<T>;

impl Parser {
    fn peek(&self) -> Option<char> {
        self.c.get(self.pos).copied()
    }
    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }
    fn eat(&mut self, ch: char) -> bool {
        self.skip_ws();
        if self.peek() == Some(ch) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    /// Guards recursion so deeply nested garbage cannot overflow the stack.
    fn enter(&mut self) -> P<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }
    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn expr(&mut self) -> P<Expr> {
        self.enter()?;
        let mut lhs = self.term()?;
        loop {
            let op = if self.eat('+') {
                Op::Add
            } else if self.eat('-') {
                Op::Sub
            } else {
                break;
            };
            let rhs = self.term()?;
            lhs = Expr::Bin(op, Box::new(lhs), Box::new(rhs));
        }
        self.leave();
        Some(lhs)
    }

    fn term(&mut self) -> P<Expr> {
        let mut lhs = self.unary()?;
        loop {
            let (op, rhs) = if self.eat('*') {
                (Op::Mul, self.unary()?)
            } else if self.eat('/') {
                (Op::Div, self.unary()?)
            } else if self.implicit_next() {
                (Op::Mul, self.power()?)
            } else {
                break;
            };
            lhs = Expr::Bin(op, Box::new(lhs), Box::new(rhs));
        }
        Some(lhs)
    }

    /// Implicit multiplication (`2\sqrt{3}`, `3\pi`, `2(x+1)`), but never number-number
    /// (`2 3` is not 6) and never before a relation or unknown command (parse then fails).
    fn implicit_next(&mut self) -> bool {
        self.skip_ws();
        match self.peek() {
            Some(c) if c.is_ascii_alphabetic() || c == '(' || c == '{' => true,
            Some('\\') => {
                let name: String =
                    self.c[self.pos + 1..].iter().take_while(|c| c.is_ascii_alphabetic()).collect();
                !name.is_empty() && !matches!(name.as_str(), "le" | "ge" | "ne" | "in" | "to")
            }
            _ => false,
        }
    }

    fn unary(&mut self) -> P<Expr> {
        self.enter()?;
        let e = if self.eat('-') {
            Expr::Neg(Box::new(self.unary()?))
        } else if self.eat('+') {
            self.unary()?
        } else {
            self.power()?
        };
        self.leave();
        Some(e)
    }

    fn power(&mut self) -> P<Expr> {
        let base = self.atom()?;
        if self.eat('^') {
            self.enter()?;
            let exp = if self.eat('-') { Expr::Neg(Box::new(self.arg()?)) } else { self.arg()? };
            self.leave();
            return Some(Expr::Bin(Op::Pow, Box::new(base), Box::new(exp)));
        }
        Some(base)
    }

    /// A LaTeX macro argument: `{expr}`, or a single digit / letter / command (`\frac34`).
    fn arg(&mut self) -> P<Expr> {
        self.skip_ws();
        match self.peek()? {
            '{' => {
                self.pos += 1;
                let e = self.expr()?;
                self.eat('}').then_some(e)
            }
            c if c.is_ascii_digit() => {
                self.pos += 1;
                Some(Expr::Num(f64::from(c as u8 - b'0')))
            }
            c if c.is_ascii_alphabetic() => {
                self.pos += 1;
                Some(Expr::Var(c.to_string()))
            }
            '\\' => self.atom(),
            _ => None,
        }
    }

    fn number(&mut self) -> P<Expr> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        if self.peek() == Some('.') && self.c.get(self.pos + 1).is_some_and(char::is_ascii_digit) {
            self.pos += 1;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1;
            }
        }
        // `1.5.3` or `5.` followed by a digit is not a number.
        if self.peek() == Some('.') && self.c.get(self.pos + 1).is_some_and(char::is_ascii_digit) {
            return None;
        }
        let s: String = self.c[start..self.pos].iter().collect();
        s.parse().ok().map(Expr::Num)
    }

    fn atom(&mut self) -> P<Expr> {
        self.enter()?;
        self.skip_ws();
        let c = self.peek()?;
        let e = match c {
            '0'..='9' => self.number()?,
            '.' if self.c.get(self.pos + 1).is_some_and(char::is_ascii_digit) => self.number()?,
            c if c.is_ascii_alphabetic() => {
                self.pos += 1;
                Expr::Var(c.to_string())
            }
            '(' | '[' | '{' => {
                self.pos += 1;
                let close = match c {
                    '(' => ')',
                    '[' => ']',
                    _ => '}',
                };
                let e = self.expr()?;
                if !self.eat(close) {
                    return None;
                }
                e
            }
            '\\' => self.command()?,
            _ => return None,
        };
        self.leave();
        Some(e)
    }

    fn command(&mut self) -> P<Expr> {
        self.pos += 1; // backslash
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
            self.pos += 1;
        }
        let name: String = self.c[start..self.pos].iter().collect();
        let f = match name.as_str() {
            "frac" => {
                let num = self.arg()?;
                let den = self.arg()?;
                return Some(Expr::Bin(Op::Div, Box::new(num), Box::new(den)));
            }
            "sqrt" => {
                let index = if self.eat('[') {
                    let i = self.expr()?;
                    if !self.eat(']') {
                        return None;
                    }
                    Some(Box::new(i))
                } else {
                    None
                };
                return Some(Expr::Sqrt(Box::new(self.arg()?), index));
            }
            "pi" => return Some(Expr::Pi),
            "infty" => return Some(Expr::Inf),
            "sin" => Some(Func::Sin),
            "cos" => Some(Func::Cos),
            "tan" => Some(Func::Tan),
            "ln" => Some(Func::Ln),
            "log" => Some(Func::Log),
            "exp" => Some(Func::Exp),
            g if GREEK.contains(&g) => return Some(Expr::Var(name.clone())),
            _ => None,
        }?;
        // `\sin x`, `\sin(x)`, `\sin{x}`, `\sin 2x` is read as `\sin(2) x`, like most graders.
        let a = self.power()?;
        Some(Expr::Func(f, Box::new(a)))
    }
}

/// Parses a whole answer as one expression; `None` when any of it is not understood.
pub(crate) fn parse(s: &str) -> Option<Expr> {
    if s.chars().count() > MAX_PARSE_CHARS {
        return None;
    }
    let mut p = Parser { c: s.chars().collect(), pos: 0, depth: 0 };
    let e = p.expr()?;
    p.skip_ws();
    (p.pos == p.c.len()).then_some(e)
}

impl Expr {
    fn eval(&self, env: &[(String, f64)]) -> f64 {
        match self {
            Expr::Num(x) => *x,
            Expr::Var(v) => env.iter().find(|(n, _)| n == v).map_or(f64::NAN, |(_, x)| *x),
            Expr::Pi => std::f64::consts::PI,
            Expr::Inf => f64::INFINITY,
            Expr::Neg(a) => -a.eval(env),
            Expr::Bin(op, a, b) => {
                let (x, y) = (a.eval(env), b.eval(env));
                let r = match op {
                    Op::Add => x + y,
                    Op::Sub => x - y,
                    Op::Mul => x * y,
                    // `1/0` is undefined, not infinity: it must not equal `\infty`.
                    Op::Div if y == 0.0 => f64::NAN,
                    Op::Div => x / y,
                    Op::Pow => x.powf(y),
                };
                // Overflow (`10^{1000}`) is not `\infty`: all overflows would compare equal.
                if r.is_infinite() && x.is_finite() && y.is_finite() {
                    f64::NAN
                } else {
                    r
                }
            }
            Expr::Sqrt(a, None) => a.eval(env).sqrt(),
            Expr::Sqrt(a, Some(n)) => {
                let (x, n) = (a.eval(env), n.eval(env));
                // Odd roots of negatives are real.
                if x < 0.0 && n.fract() == 0.0 && (n as i64) % 2 == 1 {
                    -(-x).powf(1.0 / n)
                } else {
                    x.powf(1.0 / n)
                }
            }
            Expr::Func(f, a) => {
                let x = a.eval(env);
                match f {
                    Func::Sin => x.sin(),
                    Func::Cos => x.cos(),
                    Func::Tan => x.tan(),
                    Func::Ln => x.ln(),
                    Func::Log => x.log10(),
                    Func::Exp => x.exp(),
                }
            }
        }
    }

    /// Whether `\pi` occurs outside a function argument (`\cos\pi` is the plain number -1).
    fn has_free_pi(&self) -> bool {
        match self {
            Expr::Pi => true,
            Expr::Neg(a) => a.has_free_pi(),
            Expr::Bin(_, a, b) => a.has_free_pi() || b.has_free_pi(),
            Expr::Sqrt(a, n) => a.has_free_pi() || n.as_ref().is_some_and(|n| n.has_free_pi()),
            _ => false,
        }
    }

    fn vars(&self, out: &mut BTreeSet<String>) {
        match self {
            Expr::Var(v) => {
                out.insert(v.clone());
            }
            Expr::Neg(a) | Expr::Func(_, a) => a.vars(out),
            Expr::Bin(_, a, b) => {
                a.vars(out);
                b.vars(out);
            }
            Expr::Sqrt(a, n) => {
                a.vars(out);
                if let Some(n) = n {
                    n.vars(out);
                }
            }
            _ => {}
        }
    }
}

/// 1e-6 relative or 1e-9 absolute (near zero); infinities only equal themselves; NaN (from
/// `1/0`, `\sqrt{-1}`) equals nothing.
pub(crate) fn close(x: f64, y: f64) -> bool {
    if x.is_nan() || y.is_nan() {
        return false;
    }
    if x.is_infinite() || y.is_infinite() {
        return x == y;
    }
    let d = (x - y).abs();
    d <= 1e-9 || d <= 1e-6 * x.abs().max(y.abs())
}

/// Sample values for free variables: irrational-looking, positive (so `\sqrt{x}` and `\ln x`
/// stay real), and different per variable and per point.
// Sample points, not constants: some sit near ln 2, e and log2 10 by chance.
#[allow(clippy::approx_constant)]
const SAMPLES: [f64; 9] = [0.5772, 1.3247, 2.2361, 0.6931, 1.6180, 2.7183, 0.4142, 1.2021, 3.3219];

/// Equality of two parsed expressions.
///
/// `\pi` has to appear on both sides or neither: a decimal approximation of `\pi` (3.14,
/// 3.1416) never matches an exact answer in `\pi`, whatever its digits. Surds get no such
/// rule (`\sqrt{4}` must equal 2), so a decimal within the tolerance of a surd
/// (`1.41421356` for `\sqrt{2}`) is accepted.
pub(crate) fn expr_equal(a: &Expr, b: &Expr) -> bool {
    if a.has_free_pi() != b.has_free_pi() {
        return false;
    }
    let (mut va, mut vb) = (BTreeSet::new(), BTreeSet::new());
    a.vars(&mut va);
    b.vars(&mut vb);
    if va != vb {
        return false;
    }
    if va.is_empty() {
        return close(a.eval(&[]), b.eval(&[]));
    }
    let mut valid = 0;
    for k in 0..3 {
        let env: Vec<(String, f64)> = va
            .iter()
            .enumerate()
            .map(|(j, v)| (v.clone(), SAMPLES[(3 * j + k) % SAMPLES.len()] + 0.1 * j as f64))
            .collect();
        let (x, y) = (a.eval(&env), b.eval(&env));
        if x.is_nan() && y.is_nan() {
            continue; // outside both domains at this point
        }
        if !close(x, y) {
            return false;
        }
        valid += 1;
    }
    valid >= 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(s: &str) -> f64 {
        parse(s).unwrap_or_else(|| panic!("parse {s}")).eval(&[])
    }

    #[test]
    fn evaluates_latex_arithmetic() {
        assert_eq!(val(r"\frac{3}{4}"), 0.75);
        assert_eq!(val(r"\frac34"), 0.75);
        assert_eq!(val("-3/4"), -0.75);
        assert!((val(r"2\sqrt{3}") - val(r"\sqrt{12}")).abs() < 1e-12);
        assert!((val(r"\frac{\sqrt{3}}{2}") - 0.75f64.sqrt()).abs() < 1e-12);
        assert_eq!(val(r"\sqrt[3]{-8}"), -2.0);
        assert_eq!(val("2^{10}"), 1024.0);
        assert_eq!(val("2^-1"), 0.5);
        assert_eq!(val("(1+2)(3)"), 9.0);
        assert!(val("1/0").is_nan());
        assert!(parse("1.5.3").is_none());
        assert!(parse("2 3").is_none());
        assert!(parse(r"x \le 3").is_none());
        assert!(parse(&"(".repeat(10_000)).is_none());
    }
}
