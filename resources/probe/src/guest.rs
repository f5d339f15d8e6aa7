//! The boot flow on the real machine: signal the boot timer, print the report (see
//! `herd_probe::flow`) on COM1, end as the command line asks.

use herd_probe::bootinfo::Protocol;
use herd_probe::flow;
use herd_probe::hw::{self, GuestMem};
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
    devices::run(con, &opts);
    end::finish(con, opts)
}

/// Checks the 8 RAM bytes at `addr` (aligned, RAM per the memory map), mapping them first
/// if they are above 4 GiB.
fn memcheck(addr: u64) -> bool {
    // SAFETY: the flow passes an aligned address inside a RAM entry of the memory map, and
    // it is mapped (checked just before). The slices of guest memory the flow read earlier
    // (command line, initrd) are no longer used when it calls us, and the old value is put
    // back.
    paging::map(addr) && unsafe { hw::memcheck(addr) }
}
