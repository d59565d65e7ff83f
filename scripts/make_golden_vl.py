#!/usr/bin/env python3
"""Golden fixtures for the Qwen2.5-VL side of mmr1-fast (tests/fixtures/tiny-vl/, overwritten).

What it makes:
  images/img{0..4}.{png,png,webp,jpg,png}  small generated images of different sizes and modes
                          (RGB PNG, grayscale PNG, lossless WebP, JPEG, RGBA PNG), chosen so that the
                          "smart resize" rule rounds half to even (70/28 = 2.5), scales down
                          past max_pixels and scales up past min_pixels.
  preprocessor_config.json  Qwen2VLImageProcessor(min_pixels=56*56, max_pixels=28*28*16).
  preprocess.safetensors  pixel_values.{i} f32 [patches, 3*2*14*14], grid_thw.{i} i64 [3] from the
                          PIL image processor (Qwen2VLImageProcessorPil, PIL bicubic: the
                          reference). The script prints how far the torchvision processor is from it.
  windows.safetensors     the vision tower's bookkeeping for the fixture images' grids packed in
                          one batch (grids.{i} i64 [3]): position_ids i64 [patches, 2] (h, w),
                          window_index i64 [merged units], cu_window_seqlens i32, cu_seqlens i32,
                          from transformers.vision_utils (window_size 56, patch 14, merge 2).
  mrope.safetensors       M-RoPE positions of one sequence with two images (grids [1,4,4], [1,10,6]):
                          input_ids i64 [L], position_ids i64 [3, L], delta i64 [1], grids i64 [2, 3],
                          from Qwen2_5_VLModel.get_rope_index.
  vision.safetensors      the vision tower of the tiny model (eager attention, f32) on img0 and img2
                          packed (grids [1,4,4] and [1,8,6]; blocks 0 and 2 windowed, block 1 full):
                          pixel_values f32 [64, 1176], grid_thw i64 [2, 3], patch_embed f32 [64, 32],
                          block.{b} f32 [64, 32] (each block's output, in window order),
                          features f32 [16, 64] (merger output, image order: the golden).
  rope.safetensors        rotary tables as transformers builds them: vision_cos/vision_sin f32 [64, 16]
                          (Qwen2_5_VLVisionRotaryEmbedding on the vision.safetensors images, patch order),
                          text_cos/text_sin f32 [35, 16] (Qwen2_5_VLRotaryEmbedding on mrope's positions).
  vision_grads.safetensors  gradients of the vision tower for loss = sum(features * probe) on the
                          vision.safetensors images: probe f32 [16, 64] (seeded normal), grad.<name> for
                          every visual.* parameter (checkpoint names), f32, eager attention.
  vl_logits.safetensors   the full model on one sequence holding img0 and img2 (text, <|vision_start|>,
                          image tokens, <|vision_end|>, ...): input_ids i64 [L], grid_thw i64 [2, 3],
                          position_ids i64 [3, L] (get_rope_index), logits f32 [L, vocab], logprobs f32
                          [L-1] (log-softmax of row i at token i+1).
  vl_grads.safetensors    gradients of every parameter (checkpoint names) for
                          loss = sum_i weights[i] * logprobs[i] on the vl_logits.safetensors sequence:
                          weights f32 [L-1] (seeded normal), grad.<name> f32.
  tokenizer.json          the tiny byte-level BPE of tests/fixtures/tokenizer.json (ids 0..399) with
                          added special tokens <|reserved_0..7|> (400..407, fillers so ids stay
                          contiguous), <|vision_start|> 408, <|vision_end|> 409, <|image_pad|> 410,
                          <|video_pad|> 411: the model's special ids.
  generate.safetensors    greedy generation (transformers' generate, eager attention) for the
                          chat prompt of `mmr1-fast generate --image images/img0.png --prompt
                          "Describe it."` as Qwen2_5_VLProcessor builds it (text from the Qwen2.5-VL
                          chat template, placeholder expanded by the processor): prompt_ids i64 [L],
                          grid_thw i64 [1, 3], tokens i64 [n] (the new tokens, at most 8, ending
                          at <|im_end|> 399 if reached). The prompt text is in the metadata.
  config.json, model.safetensors   a tiny random Qwen2_5_VLForConditionalGeneration, float32,
                          as transformers 5 writes it (nested text_config / vision_config,
                          rope_parameters with mrope_section).
  config_flat.json        the same model in the flat layout of the published checkpoints (text keys
                          at the top level, rope_scaling {type: mrope, mrope_section}, torch_dtype).

Rerun from the repository root (torch, transformers, pillow, torchvision, safetensors):
  python scripts/make_golden_vl.py
  python scripts/make_golden_vl.py --only grads,logits,vlgrads
  python scripts/make_golden_vl.py --only tokenizer,generate
(the second form loads the committed model and images and rewrites only those files).
Written against transformers 5.24.0 / torch 2.15.0 / pillow 13.0.0 / torchvision 0.29.2.
"""

import json
import os
import sys

import numpy as np
import PIL
import torch
import transformers
from PIL import Image
from safetensors.torch import save_file
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "tiny-vl")
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 16

torch.set_num_threads(1)
torch.manual_seed(0)
VERSIONS = {
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "pillow": PIL.__version__,
    "python": sys.version.split()[0],
}


def smooth_noise(rng, h, w, c):
    """Gradients plus noise: every pixel differs, and resampling is not trivially exact."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.zeros((h, w, c))
    for ch in range(c):
        a, b, p = rng.uniform(0.02, 0.2, 3)
        out[..., ch] = 127 + 90 * np.sin(a * yy + b * xx + p * 7) + rng.normal(0, 25, (h, w))
    return np.clip(out, 0, 255).astype(np.uint8)


def make_images():
    rng = np.random.default_rng(7)
    os.makedirs(os.path.join(OUT, "images"), exist_ok=True)
    specs = [
        ("img0.png", 50, 70, "RGB"),  # 70/28 = 2.5 rounds to 2 (half to even)
        ("img1.png", 150, 97, "L"),  # grayscale -> RGB
        ("img2.webp", 200, 160, "RGB"),  # past max_pixels: scaled down
        ("img3.jpg", 20, 30, "RGB"),  # under min_pixels: scaled up
        ("img4.png", 33, 40, "RGBA"),  # alpha composited onto white
    ]
    paths = []
    for name, h, w, mode in specs:
        arr = smooth_noise(rng, h, w, {"L": 1, "RGB": 3, "RGBA": 4}[mode])
        img = Image.fromarray(arr[..., 0] if mode == "L" else arr, mode=mode)
        path = os.path.join(OUT, "images", name)
        if name.endswith(".webp"):
            img.save(path, lossless=True)
        elif name.endswith(".jpg"):
            img.save(path, quality=90)
        else:
            img.save(path)
        paths.append(path)
    return paths


def make_preprocess(paths):
    kw = dict(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    pil_proc = Qwen2VLImageProcessorPil(**kw)
    tv_proc = Qwen2VLImageProcessor(**kw)
    pil_proc.save_pretrained(OUT)
    tensors = {}
    grids = []
    for i, p in enumerate(paths):
        img = Image.open(p)
        img.load()
        a = pil_proc(images=[img], return_tensors="pt")
        b = tv_proc(images=[img], return_tensors="pt")
        tensors[f"pixel_values.{i}"] = a["pixel_values"].float().contiguous()
        tensors[f"grid_thw.{i}"] = a["image_grid_thw"][0].long().contiguous()
        grids.append(a["image_grid_thw"][0].tolist())
        d = (a["pixel_values"].float() - b["pixel_values"].float()).abs().max().item()
        print(f"{os.path.basename(p)}: size {img.size} grid {a['image_grid_thw'][0].tolist()}; "
              f"PIL vs torchvision max |diff| {d:.4f}")
    save_file(tensors, os.path.join(OUT, "preprocess.safetensors"),
              metadata={"meta": json.dumps({"versions": VERSIONS, **kw})})
    return grids


def make_windows(grids):
    from transformers.vision_utils import (get_vision_cu_seqlens, get_vision_position_ids,
                                           get_vision_window_index)
    g = torch.tensor(grids, dtype=torch.long)
    wi, cu_w = get_vision_window_index(g, spatial_merge_size=2, window_size=56, patch_size=14)
    t = {
        "position_ids": get_vision_position_ids(g, 2).long().contiguous(),
        "window_index": wi.long().contiguous(),
        "cu_window_seqlens": cu_w.int().contiguous(),
        "cu_seqlens": get_vision_cu_seqlens(g).int().contiguous(),
    }
    for i, gr in enumerate(grids):
        t[f"grids.{i}"] = torch.tensor(gr, dtype=torch.long)
    save_file(t, os.path.join(OUT, "windows.safetensors"))


def make_model():
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=420, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
            max_position_embeddings=512,
            rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, rope_theta=10000.0,
            initializer_range=0.2, bos_token_id=397, eos_token_id=399,
        ),
        vision_config=dict(
            depth=3, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
            fullatt_block_indexes=[1], initializer_range=0.2,
        ),
        image_token_id=410, video_token_id=411, vision_start_token_id=408,
        vision_end_token_id=409, tie_word_embeddings=False,
    )
    model = Qwen2_5_VLForConditionalGeneration(cfg).float().eval()
    # Large weights so goldens are sensitive (see make_golden.py); norms 1 + N(0, 0.1).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_q" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    model.save_pretrained(OUT, safe_serialization=True)
    # The flat layout of the published checkpoints (e.g. Qwen2.5-VL-3B-Instruct/config.json).
    nested = json.load(open(os.path.join(OUT, "config.json")))
    text, vision = nested["text_config"], nested["vision_config"]
    flat = {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "torch_dtype": "float32",
        "image_token_id": nested["image_token_id"],
        "video_token_id": nested["video_token_id"],
        "vision_start_token_id": nested["vision_start_token_id"],
        "vision_end_token_id": nested["vision_end_token_id"],
        "tie_word_embeddings": nested["tie_word_embeddings"],
        "rope_theta": text["rope_parameters"]["rope_theta"],
        "rope_scaling": {"type": "mrope", "mrope_section": text["rope_parameters"]["mrope_section"]},
        "vision_config": {k: v for k, v in vision.items() if k not in ("dtype",)},
    }
    for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "hidden_act",
              "max_position_embeddings", "bos_token_id", "eos_token_id", "use_sliding_window",
              "sliding_window", "max_window_layers", "attention_dropout"):
        if k in text:
            flat[k] = text[k]
    json.dump(flat, open(os.path.join(OUT, "config_flat.json"), "w"), indent=2)
    return model


def make_vision(model):
    from safetensors.torch import load_file
    pre = load_file(os.path.join(OUT, "preprocess.safetensors"))
    pv = torch.cat([pre["pixel_values.0"], pre["pixel_values.2"]])
    grids = torch.stack([pre["grid_thw.0"], pre["grid_thw.2"]])
    model.config.vision_config._attn_implementation = "eager"
    visual = model.model.visual
    visual.config._attn_implementation = "eager"
    rec = {}
    hooks = [visual.patch_embed.register_forward_hook(lambda m, i, o: rec.__setitem__("patch_embed", o))]
    for b, blk in enumerate(visual.blocks):
        hooks.append(blk.register_forward_hook(lambda m, i, o, b=b: rec.__setitem__(f"block.{b}", o)))
    with torch.no_grad():
        out = visual(pv, grid_thw=grids)
    for h in hooks:
        h.remove()
    t = {"pixel_values": pv.contiguous(), "grid_thw": grids.contiguous(),
         "features": out.pooler_output.float().contiguous()}
    t.update({k: v.float().contiguous() for k, v in rec.items()})
    save_file(t, os.path.join(OUT, "vision.safetensors"),
              metadata={"meta": json.dumps({"versions": VERSIONS})})


def make_rope(model):
    from safetensors.torch import load_file
    from transformers.vision_utils import get_vision_position_ids
    v = load_file(os.path.join(OUT, "vision.safetensors"))
    m = load_file(os.path.join(OUT, "mrope.safetensors"))
    x = torch.zeros(1, dtype=torch.float32)
    with torch.no_grad():
        vc, vs = model.model.visual.rotary_pos_emb(x, get_vision_position_ids(v["grid_thw"], 2))
        tc, ts = model.model.language_model.rotary_emb(x, m["position_ids"][:, None, :])
    save_file({"vision_cos": vc.contiguous(), "vision_sin": vs.contiguous(),
               "text_cos": tc[0].contiguous(), "text_sin": ts[0].contiguous()},
              os.path.join(OUT, "rope.safetensors"))


def make_mrope(model):
    grids = torch.tensor([[1, 4, 4], [1, 10, 6]])
    img, vs, ve = 410, 408, 409
    ids = [5, 17, 33, vs] + [img] * 4 + [ve, 40, 41, 42, 43, 44, vs] + [img] * 15 + [ve, 7, 8, 9, 10]
    input_ids = torch.tensor([ids])
    mm = (input_ids == img).int()
    pos, delta = model.model.get_rope_index(input_ids, mm, image_grid_thw=grids)
    save_file({"input_ids": input_ids[0].contiguous(), "position_ids": pos[:, 0].contiguous(),
               "delta": delta[0].long().contiguous(), "grids": grids.contiguous()},
              os.path.join(OUT, "mrope.safetensors"))


def pixels_and_grids():
    from safetensors.torch import load_file
    pre = load_file(os.path.join(OUT, "preprocess.safetensors"))
    pv = torch.cat([pre["pixel_values.0"], pre["pixel_values.2"]])
    grids = torch.stack([pre["grid_thw.0"], pre["grid_thw.2"]])
    return pv, grids


def make_vision_grads(model):
    pv, grids = pixels_and_grids()
    model.config.vision_config._attn_implementation = "eager"
    visual = model.model.visual
    visual.config._attn_implementation = "eager"
    model.zero_grad()
    out = visual(pv, grid_thw=grids).pooler_output
    g = torch.Generator().manual_seed(1234)
    probe = torch.randn(out.shape, generator=g, dtype=torch.float32)
    (out * probe).sum().backward()
    t = {"probe": probe.contiguous()}
    for name, p in visual.named_parameters():
        t[f"grad.visual.{name}"] = p.grad.float().contiguous()
    model.zero_grad()
    save_file(t, os.path.join(OUT, "vision_grads.safetensors"),
              metadata={"meta": json.dumps({"versions": VERSIONS})})


def vl_sequence(grids):
    img, vs, ve = 410, 408, 409
    n0, n1 = (int(g.prod()) // 4 for g in grids)
    return [3, 57, 101, vs] + [img] * n0 + [ve, 12, 250, 7, vs] + [img] * n1 + [ve, 33, 390, 200, 5]


def checkpoint_name(name):
    """transformers 5 module path -> the published checkpoint's tensor name."""
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    if name.startswith("model.visual."):
        return name[len("model."):]
    return name


def make_vl_grads(model):
    pv, grids = pixels_and_grids()
    for c in (model.config, model.config.text_config, model.config.vision_config):
        c._attn_implementation = "eager"
    input_ids = torch.tensor([vl_sequence(grids)])
    mm = (input_ids == 410).int()
    model.zero_grad()
    logits = model(input_ids=input_ids, pixel_values=pv, image_grid_thw=grids,
                   mm_token_type_ids=mm).logits[0]
    lp = torch.log_softmax(logits[:-1], -1).gather(1, input_ids[0, 1:, None])[:, 0]
    g = torch.Generator().manual_seed(4321)
    w = torch.randn(lp.shape, generator=g, dtype=torch.float32)
    (lp * w).sum().backward()
    t = {"weights": w.contiguous()}
    for name, p in model.named_parameters():
        t[f"grad.{checkpoint_name(name)}"] = p.grad.float().contiguous()
    model.zero_grad()
    save_file(t, os.path.join(OUT, "vl_grads.safetensors"),
              metadata={"meta": json.dumps({"versions": VERSIONS})})


def make_vl_logits(model):
    pv, grids = pixels_and_grids()
    model.config._attn_implementation = "eager"
    model.config.text_config._attn_implementation = "eager"
    model.config.vision_config._attn_implementation = "eager"
    input_ids = torch.tensor([vl_sequence(grids)])
    mm = (input_ids == 410).int()
    with torch.no_grad():
        pos, _ = model.model.get_rope_index(input_ids, mm, image_grid_thw=grids)
        logits = model(input_ids=input_ids, pixel_values=pv, image_grid_thw=grids,
                       mm_token_type_ids=mm).logits[0].float()
    lp = torch.log_softmax(logits[:-1].double(), -1).gather(1, input_ids[0, 1:, None])[:, 0].float()
    save_file({"input_ids": input_ids[0].contiguous(), "grid_thw": grids.contiguous(),
               "position_ids": pos[:, 0].contiguous(), "logits": logits.contiguous(),
               "logprobs": lp.contiguous()},
              os.path.join(OUT, "vl_logits.safetensors"),
              metadata={"meta": json.dumps({"versions": VERSIONS})})


VL_SPECIALS = [f"<|reserved_{i}|>" for i in range(8)] + [
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def make_tokenizer():
    from tokenizers import Tokenizer
    tok = json.load(open(os.path.join(ROOT, "tests", "fixtures", "tokenizer.json")))
    assert max(a["id"] for a in tok["added_tokens"]) == 399
    for i, content in enumerate(VL_SPECIALS):
        tok["added_tokens"].append({"id": 400 + i, "content": content, "single_word": False,
                                    "lstrip": False, "rstrip": False, "normalized": False,
                                    "special": True})
    path = os.path.join(OUT, "tokenizer.json")
    json.dump(tok, open(path, "w"), ensure_ascii=False, indent=2)
    t = Tokenizer.from_file(path)
    ids = t.encode("<|vision_start|><|image_pad|><|vision_end|>hi", add_special_tokens=False).ids
    assert ids[:3] == [408, 410, 409], ids


def make_generate(model):
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLProcessor
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(OUT, "tokenizer.json"))
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    proc = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessorPil.from_pretrained(OUT),
                               tokenizer=tok, video_processor=Qwen2VLVideoProcessor())
    # Qwen2.5-VL's chat template for [system default, user [image, text]], generation prompt.
    text = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe it.<|im_end|>\n"
            "<|im_start|>assistant\n")
    img = Image.open(os.path.join(OUT, "images", "img0.png"))
    inputs = proc(text=[text], images=[img], return_tensors="pt")
    for c in (model.config, model.config.text_config, model.config.vision_config):
        c._attn_implementation = "eager"
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False, eos_token_id=399,
                             pad_token_id=397)
    new = out[0, inputs["input_ids"].shape[1]:]
    print("generate: prompt", inputs["input_ids"].shape[1], "tokens, new", new.tolist())
    save_file({"prompt_ids": inputs["input_ids"][0].long().contiguous(),
               "grid_thw": inputs["image_grid_thw"].long().contiguous(),
               "tokens": new.long().contiguous()},
              os.path.join(OUT, "generate.safetensors"),
              metadata={"meta": json.dumps({"versions": VERSIONS, "prompt": text})})


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--only":
        parts = sys.argv[2].split(",")
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(OUT, dtype=torch.float32).eval()
        if "grads" in parts:
            make_vision_grads(model)
        if "logits" in parts:
            make_vl_logits(model)
        if "vlgrads" in parts:
            make_vl_grads(model)
        if "tokenizer" in parts:
            make_tokenizer()
        if "generate" in parts:
            make_generate(model)
        print("wrote", parts, "in", OUT)
        sys.exit(0)
    paths = make_images()
    grids = make_preprocess(paths)
    make_windows(grids)
    model = make_model()
    make_mrope(model)
    make_vision(model)
    make_rope(model)
    make_vision_grads(model)
    make_vl_logits(model)
    make_vl_grads(model)
    make_tokenizer()
    make_generate(model)
    print("wrote", OUT)
