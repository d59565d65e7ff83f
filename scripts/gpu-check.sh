#!/usr/bin/env bash
# GPU check: the kernel equivalence suites on the real GPU (kernels_vs_cpu, tensor_core,
# flash_attention, rl_kernels, vision_ops), the kernel benches (f32 kernels, bf16 cuBLAS GEMM at 4096^3 and the model's
# shapes, flash attention forward/backward/decode), PyTorch doing the same GEMMs and causal
# attention (scaled_dot_product_attention, bf16) in the same run, and a table (kernel, max
# error, time, rate, fraction of roofline, PyTorch time, speed vs PyTorch) written to
# docs/gpu-check.md and to the end of the output; the RL kernels (GRPO loss, advantages, VAS
# scores) against PyTorch eager in docs/rl-kernels-gpu.md. The suites also run under compute-sanitizer
# (memcheck, racecheck, synccheck, initcheck), one verdict per tool in a second table. GPU tests
# are #[ignore]d where there is no GPU, so they run here with --include-ignored.
# Then SFT training steps at Qwen2.5-0.5B widths (examples/device_step.rs): --precision bf16
# vs f32, bf16 with the caching allocator off (MMR1_CACHING_ALLOCATOR=0) and bf16 without the
# weights' bf16 shadows (MMR1_BF16_SHADOWS=0, every GEMM converts both operands), bf16 with
# activation recomputation (--recompute on), and Qwen2.5-3B at full depth with recomputation:
# step time, tokens/s, peak device memory, fresh allocations per steady step (a third table).
#
#   scripts/gpu-check.sh                    # build here, then run
#   scripts/gpu-check.sh --build-only DIR   # build release binaries into DIR (no GPU needed)
#   scripts/gpu-check.sh --prebuilt DIR     # run binaries built elsewhere (DIR/kernels_vs_cpu,
#                                           # DIR/tensor_core, DIR/flash_attention, DIR/rl_kernels,
#                                           # DIR/kernels, DIR/rl_bench, DIR/device_step)
#
# SANITIZERS="memcheck racecheck" picks tools (SANITIZERS="" skips them); SANITIZER_TIMEOUT
# (seconds, default 1200) bounds each tool's run. The exit code is non-zero when a suite fails
# or a sanitizer reports an error. STEP_LAYERS (default 24), STEP_SEQS x STEP_LEN (default
# 4 x 1024 tokens) and STEP_TIMEOUT (seconds per run, default 300) size the training steps.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="" dir=""
case "${1:-}" in
    --prebuilt | --build-only) mode="$1" dir="$2" ;;
esac
log=${GPU_CHECK_LOG:-target/gpu-check}
mkdir -p "$log" docs target
suites="kernels_vs_cpu tensor_core flash_attention rl_kernels vision_ops"

# Executable of a cargo target, from cargo's JSON messages.
exe_of() {
    python3 -c 'import sys,json;[print(j["executable"]) for l in sys.stdin for j in [json.loads(l)] if j.get("executable") and j["target"]["name"]==sys.argv[1]]' "$1"
}
if [ "$mode" != "--prebuilt" ]; then
    [ -d .nvrtc ] || ./scripts/setup-nvrtc.sh >/dev/null
    eval "$(./scripts/setup-nvrtc.sh)"
    cargo build --release --features cuda --tests --benches
    declare -A exe
    for t in $suites; do
        exe[$t]=$(cargo test --release --features cuda --test "$t" --no-run --message-format=json 2>/dev/null | exe_of "$t")
    done
    exe[kernels]=$(cargo bench --features cuda --bench kernels --no-run --message-format=json 2>/dev/null | exe_of kernels)
    exe[rl_bench]=$(cargo bench --features cuda --bench rl_kernels --no-run --message-format=json 2>/dev/null | exe_of rl_kernels)
    cargo build --release --features cuda --example device_step
    exe[device_step]=target/release/examples/device_step
    if [ "$mode" = "--build-only" ]; then
        mkdir -p "$dir"
        for t in $suites kernels rl_bench device_step; do cp "${exe[$t]}" "$dir/$t"; done
        echo "built into $dir: $suites kernels rl_bench device_step"
        exit 0
    fi
else
    declare -A exe
    for t in $suites kernels rl_bench device_step; do exe[$t]="$dir/$t"; done
fi
gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1 || echo unknown)
echo "== GPU: $gpu"

# Release binaries: wait for every launch, so a fault is reported with its kernel's name.
export MMR1_SYNC_LAUNCHES=1

echo "== equivalence suites on the GPU"
: > "$log/tests.log"
trc=0
set +e
for t in $suites; do
    if [ -x "${exe[$t]}" ]; then
        "${exe[$t]}" gpu:: --include-ignored --test-threads=1 --nocapture >> "$log/tests.log" 2>&1 || trc=1
    else
        echo "MISSING: ${exe[$t]}" | tee -a "$log/tests.log"; trc=1
    fi
done
set -e
grep -E "test result|SKIPPED|MISSING|panicked|relative L2 error .* >" "$log/tests.log" || true

# compute-sanitizer over the same suite, one tool at a time. A verdict per tool goes to
# $log/sanitizers.tsv (tool, verdict, errors, exit code, log) for the table below.
echo "== compute-sanitizer on the equivalence suites"
san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1 || true)
: > "$log/sanitizers.tsv"
src=0
for tool in ${SANITIZERS-memcheck racecheck synccheck initcheck}; do
    slog="$log/sanitizer-$tool.log"
    if [ -z "$san" ]; then
        printf '%s\t%s\t-\t-\t-\n' "$tool" "not run: compute-sanitizer not found" >> "$log/sanitizers.tsv"
        continue
    fi
    extra=""
    case "$tool" in
        racecheck) extra="--racecheck-report all" ;;      # hazards and analysis summary
        initcheck) extra="--track-unused-memory no" ;;    # uninitialized reads only
    esac
    echo "-- $tool"
    set +e
    # shellcheck disable=SC2086
    timeout "${SANITIZER_TIMEOUT:-1200}" "$san" --tool "$tool" $extra --error-exitcode 86 --target-processes all \
        bash -c 'rc=0; for x in "$@"; do "$x" gpu:: --include-ignored --test-threads=1 || rc=$?; done; exit $rc' _ \
        $(for s in $suites; do echo "${exe[$s]}"; done) > "$slog" 2>&1
    rc=$?
    set -e
    errors=$(grep -Eo "ERROR SUMMARY: [0-9]+" "$slog" | tail -1 | grep -Eo "[0-9]+$" || true)
    tests_ok=$(grep -Ec "^test result: ok" "$slog" || true)  # one line per suite
    if [ "$rc" = 124 ]; then
        verdict="TIMEOUT after ${SANITIZER_TIMEOUT:-1200} s"
    elif [ -z "$errors" ]; then
        verdict="NO SUMMARY (sanitizer did not finish; see log)"
    elif [ "$errors" != 0 ]; then
        verdict="FAIL: $errors errors"
    elif [ "$rc" != 0 ] || [ "$tests_ok" = 0 ]; then
        verdict="clean, but the suite failed under the tool (exit $rc)"
    else
        verdict="PASS: 0 errors"
    fi
    case "$verdict" in PASS*) ;; *) src=1 ;; esac
    echo "   $verdict"
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result" "$slog" | tail -3 || true
    printf '%s\t%s\t%s\t%s\t%s\n' "$tool" "$verdict" "${errors:--}" "$rc" "$slog" >> "$log/sanitizers.tsv"
done

echo "== kernel benches"
set +e
"${exe[kernels]}" --bench > "$log/bench.log" 2>&1
brc=$?
set -e
grep -E "^(device|[a-z_]+/|\s+time:|\s+thrpt:)" "$log/bench.log" | head -160 || true

echo "== training steps: --precision bf16 vs f32, caching allocator on vs off, shadows, recompute"
# One JSON line per run in $log/steps.jsonl (an {"error": ...} line when a run fails). Launches
# are not synchronized here (timings), unlike the suites above.
: > "$log/steps.jsonl"
: > "$log/steps.log"
# The last two runs: activation recomputation on at 0.5B widths (memory and time against the
# first run), and Qwen2.5-3B at full depth with recomputation (docs/perf.md estimates it fits
# 80 GB only with it; without, ~78 GiB: at the edge).
for run in "bf16 1 1 off qwen2.5-0.5b ${STEP_LAYERS:-24}" "f32 1 1 off qwen2.5-0.5b ${STEP_LAYERS:-24}" \
    "bf16 0 1 off qwen2.5-0.5b ${STEP_LAYERS:-24}" "bf16 1 0 off qwen2.5-0.5b ${STEP_LAYERS:-24}" \
    "bf16 1 1 on qwen2.5-0.5b ${STEP_LAYERS:-24}" "bf16 1 1 on qwen2.5-3b 36"; do
    read -r prec cache shadows recompute shape layers <<< "$run"
    echo "-- $shape x $layers layers, precision $prec, caching allocator $cache, bf16 shadows $shadows, recompute $recompute" | tee -a "$log/steps.log"
    set +e
    out=$(env -u MMR1_SYNC_LAUNCHES MMR1_CACHING_ALLOCATOR="$cache" MMR1_BF16_SHADOWS="$shadows" \
        timeout "${STEP_TIMEOUT:-300}" \
        "${exe[device_step]}" --device cuda --precision "$prec" --shape "$shape" \
        --layers "$layers" --seqs "${STEP_SEQS:-4}" --len "${STEP_LEN:-1024}" --steps 6 \
        --recompute "$recompute" 2>> "$log/steps.log")
    rc=$?
    set -e
    if [ "$rc" = 0 ] && [ -n "$out" ]; then
        echo "$out" | tail -1 >> "$log/steps.jsonl"
    else
        printf '{"error": "exit %s", "precision": "%s", "caching": %s, "bf16_shadows": %s, "recompute": %s, "shape": "%s", "layers": %s}\n' \
            "$rc" "$prec" \
            "$([ "$cache" = 1 ] && echo true || echo false)" \
            "$([ "$shadows" = 1 ] && echo true || echo false)" \
            "$([ "$recompute" = on ] && echo true || echo false)" "$shape" "$layers" >> "$log/steps.jsonl"
    fi
    tail -2 "$log/steps.log"
done

echo "== PyTorch on the same shapes (bf16: matmul, scaled_dot_product_attention causal)"
set +e
python3 - "$log/torch.json" <<'PY' 2>&1 | tail -20
# Same ids, shapes and FLOP counts as benches/kernels.rs. Median of CUDA-event timings.
import json, sys
try:
    import torch
    import torch.nn.functional as F
except Exception as e:  # no torch: the table says so
    json.dump({"error": f"no torch: {e}"}, open(sys.argv[1], "w")); print("no torch:", e); sys.exit(0)
dev, bf = "cuda", torch.bfloat16
def bench(f, iters=20):
    for _ in range(3): f()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); f(); e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e) * 1e-3)
    return sorted(ts)[len(ts) // 2]
res = {"torch": torch.__version__, "device": torch.cuda.get_device_name()}
t, d, ffn, vocab = 4096, 1536, 8960, 151936
for name, m, n, k, ta, tb in [("4096x4096x4096_NT", 4096, 4096, 4096, 0, 1), ("qkv_4096x2048x1536_NT", t, 2048, d, 0, 1),
        ("o_4096x1536x1536_NT", t, d, d, 0, 1), ("up_4096x8960x1536_NT", t, ffn, d, 0, 1),
        ("down_4096x1536x8960_NT", t, d, ffn, 0, 1), ("lmhead_4096x151936x1536_NT", t, vocab, d, 0, 1),
        ("up_dx_4096x1536x8960_NN", t, d, ffn, 0, 0), ("up_dw_8960x1536x4096_TN", ffn, d, t, 1, 0)]:
    a = torch.randn((k, m) if ta else (m, k), device=dev, dtype=bf)
    b = torch.randn((n, k) if tb else (k, n), device=dev, dtype=bf)
    a, b = (a.t() if ta else a), (b.t() if tb else b)
    res[f"gemm_bf16_{name}"] = bench(lambda: torch.matmul(a, b))
    del a, b
for ns, ln, h, hk in [(2, 4096, 16, 16), (4, 1024, 12, 2)]:
    q = torch.randn(ns, h, ln, 128, device=dev, dtype=bf, requires_grad=True)
    k = torch.randn(ns, hk, ln, 128, device=dev, dtype=bf, requires_grad=True)
    v = torch.randn(ns, hk, ln, 128, device=dev, dtype=bf, requires_grad=True)
    kw = {"is_causal": True}
    if hk != h: kw["enable_gqa"] = True  # torch >= 2.5
    try:
        o = F.scaled_dot_product_attention(q, k, v, **kw)
    except TypeError as e:
        print("skipping GQA sdpa:", e); continue
    do = torch.randn_like(o)
    tag = f"{ns}x{ln}_h{h}kv{hk}_d128"
    tf = bench(lambda: F.scaled_dot_product_attention(q, k, v, **kw))
    tfb = bench(lambda: torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, **kw), (q, k, v), do))
    res[f"flash_fwd_{tag}"], res[f"flash_bwd_{tag}"] = tf, tfb - tf
json.dump(res, open(sys.argv[1], "w"), indent=1)
print(json.dumps(res, indent=1))
PY
set -e

echo "== RL kernels (benches/rl_kernels.rs) and PyTorch eager on the same work (benches/rl_kernels_torch.py)"
set +e
"${exe[rl_bench]}" > "$log/rl-bench.log" 2>&1
cat "$log/rl-bench.log"
python3 benches/rl_kernels_torch.py "$log/rl-torch.json" 2>&1 | tail -5
python3 - "$log" "$gpu" <<'PY'
# docs/rl-kernels-gpu.md: each RL kernel's median time, bandwidth, fraction of HBM and speed
# against PyTorch eager doing the same work (loss + backward; advantages).
import json, os, sys
log, gpu = sys.argv[1], sys.argv[2]
hbm = 4.8e12 if "H200" in gpu else 3.35e12
rows = [json.loads(l.split(" ", 1)[1]) for l in open(os.path.join(log, "rl-bench.log")) if l.startswith("RLBENCH ")]
try:
    torch_res = json.load(open(os.path.join(log, "rl-torch.json")))
except Exception as e:
    torch_res = {"error": str(e)}
out = ["# RL kernels on the GPU", "", f"GPU: {gpu}. PyTorch: {torch_res.get('torch', torch_res.get('error', '?'))} (eager, f32).",
       "Bytes: the minimum a call must move (inputs read once, outputs written once).", "",
       "| kernel | time | bandwidth | fraction of HBM | PyTorch eager | speed vs PyTorch |", "| --- | --- | --- | --- | --- | --- |"]
for r in rows:
    t = torch_res.get(r["id"])
    bw = r["bytes"] / r["s"] if r["bytes"] else 0
    out.append(f"| {r['id']} | {r['s']*1e6:.1f} us | {bw/1e9:.0f} GB/s | {bw/hbm:.0%} | "
               + ("-" if not isinstance(t, float) else f"{t*1e6:.1f} us") + " | "
               + ("-" if not isinstance(t, float) else f"{t/r['s']:.1f}x") + " |")
open("docs/rl-kernels-gpu.md", "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
set -e

python3 - "$log" "$gpu" "$trc" "$brc" <<'PY'
import json, re, sys, os, glob
log, gpu, trc, brc = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
san = [l.rstrip("\n").split("\t") for l in open(os.path.join(log, "sanitizers.tsv")) if l.strip()]
try:
    torch_res = json.load(open(os.path.join(log, "torch.json")))
except Exception as e:
    torch_res = {"error": str(e)}
hbm = 4.8e12 if "H200" in gpu else 3.35e12           # datasheet HBM bandwidth
f32_peak = 67e12                                      # H100/H200 SXM FP32 (non-tensor)
bf16_peak = 990e12                                    # H100 SXM dense bf16
# max error per op family, from the suite's ERR lines
errs = {}
for l in open(os.path.join(log, "tests.log"), errors="replace"):
    m = re.search(r"ERR (\S+).*: ([0-9.e+-]+)$", l)
    if m:
        k = m.group(1).replace("_backward", "")
        errs[k] = max(errs.get(k, 0.0), float(m.group(2)))
rows = []
meta = [json.loads(l) for l in open("target/kernel-bench-meta.jsonl")] if os.path.exists("target/kernel-bench-meta.jsonl") else []
for mtd in meta:
    found = glob.glob(os.path.join("target/criterion", "*", mtd["id"], "new/estimates.json"))
    if not found:
        continue
    est = found[0]
    ns = json.load(open(est))["median"]["point_estimate"]
    name = mtd["id"]
    fam = name.split("_")[0] if name.startswith(("matmul", "gemm")) else name
    fam = {"gemm": "gemm_f32", "sum": "sum_squares"}.get(fam, fam)
    if name.startswith("gemm_bf16"):
        fam = "gemm_bf16"
    elif name.startswith("flash_decode"):
        fam = "decode"
    elif name.startswith("flash"):
        fam = "flash"
    err = errs.get(fam.replace("_backward", ""), None)
    if mtd["bytes"]:
        rate = mtd["bytes"] / (ns * 1e-9)
        perf, frac = f"{rate/1e9:.0f} GB/s", f"{rate/hbm:.0%} of HBM"
    else:
        rate = mtd["flops"] / (ns * 1e-9)
        perf, frac = f"{rate/1e12:.1f} TFLOP/s", f"{rate/f32_peak:.0%} of f32 / {rate/bf16_peak:.1%} of bf16"
    tt = torch_res.get(name)
    tcol = "-" if not isinstance(tt, float) else f"{tt*1e6:.1f} us"
    ratio = "-" if not isinstance(tt, float) else f"{tt*1e9/ns:.2f}x"
    rows.append((name, "-" if err is None else f"{err:.1e}", f"{ns/1e3:.1f} us", perf, frac, tcol, ratio))
out = [f"# GPU check", "", f"GPU: {gpu}. Suite exit code {trc}, bench exit code {brc}.",
       f"Roofline: HBM {hbm/1e12:.2f} TB/s (datasheet), FP32 {f32_peak/1e12:.0f} TFLOP/s, bf16 dense {bf16_peak/1e12:.0f} TFLOP/s.",
       "Max error: largest relative L2 error against the CPU reference over the suite's shapes for that op, forward and backward together (f32 storage; '-': checked bit-exactly or by another test).",
       "Times: median per call, criterion, calls queued back to back between synchronizations; host-side id uploads included.", "",
       f"PyTorch: {torch_res.get('torch', torch_res.get('error', '?'))}, same shapes in bf16 (torch.matmul; scaled_dot_product_attention causal, backward = forward+backward minus forward); speed = PyTorch time / our time (> 1: faster than PyTorch). Our attention inputs are f32 converted to bf16 in the tile loads (f32 storage), PyTorch's are bf16.",
       "", "| kernel | max error | time | rate | fraction of roofline | PyTorch | speed vs PyTorch |",
       "| --- | --- | --- | --- | --- | --- | --- |"]
out += [f"| {' | '.join(r)} |" for r in rows]
steps = [json.loads(l) for l in open(os.path.join(log, "steps.jsonl")) if l.strip()] if os.path.exists(os.path.join(log, "steps.jsonl")) else []
gib = lambda b: "-" if b is None else f"{b / 2**30:.2f} GiB"
out += ["", "SFT training steps (examples/device_step.rs; Qwen2.5 widths, random weights, one packed batch; "
        "forward, log-probs, cross-entropy, backward, clip, AdamW; median of the steps after the first). "
        "MFU: 6 x parameters x tokens per second over the bf16 dense peak (the f32 row too). "
        "Fresh allocations: device allocations per steady step (0: all from the cache).", "",
        "| shape x layers | precision | caching allocator | bf16 weight shadows | recompute | tokens | step (median) | first step | tokens/s | MFU (bf16 peak) | peak in use | peak reserved | fresh allocs / steady step | loss first -> last |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
for r in steps:
    if "error" in r:
        out.append(f"| {r.get('shape')} x {r.get('layers')} | {r.get('precision')} | {'on' if r.get('caching') else 'off'} | {'on' if r.get('bf16_shadows') else 'off'} | {'on' if r.get('recompute') else 'off'} | failed: {r['error']} (see steps.log) | - | - | - | - | - | - | - | - |")
        continue
    out.append(f"| {r.get('shape')} x {r.get('layers')} | {r['precision']} | {'on' if r['caching'] else 'off'} | {'on' if r.get('bf16_shadows') else 'off'} | {'on' if r.get('recompute') else 'off'} | {r['tokens']} | {r['step_s_median']*1e3:.0f} ms | {r['step_s_first']*1e3:.0f} ms | "
               f"{r['tokens_per_s']:.0f} | {r['model_tflops']*1e12/bf16_peak:.1%} | {gib(r['peak_in_use_bytes'])} | {gib(r['peak_reserved_bytes'])} | "
               f"{r['fresh_allocs_per_steady_step']:.1f} | {r['loss_first']:.4f} -> {r['loss_last']:.4f} |")
if not steps:
    out.append("| - | - | - | - | - | not run | - | - | - | - | - | - | - | - |")
out += ["", "compute-sanitizer over the equivalence suites (every kernel, every shape of the suites):", "",
        "| tool | verdict | errors | exit code | log |", "| --- | --- | --- | --- | --- |"]
out += [f"| {' | '.join(r)} |" for r in san] or ["| - | not run (SANITIZERS empty) | - | - | - |"]
text = "\n".join(out) + "\n"
open("docs/gpu-check.md", "w").write(text)
print(text)
PY
if [ "$trc" != 0 ]; then exit "$trc"; fi
exit $src
