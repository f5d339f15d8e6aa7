//! herd-probe binary. Built for `x86_64-unknown-none` it is the guest image: `entry` (boot
//! assembly, page tables, PVH note), `guest` (the boot flow), `paging`, `devices` (virtio), `end`,
//! and `serving` (`probe.end=serve`, sleeping on the LAPIC timer of `ticker`). Built for the
//! host it only says what it is, so `cargo build --workspace` works.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod devices;
#[cfg(target_os = "none")]
mod end;
#[cfg(target_os = "none")]
mod entry;
#[cfg(target_os = "none")]
mod guest;
#[cfg(target_os = "none")]
mod paging;
#[cfg(target_os = "none")]
mod serving;
#[cfg(target_os = "none")]
mod ticker;

#[cfg(not(target_os = "none"))]
fn main() {
    println!(
        "herd-probe is a guest image for herd-vmm; build it with \
         `cargo build --release -p herd-probe --target x86_64-unknown-none`"
    );
}
