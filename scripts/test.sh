#!/usr/bin/env bash
# The project's test command (README: "Run the tests"). On a machine with no GPU:
#  1. formatting (`cargo fmt --all --check`);
#  2. one build of everything (library, binary, the test suite, examples, benches; both crates)
#     with features `emu`, `cuda` and `mpi`, compiled by clippy-driver: lints as `cargo clippy`
#     runs them, warnings are errors (see "Lints" below);
#  3. the tests: every CPU test (golden vs transformers, gradients vs PyTorch, RL math, upstream
#     parity, CLI end to end), every CUDA kernel against the CPU reference on the CUDA emulator,
#     and the kernels compiled to PTX by NVRTC from pip (a kernel that does not compile fails the
#     build). The kernel suite (tests/suite/kernels_vs_cpu.rs) runs every launch under four
#     schedules (forward, reverse, random, a starved warp) and demands bit-identical results;
#     tests/suite/emu_strict.rs proves the emulator reports planted races, poison reads, bad
#     shuffles and launch limits. The GPU tests of that build are #[ignore]d and show as
#     "ignored" (scripts/gpu-check.sh runs them on a GPU with --include-ignored);
#  4. NVRTC to CUBIN for sm_80/sm_90 (scripts/cubin-check.py), which assembles the inline PTX
#     of kernels/mma.cuh as well.
# Feature `mpi` needs Open MPI + libclang (.ci/run installs them): tests/suite/dp_mpi.rs runs
# `mpirun -np 2` sft/train (and a kill + resume) against one process, and the MPI collective on
# 3 ranks. MMR1_NO_MPI=1 builds without it where MPI is missing (and says so).
# Extra arguments go to cargo test (e.g. a test name filter).
# Time goes to compiling: no incremental state (CI builds from scratch once), and
# Cargo.toml keeps debug info small in the dev/test profile.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_INCREMENTAL=0
t0=$SECONDS
step() { echo "== $1 (at $((SECONDS - t0)) s)"; }
# Feature `mpi` (data parallelism over MPI; tests/suite/dp_mpi.rs runs `mpirun -np 2/3`) needs Open
# MPI and libclang (.ci/run installs them). MMR1_NO_MPI=1 builds without it, and says so.
mpi=",mpi"
if [ "${MMR1_NO_MPI:-0}" = 1 ]; then
  mpi=""
  echo "note: MMR1_NO_MPI=1: built without feature mpi; the MPI tests (tests/suite/dp_mpi.rs) do not run"
elif ! command -v mpirun >/dev/null || ! command -v mpicc >/dev/null; then
  # Everything else still builds and runs; the MPI tests are reported as not run, loudly.
  mpi=""
  echo "WARNING: MPI not found (mpirun, mpicc): built without feature mpi, so tests/suite/dp_mpi.rs" \
    "DOES NOT RUN. Install Open MPI (Debian: apt-get install openmpi-bin libopenmpi-dev" \
    "libclang-dev; .ci/run does this as root) to run it."
fi
# As root (CI containers) mpirun refuses to start without these.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
step "format"
cargo fmt --all --check
step "NVRTC from pip"
eval "$(bash scripts/setup-nvrtc.sh)"

# Lints. `cargo clippy` is `cargo check` with clippy-driver as the compiler of the workspace's
# crates (RUSTC_WORKSPACE_WRAPPER) and its options in CLIPPY_ARGS; clippy-driver is rustc plus
# the lints, so the same two variables make the test build itself lint. One compile instead of
# a check of every dependency and a second front end of ours: on CI's 2 cores clippy alone took
# 258 s (docs/testing.md, "CI time"). The builds of dependencies are unchanged (plain rustc),
# so a plain `cargo test` afterwards recompiles only our two crates.
#
# rustup puts clippy-driver in the toolchain's sysroot; a distribution's Rust may put it on PATH.
clippy_driver="$(rustc --print sysroot)/bin/clippy-driver"
[ -x "$clippy_driver" ] || clippy_driver="$(command -v clippy-driver || true)"
[ -n "$clippy_driver" ] || {
  echo "clippy-driver not found (toolchain sysroot or PATH): install clippy (rustup component add clippy)"
  exit 1
}
export RUSTC_WORKSPACE_WRAPPER="$clippy_driver"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
# CLIPPY_ARGS is how cargo-clippy talks to clippy-driver, not a documented interface: prove
# that a clippy warning still fails a compile here, and that clean code still compiles.
canary=$(mktemp -d)
trap 'rm -rf "$canary"' EXIT
printf 'pub fn f(x: i32) -> i32 {\n    return x;\n}\n' >"$canary/lint.rs"
printf 'pub fn f(x: i32) -> i32 {\n    x\n}\n' >"$canary/clean.rs"
lint_check() {
  CARGO_PRIMARY_PACKAGE=1 "$clippy_driver" --crate-type lib --edition 2021 --emit=metadata \
    --out-dir "$canary" "$canary/$1.rs" 2>/dev/null
}
if lint_check lint || ! lint_check clean; then
  echo "clippy-driver no longer turns a clippy warning (needless_return) into an error through"
  echo "CLIPPY_ARGS: lint with 'cargo clippy --workspace --all-targets --features emu,cuda$mpi -- -D warnings'"
  echo "and run 'cargo test --features emu,cuda$mpi' without RUSTC_WORKSPACE_WRAPPER instead"
  exit 1
fi

step "build, linted by clippy: library, binary, tests, examples, benches (features emu,cuda$mpi)"
cargo test --features "emu,cuda$mpi" --all-targets --no-run
step "tests: CPU reference, CUDA emulator, NVRTC compile, GPU suite (ignored without a GPU), MPI ranks"
cargo test --features "emu,cuda$mpi" "$@"
step "NVRTC to CUBIN for sm_80/sm_90 (ptxas checks the inline PTX of kernels/mma.cuh)"
python3 scripts/cubin-check.py flash
step "done"
