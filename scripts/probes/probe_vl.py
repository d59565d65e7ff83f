#!/usr/bin/env python3
"""Differential probe: `mmr1-fast logprobs --image` against transformers on tiny random Qwen2.5-VL
checkpoints.

What it compares
  Each case builds a Qwen2_5_VLForConditionalGeneration with random weights (text and vision
  sizes, M-RoPE sections, window sizes, full-attention blocks, patch/merge/temporal sizes, tied
  or not, f32/bf16, nested or flat config.json layouts, preprocessor min/max pixels and mean/std
  spellings), writes images with Pillow (PNG, JPEG; RGB, L, RGBA, LA, palette with and without
  transparency, 16-bit grayscale, CMYK, 1-bit; sizes that need up- and downscaling), and runs
  `mmr1-fast logprobs --device cpu --image ...` on sequences holding image placeholders. The
  reference is transformers' Qwen2VLImageProcessorPil + the model's f32 eager forward on the
  expanded sequences. Compared per sequence: relative L2 of the log-probs and of the last
  position's logits.

  Every sequence is held to --tol (1e-4) except the one measured, documented difference
  (docs/vl-cli.md), reported as KNOWN, which does not fail the run:
    jpeg   a sequence using a JPEG file: the engine decodes JPEG with the `image` crate, not
           libjpeg (log-probs 3e-4..3.5e-3, last logits up to 3e-2 relative L2); still held to
           the sanity bound --jpeg-tol (0.1)
  16-bit PNGs were a second one until the engine read them as Pillow does (the high byte,
  grayscale clipped to 255); they are held to --tol now. --strict holds JPEG sequences to
  --tol too. The file kind is read from the file itself.
  Four more cases expect a refusal (vision head_dim 2, preprocessor patch_size 16 against a
  tower of 14, resample 2, window_size 60).

  Exit status: 0 when no case FAILs, 1 when one does (a sequence beyond its bound, a shape
  difference, an unexpected refusal, a panic, a probe error), 2 on a usage or setup error.

Python packages (versions of scripts/requirements-golden.txt, plus Pillow):
  torch, transformers==5.24.0, safetensors, numpy, pillow

How to run (paths default relative to the repository root):
  cargo build --release
  python scripts/probes/probe_vl.py                     # all 51 cases
  python scripts/probes/probe_vl.py fixture_like rand101   # some cases, by exact name
  python scripts/probes/probe_vl.py --list
  python scripts/probes/probe_vl.py --prenorm [NAME ...]   # images first decoded, converted and
      resized by PIL as transformers does and saved as PNG: tests the model alone

What it prints
  One line per case: PASS/KNOWN/NOTE/FAIL, the name, the worst log-prob / last-logit relative L2
  over the sequences held to --tol and over the known-difference ones, and a one-line summary of
  the case's config; then a summary. Each case leaves WORK/cases/NAME/ (model/, img*, seqs.json,
  cmd.sh, lp.safetensors, hf.safetensors, case.json); WORK/results.jsonl gets one row per case.
"""
import argparse
import copy
import json
import os
import random
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # probe_common.py, from any working directory
from probe_common import add_engine_work_args, import_error, rel_l2, resolve_engine, work_dir  # noqa: E402

try:
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import load_file, save_file
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    _IMPORT_ERROR = None
except ImportError as e:  # reported after argument parsing, so that --help works without them
    _IMPORT_ERROR = e

TOL = 1e-4        # log-probs and last logits, relative L2, every sequence without a known difference
JPEG_TOL = 0.1    # sanity bound for sequences using a JPEG (measured up to 3.7e-3 / 2.9e-2)

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


# ----------------------------------------------------------------------------------- images
def smooth_noise(rng, h, w, c):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.zeros((h, w, c))
    for ch in range(c):
        a, b, p = rng.uniform(0.02, 0.3, 3)
        out[..., ch] = 127 + 90 * np.sin(a * yy + b * xx + p * 7) + rng.normal(0, 30, (h, w))
    return np.clip(out, 0, 255).astype(np.uint8)


def make_image(path, h, w, mode, seed, **save_kw):
    """mode: RGB, L, RGBA, LA, P, P_t (palette with transparency), I16, CMYK, 1."""
    rng = np.random.default_rng(seed)
    if mode in ("RGB", "P", "P_t", "CMYK", "1"):
        img = Image.fromarray(smooth_noise(rng, h, w, 3), mode="RGB")
        if mode == "P":
            img = img.quantize(64)
        elif mode == "P_t":
            img = img.quantize(64)
            img.info["transparency"] = 3
        elif mode == "CMYK":
            img = img.convert("CMYK")
        elif mode == "1":
            img = img.convert("1")
    elif mode == "L":
        img = Image.fromarray(smooth_noise(rng, h, w, 1)[..., 0], mode="L")
    elif mode == "RGBA":
        img = Image.fromarray(smooth_noise(rng, h, w, 4), mode="RGBA")
    elif mode == "LA":
        img = Image.fromarray(smooth_noise(rng, h, w, 2), mode="LA")
    elif mode == "I16":
        a = smooth_noise(rng, h, w, 1)[..., 0].astype(np.uint16) * 257
        img = Image.fromarray(a)
    else:
        raise ValueError(mode)
    if mode == "P_t":
        img.save(path, transparency=3)
    else:
        img.save(path, **save_kw)
    return path


# ----------------------------------------------------------------------------------- model
def build_model(case, mdir):
    t, v = case["text"], case["vision"]
    ids = case["ids"]
    rope = {"type": "mrope", "mrope_section": t["mrope_section"]}
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=t["vocab"], hidden_size=t["hidden"], intermediate_size=t["inter"],
            num_hidden_layers=t["layers"], num_attention_heads=t["heads"],
            num_key_value_heads=t["kv"], rms_norm_eps=t.get("eps", 1e-6),
            max_position_embeddings=4096, rope_scaling=rope, rope_theta=t.get("theta", 10000.0),
            initializer_range=0.2, bos_token_id=0, eos_token_id=1,
        ),
        vision_config=dict(
            depth=v["depth"], hidden_size=v["hidden"], intermediate_size=v["inter"],
            num_heads=v["heads"], out_hidden_size=t["hidden"], patch_size=v["patch"],
            spatial_merge_size=v["merge"], temporal_patch_size=v["temporal"],
            window_size=v["window"], fullatt_block_indexes=v["fullatt"],
            tokens_per_second=v.get("tps", 4), initializer_range=0.2,
        ),
        image_token_id=ids["image"], video_token_id=ids["video"],
        vision_start_token_id=ids["vs"], vision_end_token_id=ids["ve"],
        tie_word_embeddings=t["tie"],
    )
    torch.manual_seed(case["seed"])
    model = Qwen2_5_VLForConditionalGeneration(cfg).float().eval()
    std = case.get("wstd", 0.15)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_q" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(std * torch.randn_like(p))
    if case.get("dtype") == "bf16":
        model = model.to(torch.bfloat16)
    model.save_pretrained(mdir, safe_serialization=True)
    layout = case.get("layout", "nested")
    nested = json.load(open(os.path.join(mdir, "config.json")))
    if layout != "nested":
        text, vision = nested["text_config"], nested["vision_config"]
        flat = {
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": "qwen2_5_vl",
            "torch_dtype": nested.get("dtype", "float32"),
            "image_token_id": nested["image_token_id"],
            "video_token_id": nested["video_token_id"],
            "vision_start_token_id": nested["vision_start_token_id"],
            "vision_end_token_id": nested["vision_end_token_id"],
            "tie_word_embeddings": nested["tie_word_embeddings"],
            "vision_config": {k: v for k, v in vision.items() if k not in ("dtype",)},
        }
        rp = text["rope_parameters"]
        if layout == "flat":
            flat["rope_theta"] = rp["rope_theta"]
            flat["rope_scaling"] = {"type": "mrope", "mrope_section": rp["mrope_section"]}
        elif layout == "flat_rope_type":  # published 3B/7B: rope_type default + type mrope
            flat["rope_theta"] = rp["rope_theta"]
            flat["rope_scaling"] = {"type": "mrope", "rope_type": "default",
                                    "mrope_section": rp["mrope_section"]}
        elif layout == "flat_rope_parameters":
            flat["rope_parameters"] = dict(rp)
        for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "hidden_act",
                  "max_position_embeddings", "bos_token_id", "eos_token_id", "use_sliding_window",
                  "sliding_window", "max_window_layers", "attention_dropout"):
            if k in text:
                flat[k] = text[k]
        json.dump(flat, open(os.path.join(mdir, "config.json"), "w"), indent=2)
    edit = case.get("cfg_edit")
    if edit:  # dotted keys into the written config.json, e.g. {"vision_config.num_heads": 16}
        cj = os.path.join(mdir, "config.json")
        conf = json.load(open(cj))
        for key, val in edit.items():
            *path, last = key.split(".")
            node = conf
            for p in path:
                node = node[p]
            node[last] = val
        json.dump(conf, open(cj, "w"), indent=2)
    # Preprocessor.
    pre = case["pre"]
    proc = Qwen2VLImageProcessorPil(
        min_pixels=pre["min"], max_pixels=pre["max"], patch_size=pre.get("patch", v["patch"]),
        temporal_patch_size=pre.get("temporal", v["temporal"]), merge_size=pre.get("merge", v["merge"]),
        image_mean=pre.get("mean", CLIP_MEAN), image_std=pre.get("std", CLIP_STD))
    proc.save_pretrained(mdir)
    pj = os.path.join(mdir, "preprocessor_config.json")
    pc = json.load(open(pj))
    for k, val in pre.get("json_extra", {}).items():
        pc[k] = val
    for k in pre.get("json_drop", []):
        pc.pop(k, None)
    json.dump(pc, open(pj, "w"), indent=2)
    return model


# ----------------------------------------------------------------------------------- reference
def hf_reference(mdir, case, image_paths, seqs_short):
    ids = case["ids"]
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(mdir, dtype=torch.float32).eval()
    for c in (model.config, model.config.text_config, model.config.vision_config):
        c._attn_implementation = "eager"
    proc = Qwen2VLImageProcessorPil.from_pretrained(mdir)
    merge = model.config.vision_config.spatial_merge_size
    out, expanded = {}, []
    img_iter = iter(image_paths)
    for i, seq in enumerate(seqs_short):
        n_img = sum(1 for x in seq if x == ids["image"])
        paths = [next(img_iter) for _ in range(n_img)]
        pv = grid = None
        if paths:
            imgs = []
            for p in paths:
                im = Image.open(p)
                im.load()
                imgs.append(im)
            r = proc(images=imgs, return_tensors="pt")
            pv, grid = r["pixel_values"].float(), r["image_grid_thw"]
        full = []
        k = 0
        for x in seq:
            if x == ids["image"]:
                n = int(grid[k].prod()) // (merge * merge)
                full += [ids["image"]] * n
                k += 1
            else:
                full.append(x)
        expanded.append(full)
        input_ids = torch.tensor([full])
        mm = (input_ids == ids["image"]).int()
        model.model.rope_deltas = None
        kw = dict(input_ids=input_ids, use_cache=False)
        if paths:
            kw.update(pixel_values=pv, image_grid_thw=grid, mm_token_type_ids=mm)
        with torch.no_grad():
            logits = model(**kw).logits[0].double()
        lp = torch.log_softmax(logits[:-1], -1).gather(1, input_ids[0, 1:, None])[:, 0]
        out[f"logprobs.{i}"] = lp.float().contiguous()
        out[f"last_logits.{i}"] = logits[-1].float().contiguous()
        out[f"grid.{i}"] = grid.contiguous() if grid is not None else torch.zeros(0, 3, dtype=torch.long)
    return out, expanded


# ----------------------------------------------------------------------------------- cases
def base_case(name, seed):
    return {
        "name": name, "seed": seed,
        "text": dict(vocab=300, hidden=64, inter=96, layers=2, heads=4, kv=2,
                     mrope_section=[2, 3, 3], tie=False),
        "vision": dict(depth=3, hidden=32, inter=48, heads=2, patch=14, merge=2, temporal=2,
                       window=56, fullatt=[1]),
        "ids": dict(image=290, video=291, vs=288, ve=289),
        "pre": dict(min=56 * 56, max=28 * 28 * 16),
        "images": [dict(h=50, w=70, mode="RGB", fmt="png")],
        "seqs": [[3, 5, "I", 7, 9]],
    }


def split_sections(half, rng):
    a = rng.randint(0, half)
    b = rng.randint(0, half - a)
    return [a, b, half - a - b]


def random_case(seed):
    rng = random.Random(seed)
    c = base_case(f"rand{seed}", seed)
    heads = rng.choice([1, 2, 4, 6])
    kv = rng.choice([d for d in range(1, heads + 1) if heads % d == 0])
    hd = rng.choice([8, 12, 16, 24])
    while heads * hd > 96:
        hd = rng.choice([8, 12, 16])
        if heads * hd > 96:
            heads, kv = 2, rng.choice([1, 2])
    hidden = heads * hd
    if hidden < 32:
        hd = 32 // heads if (32 // heads) % 2 == 0 else 16
        hidden = heads * hd
    half = hd // 2
    sec = split_sections(half, rng)
    c["text"] = dict(vocab=rng.choice([300, 333, 512]), hidden=hidden,
                     inter=rng.choice([48, 64, 100, 128]), layers=rng.randint(1, 3),
                     heads=heads, kv=kv, mrope_section=sec, tie=rng.random() < 0.5,
                     theta=rng.choice([10000.0, 1000000.0, 500.0]))
    vheads = rng.choice([1, 2, 4])
    vhd = rng.choice([8, 12, 16])
    while vheads * vhd > 64:
        vhd = 8
    patch = rng.choice([14, 16, 8, 14, 7])
    merge = rng.choice([2, 2, 2, 1, 3])
    temporal = rng.choice([2, 2, 1])
    depth = rng.randint(1, 4)
    unit = patch * merge
    window = unit * rng.choice([1, 2, 3, 4])
    fa = rng.choice(["none", "some", "all"])
    full = [] if fa == "none" else (list(range(depth)) if fa == "all"
                                    else sorted(rng.sample(range(depth), rng.randint(1, depth))))
    c["vision"] = dict(depth=depth, hidden=vheads * vhd, inter=rng.choice([24, 40, 64, 80]),
                       heads=vheads, patch=patch, merge=merge, temporal=temporal, window=window,
                       fullatt=full, tps=rng.choice([2, 4, 25]))
    c["ids"] = dict(image=c["text"]["vocab"] - 3, video=c["text"]["vocab"] - 4,
                    vs=c["text"]["vocab"] - 2, ve=c["text"]["vocab"] - 1)
    mn = unit * unit * rng.choice([1, 2, 4])
    mx = unit * unit * rng.choice([4, 9, 16, 30])
    c["pre"] = dict(min=mn, max=max(mn, mx))
    if rng.random() < 0.3:
        c["pre"]["mean"] = [0.5, 0.5, 0.5]
        c["pre"]["std"] = [0.5, 0.5, 0.5]
    c["layout"] = rng.choice(["nested", "flat", "flat_rope_type"])
    c["dtype"] = rng.choice(["f32", "f32", "bf16"])
    sizes = [(37, 91), (200, 13), (64, 64), (10, 10), (150, 230), (91, 37), (28, 28), (57, 113)]
    modes = ["RGB", "RGB", "L", "RGBA"]
    nimg = rng.randint(0, 4)
    c["images"] = []
    for k in range(nimg):
        h, w = rng.choice(sizes)
        mode, fmt = rng.choice(modes), rng.choice(["png", "jpg"])
        if fmt == "jpg" and mode == "RGBA":
            mode = "RGB"  # JPEG has no alpha
        c["images"].append(dict(h=h, w=w, mode=mode, fmt=fmt))
    # spread images across 1-3 sequences, plus maybe a text-only one
    nseq = rng.randint(1, 3)
    seqs = [[] for _ in range(nseq)]
    for s in seqs:
        s += [rng.randint(2, 250) for _ in range(rng.randint(1, 5))]
    for k in range(nimg):
        s = seqs[rng.randrange(nseq)]
        s += ["I"] + [rng.randint(2, 250) for _ in range(rng.randint(0, 3))]
    if rng.random() < 0.5:
        seqs.append([rng.randint(2, 250) for _ in range(rng.randint(2, 8))])
    for s in seqs:
        if len(s) < 2:
            s.append(rng.randint(2, 250))
    c["seqs"] = seqs
    return c


def edge_cases():
    cs = []
    c = base_case("fixture_like", 1)
    c["images"] = [dict(h=50, w=70, mode="RGB", fmt="png"), dict(h=160, w=200, mode="RGB", fmt="png")]
    c["seqs"] = [[3, 57, 101, "I", 12, 250, 7, "I", 33, 200, 5]]
    cs.append(c)

    c = base_case("text_only_vl", 2)
    c["images"] = []
    c["seqs"] = [[3, 5, 7, 9, 11, 13], [100, 200]]
    cs.append(c)

    c = base_case("modes_formats", 3)
    c["images"] = [dict(h=37, w=91, mode="RGB", fmt="jpg"), dict(h=200, w=13, mode="L", fmt="png"),
                   dict(h=64, w=64, mode="RGBA", fmt="png"), dict(h=10, w=10, mode="RGB", fmt="png"),
                   dict(h=300, w=260, mode="RGB", fmt="jpg")]
    c["seqs"] = [[3, "I", 5, "I"], [9, 8, "I", 4], [6, 6, 6], [7, "I", "I", 2]]
    cs.append(c)

    c = base_case("singles", 19)
    c["images"] = [dict(h=37, w=91, mode="RGB", fmt="jpg"), dict(from_=0, h=0, w=0, mode="", fmt="png"),
                   dict(h=200, w=13, mode="L", fmt="png"), dict(h=10, w=10, mode="RGB", fmt="png"),
                   dict(h=300, w=260, mode="RGB", fmt="jpg"), dict(from_=4, h=0, w=0, mode="", fmt="png"),
                   dict(h=64, w=64, mode="RGB", fmt="jpg"), dict(from_=6, h=0, w=0, mode="", fmt="png")]
    for im in c["images"]:
        if "from_" in im:
            im["from"] = im.pop("from_")
    c["seqs"] = [[3, "I", 5]] * len(c["images"])
    cs.append(c)

    c = base_case("exotic_modes", 4)
    c["images"] = [dict(h=40, w=60, mode="P", fmt="png"), dict(h=45, w=33, mode="P_t", fmt="png"),
                   dict(h=50, w=50, mode="LA", fmt="png"), dict(h=30, w=70, mode="I16", fmt="png"),
                   dict(h=60, w=40, mode="L", fmt="jpg"), dict(h=33, w=66, mode="CMYK", fmt="jpg"),
                   dict(h=48, w=48, mode="1", fmt="png")]
    c["seqs"] = [[3, "I", 5], [3, "I", 5], [3, "I", 5], [3, "I", 5], [3, "I", 5], [3, "I", 5], [3, "I", 5]]
    cs.append(c)

    c = base_case("jpeg_variants", 5)
    c["images"] = [dict(h=77, w=101, mode="RGB", fmt="jpg", kw=dict(quality=95, subsampling=0)),
                   dict(h=77, w=101, mode="RGB", fmt="jpg", kw=dict(quality=50, subsampling=1)),
                   dict(h=77, w=101, mode="RGB", fmt="jpg", kw=dict(quality=75, subsampling=2)),
                   dict(h=77, w=101, mode="RGB", fmt="jpg", kw=dict(quality=85, progressive=True)),
                   dict(h=13, w=201, mode="RGB", fmt="jpg", kw=dict(quality=90))]
    c["seqs"] = [[3, "I", 5]] * 5
    cs.append(c)

    c = base_case("image_at_edges", 6)
    c["images"] = [dict(h=56, w=56, mode="RGB", fmt="png"), dict(h=84, w=56, mode="RGB", fmt="png")]
    c["seqs"] = [["I", 5, 6], [4, "I"]]  # no vision_start/end; image first / last
    c["bare"] = True
    cs.append(c)

    c = base_case("merge1_temporal1", 7)
    c["vision"] = dict(depth=2, hidden=32, inter=40, heads=2, patch=14, merge=1, temporal=1,
                       window=28, fullatt=[], tps=2)
    c["pre"] = dict(min=14 * 14 * 4, max=14 * 14 * 30)
    c["images"] = [dict(h=37, w=91, mode="RGB", fmt="png"), dict(h=29, w=29, mode="RGB", fmt="png")]
    c["seqs"] = [[3, "I", 5, "I", 8]]
    cs.append(c)

    c = base_case("merge3_patch8", 8)
    c["vision"] = dict(depth=2, hidden=48, inter=64, heads=4, patch=8, merge=3, temporal=2,
                       window=48, fullatt=[0], tps=4)
    c["text"]["hidden"] = 48
    c["text"]["heads"] = 4
    c["text"]["kv"] = 1
    c["text"]["mrope_section"] = [2, 2, 2]
    c["pre"] = dict(min=24 * 24 * 2, max=24 * 24 * 20)
    c["images"] = [dict(h=100, w=70, mode="RGB", fmt="png"), dict(h=50, w=130, mode="L", fmt="jpg")]
    c["seqs"] = [[3, "I", 5], [9, "I", 10, 11]]
    cs.append(c)

    c = base_case("patch16_allfull_tied", 9)
    c["vision"] = dict(depth=4, hidden=64, inter=80, heads=4, patch=16, merge=2, temporal=2,
                       window=64, fullatt=[0, 1, 2, 3], tps=25)
    c["text"] = dict(vocab=400, hidden=96, inter=128, layers=3, heads=6, kv=3,
                     mrope_section=[4, 2, 2], tie=True)
    c["ids"] = dict(image=151 + 100, video=252, vs=253, ve=254)
    c["pre"] = dict(min=32 * 32, max=32 * 32 * 24)
    c["images"] = [dict(h=230, w=150, mode="RGB", fmt="png"), dict(h=33, w=33, mode="RGBA", fmt="png")]
    c["seqs"] = [[3, 4, "I", 5, "I", 6, 7]]
    cs.append(c)

    c = base_case("window_large", 10)
    c["vision"] = dict(depth=3, hidden=32, inter=48, heads=2, patch=14, merge=2, temporal=2,
                       window=112, fullatt=[2], tps=4)
    c["pre"] = dict(min=56 * 56, max=28 * 28 * 60)
    c["images"] = [dict(h=250, w=190, mode="RGB", fmt="png"), dict(h=90, w=300, mode="RGB", fmt="png")]
    c["seqs"] = [[3, "I", 5, "I", 7]]
    cs.append(c)

    c = base_case("mrope_zero_t", 11)
    c["text"]["mrope_section"] = [0, 4, 4]
    c["images"] = [dict(h=100, w=60, mode="RGB", fmt="png")]
    cs.append(c)

    c = base_case("mrope_all_t", 12)
    c["text"]["mrope_section"] = [8, 0, 0]
    c["images"] = [dict(h=100, w=60, mode="RGB", fmt="png")]
    cs.append(c)

    c = base_case("flat_rope_parameters", 13)
    c["layout"] = "flat_rope_parameters"
    c["images"] = [dict(h=90, w=90, mode="RGB", fmt="png")]
    cs.append(c)

    c = base_case("bf16_flat", 14)
    c["layout"] = "flat"
    c["dtype"] = "bf16"
    c["images"] = [dict(h=61, w=123, mode="RGB", fmt="jpg")]
    cs.append(c)

    c = base_case("pre_minmax_keys", 15)
    # published-style min_pixels/max_pixels keys that differ from size.*; HF decides which wins
    c["pre"] = dict(min=56 * 56, max=28 * 28 * 16,
                    json_extra=dict(min_pixels=28 * 28 * 2, max_pixels=28 * 28 * 6))
    c["images"] = [dict(h=150, w=160, mode="RGB", fmt="png"), dict(h=20, w=20, mode="RGB", fmt="png")]
    c["seqs"] = [[3, "I", 5, "I", 7]]
    cs.append(c)

    c = base_case("pre_no_size", 16)
    # only min_pixels/max_pixels (no size) as older published preprocessor configs
    c["pre"] = dict(min=56 * 56, max=28 * 28 * 16, json_drop=["size"],
                    json_extra=dict(min_pixels=28 * 28 * 3, max_pixels=28 * 28 * 9))
    c["images"] = [dict(h=150, w=160, mode="RGB", fmt="png")]
    cs.append(c)

    c = base_case("scalar_mean_std", 17)
    c["pre"] = dict(min=56 * 56, max=28 * 28 * 16, mean=[0.1, 0.2, 0.3], std=[0.9, 0.5, 0.7])
    c["images"] = [dict(h=70, w=70, mode="RGB", fmt="png")]
    cs.append(c)

    c = base_case("big_theta_long", 18)
    c["text"]["theta"] = 1000000.0
    c["images"] = [dict(h=120, w=120, mode="RGB", fmt="png")] * 3
    c["seqs"] = [[3] + list(range(10, 60)) + ["I", 5, "I"] + list(range(60, 90)) + ["I", 2]]
    cs.append(c)
    return cs


def isolation_cases():
    cs = []
    wl = dict(depth=3, hidden=32, inter=48, heads=2, patch=14, merge=2, temporal=2,
              window=112, fullatt=[2], tps=4)
    for nm, win, ims in [("iso_wl_a", 112, [(250, 190)]), ("iso_wl_b", 112, [(90, 300)]),
                         ("iso_wl_c", 56, [(250, 190), (90, 300)])]:
        c = base_case(nm, 10)
        c["vision"] = dict(wl, window=win)
        c["pre"] = dict(min=56 * 56, max=28 * 28 * 60)
        c["images"] = [dict(h=h, w=w, mode="RGB", fmt="png") for h, w in ims]
        c["images"].append(dict(h=0, w=0, mode="", fmt="png", **{"from": 0}))
        c["seqs"] = [[3, "I", 5]] * len(c["images"])
        cs.append(c)
    # window_large's own image files, one per sequence (seed 10 -> the same pixels)
    c = base_case("iso_wl_d", 10)
    c["vision"] = wl
    c["pre"] = dict(min=56 * 56, max=28 * 28 * 60)
    c["images"] = [dict(h=250, w=190, mode="RGB", fmt="png"), dict(h=90, w=300, mode="RGB", fmt="png")]
    c["seqs"] = [[3, "I", 5], [3, "I", 5]]
    cs.append(c)
    # downscale only (window 56 == fixture), sizes that need max_pixels
    c = base_case("iso_downscale", 21)
    c["pre"] = dict(min=56 * 56, max=28 * 28 * 16)
    sizes = [(250, 190), (90, 300), (300, 90), (160, 200), (400, 400), (120, 500), (29, 1000)]
    c["images"] = [dict(h=h, w=w, mode="RGB", fmt="png") for h, w in sizes]
    c["seqs"] = [[3, "I", 5]] * len(c["images"])
    cs.append(c)
    c = base_case("iso_upscale", 22)
    c["pre"] = dict(min=56 * 56 * 4, max=28 * 28 * 40)
    sizes = [(10, 10), (13, 200), (3, 57), (20, 31), (1, 100), (100, 1)]
    c["images"] = [dict(h=h, w=w, mode="RGB", fmt="png") for h, w in sizes]
    c["seqs"] = [[3, "I", 5]] * len(c["images"])
    cs.append(c)
    # rand108's RGBA png, alone and composited by PIL
    r = random_case(108)
    c = copy.deepcopy(r)
    c["name"] = "iso_r108_rgba"
    c["images"] = [dict(h=37, w=91, mode="RGBA", fmt="png"),
                   dict(h=0, w=0, mode="", fmt="png", composite=True, **{"from": 0}),
                   dict(h=37, w=91, mode="RGB", fmt="png"), dict(h=91, w=37, mode="RGBA", fmt="png")]
    c["seqs"] = [[3, "I", 5]] * len(c["images"])
    cs.append(c)
    c = base_case("iso_rgba_base", 23)
    c["images"] = [dict(h=37, w=91, mode="RGBA", fmt="png"),
                   dict(h=0, w=0, mode="", fmt="png", composite=True, **{"from": 0}),
                   dict(h=64, w=64, mode="RGBA", fmt="png"),
                   dict(h=0, w=0, mode="", fmt="png", composite=True, **{"from": 2})]
    c["seqs"] = [[3, "I", 5]] * len(c["images"])
    cs.append(c)
    return cs


def axis_cases():
    cs = []
    c = base_case("iso_axis", 24)
    c["pre"] = dict(min=56 * 56, max=28 * 28 * 100)
    ims = [(90, 308), (84, 300), (300, 84), (308, 90), (37, 308), (308, 37), (60, 56), (56, 60),
           (50, 56), (56, 50), (90, 300), (300, 90)]
    c["images"] = [dict(h=h, w=w, mode="RGB", fmt="png") for h, w in ims]
    c["seqs"] = [[3, "I", 5]] * len(c["images"])
    cs.append(c)
    # the failing geometries next to PIL's own resize of the same file
    c = base_case("iso_preresized", 25)
    c["pre"] = dict(min=56 * 56, max=28 * 28 * 16)
    c["images"] = [dict(h=300, w=90, mode="RGB", fmt="png"),
                   dict(h=0, w=0, mode="", fmt="png", resize=(196, 56), **{"from": 0}),
                   dict(h=90, w=300, mode="RGB", fmt="png"),
                   dict(h=0, w=0, mode="", fmt="png", resize=(56, 196), **{"from": 2})]
    c["seqs"] = [[3, "I", 5]] * len(c["images"])
    cs.append(c)
    # JPEG decode alone: sizes that are already multiples of 28 inside [min, max] -> no resize
    c = base_case("iso_jpeg_noresize", 26)
    c["images"] = [dict(h=56, w=84, mode="L", fmt="jpg", kw=dict(quality=90)),
                   dict(h=56, w=84, mode="RGB", fmt="jpg", kw=dict(quality=95, subsampling=0)),
                   dict(h=56, w=84, mode="RGB", fmt="jpg", kw=dict(quality=90, subsampling=1)),
                   dict(h=56, w=84, mode="RGB", fmt="jpg", kw=dict(quality=90, subsampling=2)),
                   dict(h=56, w=84, mode="RGB", fmt="jpg", kw=dict(quality=90, progressive=True)),
                   dict(h=0, w=0, mode="", fmt="png", **{"from": 3})]
    c["seqs"] = [[3, "I", 5]] * len(c["images"])
    cs.append(c)
    # 16-bit grayscale PNG, no resize (56x84)
    c = base_case("iso_png16", 27)
    c["images"] = [dict(h=56, w=84, mode="I16", fmt="png"), dict(h=0, w=0, mode="", fmt="png", **{"from": 0})]
    c["seqs"] = [[3, "I", 5]] * len(c["images"])
    cs.append(c)
    return cs


def refusal_cases():
    """Configs the engine refuses by name (checked by hand on 2026-11-28, now cases)."""
    cs = []
    for name, seed, key, val in [
            ("refuse_vision_head_dim2", 30, "cfg_edit", {"vision_config.num_heads": 16}),   # 32 / 16 = 2
            ("refuse_pre_patch16", 31, "json_extra", {"patch_size": 16}),              # tower has 14
            ("refuse_resample2", 32, "json_extra", {"resample": 2}),                   # only bicubic
            ("refuse_window60", 33, "cfg_edit", {"vision_config.window_size": 60})]:   # not a multiple of 28
        c = base_case(name, seed)
        if key == "cfg_edit":
            c["cfg_edit"] = val
        else:
            c["pre"]["json_extra"] = val
        c["expect_error"] = True
        cs.append(c)
    return cs


def all_cases():
    cs = edge_cases() + isolation_cases() + axis_cases() + refusal_cases()
    for s in range(100, 116):
        cs.append(random_case(s))
    return {c["name"]: c for c in cs}


# ----------------------------------------------------------------------------------- run
class Opts:
    engine = None
    work = None
    prenorm = False
    strict = False
    tol = TOL
    jpeg_tol = JPEG_TOL


def image_kind(path):
    """'jpeg' or 'exact' (everything the engine matches bit for bit)."""
    with Image.open(path) as im:
        if im.format == "JPEG":
            return "jpeg"
    return "exact"


def seq_kinds(seqs, ids, paths):
    """The known-difference kind of each sequence: the images it consumes, in order."""
    it = iter(paths)
    out = []
    for s in seqs:
        kinds = {image_kind(next(it)) for x in s if x == ids["image"]}
        out.append("jpeg" if "jpeg" in kinds else "exact")
    return out


def write_images(c, d):
    paths = []
    for k, im in enumerate(c["images"]):
        p = os.path.join(d, f"img{k}.{im['fmt']}")
        if "from" in im:  # re-encode image im["from"] (decoded by PIL) losslessly
            src = Image.open(paths[im["from"]])
            src.load()
            if im.get("composite"):  # alpha onto white, as transformers' convert_to_rgb
                bg = Image.new("RGBA", src.size, (255, 255, 255, 255))
                src = Image.alpha_composite(bg, src.convert("RGBA")).convert("RGB")
            if im.get("resize"):  # (h, w) with PIL bicubic, as transformers' PIL backend
                src = src.convert("RGB").resize((im["resize"][1], im["resize"][0]), Image.BICUBIC)
            src.save(p)
            paths.append(p)
            continue
        make_image(p, im["h"], im["w"], im["mode"], c["seed"] * 100 + k, **im.get("kw", {}))
        paths.append(p)
    return paths


def prenormalize(paths, mdir, d):
    """Decode, convert and resize with PIL exactly as transformers does; save as PNG."""
    from transformers.image_transforms import convert_to_rgb
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
    proc = Qwen2VLImageProcessorPil.from_pretrained(mdir)
    new = []
    for k, p in enumerate(paths):
        im = Image.open(p)
        im.load()
        im = convert_to_rgb(im)
        h, w = smart_resize(im.height, im.width, factor=proc.patch_size * proc.merge_size,
                            min_pixels=proc.size["shortest_edge"], max_pixels=proc.size["longest_edge"])
        if (h, w) != (im.height, im.width):
            im = im.resize((w, h), Image.BICUBIC)
        q = os.path.join(d, f"pn{k}.png")
        im.save(q)
        new.append(q)
    return new


def run_case(c):
    if Opts.prenorm:
        c = dict(c, name=c["name"] + "_pn")
    d = os.path.join(Opts.work, "cases", c["name"])
    mdir = os.path.join(d, "model")
    os.makedirs(mdir, exist_ok=True)
    json.dump(c, open(os.path.join(d, "case.json"), "w"), indent=1)
    build_model(c, mdir)
    paths = write_images(c, d)
    if Opts.prenorm:
        paths = prenormalize(paths, mdir, d)
    ids = c["ids"]
    seqs = []
    for s in c["seqs"]:
        out = []
        for x in s:
            if x == "I":
                out += [ids["image"]] if c.get("bare") else [ids["vs"], ids["image"], ids["ve"]]
            else:
                out.append(int(x))
        seqs.append(out)
    tj = os.path.join(d, "seqs.json")
    json.dump(seqs, open(tj, "w"))
    lp_out = os.path.join(d, "lp.safetensors")
    cmd = [str(Opts.engine), "logprobs", "--model", mdir, "--tokens", tj, "--out", lp_out, "--device", "cpu"]
    for p in paths:
        cmd += ["--image", p]
    open(os.path.join(d, "cmd.sh"), "w").write(" ".join(cmd) + "\n")
    if os.path.exists(lp_out):
        os.remove(lp_out)
    row = {"name": c["name"]}
    t0 = time.time()
    env = {**os.environ, "RAYON_NUM_THREADS": os.environ.get("RAYON_NUM_THREADS", "2")}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    row["engine_s"] = round(time.time() - t0, 1)
    row["rc"] = r.returncode
    row["panic"] = "panicked" in r.stderr
    if r.returncode != 0:
        row["engine_err"] = (r.stderr or r.stdout)[-1500:]
    expect_err = c.get("expect_error", False)
    ref = None
    if not (expect_err and r.returncode != 0):  # no reference needed for an expected refusal
        try:
            ref, expanded = hf_reference(mdir, c, paths, seqs)
            save_file(ref, os.path.join(d, "hf.safetensors"))
            row["hf_lens"] = [len(e) for e in expanded]
            row["grids"] = [ref[f"grid.{i}"].tolist() for i in range(len(seqs))]
        except Exception as e:  # noqa: BLE001 - transformers' refusal is a result
            row["hf_err"] = repr(e)[-1500:]
    kinds = seq_kinds(seqs, ids, paths)
    if Opts.strict:
        kinds = ["exact"] * len(kinds)
    row["kinds"] = kinds
    fails, notes, known = [], [], []
    if r.returncode != 0:
        if row["panic"]:
            row["verdict"] = "PANIC"
            fails.append("engine panicked")
        elif expect_err:
            row["verdict"] = "refused (expected)"
        else:
            row["verdict"] = "refused (UNEXPECTED)"
            fails.append("refused: " + (r.stderr.strip().splitlines() or [""])[-1][:200])
    elif ref is None:
        row["verdict"] = "engine ok, no HF ref"
        notes.append("transformers failed: " + row.get("hf_err", "")[-200:])
    else:
        eng = load_file(lp_out)
        per = []
        worst = {"exact": [0.0, 0.0], "jpeg": [0.0, 0.0]}
        for i in range(len(seqs)):
            a, b = eng.get(f"logprobs.{i}"), ref[f"logprobs.{i}"]
            la = eng.get(f"last_logits.{i}")
            if a is None or la is None or a.shape != b.shape or la.shape != ref[f"last_logits.{i}"].shape:
                per.append(dict(i=i, kind=kinds[i], shape_eng=None if a is None else list(a.shape), shape_hf=list(b.shape)))
                fails.append(f"sequence {i}: shape {per[-1]['shape_eng']} vs HF {list(b.shape)}")
                continue
            e1 = rel_l2(a, b)
            e2 = rel_l2(la, ref[f"last_logits.{i}"])
            per.append(dict(i=i, kind=kinds[i], lp=e1, ll=e2, maxabs=(a.double() - b.double()).abs().max().item()))
            w = worst[kinds[i]]
            w[0], w[1] = max(w[0], e1), max(w[1], e2)
            if kinds[i] == "exact":
                if not max(e1, e2) <= Opts.tol:
                    fails.append(f"sequence {i}: lp {e1:.2e} ll {e2:.2e} > {Opts.tol:g}")
            elif not max(e1, e2) <= Opts.jpeg_tol:
                fails.append(f"sequence {i} (JPEG): lp {e1:.2e} ll {e2:.2e} > {Opts.jpeg_tol:g}")
            else:
                known.append(f"sequence {i}: JPEG decoder")
        row["per_seq"] = per
        row["max_rel_lp"] = max(p.get("lp", float("inf")) for p in per) if per else 0.0
        row["max_rel_ll"] = max(p.get("ll", float("inf")) for p in per) if per else 0.0
        row["worst"] = worst
        row["verdict"] = "MISMATCH" if fails else "ok"
        if expect_err and not fails:
            notes.append("accepted (and agreed with HF) where a refusal was expected")
    row["status"] = "FAIL" if fails else ("NOTE" if notes else ("KNOWN" if known else "PASS"))
    row["reasons"] = fails + notes + sorted(set(k.split(": ", 1)[1] for k in known))
    with open(os.path.join(Opts.work, "results.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def summary(c):
    t, v = c["text"], c["vision"]
    return (f"T h{t['hidden']} L{t['layers']} H{t['heads']}/{t['kv']} sec{t['mrope_section']} "
            f"tie{int(t['tie'])} | V d{v['depth']} h{v['hidden']} H{v['heads']} p{v['patch']} "
            f"m{v['merge']} t{v['temporal']} w{v['window']} fa{v['fullatt']} | "
            f"{c.get('layout', 'nested')} {c.get('dtype', 'f32')} pre[{c['pre']['min']},{c['pre']['max']}] "
            f"imgs{[(i['w'], i['h'], i['mode'], i['fmt']) for i in c['images']]} seqs{len(c['seqs'])}")


def parse_args(argv):
    ap = argparse.ArgumentParser(
        description="Compare `mmr1-fast logprobs --image` with transformers on tiny random Qwen2.5-VL checkpoints.",
        epilog="Statuses: PASS (all sequences within --tol), KNOWN (only the documented JPEG "
               "difference), NOTE (no HF reference, or accepted where a refusal was expected), FAIL. "
               "Exit status: 0 no FAIL, 1 some case FAILed, 2 usage or setup error.")
    ap.add_argument("names", nargs="*", metavar="NAME", help="run only these cases (exact names, see --list; default: all)")
    ap.add_argument("--list", action="store_true", help="list the cases with a summary of each and exit")
    ap.add_argument("--prenorm", action="store_true",
                    help="decode, convert and resize every image with PIL as transformers does and give the engine "
                         "those PNGs (isolates the model from image decoding and resizing); cases are named NAME_pn")
    add_engine_work_args(ap, "results.jsonl")
    ap.add_argument("--tol", type=float, default=TOL,
                    help=f"max relative L2 of log-probs and of last logits per sequence (default {TOL:g})")
    ap.add_argument("--jpeg-tol", type=float, default=JPEG_TOL,
                    help=f"sanity bound for sequences using a JPEG, a known difference (default {JPEG_TOL:g})")
    ap.add_argument("--strict", action="store_true",
                    help="hold JPEG sequences to --tol as well (they then FAIL today)")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cases = all_cases()
    if args.list:
        for n, c in cases.items():
            if not args.names or n in args.names:
                print(n, ("[expect refusal] " if c.get("expect_error") else "") + summary(c))
        return 0
    if _IMPORT_ERROR is not None:
        return import_error(_IMPORT_ERROR, "; and pillow")
    unknown = [n for n in args.names if n not in cases]
    if unknown:
        print(f"error: unknown case(s) {unknown} (see --list)", file=sys.stderr)
        return 2
    engine = resolve_engine(args.engine)
    if engine is None:
        return 2
    work = work_dir(args.work, "mmr1-probe-vl-")
    torch.set_num_threads(1)
    Opts.engine, Opts.work, Opts.prenorm, Opts.strict = engine, str(work), args.prenorm, args.strict
    Opts.tol, Opts.jpeg_tol = args.tol, args.jpeg_tol
    names = args.names or list(cases)
    print(f"engine: {engine}\nwork directory: {work}\ncases: {len(names)}", flush=True)
    statuses = {}
    for n in names:
        c = cases[n]
        try:
            row = run_case(c)
        except Exception:  # noqa: BLE001 - a broken case is a failure of the run
            err = traceback.format_exc()
            print(err[-1500:], file=sys.stderr)
            print(f"FAIL  {n}: PROBE ERROR {err.strip().splitlines()[-1]}", flush=True)
            statuses[n] = ("FAIL", ["probe error"])
            continue
        statuses[n] = (row["status"], row["reasons"])
        if "worst" in row:
            w = row["worst"]
            nums = f"lp {w['exact'][0]:.2e} ll {w['exact'][1]:.2e}"
            for k in ("jpeg",):
                if k in row["kinds"]:
                    nums += f" | {k} lp {w[k][0]:.2e} ll {w[k][1]:.2e}"
        else:
            nums = f"{row['verdict']} rc={row['rc']} {row.get('engine_err', '').strip().splitlines()[-1][-200:] if row.get('engine_err') else ''}"
            if row.get("hf_err"):
                nums += f" HF: {row['hf_err'][-200:]}"
        print(f"{row['status']:5s} {n}: {nums} | {summary(c)}", flush=True)
    counts = {s: sum(1 for v in statuses.values() if v[0] == s) for s in ("PASS", "KNOWN", "NOTE", "FAIL")}
    print(f"\nsummary: {len(statuses)} cases, " + ", ".join(f"{v} {k}" for k, v in counts.items())
          + f" (tolerance {Opts.tol:g}{'' if Opts.strict else f', JPEG bound {Opts.jpeg_tol:g}'};"
          f" rows in {os.path.join(Opts.work, 'results.jsonl')})")
    for s in ("KNOWN", "NOTE", "FAIL"):
        for n, (st, why) in statuses.items():
            if st == s:
                print(f"  {s} {n}: {'; '.join(why)}")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
