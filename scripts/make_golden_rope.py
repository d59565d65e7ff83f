#!/usr/bin/env python3
"""Golden fixtures for scaled rotary embeddings: one tiny Qwen2 per RoPE type that a config can
ask for and the engine supports (src/model/rope_scaling.rs), from transformers itself.

What it makes, under tests/fixtures/tiny-rope/<type>/ (overwritten on every run):
  linear/   rope_parameters {"rope_type": "linear", "factor": 2.5} (transformers 5's spelling)
  yarn/     the legacy spelling Qwen2.5's long-context instructions give:
            top-level rope_theta + rope_scaling {"type": "yarn", "factor": 4.0,
            "original_max_position_embeddings": 64} (attention factor 0.1 ln 4 + 1 from it)
  llama3/   rope_parameters {"rope_type": "llama3", "factor": 8, "low_freq_factor": 1,
            "high_freq_factor": 4, "original_max_position_embeddings": 64}
Each: config.json, model.safetensors (f32), golden.safetensors in the format of
scripts/make_golden.py (tokens.{i}, logits.{i}, logprobs.{i}, logprobs_t07.{i}, lossw.{i}, loss,
grad.<param>), for 3 random sequences of lengths 9, 23, 40.

The model: vocab 96, hidden 64, 4 heads of dim 16, 2 kv heads, 2 layers, intermediate 80,
rope_theta 100 (a small base, so that the slow pairs turn visibly within 40 positions and the
scaled frequencies move the logits: each fixture checks that it differs from plain RoPE by
more than 1%; YaRN's frequencies alone, without its attention factor, by more than 0.1%, and
its attention factor alone by more than 1%).

Rerun (from the repository root; same environment as scripts/make_golden.py):
  .venv/bin/python scripts/make_golden_rope.py
"""

import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file
from transformers import Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_golden import FIX, TEMP, VERSIONS, compute_goldens, init_sensitive, rel_l2, seq_logprobs  # noqa: E402

OUT = os.path.join(FIX, "tiny-rope")
SEQ_LENS = [9, 23, 40]
BASE = dict(vocab_size=96, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            rms_norm_eps=1e-6, tie_word_embeddings=False, use_sliding_window=False)
THETA = 100.0
CASES = {
    "linear": {"rope_parameters": {"rope_type": "linear", "factor": 2.5, "rope_theta": THETA}},
    "yarn": {"legacy": {"rope_theta": THETA, "rope_scaling": {
        "type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}}},
    "llama3": {"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
                                   "rope_theta": THETA}},
}


def log_probs(d, seqs, edit=None):
    cfg = Qwen2Config.from_pretrained(d)
    if edit is not None:
        edit(cfg)
    m = Qwen2ForCausalLM.from_pretrained(d, config=cfg, dtype=torch.float32,
                                         attn_implementation="eager")
    m.eval()
    with torch.no_grad():
        return torch.cat([seq_logprobs(m(input_ids=s[None]).logits[0], s) for s in seqs])


def make(name, case, seqs, seed):
    d = os.path.join(OUT, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    params = case.get("rope_parameters", {"rope_type": "default", "rope_theta": THETA})
    cfg = Qwen2Config(**BASE, rope_parameters=dict(params))
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    init_sensitive(model, seed)
    model.save_pretrained(d, safe_serialization=True)
    if "legacy" in case:
        # Rewrite config.json the way older checkpoints spell it; transformers reads it below.
        path = os.path.join(d, "config.json")
        with open(path) as f:
            c = json.load(f)
        c.pop("rope_parameters", None)
        c.update(case["legacy"])
        with open(path, "w") as f:
            json.dump(c, f, indent=2)
    m = Qwen2ForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    rp = m.config.rope_parameters
    want = case.get("rope_parameters", {}).get("rope_type") or case["legacy"]["rope_scaling"]["type"]
    assert rp["rope_type"] == want, rp
    gold, lp = compute_goldens(m, seqs, seed + 1)
    meta = {"temperature": str(TEMP), "seq_lens": SEQ_LENS, "model": f"tiny-rope/{name}",
            "rope_parameters": json.dumps(rp), "attention_scaling": str(m.model.rotary_emb.attention_scaling),
            "weights_dtype_on_disk": "float32", "compute_dtype": "float32",
            "attn_implementation": "eager",
            "loss": "sum_i sum_t lossw.{i}[t] * logprobs_t07.{i}[t]", **VERSIONS}
    save_file(gold, os.path.join(d, "golden.safetensors"), metadata={"meta": json.dumps(meta)})

    def plain(c):
        c.rope_parameters = {"rope_type": "default", "rope_theta": THETA}
    moved = rel_l2(log_probs(d, seqs, plain), lp)
    print(f"[tiny-rope/{name}] rope {rp}, attention scaling "
          f"{m.model.rotary_emb.attention_scaling:.6f}; vs plain RoPE: rel L2 {moved:.4f}")
    assert moved > 1e-2, f"{name}: the scaling hardly changes the log-probs"
    if name == "yarn":
        def no_factor(c):
            c.rope_parameters = dict(c.rope_parameters, attention_factor=1.0)
        unscaled = log_probs(d, seqs, no_factor)
        freq_only = rel_l2(unscaled, log_probs(d, seqs, plain))
        factor_only = rel_l2(unscaled, lp)
        print(f"    YaRN frequencies alone (attention_factor 1) vs plain: rel L2 {freq_only:.4f}; "
              f"the attention factor alone: {factor_only:.4f}")
        assert freq_only > 1e-3 and factor_only > 1e-2


def main():
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(77)
    seqs = [torch.randint(0, BASE["vocab_size"], (n,), generator=g) for n in SEQ_LENS]
    os.makedirs(OUT, exist_ok=True)
    for i, (name, case) in enumerate(CASES.items()):
        make(name, case, seqs, 500 + 10 * i)


if __name__ == "__main__":
    main()
