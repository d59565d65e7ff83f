"""The PyTorch side of benches/train_step.rs: one SFT training step (forward, token
cross-entropy, backward, clip_grad_norm_, AdamW) of the same Qwen2 shape on the CPU.

Shape: hidden 256, 4 layers, 4 heads / 2 kv heads, intermediate 704, vocab 2048, untied
head, a batch of 8 x 128 tokens (all the same length, so no padding is needed), float32.
Model: transformers' Qwen2ForCausalLM (attn_implementation="sdpa"), i.e. the ordinary
PyTorch way. Threads: torch.set_num_threads(os.cpu_count()) unless --threads is given.

Usage: python benches/train_step_torch.py [--iters 10] [--threads N]
(needs `pip install torch transformers`; the CPU is enough).
"""
import argparse
import os
import statistics
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=2048, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
        rope_theta=10000.0, rms_norm_eps=1e-6, max_position_embeddings=512,
    )
    model = Qwen2ForCausalLM._from_config(cfg, attn_implementation="sdpa", torch_dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    ids = torch.randint(0, 2048, (8, 128))

    def step():
        opt.zero_grad(set_to_none=False)
        logits = model(input_ids=ids).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 2048), ids[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    for _ in range(2):  # warm-up
        step()
    times = []
    # Process CPU time (all threads, user + system) beside the wall clock: on a shared, loaded
    # machine the wall clock measures the load; CPU time per step is the work (at 1 thread
    # exactly; at more, OpenMP threads spinning at barriers count too).
    c0 = time.process_time()
    for _ in range(args.iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    cpu = (time.process_time() - c0) / args.iters
    med = statistics.median(times)
    print(f"torch {torch.__version__} threads {args.threads}: train step median {med * 1e3:.1f} ms "
          f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}) over {args.iters}; {8 * 128 / med:.0f} tokens/s; "
          f"CPU time {cpu * 1e3:.1f} ms per step")


if __name__ == "__main__":
    main()
