#!/usr/bin/env bash
# GPU check: builds with --features cuda (release), runs the kernel equivalence suite on the
# real GPU (its tests are #[ignore]d where there is no GPU: run here with --include-ignored),
# runs the same suite under compute-sanitizer (memcheck, racecheck, synccheck, initcheck), runs
# the kernel benches, and writes two tables (sanitizer verdicts; kernel, max error, time, GB/s
# or TFLOP/s, fraction of roofline) to docs/gpu-check.md and to the end of the output.
#
#   scripts/gpu-check.sh                # build here, then run
#   scripts/gpu-check.sh --prebuilt DIR # run binaries built elsewhere (DIR/kernels_vs_cpu, DIR/kernels)
#
# SANITIZERS="memcheck racecheck" picks tools (SANITIZERS="" skips them); SANITIZER_TIMEOUT
# (seconds, default 1200) bounds each tool's run. The exit code is non-zero when the suite fails
# or a sanitizer reports an error.
set -euo pipefail
cd "$(dirname "$0")/.."
prebuilt=""
if [ "${1:-}" = "--prebuilt" ]; then prebuilt="$2"; fi
log=${GPU_CHECK_LOG:-target/gpu-check}
mkdir -p "$log" docs target

if [ -z "$prebuilt" ]; then
    [ -d .nvrtc ] || ./scripts/setup-nvrtc.sh >/dev/null
    eval "$(./scripts/setup-nvrtc.sh)"
    cargo build --release --features cuda --tests --benches
    tests=$(cargo test --release --features cuda --test kernels_vs_cpu --no-run --message-format=json 2>/dev/null |
        python3 -c 'import sys,json;[print(j["executable"]) for l in sys.stdin for j in [json.loads(l)] if j.get("executable") and j["target"]["name"]=="kernels_vs_cpu"]')
    bench=$(cargo bench --features cuda --bench kernels --no-run --message-format=json 2>/dev/null |
        python3 -c 'import sys,json;[print(j["executable"]) for l in sys.stdin for j in [json.loads(l)] if j.get("executable") and j["target"]["name"]=="kernels"]')
else
    tests="$prebuilt/kernels_vs_cpu"
    bench="$prebuilt/kernels"
fi
gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1 || echo unknown)
echo "== GPU: $gpu"

# Release binaries: wait for every launch, so a fault is reported with its kernel's name.
export MMR1_SYNC_LAUNCHES=1

echo "== equivalence suite on the GPU"
set +e
"$tests" gpu:: --include-ignored --test-threads=1 --nocapture > "$log/tests.log" 2>&1
trc=$?
set -e
grep -E "test result|panicked|relative L2 error .* >" "$log/tests.log" || true

# compute-sanitizer over the same suite, one tool at a time. A verdict per tool goes to
# $log/sanitizers.tsv (tool, verdict, errors, exit code, log) for the table below.
echo "== compute-sanitizer on the kernel suite"
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
    timeout "${SANITIZER_TIMEOUT:-1200}" "$san" --tool "$tool" $extra --error-exitcode 86 \
        "$tests" gpu:: --include-ignored --test-threads=1 > "$slog" 2>&1
    rc=$?
    set -e
    errors=$(grep -Eo "ERROR SUMMARY: [0-9]+" "$slog" | tail -1 | grep -Eo "[0-9]+$" || true)
    tests_ok=$(grep -Ec "^test result: ok" "$slog" || true)
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
"$bench" --bench > "$log/bench.log" 2>&1
brc=$?
set -e
grep -E "^(device|[a-z_]+/|\s+time:|\s+thrpt:)" "$log/bench.log" | head -120 || true

python3 - "$log" "$gpu" "$trc" "$brc" <<'PY'
import json, re, sys, os, glob
log, gpu, trc, brc = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
san = [l.rstrip("\n").split("\t") for l in open(os.path.join(log, "sanitizers.tsv")) if l.strip()]
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
    err = errs.get(fam.replace("_backward", ""), None)
    if mtd["bytes"]:
        rate = mtd["bytes"] / (ns * 1e-9)
        perf, frac = f"{rate/1e9:.0f} GB/s", f"{rate/hbm:.0%} of HBM"
    else:
        rate = mtd["flops"] / (ns * 1e-9)
        perf, frac = f"{rate/1e12:.1f} TFLOP/s", f"{rate/f32_peak:.0%} of f32 / {rate/bf16_peak:.1%} of bf16"
    rows.append((name, "-" if err is None else f"{err:.1e}", f"{ns/1e3:.1f} us", perf, frac))
out = [f"# GPU check", "", f"GPU: {gpu}. Suite exit code {trc}, bench exit code {brc}.",
       f"Roofline: HBM {hbm/1e12:.2f} TB/s (datasheet), FP32 {f32_peak/1e12:.0f} TFLOP/s, bf16 dense {bf16_peak/1e12:.0f} TFLOP/s.",
       "Max error: largest relative L2 error against the CPU reference over the suite's shapes for that op, forward and backward together (f32 storage; '-': checked bit-exactly or by another test).",
       "Times: median per call, criterion, calls queued back to back between synchronizations; host-side id uploads included.", "",
       "| kernel | max error | time | rate | fraction of roofline |", "| --- | --- | --- | --- | --- |"]
out += [f"| {' | '.join(r)} |" for r in rows]
out += ["", "compute-sanitizer over the kernel equivalence suite (every kernel, every shape of the suite):", "",
        "| tool | verdict | errors | exit code | log |", "| --- | --- | --- | --- | --- |"]
out += [f"| {' | '.join(r)} |" for r in san] or ["| - | not run (SANITIZERS empty) | - | - | - |"]
text = "\n".join(out) + "\n"
open("docs/gpu-check.md", "w").write(text)
print(text)
PY
if [ "$trc" != 0 ]; then exit "$trc"; fi
exit $src
