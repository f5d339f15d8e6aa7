//! Fixed guest-physical addresses of what herd-vmm places in a guest (see
//! `docs/guest-interface.md`, which guests rely on).

/// Flat GDT for the 64-bit boot protocol.
pub const GDT_ADDR: u64 = 0x500;
/// Empty IDT right after the GDT (interrupts stay off until the guest installs its own).
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info`; the memory map and module list follow it.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// The Linux zero page (`boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Page-table root for the 64-bit boot protocol; PDPT and four PDs follow, one page each.
pub const PML4_ADDR: u64 = 0x9000;
/// Kernel command line, NUL-terminated.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Start of the BIOS area we reserve; the MP table lives here.
pub const EBDA_ADDR: u64 = 0x9_fc00;
/// MP floating pointer and configuration table.
pub const MPTABLE_ADDR: u64 = EBDA_ADDR;
/// End of the reserved BIOS area: RAM from here up is usable.
pub const HIMEM_ADDR: u64 = 0x10_0000;
/// Start of the hole below 4 GiB that holds devices instead of RAM.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of that hole.
pub const MMIO_HOLE_END: u64 = 1 << 32;
/// Firecracker-compatible boot-timer register.
pub const BOOT_TIMER_ADDR: u64 = MMIO_HOLE_START;
/// First virtio-mmio window; each device gets 4 KiB.
pub const VIRTIO_MMIO_START: u64 = MMIO_HOLE_START + 0x1000;
/// Size of one virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The first virtio device's IOAPIC line; later devices take the next ones.
pub const VIRTIO_FIRST_GSI: u32 = 5;
/// The last IOAPIC line a virtio device may take.
pub const VIRTIO_LAST_GSI: u32 = IOAPIC_PINS as u32 - 1;
/// IOAPIC registers (in-kernel irqchip).
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Local APIC registers (in-kernel irqchip).
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// KVM's TSS needs three pages the guest never uses; put them just below the IOAPIC.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// KVM's identity map page for real-mode emulation on Intel, right after the TSS.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
/// IOAPIC interrupt lines.
pub const IOAPIC_PINS: u8 = 24;
/// COM1 interrupt line.
pub const COM1_IRQ: u32 = 4;
/// COM2 (the control port) interrupt line.
pub const COM2_IRQ: u32 = 3;
/// Size of a page.
pub const PAGE_SIZE: u64 = 0x1000;
