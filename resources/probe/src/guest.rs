//! The boot flow on the real machine: signal the boot timer, print the report (see
//! `herd_probe::flow`) on COM1, end as the command line asks.

use core::sync::atomic::{AtomicU64, Ordering};

use herd_probe::bootinfo::Protocol;
use herd_probe::flow;
use herd_probe::hw::{self, GuestMem};
use herd_probe::out::Sink;
use herd_probe::serial::COM1;

use crate::{devices, end, paging};

/// Called by both entry paths with `protocol` 1 (PVH, `info` = start info) or 2 (Linux,
/// `info` = zero page), on the probe's stack and page tables.
#[unsafe(no_mangle)]
pub extern "C" fn probe_main(protocol: u32, info: u64) -> ! {
    hw::signal_boot_timer();
    let mut console = COM1;
    let con = &mut console;
    let proto = match protocol {
        1 => Protocol::Pvh,
        _ => Protocol::Linux64,
    };
    let opts = flow::report(con, &GuestMem, proto, info, memcheck)
        .unwrap_or_else(|e| end::fail(e.as_str()));
    if opts.touch_all {
        touch_all(con);
    }
    devices::run(con, &opts);
    end::finish(con, opts)
}

/// The end of RAM the memory check saw (0 before it ran).
static RAM_TOP: AtomicU64 = AtomicU64::new(0);

/// Lowest RAM touched: the first MiB holds the boot structures and legacy holes.
const TOUCH_FROM: u64 = 0x10_0000;
/// herd-vmm puts its MMIO hole above this, so RAM below it is contiguous.
const TOUCH_BELOW: u64 = 3 << 30;

/// Writes every page of RAM from 1 MiB to the top the memory check found (below 3 GiB).
fn touch_all(con: &mut impl Sink) {
    let top = RAM_TOP.load(Ordering::Relaxed).min(TOUCH_BELOW);
    // SAFETY: 1 MiB up to the top of RAM is one RAM entry in herd-vmm's memory map, covered
    // by the identity map below 4 GiB; every byte keeps its value and no reference into
    // that memory is live (the report's borrows of it have ended).
    unsafe { hw::touch_pages(TOUCH_FROM, top) };
    con.put_bytes(b"probe: touched KiB=");
    con.put_dec(top.saturating_sub(TOUCH_FROM) >> 10);
    con.put_bytes(b"\n");
}

/// Checks the 8 RAM bytes at `addr` (aligned, RAM per the memory map), mapping them first
/// if they are above 4 GiB.
fn memcheck(addr: u64) -> bool {
    RAM_TOP.store(addr + 8, Ordering::Relaxed);
    // SAFETY: the flow passes an aligned address inside a RAM entry of the memory map, and
    // it is mapped (checked just before). The slices of guest memory the flow read earlier
    // (command line, initrd) are no longer used when it calls us, and the old value is put
    // back.
    paging::map(addr) && unsafe { hw::memcheck(addr) }
}
