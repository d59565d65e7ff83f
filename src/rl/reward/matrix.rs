//! Arithmetic on constant matrices left in an answer: `A + B`, `A - B`, `A B`, `A \cdot B`
//! (`The sum is $\begin{pmatrix}1 & 2\end{pmatrix} + \begin{pmatrix}5 & 6\end{pmatrix}$`), as
//! Math-Verify evaluates them with SymPy (`tests/test_all.py::test_matrix_extraction`).
//!
//! Only matrices whose every cell is a constant are evaluated; products bind tighter than sums;
//! any other text, a variable, or a shape mismatch gives `None` (then the answer is compared
//! as written).

use super::equiv::matrix;
use super::expr::parse;

type Matrix = Vec<Vec<f64>>;

/// Most matrices in one expression, and most cells of one matrix.
const MAX_OPERANDS: usize = 8;
const MAX_CELLS: usize = 256;

/// The value of a matrix's cells, when all are constants.
pub(crate) fn constant_cells(rows: &[Vec<String>]) -> Option<Matrix> {
    if rows.iter().map(Vec::len).sum::<usize>() > MAX_CELLS {
        return None;
    }
    rows.iter()
        .map(|r| {
            r.iter()
                .map(|c| {
                    let e = parse(c)?;
                    let mut vars = std::collections::BTreeSet::new();
                    e.vars(&mut vars);
                    let v = e.eval(&[]);
                    (vars.is_empty() && v.is_finite()).then_some(v)
                })
                .collect()
        })
        .collect()
}

fn add(a: &Matrix, b: &Matrix, sign: f64) -> Option<Matrix> {
    if a.len() != b.len() || a.iter().zip(b).any(|(x, y)| x.len() != y.len()) {
        return None;
    }
    Some(
        a.iter()
            .zip(b)
            .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p + sign * q).collect())
            .collect(),
    )
}

fn mul(a: &Matrix, b: &Matrix) -> Option<Matrix> {
    let inner = b.len();
    let cols = b.first()?.len();
    if a.iter().any(|r| r.len() != inner) {
        return None;
    }
    Some(
        a.iter()
            .map(|r| (0..cols).map(|j| (0..inner).map(|k| r[k] * b[k][j]).sum()).collect())
            .collect(),
    )
}

/// The operands and operators of `s`: matrix environments joined by `+`, `-`, `*` or nothing
/// (a product). `None` when anything else occurs or there is only one matrix.
fn operands(s: &str) -> Option<(Vec<Matrix>, Vec<char>)> {
    let (mut mats, mut ops) = (Vec::new(), Vec::new());
    let mut rest = s.trim();
    loop {
        let env = rest.strip_prefix("\\begin{")?.split_once('}')?.0;
        let close = format!("\\end{{{env}}}");
        let end = rest.find(&close)? + close.len();
        mats.push(constant_cells(&matrix(&rest[..end])?)?);
        rest = rest[end..].trim_start();
        if rest.is_empty() || mats.len() > MAX_OPERANDS {
            break;
        }
        let op = match rest.chars().next()? {
            c @ ('+' | '-' | '*') => {
                rest = rest[1..].trim_start();
                c
            }
            _ => '*', // juxtaposition: `A B`
        };
        ops.push(op);
    }
    (mats.len() >= 2 && mats.len() <= MAX_OPERANDS && ops.len() == mats.len() - 1)
        .then_some((mats, ops))
}

/// The value of a sum / difference / product of constant matrices (see the module docs).
pub(crate) fn matrix_expression(s: &str) -> Option<Matrix> {
    let (mats, ops) = operands(s)?;
    // Products first: fold each run of `*` into one term, then add the terms with their signs.
    let mut terms: Vec<(f64, Matrix)> = Vec::new();
    let mut current = mats[0].clone();
    let mut sign = 1.0;
    for (op, m) in ops.iter().zip(&mats[1..]) {
        if *op == '*' {
            current = mul(&current, m)?;
        } else {
            terms.push((sign, current));
            sign = if *op == '-' { -1.0 } else { 1.0 };
            current = m.clone();
        }
    }
    terms.push((sign, current));
    let (s0, first) = &terms[0];
    let mut total: Matrix = first.iter().map(|r| r.iter().map(|x| s0 * x).collect()).collect();
    for (sign, m) in &terms[1..] {
        total = add(&total, m, *sign)?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluates_matrix_arithmetic() {
        let a = r"\begin{pmatrix}1 & 2 \\ 3 & 4\end{pmatrix}";
        let b = r"\begin{bmatrix}5 & 6 \\ 7 & 8\end{bmatrix}";
        assert_eq!(
            matrix_expression(&format!("{a} + {b}")),
            Some(vec![vec![6.0, 8.0], vec![10.0, 12.0]])
        );
        assert_eq!(
            matrix_expression(&format!("{a} - {b}")),
            Some(vec![vec![-4.0, -4.0], vec![-4.0, -4.0]])
        );
        assert_eq!(
            matrix_expression(&format!("{a} {b}")),
            Some(vec![vec![19.0, 22.0], vec![43.0, 50.0]])
        );
        assert_eq!(
            matrix_expression(&format!("{a} + {a} * {b}")),
            Some(vec![vec![20.0, 24.0], vec![46.0, 54.0]])
        );
        let col = r"\begin{pmatrix}1 \\ 2\end{pmatrix}";
        assert_eq!(matrix_expression(&format!("{a} + {col}")), None);
        assert_eq!(matrix_expression(&format!("{col} {col}")), None);
        assert_eq!(matrix_expression(a), None);
        assert_eq!(matrix_expression(&format!("{a} + x")), None);
        assert_eq!(
            matrix_expression(r"\begin{pmatrix}x\end{pmatrix} + \begin{pmatrix}1\end{pmatrix}"),
            None
        );
    }
}
