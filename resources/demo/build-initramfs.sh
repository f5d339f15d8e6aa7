#!/usr/bin/env bash
# resources/demo/build-initramfs.sh: builds the demo initramfs (hello-init as /init).
#
# What this script owns: compiling resources/demo/hello-init.c into a static binary and packing
# it, with /dev/console (c 5 1), /dev, /proc and /sys, into an uncompressed newc cpio archive,
# cached as ${HERD_CACHE:-$HOME/.cache/herd}/demo/<key>/initramfs.cpio.
#
# Why: the demo shows a herd microVM running user space and reporting its boot time and exit
# status (hardware-KVM hosts only; under PVM user space cannot start). The archive is packed
# with the kernel tree's gen_init_cpio, cached by guest-kernel/build.sh, so device nodes need
# no root. <key> is a sha256 over this script's recipe version, hello-init.c, the compiler and
# C library versions and the gen_init_cpio binary, so reruns return at once.
#
# Usage: resources/demo/build-initramfs.sh [OUTPUT]
#   Without OUTPUT the cached archive's path is printed; with OUTPUT the archive is copied
#   there (atomically) and OUTPUT is printed. The path is always the last stdout line;
#   progress goes to stderr. Needs gcc with a static glibc (libc6-dev) and a built kernel
#   (guest-kernel/build.sh).
set -euo pipefail
export LC_ALL=C

# Bump whenever the steps below change the archive.
readonly RECIPE_VERSION=1

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly HERE
readonly SOURCE=$HERE/hello-init.c
readonly KERNEL_BUILD=$HERE/../../guest-kernel/build.sh
readonly DEMO_CACHE=${HERD_CACHE:-$HOME/.cache/herd}/demo
readonly CFLAGS=(-static -Os -std=gnu11 -Wall -Wextra -Werror)

log() { printf 'herd-demo: %s\n' "$*" >&2; }
die() { printf 'herd-demo: error: %s\n' "$*" >&2; exit 1; }

case ${1-} in
    -h | --help) sed -n 's/^# \{0,1\}//; /^Usage:/,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' >&2; exit 0 ;;
    -*) die "unknown option: $1 (usage: ${BASH_SOURCE[0]} [OUTPUT])" ;;
    *) ;;
esac
(($# <= 1)) || die "too many arguments (usage: ${BASH_SOURCE[0]} [OUTPUT])"
output=${1-}

[[ -f $SOURCE ]] || die "source not found: $SOURCE"
command -v gcc >/dev/null || die "gcc not found (install build-essential)"
command -v sha256sum >/dev/null || die "sha256sum not found (install coreutils)"

kernel_dir=$("$KERNEL_BUILD" --print-dir) ||
    die "the guest kernel is not built, and its gen_init_cpio packs this archive; run guest-kernel/build.sh first"
readonly GEN_INIT_CPIO=$kernel_dir/gen_init_cpio
[[ -x $GEN_INIT_CPIO ]] || die "$GEN_INIT_CPIO missing or not executable"

libc_version() {
    if command -v dpkg-query >/dev/null; then
        dpkg-query -W -f='${Version}' libc6-dev 2>/dev/null || echo unknown
    else
        ldd --version 2>/dev/null | sed -n 1p || echo unknown
    fi
}

key=$({
    printf 'herd-demo initramfs recipe %s\n' "$RECIPE_VERSION"
    printf 'cflags %s\n' "${CFLAGS[*]}"
    printf 'gcc %s\n' "$(gcc -dumpfullversion)"
    printf 'libc %s\n' "$(libc_version)"
    printf 'gen_init_cpio %s\n' "$(sha256sum <"$GEN_INIT_CPIO" | cut -d' ' -f1)"
    cat "$SOURCE"
} | sha256sum | cut -d' ' -f1)
final=$DEMO_CACHE/$key

# Copies the archive to OUTPUT if one was given, then prints the path to use.
deliver() {
    local archive=$1/initramfs.cpio
    if [[ -z $output ]]; then
        printf '%s\n' "$archive"
        return 0
    fi
    local tmp
    tmp=$(mktemp "$(dirname -- "$output")/.initramfs.XXXXXX") ||
        die "cannot write next to $output"
    if ! { cp -- "$archive" "$tmp" && mv -f -- "$tmp" "$output"; }; then
        rm -f -- "$tmp"
        die "cannot write $output"
    fi
    log "copied to $output"
    printf '%s\n' "$output"
}

if [[ -s $final/initramfs.cpio ]]; then
    log "up to date ($final)"
    deliver "$final"
    exit 0
fi

mkdir -p -- "$DEMO_CACHE"
stage=$(mktemp -d "$DEMO_CACHE/.stage-$key-XXXXXX")
trap 'rm -rf -- "$stage"' EXIT

log "compiling hello-init (gcc ${CFLAGS[*]})"
gcc "${CFLAGS[@]}" -o "$stage/hello-init" "$SOURCE" >&2 || die "compiling $SOURCE failed"
strip -- "$stage/hello-init"
touch -d @0 -- "$stage/hello-init"

# gen_init_cpio splits its list on whitespace, so name the binary relative to the stage dir
# (the cache path may contain spaces). Timestamps are fixed for a reproducible archive.
cat >"$stage/cpio.list" <<'EOF'
dir /dev 0755 0 0
nod /dev/console 0600 0 0 c 5 1
dir /proc 0755 0 0
dir /sys 0755 0 0
file /init hello-init 0755 0 0
EOF
log "packing initramfs with $GEN_INIT_CPIO"
(cd -- "$stage" && "$GEN_INIT_CPIO" -t 0 cpio.list >initramfs.cpio.tmp) ||
    die "gen_init_cpio failed"
mv -- "$stage/initramfs.cpio.tmp" "$stage/initramfs.cpio"

# Publish atomically; if a concurrent run won the race, use its (identical) result.
if ! mv -T -- "$stage" "$final" 2>/dev/null; then
    [[ -s $final/initramfs.cpio ]] || die "cannot install into $final"
    log "built by a concurrent run"
fi
log "built $final/initramfs.cpio ($(stat -c %s "$final/initramfs.cpio") bytes)"
deliver "$final"
