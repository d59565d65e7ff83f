//! Verifiable rewards for GRPO: answer accuracy and output format.
//!
//! MMR1 (arXiv 2509.21268, "Rewards"; see `shared/MMR1.md`) trains with
//! `1 * format + 1 * accuracy`:
//! - format: `<think> .. </think>` then `<answer> .. \boxed{..} .. </answer>` ([`format_ok`]);
//! - accuracy: the final answer ([`extract_answer`]) matched against the reference by
//!   normalization, multiple-choice letter and numeric / symbolic equivalence
//!   ([`is_equivalent`]), after Math-Verify (huggingface/Math-Verify) and verl's
//!   `reward_score/math` grader.
//!
//! The reference code's extras (partial credit 0.1 / 0.5, the 40-gram repetition penalty) are not
//! in the paper and not here; each would be one more [`RewardFn`] and one more weight in
//! [`RewardConfig`], both in this file.
//!
//! Rewards are plain functions of `(response text, item)`: no state, no allocation beyond the
//! answer strings, safe to call from many threads. No input panics (fuzzed in the tests).

mod equiv;
mod expr;
mod extract;
mod matrix;
mod normalize;
mod prose;
mod relation;

pub use equiv::{is_equivalent, is_equivalent_with_options};
pub use extract::{extract_answer, format_ok};

use serde::{Deserialize, Serialize};

/// What a response is graded against.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RewardItem {
    /// The reference answer (`"B"`, `"\frac{3}{4}"`, `"5 cm"`, ...).
    pub answer: String,
    /// Option texts of a multiple-choice item, in letter order (A, B, ...), possibly with their
    /// own labels (`"A. 5 cm"`). Lets a letter reference accept the option's text and the reverse.
    #[serde(default)]
    pub options: Option<Vec<String>>,
}

impl RewardItem {
    pub fn new(answer: impl Into<String>) -> Self {
        Self { answer: answer.into(), options: None }
    }
}

/// The grading of one response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The final answer found in the response, if any.
    pub extracted: Option<String>,
    /// 1.0 when the extracted answer is equivalent to the reference, else 0.0.
    pub accuracy: f32,
    /// 1.0 when the response follows the MMR1 template, else 0.0.
    pub format: f32,
}

/// One reward component. Implementations must be pure functions of their inputs.
pub trait RewardFn: Send + Sync {
    fn name(&self) -> &str;
    fn score(&self, response: &str, item: &RewardItem) -> f32;
}

/// 1.0 when the extracted final answer matches the reference ([`is_equivalent_with_options`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Accuracy;

/// 1.0 when [`format_ok`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Format;

fn accuracy_of(extracted: Option<&str>, item: &RewardItem) -> f32 {
    let ok = extracted
        .is_some_and(|x| is_equivalent_with_options(x, &item.answer, item.options.as_deref()));
    if ok {
        1.0
    } else {
        0.0
    }
}

impl RewardFn for Accuracy {
    fn name(&self) -> &str {
        "accuracy"
    }
    fn score(&self, response: &str, item: &RewardItem) -> f32 {
        accuracy_of(extract_answer(response).as_deref(), item)
    }
}

impl RewardFn for Format {
    fn name(&self) -> &str {
        "format"
    }
    fn score(&self, response: &str, _item: &RewardItem) -> f32 {
        if format_ok(response) {
            1.0
        } else {
            0.0
        }
    }
}

/// Weights of the reward components; the total is `accuracy_weight * accuracy +
/// format_weight * format` (both 1.0 in MMR1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RewardConfig {
    pub accuracy_weight: f32,
    pub format_weight: f32,
}

impl Default for RewardConfig {
    fn default() -> Self {
        Self { accuracy_weight: 1.0, format_weight: 1.0 }
    }
}

impl RewardConfig {
    /// The weighted components, for callers that log or sum them generically.
    pub fn components(&self) -> [(&'static dyn RewardFn, f32); 2] {
        [(&Accuracy, self.accuracy_weight), (&Format, self.format_weight)]
    }

    /// Grades one response (extracting the answer once).
    pub fn grade(&self, response: &str, item: &RewardItem) -> Verdict {
        let extracted = extract_answer(response);
        Verdict {
            accuracy: accuracy_of(extracted.as_deref(), item),
            format: Format.score(response, item),
            extracted,
        }
    }

    /// The scalar reward of a verdict.
    pub fn total(&self, v: &Verdict) -> f32 {
        self.accuracy_weight * v.accuracy + self.format_weight * v.format
    }

    /// `total(grade(response, item))`.
    pub fn reward(&self, response: &str, item: &RewardItem) -> f32 {
        self.total(&self.grade(response, item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn grade_and_total() {
        let cfg = RewardConfig::default();
        let item = RewardItem::new("0.5");
        let r = r"<think>half</think> <answer>\boxed{\frac{1}{2}}</answer>";
        let v = cfg.grade(r, &item);
        assert_eq!(v.extracted.as_deref(), Some(r"\frac{1}{2}"));
        assert_eq!((v.accuracy, v.format), (1.0, 1.0));
        assert_eq!(cfg.total(&v), 2.0);
        let sum: f32 = cfg.components().iter().map(|(f, w)| w * f.score(r, &item)).sum();
        assert_eq!(sum, cfg.reward(r, &item));
        assert_eq!(cfg.components().map(|(f, _)| f.name()), ["accuracy", "format"]);
        let cfg2 = RewardConfig { accuracy_weight: 1.0, format_weight: 0.5 };
        assert_eq!(cfg2.reward(r"\boxed{0.5}", &item), 1.0);
    }

    #[test]
    fn serde_roundtrip() {
        let v = Verdict { extracted: Some("5".into()), accuracy: 1.0, format: 0.0 };
        let s = serde_json::to_string(&v).unwrap();
        assert_eq!(serde_json::from_str::<Verdict>(&s).unwrap(), v);
        let c: RewardConfig = serde_json::from_str(r#"{"format_weight": 0.5}"#).unwrap();
        assert_eq!(c, RewardConfig { accuracy_weight: 1.0, format_weight: 0.5 });
        let item: RewardItem = serde_json::from_str(r#"{"answer": "B"}"#).unwrap();
        assert_eq!(item, RewardItem::new("B"));
    }

    /// Pieces that exercise every parser path when glued at random.
    const PIECES: &[&str] = &[
        "\\boxed{",
        "\\fbox{",
        "{",
        "}",
        "\\{",
        "\\}",
        "\\",
        "\\\\",
        "<think>",
        "</think>",
        "<answer>",
        "</answer>",
        "answer is ",
        "Answer:",
        "\\frac",
        "\\sqrt",
        "[",
        "]",
        "(",
        ")",
        "^",
        "_",
        "1",
        "0",
        "9",
        ".",
        ",",
        "-",
        "+",
        "*",
        "/",
        "=",
        "x",
        "B",
        "\\pi",
        "\\infty",
        "\\text{",
        "\\left",
        "\\right",
        "$",
        "%",
        "\\%",
        "cm",
        " ",
        "\n",
        "−",
        "π",
        "°",
        "√",
        "é",
        "中",
        "🙂",
        "\\circ",
        "^{",
        "\\sin",
        "e",
        "Option ",
        "(B)",
        "\\cup",
        "\\pm",
        "<",
        ">",
        "\\le",
        "\\geq",
        "\\approx",
        "\\in ",
        "\\begin{pmatrix}",
        "\\end{pmatrix}",
        "\\begin{array}{cc}",
        "\\end{array}",
        "&",
        " and ",
        " or ",
        ";",
        "|",
        "\\sec",
        "^{-1}",
        "\u{20AC}",
        "\\!",
        "\\(",
        "\\)",
        "$$",
        "final answer is ",
        "y",
    ];

    fn check_no_panic_and_roundtrip(s: &str) {
        let cfg = RewardConfig::default();
        let item = RewardItem { answer: s.to_string(), options: Some(vec![s.to_string()]) };
        let v = cfg.grade(s, &item);
        let _ = is_equivalent(s, "1/2");
        let _ = is_equivalent("(B)", s);
        if let Some(x) = &v.extracted {
            // An extracted answer, boxed again, extracts to itself and equals itself.
            let boxed = format!("\\boxed{{{x}}}");
            assert_eq!(extract_answer(&boxed).as_deref(), Some(x.as_str()), "input {s:?}");
            // Reflexive through normalisation, not string equality: `$x$` is the same answer.
            if !x.contains('$') {
                assert!(is_equivalent(&format!("${x}$"), x), "${x}$ vs {x:?}");
            }
        }
    }

    #[test]
    fn fuzz_never_panics_and_roundtrips() {
        let mut rng = ChaCha8Rng::seed_from_u64(0x6d6d7231);
        for _ in 0..3000 {
            let len = rng.gen_range(0..200);
            let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            check_no_panic_and_roundtrip(&String::from_utf8_lossy(&bytes));
            let n = rng.gen_range(0..40);
            let s: String = (0..n).map(|_| PIECES[rng.gen_range(0..PIECES.len())]).collect();
            check_no_panic_and_roundtrip(&s);
        }
    }

    #[test]
    fn huge_and_deep_inputs_neither_overflow_the_stack_nor_panic() {
        let deep = format!("\\boxed{{{}1{}}}", "{".repeat(50_000), "}".repeat(50_000));
        assert!(extract_answer(&deep).is_some());
        assert!(!is_equivalent(&deep[7..deep.len() - 1], "2"));
        let unbalanced = "\\boxed{".repeat(100_000);
        assert_eq!(extract_answer(&unbalanced), None);
        let parens = format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000));
        assert!(!is_equivalent(&parens, "2"));
        let long = "9".repeat(200_000);
        assert!(is_equivalent(&format!("${long}$"), &long));
        assert!(!is_equivalent(&format!("8{}", &long[1..]), &long));
        assert!(!format_ok(&long));
    }
}
