#!/usr/bin/env bash
# The project's test command (README: "Run the tests"): every unit, golden, equivalence and
# end-to-end test, on the CPU (and on the CUDA emulator once the `emu` feature is wired in).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test "$@"
