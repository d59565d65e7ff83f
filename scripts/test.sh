#!/usr/bin/env bash
# The project's test command (README: "Run the tests"). On a machine with no GPU:
#  1. every CPU test (golden vs transformers, gradients vs PyTorch, RL math, CLI end to end)
#     and every CUDA kernel against the CPU reference on the CUDA emulator (feature emu); the
#     kernel suite (tests/kernels_vs_cpu.rs) runs every launch under four schedules (forward,
#     reverse, random, a starved warp) and demands bit-identical results; tests/emu_strict.rs
#     proves the emulator reports planted races, poison reads, bad shuffles and launch limits;
#  2. NVRTC from pip compiles every kernel to PTX (feature cuda): a kernel that does not
#     compile fails here; the GPU tests of that build are #[ignore]d and show as "ignored"
#     (scripts/gpu-check.sh runs them on a GPU with --include-ignored).
#     Then to CUBIN (scripts/cubin-check.py), which assembles the inline PTX as well.
# Extra arguments go to cargo test (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== CPU reference + CUDA emulator suite"
cargo test --features emu "$@"
echo "== NVRTC compile of every kernel, GPU suite (skips without a GPU)"
eval "$(bash scripts/setup-nvrtc.sh)"
cargo test --features cuda --test kernels_vs_cpu --test backward_golden --test tensor_core \
    --test flash_attention "$@"
echo "== NVRTC to CUBIN for sm_80/sm_90 (ptxas checks the inline PTX of kernels/mma.cuh)"
python3 scripts/cubin-check.py flash
