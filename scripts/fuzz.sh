#!/usr/bin/env bash
# scripts/fuzz.sh [SECONDS_PER_TARGET]: builds every cargo-fuzz target in fuzz/ and runs each
# for SECONDS_PER_TARGET seconds (default 300), one after the other. Each target's corpus is
# fuzz/corpus/<target>/ (generated, untracked), seeded from fuzz/seeds/<target>/ (committed).
# Exits non-zero if any target crashed (a panic, an overflow, a timeout or running out of
# memory), after printing the path of each crash input; rerun one with
#   cd fuzz && cargo fuzz run --sanitizer none <target> <crash input>
#
# Toolchain: stable only. cargo-fuzz builds with AddressSanitizer by default, which needs
# `-Zsanitizer` and so nightly; `--sanitizer none` leaves the flags cargo-fuzz passes all
# stable (`-Cpasses=sancov-module`, `-Cllvm-args=-sanitizer-coverage-*`, `--cfg fuzzing`,
# `-Cdebug-assertions`), so no RUSTC_BOOTSTRAP is needed. What is lost is ASan's checks of
# unsafe code; what the targets reach is safe Rust, whose bugs (panics, arithmetic overflow
# with debug assertions on, out-of-bounds indexing) abort the run without a sanitizer.
# libfuzzer-sys compiles libFuzzer itself, which needs a C++ compiler (g++).
set -euo pipefail
cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../fuzz"

seconds=${1:-300}
cargo_fuzz_version=0.13.2
# Same flags for build and run, or `cargo fuzz run` rebuilds.
flags=(--sanitizer none)

if ! cargo fuzz --version 2>/dev/null | grep -qxF "cargo-fuzz $cargo_fuzz_version"; then
    cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked
fi

started=$SECONDS
cargo fuzz build "${flags[@]}"
printf 'herd-fuzz: built in %d s\n' "$((SECONDS - started))" >&2

# Marks the start, so only this run's crash inputs are reported, not older ones.
mark=$(mktemp)
trap 'rm -f -- "$mark"' EXIT
failed=()
for target in $(cargo fuzz list); do
    mkdir -p "corpus/$target" "artifacts/$target"
    log="artifacts/$target/last-run.log"
    # libFuzzer adds what it finds to the first directory only: the seeds stay as committed.
    dirs=("corpus/$target")
    [[ -d seeds/$target ]] && dirs+=("seeds/$target")
    printf 'herd-fuzz: %s for %s s\n' "$target" "$seconds" >&2
    # -timeout: an input that takes 10 s is a hang (reported as a timeout crash).
    if cargo fuzz run "${flags[@]}" "$target" "${dirs[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added)' "$log" \
            | sed "s/^/herd-fuzz: $target: /" >&2 || true
    else
        failed+=("$target")
        tail -n 40 "$log" >&2
        find "artifacts/$target" -type f -newer "$mark" ! -name last-run.log \
            -printf "herd-fuzz: $target crash input: $PWD/%p\n" >&2
    fi
done

printf 'herd-fuzz: done in %d s\n' "$((SECONDS - started))" >&2
if ((${#failed[@]})); then
    echo "herd-fuzz: crashes in: ${failed[*]}" >&2
    exit 1
fi
