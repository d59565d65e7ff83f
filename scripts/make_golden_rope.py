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
And tests/fixtures/rope_frequencies.json: transformers' inverse frequencies and attention factor
for twelve settings that reach every option (YaRN's beta_fast/beta_slow, truncate, mscale and
mscale_all_dim, a given attention_factor, an inferred factor, the ramp's singular and clamped
ends; llama3 with other frequency factors). Each model dir: config.json, model.safetensors (f32),
golden.safetensors in the format of
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


# Frequency-level cases: transformers' own ROPE_INIT_FUNCTIONS on configs that reach every
# option (tests/fixtures/rope_frequencies.json; the models above use one setting each).
FREQ_CASES = [
    # (head_dim, rope_theta, max_position_embeddings, rope settings)
    (16, 100.0, 256, {"rope_type": "linear", "factor": 2.5}),
    (64, 1e6, 32768, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192}),
    (128, 1e6, 131072, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}),
    (64, 1e4, 16384, {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 2048,
                      "beta_fast": 16, "beta_slow": 2, "truncate": False}),
    (64, 1e4, 16384, {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 2048,
                      "mscale": 0.707, "mscale_all_dim": 1.2}),
    # mscale 0 counts as not given (Python truthiness): the plain factor.
    (64, 1e4, 16384, {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 2048,
                      "mscale": 0, "mscale_all_dim": 1.0}),
    (64, 1e4, 16384, {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 2048,
                      "attention_factor": 1.3}),
    # No factor: transformers takes max_position_embeddings / original_max_position_embeddings.
    (32, 5e5, 65536, {"rope_type": "yarn", "factor": None, "original_max_position_embeddings": 4096}),
    # beta_fast = beta_slow, not truncated: the ramp's two ends meet (transformers adds 0.001).
    (32, 1e4, 4096, {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 1024,
                     "beta_fast": 4, "beta_slow": 4, "truncate": False}),
    # The slow end (17) clamps at head_dim - 1 = 15 with the fast end at 3: the ramp is cut.
    (16, 10.0, 1 << 20, {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 632}),
    (64, 5e5, 131072, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    (32, 1e4, 8192, {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.5,
                     "high_freq_factor": 6.0, "original_max_position_embeddings": 512}),
]


def make_frequencies():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    cases = []
    for hd, theta, max_pos, rope in FREQ_CASES:
        params = dict(rope)
        params["rope_theta"] = theta
        cfg = Qwen2Config(hidden_size=hd * 4, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=max_pos, rope_parameters=dict(params))
        inv, attn = ROPE_INIT_FUNCTIONS[params["rope_type"]](cfg, "cpu")
        cases.append({"head_dim": hd, "max_position_embeddings": max_pos,
                      "rope_parameters": params, "inv_freq": inv.tolist(),
                      "attention_factor": float(attn)})
    path = os.path.join(FIX, "rope_frequencies.json")
    with open(path, "w") as f:
        json.dump({"versions": VERSIONS, "cases": cases}, f, indent=1)
        f.write("\n")
    print(f"{path}: {len(cases)} cases")


def main():
    make_frequencies()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(77)
    seqs = [torch.randint(0, BASE["vocab_size"], (n,), generator=g) for n in SEQ_LENS]
    os.makedirs(OUT, exist_ok=True)
    for i, (name, case) in enumerate(CASES.items()):
        make(name, case, seqs, 500 + 10 * i)


if __name__ == "__main__":
    main()
