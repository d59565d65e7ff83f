#!/usr/bin/env bash
# GPU check, in one call of a lent GPU machine: the kernel equivalence suites on the real GPU
# (files of tests/suite/, modules of the one test binary: kernels_vs_cpu, tensor_core,
# flash_attention, fused_layer_ops, rl_kernels, vision_ops, philox, sample_kernel,
# device_decode: decoding that samples on the device, against the host rule; decode_replay;
# kernels_real_vocab: log-probs at vocabulary 151,936; backward_golden: the whole model's
# gradients against PyTorch's goldens; nccl: the NCCL
# collective in a world of one against the plain path, op by op and on short sft/train runs);
# training steps at real
# Qwen2.5 shapes (examples/device_step.rs) side by side with PyTorch + transformers doing the same
# work in the same run (benches/train_step_gpu_torch.py: SDPA, bf16 autocast, fused AdamW):
# step time, tokens/s, MFU, peak memory, the log-prob pass, the largest shape that trains, rollout
# decoding against HF generate, one whole GRPO step (examples/grpo_step.rs) against PyTorch + HF
# generate doing the same work (benches/grpo_step_gpu_torch.py); the
# kernel benches (bf16 cuBLAS GEMM at 4096^3 and the model's shapes, flash attention fwd/bwd/decode,
# the f32 kernels) with PyTorch on the same GEMMs and attention; the RL kernels against PyTorch
# eager (docs/rl-kernels-gpu.md); the built-in demo on the GPU; then compute-sanitizer (memcheck,
# racecheck, synccheck, initcheck) over the suites with the time that is left. Tables go to
# docs/gpu-check.md and to the end of the output. GPU tests are #[ignore]d where there is no GPU,
# so they run here with --include-ignored.
#
#   scripts/gpu-check.sh                    # build here, then run
#   scripts/gpu-check.sh --build-only DIR   # build release binaries into DIR/bin.tar.gz (no GPU
#                                           # needed; stripped and packed to fit a device call)
#   scripts/gpu-check.sh --prebuilt DIR     # run binaries built elsewhere (DIR/bin.tar.gz or
#                                           # DIR/{suite,kernels,...,device_step,mmr1-fast})
#
# GPU_CHECK_BUDGET (seconds, default 0 = none) bounds the whole run: each section is cut to the
# time left, later sections are skipped and say so, and the tables are always written.
# GPU_CHECK_SECTIONS picks sections (suites steps benches torch rl demo sanitizers; default all;
# `rollout`, continuous batching of a 512-response rollout, and `ncu`, the RL kernels' own
# time and DRAM throughput, only when named),
# STEPS=quick the short list of training steps (STEPS=levers: each default against its switch;
# STEPS=recheck: a short follow-up; STEPS=wgmma: the wgmma flash kernels against the defaults),
# BENCH_FILTER a part of the kernel benches,
# SUITES the equivalence suites to run, SANITIZER_SUITES those under compute-sanitizer.
# SANITIZERS="memcheck racecheck" picks tools (SANITIZERS="" skips them). STEP_SEQS x STEP_LEN
# (default 4 x 1024 tokens) sizes the 0.5B steps. DEMO_PRECISIONS (default "bf16 f32") x DEMO_SEEDS
# (default "1 2 3") are the demo runs. GPU_CHECK_LOG (default target/gpu-check) holds
# the logs; GPU_CHECK_OUT, when set, receives the tables and a tarball of the logs.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="" dir=""
case "${1:-}" in
    --prebuilt | --build-only) mode="$1" dir="$2" ;;
esac
log=${GPU_CHECK_LOG:-target/gpu-check}
mkdir -p "$log" docs target
suites="kernels_vs_cpu tensor_core flash_attention fused_layer_ops rl_kernels vision_ops philox sample_kernel device_decode decode_replay kernels_real_vocab backward_golden nccl"
# compute-sanitizer runs the kernel suites, not NCCL's (its own kernels and proxy threads are
# not ours to check, and slow under the tools) nor the whole-model ones (the same kernels, at
# sizes the tools would take minutes over).
san_suites=${suites/ kernels_real_vocab backward_golden nccl/}
bins="suite kernels rl_bench device_step grpo_step mmr1-fast"
budget=${GPU_CHECK_BUDGET:-0}
t0=$SECONDS
# Seconds left of the budget (a large number without one).
left() { if [ "$budget" = 0 ]; then echo 100000; else echo $((budget - (SECONDS - t0))); fi; }
# cap N: the timeout for a section that wants N seconds, keeping RESERVE for the tables.
cap() { local l=$(($(left) - ${RESERVE:-20})); [ "$l" -lt "$1" ] && echo "$l" || echo "$1"; }
# enough N: whether N seconds are left for a section (else it is skipped, and says so).
enough() { if [ "$(cap "$1")" -ge "$1" ]; then return 0; fi; echo "SKIPPED (budget: $(left) s left, wanted $1): $2" | tee -a "$log/skipped.log"; return 1; }

# GPU_CHECK_SECTIONS picks sections (default all): suites steps benches torch rl demo sanitizers.
sections=" ${GPU_CHECK_SECTIONS:-suites steps benches torch rl demo sanitizers} "
want() { [[ "$sections" == *" $1 "* ]]; }
# A run of some sections writes its tables beside the logs, leaving docs/ to full runs.
if [ -n "${GPU_CHECK_SECTIONS:-}" ]; then report_dir=$log; else report_dir=docs; fi

# Executable of a cargo target of a kind (test, bench, example, bin), from cargo's JSON messages.
exe_of() {
    python3 -c 'import sys,json;[print(j["executable"]) for l in sys.stdin for j in [json.loads(l)] if j.get("executable") and j["target"]["name"]==sys.argv[1] and sys.argv[2] in j["target"]["kind"]]' "$1" "$2"
}
declare -A exe
if [ "$mode" != "--prebuilt" ]; then
    [ -d .nvrtc ] || ./scripts/setup-nvrtc.sh >/dev/null
    eval "$(./scripts/setup-nvrtc.sh)"
    targets=(--bin mmr1-fast --example device_step --example grpo_step --bench kernels --bench rl_kernels)
    targets+=(--test suite)
    cargo build --release --features cuda "${targets[@]}"
    msgs=$(cargo build --release --features cuda "${targets[@]}" --message-format=json 2>/dev/null)
    exe[suite]=$(exe_of suite test <<< "$msgs")
    exe[kernels]=$(exe_of kernels bench <<< "$msgs")
    exe[rl_bench]=$(exe_of rl_kernels bench <<< "$msgs")
    exe[device_step]=$(exe_of device_step example <<< "$msgs")
    exe[grpo_step]=$(exe_of grpo_step example <<< "$msgs")
    exe[mmr1-fast]=$(exe_of mmr1-fast bin <<< "$msgs")
    if [ "$mode" = "--build-only" ]; then
        stage=$(mktemp -d)
        for t in $bins; do cp "${exe[$t]}" "$stage/$t"; done
        strip --strip-debug "$stage"/*   # symbols stay (backtraces name functions)
        mkdir -p "$dir"
        pwd > "$stage/manifest_dir"   # the tests read fixtures at the path they were built in
        tar -C "$stage" -czf "$dir/bin.tar.gz" $bins manifest_dir
        rm -rf "$stage"
        echo "built into $dir/bin.tar.gz ($(du -h "$dir/bin.tar.gz" | cut -f1)): $bins"
        exit 0
    fi
else
    if [ -f "$dir/bin.tar.gz" ]; then
        unpacked=$(mktemp -d)
        tar -C "$unpacked" -xzf "$dir/bin.tar.gz"
        dir=$unpacked
    fi
    for t in $bins; do exe[$t]="$dir/$t"; done
    # Tests find tests/fixtures through the path they were built in: point it here.
    built=$(cat "$dir/manifest_dir" 2>/dev/null || true)
    if [ -n "$built" ] && [ "$built" != "$PWD" ] && [ ! -e "$built" ]; then
        mkdir -p "$(dirname "$built")" && ln -s "$PWD" "$built"
    fi
fi
gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1 || echo unknown)
echo "== GPU: $gpu (budget ${budget} s)"
: > "$log/skipped.log"

# Release binaries: wait for every launch, so a fault is reported with its kernel's name.
export MMR1_SYNC_LAUNCHES=1

# NCCL for tests/suite/nccl.rs (NCCL in a world of one vs the plain path). cudarc opens libnccl.so
# (or .so.12 ...), while NCCL's packages and the pip wheels (nvidia-nccl-cu12/-cu13, which the
# machine's PyTorch brings) install libnccl.so.2 only: link it under the plain name.
nccl_dir=$( (python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null \
    || ldconfig -p 2>/dev/null | awk '/libnccl\.so\.2 /{print $NF; exit}' | xargs -r dirname) | head -1)
if [ -n "$nccl_dir" ] && [ -e "$nccl_dir/libnccl.so.2" ]; then
    mkdir -p "$log/nccl-lib"
    ln -sf "$nccl_dir/libnccl.so.2" "$log/nccl-lib/libnccl.so"
    export LD_LIBRARY_PATH="$PWD/$log/nccl-lib:$nccl_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "== NCCL: $nccl_dir/libnccl.so.2 (linked as $log/nccl-lib/libnccl.so)"
else
    echo "== NCCL: libnccl.so.2 not found (python3 nvidia.nccl, ldconfig): the nccl suite will fail by name"
fi

# The GPU tests of suite file $1 (tests/suite/$1.rs: the tests inside a `gpu` module), as the
# command that runs them in a process of their own (a crash names its file), one test at a
# time; extra arguments go to the test binary.
gpu_suite_cmd() {
    local names
    names=$("${exe[suite]}" --list --include-ignored 2>/dev/null \
        | sed -n "s/^\($1::\(.*::\)\?gpu::.*\): test\$/\1/p" | tr '\n' ' ')
    # No names would make --exact run every test: a suite without GPU tests is an error.
    [ -n "$names" ] || { echo "echo 'NO GPU TESTS in tests/suite/$1.rs'; false"; return; }
    echo "\"${exe[suite]}\" --exact $names--include-ignored --test-threads=1 ${*:2}"
}

echo "== equivalence suites on the GPU"
: > "$log/tests.log"
trc=0
set +e
for t in $(want suites && echo "${SUITES:-$suites}"); do
    if [ ! -x "${exe[suite]}" ]; then
        echo "MISSING: ${exe[suite]}" | tee -a "$log/tests.log"; trc=1
    elif enough 15 "suite $t"; then
        echo "-- tests/suite/$t.rs" >> "$log/tests.log"
        timeout "$(cap 240)" bash -c "$(gpu_suite_cmd "$t" --nocapture)" >> "$log/tests.log" 2>&1 || trc=1
    else
        trc=1
    fi
done
set -e
grep -E "test result|SKIPPED|MISSING|panicked|relative L2 error .* >" "$log/tests.log" || true

echo "== training steps: ours (examples/device_step.rs) and PyTorch + transformers (benches/train_step_gpu_torch.py)"
# One JSON line per run in $log/steps.jsonl, tagged with who ran it ({"error": ...} when a run
# fails, e.g. out of memory). Launches are not synchronized here (timings), unlike the suites.
: > "$log/steps.jsonl"
: > "$log/steps.log"
# step WHO TIMEOUT ARGS...: WHO is ours (device_step) or torch (python), or ours-grpo
# (examples/grpo_step.rs) or torch-grpo (benches/grpo_step_gpu_torch.py): one whole GRPO step;
# env vars before WHO pass on.
step() {
    local kind=$1 want=$2; shift 2
    local who=${kind%-grpo}
    enough "$want" "step $kind $*" || { printf '{"who": "%s", "args": "%s", "error": "skipped: budget"}\n' "$who" "$*" >> "$log/steps.jsonl"; return 0; }
    echo "-- $kind $*" | tee -a "$log/steps.log"
    local out rc
    set +e
    if [ "$kind" = torch-grpo ]; then
        out=$(timeout "$(cap "$want")" python3 benches/grpo_step_gpu_torch.py "$@" 2>> "$log/steps.log")
    elif [ "$kind" = ours-grpo ]; then
        out=$(env -u MMR1_SYNC_LAUNCHES timeout "$(cap "$want")" "${exe[grpo_step]}" --device cuda "$@" 2>> "$log/steps.log")
    elif [ "$who" = torch ]; then
        out=$(timeout "$(cap "$want")" python3 benches/train_step_gpu_torch.py "$@" 2>> "$log/steps.log")
    else
        out=$(env -u MMR1_SYNC_LAUNCHES timeout "$(cap "$want")" "${exe[device_step]}" --device cuda "$@" 2>> "$log/steps.log")
    fi
    rc=$?
    set -e
    out=$(echo "$out" | grep '^{' | tail -1 || true)
    if [ "$rc" = 0 ] && [ -n "$out" ]; then
        python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(who=sys.argv[2], args=sys.argv[3], env=sys.argv[4]); print(json.dumps(d))' \
            "$out" "$who" "$*" "${STEP_ENV:-}" >> "$log/steps.jsonl"
    else
        printf '{"who": "%s", "args": "%s", "env": "%s", "error": "exit %s"}\n' "$who" "$*" "${STEP_ENV:-}" "$rc" >> "$log/steps.jsonl"
    fi
    tail -2 "$log/steps.log"
}
tok="--seqs ${STEP_SEQS:-4} --len ${STEP_LEN:-1024}"
# Decode runs: DECODE_SEQS prompts of 128 tokens, 64 new tokens each, 3 rollouts (1 warm-up).
dec="--seqs ${DECODE_SEQS:-64} --len 128 --new 64 --steps 3"
# Long decode runs, where the KV cache is most of a decode step's bytes: 64 prompts of 512
# tokens x 8 responses of 256 new tokens (512 slots, up to 768 keys each), 2 rollouts.
declong="--seqs 64 --group 8 --len 512 --new 256 --steps 2"
# One whole GRPO step (issue 11): GRPO_PROMPTS prompts x 8 responses of 128 + 128 tokens.
grpo="--prompts ${GRPO_PROMPTS:-32} --group 8 --len 128 --new 128 --steps 2"
# STEPS=quick: the 0.5B train, log-prob, decode and GRPO-step pairs, the profiled step, and 3B
# with recomputation at the full 4x1024 tokens.
# The default 0.5B SFT step, PyTorch's, and the wgmma flash forward, dQ and dK/dV (sm_90: Hopper's
# warpgroup MMA; kernels/flash_wgmma.cu) each alone and all three: the head of STEPS=levers and
# of STEPS=wgmma.
# shellcheck disable=SC2086
wgmma_sft_steps() {
    step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 6
    step torch 120 --arch qwen2.5-0.5b $tok --steps 6
    STEP_ENV=MMR1_FLASH_FWD=wgmma MMR1_FLASH_FWD=wgmma step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 6
    STEP_ENV=MMR1_FLASH_DQ=wgmma MMR1_FLASH_DQ=wgmma step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 6
    STEP_ENV=MMR1_FLASH_DKV=wgmma MMR1_FLASH_DKV=wgmma step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 6
    STEP_ENV=all-wgmma MMR1_FLASH_FWD=wgmma MMR1_FLASH_DQ=wgmma MMR1_FLASH_DKV=wgmma step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 6
}
# shellcheck disable=SC2086
if want steps && [ "${STEPS:-full}" = levers ]; then
    # STEPS=levers: each default against its switch turned the other way, in one short call
    # (docs/perf.md's UNMEASURED sections), PyTorch beside the two defaults. The switches the
    # calls of 2026-11-27 settled are in STEPS=full (MMR1_FLASH_IO, MMR1_FLASH_FWD,
    # MMR1_PRODUCER_SHADOWS) and STEPS=recheck (MMR1_FLASH_MASK).
    # The wgmma flash kernels first while the budget lasts (the GRPO step's run is below: its
    # rollout prefills and log-prob passes run the forward alone).
    wgmma_sft_steps
    STEP_ENV=MMR1_FUSED_LAYER_OPS=0 MMR1_FUSED_LAYER_OPS=0 step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 6
    # The wide flash forward, slower at these shapes before the flash grids went item-major
    # (docs/perf.md "Flash grids item-major"): the longest blocks first may turn that around.
    STEP_ENV=MMR1_FLASH_FWD=wide MMR1_FLASH_FWD=wide step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 6
    # The pipelined flash forward (the next key tile's QK^T ahead of this tile's softmax) and
    # dQ kernel (the next tile's S and dP ahead of this tile's dS; head dim 64: 0.5B's).
    STEP_ENV=MMR1_FLASH_FWD=pipe MMR1_FLASH_FWD=pipe step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 6
    STEP_ENV=MMR1_FLASH_DQ=pipe MMR1_FLASH_DQ=pipe step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 6
    # xn1, xn2, act stored as f32 with shadows (the peak and the writes bf16 storage saves).
    STEP_ENV=MMR1_BF16_OPERANDS=0 MMR1_BF16_OPERANDS=0 step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 6
    # The head's forward pass before SFT's backward (before the head ran once for a loss whose
    # gradient is known before its log-probs: one logits GEMM and one read of them a chunk more).
    STEP_ENV=MMR1_HEAD_ONE_PASS=0 MMR1_HEAD_ONE_PASS=0 step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 6
    STEP_ENV=MMR1_PROFILE=1 MMR1_PROFILE=1 step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 4
    step ours 120 --precision bf16 --shape qwen2.5-0.5b $dec --mode decode
    STEP_ENV=MMR1_FUSED_LAYER_OPS=0 MMR1_FUSED_LAYER_OPS=0 step ours 120 --precision bf16 --shape qwen2.5-0.5b $dec --mode decode
    STEP_ENV=MMR1_SAMPLE_SPLIT=0 MMR1_SAMPLE_SPLIT=0 step ours 120 --precision bf16 --shape qwen2.5-0.5b $dec --mode decode
    # A GEMM per weight matrix (before q/k/v and gate/up were stacked: 7 GEMMs a layer, not 4).
    STEP_ENV=MMR1_STACKED_GEMMS=0 MMR1_STACKED_GEMMS=0 step ours 120 --precision bf16 --shape qwen2.5-0.5b $dec --mode decode
    # Flash decode's keys in 128-key chunks whatever the length (before chunks by length).
    STEP_ENV=MMR1_DECODE_CHUNKS=128 MMR1_DECODE_CHUNKS=128 step ours 120 --precision bf16 --shape qwen2.5-0.5b $dec --mode decode
    # The tensor-core decode kernel (the group's heads as MMA rows), at the short and long shapes.
    STEP_ENV=MMR1_DECODE=mma MMR1_DECODE=mma step ours 120 --precision bf16 --shape qwen2.5-0.5b $dec --mode decode
    STEP_ENV=MMR1_DECODE=mma MMR1_DECODE=mma step ours 150 --precision bf16 --shape qwen2.5-0.5b $declong --mode decode
    STEP_ENV=MMR1_GRAPHS=1 MMR1_GRAPHS=1 step ours 120 --precision bf16 --shape qwen2.5-0.5b $dec --mode decode
    STEP_ENV=MMR1_GRAPHS=0 MMR1_GRAPHS=0 step ours 120 --precision bf16 --shape qwen2.5-0.5b $dec --mode decode
    STEP_ENV=again step ours 120 --precision bf16 --shape qwen2.5-0.5b $dec --mode decode
    STEP_ENV=MMR1_PROFILE=1 MMR1_PROFILE=1 step ours 120 --precision bf16 --shape qwen2.5-0.5b $dec --mode decode
    step torch 120 --arch qwen2.5-0.5b $dec --mode decode
    # KV caches in f32 (before bf16 storage: docs/perf.md "KV caches in bf16"), at the short
    # decode shape and at a long one where the cache is most of a step's bytes.
    STEP_ENV=MMR1_KV_CACHE=f32 MMR1_KV_CACHE=f32 step ours 120 --precision bf16 --shape qwen2.5-0.5b $dec --mode decode
    step ours 150 --precision bf16 --shape qwen2.5-0.5b $declong --mode decode
    STEP_ENV=MMR1_KV_CACHE=f32 MMR1_KV_CACHE=f32 step ours 150 --precision bf16 --shape qwen2.5-0.5b $declong --mode decode
    # Each response prefilling its prompt (before a group's responses shared one prefill).
    STEP_ENV=MMR1_SHARE_PROMPTS=0 MMR1_SHARE_PROMPTS=0 step ours 150 --precision bf16 --shape qwen2.5-0.5b $declong --mode decode
    step ours-grpo 150 --precision bf16 --shape qwen2.5-0.5b $grpo
    STEP_ENV=MMR1_FLASH_FWD=wgmma MMR1_FLASH_FWD=wgmma step ours-grpo 150 --precision bf16 --shape qwen2.5-0.5b $grpo
    STEP_ENV=MMR1_KV_CACHE=f32 MMR1_KV_CACHE=f32 step ours-grpo 150 --precision bf16 --shape qwen2.5-0.5b $grpo
    STEP_ENV=MMR1_SHARE_PROMPTS=0 MMR1_SHARE_PROMPTS=0 step ours-grpo 150 --precision bf16 --shape qwen2.5-0.5b $grpo
    STEP_ENV=MMR1_STACKED_GEMMS=0 MMR1_STACKED_GEMMS=0 step ours-grpo 150 --precision bf16 --shape qwen2.5-0.5b $grpo
    # The forward's head pass in each GRPO micro-step (before the token-level loss took its
    # log-probs from the head's backward: one logits GEMM a chunk more; the update ~+17 ms).
    STEP_ENV=MMR1_HEAD_ONE_PASS=0 MMR1_HEAD_ONE_PASS=0 step ours-grpo 150 --precision bf16 --shape qwen2.5-0.5b $grpo
    STEP_ENV=MMR1_DECODE_CHUNKS=128 MMR1_DECODE_CHUNKS=128 step ours-grpo 150 --precision bf16 --shape qwen2.5-0.5b $grpo
    STEP_ENV=MMR1_DECODE=mma MMR1_DECODE=mma step ours-grpo 150 --precision bf16 --shape qwen2.5-0.5b $grpo
    # The old log-probs' own pass, which on-policy updates skip (the PyTorch step runs it).
    STEP_ENV=old-pass step ours-grpo 150 --precision bf16 --shape qwen2.5-0.5b $grpo --old-logprob-pass
    STEP_ENV=MMR1_FUSED_LAYER_OPS=0 MMR1_FUSED_LAYER_OPS=0 step ours-grpo 150 --precision bf16 --shape qwen2.5-0.5b $grpo
elif want steps && [ "${STEPS:-full}" = wgmma ]; then
    # STEPS=wgmma: the wgmma flash kernels (kernels/flash_wgmma.cu; sm_90) against the mma.sync
    # defaults, each alone and all three, in the SFT step, the profiled step and the GRPO step;
    # PyTorch beside. Run the suites first (tensor_core's wgmma_layouts judges the layout model).
    wgmma_sft_steps
    STEP_ENV=all-wgmma-profile MMR1_PROFILE=1 MMR1_FLASH_FWD=wgmma MMR1_FLASH_DQ=wgmma MMR1_FLASH_DKV=wgmma step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 4
    STEP_ENV=again step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 6
    step ours-grpo 150 --precision bf16 --shape qwen2.5-0.5b $grpo
    STEP_ENV=all-wgmma MMR1_FLASH_FWD=wgmma MMR1_FLASH_DQ=wgmma MMR1_FLASH_DKV=wgmma step ours-grpo 150 --precision bf16 --shape qwen2.5-0.5b $grpo
elif want steps && [ "${STEPS:-full}" = recheck ]; then
    # STEPS=recheck: a short follow-up call: the default step, the diagonal-only flash mask's
    # switch, PyTorch, and decode repeated around its switch (two rollouts a run are noisy).
    step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 6
    STEP_ENV=MMR1_FLASH_MASK=every MMR1_FLASH_MASK=every step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 6
    step torch 120 --arch qwen2.5-0.5b $tok --steps 6
    step ours 120 --precision bf16 --shape qwen2.5-0.5b $dec --mode decode
    STEP_ENV=MMR1_GRAPHS=1 MMR1_GRAPHS=1 step ours 120 --precision bf16 --shape qwen2.5-0.5b $dec --mode decode
    STEP_ENV=again step ours 120 --precision bf16 --shape qwen2.5-0.5b $dec --mode decode
    STEP_ENV=MMR1_PROFILE=1 MMR1_PROFILE=1 step ours 120 --precision bf16 --shape qwen2.5-0.5b $dec --mode decode
elif want steps && [ "${STEPS:-full}" = quick ]; then
    step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 6
    step torch 120 --arch qwen2.5-0.5b $tok --steps 6
    # Flash attention reading f32 tiles (the storage before bf16 copies), and the wide forward
    # (docs/perf.md "Flash attention reads bf16 copies", "The wide flash forward").
    STEP_ENV=MMR1_FLASH_IO=f32 MMR1_FLASH_IO=f32 step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 6
    STEP_ENV=MMR1_FLASH_FWD=wide MMR1_FLASH_FWD=wide step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 6
    STEP_ENV=MMR1_PROFILE=1 MMR1_PROFILE=1 step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 4
    step ours 90 --precision bf16 --shape qwen2.5-0.5b $tok --steps 6 --mode logprobs
    step torch 90 --arch qwen2.5-0.5b $tok --steps 6 --mode logprobs
    step ours 120 --precision bf16 --shape qwen2.5-0.5b $dec --mode decode
    # Launches and device time per decode step, by kernel (docs/perf.md "Decode step: launches
    # per step"): the JSON line's launches_per_decode_step, the table in steps.log.
    STEP_ENV=MMR1_PROFILE=1 MMR1_PROFILE=1 step ours 120 --precision bf16 --shape qwen2.5-0.5b $dec --mode decode
    # Decode steps replayed as CUDA graphs (cuda::replay; MMR1_GRAPHS=auto by default: always and never beside it).
    STEP_ENV=MMR1_GRAPHS=1 MMR1_GRAPHS=1 step ours 120 --precision bf16 --shape qwen2.5-0.5b $dec --mode decode
    STEP_ENV=MMR1_GRAPHS=0 MMR1_GRAPHS=0 step ours 120 --precision bf16 --shape qwen2.5-0.5b $dec --mode decode
    step torch 120 --arch qwen2.5-0.5b $dec --mode decode
    # The producers' bf16 copies off (docs/perf.md "Producers write the bf16 operand").
    STEP_ENV=MMR1_PRODUCER_SHADOWS=0 MMR1_PRODUCER_SHADOWS=0 step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 6
    STEP_ENV=MMR1_PRODUCER_SHADOWS=0 MMR1_PRODUCER_SHADOWS=0 step ours 120 --precision bf16 --shape qwen2.5-0.5b $dec --mode decode
    step ours-grpo 150 --precision bf16 --shape qwen2.5-0.5b $grpo
    STEP_ENV=MMR1_GRAPHS=1 MMR1_GRAPHS=1 step ours-grpo 150 --precision bf16 --shape qwen2.5-0.5b $grpo
    STEP_ENV=MMR1_GRAPHS=0 MMR1_GRAPHS=0 step ours-grpo 150 --precision bf16 --shape qwen2.5-0.5b $grpo
    step torch-grpo 180 --arch qwen2.5-0.5b $grpo
    step ours 120 --precision bf16 --shape qwen2.5-3b $tok --steps 3 --recompute on
elif want steps; then
    step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 6
    step torch 120 --arch qwen2.5-0.5b $tok --steps 6
    STEP_ENV=MMR1_FLASH_IO=f32 MMR1_FLASH_IO=f32 step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 6
    STEP_ENV=MMR1_FLASH_FWD=wide MMR1_FLASH_FWD=wide step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 6
    # Where our step's time goes: device time per kernel and GEMM shape (CUDA events).
    STEP_ENV=MMR1_PROFILE=1 MMR1_PROFILE=1 step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 4
    step ours 90 --precision bf16 --shape qwen2.5-0.5b $tok --steps 6 --mode logprobs
    step torch 90 --arch qwen2.5-0.5b $tok --steps 6 --mode logprobs
    # Rollout decoding: sampling on the device (rollout::generate) vs the logits downloaded and
    # sampled on the host (the old path), and transformers' generate on the same shape.
    step ours 120 --precision bf16 --shape qwen2.5-0.5b $dec --mode decode
    step ours 150 --precision bf16 --shape qwen2.5-0.5b $dec --mode decode --sampling host
    # Launches and device time per decode step, by kernel (docs/perf.md "Decode step: launches
    # per step"): the JSON line's launches_per_decode_step, the table in steps.log.
    STEP_ENV=MMR1_PROFILE=1 MMR1_PROFILE=1 step ours 120 --precision bf16 --shape qwen2.5-0.5b $dec --mode decode
    # The split flash-decode kernel (the default before the staged one was measured), same rollout.
    STEP_ENV=MMR1_DECODE=split MMR1_DECODE=split step ours 120 --precision bf16 --shape qwen2.5-0.5b $dec --mode decode
    STEP_ENV=MMR1_GRAPHS=1 MMR1_GRAPHS=1 step ours 120 --precision bf16 --shape qwen2.5-0.5b $dec --mode decode
    STEP_ENV=MMR1_GRAPHS=0 MMR1_GRAPHS=0 step ours 120 --precision bf16 --shape qwen2.5-0.5b $dec --mode decode
    # The fused layer ops and the sampler's split form off (docs/perf.md "Fewer launches a
    # decode step").
    STEP_ENV=MMR1_FUSED_LAYER_OPS=0 MMR1_FUSED_LAYER_OPS=0 step ours 120 --precision bf16 --shape qwen2.5-0.5b $dec --mode decode
    STEP_ENV=MMR1_SAMPLE_SPLIT=0 MMR1_SAMPLE_SPLIT=0 step ours 120 --precision bf16 --shape qwen2.5-0.5b $dec --mode decode
    step torch 120 --arch qwen2.5-0.5b $dec --mode decode
    step ours-grpo 150 --precision bf16 --shape qwen2.5-0.5b $grpo
    STEP_ENV=MMR1_GRAPHS=1 MMR1_GRAPHS=1 step ours-grpo 150 --precision bf16 --shape qwen2.5-0.5b $grpo
    STEP_ENV=MMR1_GRAPHS=0 MMR1_GRAPHS=0 step ours-grpo 150 --precision bf16 --shape qwen2.5-0.5b $grpo
    step torch-grpo 180 --arch qwen2.5-0.5b $grpo
    step ours 150 --precision f32 --shape qwen2.5-0.5b $tok --steps 4
    # The largest published shape: 3B (7B needs ~122 GB for f32 weights, grads and moments).
    step ours 180 --precision bf16 --shape qwen2.5-3b --seqs 2 --len 1024 --steps 3
    if tail -1 "$log/steps.jsonl" | grep -q '"error"'; then   # out of memory: half the tokens
        step ours 150 --precision bf16 --shape qwen2.5-3b --seqs 1 --len 1024 --steps 3
    fi
    step torch 150 --arch qwen2.5-3b --seqs 2 --len 1024 --steps 3
    step ours 150 --precision bf16 --shape qwen2.5-1.5b $tok --steps 4
    # Activation recomputation: the 0.5B step's cost, and 3B at the full 4x1024 tokens.
    step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 4 --recompute on
    step ours 180 --precision bf16 --shape qwen2.5-3b $tok --steps 3 --recompute on
    STEP_ENV=MMR1_CACHING_ALLOCATOR=0 MMR1_CACHING_ALLOCATOR=0 step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 4
    STEP_ENV=MMR1_BF16_SHADOWS=0 MMR1_BF16_SHADOWS=0 step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 4
    # Activation shadows off (every GEMM converts its activation operands again), timed and
    # profiled: the conversions per step before and after (docs/perf.md predicts them).
    STEP_ENV=MMR1_ACT_SHADOWS=0 MMR1_ACT_SHADOWS=0 step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 4
    STEP_ENV="MMR1_PROFILE=1 MMR1_ACT_SHADOWS=0" MMR1_PROFILE=1 MMR1_ACT_SHADOWS=0 step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 4
    # Producers writing the GEMMs' bf16 operands off (docs/perf.md "Producers write the bf16
    # operand"): the training and decode steps with the conversions back, beside the defaults.
    STEP_ENV=MMR1_PRODUCER_SHADOWS=0 MMR1_PRODUCER_SHADOWS=0 step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 4
    STEP_ENV=MMR1_PRODUCER_SHADOWS=0 MMR1_PRODUCER_SHADOWS=0 step ours 120 --precision bf16 --shape qwen2.5-0.5b $dec --mode decode
    # GEMM-only activations (xn1, xn2, act) stored as f32 with shadows instead of bf16 alone.
    STEP_ENV=MMR1_BF16_OPERANDS=0 MMR1_BF16_OPERANDS=0 step ours 120 --precision bf16 --shape qwen2.5-0.5b $tok --steps 4
fi

# Continuous batching of rollouts (rl::decode_scheduler): 64 prompts x 8 responses of up to
# 1,024 new tokens after 128-token prompts, ragged by stop ids (ids 0..300: on random weights a
# response ends near 500 tokens on average, about 1 in 7 runs to 1,024), on a KV-cache slot per
# response (512, 13.5 GiB of f32 cache) vs 64 slots (1.7 GiB): tokens/s, slot occupancy, decode
# steps, and whether both drew the same tokens (token checksums; cuBLAS may pick its GEMM
# kernels by the batch's rows, so a difference is reported, not failed). Named only:
# GPU_CHECK_SECTIONS=rollout (two rollouts of ~250k tokens per slot count).
# shellcheck disable=SC2086
if want rollout; then
    roll="--seqs 64 --group 8 --len 128 --new 1024 --stop-ids 300 --steps 2"
    step ours 300 --precision bf16 --shape qwen2.5-0.5b $roll --mode decode --slots 512
    step ours 300 --precision bf16 --shape qwen2.5-0.5b $roll --mode decode --slots 64
fi

if want suites; then
    echo "== sampling kernel at vocab 151,936 (tests/suite/sample_kernel.rs real_vocab::speed)"
    timeout "$(cap 60)" "${exe[suite]}" sample_kernel::real_vocab::speed --include-ignored --nocapture 2>&1 | grep -E "^SAMPLE|panicked" | tee "$log/sample-speed.log" || true
fi

echo "== kernel benches"
brc=0
set +e
# BENCH_FILTER (a criterion filter, e.g. "flash") runs part of them.
# A part of them (BENCH_FILTER) asks for less of the budget.
if want benches && enough "$([ -n "${BENCH_FILTER:-}" ] && echo 60 || echo 150)" "kernel benches"; then
    # shellcheck disable=SC2086
    timeout "$(cap 240)" "${exe[kernels]}" --bench ${BENCH_FILTER:-} > "$log/bench.log" 2>&1
    brc=$?
else
    brc=skipped
fi
set -e
grep -E "^(device|[a-z_]+/|\s+time:|\s+thrpt:)" "$log/bench.log" 2>/dev/null | head -220 || true

echo "== PyTorch on the same shapes (bf16: matmul, scaled_dot_product_attention causal)"
set +e
want torch && enough 60 "PyTorch GEMM/attention" && timeout "$(cap 120)" python3 - "$log/torch.json" <<'PY' 2>&1 | tail -20
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
for ns, ln, h, hk, hd in [(2, 4096, 16, 16, 128), (4, 1024, 12, 2, 128), (4, 1024, 14, 2, 64)]:
    q = torch.randn(ns, h, ln, hd, device=dev, dtype=bf, requires_grad=True)
    k = torch.randn(ns, hk, ln, hd, device=dev, dtype=bf, requires_grad=True)
    v = torch.randn(ns, hk, ln, hd, device=dev, dtype=bf, requires_grad=True)
    kw = {"is_causal": True}
    if hk != h: kw["enable_gqa"] = True  # torch >= 2.5
    try:
        o = F.scaled_dot_product_attention(q, k, v, **kw)
    except TypeError as e:
        print("skipping GQA sdpa:", e); continue
    do = torch.randn_like(o)
    tag = f"{ns}x{ln}_h{h}kv{hk}_d{hd}"
    tf = bench(lambda: F.scaled_dot_product_attention(q, k, v, **kw))
    tfb = bench(lambda: torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, **kw), (q, k, v), do))
    res[f"flash_fwd_{tag}"], res[f"flash_bwd_{tag}"] = tf, tfb - tf
json.dump(res, open(sys.argv[1], "w"), indent=1)
print(json.dumps(res, indent=1))
PY
set -e

echo "== RL kernels (benches/rl_kernels.rs) and PyTorch eager on the same work (benches/rl_kernels_torch.py)"
set +e
if want rl && enough 60 "RL kernel benches"; then
    timeout "$(cap 120)" "${exe[rl_bench]}" > "$log/rl-bench.log" 2>&1
    cat "$log/rl-bench.log"
    timeout "$(cap 90)" python3 benches/rl_kernels_torch.py "$log/rl-torch.json" 2>&1 | tail -5
fi
touch "$log/rl-bench.log"
want rl && python3 - "$log" "$gpu" "$report_dir" <<'PY'
# docs/rl-kernels-gpu.md: each RL kernel's median time, bandwidth, fraction of HBM and speed
# against PyTorch eager doing the same work (loss + backward; advantages).
import json, os, sys
log, gpu, report_dir = sys.argv[1], sys.argv[2], sys.argv[3]
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
# Hand-written notes below the marker survive a regeneration.
path = os.path.join(report_dir, "rl-kernels-gpu.md")
marker = "<!-- notes below this line are kept by scripts/gpu-check.sh -->"
notes = ""
if os.path.exists(path) and marker in open(path).read():
    notes = "\n" + marker + open(path).read().split(marker, 1)[1]
open(path, "w").write("\n".join(out) + "\n" + notes)
print("\n".join(out))
PY
set -e

echo "== the built-in demo on the GPU (mmr1-fast train --device cuda; DEMO_PRECISIONS x DEMO_SEEDS, default bf16 f32 x 1 2 3)"
# One seed says little: over 18 seeds on the CPU (f32, and bf16 GEMM operands emulated) the
# demo's after-RL accuracy spreads from 0.455 to 0.965 in either precision (docs/perf.md, "The
# demo on the GPU in bf16"), so both precisions run over the same seeds; the table gives each
# run, the mean and standard error per precision, and the largest first-epoch |ratio - 1| of
# any RL step (0 when logp_old and the update's log-probs are computed alike; nonzero means a
# batch- or run-variant log-prob pass on this GPU). About 15 s a run on an H100.
set +e
for seed in $(want demo && echo "${DEMO_SEEDS:-1 2 3}"); do
    for prec in ${DEMO_PRECISIONS:-bf16 f32}; do
        enough 40 "demo on the GPU, --precision $prec, seed $seed" || continue
        d="$log/demo-$prec-s$seed"
        env -u MMR1_SYNC_LAUNCHES timeout "$(cap 120)" "${exe[mmr1-fast]}" train --device cuda --precision "$prec" \
            --set seed="$seed" --out "$d" --overwrite > "$d.log" 2>&1
        echo "demo (--precision $prec, seed $seed) exit code $?" >> "$d.log"
        grep -E "^\| (before|after)|total time|exit code" "$d.log"
    done
done
want demo && python3 - "$log" <<'PY' | tee "$log/demo.md"
import glob, json, math, os, re, sys
log = sys.argv[1]
runs = {}
for d in sorted(glob.glob(os.path.join(log, "demo-*-s*"))):
    m = re.search(r"demo-(\w+)-s(\d+)$", d)
    if not m or not os.path.exists(os.path.join(d, "metrics.jsonl")):
        continue
    ev, dev = {}, None
    for l in open(os.path.join(d, "metrics.jsonl")):
        r = json.loads(l)
        if r.get("phase") == "eval":
            ev[r["label"]] = r["accuracy"]
        elif r.get("phase") == "rl" and r.get("first_epoch_max_ratio_dev") is not None:
            dev = max(dev or 0.0, r["first_epoch_max_ratio_dev"])
    runs.setdefault(m.group(1), []).append((int(m.group(2)), ev, dev))
print("| precision | seed | before SFT | after SFT | after RL | max first-epoch abs(ratio - 1) |")
print("| --- | --- | --- | --- | --- | --- |")
keys = ("before SFT", "after SFT", "after RL")
for prec, rs in runs.items():
    for seed, ev, dev in sorted(rs):
        acc = " | ".join("-" if ev.get(k) is None else f"{ev[k]:.3f}" for k in keys)
        print(f"| {prec} | {seed} | {acc} | {'-' if dev is None else f'{dev:.1e}'} |")
def mean_se(v):
    if len(v) < 2:
        return "-"
    mu = sum(v) / len(v)
    return f"{mu:.3f} +- {math.sqrt(sum((x - mu) ** 2 for x in v) / (len(v) - 1) / len(v)):.3f}"
for prec, rs in runs.items():
    cols = " | ".join(mean_se([ev[k] for _, ev, _ in rs if k in ev]) for k in keys)
    print(f"| {prec} | mean +- s.e. of {len(rs)} | {cols} | |")
PY
set -e

# ncu (GPU_CHECK_SECTIONS=ncu, only when named): the RL kernels' and the flash forwards' own
# time and DRAM throughput, without the launch, the partials' fold and the download around
# them that the benches' wall-clock medians include (the GRPO loss's 27% of HBM was the whole
# call). One kernel per run of the RL bench (NCU_KERNELS: names, space-separated).
if want ncu && enough 45 "ncu"; then
    echo "== ncu: kernels alone"
    ncu_bin=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1 || true)
    : > "$log/ncu.csv"
    for k in ${NCU_KERNELS:-grpo_loss_stream_f32 group_adv_seg_f32}; do
        [ -n "$ncu_bin" ] || { echo "ncu not found"; break; }
        enough 30 "ncu $k" || break
        set +e
        # The third launch (after the bench's warm-up calls), one pass of the metrics.
        timeout "$(cap 120)" "$ncu_bin" --kernel-name "$k" --launch-skip 2 --launch-count 1 --csv \
            --metrics gpu__time_duration.sum,dram__bytes.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed \
            "${exe[rl_bench]}" 2>> "$log/ncu.log" | grep -E '^"' >> "$log/ncu.csv"
        set -e
    done
    # The flash kernels at 2x4096 d128 (wgmma, default, wide, pipelined, f32 tile loads; the backward's two):
    # ncu's SpeedOfLight section (duration; SM, L1/shared, L2 and DRAM throughput as % of peak)
    # names what bounds each (docs/perf.md predicts shared memory for the narrow forward).
    # NCU_FLASH: names (set and empty: none, the RL kernels alone); NCU_SECTIONS: more sections
    # (Occupancy, WarpStateStats, ...: why); NCU_METRICS: raw metrics too (the stall reasons).
    for k in ${NCU_FLASH-flash_fwd_wg_bf16_d128 flash_bwd_dq_wg_bf16_d128 flash_bwd_dkv_wg_bf16_d128 flash_fwd_bf16_d128 flash_fwd_wide_bf16_d128 flash_fwd_pipe_bf16_d128 flash_fwd_d128}; do
        [ -n "$ncu_bin" ] || break
        enough 40 "ncu $k" || break
        # A backward kernel runs in the backward bench (which also runs a forward first).
        case $k in *bwd*|*dkv*) filt=flash_bwd_2x4096 ;; *) filt=flash_fwd_2x4096 ;; esac
        secs=()
        for sec in ${NCU_SECTIONS:-SpeedOfLight}; do secs+=(--section "$sec"); done
        # NCU_METRICS: metrics beside the sections (names or regex:..., comma-separated).
        if [ -n "${NCU_METRICS:-}" ]; then secs+=(--metrics "$NCU_METRICS"); fi
        # NCU_SET=full: every section (stall reasons, pipes, bank conflicts), ~40 passes a kernel;
        # with NCU_PAGE=raw, one row of every metric, kept in ncu.csv for reading afterwards.
        if [ -n "${NCU_SET:-}" ]; then secs+=(--set "$NCU_SET"); fi
        if [ -n "${NCU_PAGE:-}" ]; then secs+=(--page "$NCU_PAGE"); fi
        set +e
        timeout "$(cap 120)" "$ncu_bin" --kernel-name "$k" --launch-skip 2 --launch-count 1 --csv \
            "${secs[@]}" "${exe[kernels]}" --bench "$filt" 2>> "$log/ncu.log" \
            | grep -E '^"' >> "$log/ncu.csv"
        set -e
    done
    python3 - "$log/ncu.csv" <<'PY' || true
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if r and r[0] != "ID"]
for r in rows:
    # ID, Process ID, Process Name, Host Name, Kernel Name, Context, Stream, Block Size, Grid Size,
    # Device, CC, Section Name, Metric Name, Metric Unit, Metric Value
    if len(r) >= 15:
        print(f"ncu | {r[4][:40]} | {r[12]} | {r[14]} {r[13]}")
PY
fi

# compute-sanitizer over the same suite, one tool at a time. A verdict per tool goes to
# $log/sanitizers.tsv (tool, verdict, errors, exit code, log) for the table below.
echo "== compute-sanitizer on the equivalence suites"
san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1 || true)
: > "$log/sanitizers.tsv"
src=0
# SANITIZER_SUITES (default: every suite) picks the suites they run.
for tool in $(want sanitizers && echo "${SANITIZERS-memcheck racecheck synccheck initcheck}"); do
    slog="$log/sanitizer-$tool.log"
    if ! enough 45 "compute-sanitizer $tool"; then
        printf '%s\t%s\t-\t-\t-\n' "$tool" "not run: budget" >> "$log/sanitizers.tsv"
        continue
    fi
    if [ -z "$san" ]; then
        printf '%s\t%s\t-\t-\t-\n' "$tool" "not run: compute-sanitizer not found" >> "$log/sanitizers.tsv"
        continue
    fi
    extra=""
    case "$tool" in
        racecheck) extra="--racecheck-report all" ;;      # hazards and analysis summary
        initcheck) extra="" ;;    # (--track-unused-memory no made 2025.x read "no" as the program)
    esac
    echo "-- $tool"
    set +e
    # shellcheck disable=SC2086
    timeout "$(cap "${SANITIZER_TIMEOUT:-1200}")" "$san" --tool "$tool" $extra --error-exitcode 86 --target-processes all \
        bash -c "rc=0; $(for s in ${SANITIZER_SUITES:-$san_suites}; do echo "{ $(gpu_suite_cmd "$s"); } || rc=\$?;"; done) exit \$rc" > "$slog" 2>&1
    rc=$?
    set -e
    # racecheck ends with "RACECHECK SUMMARY: N hazards displayed (E errors, W warnings)".
    errors=$( (grep -Eo "ERROR SUMMARY: [0-9]+" "$slog" || grep -Eo "RACECHECK SUMMARY: .*\(([0-9]+) errors" "$slog" | grep -Eo "[0-9]+ errors" | grep -Eo "[0-9]+") | tail -1 | grep -Eo "[0-9]+$" || true)
    tests_ok=$(grep -Ec "^test result: ok" "$slog" || true)  # one line per suite
    if [ "$rc" = 124 ]; then
        verdict="TIMEOUT (cut to the budget or SANITIZER_TIMEOUT)"
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

python3 - "$log" "$gpu" "$trc" "$brc" "$report_dir" <<'PY'
import json, re, sys, os, glob
log, gpu, trc, brc, report_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
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
       f"PyTorch: {torch_res.get('torch', torch_res.get('error', '?'))}, same shapes in bf16 (torch.matmul; scaled_dot_product_attention causal, backward = forward+backward minus forward); speed = PyTorch time / our time (> 1: faster than PyTorch). Our attention inputs are f32 activations: the flash kernels read bf16 copies of the tensors they walk, converted in the timed call (ids ending _f32io: f32 tiles converted in the kernels' loads; _wide: the forward with 4 warps of 32 rows; _pipe: the forward issuing the next key tile's QK^T before this tile's softmax; _dqpipe: the dQ kernel issuing the next tile's S and dP before this tile's dS; _maskevery: every key tile compared with the causal mask, as before the diagonal-only mask); PyTorch's are bf16.",
       "", "| kernel | max error | time | rate | fraction of roofline | PyTorch | speed vs PyTorch |",
       "| --- | --- | --- | --- | --- | --- | --- |"]
out += [f"| {' | '.join(r)} |" for r in rows]
steps = [json.loads(l) for l in open(os.path.join(log, "steps.jsonl")) if l.strip()] if os.path.exists(os.path.join(log, "steps.jsonl")) else []
gib = lambda b: "-" if b is None else f"{b / 2**30:.2f} GiB"
out += ["", "Training steps and log-prob passes, ours (examples/device_step.rs: one packed batch, forward, log-probs, "
        "cross-entropy, backward, clip, AdamW; f32 master weights and moments, bf16 GEMM operands and flash attention at bf16) "
        "and PyTorch + transformers on the same tokens (benches/train_step_gpu_torch.py: SDPA, bf16 autocast over f32 weights, "
        "fused AdamW, clip_grad_norm_). Random weights at the published shapes; median of the steps after the first. "
        "MFU: 6 (train) or 2 (log-probs) x parameters x tokens/s over the bf16 dense peak. "
        "Peak: ours = our allocator's bytes in use / reserved; PyTorch = max_memory_allocated / max_memory_reserved. "
        "Fresh allocs: our device allocations per steady step (0: all from the cache).", "",
        "| who | shape | mode | precision / env | tokens | step (median) | first | tokens/s | MFU | peak in use | peak reserved | fresh allocs / step | loss first -> last |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
# decode rows say where they sampled (examples/device_step.rs --mode decode --sampling ...).
mode_of = lambda r: r.get("mode", "train") + (f" ({r['sampling']} sampling)" if r.get("sampling") else "") + (
    f", {r['group']} per prompt on {r['slots']} slots, {r['occupancy']:.0%} busy" if r.get("slots") and r.get("group", 1) > 1 else "")
loss_of = lambda r: f"{r['loss_first']:.4f} -> {r['loss_last']:.4f}" if "loss_first" in r and r.get("mode") != "decode" else "-"
grpo = [r for r in steps if r.get("mode") == "grpo"]
steps = [r for r in steps if r.get("mode") != "grpo"]
for r in steps:
    who, args = r.get("who", "ours"), r.get("args", "")
    if "error" in r:
        out.append(f"| {who} | `{args}` | - | {r.get('env') or '-'} | failed: {r['error']} (see steps.log) | - | - | - | - | - | - | - | - |")
        continue
    mfu = r.get("mfu", r.get("model_tflops", 0) * 1e12 / bf16_peak)
    prec = r.get("precision", "autocast bf16") + (", recompute" if r.get("recompute") else "") + (f", {r['env']}" if r.get("env") else "")
    fresh = r.get("fresh_allocs_per_steady_step")
    out.append(f"| {who} | {r.get('shape', r.get('arch'))} ({r.get('layers', '?')} layers, {r['params']/1e9:.2f} B) | {mode_of(r)} | {prec} | {r['tokens']} | "
               f"{r['step_s_median']*1e3:.1f} ms | {r['step_s_first']*1e3:.0f} ms | {r['tokens_per_s']:.0f} | {mfu:.1%} | "
               f"{gib(r.get('peak_in_use_bytes', r.get('peak_allocated_bytes')))} | {gib(r.get('peak_reserved_bytes'))} | "
               f"{'-' if fresh is None else f'{fresh:.1f}'} | {loss_of(r)} |")
if not steps:
    out.append("| - | - | - | - | not run | - | - | - | - | - | - | - | - |")
# Side by side: ours / PyTorch for the same shape, mode and tokens.
pairs = []
for o in steps:
    if o.get("who") != "ours" or "error" in o or o.get("env") or o.get("precision") != "bf16" or o.get("recompute"):
        continue
    for t in steps:
        if t.get("who") == "torch" and "error" not in t and t.get("arch") == o.get("shape") and t.get("mode") == o.get("mode") and t.get("tokens") == o.get("tokens"):
            pairs.append(f"| {o['shape']} | {mode_of(o)} | {o['tokens']} | {o['tokens_per_s']:.0f} | {t['tokens_per_s']:.0f} | **{o['tokens_per_s']/t['tokens_per_s']:.2f}x** | "
                         f"{gib(o.get('peak_in_use_bytes'))} vs {gib(t.get('peak_allocated_bytes'))} |")
if pairs:
    out += ["", "Side by side (bf16): our tokens/s over PyTorch's (> 1: faster than PyTorch).", "",
            "| shape | mode | tokens | ours tokens/s | PyTorch tokens/s | speed vs PyTorch | peak memory ours vs PyTorch |",
            "| --- | --- | --- | --- | --- | --- | --- |"] + pairs
# Continuous batching: the same rollout (args but --slots) on different slot counts.
cb = [r for r in steps if "error" not in r and r.get("mode") == "decode" and r.get("group", 1) > 1 and r.get("slots")]
if cb:
    out += ["", "Continuous batching (rl::decode_scheduler): the same rollout on a KV-cache slot per response and on fewer slots. "
            "Same tokens: the token checksums of every rollout agree with the first row's (the CPU and the emulator are "
            "bit-identical by test; cuBLAS may choose GEMM kernels by the batch's rows).", "",
            "| slots | responses | tokens | decode steps | occupancy | tokens/s | rollout (median) | KV cache | peak in use | same tokens |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in cb:
        same = "yes" if r.get("token_checksums") == cb[0].get("token_checksums") else "no"
        out.append(f"| {r['slots']} | {r['seqs'] * r['group']} | {r['tokens']} | {r['decode_steps']} | {r['occupancy']:.1%} | "
                   f"{r['tokens_per_s']:.0f} | {r['step_s_median']:.2f} s | {gib(r.get('kv_cache_bytes'))} | {gib(r.get('peak_in_use_bytes'))} | {same} |")
if grpo:
    out += ["", "One whole GRPO step (examples/grpo_step.rs; PyTorch: benches/grpo_step_gpu_torch.py with HF `generate`): "
            "prompts x 8 responses of exactly `new` tokens at T 0.6, rewards and group advantages, VAS scores (ours only), "
            "old and reference log-prob passes, MMR1's loss with k3 KL, backward, AdamW. Median seconds of the steps after the first.", "",
            "| who | shape | prompts x group | new tokens | rollout | rewards + advantages | VAS scores | update | step | decode tokens/s | peak |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in grpo:
        if "error" in r:
            out.append(f"| {r.get('who')} | `{r.get('args', '')}` | failed: {r['error']} | | | | | | | | |")
            continue
        sec = lambda k: "-" if r.get(k) is None else f"{r[k]:.3f} s"
        out.append(f"| {r.get('who')}{' (' + r['env'] + ')' if r.get('env') else ''} | {r.get('shape', r.get('arch'))} | {r['prompts']} x {r['group']} | {r['new_tokens']} | "
                   f"{sec('rollout_s')} | {sec('rewards_advantages_s')} | {sec('vas_scores_s')} | {sec('update_s')} | "
                   f"{sec('step_s_median')} | {r['decode_tokens_per_s']:.0f} | {gib(r.get('peak_in_use_bytes', r.get('peak_allocated_bytes')))} |")
    ok = [r for r in grpo if "error" not in r]
    t = next((r for r in ok if r.get("who") == "torch"), None)
    for o in [r for r in ok if r.get("who") == "ours"]:
        if t:
            out += ["", f"GRPO step{' with ' + o['env'] if o.get('env') else ''}: ours **{t['step_s_median'] / o['step_s_median']:.2f}x** PyTorch's speed (issue 11 target 3x); "
                    f"rollout decoding {o['decode_tokens_per_s'] / t['decode_tokens_per_s']:.2f}x HF generate's tokens/s (target 10x); "
                    f"update {t['update_s'] / o['update_s']:.2f}x; replay {o.get('replay')}."]
# Decode steps with CUDA graphs always (MMR1_GRAPHS=1) and never (=0) against the default (auto: where they measure faster).
plain = next((r for r in steps if "error" not in r and r.get("mode") == "decode" and r.get("who") == "ours" and not r.get("env") and r.get("sampling") == "device"), None)
for g in [r for r in steps if "error" not in r and r.get("mode") == "decode" and "MMR1_GRAPHS=" in (r.get("env") or "")]:
    if plain:
        same = g.get("token_checksums") == plain.get("token_checksums")
        out += ["", f"CUDA graphs (cuda::replay), {g['env']}: decode {g['tokens_per_s']:.0f} tokens/s vs {plain['tokens_per_s']:.0f} by default (auto) "
                f"(**{g['tokens_per_s'] / plain['tokens_per_s']:.2f}x**), rollout {g['step_s_median']*1e3:.0f} vs {plain['step_s_median']*1e3:.0f} ms; "
                f"same tokens: {same}; replay counters {g.get('replay')}."]
# Decode steps' cost structure: launches (profiled runs) and uploads per decode step.
dl = [r for r in steps if "error" not in r and r.get("mode") == "decode" and r.get("uploads_per_decode_step") is not None]
if dl:
    out += ["", "Decode steps' cost (examples/device_step.rs --mode decode; per decode step of the last rollout, its prefill included): "
            "host->device copies, and kernel launches with their device time where MMR1_PROFILE=1 counted them (its events "
            "slow the step). A launch-bound step costs about launches x 4-6 us of host time (docs/perf.md, \"Decode step: "
            "launches per step\").", "",
            "| args | env | decode steps | ms / decode step | launches / step | uploads / step | device ms / step |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in dl:
        ms = r["step_s_median"] * 1e3 / max(r["decode_steps"], 1)
        la, pm = r.get("launches_per_decode_step"), r.get("profile_ms_per_decode_step")
        out.append(f"| `{r['args']}` | {r.get('env') or '-'} | {r['decode_steps']} | {ms:.2f} | {'-' if la is None else f'{la:.0f}'} | "
                   f"{r['uploads_per_decode_step']:.1f} | {'-' if pm is None else f'{pm:.2f}'} |")
prof = [r for r in steps if r.get("profile")]
if prof:
    # The table: the profiled run with the defaults (other profiled runs change a setting).
    r = ([p for p in prof if p.get("env") == "MMR1_PROFILE=1"] or prof)[-1]
    total = r["profile_ms_per_step_total"]
    out += ["", f"Where our step goes ({r['shape']}, {r['tokens']} tokens, {r['precision']}): device time per steady step by kernel "
            f"and GEMM shape (MMR1_PROFILE=1, CUDA events around each launch); kernels total {total:.1f} ms of a "
            f"{r['step_s_median']*1e3:.1f} ms step (the rest: host work and launch gaps).", "",
            "| kernel | calls / step | ms / step | share of kernel time |", "| --- | --- | --- | --- |"]
    out += [f"| {k['name']} | {k['calls_per_step']:.0f} | {k['ms_per_step']:.2f} | {k['ms_per_step']/total:.1%} |" for k in r["profile"][:25]]
    out += ["", "GEMM operand conversions (f32_to_bf16*) per steady step, every profiled run "
            "(docs/perf.md predicts 977 without activation shadows and 563 with them at 0.5B, 4x1024):", ""]
    out += [f"- {p.get('env')}: {p['conversions_per_step']:.0f} launches, {p['conversions_ms_per_step']:.2f} ms "
            f"of a {p['step_s_median']*1e3:.1f} ms step" for p in prof if "conversions_per_step" in p]
demo = os.path.join(log, "demo.md")
if os.path.exists(demo) and open(demo).read().strip():
    out += ["", "The built-in demo (`train --device cuda`), eval accuracy of 200 held-out items per seed and precision:", "",
            open(demo).read().strip()]
skipped = [l.strip() for l in open(os.path.join(log, "skipped.log"))] if os.path.exists(os.path.join(log, "skipped.log")) else []
if skipped:
    out += ["", "Skipped for the time budget:", ""] + [f"- {l}" for l in skipped]
out += ["", "compute-sanitizer over the equivalence suites (every kernel, every shape of the suites):", "",
        "| tool | verdict | errors | exit code | log |", "| --- | --- | --- | --- | --- |"]
out += [f"| {' | '.join(r)} |" for r in san] or ["| - | not run (SANITIZERS empty) | - | - | - |"]
text = "\n".join(out) + "\n"
open(os.path.join(report_dir, "gpu-check.md"), "w").write(text)
print(text)
PY
if [ -n "${GPU_CHECK_OUT:-}" ]; then
    mkdir -p "$GPU_CHECK_OUT"
    cp "$report_dir/gpu-check.md" "$report_dir/rl-kernels-gpu.md" "$GPU_CHECK_OUT/" 2>/dev/null || true
    cp target/kernel-bench-meta.jsonl "$GPU_CHECK_OUT/" 2>/dev/null || true
    tar -czf "$GPU_CHECK_OUT/logs.tar.gz" "$log" target/criterion 2>/dev/null || true
fi
if [ "$trc" != 0 ]; then exit "$trc"; fi
exit $src
