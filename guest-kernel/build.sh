#!/usr/bin/env bash
# guest-kernel/build.sh: builds herd's minimal guest kernel and caches it.
#
# What this script owns: turning Debian's linux-source-6.1 + guest-kernel/herd.config +
# guest-kernel/patches/*.patch into a cache directory
#   ${HERD_CACHE:-$HOME/.cache/herd}/kernel/<key>/
# holding vmlinux (PVH-bootable ELF, debug info stripped, symbols kept), bzImage, config,
# gen_init_cpio (to pack initramfs archives without root), version (kernel release),
# System.map and build-info. <key> is a sha256 over everything that decides the output
# (see compute_key), so a second run is a no-op that just prints the directory.
#
# Why a script and not a Makefile: herd-vmm tests and demos need one command that works on a
# fresh Debian machine (installing build packages when root), never rebuilds needlessly (a
# build takes ~4 minutes on 2 cores), and never leaves a half-written kernel where a reader
# might pick it up (the result is staged, then renamed into place under a lock).
#
# Usage: guest-kernel/build.sh [--print-dir] [--verbose]
#   (no option)   build if needed; progress on stderr, cache directory as last stdout line
#   --print-dir   print the cache directory if the kernel is built, else exit 1; never builds
#   --verbose     stream kbuild output to stderr instead of a log file
# Environment: HERD_CACHE (cache root), HERD_JOBS (make -j, default nproc).
set -euo pipefail
export LC_ALL=C

# Bump whenever the build steps below change in a way that changes the output.
readonly RECIPE_VERSION=1

readonly SRC_PKG=linux-source-6.1
readonly SRC_TARBALL=/usr/src/linux-source-6.1.tar.xz
readonly BUILD_PKGS=(linux-source-6.1 build-essential bc bison flex libelf-dev libssl-dev cpio xz-utils)

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly HERE
readonly FRAGMENT=$HERE/herd.config
readonly PATCH_DIR=$HERE/patches
readonly KERNEL_CACHE=${HERD_CACHE:-$HOME/.cache/herd}/kernel
readonly OUTPUTS=(vmlinux bzImage config gen_init_cpio version)

log() { printf 'herd-kernel: %s\n' "$*" >&2; }
die() { printf 'herd-kernel: error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n 's/^# \{0,1\}//; /^Usage:/,/^Environment:/p' "${BASH_SOURCE[0]}" >&2
}

print_dir=0
verbose=0
while (($#)); do
    case $1 in
        --print-dir) print_dir=1 ;;
        --verbose) verbose=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage; die "unknown argument: $1" ;;
    esac
    shift
done

# ---------------------------------------------------------------------------------------------
# Inputs

[[ -f $FRAGMENT ]] || die "config fragment not found: $FRAGMENT"
shopt -s nullglob
PATCHES=("$PATCH_DIR"/*.patch)
shopt -u nullglob

# The fragment may only hold `CONFIG_X=value`, `# CONFIG_X is not set`, comments and blank
# lines: anything else would be silently ignored by kconfig and by the survival check.
check_fragment_syntax() {
    local line n=0
    while IFS= read -r line || [[ -n $line ]]; do
        n=$((n + 1))
        [[ $line =~ ^CONFIG_[A-Za-z0-9_]+=.+$ ]] && continue
        [[ $line =~ ^#\ CONFIG_[A-Za-z0-9_]+\ is\ not\ set$ ]] && continue
        [[ $line =~ ^[[:space:]]*$ ]] && continue
        [[ $line =~ ^#\ CONFIG_ ]] && die "$FRAGMENT:$n: malformed 'is not set' line: $line"
        [[ $line =~ ^# ]] && continue
        die "$FRAGMENT:$n: not a kconfig assignment: $line"
    done <"$FRAGMENT"
}

package_installed() {
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

# (a) Build packages. Installs what is missing when root; otherwise names the exact command.
ensure_packages() {
    command -v dpkg-query >/dev/null || die "dpkg-query not found: this script needs Debian/Ubuntu packages (${BUILD_PKGS[*]})"
    local p missing=()
    for p in "${BUILD_PKGS[@]}"; do
        package_installed "$p" || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    if ((EUID != 0)); then
        die "missing build packages: ${missing[*]}; install them with: sudo apt-get install --no-install-recommends ${missing[*]}"
    fi
    log "installing missing build packages: ${missing[*]}"
    local apt=(apt-get -o DPkg::Lock::Timeout=600 -y --no-install-recommends)
    if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${missing[@]}" >&2; then
        log "apt-get install failed; refreshing package lists and retrying"
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" update >&2 ||
            die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${missing[@]}" >&2 ||
            die "apt-get install failed for: ${missing[*]}"
    fi
}

# (b) Cache key: sha256 over the installed source package version, the fragment, every patch
# (name and content, in order) and RECIPE_VERSION.
compute_key() {
    local version p
    version=$(dpkg-query -W -f='${Version}' "$SRC_PKG" 2>/dev/null) ||
        die "$SRC_PKG is not installed"
    {
        printf 'herd-kernel recipe %s\n' "$RECIPE_VERSION"
        printf 'source %s %s\n' "$SRC_PKG" "$version"
        printf 'fragment\n'
        cat "$FRAGMENT"
        for p in "${PATCHES[@]}"; do
            printf 'patch %s\n' "${p##*/}"
            cat "$p"
        done
    } | sha256sum | cut -d' ' -f1
}

is_complete() {
    local dir=$1 f
    for f in "${OUTPUTS[@]}"; do
        [[ -s $dir/$f ]] || return 1
    done
}

# ---------------------------------------------------------------------------------------------
# Build steps

# Fail unless every assignment in the fragment is in the final .config, listing all that are not.
verify_config() {
    local config=$1 line sym got bad=()
    while IFS= read -r line || [[ -n $line ]]; do
        if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=.+$ ]]; then
            sym=${BASH_REMATCH[1]}
            grep -qxF -- "$line" "$config" && continue
        elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
            sym=${BASH_REMATCH[1]}
            grep -q "^$sym=" "$config" || continue
        else
            continue
        fi
        got=$(grep -E "^($sym=|# $sym is not set)" "$config" || true)
        bad+=("  wanted '$line', got '${got:-absent (gate off or dependency missing)}'")
    done <"$FRAGMENT"
    if ((${#bad[@]})); then
        printf 'herd-kernel: error: %d option(s) from %s did not survive olddefconfig:\n' \
            "${#bad[@]}" "$FRAGMENT" >&2
        printf '%s\n' "${bad[@]}" >&2
        exit 1
    fi
}

# vmlinux must carry XEN_ELFNOTE_PHYS32_ENTRY (type 18 = 0x12, owner "Xen"): herd-vmm's PVH entry.
has_pvh_note() {
    local notes
    notes=$(readelf -n --wide "$1") || return 1
    grep -Eq '^[[:space:]]*Xen[[:space:]].*(\(0x0*12\)|PHYS32_ENTRY)' <<<"$notes"
}

# Runs make in the tree; output goes to the build log unless --verbose.
kmake() {
    local status=0
    if ((verbose)); then
        make -C "$tree" ARCH=x86_64 "$@" >&2 || status=$?
    else
        make -C "$tree" ARCH=x86_64 "$@" >>"$build_log" 2>&1 || status=$?
    fi
    if ((status != 0)); then
        if ((!verbose)); then
            cp -f -- "$build_log" "$KERNEL_CACHE/last-failure.log" 2>/dev/null || true
            log "last lines of the build log (full log: $KERNEL_CACHE/last-failure.log):"
            tail -n 40 -- "$build_log" >&2
        fi
        die "make $* failed"
    fi
}

scratch=''
stage=''
tree=''
build_log=''
cleanup() {
    if [[ -n $scratch && -d $scratch ]]; then rm -rf -- "$scratch"; fi
    if [[ -n $stage && -d $stage ]]; then rm -rf -- "$stage"; fi
}

build() {
    local key=$1 final=$2 started=$SECONDS

    [[ $(uname -m) == x86_64 ]] || die "the guest kernel is built natively on x86_64 only (this is $(uname -m))"
    [[ -f $SRC_TARBALL ]] || die "$SRC_TARBALL is missing although $SRC_PKG is installed; reinstall $SRC_PKG"
    local tool
    for tool in make gcc tar xz patch readelf strip sha256sum flock; do
        command -v "$tool" >/dev/null || die "required tool not found: $tool"
    done

    mkdir -p -- "$KERNEL_CACHE"
    # One builder per key: a second caller waits, then finds the result.
    exec 9>"$KERNEL_CACHE/.lock-$key"
    if ! flock -n 9; then
        log "another build of this kernel is running; waiting for it"
        flock 9
    fi
    if is_complete "$final"; then
        log "built by a concurrent run"
        printf '%s\n' "$final"
        return 0
    fi
    # Leftovers of interrupted runs of this key (we hold the lock, so none is live).
    rm -rf -- "$final" "$KERNEL_CACHE/.scratch-$key-"* "$KERNEL_CACHE/.stage-$key-"*

    # The unpacked tree is 1.5 GB: keep it next to the cache, not in /tmp.
    scratch=$KERNEL_CACHE/.scratch-$key-$$
    stage=$KERNEL_CACHE/.stage-$key-$$
    trap cleanup EXIT
    mkdir -p -- "$scratch" "$stage"
    build_log=$scratch/build.log
    : >"$build_log"

    log "unpacking $SRC_TARBALL ($SRC_PKG $(dpkg-query -W -f='${Version}' "$SRC_PKG"))"
    tar -xJf "$SRC_TARBALL" -C "$scratch"
    tree=$scratch/linux-source-6.1
    [[ -f $tree/Makefile ]] || die "unexpected tarball layout: $tree/Makefile not found"

    local p
    for p in "${PATCHES[@]}"; do
        log "applying patch ${p##*/}"
        patch -d "$tree" -p1 --forward --batch --quiet <"$p" >&2 ||
            die "patch ${p##*/} does not apply to $SRC_PKG $(dpkg-query -W -f='${Version}' "$SRC_PKG")"
    done

    log "configuring: tinyconfig + ${FRAGMENT##*/} + olddefconfig"
    kmake tinyconfig
    (cd -- "$tree" && scripts/kconfig/merge_config.sh -m .config "$FRAGMENT") >>"$build_log" 2>&1 ||
        die "merge_config.sh failed (see $build_log)"
    kmake olddefconfig
    verify_config "$tree/.config"
    log "configuration verified: all $(grep -cE '^(CONFIG_|# CONFIG_.* is not set$)' "$FRAGMENT") fragment options survived; $(grep -c '=y$' "$tree/.config") options =y"

    local jobs=${HERD_JOBS:-$(nproc)}
    log "compiling vmlinux, bzImage and usr/gen_init_cpio with -j$jobs (about 4 minutes on 2 cores)"
    export KBUILD_BUILD_USER=herd KBUILD_BUILD_HOST=herd
    kmake -j"$jobs" vmlinux bzImage
    # gen_init_cpio is built as part of usr/ (the built-in initramfs); make sure of it.
    [[ -x $tree/usr/gen_init_cpio ]] || kmake usr/
    [[ -x $tree/usr/gen_init_cpio ]] || die "usr/gen_init_cpio was not built"

    log "installing into $final"
    strip --strip-debug -o "$stage/vmlinux" "$tree/vmlinux"
    has_pvh_note "$stage/vmlinux" || die "vmlinux lacks the PVH note (Xen, type 0x12); is CONFIG_PVH on?"
    cp -- "$tree/arch/x86/boot/bzImage" "$stage/bzImage"
    cp -- "$tree/.config" "$stage/config"
    cp -- "$tree/usr/gen_init_cpio" "$stage/gen_init_cpio"
    cp -- "$tree/System.map" "$stage/System.map"
    make -s -C "$tree" ARCH=x86_64 kernelrelease >"$stage/version"
    {
        printf 'key=%s\n' "$key"
        printf 'recipe=%s\n' "$RECIPE_VERSION"
        printf 'source=%s %s\n' "$SRC_PKG" "$(dpkg-query -W -f='${Version}' "$SRC_PKG")"
        printf 'patches=%s\n' "$(for p in "${PATCHES[@]}"; do printf '%s ' "${p##*/}"; done)"
        printf 'compiler=gcc %s\n' "$(gcc -dumpfullversion)"
        printf 'build_seconds=%s\n' "$((SECONDS - started))"
    } >"$stage/build-info"
    is_complete "$stage" || die "internal: staged output incomplete"
    mv -T -- "$stage" "$final"
    stage=''
    rm -rf -- "$scratch"
    scratch=''

    log "done in $((SECONDS - started)) s: $(cat "$final/version"), bzImage $(stat -c %s "$final/bzImage") bytes"
    printf '%s\n' "$final"
}

# ---------------------------------------------------------------------------------------------
# Main

check_fragment_syntax

if ((print_dir)); then
    package_installed "$SRC_PKG" || die "$SRC_PKG is not installed, so no kernel is built"
    dir=$KERNEL_CACHE/$(compute_key)
    is_complete "$dir" || die "kernel not built yet (would be $dir); run ${BASH_SOURCE[0]}"
    printf '%s\n' "$dir"
    exit 0
fi

# (c) Fast path: already built for these inputs.
if package_installed "$SRC_PKG"; then
    key=$(compute_key)
    if is_complete "$KERNEL_CACHE/$key"; then
        log "up to date"
        printf '%s\n' "$KERNEL_CACHE/$key"
        exit 0
    fi
fi

ensure_packages
key=$(compute_key)
log "cache key $key"
build "$key" "$KERNEL_CACHE/$key"
