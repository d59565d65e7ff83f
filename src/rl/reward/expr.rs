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
    /// `\binom{n}{k}`: defined for integers `0 <= k <= n` (else NaN).
    Binom,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Func {
    Sin,
    Cos,
    Tan,
    Sec,
    Csc,
    Cot,
    Asin,
    Acos,
    Atan,
    Sinh,
    Cosh,
    Tanh,
    Ln,
    Log,
    Exp,
    Abs,
    Floor,
    Ceil,
    /// `n!`: defined for the integers 0..=170 (else NaN: no gamma function, as a sampled
    /// variable is never an integer and such points are skipped).
    Fact,
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
            } else if let Some(frac) = self.mixed_fraction(&lhs) {
                // `2\frac{1}{2}` is two and a half, as Math-Verify reads it.
                let whole = lhs.literal().unwrap_or(0.0);
                (if whole < 0.0 { Op::Sub } else { Op::Add }, frac)
            } else if self.implicit_next() {
                (Op::Mul, self.power()?)
            } else {
                break;
            };
            lhs = Expr::Bin(op, Box::new(lhs), Box::new(rhs));
        }
        Some(lhs)
    }

    /// The fraction of a mixed number: `lhs` a whole number as written (`2`, `-3`) and next a
    /// `\frac` of two whole numbers (`\frac{1}{2}`, `\frac34`). Anything else (`2\frac{x}{3}`,
    /// `2\frac{\pi}{3}`, `0.5\frac12`) is left for implicit multiplication.
    fn mixed_fraction(&mut self, lhs: &Expr) -> Option<Expr> {
        let whole = |e: &Expr| e.literal().is_some_and(|x| x.fract() == 0.0);
        let plain = |e: &Expr| matches!(e, Expr::Num(x) if x.fract() == 0.0);
        if !whole(lhs) {
            return None;
        }
        self.skip_ws();
        let start = self.pos;
        if !self.c[start..].starts_with(&['\\', 'f', 'r', 'a', 'c']) {
            return None;
        }
        self.pos += 5;
        let frac = (|| {
            let (num, den) = (self.arg()?, self.arg()?);
            (plain(&num) && plain(&den)).then(|| Expr::Bin(Op::Div, Box::new(num), Box::new(den)))
        })();
        if frac.is_none() {
            self.pos = start;
        }
        frac
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
                !name.is_empty()
                    && !matches!(
                        name.as_str(),
                        "le" | "ge" | "ne" | "in" | "to" | "rfloor" | "rceil"
                    )
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
        let mut base = self.atom()?;
        // `5!`, `(n+1)!`; never the `!` of `!=`.
        while self.peek() == Some('!') && self.c.get(self.pos + 1) != Some(&'=') {
            self.pos += 1;
            base = Expr::Func(Func::Fact, Box::new(base));
        }
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
            // `|x|`: the inner expression stops at the closing bar (a bar never multiplies).
            '|' => {
                self.pos += 1;
                let e = self.expr()?;
                if !self.eat('|') {
                    return None;
                }
                Expr::Func(Func::Abs, Box::new(e))
            }
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
            "binom" => {
                let n = self.arg()?;
                let k = self.arg()?;
                return Some(Expr::Bin(Op::Binom, Box::new(n), Box::new(k)));
            }
            "lfloor" | "lceil" => {
                let e = self.expr()?;
                let (close, f) =
                    if name == "lfloor" { ("rfloor", Func::Floor) } else { ("rceil", Func::Ceil) };
                self.skip_ws();
                let closing: String = self.c[self.pos..].iter().take(close.len() + 1).collect();
                if closing != format!("\\{close}") {
                    return None;
                }
                self.pos += close.len() + 1;
                return Some(Expr::Func(f, Box::new(e)));
            }
            // `\log_b x` is `\ln x / \ln b`.
            "log" if self.eat('_') => {
                let base = self.arg()?;
                let x = self.power()?;
                let ln = |e| Box::new(Expr::Func(Func::Ln, Box::new(e)));
                return Some(Expr::Bin(Op::Div, ln(x), ln(base)));
            }
            "pi" => return Some(Expr::Pi),
            "infty" => return Some(Expr::Inf),
            "sin" => Some(Func::Sin),
            "cos" => Some(Func::Cos),
            "tan" => Some(Func::Tan),
            "sec" => Some(Func::Sec),
            "csc" => Some(Func::Csc),
            "cot" => Some(Func::Cot),
            "arcsin" => Some(Func::Asin),
            "arccos" => Some(Func::Acos),
            "arctan" => Some(Func::Atan),
            "sinh" => Some(Func::Sinh),
            "cosh" => Some(Func::Cosh),
            "tanh" => Some(Func::Tanh),
            "ln" => Some(Func::Ln),
            "log" => Some(Func::Log),
            "exp" => Some(Func::Exp),
            g if GREEK.contains(&g) => return Some(Expr::Var(name.clone())),
            _ => None,
        }?;
        // `\sin^2 x` is `(\sin x)^2`; `\sin^{-1} x` is the inverse, `\arcsin x` (any other
        // negative power of a function is not read).
        let mut f = f;
        let exponent = if self.eat('^') {
            self.enter()?;
            let e = self.arg()?;
            self.leave();
            match (&e, f) {
                (Expr::Neg(one), Func::Sin | Func::Cos | Func::Tan)
                    if one.literal() == Some(1.0) =>
                {
                    f = match f {
                        Func::Sin => Func::Asin,
                        Func::Cos => Func::Acos,
                        _ => Func::Atan,
                    };
                    None
                }
                (Expr::Neg(_), _) => return None,
                _ => Some(e),
            }
        } else {
            None
        };
        // `\sin x`, `\sin(x)`, `\sin{x}`, `\sin 2x` is read as `\sin(2) x`, like most graders.
        let a = self.power()?;
        let f = Expr::Func(f, Box::new(a));
        Some(match exponent {
            Some(e) => Expr::Bin(Op::Pow, Box::new(f), Box::new(e)),
            None => f,
        })
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
    /// The value of a plain number (`16386.17`, `-5`), written as such.
    pub(crate) fn literal(&self) -> Option<f64> {
        match self {
            Expr::Num(x) => Some(*x),
            Expr::Neg(a) => a.literal().map(|x| -x),
            _ => None,
        }
    }

    pub(crate) fn eval(&self, env: &[(String, f64)]) -> f64 {
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
                    Op::Binom => binomial(x, y),
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
                    Func::Sec => 1.0 / x.cos(),
                    Func::Csc => 1.0 / x.sin(),
                    Func::Cot => 1.0 / x.tan(),
                    Func::Asin => x.asin(),
                    Func::Acos => x.acos(),
                    Func::Atan => x.atan(),
                    Func::Sinh => x.sinh(),
                    Func::Cosh => x.cosh(),
                    Func::Tanh => x.tanh(),
                    Func::Ln => x.ln(),
                    Func::Log => x.log10(),
                    Func::Exp => x.exp(),
                    Func::Abs => x.abs(),
                    Func::Floor => x.floor(),
                    Func::Ceil => x.ceil(),
                    Func::Fact => factorial(x),
                }
            }
        }
    }

    /// Whether the variable `name` occurs outside a function argument (in `\ln e` it does not).
    fn has_free_var(&self, name: &str) -> bool {
        match self {
            Expr::Var(v) => v == name,
            Expr::Neg(a) => a.has_free_var(name),
            Expr::Bin(_, a, b) => a.has_free_var(name) || b.has_free_var(name),
            Expr::Sqrt(a, n) => {
                a.has_free_var(name) || n.as_ref().is_some_and(|n| n.has_free_var(name))
            }
            _ => false,
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

    pub(crate) fn vars(&self, out: &mut BTreeSet<String>) {
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

/// `x!` for the integers 0..=170 (170! is the largest finite f64); NaN elsewhere.
fn factorial(x: f64) -> f64 {
    if x.fract() != 0.0 || !(0.0..=170.0).contains(&x) {
        return f64::NAN;
    }
    (1..=x as u32).map(f64::from).product()
}

/// `n` choose `k` for integers `0 <= k <= n`, NaN elsewhere; exact while the value fits
/// 2^53 (each partial product `C(n, i)` is an integer).
fn binomial(n: f64, k: f64) -> f64 {
    if n.fract() != 0.0 || k.fract() != 0.0 || k < 0.0 || k > n || n > 1e6 {
        return f64::NAN;
    }
    let k = k.min(n - k) as u32;
    (0..k).fold(1.0, |c, i| c * (n - f64::from(i)) / f64::from(i + 1))
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

/// Points at which expressions with free variables are compared: the same for every call
/// (SplitMix64 from a fixed seed), irrational-looking and different per variable and per
/// point. The first [`POINTS`] are positive, so `\sqrt{x}` and `\ln x` are real there:
/// alternately in (0.05, 0.95), where `\arcsin x` is defined, and in (0.3, 3.3). The next
/// [`NEGATIVE_POINTS`] are negatives of the first ones, so `|x|` (or `\sqrt{x^2}`) never
/// equals `x`.
const POINTS: usize = 10;
const NEGATIVE_POINTS: usize = 4;
/// Positive points where both sides are defined needed before two expressions are called
/// equal (points where either side is undefined are skipped).
const MIN_VALID: usize = 5;

fn sample(point: usize, var: usize) -> f64 {
    let (p, sign) = if point < POINTS { (point, 1.0) } else { (point - POINTS, -1.0) };
    let mut z = 0x6d6d_7231_u64
        .wrapping_add((p as u64 * 64 + var as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let u = (z >> 11) as f64 / (1u64 << 53) as f64;
    sign * if p % 2 == 0 { 0.05 + 0.9 * u } else { 0.3 + 3.0 * u }
}

/// The shared variables of `a` and `b`, or `None` when they differ.
fn shared_vars(a: &Expr, b: &Expr) -> Option<Vec<String>> {
    let (mut va, mut vb) = (BTreeSet::new(), BTreeSet::new());
    a.vars(&mut va);
    b.vars(&mut vb);
    (va == vb).then(|| va.into_iter().collect())
}

/// Euler's number where one side names `e` and the other does not (`\ln e` = `1`, `\ln(e^2)`
/// = `2`, as SymPy reads `e`): the variables of both without `e`. Only inside function
/// arguments, on the rule of `\pi` ([`expr_equal`]): a decimal is never taken for an exact
/// answer in `e` (`2.718` != `e`, `0.632` != `1 - 1/e`).
fn euler_vars(a: &Expr, b: &Expr) -> Option<Vec<String>> {
    let (mut va, mut vb) = (BTreeSet::new(), BTreeSet::new());
    a.vars(&mut va);
    b.vars(&mut vb);
    let named = va.remove("e") != vb.remove("e");
    let bound = !a.has_free_var("e") && !b.has_free_var("e");
    (named && bound && va == vb).then(|| va.into_iter().collect())
}

/// `(a, b)` at each sample point where both are finite, and how many of those are positive
/// points. Stops at the first point where `stop` holds (then the values are incomplete).
/// `consts` are fixed values of other names (Euler's `e`), the same at every point.
fn sampled(
    a: &Expr,
    b: &Expr,
    vars: &[String],
    consts: &[(String, f64)],
    stop: impl Fn(f64, f64) -> bool,
) -> (Vec<(f64, f64)>, usize) {
    let mut env: Vec<(String, f64)> = vars.iter().map(|v| (v.clone(), 0.0)).collect();
    let nv = env.len();
    env.extend(consts.iter().cloned());
    let mut values = Vec::with_capacity(POINTS + NEGATIVE_POINTS);
    let mut positive = 0;
    for k in 0..POINTS + NEGATIVE_POINTS {
        for (j, e) in env[..nv].iter_mut().enumerate() {
            e.1 = sample(k, j);
        }
        let (x, y) = (a.eval(&env), b.eval(&env));
        if x.is_finite() && y.is_finite() {
            positive += (k < POINTS) as usize;
            values.push((x, y));
            if stop(x, y) {
                break;
            }
        }
    }
    (values, positive)
}

/// Equality of two parsed expressions.
///
/// `\pi` has to appear on both sides or neither: a decimal approximation of `\pi` (3.14,
/// 3.1416) never matches an exact answer in `\pi`, whatever its digits. Surds get no such
/// rule (`\sqrt{4}` must equal 2), so a decimal within the tolerance of a surd
/// (`1.41421356` for `\sqrt{2}`) is accepted.
///
/// With free variables (the same on both sides) both are evaluated at fixed pseudo-random
/// points ([`sample`]), as Math-Verify falls back to numeric evaluation when SymPy cannot
/// simplify: points where either side is undefined are skipped, every other point must agree
/// ([`close`]), and at least [`MIN_VALID`] positive points must remain. That decides identities with no closed
/// form in this parser (`\tan^2 y + 1` = `\sec^2 y`).
pub(crate) fn expr_equal(a: &Expr, b: &Expr) -> bool {
    if a.has_free_pi() != b.has_free_pi() {
        return false;
    }
    let (vars, consts) = match shared_vars(a, b) {
        Some(vars) => (vars, vec![]),
        None => match euler_vars(a, b) {
            Some(vars) => (vars, vec![("e".to_string(), std::f64::consts::E)]),
            None => return false,
        },
    };
    if vars.is_empty() {
        return close(a.eval(&consts), b.eval(&consts));
    }
    let (values, positive) = sampled(a, b, &vars, &consts, |x, y| !close(x, y));
    positive >= MIN_VALID && values.iter().all(|&(x, y)| close(x, y))
}

/// Whether `a = c * b` for one constant `c` (positive when `positive`), at the sample points:
/// the relation test of `relation::relations_equal`. Needs free variables (a constant
/// relation is decided by its values, not here), both sides non-zero at [`MIN_VALID`] points.
pub(crate) fn proportional(a: &Expr, b: &Expr, positive: bool) -> bool {
    let Some(vars) = shared_vars(a, b) else { return false };
    if vars.is_empty() {
        return false;
    }
    let (values, valid) = sampled(a, b, &vars, &[], |_, _| false);
    if valid < MIN_VALID {
        return false;
    }
    let tiny = |v: f64| v.abs() <= 1e-9;
    if values.iter().any(|&(x, y)| tiny(x) != tiny(y)) {
        return false;
    }
    let ratios: Vec<f64> =
        values.iter().filter(|(x, y)| !tiny(*x) && !tiny(*y)).map(|(x, y)| x / y).collect();
    ratios.len() >= MIN_VALID
        && (!positive || ratios[0] > 0.0)
        && ratios.iter().all(|&r| close(r, ratios[0]))
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
        assert_eq!(val("5!"), 120.0);
        assert_eq!(val(r"2\frac{1}{2}"), 2.5);
        assert_eq!(val(r"-3\frac34"), -3.75);
        assert!((val(r"2\frac{\pi}{2}") - std::f64::consts::PI).abs() < 1e-12);
        assert_eq!(val(r"0.5\frac12"), 0.25);
        let (a, b) = (parse(r"2\frac{1}{2}x").unwrap(), parse(r"\frac{5x}{2}").unwrap());
        assert!(expr_equal(&a, &b));
        let eq = |x: &str, y: &str| expr_equal(&parse(x).unwrap(), &parse(y).unwrap());
        assert!(eq(r"\ln e", "1") && eq(r"\ln(e^2)", "2") && eq(r"x \ln e", "x"));
        assert!(!eq("e", "2.718281828") && !eq("1 - 1/e", "0.6321205588") && !eq(r"\ln e", "2"));
        assert!(eq("e^2", "e e") && !eq("e", "x"));
        assert_eq!(val("(1+2)!^2"), 36.0);
        assert!(val("(-1)!").is_nan() && val("2.5!").is_nan());
        assert!(parse("3 != 4").is_none());
        assert_eq!(val(r"\binom{5}{2}"), 10.0);
        assert_eq!(val(r"\binom{52}{5}"), 2_598_960.0);
        assert!(val(r"\binom{2}{3}").is_nan());
        assert_eq!(val(r"\lfloor 3.5 \rfloor + \lceil 0.2 \rceil"), 4.0);
        assert_eq!(val(r"\lfloor -3.5 \rfloor"), -4.0);
        assert!(parse(r"\lfloor 3.5").is_none());
        assert!((val(r"\log_2 8") - 3.0).abs() < 1e-12);
        assert!((val(r"\log_{3} 81") - 4.0).abs() < 1e-12);
        assert!((val(r"\log 1000") - 3.0).abs() < 1e-12);
    }
}
