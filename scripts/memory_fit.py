#!/usr/bin/env python3
"""Estimated peak device memory of one training step of this engine for the published
Qwen2.5 shapes (init-model's table, src/commands/init_model.rs), with and without activation
recomputation, and the largest micro-batch (tokens) that fits a budget. An ESTIMATE: it counts
the buffers the code plans (src/model/forward.rs `alloc_acts_with`, src/model/backward.rs
`alloc_grad_scratch`, the optimizer), with the per-token activation bytes that
tests/suite/recompute.rs measures through the emulator's allocator (one layer in f32: 4 * (5d +
2kvd + h + 2 + 3i) bytes per token, asserted there exactly), as a bf16 step on a GPU stores
them (xn1, xn2, act and the backward's dgate, dup as bf16 alone; att, q, k, v, dq, dk, dv
with a bf16 copy). Not modelled: the CUDA context and cuBLAS
workspace, allocator rounding (size classes round up by at most 12.5%) and fragmentation;
the budget keeps HEADROOM_GIB for them.

    python3 scripts/memory_fit.py [--budget-gib 79.6] [--tokens 4096,16384]
    python3 scripts/memory_fit.py --world 8          # data parallel: ZeRO 0/1/2 per rank

The default budget is what an 80 GB H100 shows (nvidia-smi: 81,559 MiB).

With --world N the model state per rank follows src/dist/zero.rs `bytes_per_param` (the two
must agree; its unit test pins the same numbers): as built, f32 weights 4 + bf16 shadows 2 +
AdamW m, v 8 (8/N at ZeRO 1 and 2) + the f32 gradient: whole (4) at ZeRO 0 and 1 (and at
ZeRO 2 with dist.grad_buckets = false), and at ZeRO 2 (buckets, the default) the rank's
block 4/N plus the buckets in flight at the peak, 4 x in_flight(shape) (src/model/
grad_hook.rs `bucketed_grad_peak`: untied head, the largest of lm_head + final norm, one
layer, the embedding table; tied, embedding + final norm + one layer); and the bf16-weights
layout that is NOT built (bf16 weights 2, f32 master and moments 12/N, the gradient as
above). Qwen2.5-VL-7B is the 7B language model plus its vision tower (counted as state; the
vision activations of a few images are small next to 16K text tokens and are not counted;
ZeRO is refused for VL runs today, so its ZeRO rows are what the layout would give, the
tower's gradient counted as one more bucket).
"""
import argparse

# (hidden, intermediate, layers, heads, kv heads, vocab, tied): init_model.rs's table.
SHAPES = {
    "qwen2.5-0.5b": (896, 4864, 24, 14, 2, 151936, True),
    "qwen2.5-1.5b": (1536, 8960, 28, 12, 2, 151936, True),
    "qwen2.5-3b": (2048, 11008, 36, 16, 2, 151936, True),
    "qwen2.5-7b": (3584, 18944, 28, 28, 4, 152064, False),
}
# Qwen2.5-VL-7B's vision tower (config.json vision_config): depth 32, hidden 1280, SwiGLU
# intermediate 3420, patch 14 x 14 x temporal 2 x 3 channels, 2x2 merger to 3584.
def vision_params(depth=32, d=1280, i=3420, patch=14, tp=2, out=3584, merge=2):
    block = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 3 * d * i + 2 * i + d
    m = d * merge * merge
    merger = d + (m * m + m) + (m * out + out)
    return patch * patch * tp * 3 * d + depth * block + merger


VL = {"qwen2.5-vl-7b": "qwen2.5-7b"}
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
    # LayerActs per token as a bf16 step on a GPU stores them (the default): f32 values, but
    # xn1, xn2 and act as bf16 alone (`operand_buf`, src/backend/cuda/bf16_operands.rs), att
    # with its 2-byte shadow (the o projection's operand) and q, k, v with theirs (the flash
    # kernels' inputs). The f32 layout tests/suite/recompute.rs measures is
    # 4 * (5d + 2kvd + h + 2 + 3i).
    layer = 4 * (5 * d + 2 * kvd + h + 2 + 3 * i) - 2 * (2 * d + i) + 2 * (2 * d + 2 * kvd)
    kept = 4 * d * (L + 1) + layer * (1 if recompute else L) + 4 * (2 * d + 1)
    # GradScratch's [t, .] buffers: dgate and dup bf16 alone, dq, dk, dv with a bf16 copy.
    scratch = 4 * (5 * d + 2 * kvd + i) + 2 * (2 * i + d + 2 * kvd)
    transient = 2 * 2 * (i + d)  # bf16 copies of the two operands of a [t, i] x [i, d] GEMM
    # Head chunks of at most 256M logits (src/model/forward.rs `logit_chunk_rows`): the
    # backward's logits and d logits (with its bf16 copy) beside the forward's; an upper bound
    # for batches shorter than one chunk.
    chunk = max(2**28 // v, 1)
    fixed = 4 * chunk * (2 * v + 2 * d + 2) + 4 * chunk * (v + d + 2) + 2 * chunk * v
    return state, kept + scratch + transient, fixed


def in_flight(shape, tower=0):
    """Fraction of the parameters whose f32 gradients a bucketed ZeRO-2 backward holds at its
    peak (src/model/grad_hook.rs `bucketed_grad_peak`; `tower`: a vision tower as one more
    bucket)."""
    d, i, L, h, kv, v, tied = shape
    kvd = kv * (d // h)
    layer = d * d + d + 2 * (d * kvd + kvd) + d * d + 3 * d * i + 2 * d
    peak = v * d + d + layer if tied else max(v * d + d, layer, v * d)
    return max(peak, tower) / (params(*shape) + tower)


def state_per_param(world, zero, layout, flight):
    """src/dist/zero.rs bytes_per_param: layout "built" (with bf16 shadows), "noshadow"
    (MMR1_BF16_SHADOWS=0) or "bf16" (bf16 weights, not built); ZeRO 2 with gradient buckets
    (`flight`: in_flight's fraction)."""
    sharded = lambda b, on: b / world if on else b
    grads = 4 / world + 4 * flight if zero == 2 else 4
    if layout == "bf16":
        return 2 + sharded(4, zero >= 1) + sharded(8, zero >= 1) + grads
    return 4 + (2 if layout == "built" else 0) + sharded(8, zero >= 1) + grads


def data_parallel(a, budget):
    print(f"{a.world} ranks, budget per rank {budget / GIB:.1f} GiB; max tokens per micro-batch "
          "(recompute off / on), 'none' when the state alone does not fit")
    print("ZeRO 2 = gradients reduce-scattered in buckets during the backward (the default); "
          "ZeRO 2 with dist.grad_buckets = false has ZeRO 1's numbers")
    print("| shape | params | layout | ZeRO | state B/param | state GiB | max tokens off / on |")
    print("|---|---|---|---|---|---|---|")
    shapes = dict(SHAPES)
    shapes.update({k: SHAPES[v] for k, v in VL.items()})
    for name, shape in shapes.items():
        if name not in ("qwen2.5-3b", "qwen2.5-7b", "qwen2.5-vl-7b"):
            continue
        tower = vision_params() if name in VL else 0
        n = params(*shape) + tower
        flight = in_flight(shape, tower)
        _, off_tok, fixed = step_bytes(shape, 1, False)
        _, on_tok, _ = step_bytes(shape, 1, True)
        names = {"built": "as built", "noshadow": "as built, MMR1_BF16_SHADOWS=0",
                 "bf16": "bf16 weights (not built)"}
        for layout, lay in names.items():
            for zero in (0, 1, 2):
                b = state_per_param(a.world, zero, layout, flight)
                st = b * n
                room = budget - st - fixed
                fit = [f"{int(room // per):,}" if room > 0 else "none" for per in (off_tok, on_tok)]
                print(f"| {name} | {n / 1e9:.2f} B | {lay} | {zero} | {b:.2f} | {st / GIB:.1f} |"
                      f" {fit[0]} / {fit[1]} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget-gib", type=float, default=81559 / 1024)
    ap.add_argument("--tokens", default="4096,16384")
    ap.add_argument("--world", type=int, default=0, help="ranks (GPUs) of a data-parallel run")
    a = ap.parse_args()
    if a.world > 0:
        return data_parallel(a, (a.budget_gib - HEADROOM_GIB) * GIB)
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
