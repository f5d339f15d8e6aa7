#!/usr/bin/env bash
# scripts/demo.sh: builds herd and a bootable app, then runs it as a microVM with configuration
# injected at boot, printing the boot time.
#
# On hardware KVM: our Linux guest kernel + herd-init + the `hello` example become one image
# (`herd build`); `herd run` boots it twice with different environments: same image, same
# digest, different config; hello prints what it got and exits with the status asked for.
# On a PVM host (/dev/kvm backed by software virtualization: guest kernel code is emulated and
# Linux cannot start user space) the image's kernel is herd's probe guest instead, which prints
# the configuration archive it finds, so the same build/run path is shown end to end.
set -euo pipefail
cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."

say() { printf '\033[1mherd-demo:\033[0m %s\n' "$*" >&2; }

[[ -e /dev/kvm ]] || { say "this host has no /dev/kvm: herd needs KVM (kvm_intel, kvm_amd or kvm_pvm)"; exit 69; }
for target in x86_64-unknown-none x86_64-unknown-linux-musl; do
    if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$target"; then
        rustup target add "$target"
    fi
done
say "building herd, herd-vmm, herd-init, the probe guest and the example apps (release)"
cargo build --release --workspace --bins --quiet
# herd-vmm as hosts should run it: static (musl), half the resident memory per VM.
cargo build --release --target x86_64-unknown-linux-musl -p herd-vmm --quiet
export HERD_VMM=$PWD/target/x86_64-unknown-linux-musl/release/herd-vmm
export HERD_HOME=${HERD_HOME:-$PWD/target/demo-home}
herd=target/release/herd
envs=$(mktemp -d)
trap 'rm -rf "$envs"' EXIT
printf 'GREETING=hello from staging\nEXIT_STATUS=42\n' > "$envs/staging.env"
printf 'GREETING=hello from production\nEXIT_STATUS=42\n' > "$envs/prod.env"

if [[ -d /sys/module/kvm_pvm ]]; then
    say "this host's /dev/kvm is PVM: guest kernel code is emulated (~1.6M instructions/s) and"
    say "Linux cannot start user space, so the demo image boots herd's probe guest as its kernel;"
    say "it prints the instance configuration it finds, then exits 42."
    app=$envs/app; cp target/herd-probe/probe.elf "$app"; chmod 755 "$app"
    "$herd" build --binary "$app" --name demo --version 1.0 --kernel target/herd-probe/probe.elf \
        --init "$app" --cmdline "console=ttyS0 exit=42" >/dev/null
    ref=demo:1.0
else
    say "building the guest kernel (cached; ~4 minutes the first time)"
    kernel_dir=$(guest-kernel/build.sh | tail -n 1)
    "$herd" build --binary target/release/hello --name hello --version 1.0 \
        --kernel "$kernel_dir/vmlinux" >/dev/null
    ref=hello:1.0
fi
say "image $ref is $("$herd" image inspect "$ref" | sed -n 's/.*"digest": *"\([^"]*\)".*/\1/p' | head -n 1)"
for stage in staging prod; do
    say "herd run $ref --env-file $stage.env"
    set +e
    "$herd" run "$ref" --env-file "$envs/$stage.env" -- demo-arg
    status=$?
    set -e
    say "exited with status $status (asked for 42); the boot time is the Guest-boot-time line above"
    [[ $status -eq 42 ]]
done
