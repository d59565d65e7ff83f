"""The PyTorch side of the 0.5B `logprobs` benchmark (docs/perf.md): teacher-forced per-token
log-probs of one 881-token sequence through a Qwen2.5-0.5B-shaped model on the CPU.

The model directory and the tokens come from `cargo run --release --example qwen05b -- init DIR`
(random weights of the real sizes, f32). This script times `from_pretrained` and, separately,
the forward pass + log_softmax + gather under torch.inference_mode(), the work
`mmr1-fast logprobs --model DIR --tokens DIR/tokens881.json --out X` does after loading.

Usage: python benches/logprobs_torch.py DIR [--iters 5] [--threads 2]
(needs `pip install torch transformers`; the CPU is enough).
"""
import argparse
import json
import os
import statistics
import time

import torch
from transformers import Qwen2ForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = Qwen2ForCausalLM.from_pretrained(args.dir, torch_dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    load = time.perf_counter() - t0
    ids = torch.tensor(json.load(open(os.path.join(args.dir, "tokens881.json"))))

    def run():
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0, :-1].float()
            return torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0]

    lp = run()  # warm-up
    times = []
    for _ in range(args.iters):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    print(f"torch {torch.__version__} threads {args.threads}: load {load:.2f} s; forward+logprobs over "
          f"{ids.shape[1]} tokens median {statistics.median(times):.2f} s (min {min(times):.2f}, "
          f"max {max(times):.2f}) over {args.iters}; mean log-prob {lp.mean().item():.4f}")


if __name__ == "__main__":
    main()
