//! EXPERIMENT ONLY (bf16demo, issue 10): `MMR1_EXP_CPU_BF16_GEMM` makes the CPU backend's
//! `matmul` read its operands rounded to bf16 (nearest even), as cuBLAS GemmEx with bf16 A/B
//! and CUBLAS_COMPUTE_32F does and as the emulator's `gemm_untimed` models it, so that whole
//! demo runs of the GPU's bf16 GEMM arithmetic take CPU time instead of emulator time.
//!
//! Values: `all` (every GEMM), `skip:N` (GEMMs with no dimension equal to N: e.g. the vocab
//! size keeps the lm_head GEMMs f32), `only:N` (only GEMMs with a dimension equal to N).

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug)]
pub enum Mode {
    All,
    Skip(usize),
    Only(usize),
}

pub fn mode() -> Option<Mode> {
    static MODE: OnceLock<Option<Mode>> = OnceLock::new();
    *MODE.get_or_init(|| {
        let v = std::env::var("MMR1_EXP_CPU_BF16_GEMM").ok()?;
        let num = |s: &str| s.parse::<usize>().expect("MMR1_EXP_CPU_BF16_GEMM: bad number");
        let m = match v.as_str() {
            "" | "0" => return None,
            "all" | "1" => Mode::All,
            s if s.starts_with("skip:") => Mode::Skip(num(&s[5..])),
            s if s.starts_with("only:") => Mode::Only(num(&s[5..])),
            s => panic!("MMR1_EXP_CPU_BF16_GEMM={s:?}: expected all, skip:N or only:N"),
        };
        eprintln!("EXPERIMENT: CPU GEMM operands rounded to bf16 ({m:?})");
        Some(m)
    })
}

pub fn applies(mode: Mode, m: usize, n: usize, k: usize) -> bool {
    let has = |d: usize| m == d || n == d || k == d;
    match mode {
        Mode::All => true,
        Mode::Skip(d) => !has(d),
        Mode::Only(d) => has(d),
    }
}

pub fn rounded(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect()
}
