//! Guest-only access to the machine: port I/O, MMIO, guest-physical memory, and the few
//! privileged CPU instructions the probe needs. Everything relies on the identity mapping of
//! the first 4 GiB that the entry code sets up.

use core::arch::asm;

use crate::mem::PhysMem;

/// MMIO address of herd-vmm's boot timer.
pub const BOOT_TIMER: u64 = 0xc000_0000;
/// Value written to the boot timer to signal "booted".
pub const BOOT_TIMER_MAGIC: u8 = 123;
/// Start of the MMIO hole; guest memory below it is identity-mapped RAM or reserved.
const MMIO_HOLE: u64 = 0xc000_0000;

/// Reads a byte from an I/O port.
#[inline(always)]
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: port I/O does not touch memory the compiler knows about.
    unsafe {
        asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Writes a byte to an I/O port.
#[inline(always)]
pub fn outb(port: u16, v: u8) {
    // SAFETY: port I/O does not touch memory the compiler knows about.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    };
}

/// Tells herd-vmm the guest has booted (it logs `Guest-boot-time`).
pub fn signal_boot_timer() {
    // SAFETY: the MMIO hole is identity-mapped and holds no Rust object; the write only
    // causes an MMIO exit to the VMM.
    unsafe { core::ptr::write_volatile(BOOT_TIMER as *mut u8, BOOT_TIMER_MAGIC) };
}

/// Disables interrupts and halts forever.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: cli/hlt only stop this CPU; no memory is involved.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Reloads CR3 with its own value, flushing the TLB after a page-table change.
pub fn flush_tlb() {
    // SAFETY: CR3 keeps its value; the tables it points to stay valid.
    unsafe { asm!("mov {0}, cr3", "mov cr3, {0}", out(reg) _, options(nostack, preserves_flags)) };
}

/// Writes patterns to the 8 bytes at `addr`, reads them back, then restores the old value.
///
/// # Safety
/// `addr` must be mapped, 8-byte aligned RAM that no Rust reference covers.
pub unsafe fn memcheck(addr: u64) -> bool {
    const PATTERN: u64 = 0x5aa5_c33c_0ff0_9669;
    let p = addr as *mut u64;
    // SAFETY: the caller guarantees `p` is valid, aligned and unaliased RAM.
    let old = unsafe { p.read_volatile() };
    // SAFETY: as above.
    let a = unsafe { write_read(p, PATTERN) };
    // SAFETY: as above.
    let b = unsafe { write_read(p, !PATTERN) };
    // SAFETY: as above.
    unsafe { p.write_volatile(old) };
    a == PATTERN && b == !PATTERN
}

/// Writes every 4 KiB page in `start..end` (each page's first byte, rewritten with its own
/// value), so the host must back all of it: `probe.mem.touch=all`.
///
/// # Safety
/// The range must be mapped RAM. Bytes keep their values, but no Rust reference may cover
/// them while this runs (a reference's target could be read in between by the compiler's
/// assumptions).
pub unsafe fn touch_pages(start: u64, end: u64) {
    let mut addr = start & !0xfff;
    while addr < end {
        let p = addr as *mut u8;
        // SAFETY: the caller guarantees the page is mapped RAM.
        let byte = unsafe { p.read_volatile() };
        // SAFETY: as above; the byte gets back the value it had.
        unsafe { p.write_volatile(byte) };
        addr += 0x1000;
    }
}

/// Writes `v` to `p` and reads it back.
///
/// # Safety
/// `p` must be valid, aligned and unaliased.
unsafe fn write_read(p: *mut u64, v: u64) -> u64 {
    // SAFETY: guaranteed by the caller.
    unsafe { p.write_volatile(v) };
    // SAFETY: guaranteed by the caller.
    unsafe { p.read_volatile() }
}

/// Guest-physical memory below the MMIO hole, read through the identity mapping.
#[derive(Debug, Clone, Copy)]
pub struct GuestMem;

impl PhysMem for GuestMem {
    fn slice(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let end = addr.checked_add(len as u64)?;
        if addr == 0 || end > MMIO_HOLE {
            return None;
        }
        // SAFETY: [addr, end) is below the MMIO hole, so identity-mapped, and non-null. The
        // probe never writes there while the slice lives (only memcheck writes, through raw
        // pointers, after the slices used for reporting are gone).
        Some(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
    }
}

/// A virtio-mmio register window at its identity-mapped base.
#[derive(Debug, Clone, Copy)]
pub struct MmioRegs(pub u64);

impl crate::virtio::Regs for MmioRegs {
    fn read(&self, offset: u32) -> u32 {
        // SAFETY: the window lies in the identity-mapped MMIO hole and holds no Rust object;
        // the aligned 32-bit read is an MMIO exit to the VMM.
        unsafe { core::ptr::read_volatile((self.0 + u64::from(offset)) as *const u32) }
    }

    fn write(&self, offset: u32, value: u32) {
        // SAFETY: as for `read`.
        unsafe { core::ptr::write_volatile((self.0 + u64::from(offset)) as *mut u32, value) }
    }
}
