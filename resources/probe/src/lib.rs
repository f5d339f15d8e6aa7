//! herd-probe: a tiny freestanding x86-64 guest for end-to-end tests of herd-vmm.
//!
//! The library holds everything the guest does that is plain logic (parsing what the VMM
//! handed over, number formatting, the report lines), so it is unit-tested on the host, plus
//! the guest-only hardware modules behind `cfg(target_os = "none")`. The binary (`main.rs`)
//! holds the entry assembly and the boot flow. Executed instructions are expensive on
//! emulating hosts (PVM runs guest CPL0 code at ~1.6 M instructions/s), so nothing here uses
//! `core::fmt` on the normal path and loops are kept short.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod bootinfo;
pub mod bytes;
pub mod cmdline;
pub mod flow;
pub mod mem;
pub mod mptable;
pub mod newc;
pub mod out;
pub mod report;
pub mod serve;
pub mod udp;
pub mod virtio;
pub mod virtq;

#[cfg(target_os = "none")]
pub mod hw;
#[cfg(target_os = "none")]
pub mod serial;
