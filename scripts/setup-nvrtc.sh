#!/usr/bin/env bash
# Installs NVRTC (and the CUDA headers it needs) from pip into ./.nvrtc, so `cargo build
# --features cuda` can compile the kernels to PTX on a machine with no CUDA toolkit or GPU.
# Idempotent. Prints the variables to export; build.rs also finds ./.nvrtc on its own.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="$PWD/.nvrtc"
lib="$dir/nvidia/cuda_nvrtc/lib"
inc="$dir/nvidia/cuda_runtime/include"
# cu12 wheels: NVRTC 12.x emits PTX that driver 580 (CUDA 13.0) still JIT-compiles;
# a 13.x NVRTC may emit PTX newer than the driver knows. Major 12 matches cudarc's cuda-12080.
if [ ! -e "$lib/libnvrtc.so.12" ] || [ ! -e "$inc/cuda_bf16.h" ]; then
    python3 -m pip install --quiet --disable-pip-version-check --target "$dir" \
        'nvidia-cuda-nvrtc-cu12>=12.8,<13' 'nvidia-cuda-runtime-cu12>=12.8,<13' >&2
fi
echo "export NVRTC_LIB_DIR=$lib"
echo "export CUDA_INCLUDE_DIR=$inc"
