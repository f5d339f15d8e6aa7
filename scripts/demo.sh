#!/usr/bin/env bash
# scripts/demo.sh: builds what herd needs and boots a demo microVM, printing its boot time.
#
# On hardware KVM it boots our Linux guest kernel with a tiny static init that greets and exits
# with status 42 through herd-vmm's exit-status port. On a PVM host (/dev/kvm backed by
# software virtualization, where guest kernel code is emulated and Linux cannot start user
# space) it says so and boots herd's probe guest instead, which reports what the VMM gave it.
set -euo pipefail
cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."

say() { printf '\033[1mherd-demo:\033[0m %s\n' "$*" >&2; }

[[ -e /dev/kvm ]] || { say "this host has no /dev/kvm: herd needs KVM (kvm_intel, kvm_amd or kvm_pvm)"; exit 69; }
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx x86_64-unknown-none; then
    rustup target add x86_64-unknown-none
fi
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
    rustup target add x86_64-unknown-linux-musl
fi
say "building herd-vmm and the probe guest (release)"
cargo build --release --workspace --bins --quiet
vmm=target/release/herd-vmm

if [[ -d /sys/module/kvm_pvm ]]; then
    say "this host's /dev/kvm is PVM: guest kernel code is emulated (~1.6M instructions/s),"
    say "so a Linux guest would take ~40 s and could not start user space. Booting herd's"
    say "probe guest instead: a tiny kernel that reports its boot information and exits 42."
    set +e
    "$vmm" --kernel target/herd-probe/probe.elf --vcpus 2 --memory 256 --cmdline "console=ttyS0 exit=42"
    status=$?
else
    say "building the guest kernel (cached; ~4 minutes the first time) and the demo init"
    kernel_dir=$(guest-kernel/build.sh | tail -n 1)
    initrd=$(resources/demo/build-initramfs.sh | tail -n 1)
    say "booting Linux $(cat "$kernel_dir/version") with a static init"
    set +e
    "$vmm" --kernel "$kernel_dir/vmlinux" --initrd "$initrd" --vcpus 2 --memory 256 \
        --cmdline "console=ttyS0 reboot=k panic=-1 pci=off nomodule quiet HERD_DEMO_EXIT=42"
    status=$?
fi
say "herd-vmm exited with status $status (the guest asked for 42); boot time is the Guest-boot-time line above"
[[ $status -eq 42 ]]
