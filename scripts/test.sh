#!/usr/bin/env bash
# The project's test command (README: "Run the tests"). On a machine with no GPU:
#  1. every CPU test (golden vs transformers, gradients vs PyTorch, RL math, CLI end to end)
#     and every CUDA kernel against the CPU reference on the CUDA emulator (feature emu);
#  2. NVRTC from pip compiles every kernel to PTX (feature cuda): a kernel that does not
#     compile fails here; the GPU tests of that build say SKIPPED when no GPU is present;
#     then to CUBIN (scripts/cubin-check.py), which assembles the inline PTX as well.
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
