"""The PyTorch side of examples/grpo_step.rs on a GPU: one GRPO step done the ordinary way
with transformers (HF `generate` for the rollout, then the old and reference log-prob passes
and the update with SDPA, bf16 autocast over f32 weights, fused AdamW), for the side-by-side
table of scripts/gpu-check.sh.

Same work as the Rust example: --prompts random prompts of --len tokens, --group responses
each of exactly --new tokens (temperature 0.6, top_p 1), reward 1 when a response's id sum is
even, GRPO advantages (unbiased std + 1e-6), MMR1's loss (token-mean of max(-A r, -A clip(r,
0.8, 1.2)) plus 0.01 x k3 KL to the reference clamped to [-10, 10], log-probs at T 0.6), one
AdamW step (lr 1e-6, weight decay 0.01, clip 1.0); micro-batches of --micro-tokens tokens.
No VAS scoring here (MMR1's own scoring is host Python; ours is timed on its own).

  python3 benches/grpo_step_gpu_torch.py --arch qwen2.5-0.5b [--prompts 32] [--group 8]
      [--len 128] [--new 128] [--steps 2] [--micro-tokens 16384] [--layers N]

One JSON line on stdout: median seconds per phase over the steps after the first.
"""
import argparse
import copy
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step_gpu_torch import ARCHS, qwen2_config  # noqa: E402  (one table of the published shapes)

TEMPERATURE, CLIP, KL_COEF = 0.6, 0.2, 0.01


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="qwen2.5-0.5b", choices=sorted(ARCHS))
    ap.add_argument("--layers", type=int)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--len", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--micro-tokens", type=int, default=16384)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of this script, no figures")
    a = ap.parse_args()
    if a.steps < 2:
        sys.exit("--steps >= 2 (the first is a warm-up)")
    from transformers import Qwen2ForCausalLM

    cfg = qwen2_config(a.arch, a.layers)
    v = cfg.vocab_size
    torch.manual_seed(0)
    dev = a.device
    cuda = dev.startswith("cuda")
    kind = dev.split(":")[0]
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch.device(dev):
        policy = Qwen2ForCausalLM._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    n_params = sum(p.numel() for p in policy.parameters())
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6, weight_decay=0.01, fused=cuda)
    prompts = torch.randint(0, v, (a.prompts, a.len), device=dev)
    seq_len = a.len + a.new
    rows = max(1, a.micro_tokens // seq_len)

    def response_logprobs(model, seqs):
        # Log-probs of the response tokens at the rollout temperature, f32 statistics.
        logits = model(input_ids=seqs).logits[:, a.len - 1:-1].float() / TEMPERATURE
        return torch.gather(F.log_softmax(logits, -1), -1, seqs[:, a.len:, None])[..., 0]

    phases = {k: [] for k in ("rollout", "advantages", "update", "step")}
    losses = []
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for step in range(a.steps):
        sync()
        t0 = time.perf_counter()
        with torch.no_grad(), torch.autocast(kind, dtype=torch.bfloat16):
            policy.eval()
            seqs = policy.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=True,
                                   temperature=TEMPERATURE, top_p=1.0, top_k=0, max_new_tokens=a.new,
                                   min_new_tokens=a.new, num_return_sequences=a.group, use_cache=True,
                                   pad_token_id=0)
        sync()
        t1 = time.perf_counter()
        r = (seqs[:, a.len:].sum(1) % 2 == 0).float().view(a.prompts, a.group)
        adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-6)).reshape(-1)
        sync()
        t2 = time.perf_counter()
        policy.train()
        with torch.no_grad(), torch.autocast(kind, dtype=torch.bfloat16):
            old = torch.cat([response_logprobs(policy, seqs[j:j + rows]) for j in range(0, len(seqs), rows)])
            ref = torch.cat([response_logprobs(reference, seqs[j:j + rows]) for j in range(0, len(seqs), rows)])
        opt.zero_grad(set_to_none=False)
        total = 0.0
        n_tok = seqs.shape[0] * a.new  # token-mean over the whole batch
        for j in range(0, len(seqs), rows):
            with torch.autocast(kind, dtype=torch.bfloat16):
                lp = response_logprobs(policy, seqs[j:j + rows])
            log_ratio = lp - old[j:j + rows]
            A = adv[j:j + rows, None]
            pg = torch.maximum(-A * torch.exp(log_ratio),
                               -A * torch.exp(log_ratio.clamp(math.log(1 - CLIP), math.log(1 + CLIP))))
            kl = ref[j:j + rows] - lp
            kld = (torch.exp(kl) - kl - 1).clamp(-10, 10)
            loss = (pg + KL_COEF * kld).sum() / n_tok
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        sync()
        t3 = time.perf_counter()
        print(f"step {step}: rollout {t1 - t0:.3f} s, advantages {t2 - t1:.4f} s, update {t3 - t2:.3f} s, "
              f"loss {total:.5f}", file=sys.stderr)
        if step > 0:
            for k, s in (("rollout", t1 - t0), ("advantages", t2 - t1), ("update", t3 - t2), ("step", t3 - t0)):
                phases[k].append(s)
        losses.append(total)
    med = {k: statistics.median(v) for k, v in phases.items()}
    generated = a.prompts * a.group * a.new
    print(json.dumps({
        "impl": f"torch {torch.__version__} + transformers (generate; sdpa, bf16 autocast, fused AdamW)",
        "device": torch.cuda.get_device_name() if cuda else dev, "arch": a.arch, "layers": cfg.num_hidden_layers,
        "mode": "grpo", "params": n_params, "prompts": a.prompts, "group": a.group, "prompt_len": a.len,
        "new_tokens": a.new, "generated_tokens": generated, "update_tokens": a.prompts * a.group * seq_len,
        "micro_batch_tokens": a.micro_tokens,
        "rollout_s": med["rollout"], "rewards_advantages_s": med["advantages"], "update_s": med["update"],
        "step_s_median": med["step"], "decode_tokens_per_s": generated / med["rollout"],
        "peak_allocated_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "losses": losses,
    }))


if __name__ == "__main__":
    try:
        main()
    except torch.cuda.OutOfMemoryError as e:
        print(json.dumps({"error": f"out of memory: {str(e)[:200]}"}))
        sys.exit(3)
