#!/usr/bin/env bash
# Mutation testing of the RL core with cargo-mutants (https://mutants.rs): every mutant of the
# listed files (a function body replaced, an operator flipped, ...) must make some test fail.
# Prints, per file and in total, "N caught, M missed, K unviable" (+ timeouts); the missed
# mutants are listed in OUT/<file>/mutants.out/missed.txt. Not part of CI: each mutant rebuilds
# the crate and runs that file's tests (minutes each on 2 cores). docs/testing.md has the score.
#
# Usage: scripts/mutants.sh [FILE...]        (default: the files below, smallest first)
# Env:   MUTANTS_OUT (default target/mutants), MUTANTS_TIMEOUT (test timeout, s, default 300),
#        MUTANTS_JOBS (default 1), MUTANTS_IN_PLACE=1 to mutate this tree in place (use it in a
#        scratch clone: `git clone . /tmp/m && cp -a target /tmp/m/ && cd /tmp/m && MUTANTS_IN_PLACE=1
#        scripts/mutants.sh`; cargo-mutants' own copy of target/ loses the mtimes and rebuilds
#        every dependency, ~20 min on 2 cores), MUTANTS_FAST=0 to build mutants with the
#        plain dev profile (see below), MUTANTS_ARGS: more cargo-mutants options, e.g.
#        MUTANTS_ARGS="--re clip_scale" to rerun the mutants a new test should kill,
#        MUTANTS_TESTS: the test targets instead of the file's list below, e.g. MUTANTS_TESTS=lib
#        for a first pass with the unit tests only (then rerun its survivors with the full list).
# Speed: a mutant changes one function, so by default our crate is built incrementally at
# opt-level 0 without debug info (dependencies keep dev's opt-level 3, so their compiled copies
# in target/debug are reused; the settings are env overrides of the dev profile, not a new
# profile, whose own target dir would rebuild every dependency). Measured on optim.rs's tests:
# 68 s per mutant build with the dev profile, 14 s incremental, 5 s incremental at opt-level 0.
# (The dev profile itself is at opt-level 0 since 2026-11-28; the override still drops debug info.)
# They change our crate's artifacts in target/debug: that is why the scratch clone.
# Needs: cargo install cargo-mutants --locked
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-mutants >/dev/null || {
    echo "cargo-mutants is not installed: cargo install cargo-mutants --locked" >&2
    exit 2
}
out_root=${MUTANTS_OUT:-target/mutants}
timeout=${MUTANTS_TIMEOUT:-300}
jobs=${MUTANTS_JOBS:-1}
where="--copy-target true --jobs $jobs"
[ "${MUTANTS_IN_PLACE:-0}" = 1 ] && where="--in-place"
if [ "${MUTANTS_FAST:-1}" = 1 ]; then
    export CARGO_INCREMENTAL=1 CARGO_PROFILE_DEV_OPT_LEVEL=0 CARGO_PROFILE_DEV_DEBUG=false
fi

# The tests that exercise each file (running only these keeps a mutant to one build + a few
# test binaries; a mutant these miss is a gap in these tests). `lib` is the crate's unit tests.
tests_for() {
    if [ -n "${MUTANTS_TESTS:-}" ]; then
        echo "$MUTANTS_TESTS"
        return
    fi
    case "$1" in
    src/train/checkpoint.rs) echo "checkpoint_faults sft_train hostile_inputs" ;; # hostile_inputs: the resume note
    src/optim.rs) echo "optim_adamw rl_update" ;; # no unit test in the lib reaches optim.rs
    src/rl/advantage.rs) echo "lib parity_upstream rl_update grpo_learns" ;;
    src/rl/trainer.rs) echo "rl_update grpo_learns dp_grpo" ;; # dp_grpo: collect_with, update_with on N ranks
    src/rl/rollout.rs) echo "lib sampling kv_cache" ;;
    src/rl/sampling.rs) echo "sampling sample_kernel" ;; # no unit test in the lib reaches it
    src/rl/grpo.rs | src/rl/grpo/*.rs) echo "lib parity_upstream rl_update" ;;
    src/rl/vas.rs) echo "lib vas_in_loop cli_score" ;;
    *) echo "lib" ;;
    esac
}

# The targets go to every cargo call (`--cargo-arg`), the build too: arguments after `--` reach
# only `cargo test`, and cargo-mutants' `cargo test --no-run` would build every test target for
# every mutant. The integration tests are one binary (tests/suite/), so a file's tests there are
# picked by a filter (`rl_update::`), which reaches the test binaries after a second `--`
# (`cargo mutants ... -- -- FILTER...`); libtest applies the filters to the unit tests too,
# so `lib` adds `tests::`, which every unit test's path holds (`#[cfg(test)] mod tests`).
target_args() {
    local suite=0
    for t in $(tests_for "$1"); do
        if [ "$t" = lib ]; then echo "--cargo-arg=--lib"; else suite=1; fi
    done
    if [ $suite = 1 ]; then echo "--cargo-arg=--test=suite"; fi
}
test_filters() {
    echo "-- --"
    for t in $(tests_for "$1"); do
        if [ "$t" = lib ]; then echo "tests::"; else echo "$t::"; fi
    done
}

files=("$@")
if [ ${#files[@]} -eq 0 ]; then
    files=(src/train/checkpoint.rs src/optim.rs src/rl/advantage.rs src/rl/trainer.rs
        src/rl/rollout.rs src/rl/sampling.rs src/rl/grpo.rs src/rl/grpo/agg.rs src/rl/grpo/kl.rs
        src/rl/grpo/policy.rs src/rl/vas.rs)
fi

tc=0 tm=0 tu=0 tt=0
for f in "${files[@]}"; do
    o="$out_root/$(echo "$f" | tr / _)"
    mkdir -p "$o"
    # shellcheck disable=SC2046,SC2086
    # nice: the machine is shared; mutation runs must never starve other builds.
    nice -n 19 cargo mutants --file "$f" --timeout "$timeout" --build-timeout 1800 \
        --baseline skip $where --no-shuffle --features emu --output "$o" \
        $(target_args "$f") ${MUTANTS_ARGS:-} $(test_filters "$f") >"$o/log.txt" 2>&1 || true
    count() { [ -f "$o/mutants.out/$1.txt" ] && wc -l <"$o/mutants.out/$1.txt" || echo 0; }
    c=$(count caught) m=$(count missed) u=$(count unviable) t=$(count timeout)
    echo "$f: $c caught, $m missed, $u unviable, $t timeouts"
    tc=$((tc + c)) tm=$((tm + m)) tu=$((tu + u)) tt=$((tt + t))
done
echo "total: $tc caught, $tm missed, $tu unviable, $tt timeouts"
