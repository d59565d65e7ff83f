#!/usr/bin/env python3
"""Differential probe: `mmr1-fast logprobs` against Hugging Face transformers on random tiny Qwen2
checkpoints.

What it compares
  For every case the probe builds a tiny Qwen2ForCausalLM with random weights (random or
  hand-picked config: GQA ratios, head sizes, tied/untied, f32/bf16/f16, sharded files, rope
  types and their legacy spellings, sliding-window settings, edited config.json files, broken
  checkpoints and bad token files), saves it with `save_pretrained`, runs
  `mmr1-fast logprobs --device cpu` on a few token sequences and compares the teacher-forced
  log-probs (`logprobs.{i}`) and the last position's logits (`last_logits.{i}`) with
  transformers' f32 eager forward, as relative L2 distances. The verdict of a case:
    ok                      max relative L2 over all sequences <= --tol (1e-4)
    MISMATCH                above --tol (or a shape or tensor missing)
    refused (expected)      the engine exits non-zero and the case expects a refusal
    refused (UNEXPECTED)    the engine exits non-zero on a case it should run
    PANIC                   the engine panicked
    engine ok, no HF ref    the engine ran but transformers could not load or run the case
    ok (but expected refusal)  the engine ran a case meant to be refused and agreed with HF
  With the emulator (`--emu`, a build with `--features emu`), the same sequences also run with
  `--device emu --precision f32` (held to --tol) and `--precision bf16` (held only to the loose
  sanity bound --emu-bf16-tol; bf16 differs from f32 by design).

  Exit status: 0 when no case FAILs, 1 when one does (MISMATCH, PANIC, an unexpected
  refusal, an emulator run that disagrees or fails where the CPU ran, a probe error), 2 on a
  usage or setup error. NOTE outcomes (accepted where a refusal was expected, no HF reference)
  are listed but do not fail the run.

Python packages (versions of scripts/requirements-golden.txt):
  torch, transformers==5.24.0, safetensors, numpy

How to run (from anywhere; paths default relative to the repository root):
  cargo build --release            # or --features emu for the emulator runs
  python scripts/probes/probe_logprobs.py                    # all cases (40 random + edge cases)
  python scripts/probes/probe_logprobs.py rope_ swa_         # cases whose name contains a filter
  python scripts/probes/probe_logprobs.py --list
  python scripts/probes/probe_logprobs.py --engine target/debug/mmr1-fast --work /tmp/p --no-emu

What it prints
  One line per case: name, verdict, max relative L2 (CPU), the engine's error line when it
  refused, HF's error when transformers failed, and the emulator's f32 / bf16 distances; then a
  summary with the FAIL and NOTE cases. Each case leaves WORK/cases/NAME/ (model/, seqs.json,
  lp*.safetensors, engine*.log with the command line and its output); WORK/results.json holds
  every number (merged with an existing file when --work is reused).
"""
import argparse
import json
import os
import random
import subprocess
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # probe_common.py, from any working directory
from probe_common import (EMU_MISSING, add_emu_args, add_engine_work_args, add_filter_arg,  # noqa: E402
                          config_from, edit_config_json, emu_required_error, fresh_case_dir, hf_qwen2,
                          import_error, random_qwen2, random_rope_factors, rel_l2, resolve_engine,
                          select_cases, to_dtype, work_dir, write_engine_log)

try:
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file, save_file
    from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: F401 - used through probe_common
    _IMPORT_ERROR = None
except ImportError as e:  # reported after argument parsing, so that --help works without them
    _IMPORT_ERROR = e

TOL = 1e-4             # CPU and emulator f32: max relative L2 of log-probs and last logits
EMU_BF16_TOL = 0.2     # emulator bf16: sanity bound only (measured up to 0.055 on 90 accepted cases)


class Opts:
    engine = None
    cases_dir = None
    emu = "auto"          # auto | on | off
    emu_available = None  # learned from the first emulator run
    tol = TOL
    emu_bf16_tol = EMU_BF16_TOL


def build(case):
    d, md = fresh_case_dir(Opts.cases_dir, case["name"])
    kw = dict(case["cfg"])
    kw.setdefault("hidden_act", "silu")
    kw.setdefault("bos_token_id", 0)
    kw.setdefault("eos_token_id", 1)
    model = to_dtype(random_qwen2(kw, case["seed"]), case.get("dtype", "f32"))
    skw = {}
    if case.get("shard"):
        skw["max_shard_size"] = case["shard"]
    model.save_pretrained(md, **skw)
    if case.get("no_genconfig"):
        p = os.path.join(md, "generation_config.json")
        if os.path.exists(p):
            os.remove(p)
    edit = case.get("cfg_edit")
    if edit:
        edit_config_json(md, edit)
    post = case.get("post")
    if post:
        post(md)
    rng = random.Random(case["seed"] * 7 + 1)
    V = kw["vocab_size"]
    seqs = case.get("seqs") or [[rng.randrange(V) for _ in range(n)] for n in case["lens"]]
    json.dump(seqs, open(os.path.join(d, "seqs.json"), "w"))
    return d, md, seqs


def hf_reference(md, seqs, temperature):
    m = hf_qwen2(md)
    out = []
    with torch.no_grad():
        for s in seqs:
            t = torch.tensor(s, dtype=torch.int64)
            logits = m(input_ids=t[None]).logits[0].float()
            lp = F.log_softmax(logits[:-1] / temperature, dim=-1).gather(-1, t[1:, None])[:, 0]
            out.append((lp, logits[-1]))
    return out, m.config


def run_engine(d, md, temperature, device="cpu", extra=(), tag=""):
    outp = os.path.join(d, f"lp{tag}.safetensors")
    if os.path.exists(outp):
        os.remove(outp)
    cmd = [str(Opts.engine), "logprobs", "--model", md, "--tokens", os.path.join(d, "seqs.json"),
           "--out", outp, "--device", device, *extra]
    if temperature != 1.0:
        cmd += ["--temperature", str(temperature)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    write_engine_log(os.path.join(d, f"engine{tag}.log"), " ".join(cmd), r.returncode, r.stdout, r.stderr)
    return cmd, r, outp


def run_case(case):
    res = {"name": case["name"], "desc": case.get("desc", "")}
    temperature = case.get("temperature", 1.0)
    d, md, seqs = build(case)
    res["lens"] = [len(s) for s in seqs]
    cmd, r, outp = run_engine(d, md, temperature)
    res["cmd"] = " ".join(cmd)
    res["rc"] = r.returncode
    err = (r.stderr.strip().splitlines() or [""])
    res["engine_err"] = "\n".join(err[-6:]) if r.returncode != 0 else ""
    res["panic"] = "panicked" in r.stderr
    try:
        ref, _ = hf_reference(md, seqs, temperature)
        res["hf"] = "ok"
    except Exception as e:  # noqa: BLE001 - transformers' refusal is a result
        res["hf"] = "error: " + repr(e)[:300]
        ref = None
    if r.returncode == 0 and ref is not None:
        got = load_file(outp)
        lp_errs, ll_errs = [], []
        for i, (lp, ll) in enumerate(ref):
            if f"logprobs.{i}" not in got:
                lp_errs.append(float("inf"))
                continue
            g_lp, g_ll = got[f"logprobs.{i}"], got[f"last_logits.{i}"]
            if g_lp.shape != lp.shape or g_ll.shape != ll.shape:
                lp_errs.append(float("inf"))
                ll_errs.append(float("inf"))
                res.setdefault("shape_mismatch", []).append(
                    (i, list(g_lp.shape), list(lp.shape), list(g_ll.shape), list(ll.shape)))
                continue
            lp_errs.append(rel_l2(g_lp, lp) if lp.numel() else 0.0)
            ll_errs.append(rel_l2(g_ll, ll))
        res["lp_rel"] = lp_errs
        res["ll_rel"] = ll_errs
        res["max_rel"] = max(lp_errs + ll_errs, default=0.0)
        res["extra_keys"] = sorted(set(got) - {f"logprobs.{i}" for i in range(len(seqs))}
                                   - {f"last_logits.{i}" for i in range(len(seqs))})
    # The same sequences on the CUDA kernels' host emulator (a build with --features emu): f32 and bf16.
    if Opts.emu != "off" and Opts.emu_available is not False and ref is not None:
        for tag, extra in (("_emu_f32", ["--precision", "f32"]), ("_emu_bf16", ["--precision", "bf16"])):
            _, r2, outp2 = run_engine(d, md, temperature, "emu", extra, tag)
            if r2.returncode != 0 and EMU_MISSING in r2.stderr:
                Opts.emu_available = False
                res["emu_missing"] = True
                break
            Opts.emu_available = True
            if r2.returncode != 0:
                res["rc" + tag] = r2.returncode
                res["err" + tag] = (r2.stderr.strip().splitlines() or [""])[-1][:300]
                res["panic" + tag] = "panicked" in r2.stderr
                continue
            if r.returncode != 0:
                res["ok_where_cpu_refused" + tag] = True
                continue
            got = load_file(outp2)
            errs = []
            for i, (lp, ll) in enumerate(ref):
                g_lp, g_ll = got.get(f"logprobs.{i}"), got.get(f"last_logits.{i}")
                if g_lp is None or g_ll is None or g_lp.shape != lp.shape or g_ll.shape != ll.shape:
                    errs.append(float("inf"))
                    continue
                errs.append(rel_l2(g_lp, lp) if lp.numel() else 0.0)
                errs.append(rel_l2(g_ll, ll))
            res["max_rel" + tag] = max(errs, default=0.0)
    expect_err = case.get("expect_error", False)
    if r.returncode != 0:
        res["verdict"] = "refused" + (" (expected)" if expect_err else " (UNEXPECTED)")
        if res["panic"]:
            res["verdict"] = "PANIC"
    elif res.get("max_rel") is None:
        res["verdict"] = "engine ok, no HF ref"
    elif res["max_rel"] > Opts.tol:
        res["verdict"] = "MISMATCH"
    else:
        res["verdict"] = "ok" + (" (but expected refusal)" if expect_err else "")
    judge(res, expect_err)
    return res


def judge(res, expect_err):
    """PASS / NOTE / FAIL of a case, with the reasons."""
    fails, notes = [], []
    v = res["verdict"]
    if v in ("MISMATCH", "PANIC", "refused (UNEXPECTED)"):
        fails.append(v)
    elif v == "ok (but expected refusal)":
        notes.append("accepted (and agreed with HF) where a refusal was expected")
    elif v == "engine ok, no HF ref":
        notes.append("engine ran; transformers could not" + (" (a refusal was expected)" if expect_err else ""))
    for tag in ("_emu_f32", "_emu_bf16"):
        if res.get("panic" + tag):
            fails.append(f"{tag[1:]}: PANIC")
        elif "rc" + tag in res and res["rc"] == 0:
            fails.append(f"{tag[1:]}: failed where the CPU ran: {res['err' + tag]}")
        elif res.get("ok_where_cpu_refused" + tag):
            fails.append(f"{tag[1:]}: ran where the CPU refused")
        elif "max_rel" + tag in res:
            bound = Opts.tol if tag == "_emu_f32" else Opts.emu_bf16_tol
            e = res["max_rel" + tag]
            if not e <= bound:
                fails.append(f"{tag[1:]}: max rel L2 {e:.3g} > {bound:g}")
    res["status"] = "FAIL" if fails else ("NOTE" if notes else "PASS")
    res["reasons"] = fails + notes


# ------------------------------------------------------------------------------------------ cases
def random_case(i):
    rng = random.Random(1000 + i)
    kv = rng.choice([1, 1, 2, 3, 4, 5])
    ratio = rng.choice([1, 2, 3, 4, 7])
    heads = kv * ratio
    hd = rng.choice([2, 4, 6, 8, 10, 12, 16])
    hidden = heads * hd
    cfg = dict(
        vocab_size=rng.choice([5, 7, 31, 97, 101, 127, 256, 257, 400, 513, 1009]),
        hidden_size=hidden,
        intermediate_size=rng.choice([1, 3, 17, 33, 63, 64, 101, 131, 150]),
        num_hidden_layers=rng.randint(1, 4),
        num_attention_heads=heads,
        num_key_value_heads=kv,
        tie_word_embeddings=rng.random() < 0.5,
        rms_norm_eps=rng.choice([1e-6, 1e-5, 1e-3, 0.1]),
        max_position_embeddings=rng.choice([8, 16, 64, 128, 32768]),
        use_sliding_window=False,
    )
    theta = rng.choice([10.0, 100.0, 1e4, 1e6])
    rope = rng.choice(["default", "default", "linear", "yarn", "llama3"])
    cfg["rope_parameters"] = random_rope_factors(rng, {"rope_type": rope, "rope_theta": theta}, [4, 16, 32])
    n = rng.randint(2, 5)
    lens = [rng.choice([1, 2, 3, 5, 9, 17, 31, 44, 63, 70]) for _ in range(n)]
    return dict(name=f"rand{i:02d}", seed=500 + i, cfg=cfg, lens=lens,
                dtype=rng.choice(["f32", "f32", "bf16", "f16"]),
                shard=rng.choice([None, None, "20KB"]),
                no_genconfig=rng.random() < 0.3,
                desc=f"rope={rope}")


BASE = dict(vocab_size=211, hidden_size=48, intermediate_size=77, num_hidden_layers=2,
            num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=False,
            rms_norm_eps=1e-6, max_position_embeddings=128, use_sliding_window=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4})
LENS = [1, 2, 7, 33, 70]


def B(**over):
    return config_from(BASE, over)


def del_tensor(name):
    def f(md):
        p = os.path.join(md, "model.safetensors")
        t = load_file(p)
        t.pop(name)
        save_file(t, p, metadata={"format": "pt"})
    return f


def add_lm_head_distinct(md):
    p = os.path.join(md, "model.safetensors")
    t = load_file(p)
    g = torch.Generator().manual_seed(9)
    t["lm_head.weight"] = 0.2 * torch.randn(t["model.embed_tokens.weight"].shape, generator=g)
    save_file(t, p, metadata={"format": "pt"})


def add_lm_head_equal(md):
    p = os.path.join(md, "model.safetensors")
    t = load_file(p)
    t["lm_head.weight"] = t["model.embed_tokens.weight"].clone()
    save_file(t, p, metadata={"format": "pt"})


EDGE = [
    dict(name="mha_r1", seed=1, cfg=B(num_attention_heads=6, num_key_value_heads=6), lens=LENS),
    dict(name="gqa_r7", seed=2, cfg=B(hidden_size=56, num_attention_heads=7, num_key_value_heads=1), lens=LENS),
    dict(name="gqa_r3_odd", seed=3, cfg=B(hidden_size=36, num_attention_heads=6, num_key_value_heads=2,
                                          intermediate_size=1, vocab_size=2), lens=LENS),
    dict(name="kv_null", seed=4, cfg=B(num_key_value_heads=None), lens=LENS),
    dict(name="hd2_many_heads", seed=5, cfg=B(hidden_size=32, num_attention_heads=16, num_key_value_heads=4), lens=LENS),
    dict(name="head_dim_explicit_diff", seed=6, cfg=B(head_dim=16), lens=LENS, expect_error=True,
         desc="head_dim 16 != 48/6"),
    dict(name="head_dim_explicit_same", seed=7, cfg=B(head_dim=8), lens=LENS),
    dict(name="head_dim_indivisible", seed=8, cfg=B(hidden_size=50, head_dim=8), lens=LENS, expect_error=True),
    dict(name="hd_odd", seed=9, cfg=B(hidden_size=30, num_attention_heads=6, num_key_value_heads=3), lens=LENS,
         expect_error=True, desc="head_dim 5 (odd)"),
    dict(name="eps_big", seed=10, cfg=B(rms_norm_eps=0.5), lens=LENS),
    dict(name="eps_zero", seed=11, cfg=B(rms_norm_eps=0.0), lens=LENS),
    dict(name="tied_f16_sharded", seed=12, cfg=B(tie_word_embeddings=True), lens=LENS, dtype="f16", shard="10KB"),
    dict(name="bf16_sharded_nogen", seed=13, cfg=B(), lens=LENS, dtype="bf16", shard="15KB", no_genconfig=True),
    dict(name="maxpos_short", seed=14, cfg=B(max_position_embeddings=4), lens=LENS),
    dict(name="temp07", seed=15, cfg=B(), lens=LENS, temperature=0.7),
    dict(name="temp3", seed=15, cfg=B(), lens=LENS, temperature=3.0),
    # rope
    dict(name="rope_linear_new", seed=20, cfg=B(rope_parameters={"rope_type": "linear", "factor": 3.0, "rope_theta": 100.0}), lens=LENS),
    dict(name="rope_linear_legacy", seed=21, cfg=B(), lens=LENS,
         cfg_edit={"rope_parameters": "__DELETE__", "rope_theta": 100.0, "rope_scaling": {"type": "linear", "factor": 3.0}}),
    dict(name="rope_yarn_legacy_nofactor", seed=22, cfg=B(), lens=LENS,
         cfg_edit={"rope_parameters": "__DELETE__", "rope_theta": 100.0, "max_position_embeddings": 256,
                   "rope_scaling": {"type": "yarn", "original_max_position_embeddings": 32}}),
    dict(name="rope_yarn_mscale", seed=23, cfg=B(rope_parameters={"rope_type": "yarn", "factor": 8.0, "rope_theta": 50.0,
                                                                 "original_max_position_embeddings": 16, "mscale": 0.8,
                                                                 "mscale_all_dim": 0.5, "beta_fast": 8, "beta_slow": 2}), lens=LENS),
    dict(name="rope_yarn_no_orig", seed=24, cfg=B(max_position_embeddings=20),
         cfg_edit={"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 100.0}}, lens=LENS),
    dict(name="rope_llama3", seed=25, cfg=B(rope_parameters={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 2.0,
                                                            "high_freq_factor": 8.0, "original_max_position_embeddings": 32,
                                                            "rope_theta": 30.0}), lens=LENS),
    dict(name="rope_dynamic", seed=26, cfg=B(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 100.0}),
         lens=LENS, expect_error=True),
    dict(name="rope_longrope", seed=27, cfg=B(), lens=LENS, expect_error=True,
         cfg_edit={"rope_parameters": {"rope_type": "longrope", "rope_theta": 100.0, "short_factor": [1.0] * 4,
                                       "long_factor": [2.0] * 4, "original_max_position_embeddings": 16}}),
    dict(name="rope_both_theta", seed=28, cfg=B(), lens=LENS, desc="top-level rope_theta 10 and rope_parameters theta 1e4",
         cfg_edit={"rope_theta": 10.0}),
    dict(name="rope_scaling_and_params", seed=29, cfg=B(), lens=LENS,
         desc="rope_parameters default theta 1e4 plus legacy rope_scaling linear (no theta)",
         cfg_edit={"rope_scaling": {"type": "linear", "factor": 2.0}}),
    dict(name="rope_type_and_type", seed=30, cfg=B(), lens=LENS, desc="both rope_type linear and type default",
         cfg_edit={"rope_parameters": {"rope_type": "linear", "type": "default", "factor": 2.0, "rope_theta": 100.0}}),
    dict(name="rope_scaling_empty", seed=31, cfg=B(), lens=LENS, cfg_edit={"rope_scaling": {}}),
    dict(name="rope_scaling_null_theta_top", seed=32, cfg=B(), lens=LENS,
         cfg_edit={"rope_parameters": "__DELETE__", "rope_theta": 77.0, "rope_scaling": None}),
    dict(name="no_rope_at_all", seed=33, cfg=B(), lens=LENS, cfg_edit={"rope_parameters": "__DELETE__"}),
    dict(name="partial_rotary", seed=34, cfg=B(), lens=LENS, expect_error=True,
         cfg_edit={"rope_parameters": {"rope_type": "default", "rope_theta": 100.0, "partial_rotary_factor": 0.5}}),
    # sliding window
    dict(name="swa_fits", seed=40, cfg=B(use_sliding_window=True, sliding_window=70, max_window_layers=1), lens=LENS),
    dict(name="swa_too_short", seed=41, cfg=B(use_sliding_window=True, sliding_window=16, max_window_layers=1), lens=LENS,
         expect_error=True),
    dict(name="swa_mwl_all_full", seed=42, cfg=B(use_sliding_window=True, sliding_window=16, max_window_layers=2), lens=LENS,
         desc="max_window_layers = n_layers: no sliding layer"),
    dict(name="swa_off_small_window", seed=43, cfg=B(use_sliding_window=False, sliding_window=4), lens=LENS),
    dict(name="swa_layer_types_edit", seed=44, cfg=B(), lens=LENS, expect_error=True,
         desc="config.json edited: use_sliding_window true, sliding_window 8, layer_types [full, sliding]",
         cfg_edit={"use_sliding_window": True, "sliding_window": 8, "layer_types": ["full_attention", "sliding_attention"]}),
    dict(name="swa_no_layer_types_mwl0", seed=45, cfg=B(), lens=[1, 2, 7, 8, 9, 33], expect_error=True,
         desc="config.json edited: use_sliding_window true, sliding_window 8, layer_types removed, max_window_layers 0",
         cfg_edit={"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 0, "layer_types": "__DELETE__"}),
    dict(name="swa_exact_boundary", seed=46, cfg=B(use_sliding_window=True, sliding_window=9, max_window_layers=0),
         lens=[9, 9, 3]),
    # checkpoint layout oddities
    dict(name="tied_with_lm_head_in_file", seed=50, cfg=B(tie_word_embeddings=True), lens=LENS, post=add_lm_head_distinct,
         desc="tie_word_embeddings true beside a different lm_head.weight: loads untied, as transformers does"),
    dict(name="untied_missing_lm_head", seed=51, cfg=B(), lens=LENS, post=del_tensor("lm_head.weight"), expect_error=True),
    dict(name="torch_dtype_key", seed=52, cfg=B(), lens=LENS, dtype="bf16",
         cfg_edit={"dtype": "__DELETE__", "torch_dtype": "bfloat16"}),
    # bad inputs
    dict(name="bad_id_ge_vocab", seed=60, cfg=B(), seqs=[[1, 2, 3], [4, 211, 5]], expect_error=True),
    dict(name="bad_empty_seq", seed=61, cfg=B(), seqs=[[1, 2, 3], []], expect_error=True),
    dict(name="bad_no_seqs", seed=62, cfg=B(), seqs=None, lens=[], expect_error=True),
    dict(name="bad_missing_vocab", seed=63, cfg=B(), lens=[3], cfg_edit={"vocab_size": "__DELETE__"}, expect_error=True),
    dict(name="bad_missing_hidden", seed=64, cfg=B(), lens=[3], cfg_edit={"hidden_size": "__DELETE__"}, expect_error=True),
    dict(name="bad_act_gelu", seed=65, cfg=B(hidden_act="gelu"), lens=[3, 5], expect_error=True),
    dict(name="bad_negative_id", seed=66, cfg=B(), seqs=[[1, -2, 3]], expect_error=True),
    dict(name="bad_model_type", seed=67, cfg=B(), lens=[3], cfg_edit={"model_type": "llama"}, expect_error=True),
]

EDGE2 = [
    dict(name="rope_yarn_legacy_factor8", seed=22, cfg=B(), lens=LENS, desc="same as rope_yarn_legacy_nofactor with the inferred factor 8 written",
         cfg_edit={"rope_parameters": "__DELETE__", "rope_theta": 100.0, "max_position_embeddings": 256,
                   "rope_scaling": {"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32}}),
    dict(name="rope_scaling_params_theta100", seed=70, cfg=B(), lens=LENS,
         desc="rope_parameters {default, theta 100} plus legacy rope_scaling linear 2 (no theta anywhere else)",
         cfg_edit={"rope_parameters": {"rope_type": "default", "rope_theta": 100.0}, "rope_scaling": {"type": "linear", "factor": 2.0}}),
    dict(name="rope_toplevel_orig_max", seed=71, cfg=B(), lens=LENS,
         desc="yarn dict orig_max 16, top-level original_max_position_embeddings 64 (Phi3 style; the top level wins)",
         cfg_edit={"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 100.0, "original_max_position_embeddings": 16},
                   "original_max_position_embeddings": 64}),
    dict(name="rope_llama3_lo_gt_hi", seed=72, cfg=B(rope_parameters={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 4.0,
                                                            "high_freq_factor": 1.0, "original_max_position_embeddings": 32,
                                                            "rope_theta": 30.0}), lens=LENS),
    dict(name="rope_yarn_factor_lt1", seed=73, cfg=B(rope_parameters={"rope_type": "yarn", "factor": 0.5, "rope_theta": 100.0,
                                                                 "original_max_position_embeddings": 32}), lens=LENS),
    dict(name="rope_yarn_attn_trunc", seed=74, cfg=B(rope_parameters={"rope_type": "yarn", "factor": 3.0, "rope_theta": 1000.0,
                                                                 "original_max_position_embeddings": 20, "attention_factor": 0.7,
                                                                 "truncate": False, "beta_fast": 5, "beta_slow": 0.5}), lens=LENS),
    dict(name="rope_theta_int", seed=75, cfg=B(), lens=LENS, cfg_edit={"rope_parameters": {"rope_type": "default", "rope_theta": 37}}),
    dict(name="rope_type_null", seed=76, cfg=B(), lens=LENS, cfg_edit={"rope_parameters": {"rope_type": None, "rope_theta": 37.0}}),
    dict(name="rope_nested_layer_types", seed=77, cfg=B(), lens=LENS, expect_error=True,
         desc="rope_parameters nested by layer type: refused by the engine (transformers' Qwen2 rejects it too)",
         cfg_edit={"rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 50.0}}}),
    dict(name="vocab1", seed=78, cfg=B(vocab_size=1), seqs=[[0], [0, 0], [0] * 9]),
    dict(name="long_seqs", seed=79, cfg=B(max_position_embeddings=1024), lens=[129, 200, 257, 513, 64, 65, 127, 128]),
    dict(name="many_seqs", seed=80, cfg=B(), lens=[(i * 37) % 71 + 1 for i in range(40)]),
    dict(name="temp001", seed=15, cfg=B(), lens=LENS, temperature=0.01),
    dict(name="temp100", seed=15, cfg=B(), lens=LENS, temperature=100.0),
    dict(name="swa_window_null", seed=81, cfg=B(), lens=LENS, cfg_edit={"use_sliding_window": True, "sliding_window": None, "max_window_layers": 0}),
    dict(name="swa_layer_types_all_full", seed=82, cfg=B(use_sliding_window=True, sliding_window=4, max_window_layers=0), lens=LENS,
         cfg_edit={"layer_types": ["full_attention", "full_attention"]}),
    dict(name="layers0", seed=83, cfg=B(num_hidden_layers=0), lens=[3, 5], expect_error=True),
    dict(name="tied_with_equal_lm_head", seed=84, cfg=B(tie_word_embeddings=True), lens=LENS, post=add_lm_head_equal),
    dict(name="tied_sharded_lm_head_in_index", seed=85, cfg=B(tie_word_embeddings=False), lens=LENS, shard="15KB",
         desc="untied model saved sharded, then config flipped to tie_word_embeddings true",
         cfg_edit={"tie_word_embeddings": True}),
    dict(name="bf16_tied_lm_head_in_file", seed=86, cfg=B(tie_word_embeddings=False), lens=LENS, dtype="bf16",
         desc="untied bf16 model, config flipped to tie_word_embeddings true (lm_head.weight in file)",
         cfg_edit={"tie_word_embeddings": True}),
    dict(name="tie_key_missing_untied_file", seed=87, cfg=B(tie_word_embeddings=False), lens=LENS,
         desc="untied model, tie_word_embeddings key deleted from config.json (HF default False)",
         cfg_edit={"tie_word_embeddings": "__DELETE__"}),
]

EDGE3 = [
    dict(name="rope_llama3_toplevel_orig_only", seed=90, cfg=B(), lens=LENS,
         desc="llama3 without original_max_position_embeddings in the dict, top-level original_max_position_embeddings 32",
         cfg_edit={"rope_parameters": {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "rope_theta": 30.0}, "original_max_position_embeddings": 32}),
    dict(name="rope_yarn_legacy_toplevel_orig", seed=91, cfg=B(), lens=LENS,
         desc="legacy rope_scaling yarn factor 4 orig 16, top-level rope_theta 100 and original_max_position_embeddings 64",
         cfg_edit={"rope_parameters": "__DELETE__", "rope_theta": 100.0, "original_max_position_embeddings": 64,
                   "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}}),
    dict(name="rope_linear_toplevel_orig", seed=92, cfg=B(), lens=LENS, desc="linear + top-level orig (should not matter)",
         cfg_edit={"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 100.0}, "original_max_position_embeddings": 8}),
    dict(name="swa_off_layer_types_sliding", seed=93, cfg=B(), lens=LENS,
         desc="use_sliding_window false, sliding_window 4, layer_types [sliding, sliding]",
         cfg_edit={"use_sliding_window": False, "sliding_window": 4, "layer_types": ["sliding_attention", "sliding_attention"]}),
    dict(name="swa_mwl_vs_layer_types", seed=94, cfg=B(), lens=LENS,
         desc="use_sliding_window true, sliding_window 4, max_window_layers 0 but layer_types all full",
         cfg_edit={"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 0,
                   "layer_types": ["full_attention", "full_attention"]}),
]

EDGE4 = [
    dict(name="default_eps_missing", seed=100, cfg=B(rms_norm_eps=1e-6), lens=LENS, cfg_edit={"rms_norm_eps": "__DELETE__"}),
    dict(name="default_maxpos_missing_yarn", seed=101, cfg=B(), lens=LENS,
         cfg_edit={"max_position_embeddings": "__DELETE__", "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 100.0}}),
    dict(name="default_kv_missing", seed=102, cfg=B(num_key_value_heads=6), lens=LENS, cfg_edit={"num_key_value_heads": "__DELETE__"}),
    dict(name="kv_gt_heads", seed=103, cfg=B(), lens=LENS, cfg_edit={"num_key_value_heads": 12}, expect_error=True),
    dict(name="extra_layer_tensors", seed=104, cfg=B(num_hidden_layers=3), lens=LENS, desc="3-layer file, config says 2",
         cfg_edit={"num_hidden_layers": 2, "layer_types": ["full_attention", "full_attention"]}),
    dict(name="missing_qbias", seed=105, cfg=B(), lens=LENS, post=del_tensor("model.layers.0.self_attn.q_proj.bias"), expect_error=True),
]


def all_cases(nrand):
    return [random_case(i) for i in range(nrand)] + EDGE + EDGE2 + EDGE3 + EDGE4


# ------------------------------------------------------------------------------------------ main
def parse_args(argv):
    env_emu = os.environ.get("PROBE_EMU")
    ap = argparse.ArgumentParser(
        description="Compare `mmr1-fast logprobs` with transformers on random tiny Qwen2 checkpoints.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Emulator default: $PROBE_EMU=1 or unset: run it when the engine was built with --features emu "
               "(detected on the first run); PROBE_EMU=0: CPU only.\n"
               "Exit status: 0 no FAIL, 1 some case FAILed, 2 usage or setup error.")
    add_filter_arg(ap)
    add_engine_work_args(ap, "results.json")
    ap.add_argument("--nrand", type=int, default=int(os.environ.get("PROBE_NRAND", "40")),
                    help="number of random configs rand00.. (default: $PROBE_NRAND or 40)")
    add_emu_args(ap, env_emu, "also run every case on the emulator (--device emu, f32 and bf16); an engine built "
                              "without --features emu is then an error")
    ap.add_argument("--tol", type=float, default=TOL,
                    help=f"max relative L2 (log-probs and last logits) for CPU and emulator f32 (default {TOL:g})")
    ap.add_argument("--emu-bf16-tol", type=float, default=EMU_BF16_TOL,
                    help=f"sanity bound for the emulator's bf16 runs (default {EMU_BF16_TOL:g})")
    ap.add_argument("--list", action="store_true", help="list the cases (after filtering) and exit")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cases = select_cases(all_cases(args.nrand), args.filters)
    if args.list:
        for c in cases:
            print(f"{c['name']:32s} {'expect refusal ' if c.get('expect_error') else ''}{c.get('desc', '')}")
        return 0
    if _IMPORT_ERROR is not None:
        return import_error(_IMPORT_ERROR)
    engine = resolve_engine(args.engine)
    if engine is None:
        return 2
    if not cases:
        print("error: no case matches the filters (see --list)", file=sys.stderr)
        return 2
    work = work_dir(args.work, "mmr1-probe-logprobs-")
    torch.set_num_threads(2)
    Opts.engine, Opts.emu, Opts.tol, Opts.emu_bf16_tol = engine, args.emu, args.tol, args.emu_bf16_tol
    Opts.cases_dir = str(work / "cases")
    os.makedirs(Opts.cases_dir, exist_ok=True)
    print(f"engine: {engine}\nwork directory: {work}\ncases: {len(cases)}", flush=True)

    rpath = work / "results.json"
    results = json.load(open(rpath)) if rpath.exists() else {}
    statuses = {}
    for c in cases:
        try:
            r = run_case(c)
        except Exception:  # noqa: BLE001 - a broken case is a failure of the run, not of the probe
            r = {"name": c["name"], "verdict": "PROBE ERROR", "status": "FAIL",
                 "reasons": ["probe error"], "err": traceback.format_exc()[-800:]}
            print(r["err"], file=sys.stderr)
        r["cfg"] = c["cfg"]
        r["dtype"] = c.get("dtype", "f32")
        r["shard"] = c.get("shard")
        results[c["name"]] = r
        statuses[c["name"]] = (r["status"], r["reasons"])
        json.dump(results, open(rpath, "w"), indent=1, default=str)
        mr = r.get("max_rel")
        emu = ""
        if Opts.emu != "off" and not r.get("emu_missing"):
            def fmt(tag):
                v = r.get("max_rel" + tag, r.get("err" + tag, "-"))
                return f"{v:.2e}" if isinstance(v, float) else v
            emu = f" emu_f32={fmt('_emu_f32')} emu_bf16={fmt('_emu_bf16')}"
        print(f"{r['status']:4s} {c['name']:30s} {r['verdict']:26s} max_rel={'%.2e' % mr if mr is not None else '-':9s} "
              f"{(r.get('engine_err') or '').splitlines()[-1][:150] if r.get('engine_err') else ''}"
              f"{' HF:' + r['hf'][:120] if r.get('hf', 'ok') != 'ok' else ''}{emu}", flush=True)
        if Opts.emu == "on" and Opts.emu_available is False:
            return emu_required_error(engine)
        if r.get("emu_missing"):
            print(f"note: {engine} was built without --features emu: emulator runs skipped", flush=True)

    fails = {n: s for n, s in statuses.items() if s[0] == "FAIL"}
    notes = {n: s for n, s in statuses.items() if s[0] == "NOTE"}
    npass = sum(1 for s in statuses.values() if s[0] == "PASS")
    print(f"\nsummary: {len(statuses)} cases, {npass} PASS, {len(notes)} NOTE, {len(fails)} FAIL "
          f"(tolerance {Opts.tol:g}; results in {rpath})")
    for n, (_, why) in notes.items():
        print(f"  NOTE {n}: {'; '.join(why)}")
    for n, (_, why) in fails.items():
        print(f"  FAIL {n}: {'; '.join(why)}")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
