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
    let layout = ParamLayout::new(&cfg);
    let host = init_params(&layout, Init::Sensitive { std: 0.2 }, seed);
    Qwen2::from_host(&Cpu, cfg, layout, &host)
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
