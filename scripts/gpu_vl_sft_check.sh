#!/usr/bin/env bash
# GPU check of Qwen2.5-VL SFT (tests/fixtures/tiny-vl, three conversations with 1-2 images,
# vision tower trained): the same 3 steps on --device cpu, cuda --precision f32 and cuda
# --precision bf16; prints each run's losses and the relative L2 distance of the saved weights
# (decoder and visual.* apart) from the CPU's. Needs a binary built with --features cuda
# (BIN, default target/debug/mmr1-fast) and python3 with torch + safetensors.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/debug/mmr1-fast}
F=$PWD/tests/fixtures/tiny-vl/images
T=$(mktemp -d)
cat > "$T/data.jsonl" <<EOF
{"conversations": [{"from": "human", "value": "<image>What is it?"}, {"from": "gpt", "value": "a red ring"}], "images": ["$F/img0.png"]}
{"messages": [{"role": "user", "content": "Name it."}, {"role": "assistant", "content": "grey stripes"}], "image": "$F/img2.webp"}
{"conversations": [{"from": "human", "value": "Compare <image> and <image>."}, {"from": "gpt", "value": "the left one is brighter"}], "images": ["$F/img3.jpg", "$F/img4.png"]}
EOF
for run in "cpu f32" "cuda f32" "cuda bf16"; do
    set -- $run
    echo "== --device $1 --precision $2"
    "$BIN" sft --model tests/fixtures/tiny-vl --data "$T/data.jsonl" --out "$T/$1-$2" \
        --batch-size 3 --epochs 3 --lr 1e-2 --warmup-ratio 0 --freeze-vision false \
        --device "$1" --precision "$2" 2>&1 | grep -E "^step|rror"
done
python3 - "$T" <<'EOF'
import sys, torch
from safetensors.torch import load_file
t = sys.argv[1]
ref = load_file(f"{t}/cpu-f32/model.safetensors")
for run in ["cuda-f32", "cuda-bf16"]:
    got = load_file(f"{t}/{run}/model.safetensors")
    for part, keep in [("decoder", lambda n: not n.startswith("visual.")), ("visual.*", lambda n: n.startswith("visual."))]:
        names = [n for n in ref if keep(n)]
        a = torch.cat([got[n].double().flatten() for n in names])
        b = torch.cat([ref[n].double().flatten() for n in names])
        print(f"{run} vs cpu, {part}: rel L2 {float((a - b).norm() / b.norm()):.3e} ({len(names)} tensors)")
EOF
