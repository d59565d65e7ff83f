#!/usr/bin/env python3
"""Does transformers load a Qwen2.5-VL directory written by mmr1-fast, and compute what mmr1-fast
computes from it?

  /work/wt/.venv-torch/bin/python scripts/check_vl_save.py DIR [--bin target/debug/mmr1-fast]

DIR is a directory mmr1-fast wrote (`VlModel::save_pretrained`: e.g. the output of `mmr1-fast sft`
on tests/fixtures/tiny-vl with images, whose weights differ from the fixture's). The script loads it
with `Qwen2_5_VLForConditionalGeneration.from_pretrained` (float32, eager attention) and
`AutoConfig` (so a config transformers cannot read fails here), runs the golden two-image sequence
of tests/fixtures/tiny-vl/vl_logits.safetensors (img0.png, img2.webp; pixel values from
vision.safetensors, made by transformers' PIL image processor), and compares the per-token
log-probs with `mmr1-fast logprobs --model DIR` on the same sequence and image files. It also
prints how far DIR's log-probs are from the fixture model's (to show the weights are not the
fixture's). Exit status 1 when the two engines differ by more than 1e-4 relative L2.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures", "tiny-vl")
IMAGE = 410


def rel_l2(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "debug", "mmr1-fast"))
    args = ap.parse_args()

    cfg = AutoConfig.from_pretrained(args.dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(args.dir, dtype=torch.float32)
    model.eval()
    for c in (model.config, model.config.text_config, model.config.vision_config):
        c._attn_implementation = "eager"
    gold = load_file(os.path.join(FIX, "vl_logits.safetensors"))
    vis = load_file(os.path.join(FIX, "vision.safetensors"))
    ids = gold["input_ids"][None]
    mm = (ids == IMAGE).int()
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=vis["pixel_values"],
                       image_grid_thw=gold["grid_thw"], mm_token_type_ids=mm).logits[0]
    hf = torch.log_softmax(logits[:-1].double(), -1).gather(1, ids[0, 1:, None])[:, 0].float()

    # The same sequence through mmr1-fast, placeholders collapsed as a user writes them.
    collapsed = []
    for t in gold["input_ids"].tolist():
        if not (t == IMAGE and collapsed and collapsed[-1] == IMAGE):
            collapsed.append(t)
    with tempfile.TemporaryDirectory() as tmp:
        tok = os.path.join(tmp, "t.json")
        with open(tok, "w") as f:
            json.dump([collapsed], f)
        out = os.path.join(tmp, "lp.safetensors")
        subprocess.run([args.bin, "logprobs", "--model", args.dir, "--tokens", tok,
                        "--image", os.path.join(FIX, "images", "img0.png"),
                        "--image", os.path.join(FIX, "images", "img2.webp"),
                        "--out", out, "--device", "cpu"], check=True)
        ours = load_file(out)["logprobs.0"]
    e = rel_l2(ours, hf)
    moved = rel_l2(hf, gold["logprobs"])
    print(f"config: {type(cfg).__name__}, dtype {cfg.dtype}")
    print(f"log-probs, mmr1-fast vs transformers on {args.dir}: rel L2 {e:.3e}")
    print(f"log-probs of {args.dir} vs the fixture model's: rel L2 {moved:.3e}")
    sys.exit(0 if e <= 1e-4 else 1)


if __name__ == "__main__":
    main()
