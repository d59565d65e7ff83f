//! One SFT training step (forward, log-probs, loss, backward, AdamW) on the CPU backend,
//! small Qwen2 shape: hidden 256, 4 layers, 4 heads / 2 kv heads, intermediate 704,
//! vocab 2048, a packed batch of 8 x 128 tokens, every token trained.
//! `benches/train_step_torch.py` does the same step in PyTorch; see docs/perf.md.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::model::init::{init_params, Init};
use mmr1_fast::model::{Packed, ParamLayout, Qwen2, Qwen2Config};
use mmr1_fast::optim::{AdamW, AdamwConfig};
use mmr1_fast::train::{micro_step, SftLoss, Workspace};
use rand::{Rng, SeedableRng};

fn bench(c: &mut Criterion) {
    let cfg: Qwen2Config = serde_json::from_value(serde_json::json!({
        "hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 2048,
        "tie_word_embeddings": false, "rope_theta": 10000.0, "rms_norm_eps": 1e-6
    }))
    .unwrap();
    let layout = ParamLayout::new(&cfg);
    let host = init_params(&layout, Init::HuggingFace { std: 0.02 }, 0);
    let be = Cpu;
    let mut model = Qwen2::from_host(&be, cfg, layout, &host);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let seqs: Vec<Vec<u32>> =
        (0..8).map(|_| (0..128).map(|_| rng.gen_range(0..2048)).collect()).collect();
    let batch = Packed::new(&seqs);
    let (_, has) = batch.next_token_targets();
    let mut loss = SftLoss::new(&has, has.iter().filter(|&&h| h).count());
    let mut opt = AdamW::new(&be, &model.params, AdamwConfig::default());
    let mut ws = Workspace::new(&model, &be);

    let mut g = c.benchmark_group("train_step");
    g.sample_size(10);
    g.throughput(Throughput::Elements(batch.tokens() as u64));
    g.bench_function("cpu_h256_l4_v2048_8x128", |b| {
        b.iter(|| {
            ws.zero_grads(&be);
            let l = micro_step(&be, &model, &batch, &mut loss, &mut ws).unwrap();
            let rep = opt.step(&be, &mut model.params, &ws.grads, 1e-4);
            std::hint::black_box((l, rep));
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
