"""16-bit PNGs as transformers' Qwen2.5-VL image processor sees them, for
tests/suite/vl_preprocess.rs: PIL opens the file and `convert_to_rgb` (transformers'
image_transforms: RGBA, composited onto white, then RGB) makes the 8-bit RGB the processor
resizes. Pillow keeps the high byte of each 16-bit sample (rawmodes "LA;16B", "RGB;16B",
"RGBA;16B"), except 16-bit grayscale, which it opens as "I;16" and clips to 255 on conversion.

Writes tests/fixtures/png16/gray.png, gray_alpha.png, rgb.png, rgba.png (16-bit, written here
with zlib, one filter-0 row at a time) and tests/fixtures/png16/rgb.safetensors: `<name>`
[h, w, 3] u8, PIL's result for each; the Pillow version in the metadata.

Rerun from the repository root (numpy, pillow, safetensors):
    python3 scripts/make_golden_png16.py
Written with pillow 13.0.0, numpy 2.4.6, safetensors 0.8.0.
"""
import os
import struct
import zlib

import numpy as np
import PIL
from PIL import Image
from safetensors.numpy import save_file

OUT = "tests/fixtures/png16"
# name -> PNG color type, channels
KINDS = {"gray": (0, 1), "gray_alpha": (4, 2), "rgb": (2, 3), "rgba": (6, 4)}


def write_png16(path, samples, color_type):
    h, w = samples.shape[:2]
    rows = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def convert_to_rgb(im):
    # transformers.image_transforms.convert_to_rgb
    if im.mode == "RGB":
        return im
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20261128)
    want = {}
    for name, (color_type, channels) in KINDS.items():
        s = rng.integers(0, 65536, size=(5, 7, channels), dtype=np.uint16)
        # Small values too, where clipping and the high byte part ways (0..600 around 255).
        s[::2] = rng.integers(0, 600, size=s[::2].shape, dtype=np.uint16)
        path = f"{OUT}/{name}.png"
        write_png16(path, s if channels > 1 else s[:, :, 0], color_type)
        im = Image.open(path)
        im.load()
        want[name] = np.ascontiguousarray(np.asarray(convert_to_rgb(im)))
        print(name, im.mode, want[name].shape)
    save_file(want, f"{OUT}/rgb.safetensors", metadata={"pillow": PIL.__version__})


if __name__ == "__main__":
    main()
