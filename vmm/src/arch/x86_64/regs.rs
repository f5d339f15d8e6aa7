//! Initial register state of the boot vCPU for each boot protocol, and the FPU, LAPIC and MSR
//! state every vCPU starts with. Pure functions from a boot entry to KVM structs.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_sregs};

use super::gdt;
use super::layout::{GDT_ADDR, IDT_ADDR, PML4_ADDR, PVH_INFO_ADDR, ZERO_PAGE_ADDR};

/// How the guest is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootEntry {
    /// PVH: 32-bit protected mode at `entry`, `ebx` = start info.
    Pvh { entry: u64 },
    /// Linux 64-bit boot protocol: long mode at `entry`, `rsi` = zero page.
    Linux64 { entry: u64 },
}

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Bit 1 of RFLAGS is reserved and always set.
const RFLAGS_RESERVED: u64 = 0x2;
/// Stack for the 64-bit entry, just below the page tables (the kernel sets its own at once).
const BOOT_STACK: u64 = 0x8ff0;

/// The GDT to write at `GDT_ADDR` for `entry`.
pub fn gdt_for(entry: BootEntry) -> [u64; 4] {
    match entry {
        BootEntry::Pvh { .. } => gdt::protected_mode_gdt(),
        BootEntry::Linux64 { .. } => gdt::long_mode_gdt(),
    }
}

/// General-purpose registers of the boot vCPU.
pub fn boot_regs(entry: BootEntry) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    };
    match entry {
        BootEntry::Pvh { entry } => {
            regs.rip = entry;
            regs.rbx = PVH_INFO_ADDR;
        }
        BootEntry::Linux64 { entry } => {
            regs.rip = entry;
            regs.rsp = BOOT_STACK;
            regs.rbp = BOOT_STACK;
            regs.rsi = ZERO_PAGE_ADDR;
        }
    }
    regs
}

/// Special registers of the boot vCPU, starting from what KVM reported (`sregs`).
pub fn boot_sregs(mut sregs: kvm_sregs, entry: BootEntry) -> kvm_sregs {
    let table = gdt_for(entry);
    let code = gdt::segment(table[1], 1);
    let data = gdt::segment(table[2], 2);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&table) - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::segment(table[3], 3);
    match entry {
        BootEntry::Pvh { .. } => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        BootEntry::Linux64 { .. } => {
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
    sregs
}

/// x87 and SSE control words as after a processor reset.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn set_delivery_mode(lapic: &mut kvm_lapic_state, offset: usize, mode: u32) {
    let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
    let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (i, b) in value.to_le_bytes().into_iter().enumerate() {
        lapic.regs[offset + i] = b as _;
    }
}

/// Wires LINT0 to the PIC (ExtINT) and LINT1 to NMI, as firmware does on a PC.
pub fn wire_lapic_lints(mut lapic: kvm_lapic_state) -> kvm_lapic_state {
    set_delivery_mode(&mut lapic, APIC_LVT_LINT0, APIC_MODE_EXTINT);
    set_delivery_mode(&mut lapic, APIC_LVT_LINT1, APIC_MODE_NMI);
    lapic
}

const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;

/// MSRs firmware would have set before handing over.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    vec![kvm_msr_entry {
        index: MSR_IA32_MISC_ENABLE,
        data: MISC_ENABLE_FAST_STRING,
        ..Default::default()
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvh_starts_in_flat_32_bit_protected_mode_without_paging() {
        let entry = BootEntry::Pvh { entry: 0x100_0680 };
        let regs = boot_regs(entry);
        assert_eq!(
            (regs.rip, regs.rbx, regs.rflags),
            (0x100_0680, PVH_INFO_ADDR, 2)
        );
        let s = boot_sregs(kvm_sregs::default(), entry);
        assert_eq!(s.cr0 & CR0_PG, 0);
        assert_eq!(s.cr0 & CR0_PE, 1);
        assert_eq!(s.efer, 0);
        assert_eq!(
            (s.cs.db, s.cs.l, s.cs.base, s.cs.limit),
            (1, 0, 0, 0xffff_ffff)
        );
        assert_eq!(s.cs.selector, 8);
        assert_eq!(s.ds.selector, 0x10);
    }

    #[test]
    fn linux64_starts_in_long_mode_with_identity_paging_and_zero_page() {
        let entry = BootEntry::Linux64 { entry: 0x100_0200 };
        let regs = boot_regs(entry);
        assert_eq!((regs.rip, regs.rsi), (0x100_0200, ZERO_PAGE_ADDR));
        let s = boot_sregs(kvm_sregs::default(), entry);
        assert_eq!(s.cr3, PML4_ADDR);
        assert_ne!(s.cr0 & CR0_PG, 0);
        assert_ne!(s.cr4 & CR4_PAE, 0);
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert_eq!((s.cs.l, s.cs.db), (1, 0));
        assert_eq!(s.gdt.limit, 31);
    }

    #[test]
    fn lint0_becomes_extint_and_lint1_nmi_keeping_other_bits() {
        let mut lapic = kvm_lapic_state::default();
        lapic.regs[APIC_LVT_LINT0 + 2] = 1; // mask bit (16) stays
        let l = wire_lapic_lints(lapic);
        let read = |off: usize| u32::from_le_bytes(std::array::from_fn(|i| l.regs[off + i] as u8));
        assert_eq!(read(APIC_LVT_LINT0), 0x1_0700);
        assert_eq!(read(APIC_LVT_LINT1), 0x400);
    }
}
