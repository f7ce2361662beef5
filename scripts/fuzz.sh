#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/ (cargo-fuzz, libFuzzer) on the stable
# toolchain. See docs/fuzzing.md.
#
#   scripts/fuzz.sh --smoke            every target for a few seconds (CI)
#   scripts/fuzz.sh [SECONDS] [TARGET…] every (or each named) target for
#                                      SECONDS (default 600), one after another
#   FUZZ_JOBS=N scripts/fuzz.sh …      N targets at once (default 1)
#
# Seeds are fuzz/seeds/<target>/ (committed); what a timed run finds goes to
# fuzz/corpus/<target>/ (a smoke run keeps nothing), logs to fuzz/logs/ and
# crashes to fuzz/artifacts/<target>/ (all ignored).
# Exit status: 0 when every target ran clean, 1 when one crashed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here/fuzz"

CARGO_FUZZ_VERSION=0.13.2
# cargo-fuzz passes nightly-only flags (-Z); the stable compiler accepts
# them with RUSTC_BOOTSTRAP. No sanitizer: the workspace forbids unsafe
# code, so AddressSanitizer would find nothing that Rust's own checks miss.
export RUSTC_BOOTSTRAP=1
BUILD_FLAGS=(--release --debug-assertions --sanitizer none)

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

seconds=600
logs=logs
corpus=corpus
if [[ "${1:-}" == "--smoke" ]]; then
    seconds=${FUZZ_SMOKE_SECONDS:-5}
    # Apart from a longer run's files, which may be in use; what a smoke
    # run finds is not kept.
    logs=logs/smoke
    corpus=$(mktemp -d "${TMPDIR:-/tmp}/syncdata-fuzz.XXXXXX")
    trap 'rm -rf "$corpus"' EXIT
    # Unoptimized: builds in about half the time, and a few seconds of
    # fuzzing only checks that every target builds and runs its seeds.
    BUILD_FLAGS=(--dev --sanitizer none)
    shift
elif [[ "${1:-}" =~ ^[0-9]+$ ]]; then
    seconds=$1
    shift
fi
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(cargo fuzz list)
fi
jobs=${FUZZ_JOBS:-1}

cargo fuzz build "${BUILD_FLAGS[@]}"

run_one() {
    local t=$1
    mkdir -p "$corpus/$t" "artifacts/$t" "$logs"
    rm -f "$logs/$t.rc"
    # Inputs are kept small: the targets repeat or split them as needed.
    if cargo fuzz run "${BUILD_FLAGS[@]}" "$t" "$corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="artifacts/$t/" \
        >"$logs/$t.log" 2>&1; then
        echo 0 >"$logs/$t.rc"
    else
        echo 1 >"$logs/$t.rc"
    fi
}

running=0
for t in "${targets[@]}"; do
    echo "fuzz.sh: $t for ${seconds}s" >&2
    run_one "$t" &
    running=$((running + 1))
    if (( running >= jobs )); then
        wait -n || true
        running=$((running - 1))
    fi
done
wait

failed=()
for t in "${targets[@]}"; do
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logs/$t.log" | grep -o '[0-9]*$' || echo "?")
    echo "fuzz.sh: $t: ${execs} executions in ${seconds}s" >&2
    if [[ "$(cat "$logs/$t.rc" 2>/dev/null)" != 0 ]]; then
        failed+=("$t")
    fi
done
if (( ${#failed[@]} > 0 )); then
    for t in "${failed[@]}"; do
        echo "fuzz.sh: $t FAILED; log fuzz/$logs/$t.log, input in fuzz/artifacts/$t/" >&2
        tail -n 30 "$logs/$t.log" >&2
    done
    exit 1
fi
echo "fuzz.sh: every target ran clean" >&2
