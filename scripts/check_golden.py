#!/usr/bin/env python3
"""Independent check of the fixtures written by scripts/make_golden.py.

Reloads every file with the `safetensors` package and re-derives the goldens WITHOUT transformers:
a from-scratch Qwen2 forward (plain torch ops, float64, weights read from the model safetensors files,
bf16 upcast) is compared to logits.{i}; its autograd gradients are compared to grad.*; logprobs,
loss, AdamW and clipping are recomputed from the formulas; tokenizer cases are re-encoded.

Rerun: .venv/bin/python scripts/check_golden.py
"""
import json
import math
import os

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tokenizers import Tokenizer

FIX = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures")


def load_weights(d):
    idx = os.path.join(d, "model.safetensors.index.json")
    files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) else ["model.safetensors"]
    w, dtypes = {}, set()
    for f in files:
        for k, v in load_file(os.path.join(d, f)).items():
            dtypes.add(str(v.dtype))
            w[k] = v.to(torch.float64)
    return w, dtypes


def rms(x, wt, eps):
    return wt * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rope(x, theta):  # x [heads, T, hd]; rotate-half convention
    T, hd = x.shape[1], x.shape[2]
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None]
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def forward(w, c, toks):
    H, KV, D = c["num_attention_heads"], c["num_key_value_heads"], c["hidden_size"]
    hd, theta, eps = D // H, c["rope_parameters"]["rope_theta"], c["rms_norm_eps"]
    T = len(toks)
    x = w["model.embed_tokens.weight"][toks]
    mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rms(x, w[p + "input_layernorm.weight"], eps)
        q = (h @ w[p + "self_attn.q_proj.weight"].T + w[p + "self_attn.q_proj.bias"]).view(T, H, hd).transpose(0, 1)
        k = (h @ w[p + "self_attn.k_proj.weight"].T + w[p + "self_attn.k_proj.bias"]).view(T, KV, hd).transpose(0, 1)
        v = (h @ w[p + "self_attn.v_proj.weight"].T + w[p + "self_attn.v_proj.bias"]).view(T, KV, hd).transpose(0, 1)
        q, k = rope(q, theta), rope(k, theta)
        k, v = k.repeat_interleave(H // KV, 0), v.repeat_interleave(H // KV, 0)  # head j uses kv head j // (H/KV)
        a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd) + mask, -1) @ v
        x = x + a.transpose(0, 1).reshape(T, D) @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "post_attention_layernorm.weight"], eps)
        m = torch.nn.functional.silu(h @ w[p + "mlp.gate_proj.weight"].T) * (h @ w[p + "mlp.up_proj.weight"].T)
        x = x + m @ w[p + "mlp.down_proj.weight"].T
    x = rms(x, w["model.norm.weight"], eps)
    head = w["lm_head.weight"] if "lm_head.weight" in w else w["model.embed_tokens.weight"]
    return x @ head.T


def close(name, a, b, tol):
    err = ((a.double() - b.double()).abs().max() / (b.double().abs().max() + 1e-30)).item()
    assert err < tol, f"{name}: rel max err {err:.2e} >= {tol}"
    return err


def check_model(name):
    d = os.path.join(FIX, name)
    c = json.load(open(os.path.join(d, "config.json")))
    w, dtypes = load_weights(d)
    g = load_file(os.path.join(d, "golden.safetensors"))
    with safe_open(os.path.join(d, "golden.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["meta"])
    T07 = float(meta["temperature"])
    for k in w:
        w[k].requires_grad_(True)
    loss, worst = 0.0, 0.0
    for i in range(3):
        toks = g[f"tokens.{i}"]
        assert toks.dtype == torch.int64
        logits = forward(w, c, toks)
        worst = max(worst, close(f"logits.{i}", g[f"logits.{i}"], logits.detach(), 1e-4))
        # logprobs from the stored logits, by formula
        lp = torch.log_softmax(g[f"logits.{i}"].double()[:-1], -1).gather(-1, toks[1:, None])[:, 0]
        close(f"logprobs.{i}", g[f"logprobs.{i}"], lp, 1e-5)
        lp07 = torch.log_softmax(logits[:-1] / T07, -1).gather(-1, toks[1:, None])[:, 0]
        close(f"logprobs_t07.{i}", g[f"logprobs_t07.{i}"], lp07.detach(), 1e-4)
        loss = loss + (g[f"lossw.{i}"].double() * lp07).sum()
    close("loss", g["loss"], loss.detach().reshape(1), 1e-4)
    loss.backward()
    grad_names = sorted(k[5:] for k in g if k.startswith("grad."))
    assert grad_names == sorted(w), (grad_names, sorted(w))
    gworst = max(close(f"grad.{k}", g[f"grad.{k}"], w[k].grad, 1e-3) for k in w)
    lps = torch.cat([g[f"logprobs.{i}"] for i in range(3)])
    print(f"[{name}] weights {sorted(dtypes)}, {len(w)} tensors; logits rel err {worst:.1e}, "
          f"grad rel err {gworst:.1e}; loss {g['loss'].item():.6f}; logprob std {lps.std().item():.3f}")


def check_adamw():
    t = load_file(os.path.join(FIX, "adamw.safetensors"))
    with safe_open(os.path.join(FIX, "adamw.safetensors"), "pt") as f:
        m = json.loads(f.metadata()["meta"])
    lr, b1, b2, eps, wd = (float(m[k]) for k in ("lr", "beta1", "beta2", "eps", "weight_decay"))
    p, ea, es = t["p0"].double(), torch.zeros(37, dtype=torch.float64), torch.zeros(37, dtype=torch.float64)
    for s in (1, 2, 3):
        gr = t[f"g{s}"].double()
        p = p * (1 - lr * wd)
        ea = b1 * ea + (1 - b1) * gr
        es = b2 * es + (1 - b2) * gr * gr
        p = p - (lr / (1 - b1 ** s)) * ea / (es.sqrt() / math.sqrt(1 - b2 ** s) + eps)
        close(f"p{s}", t[f"p{s}"], p, 1e-6)
    close("exp_avg3", t["exp_avg3"], ea, 1e-6)
    close("exp_avg_sq3", t["exp_avg_sq3"], es, 1e-6)
    n = t["clip_g"].double().norm()
    close("clip_out", t["clip_out"], t["clip_g"].double() * min(1.0, 1.0 / (n.item() + 1e-6)), 1e-6)
    n2 = torch.cat([t["clip2_a"].flatten(), t["clip2_b"].flatten()]).double().norm()
    close("clip2_total_norm", t["clip2_total_norm"], n2.reshape(1), 1e-6)
    co = min(1.0, 1.0 / (n2.item() + 1e-6))
    close("clip2_a_out", t["clip2_a_out"], t["clip2_a"].double() * co, 1e-6)
    close("clip2_b_out", t["clip2_b_out"], t["clip2_b"].double() * co, 1e-6)
    print(f"[adamw] ok: {', '.join(f'{k} {list(v.shape)} {v.dtype}' for k, v in t.items())}")


def check_tokenizer():
    tok = Tokenizer.from_file(os.path.join(FIX, "tokenizer.json"))
    cases = json.load(open(os.path.join(FIX, "tokenizer_cases.json"), encoding="utf-8"))
    for c in cases:
        assert tok.encode(c["text"], add_special_tokens=False).ids == c["ids"], c["text"]
    print(f"[tokenizer] {len(cases)} cases re-encoded identically; vocab {tok.get_vocab_size()}")


if __name__ == "__main__":
    torch.manual_seed(0)
    check_tokenizer()
    check_model("tiny-tied")
    check_model("tiny-gqa")
    check_adamw()
    print("all fixture checks passed")
