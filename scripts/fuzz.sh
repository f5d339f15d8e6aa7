#!/usr/bin/env bash
# scripts/fuzz.sh: runs every cargo-fuzz target in fuzz/ for a while (default 30 s each, or
# the first argument in seconds). Targets cover what untrusted parties feed herd: the
# Firecracker config parser and the virtio request parsers a hostile guest drives. Needs the
# nightly toolchain (present on our machines) and installs cargo-fuzz from crates.io if missing.
set -euo pipefail
cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../fuzz"
seconds=${1:-30}
cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
for target in $(cargo +nightly fuzz list); do
    printf 'herd-fuzz: %s for %s s\n' "$target" "$seconds" >&2
    cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -print_final_stats=1 2>&1 \
        | grep -E '^(stat::number_of_executed_units|Done|==[0-9]+== ERROR)' || true
    # cargo fuzz exits non-zero on a crash; the artifact is under fuzz/artifacts/<target>/.
    if compgen -G "artifacts/$target/crash-*" >/dev/null; then
        echo "herd-fuzz: $target found a crash: $(ls artifacts/"$target"/crash-*)" >&2
        exit 1
    fi
done
