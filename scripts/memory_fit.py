#!/usr/bin/env python3
"""Estimated peak device memory of one training step of this engine for the published
Qwen2.5 shapes (init-model's table, src/commands/init_model.rs), with and without activation
recomputation, and the largest micro-batch (tokens) that fits a budget. An ESTIMATE: it counts
the buffers the code plans (src/model/forward.rs `alloc_acts_with`, src/model/backward.rs
`alloc_grad_scratch`, the optimizer), with the per-token activation bytes that
tests/recompute.rs measures through the emulator's allocator (one layer: 4 * (5d + 2kvd + h
+ 2 + 3i) bytes per token, asserted there exactly). Not modelled: the CUDA context and cuBLAS
workspace, allocator rounding (size classes round up by at most 12.5%) and fragmentation;
the budget keeps HEADROOM_GIB for them.

    python3 scripts/memory_fit.py [--budget-gib 79.6] [--tokens 4096,16384]

The default budget is what an 80 GB H100 shows (nvidia-smi: 81,559 MiB).
"""
import argparse

# (hidden, intermediate, layers, heads, kv heads, vocab, tied): init_model.rs's table.
SHAPES = {
    "qwen2.5-0.5b": (896, 4864, 24, 14, 2, 151936, True),
    "qwen2.5-1.5b": (1536, 8960, 28, 12, 2, 151936, True),
    "qwen2.5-3b": (2048, 11008, 36, 16, 2, 151936, True),
    "qwen2.5-7b": (3584, 18944, 28, 28, 4, 152064, False),
}
HEADROOM_GIB = 2.0
GIB = 1024**3


def params(d, i, L, h, kv, v, tied):
    kvd = kv * (d // h)
    layer = d * d + d + 2 * (d * kvd + kvd) + d * d + 3 * d * i + 2 * d
    return v * d * (1 if tied else 2) + L * layer + d


def step_bytes(shape, t, recompute):
    """(state bytes, bytes per token, fixed bytes) of one step over t tokens."""
    d, i, L, h, kv, v, tied = shape
    kvd = kv * (d // h)
    n = params(*shape)
    # f32 weights, f32 gradients, f32 AdamW m and v, bf16 weight shadows (GPU default).
    state = (4 + 4 + 8 + 2) * n
    layer = 4 * (5 * d + 2 * kvd + h + 2 + 3 * i)  # LayerActs, per token
    kept = 4 * d * (L + 1) + layer * (1 if recompute else L) + 4 * (2 * d + 1)
    scratch = 4 * (5 * d + 2 * kvd + 3 * i)  # GradScratch's [t, .] buffers
    transient = 2 * 2 * (i + d)  # bf16 copies of the two operands of a [t, i] x [i, d] GEMM
    chunk = max(2**24 // v, 1)
    fixed = 4 * chunk * (2 * v + 2 * d + 2) + 4 * chunk * (v + d + 2)  # head chunks
    return state, kept + scratch + transient, fixed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget-gib", type=float, default=81559 / 1024)
    ap.add_argument("--tokens", default="4096,16384")
    a = ap.parse_args()
    budget = (a.budget_gib - HEADROOM_GIB) * GIB
    toks = [int(x) for x in a.tokens.split(",")]
    print(f"budget {a.budget_gib:.1f} GiB less {HEADROOM_GIB:g} GiB headroom = {budget / GIB:.1f} GiB")
    head = "| shape | params | state (18 B/param) | act. bytes/token off / on | max tokens off / on |"
    head += "".join(f" peak at {t} off / on |" for t in toks)
    print(head)
    print("|" + "---|" * (5 + len(toks)))
    for name, shape in SHAPES.items():
        n = params(*shape)
        row = f"| {name} | {n / 1e9:.2f} B |"
        st, off_tok, fixed = step_bytes(shape, 1, False)
        _, on_tok, _ = step_bytes(shape, 1, True)
        row += f" {st / GIB:.1f} GiB | {off_tok / 2**20:.2f} / {on_tok / 2**20:.2f} MiB |"
        fit = []
        for per in (off_tok, on_tok):
            room = budget - st - fixed
            fit.append(f"{int(room // per):,}" if room > 0 else "none")
        row += f" {fit[0]} / {fit[1]} |"
        for t in toks:
            cells = []
            for per in (off_tok, on_tok):
                tot = st + fixed + per * t
                cells.append(f"{tot / GIB:.1f}" + ("" if tot <= budget else " (no)"))
            row += f" {cells[0]} / {cells[1]} GiB |"
        print(row)


if __name__ == "__main__":
    main()
