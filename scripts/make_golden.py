#!/usr/bin/env python3
"""Generate golden test fixtures for mmr1-fast from the Hugging Face reference implementation.

What it makes (all under tests/fixtures/, overwritten on every run):
  tokenizer.json          tiny byte-level BPE (ByteLevel pre-tokenizer + decoder, like Qwen), 400 ids,
                          trained on a built-in English/math corpus; <|endoftext|>, <|im_start|>,
                          <|im_end|> are added special tokens (ids 397, 398, 399).
  tokenizer_cases.json    [{"text", "ids", "tokens"}] as encoded by the Python `tokenizers` library.
  tiny-tied/              random Qwen2 (hidden 64, 2 layers, 4 heads, 2 kv heads, tied embeddings), float32,
                          single model.safetensors + config.json + tokenizer.json + golden.safetensors.
  tiny-gqa/               random Qwen2 (vocab 517, hidden 80, 8 heads of dim 10, 2 kv heads, intermediate 131,
                          3 layers, untied lm_head, rope_theta 1e6), saved in bfloat16 as 3 shards +
                          model.safetensors.index.json, + golden.safetensors computed in f32 from the
                          bf16-rounded weights (so an f32 engine reading the bf16 files reproduces them).
  adamw.safetensors       torch.optim.AdamW trajectory (3 steps) and clip_grad_norm_ cases.
  README.md is written by hand (not by this script) and documents all tensor names.

golden.safetensors (per model dir), for 3 sequences i = 0, 1, 2 of lengths 7, 16, 11:
  tokens.{i} i64 [L], logits.{i} f32 [L, V], logprobs.{i} f32 [L-1],
  logprobs_t07.{i} f32 [L-1] (logits / 0.7 before log_softmax), lossw.{i} f32 [L-1],
  loss f32 [1] = sum_i sum_t lossw.{i}[t] * logprobs_t07.{i}[t],
  grad.<param name as in the model safetensors> f32 = d loss / d param (autograd, f32).
  Metadata key "meta": JSON string with versions, temperature, sequence lengths.

Weights are deliberately large (std 0.2 normal for every Linear weight, q/k/v bias and embedding;
RMSNorm weights 1 + N(0, 0.1)) so that the goldens are sensitive to bugs (see BUILD-NOTES.md).
The forward/backward uses attn_implementation="eager", CPU, float32, 1 thread, fixed seeds.

Written against transformers 5.24.0 / torch 2.15.0 / tokenizers 0.23.3 / safetensors 0.8.0
(see scripts/requirements-golden.txt). transformers 5.x writes "rope_parameters": {"rope_theta", "rope_type"}
and "dtype" in config.json (older versions and released Qwen2.5 checkpoints: top-level "rope_theta",
"torch_dtype"); we leave config.json exactly as transformers wrote it.

Rerun (from the repository root):
  python3 -m venv .venv && .venv/bin/pip install -r scripts/requirements-golden.txt
  .venv/bin/python scripts/make_golden.py
"""

import json
import os
import random
import shutil
import sys

import torch
import torch.nn.functional as F
import safetensors
import tokenizers
import transformers
from safetensors.torch import save_file, load_file
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import Qwen2Config, Qwen2ForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
TEMP = 0.7
SEQ_LENS = [7, 16, 11]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BASE_VOCAB = 397  # BPE vocab (256 byte symbols + merges); the 3 specials come after -> 400 ids

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

VERSIONS = {
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "tokenizers": tokenizers.__version__,
    "safetensors": safetensors.__version__,
    "python": sys.version.split()[0],
}


# --------------------------------------------------------------------------------------------
# 1. Tokenizer
# --------------------------------------------------------------------------------------------
def build_corpus(n_lines=400, seed=1234):
    rng = random.Random(seed)
    names = ["Alice", "Bob", "Carol", "Dave", "Emma", "Frank", "Grace", "Henry"]
    items = ["apples", "books", "coins", "pencils", "marbles", "cookies", "stickers", "cards"]
    verbs = ["buys", "finds", "gets", "receives", "collects"]
    lines = []
    for k in range(n_lines):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        who, what, verb = rng.choice(names), rng.choice(items), rng.choice(verbs)
        kind = k % 5
        if kind == 0:
            lines.append(f"{who} has {a} {what} and {verb} {b} more. How many {what} does {who} have now?")
        elif kind == 1:
            lines.append(f"<think> {who} starts with {a} and adds {b}, so {a} + {b} = {a + b}. </think>"
                         f"<answer> \\boxed{{{a + b}}} </answer>")
        elif kind == 2:
            op = rng.choice(["+", "-", "*"])
            val = a + b if op == "+" else (a - b if op == "-" else a * b)
            lines.append(f"Compute {a} {op} {b}. The answer is {val}.")
        elif kind == 3:
            lines.append(f"If {who} gives away {min(a, b)} of {max(a, b)} {what}, "
                         f"{max(a, b) - min(a, b)} {what} are left. Therefore the answer is "
                         f"\\boxed{{{max(a, b) - min(a, b)}}}.")
        else:
            lines.append(f"<|im_start|>user\nWhat is {a} times {b}?<|im_end|>\n<|im_start|>assistant\n"
                         f"<think> {a} * {b} = {a * b} </think><answer> \\boxed{{{a * b}}} </answer><|im_end|>")
    lines += ["The quick brown fox jumps over the lazy dog.",
              "Let x = 3 and y = 4; then x^2 + y^2 = 25, so the hypotenuse is 5.",
              "A train travels 60 miles per hour for 2 hours. How far does it go? 120 miles."]
    return lines


def make_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BASE_VOCAB,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(build_corpus(), trainer=trainer)
    assert tok.get_vocab_size() == BASE_VOCAB, tok.get_vocab_size()
    n_added = tok.add_special_tokens(SPECIALS)
    assert n_added == 3
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == BASE_VOCAB + i
    return tok


TOKENIZER_TEXTS = [
    "Alice has 12 apples and buys 30 more.",
    "<|im_start|>user\nWhat is 7 times 6?<|im_end|>\n<|im_start|>assistant\n",
    "<think> 7 * 6 = 42 </think><answer> \\boxed{42} </answer><|im_end|>",
    "Unicode: café, naïve, 你好, emoji 🙂 and π ≈ 3.14159",
    "1234567890 + 987654321 = 1111111211",
    "  leading spaces,\ttabs\nand\n\nnewlines  ",
    "<|endoftext|>",
    "",
    "x^2 + y^2 = 25<|im_end|><|endoftext|>",
]


def tokenizer_cases(tok):
    cases = []
    for t in TOKENIZER_TEXTS:
        enc = tok.encode(t, add_special_tokens=False)
        dec = tok.decode(enc.ids, skip_special_tokens=False)
        assert dec == t, (t, dec)
        cases.append({"text": t, "ids": enc.ids, "tokens": enc.tokens})
    return cases


# --------------------------------------------------------------------------------------------
# 2./3. Models and goldens
# --------------------------------------------------------------------------------------------
def init_sensitive(model, seed):
    """Overwrite every parameter: N(0, 0.2) for Linear weights, biases and embeddings;
    1 + N(0, 0.1) for RMSNorm weights. Tied lm_head is the embedding tensor (iterated once)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:  # Linear weights, q/k/v biases, embed_tokens, lm_head (untied)
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def chat_sequence(tok, length):
    """A real chat-template encoding of exactly `length` tokens, if one of the candidates fits."""
    cands = ["2+3?", "Hi", "7*6?", "Sum?", "Hello", "What is 2+3?", "x=1"]
    for c in cands:
        text = f"<|im_start|>user\n{c}<|im_end|>\n"
        ids = tok.encode(text, add_special_tokens=False).ids
        if len(ids) == length:
            return text, ids
    text = f"<|im_start|>user\n{cands[-1]}<|im_end|>\n<|im_start|>assistant\n"
    return text + " (truncated)", tok.encode(text, add_special_tokens=False).ids[:length]


def seq_logprobs(logits, tokens, temperature=1.0):
    lp = F.log_softmax(logits[:-1] / temperature, dim=-1)
    return lp.gather(-1, tokens[1:, None])[:, 0]


def compute_goldens(model, seqs, seed):
    g = torch.Generator().manual_seed(seed)
    lossw = [torch.randn(len(s) - 1, generator=g) for s in seqs]
    out = {}
    model.zero_grad(set_to_none=True)
    loss = torch.zeros((), dtype=torch.float32)
    all_lp = []
    for i, toks in enumerate(seqs):
        logits = model(input_ids=toks[None]).logits[0]
        assert logits.dtype == torch.float32
        lp = seq_logprobs(logits, toks)
        lp07 = seq_logprobs(logits, toks, TEMP)
        loss = loss + (lossw[i] * lp07).sum()
        out[f"tokens.{i}"] = toks.clone()
        out[f"logits.{i}"] = logits.detach().clone()
        out[f"logprobs.{i}"] = lp.detach().clone()
        out[f"logprobs_t07.{i}"] = lp07.detach().clone()
        out[f"lossw.{i}"] = lossw[i].clone()
        all_lp.append(lp.detach())
    loss.backward()
    out["loss"] = loss.detach().reshape(1).clone()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        out[f"grad.{name}"] = p.grad.detach().float().clone()
    return out, torch.cat(all_lp)


def set_theta(cfg, theta):
    # transformers 5.x keeps rope_theta inside cfg.rope_parameters; older versions at top level.
    if isinstance(getattr(cfg, "rope_parameters", None), dict):
        cfg.rope_parameters["rope_theta"] = theta
    else:
        cfg.rope_theta = theta


def rel_l2(a, b):
    return ((a - b).norm() / b.norm()).item()


def sensitivity_check(model_dir, seqs, ref_lp, mutate, label):
    """Recompute log-probs with a deliberately wrong config value; the golden must move a lot."""
    cfg = Qwen2Config.from_pretrained(model_dir)
    mutate(cfg)
    bad = Qwen2ForCausalLM.from_pretrained(model_dir, config=cfg, dtype=torch.float32,
                                           attn_implementation="eager")
    bad.eval()
    with torch.no_grad():
        lp = torch.cat([seq_logprobs(bad(input_ids=s[None]).logits[0], s) for s in seqs])
    d = rel_l2(lp, ref_lp)
    print(f"    sensitivity [{label}]: rel L2 change of log-probs = {d:.3f}")
    assert d > 1e-2, f"goldens not sensitive to {label}"


def save_model_and_goldens(name, cfg, seqs, save_dtype, init_seed, lossw_seed, shard_size=None, tok=None,
                           bad_overrides=()):
    d = os.path.join(FIX, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    torch.manual_seed(init_seed)
    model = Qwen2ForCausalLM(cfg)
    init_sensitive(model, init_seed)
    if cfg.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model = model.to(save_dtype)
    kw = {"safe_serialization": True}
    if shard_size is not None:
        kw["max_shard_size"] = shard_size
    model.save_pretrained(d, **kw)
    if tok is not None:
        tok.save(os.path.join(d, "tokenizer.json"))

    # Reload from disk in f32 (bf16 -> f32 upcast is exact): the goldens match the files exactly.
    m = Qwen2ForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    assert m.config._attn_implementation == "eager"
    assert all(p.dtype == torch.float32 for p in m.parameters())
    # Check the reloaded weights are the bf16/f32 rounding of what we initialised.
    ref = {k: v.float() for k, v in model.state_dict().items()}
    for k, v in m.state_dict().items():
        assert torch.equal(v, ref[k]), k

    gold, lp = compute_goldens(m, seqs, lossw_seed)
    meta = {"temperature": str(TEMP), "seq_lens": [len(s) for s in seqs], "model": name,
            "weights_dtype_on_disk": str(save_dtype).replace("torch.", ""), "compute_dtype": "float32",
            "attn_implementation": "eager",
            "loss": "sum_i sum_t lossw.{i}[t] * logprobs_t07.{i}[t]", **VERSIONS}
    save_file(gold, os.path.join(d, "golden.safetensors"), metadata={"meta": json.dumps(meta)})

    print(f"[{name}] saved in {save_dtype}; files: {sorted(os.listdir(d))}")
    print(f"    params: {sum(p.numel() for p in m.parameters())}, loss = {gold['loss'].item():.6f}")
    print(f"    log-probs: mean {lp.mean().item():.3f}, std {lp.std().item():.3f}, "
          f"min {lp.min().item():.3f}, max {lp.max().item():.3f} (-log V = {-torch.log(torch.tensor(float(cfg.vocab_size))).item():.3f})")
    for ov, label in bad_overrides:
        sensitivity_check(d, seqs, lp, ov, label)
    return gold


# --------------------------------------------------------------------------------------------
# 4. AdamW / grad clipping
# --------------------------------------------------------------------------------------------
def make_adamw():
    g = torch.Generator().manual_seed(4242)
    hp = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    p0 = torch.randn(37, generator=g)
    grads = [torch.randn(37, generator=g) for _ in range(3)]
    p = torch.nn.Parameter(p0.clone())
    opt = torch.optim.AdamW([p], foreach=False, fused=False, amsgrad=False, maximize=False, **hp)
    out = {"p0": p0.clone()}
    for k, gk in enumerate(grads, start=1):
        p.grad = gk.clone()
        opt.step()
        out[f"g{k}"] = gk.clone()
        out[f"p{k}"] = p.detach().clone()
    st = opt.state[p]
    out["exp_avg3"] = st["exp_avg"].clone()
    out["exp_avg_sq3"] = st["exp_avg_sq"].clone()

    # clip_grad_norm_ on a single tensor with norm 5 -> norm ~1 (coef = max_norm / (total_norm + 1e-6)).
    c = torch.randn(37, generator=g)
    c = c * (5.0 / c.norm())
    q = torch.nn.Parameter(torch.zeros(37))
    q.grad = c.clone()
    tn = torch.nn.utils.clip_grad_norm_([q], max_norm=1.0)
    out["clip_g"] = c.clone()
    out["clip_out"] = q.grad.clone()
    out["clip_total_norm"] = tn.reshape(1).float().clone()
    # Global-norm clipping over two tensors of different shapes.
    a = torch.randn(37, generator=g) * 0.5
    b = torch.randn(5, 3, generator=g) * 0.5
    pa, pb = torch.nn.Parameter(torch.zeros(37)), torch.nn.Parameter(torch.zeros(5, 3))
    pa.grad, pb.grad = a.clone(), b.clone()
    tn2 = torch.nn.utils.clip_grad_norm_([pa, pb], max_norm=1.0)
    out.update({"clip2_a": a, "clip2_b": b, "clip2_a_out": pa.grad.clone(), "clip2_b_out": pb.grad.clone(),
                "clip2_total_norm": tn2.reshape(1).float().clone()})

    meta = {"lr": "1e-2", "beta1": "0.9", "beta2": "0.95", "eps": "1e-8", "weight_decay": "0.1",
            "optimizer": "torch.optim.AdamW(foreach=False, amsgrad=False), one param, 3 steps",
            "clip": "torch.nn.utils.clip_grad_norm_(max_norm=1.0, norm_type=2); coef = min(1, 1/(norm+1e-6))",
            **VERSIONS}
    # One metadata key only: safetensors writes a multi-key metadata map in random order (not byte-stable).
    save_file(out, os.path.join(FIX, "adamw.safetensors"), metadata={"meta": json.dumps(meta)})
    print(f"[adamw] |p3 - p0| = {(out['p3'] - p0).norm().item():.5f}; clip total norm {tn.item():.4f} -> "
          f"{out['clip_out'].norm().item():.6f}; clip2 total norm {tn2.item():.4f}")


# --------------------------------------------------------------------------------------------
def main():
    os.makedirs(FIX, exist_ok=True)
    print("versions:", json.dumps(VERSIONS))

    tok = make_tokenizer()
    tok.save(os.path.join(FIX, "tokenizer.json"))
    cases = tokenizer_cases(tok)
    with open(os.path.join(FIX, "tokenizer_cases.json"), "w", encoding="utf-8") as f:
        f.write("[\n" + ",\n".join(json.dumps(c, ensure_ascii=False) for c in cases) + "\n]\n")
    V = tok.get_vocab_size()
    print(f"[tokenizer] vocab {V} (specials {[tok.token_to_id(s) for s in SPECIALS]}), {len(cases)} cases")
    for c in cases[:3]:
        print(f"    {c['text']!r} -> {c['ids']}")

    ids = {s: tok.token_to_id(s) for s in SPECIALS}

    # ---- tiny-tied: f32, tied embeddings, first sequence is a chat-template encoding ----
    cfg_tied = Qwen2Config(
        vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        rope_theta=10000.0, rms_norm_eps=1e-6, max_position_embeddings=128,
        initializer_range=0.2, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
        hidden_act="silu", use_sliding_window=False,
    )
    g = torch.Generator().manual_seed(1001)
    chat_text, chat_ids = chat_sequence(tok, SEQ_LENS[0])
    seqs_tied = [torch.tensor(chat_ids, dtype=torch.int64)]
    seqs_tied += [torch.randint(0, V, (n,), generator=g, dtype=torch.int64) for n in SEQ_LENS[1:]]
    print(f"[tiny-tied] sequence 0 is the chat text {chat_text!r}")
    save_model_and_goldens("tiny-tied", cfg_tied, seqs_tied, torch.float32, init_seed=11, lossw_seed=12,
                           tok=tok, bad_overrides=[(lambda c: set_theta(c, 1e6), "rope_theta 1e6 instead of 1e4"),
                                                    (lambda c: setattr(c, "rms_norm_eps", 1e-2),
                                                     "rms_norm_eps 1e-2 instead of 1e-6")])

    # ---- tiny-gqa: bf16 on disk, sharded, untied, odd sizes, GQA 4 ----
    cfg_gqa = Qwen2Config(
        vocab_size=517, hidden_size=80, intermediate_size=131, num_hidden_layers=3,
        num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False,
        rope_theta=1e6, rms_norm_eps=1e-5, max_position_embeddings=64,
        initializer_range=0.2, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
        hidden_act="silu", use_sliding_window=False,
    )
    g = torch.Generator().manual_seed(2002)
    seqs_gqa = [torch.randint(0, 517, (n,), generator=g, dtype=torch.int64) for n in SEQ_LENS]
    save_model_and_goldens("tiny-gqa", cfg_gqa, seqs_gqa, torch.bfloat16, init_seed=21, lossw_seed=22,
                           shard_size="200KB",
                           bad_overrides=[(lambda c: set_theta(c, 1e4), "rope_theta 1e4 instead of 1e6")])
    shards = [f for f in os.listdir(os.path.join(FIX, "tiny-gqa")) if f.startswith("model-")]
    assert 2 <= len(shards) <= 3, shards
    assert os.path.exists(os.path.join(FIX, "tiny-gqa", "model.safetensors.index.json"))

    make_adamw()

    total = 0
    for dp, _, fs in os.walk(FIX):
        for f in fs:
            total += os.path.getsize(os.path.join(dp, f))
    print(f"total size of tests/fixtures: {total / 1e6:.3f} MB")


if __name__ == "__main__":
    main()
