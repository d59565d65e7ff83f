//! Where device time goes, per kernel. With `MMR1_PROFILE=1` the CUDA backend times every
//! kernel launch and library GEMM (CUDA events on the GPU, the host clock on the emulator) and
//! sums the times per name; `Backend::kernel_profile` reads the sums. Nsight Systems gives this
//! and more, but it is not on every machine (the lent GPU machines cannot make its reports);
//! this needs nothing but the binary.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// The summed time of one kernel (or GEMM shape) since the device was created.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct KernelTime {
    pub name: String,
    pub calls: u64,
    pub seconds: f64,
}

/// Whether `MMR1_PROFILE=1` asked for per-kernel times (read once).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("MMR1_PROFILE").is_ok_and(|v| v == "1"))
}

/// Calls and seconds summed per name.
#[derive(Default)]
pub struct Totals(Mutex<HashMap<String, (u64, f64)>>);

impl Totals {
    pub fn add(&self, name: &str, seconds: f64) {
        let mut m = self.0.lock().expect("profile totals");
        let e = m.entry(name.to_string()).or_default();
        e.0 += 1;
        e.1 += seconds;
    }
    /// Largest total first (ties by name, so the order is stable).
    pub fn sorted(&self) -> Vec<KernelTime> {
        let m = self.0.lock().expect("profile totals");
        let mut v: Vec<KernelTime> = m
            .iter()
            .map(|(k, &(calls, seconds))| KernelTime { name: k.clone(), calls, seconds })
            .collect();
        v.sort_by(|a, b| b.seconds.total_cmp(&a.seconds).then_with(|| a.name.cmp(&b.name)));
        v
    }
}

/// `after - before` per name (the work between two readings), largest first; names with no
/// call in between are left out.
pub fn since(before: &[KernelTime], after: &[KernelTime]) -> Vec<KernelTime> {
    let old: HashMap<&str, &KernelTime> = before.iter().map(|k| (k.name.as_str(), k)).collect();
    let mut v: Vec<KernelTime> = after
        .iter()
        .filter_map(|k| {
            let (c, s) = old.get(k.name.as_str()).map_or((0, 0.0), |o| (o.calls, o.seconds));
            (k.calls > c).then(|| KernelTime {
                name: k.name.clone(),
                calls: k.calls - c,
                seconds: k.seconds - s,
            })
        })
        .collect();
    v.sort_by(|a, b| b.seconds.total_cmp(&a.seconds).then_with(|| a.name.cmp(&b.name)));
    v
}

/// A text table of the `top` largest entries, per `per` repetitions (e.g. steps): calls,
/// milliseconds, share of the total, microseconds per call.
pub fn table(p: &[KernelTime], per: usize, top: usize) -> String {
    let per = per.max(1) as f64;
    let total: f64 = p.iter().map(|k| k.seconds).sum();
    let mut s =
        format!("{:<48} {:>9} {:>10} {:>6} {:>10}\n", "kernel", "calls", "ms", "share", "us/call");
    for k in p.iter().take(top) {
        s += &format!(
            "{:<48} {:>9.1} {:>10.3} {:>5.1}% {:>10.1}\n",
            k.name,
            k.calls as f64 / per,
            k.seconds * 1e3 / per,
            100.0 * k.seconds / total.max(1e-30),
            k.seconds * 1e6 / k.calls.max(1) as f64
        );
    }
    s += &format!("{:<48} {:>9} {:>10.3}\n", "total (all kernels)", "", total * 1e3 / per);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_per_name_and_since_takes_the_difference() {
        let t = Totals::default();
        t.add("a", 1.0);
        t.add("b", 3.0);
        t.add("a", 0.5);
        let first = t.sorted();
        assert_eq!(
            first,
            vec![
                KernelTime { name: "b".into(), calls: 1, seconds: 3.0 },
                KernelTime { name: "a".into(), calls: 2, seconds: 1.5 },
            ]
        );
        t.add("a", 2.0);
        t.add("c", 0.25);
        let d = since(&first, &t.sorted());
        assert_eq!(
            d,
            vec![
                KernelTime { name: "a".into(), calls: 1, seconds: 2.0 },
                KernelTime { name: "c".into(), calls: 1, seconds: 0.25 },
            ]
        );
        let text = table(&d, 2, 10);
        assert!(text.contains("88.9%"), "a's share of 2.25 s is 88.9%: {text}");
        assert!(text.contains("1125.000"), "total per repetition 1125 ms: {text}");
    }
}
