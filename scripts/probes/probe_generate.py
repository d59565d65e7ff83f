#!/usr/bin/env python3
"""Differential probe: `mmr1-fast generate` (greedy, KV-cache decode) against transformers' greedy
`generate` on random tiny Qwen2 checkpoints.

What it compares
  Each case builds a tiny Qwen2ForCausalLM with random weights (GQA ratios, head sizes, rope
  types, tied/untied, f32/bf16/f16, sliding window, max_position_embeddings limits, eos ids in
  config.json and/or generation_config.json, lm_head rows boosted so that stop tokens come
  early), runs `mmr1-fast generate --raw --temperature 0 --max-new-tokens N` on a few prompts and
  compares the tokens, their count and the stop reason with transformers'
  `generate(do_sample=False)` (f32, eager attention).

  Tokenizer (--tokmode): `word` (default) writes a WordLevel tokenizer.json into each model
  ("w<id>" words; <|endoftext|> 397, <|im_start|> 398, <|im_end|> 399), so the engine's printed
  text gives its exact token ids; `bpe` copies the repository's tests/fixtures/tokenizer.json
  (byte-level BPE) and compares decoded text. Prompts are made of the BPE fixture's tokens
  either way.

  Stop ids: the engine stops on <|im_end|> (399), <|endoftext|> (397) and the eos_token_id of
  config.json and of generation_config.json (a number or a list); transformers is given that
  same union. Cases marked hf_model_gencfg let transformers read the rest of the checkpoint's
  generation_config.json too (where a repetition_penalty would apply).

  Variants: cpu; with the emulator (a build with --features emu) also emu_f32 and emu_bf16.
  Outcome of each run:
    PASS   same tokens, count and stop reason (or a refusal the case expects: a sequence past
           the sliding window, prompt + max_new_tokens past max_position_embeddings)
    KNOWN  differs in a case marked as a known difference (generation_config.json's
           repetition_penalty, which the engine does not apply)
    DRIFT  emu_bf16 only: first different token where transformers' top-2 logit margin is at
           most --bf16-margin (0.1): bf16 rounding at a near-tie
    NOTE   f32 difference at a margin below 1e-4 (a tie), or no HF reference, or the engine ran
           where a refusal was expected
    FAIL   anything else (a different token, count or stop; an unexpected refusal; a panic)
  Exit status: 0 when no run FAILs, 1 when one does, 2 on a usage or setup error.
  `--sampling` instead checks seeded sampling: the same seed twice gives the same tokens; top_k
  1, top_p 1e-6 and temperature 1e-6 give the greedy tokens (those FAIL the run); it also
  prints whether emu f32 equals cpu, and whether another seed / greedy differ (informational).

Python packages (versions of scripts/requirements-golden.txt):
  torch, transformers==5.24.0, safetensors, numpy, tokenizers

How to run (paths default relative to the repository root):
  cargo build --release                  # --features emu for the emulator variants
  python scripts/probes/probe_generate.py                    # 38 named cases + 12 random
  python scripts/probes/probe_generate.py eos_ gencfg        # cases whose name contains a filter
  python scripts/probes/probe_generate.py --no-emu --tokmode bpe --nrand 0
  python scripts/probes/probe_generate.py --sampling

What it prints
  One line per run (case, variant, prompt length, max new tokens): status, verdict, token count
  and stop reason, or the engine's error, or both counts and the logit margin where they first
  differ; then a summary per variant and the non-PASS runs. Each case leaves WORK/cases/NAME/
  (model/ with its tokenizer.json, engine*.log with the command line and output);
  WORK/results_word.json (or results.json with --tokmode bpe) holds every run.
"""
import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # probe_common.py, from any working directory
from probe_common import (EMU_MISSING, REPO, add_emu_args, add_engine_work_args, add_filter_arg,  # noqa: E402
                          config_from, edit_config_json, emu_required_error, fresh_case_dir, hf_qwen2,
                          import_error, random_qwen2, random_rope_factors, resolve_engine, select_cases,
                          to_dtype, work_dir, write_engine_log)

try:
    import torch
    from tokenizers import Tokenizer
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM  # noqa: F401 - Qwen2* via probe_common
    _IMPORT_ERROR = None
except ImportError as e:  # reported after argument parsing, so that --help works without them
    _IMPORT_ERROR = e

TOKENIZER_STOPS = [399, 397]
SPECIAL_NAMES = {397: "<|endoftext|>", 398: "<|im_start|>", 399: "<|im_end|>"}
TIE_MARGIN = 1e-4     # f32: a first difference at a top-2 margin below this is a tie
BF16_MARGIN = 0.1     # emu_bf16: a first difference at a margin up to this is bf16 drift (measured up to 0.046)


class Opts:
    engine = None
    cases_dir = None
    tokj = None
    word = True
    emu = "auto"          # auto | on | off
    emu_available = None  # learned from the first emulator run
    bf16_margin = BF16_MARGIN


TOK = None  # the BPE fixture tokenizer (prompts; decoding in bpe mode)


def word_tokenizer(V, path):
    """A WordLevel tokenizer.json: "w<id>" for every id below V, the three specials at 397-399."""
    special = {397: ("<|endoftext|>", True), 398: ("<|im_start|>", False), 399: ("<|im_end|>", True)}
    vocab = {f"w{i}": i for i in range(V) if i not in special}
    for i, (s, _) in special.items():
        vocab[s] = i
    j = {"version": "1.0", "truncation": None, "padding": None,
         "added_tokens": [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                           "normalized": False, "special": sp} for i, (s, sp) in special.items()],
         "normalizer": None, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": None, "decoder": None,
         "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<|endoftext|>"}}
    json.dump(j, open(path, "w"))
    return Tokenizer.from_file(path)


def word_text(ids):
    return " ".join(SPECIAL_NAMES.get(i, f"w{i}") for i in ids)


def parse_words(out):
    inv = {v: k for k, v in SPECIAL_NAMES.items()}
    return [inv[w] if w in inv else int(w[1:]) for w in out.split()]


BASE = dict(vocab_size=400, hidden_size=48, intermediate_size=77, num_hidden_layers=2,
            num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=False,
            rms_norm_eps=1e-6, max_position_embeddings=256, use_sliding_window=False,
            bos_token_id=397, eos_token_id=399,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4})


def B(**over):
    return config_from(BASE, over)


def text_of_len(n, seed):
    """A prompt string that tokenizes to exactly n tokens (greedy search over random ASCII words)."""
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJ0123456789.,!?"
    s = ""
    while len(TOK.encode(s, add_special_tokens=False).ids) < n:
        s += rng.choice(alphabet)
    while len(TOK.encode(s, add_special_tokens=False).ids) > n:
        s = s[:-1]
    assert len(TOK.encode(s, add_special_tokens=False).ids) == n, (n, s)
    return s


def build(case):
    d, md = fresh_case_dir(Opts.cases_dir, case["name"])
    kw = dict(case["cfg"])
    kw.setdefault("hidden_act", "silu")
    model = random_qwen2(kw, case["seed"], case.get("scale", 0.2))
    if case.get("eos_bias") is not None:  # make some token(s) likely: boost their lm_head rows
        with torch.no_grad():
            for t, b in case["eos_bias"].items():
                model.lm_head.weight[int(t)] *= b
    model = to_dtype(model, case.get("dtype", "f32"))
    model.save_pretrained(md)
    if Opts.word:
        word_tokenizer(kw["vocab_size"], os.path.join(md, "tokenizer.json"))
    else:
        shutil.copy(Opts.tokj, os.path.join(md, "tokenizer.json"))
    gp = os.path.join(md, "generation_config.json")
    if case.get("no_genconfig") and os.path.exists(gp):
        os.remove(gp)
    if case.get("gen_edit"):
        g = json.load(open(gp))
        g.update(case["gen_edit"])
        json.dump(g, open(gp, "w"), indent=2)
    if case.get("cfg_edit"):
        edit_config_json(md, case["cfg_edit"])
    return d, md


def eos_ids(path):
    """eos_token_id of a config file (a number or a list), as a list."""
    if not os.path.exists(path):
        return []
    e = json.load(open(path)).get("eos_token_id")
    if isinstance(e, int):
        return [e]
    if isinstance(e, list):
        return [x for x in e if isinstance(x, int)]
    return []


def engine_stop_ids(md):
    """The engine's stop ids: 397, 399 and the eos ids of config.json and generation_config.json."""
    ids = list(TOKENIZER_STOPS) + eos_ids(os.path.join(md, "config.json")) \
        + eos_ids(os.path.join(md, "generation_config.json"))
    return sorted(set(ids))


def run_engine(md, prompt, n, extra=()):
    cmd = [str(Opts.engine), "generate", "--model", md, "--prompt", prompt, "--raw", "--temperature", "0",
           "--max-new-tokens", str(n), *(() if "--device" in extra else ("--device", "cpu")), *extra]
    r = subprocess.run(cmd, capture_output=True, timeout=600)
    out = r.stdout.decode("utf-8", "surrogateescape")
    if out.endswith("\n"):
        out = out[:-1]
    err = r.stderr.decode("utf-8", "replace")
    m = re.search(r"\[(\d+) tokens, stop: (\w+)\]", err)
    return cmd, r.returncode, out, err, (int(m.group(1)) if m else None), (m.group(2) if m else None)


_hf_cache = {}


def hf_model(md):
    if md not in _hf_cache:
        _hf_cache.clear()
        _hf_cache[md] = hf_qwen2(md)
    return _hf_cache[md]


def hf_generate(md, ids, n, eos, use_model_gencfg=False):
    """Greedy tokens and the top-2 logit margin at each step. eos: the engine's stop ids."""
    m = hf_model(md)
    inp = torch.tensor([ids], dtype=torch.int64)
    with torch.no_grad():
        if use_model_gencfg:  # the checkpoint's generation_config.json, with the engine's stop ids
            o = m.generate(inp, do_sample=False, max_new_tokens=n, eos_token_id=eos, pad_token_id=eos[0],
                           return_dict_in_generate=True, output_logits=True)
        else:
            gc = GenerationConfig(do_sample=False, max_new_tokens=n, eos_token_id=eos, pad_token_id=eos[0],
                                  bos_token_id=None)
            o = m.generate(inp, generation_config=gc, return_dict_in_generate=True, output_logits=True)
    toks = o.sequences[0, len(ids):].tolist()
    margins = []
    for lg in o.logits:
        t2 = torch.topk(lg[0].float(), 2).values
        margins.append((t2[0] - t2[1]).item())
    return toks, margins


def decode_body(toks, stops):
    body = [t for t in toks if t not in stops]
    return TOK.decode(body, skip_special_tokens=True)


def first_diff_tok(hf_toks, stops, eng_text):
    """Smallest k with decode(hf[:k+1]) not a prefix of the engine text (approximate token position)."""
    for k in range(len(hf_toks)):
        s = decode_body(hf_toks[:k + 1], stops)
        if not eng_text.startswith(s.rstrip("\ufffd")):
            return k
    return len(hf_toks)


def variants():
    v = [("cpu", [])]
    if Opts.emu != "off" and Opts.emu_available is not False:
        v += [("emu_f32", ["--device", "emu", "--precision", "f32"]),
              ("emu_bf16", ["--device", "emu", "--precision", "bf16"])]
    return v


def expects_refusal(case, ri):
    r = case.get("refuse", False)
    return r is True or (isinstance(r, (set, list, tuple)) and ri in r)


def run_case(case):
    res = {"name": case["name"], "desc": case.get("desc", ""), "runs": []}
    d, md = build(case)
    stops = engine_stop_ids(md)
    res["stops"] = stops
    for ri, run in enumerate(case["runs"]):
        prompt, n = run[0], run[1]
        ids = TOK.encode(prompt, add_special_tokens=False).ids
        if Opts.word:
            prompt = word_text(ids)
        rr0 = {"prompt_len": len(ids), "n": n, "prompt": prompt if len(prompt) < 40 else prompt[:37] + "..."}
        hf_err = None
        try:
            hf_toks, margins = hf_generate(md, ids, n, stops, case.get("hf_model_gencfg", False))
        except Exception as e:  # noqa: BLE001 - transformers' failure is a result
            hf_toks, margins = None, None
            hf_err = repr(e)[:300]
        for vname, vextra in variants():
            rr = dict(rr0, variant=vname)
            if hf_toks is None:
                rr["hf_err"] = hf_err
            compare(rr, d, md, prompt, n, list(case.get("extra", ())) + vextra, hf_toks, margins, stops, f"{ri}{vname}")
            if rr.get("emu_missing"):
                Opts.emu_available = False
                break
            if vname != "cpu":
                Opts.emu_available = True
            judge(rr, case, ri)
            res["runs"].append(rr)
    return res


def compare(rr, d, md, prompt, n, extra, hf_toks, margins, stops, tag):
    cmd, rc, out, err, cnt, stop = run_engine(md, prompt, n, extra)
    write_engine_log(os.path.join(d, f"engine{tag}.log"), " ".join(repr(c) if " " in c else c for c in cmd), rc, out, err)
    if rc != 0 and EMU_MISSING in err:
        rr["emu_missing"] = True
        return
    rr["cmd"] = " ".join("'" + c + "'" if (" " in c or not c) else c for c in cmd)
    rr["rc"] = rc
    rr["hf_toks"] = hf_toks
    if rc != 0:
        rr["engine_err"] = err.strip().splitlines()[-1][:300] if err.strip() else ""
        rr["verdict"] = "PANIC" if "panicked" in err else "refused"
    elif hf_toks is None:
        rr["verdict"] = "engine ok, HF error"
    else:
        hf_text = decode_body(hf_toks, stops)
        rr["engine_count"], rr["engine_stop"] = cnt, stop
        rr["hf_count"] = len(hf_toks)
        rr["hf_stop"] = "StopToken" if hf_toks and hf_toks[-1] in stops else "MaxTokens"
        rr["min_margin"] = min(margins) if margins else None
        if Opts.word:
            eng = parse_words(out)
            rr["engine_toks"] = eng
            hf_body = [t for t in hf_toks if t not in stops]
            ok = eng == hf_body and cnt == len(hf_toks) and rr["hf_stop"] == stop
            k = next((i for i, (a, b) in enumerate(zip(eng, hf_body)) if a != b), min(len(eng), len(hf_body)))
        else:
            ok = hf_text == out and cnt == len(hf_toks) and rr["hf_stop"] == stop
        if ok:
            rr["verdict"] = "match"
        else:
            if not Opts.word:
                k = first_diff_tok(hf_toks, stops, out)
            rr["verdict"] = f"MISMATCH@{k}"
            rr["diff_margin"] = margins[k] if k < len(margins) else None
            rr["engine_text"], rr["hf_text"] = out, hf_text
            if rr["diff_margin"] is not None and rr["diff_margin"] < TIE_MARGIN:
                rr["verdict"] += " (tie?)"


def judge(rr, case, ri):
    v = rr["verdict"]
    refuse = expects_refusal(case, ri)
    m = rr.get("diff_margin")
    if v == "PANIC":
        st, why = "FAIL", "engine panicked"
    elif v == "refused":
        st, why = ("PASS", "refused as expected") if refuse else ("FAIL", "unexpected refusal")
    elif v == "engine ok, HF error":
        st, why = "NOTE", "no HF reference" + ("; a refusal was expected" if refuse else "")
    elif v == "match":
        st, why = ("NOTE", "ran (and matched) where a refusal was expected") if refuse else ("PASS", "")
        if case.get("known") and not refuse:
            why = "the known difference did not show"
    elif case.get("known"):
        st, why = "KNOWN", case["known"]
    elif m is not None and m < TIE_MARGIN:
        st, why = "NOTE", f"first difference at a tie (margin {m:.2g})"
    elif rr["variant"] == "emu_bf16" and m is not None and m <= Opts.bf16_margin:
        st, why = "DRIFT", f"bf16 near-tie (margin {m:.3g})"
    else:
        st, why = "FAIL", "different tokens, count or stop" + (f" (margin {m:.3g})" if m is not None else "")
    rr["status"], rr["why"] = st, why


def C(name, seed, cfg, **kw):
    return dict(name=name, seed=seed, cfg=cfg, **kw)


def named_cases():
    """The hand-written cases (built on call: the prompts need the tokenizer)."""
    P1 = "a"
    PSHORT = "Hello world"
    PLONG = text_of_len(100, 7)
    PMID = text_of_len(30, 8)
    cs = [
        C("base_gqa3", 1, B()),
        C("mha_r1", 2, B(num_attention_heads=6, num_key_value_heads=6)),
        C("gqa_r2_hd8", 3, B(hidden_size=32, num_attention_heads=4, num_key_value_heads=2)),
        C("gqa_r4_hd6", 4, B(hidden_size=48, num_attention_heads=8, num_key_value_heads=2, num_hidden_layers=3)),
        C("gqa_r7_hd8", 5, B(hidden_size=56, num_attention_heads=7, num_key_value_heads=1, num_hidden_layers=1)),
        C("gqa_r7_kv2_hd2", 6, B(hidden_size=28, num_attention_heads=14, num_key_value_heads=2, num_hidden_layers=4)),
        C("hd10_kv5_tied", 7, B(hidden_size=50, num_attention_heads=5, num_key_value_heads=5, tie_word_embeddings=True)),
        C("hd12_4layers", 8, B(hidden_size=36, num_attention_heads=3, num_key_value_heads=1, num_hidden_layers=4)),
        C("theta10", 9, B(rope_parameters={"rope_type": "default", "rope_theta": 10.0})),
        C("theta1e6_tied", 10, B(tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
        C("rope_linear", 11, B(rope_parameters={"rope_type": "linear", "factor": 3.0, "rope_theta": 100.0})),
        C("rope_yarn", 12, B(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 100.0,
                                              "original_max_position_embeddings": 32})),
        C("rope_yarn_mscale", 13, B(rope_parameters={"rope_type": "yarn", "factor": 8.0, "rope_theta": 50.0,
                                                     "original_max_position_embeddings": 16, "mscale": 0.8,
                                                     "mscale_all_dim": 0.5, "beta_fast": 8, "beta_slow": 2})),
        C("rope_llama3", 14, B(rope_parameters={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0, "original_max_position_embeddings": 32,
                                                "rope_theta": 30.0})),
        C("bf16", 15, B(), dtype="bf16"),
        C("f16_tied", 16, B(tie_word_embeddings=True), dtype="f16"),
        C("vocab520_untied", 17, B(vocab_size=520), desc="ids >= 400 have no token: invisible in text"),
        C("vocab401_bf16_gqa4", 18, B(vocab_size=401, hidden_size=64, num_attention_heads=8, num_key_value_heads=2), dtype="bf16"),
        # sliding window
        C("swa_fits", 20, B(use_sliding_window=True, sliding_window=170, max_window_layers=1),
          desc="window 170 > 100+60"),
        C("swa_exact", 21, B(use_sliding_window=True, sliding_window=40, max_window_layers=0),
          runs=[(text_of_len(20, 1), 21), (text_of_len(20, 1), 20), (text_of_len(39, 2), 2)],
          desc="window 40: prompt 20 + 21 new (last fed token at kv_len 40); 20+20; 39+2"),
        C("swa_passes", 22, B(use_sliding_window=True, sliding_window=24, max_window_layers=0),
          runs=[(text_of_len(20, 1), 10), (text_of_len(30, 3), 5)], refuse=True,
          desc="window 24: generation passes the window (HF slides; engine should refuse)"),
        C("swa_passes_tied_early", 23, B(use_sliding_window=True, sliding_window=24, max_window_layers=1, num_hidden_layers=2),
          runs=[(text_of_len(20, 1), 30)], refuse=True),
        # max_position_embeddings limits
        C("maxpos_limit", 24, B(max_position_embeddings=32),
          runs=[(text_of_len(12, 4), 20), (text_of_len(12, 4), 21), (text_of_len(32, 5), 1), (text_of_len(31, 5), 1)],
          refuse={1, 2}, desc="prompt+N == 32 (ok), 33 (refused), prompt 32 + 1 (refused), 31 + 1 (ok)"),
        C("maxpos_yarn_limit", 25, B(max_position_embeddings=40, rope_parameters={"rope_type": "yarn", "factor": 4.0,
                                                                                   "rope_theta": 100.0, "original_max_position_embeddings": 10}),
          runs=[(text_of_len(10, 4), 30)]),
        # eos handling
        C("eos_early_bias", 26, B(eos_token_id=399), eos_bias={399: 2.5},
          runs=[(P1, 40), (PSHORT, 40), (PLONG, 40), (PMID, 40)], desc="lm_head row of 399 scaled 2.5x"),
        C("eos_list_custom", 27, B(eos_token_id=[65, 66, 399]), eos_bias={65: 1.8, 66: 1.8},
          runs=[(P1, 40), (PSHORT, 40), (PLONG, 40)], desc="eos list [65,66,399], rows boosted"),
        C("eos_custom_no_genconfig", 28, B(eos_token_id=70), eos_bias={70: 2.0}, no_genconfig=True,
          runs=[(P1, 40), (PSHORT, 40), (PLONG, 40)]),
        C("eos_null_no_genconfig", 29, B(eos_token_id=None, bos_token_id=None), no_genconfig=True,
          runs=[(P1, 40), (PLONG, 60)]),
        # generation_config.json differs from config.json (engine ignores generation_config.json)
        C("gencfg_eos_differs", 30, B(eos_token_id=399), eos_bias={70: 2.0}, gen_edit={"eos_token_id": [70, 399]},
          hf_model_gencfg=True, runs=[(P1, 40), (PSHORT, 40)],
          desc="generation_config.json eos [70,399], config.json 399: both engines stop on 70"),
        C("gencfg_reppen", 31, B(), gen_edit={"repetition_penalty": 1.3}, hf_model_gencfg=True,
          runs=[(PSHORT, 40), (PLONG, 40)],
          known="generation_config.json's repetition_penalty is not applied by the engine (README, `generate`)",
          desc="generation_config.json repetition_penalty 1.3 (HF applies it in greedy)"),
        # prompts with special tokens
        C("prompt_specials", 32, B(), runs=[("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", 30),
                                            ("<|endoftext|>", 10)]),
        # random-ish batch
        C("deep4_gqa2_tied_bf16", 33, B(hidden_size=40, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=4,
                                        tie_word_embeddings=True, rope_parameters={"rope_type": "linear", "factor": 0.5,
                                                                                   "rope_theta": 1000.0}), dtype="bf16"),
        C("tok_stop_not_eos", 35, B(eos_token_id=70), eos_bias={397: 2.5, 399: 2.5}, hf_model_gencfg=True,
          runs=[(P1, 40), (PSHORT, 40), (PLONG, 40)],
          desc="config+generation_config eos 70 only, 397/399 boosted; the engine also stops on 397/399 (HF is given them)"),
        C("eos_only_in_gencfg", 36, B(eos_token_id=None), eos_bias={70: 2.0}, gen_edit={"eos_token_id": 70}, hf_model_gencfg=True,
          runs=[(P1, 40), (PSHORT, 40)], desc="config.json eos null, generation_config.json eos 70"),
        C("long_gen", 37, B(max_position_embeddings=1024, hidden_size=32, num_attention_heads=4, num_key_value_heads=1),
          runs=[(P1, 250), (text_of_len(300, 9), 200), (text_of_len(129, 10), 130), (text_of_len(64, 11), 65)]),
        C("chatml_like", 38, B(), runs=[("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                                         "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", 50)]),
        C("swa_eos_before_window", 39, B(use_sliding_window=True, sliding_window=24, max_window_layers=0), eos_bias={399: 3.0},
          runs=[(text_of_len(20, s), 30) for s in range(12, 18)], refuse=True,
          desc="window 24, prompt 20 + max 30 new: refused up front (prompt + max_new_tokens > window)"),
        C("eps_big_small_scale", 34, B(rms_norm_eps=0.1), scale=0.05, desc="small weights: near-ties likely"),
    ]
    std = [(P1, 20), (PSHORT, 40), (PLONG, 60), (PMID, 1)]
    for c in cs:
        c.setdefault("runs", std)
    return cs


def random_case(i):
    rng = random.Random(2000 + i)
    kv = rng.choice([1, 2, 3])
    ratio = rng.choice([1, 2, 4, 7])
    heads = kv * ratio
    hd = rng.choice([2, 4, 6, 8, 10, 16])
    rope = rng.choice(["default", "linear", "yarn", "llama3"])
    rp = random_rope_factors(rng, {"rope_type": rope, "rope_theta": rng.choice([10.0, 1e3, 1e4, 1e6])}, [8, 16, 64])
    cfg = B(hidden_size=heads * hd, num_attention_heads=heads, num_key_value_heads=kv,
            intermediate_size=rng.choice([17, 64, 101]), num_hidden_layers=rng.randint(1, 4),
            tie_word_embeddings=rng.random() < 0.5, vocab_size=rng.choice([400, 400, 417]),
            rope_parameters=rp)
    return C(f"rand{i:02d}", 3000 + i, cfg, dtype=rng.choice(["f32", "bf16", "f16"]),
             runs=[(text_of_len(rng.choice([1, 3, 17, 60, 100]), i), rng.choice([1, 5, 33, 60])) for _ in range(3)],
             desc=f"kv{kv} r{ratio} hd{hd} {rope}")




def all_cases(nrand):
    return named_cases() + [random_case(i) for i in range(nrand)]


def sampling_checks():
    """--temperature > 0 with --seed: same seed -> same tokens (cpu twice, emu f32), top_k 1 == greedy."""
    saved = Opts.word
    Opts.word = True  # the checks read token ids from the word tokenizer's text
    case = next(c for c in named_cases() if c["name"] == "base_gqa3")
    _, md = build(case)
    Opts.word = saved
    prompt = word_text(TOK.encode("Hello world", add_special_tokens=False).ids)

    def go(*extra):
        cmd = [str(Opts.engine), "generate", "--model", md, "--prompt", prompt, "--raw", "--max-new-tokens", "40", *extra]
        r = subprocess.run(cmd, capture_output=True, text=True)
        return (parse_words(r.stdout) if r.returncode == 0 else r.stderr.strip()), " ".join(
            "'" + c + "'" if " " in c else c for c in cmd)
    emu = Opts.emu != "off"
    rows = []
    greedy, _ = go("--temperature", "0", "--device", "cpu")
    for t, seed in ((0.8, 1), (1.0, 7), (1.5, 123456789)):
        a, cmd = go("--temperature", str(t), "--seed", str(seed), "--device", "cpu")
        b, _ = go("--temperature", str(t), "--seed", str(seed), "--device", "cpu")
        e = None
        if emu:
            e, _ = go("--temperature", str(t), "--seed", str(seed), "--device", "emu", "--precision", "f32")
            if isinstance(e, str) and EMU_MISSING in e:
                if Opts.emu == "on":
                    return emu_required_error(Opts.engine)
                emu, e = False, None
        o, _ = go("--temperature", str(t), "--seed", str(seed + 1), "--device", "cpu")
        rows.append((f"T={t} seed={seed}", a == b, (a == e) if e is not None else None, a != o, a != greedy, cmd))
    k1, cmd = go("--temperature", "1", "--top-k", "1", "--seed", "5", "--device", "cpu")
    rows.append(("top_k=1 == greedy", k1 == greedy, None, None, None, cmd))
    p0, cmd = go("--temperature", "1", "--top-p", "0.000001", "--seed", "5", "--device", "cpu")
    rows.append(("top_p=1e-6 == greedy", p0 == greedy, None, None, None, cmd))
    tt, cmd = go("--temperature", "1e-6", "--seed", "5", "--device", "cpu")
    rows.append(("T=1e-6 == greedy", tt == greedy, None, None, None, cmd))
    failed = 0
    for r in rows:
        st = "PASS" if r[1] else "FAIL"
        failed += not r[1]
        print(f"{st:4s} {r[0]:24s} same_twice/eq={r[1]} cpu==emu_f32={r[2]} other_seed_differs={r[3]} "
              f"differs_from_greedy={r[4]}")
        if not r[1]:
            print(f"     {r[5]}")
    print(f"\nsummary: {len(rows)} sampling checks, {failed} FAIL")
    return 1 if failed else 0


def parse_args(argv):
    env_emu = os.environ.get("PROBE_EMU", os.environ.get("EMU"))
    ap = argparse.ArgumentParser(
        description="Compare `mmr1-fast generate` (greedy) with transformers' generate on tiny random Qwen2 checkpoints.",
        epilog="Emulator default: $PROBE_EMU (or $EMU) =1 or unset: run emu_f32 and emu_bf16 when the engine was "
               "built with --features emu (detected on the first run); =0: CPU only. "
               "Exit status: 0 no FAIL, 1 some run FAILed, 2 usage or setup error.")
    add_filter_arg(ap)
    add_engine_work_args(ap, "results")
    ap.add_argument("--tokenizer", type=Path, default=REPO / "tests" / "fixtures" / "tokenizer.json",
                    help="the byte-level BPE tokenizer.json the prompts are made with (default: REPO/tests/fixtures/tokenizer.json)")
    ap.add_argument("--tokmode", choices=["word", "bpe"], default=os.environ.get("TOKMODE", "word"),
                    help="tokenizer written into each model: word (exact token ids; default, or $TOKMODE) or bpe")
    ap.add_argument("--nrand", type=int, default=int(os.environ.get("PROBE_NRAND", os.environ.get("NRAND", "12"))),
                    help="number of random cases rand00.. (default: $PROBE_NRAND, $NRAND or 12)")
    add_emu_args(ap, env_emu, "also run emu_f32 and emu_bf16; an engine built without --features emu is then an error")
    ap.add_argument("--bf16-margin", type=float, default=BF16_MARGIN,
                    help=f"emu_bf16 differences whose first token has an HF top-2 margin up to this are DRIFT, "
                         f"not FAIL (default {BF16_MARGIN:g})")
    ap.add_argument("--sampling", action="store_true",
                    help="run the seeded-sampling checks (on base_gqa3) instead of the greedy comparison")
    ap.add_argument("--list", action="store_true", help="list the cases (after filtering) and exit")
    return ap.parse_args(argv)


def main(argv=None):
    global TOK
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if _IMPORT_ERROR is not None:
        return import_error(_IMPORT_ERROR)
    if not args.tokenizer.is_file():
        print(f"error: tokenizer {args.tokenizer} not found (--tokenizer)", file=sys.stderr)
        return 2
    TOK = Tokenizer.from_file(str(args.tokenizer))
    Opts.tokj, Opts.word = str(args.tokenizer), args.tokmode == "word"
    cases = select_cases(all_cases(args.nrand), args.filters)
    if args.list:
        for c in cases:
            print(f"{c['name']:24s} runs {[(len(TOK.encode(p, add_special_tokens=False).ids), n) for p, n in c['runs']]} "
                  f"{'[refusal expected] ' if c.get('refuse') else ''}{'[known] ' if c.get('known') else ''}{c.get('desc', '')}")
        return 0
    engine = resolve_engine(args.engine)
    if engine is None:
        return 2
    if not cases and not args.sampling:
        print("error: no case matches the filters (see --list)", file=sys.stderr)
        return 2
    work = work_dir(args.work, "mmr1-probe-generate-")
    torch.set_num_threads(2)
    Opts.engine, Opts.emu, Opts.bf16_margin = engine, args.emu, args.bf16_margin
    Opts.cases_dir = str(work / "cases")
    os.makedirs(Opts.cases_dir, exist_ok=True)
    print(f"engine: {engine}\nwork directory: {work}", flush=True)
    if args.sampling:
        return sampling_checks()
    print(f"cases: {len(cases)} (tokenizer mode {args.tokmode})", flush=True)

    rpath = work / ("results_word.json" if Opts.word else "results.json")
    results = json.load(open(rpath)) if rpath.exists() else {}
    counts, bad = {}, []
    for c in cases:
        try:
            r = run_case(c)
        except Exception:  # noqa: BLE001 - a broken case is a failure of the run
            r = {"name": c["name"], "runs": [], "err": traceback.format_exc()[-800:]}
            print(r["err"], file=sys.stderr)
            print(f"FAIL  {c['name']:24s} PROBE ERROR", flush=True)
            counts[("all", "FAIL")] = counts.get(("all", "FAIL"), 0) + 1
            bad.append(f"FAIL {c['name']}: probe error")
        r["cfg"] = c["cfg"]
        r["dtype"] = c.get("dtype", "f32")
        results[c["name"]] = r
        json.dump(results, open(rpath, "w"), indent=1, default=str)
        for rr in r["runs"]:
            if rr["verdict"] == "match":
                extra = f"{rr['engine_count']} tok {rr['engine_stop']} minmargin={rr['min_margin']:.3g}" \
                    if rr.get("min_margin") is not None else f"{rr['engine_count']} tok {rr['engine_stop']}"
            elif rr.get("engine_err") is not None:
                extra = rr["engine_err"][:160]
            else:
                extra = (f"eng {rr.get('engine_count')} {rr.get('engine_stop')} vs hf {rr.get('hf_count')} {rr.get('hf_stop')}"
                         f" margin@diff={rr.get('diff_margin')}")
                if rr.get("hf_err"):
                    extra += f" HF: {rr['hf_err'][:120]}"
            print(f"{rr['status']:5s} {c['name']:24s} {rr['variant']:8s} p{rr['prompt_len']:<3d} n{rr['n']:<3d} "
                  f"{rr['verdict']:18s} {extra}", flush=True)
            key = (rr["variant"], rr["status"])
            counts[key] = counts.get(key, 0) + 1
            if rr["status"] != "PASS" or rr.get("why"):
                bad.append(f"{rr['status']} {c['name']} {rr['variant']} p{rr['prompt_len']} n{rr['n']}: "
                           f"{rr['verdict']}{'; ' + rr['why'] if rr.get('why') else ''}")
        if Opts.emu == "on" and Opts.emu_available is False:
            return emu_required_error(engine)
    if Opts.emu == "auto" and Opts.emu_available is False:
        print(f"note: {engine} was built without --features emu: emulator variants skipped")
    print(f"\nsummary ({len(cases)} cases; results in {rpath}):")
    for var in sorted({k[0] for k in counts}):
        print(f"  {var:8s} " + ", ".join(f"{counts[(var, s)]} {s}" for s in ("PASS", "KNOWN", "DRIFT", "NOTE", "FAIL")
                                         if (var, s) in counts))
    for line in bad:
        if not line.startswith("PASS"):
            print("  " + line)
    return 1 if any(k[1] == "FAIL" for k in counts) else 0


if __name__ == "__main__":
    sys.exit(main())
