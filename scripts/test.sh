#!/usr/bin/env bash
# scripts/test.sh: runs every herd test: unit tests, end-to-end tests that boot the probe guest
# through the real herd-vmm, and Linux guest smoke tests with our kernel.
#
# It first makes sure what the tests boot exists: the x86_64-unknown-none target for the probe
# guest, our guest kernel (guest-kernel/build.sh, cached) and the demo initramfs. Tests that
# cannot run (no /dev/kvm) say so and append a line to $HERD_SKIP_LOG, which .ci/run checks.
set -euo pipefail
cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."

log() { printf 'herd-test: %s\n' "$*" >&2; }

if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx x86_64-unknown-none; then
    log "adding the x86_64-unknown-none target (probe guest)"
    rustup target add x86_64-unknown-none
fi
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
    log "adding the x86_64-unknown-linux-musl target (herd-init, static)"
    rustup target add x86_64-unknown-linux-musl
fi

log "guest kernel (cached after the first build, ~4 minutes on 2 cores)"
HERD_KERNEL_DIR=$(guest-kernel/build.sh | tail -n 1)
export HERD_KERNEL_DIR
log "guest kernel in $HERD_KERNEL_DIR"
HERD_DEMO_INITRD=$(resources/demo/build-initramfs.sh | tail -n 1)
export HERD_DEMO_INITRD
log "demo initramfs $HERD_DEMO_INITRD"

cargo build --workspace --bins
cargo test --workspace "$@"

# What hosts should run: herd-vmm as a static musl binary (half the resident memory per VM
# of the glibc build, see benches/RESULTS.md). Boot, snapshot and restore it end to end (its
# seccomp lists must cover what musl calls).
log "static herd-vmm (musl, release) through the boot and snapshot tests"
cargo build --release --target x86_64-unknown-linux-musl -p herd-vmm
HERD_VMM_BIN=$PWD/target/x86_64-unknown-linux-musl/release/herd-vmm \
    cargo test -p herd-tests --test boot --test snapshot "$@"
