"""The PyTorch side of examples/device_step.rs on a GPU: the same work done the ordinary way
(transformers' Qwen2ForCausalLM, SDPA attention, bf16 autocast over f32 weights, fused AdamW,
clip_grad_norm_), for the side-by-side table of scripts/gpu-check.sh.

One JSON line per run on stdout: step (or pass) median seconds, tokens/s, MFU against the
bf16 dense peak, peak memory allocated and reserved. Shapes are the published Qwen2.5 configs
(the same table as `mmr1-fast init-model`), random weights, a batch of --seqs random sequences
of --len tokens (all one length: the same tokens and the same causal attention as the packed
batch of device_step, no padding).

  python3 benches/train_step_gpu_torch.py --arch qwen2.5-0.5b [--seqs 4] [--len 1024]
      [--steps 6] [--mode train|logprobs|decode] [--new 128] [--layers N]

--mode decode: `generate` (KV cache, sampling at temperature 0.6, top_p 1.0, exactly --new
tokens per sequence) after prompts of --len tokens, as examples/device_step.rs --mode decode;
tokens/s counts the generated tokens.
"""
import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

# Qwen/Qwen2.5-{0.5B,1.5B,3B,7B}-Instruct config.json: hidden, intermediate, layers, heads,
# kv heads, vocab, tied embeddings.
ARCHS = {
    "qwen2.5-0.5b": (896, 4864, 24, 14, 2, 151936, True),
    "qwen2.5-1.5b": (1536, 8960, 28, 12, 2, 151936, True),
    "qwen2.5-3b": (2048, 11008, 36, 16, 2, 151936, True),
    "qwen2.5-7b": (3584, 18944, 28, 28, 4, 152064, False),
}
BF16_PEAK = 990e12  # H100 SXM dense bf16, as in gpu-check.sh


def qwen2_config(arch, layers=None):
    """transformers' Qwen2Config of a published shape (random weights are made from it)."""
    from transformers import Qwen2Config

    d, i, l, h, kv, v, tied = ARCHS[arch]
    return Qwen2Config(vocab_size=v, hidden_size=d, intermediate_size=i, num_hidden_layers=layers or l,
                       num_attention_heads=h, num_key_value_heads=kv, tie_word_embeddings=tied,
                       rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=32768, use_cache=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="qwen2.5-0.5b", choices=sorted(ARCHS))
    ap.add_argument("--layers", type=int)
    ap.add_argument("--seqs", type=int, default=4)
    ap.add_argument("--len", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--mode", default="train", choices=["train", "logprobs", "decode"])
    ap.add_argument("--new", type=int, default=128, help="--mode decode: tokens generated per sequence")
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of this script, no figures")
    a = ap.parse_args()
    from transformers import Qwen2ForCausalLM

    cfg = qwen2_config(a.arch, a.layers)
    v = cfg.vocab_size
    torch.manual_seed(0)
    dev = a.device
    cuda = dev.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch.device(dev):
        model = Qwen2ForCausalLM._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, v, (a.seqs, a.len), device=dev)
    tokens = a.seqs * a.new if a.mode == "decode" else a.seqs * a.len
    train = a.mode == "train"
    if train:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

    def step():
        if train:
            opt.zero_grad(set_to_none=False)
            with torch.autocast(dev.split(":")[0], dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss  # HF upcasts the logits to f32
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            return loss.item()
        if a.mode == "decode":
            with torch.no_grad(), torch.autocast(dev.split(":")[0], dtype=torch.bfloat16):
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                     temperature=0.6, top_p=1.0, top_k=0, max_new_tokens=a.new,
                                     min_new_tokens=a.new, use_cache=True, pad_token_id=0)
            return float(out.shape[1] - a.len)  # generated tokens per sequence (waits for them)
        with torch.no_grad(), torch.autocast(dev.split(":")[0], dtype=torch.bfloat16):
            logits = model(input_ids=ids).logits[:, :-1].float()
            lp = torch.gather(F.log_softmax(logits, -1), -1, ids[:, 1:, None])
            return -lp.mean().item()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for _ in range(a.steps):
        sync()
        t0 = time.perf_counter()
        losses.append(step())  # .item() waits for the step
        times.append(time.perf_counter() - t0)
    med = statistics.median(times[1:])
    flops_per_token = (6 if train else 2) * n_params  # decode: 2 N per generated token
    print(json.dumps({
        "impl": f"torch {torch.__version__} + transformers (sdpa, bf16 autocast" + (", fused AdamW)" if train else (", generate)" if a.mode == "decode" else ")")),
        "device": torch.cuda.get_device_name() if cuda else dev, "arch": a.arch, "layers": cfg.num_hidden_layers,
        "mode": a.mode, "params": n_params, "tokens": tokens,
        "step_s_median": med, "step_s_first": times[0], "tokens_per_s": tokens / med,
        "mfu": flops_per_token * tokens / med / BF16_PEAK,
        "peak_allocated_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "peak_reserved_bytes": torch.cuda.max_memory_reserved() if cuda else None,
        "loss_first": losses[0], "loss_last": losses[-1],
    }))


if __name__ == "__main__":
    try:
        main()
    except torch.cuda.OutOfMemoryError as e:
        print(json.dumps({"error": f"out of memory: {str(e)[:200]}"}))
        sys.exit(3)
