//! Range checks of numeric settings, collected so one run of a bad configuration lists every
//! bad key at once, each message naming the key (`sft.grad_clip`) or flag (`--grad-clip`) as the
//! user wrote it. NaN fails every check: each comparison is written so that NaN is false.

use anyhow::{bail, Result};

/// Collects the messages of failed checks.
#[derive(Default)]
pub struct Checks {
    errs: Vec<String>,
}

impl Checks {
    pub fn new() -> Self {
        Self::default()
    }

    /// A free-form check: `msg` is kept when `ok` is false.
    pub fn require(&mut self, ok: bool, msg: impl Into<String>) -> &mut Self {
        if !ok {
            self.errs.push(msg.into());
        }
        self
    }

    /// A finite number > 0.
    pub fn positive(&mut self, key: &str, v: f64) -> &mut Self {
        self.require(
            v > 0.0 && v.is_finite(),
            format!("{key} must be a finite number > 0 (got {v})"),
        )
    }

    /// A finite number >= 0.
    pub fn non_negative(&mut self, key: &str, v: f64) -> &mut Self {
        self.require(
            v >= 0.0 && v.is_finite(),
            format!("{key} must be a finite number >= 0 (got {v})"),
        )
    }

    /// `lo <= v <= hi` (closed interval).
    pub fn closed(&mut self, key: &str, v: f64, lo: f64, hi: f64) -> &mut Self {
        self.require(lo <= v && v <= hi, format!("{key} must be in [{lo}, {hi}] (got {v})"))
    }

    /// `lo <= v < hi`.
    pub fn closed_open(&mut self, key: &str, v: f64, lo: f64, hi: f64) -> &mut Self {
        self.require(lo <= v && v < hi, format!("{key} must be in [{lo}, {hi}) (got {v})"))
    }

    /// `lo < v < hi`.
    pub fn open(&mut self, key: &str, v: f64, lo: f64, hi: f64) -> &mut Self {
        self.require(lo < v && v < hi, format!("{key} must be in ({lo}, {hi}) (got {v})"))
    }

    /// `lo < v <= hi`.
    pub fn open_closed(&mut self, key: &str, v: f64, lo: f64, hi: f64) -> &mut Self {
        self.require(lo < v && v <= hi, format!("{key} must be in ({lo}, {hi}] (got {v})"))
    }

    /// An integer >= `min`.
    pub fn at_least(&mut self, key: &str, v: u64, min: u64) -> &mut Self {
        self.require(v >= min, format!("{key} must be >= {min} (got {v})"))
    }

    /// Ok, or one error listing every failed check.
    pub fn finish(&mut self, what: &str) -> Result<()> {
        if self.errs.is_empty() {
            return Ok(());
        }
        let errs = std::mem::take(&mut self.errs);
        if errs.len() == 1 {
            bail!("invalid {what}: {}", errs[0]);
        }
        bail!("invalid {what}:\n  {}", errs.join("\n  "))
    }
}

#[cfg(test)]
mod tests {
    use super::Checks;

    #[test]
    fn nan_and_infinity_fail_every_check() {
        for v in [f64::NAN, f64::INFINITY] {
            let mut c = Checks::new();
            c.positive("a", v).non_negative("b", v).closed("c", v, 0.0, 1.0);
            c.closed_open("d", v, 0.0, 1.0).open("e", v, 0.0, 1.0).open_closed("f", v, 0.0, 1.0);
            let e = c.finish("x").unwrap_err().to_string();
            for k in ["a ", "b ", "c ", "d ", "e ", "f "] {
                assert!(e.contains(k), "{k:?} missing in {e}");
            }
        }
        let mut c = Checks::new();
        c.positive("a", 1.0).closed("b", 0.0, 0.0, 1.0).at_least("n", 3, 2);
        c.finish("x").unwrap();
    }
}
