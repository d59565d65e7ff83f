//! Helpers shared by the integration tests.
#![allow(dead_code)]

use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::model::init::{init_params, Init};
use mmr1_fast::model::{ParamLayout, Qwen2, Qwen2Config};
use std::path::PathBuf;

/// Relative L2 error ||a - b|| / ||b||, in f64; NaN anywhere gives infinity.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    if a.iter().chain(b).any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((*x - *y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-300)).sqrt()
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The scaled-RoPE golden models (scripts/make_golden_rope.py), as `fixture` names.
pub const ROPE_FIXTURES: [&str; 3] = ["tiny-rope/linear", "tiny-rope/yarn", "tiny-rope/llama3"];

/// A small GQA config with odd sizes.
pub fn tiny_config(vocab: usize, tied: bool) -> Qwen2Config {
    let json = serde_json::json!({
        "hidden_size": 48, "intermediate_size": 67, "num_hidden_layers": 2,
        "num_attention_heads": 6, "num_key_value_heads": 2, "vocab_size": vocab,
        "tie_word_embeddings": tied, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 256
    });
    serde_json::from_value(json).unwrap()
}

pub fn random_model(cfg: Qwen2Config, seed: u64) -> Qwen2<Cpu> {
    random_model_on(&Cpu, cfg, seed)
}

/// [`random_model`] on any backend: the same weights for the same config and seed.
pub fn random_model_on<B: mmr1_fast::backend::Backend>(
    be: &B,
    cfg: Qwen2Config,
    seed: u64,
) -> Qwen2<B> {
    let layout = ParamLayout::new(&cfg);
    let host = init_params(&layout, Init::Sensitive { std: 0.2 }, seed);
    Qwen2::from_host(be, cfg, layout, &host)
}

pub fn random_ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(0..vocab as u32)).collect()
}

/// Tensors of a golden safetensors file, as f32 (int64 token ids converted).
pub struct Golden {
    bytes: Vec<u8>,
}

impl Golden {
    pub fn open(path: &std::path::Path) -> Self {
        Golden { bytes: std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) }
    }
    fn st(&self) -> safetensors::SafeTensors<'_> {
        safetensors::SafeTensors::deserialize(&self.bytes).unwrap()
    }
    pub fn has(&self, name: &str) -> bool {
        self.st().tensor(name).is_ok()
    }
    pub fn f32(&self, name: &str) -> Vec<f32> {
        let st = self.st();
        let v = st.tensor(name).unwrap_or_else(|_| panic!("golden tensor {name} missing"));
        mmr1_fast::model::safetensors_io::to_f32(&v).unwrap()
    }
    pub fn ids(&self, name: &str) -> Vec<u32> {
        let st = self.st();
        let v = st.tensor(name).unwrap_or_else(|_| panic!("golden tensor {name} missing"));
        assert_eq!(v.dtype(), safetensors::Dtype::I64);
        v.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect()
    }
}

/// Runs the `mmr1-fast` binary.
pub fn cli(args: &[&str]) -> std::process::Output {
    cli_env(args, &[])
}

/// [`cli`] with environment variables set for the run.
pub fn cli_env(args: &[&str], env: &[(&str, &std::path::Path)]) -> std::process::Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_mmr1-fast"));
    c.args(args).envs(env.iter().copied()).output().unwrap()
}

/// stderr of a run that must fail cleanly: non-zero exit and no panic.
pub fn cli_err(args: &[&str]) -> String {
    let o = cli(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{args:?} should fail; stderr: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    err
}

/// stdout of a run that must succeed.
pub fn cli_ok(args: &[&str]) -> String {
    let o = cli(args);
    assert!(o.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A random demo-sized model with the demo tokenizer, saved as a Hugging Face directory.
pub fn demo_model_dir(dir: &std::path::Path, seed: u64) {
    use mmr1_fast::data::demo::{demo_config, demo_tokenizer};
    let tok = demo_tokenizer().unwrap();
    let m = random_model(demo_config(tok.vocab_size()), seed);
    m.save_pretrained(&Cpu, dir, mmr1_fast::model::safetensors_io::SaveDtype::F32).unwrap();
    tok.save(&dir.join("tokenizer.json")).unwrap();
}

/// Writes `lines` as a JSONL file `dir/name` and returns its path as a string.
pub fn write_lines(dir: &std::path::Path, name: &str, lines: &[&str]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p.to_str().unwrap().to_string()
}

/// The JSON objects of a JSONL file.
pub fn read_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Whether `dev` runs wgmma (sm_90); if not, says that `test` is skipped (the GPU tests of the
/// wgmma kernels pass with a SKIP line on other GPUs).
#[cfg(feature = "cuda")]
pub fn wgmma_or_skip(dev: &impl mmr1_fast::backend::cuda::device::Device, test: &str) -> bool {
    let has = dev.has_wgmma();
    if !has {
        println!("SKIP {test}: {} has no wgmma (sm_90 only)", dev.name());
    }
    has
}
