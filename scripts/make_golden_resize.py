"""PIL's bicubic resize on 8-bit RGB, for tests/suite/vl_preprocess.rs: seeded noise images
resized by `PIL.Image.resize(..., Image.BICUBIC)`, covering both orders of Pillow 13's two
passes (vertical first when the height shrinks by more than twice what the width shrinks by)
and the boundary between them. Writes tests/fixtures/pil_resize.safetensors:
`in.{i}` [h, w, 3] u8, `out.{i}` [H, W, 3] u8, and the Pillow version in the metadata.

Rerun from the repository root (numpy, pillow, safetensors):
    python3 scripts/make_golden_resize.py
Written with pillow 13.0.0, numpy 2.4.6, safetensors 0.8.0.
"""
import numpy as np
import PIL
from PIL import Image
from safetensors.numpy import save_file

# (w, h) -> (W, H); dw = w - W, dh = h - H; vertical first iff dh > 0 and dh > 2 dw.
CASES = [
    ((24, 80), (14, 52)),  # dh 28 > 2 * 10: vertical first
    ((60, 20), (63, 18)),  # width grows, height shrinks: vertical first
    ((91, 37), (96, 32)),  # vertical first (a probe's case: 2e-3 off on log-probs before)
    ((37, 91), (32, 96)),  # height grows: horizontal first
    ((60, 20), (38, 12)),  # horizontal first
    ((20, 50), (20, 25)),  # height only
    ((50, 20), (25, 20)),  # width only
    ((30, 30), (56, 56)),  # both grow: horizontal first
    ((30, 50), (20, 30)),  # dh 20 == 2 * dw: horizontal first (the boundary)
    ((30, 51), (20, 30)),  # dh 21 > 20: vertical first
]


def main():
    rng = np.random.default_rng(20261128)
    tensors = {}
    for i, ((w, h), (W, H)) in enumerate(CASES):
        a = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        out = np.asarray(Image.fromarray(a, "RGB").resize((W, H), Image.BICUBIC))
        assert out.shape == (H, W, 3)
        tensors[f"in.{i}"] = a
        tensors[f"out.{i}"] = np.ascontiguousarray(out)
    save_file(tensors, "tests/fixtures/pil_resize.safetensors", metadata={"pillow": PIL.__version__})
    print(f"{len(CASES)} cases, pillow {PIL.__version__}")


if __name__ == "__main__":
    main()
