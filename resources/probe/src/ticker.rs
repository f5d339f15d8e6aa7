//! A periodic wake-up for loops that wait on the host without burning its CPU: the local
//! APIC timer (herd-vmm creates KVM's in-kernel irqchip, so the LAPIC is at `0xfee0_0000`)
//! fires every [`Ticker::start`] period into an IDT entry whose handler only sends EOI, and
//! [`Ticker::wait`] halts (`sti; hlt; cli`) until then. Interrupts are enabled only inside
//! that halt, so the handler never runs in the middle of other code.
//!
//! Nothing else interrupts unless asked: LINT0 (the PIC, wired as ExtINT by herd-vmm) is
//! masked here and the IOAPIC's pins stay masked as reset left them, except a device line
//! [`Ticker::wake_on`] unmasks: its interrupts (to an IDT entry that only sends EOI) end the
//! halt at once, so the loop answers a request without waiting for the next tick.
//!
//! The handler also counts the ticks it takes ([`Ticker::count`]) in a static in guest RAM:
//! a snapshot carries the count, so a restored probe keeps counting from where it was (the
//! `count` request of `probe.end=serve` reports it).

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering};

/// The LAPIC's registers (xAPIC, memory-mapped; identity-mapped by the probe's page tables).
const LAPIC: u64 = 0xfee0_0000;
const REG_EOI: u64 = 0x0b0;
const REG_SPURIOUS: u64 = 0x0f0;
const REG_LVT_TIMER: u64 = 0x320;
const REG_LVT_LINT0: u64 = 0x350;
const REG_TIMER_INITIAL: u64 = 0x380;
const REG_TIMER_DIVIDE: u64 = 0x3e0;
const APIC_SOFTWARE_ENABLE: u32 = 1 << 8;
const LVT_MASKED: u32 = 1 << 16;
const LVT_TIMER_PERIODIC: u32 = 1 << 17;
/// Divide configuration 0b0011: the timer counts at the bus clock / 16.
const DIVIDE_BY_16: u32 = 0b0011;
/// KVM's LAPIC bus clock: 1 GHz (one cycle a nanosecond).
const TIMER_HZ: u64 = 1_000_000_000 / 16;

const TIMER_VECTOR: u8 = 0x20;
/// Where a device line unmasked by [`Ticker::wake_on`] is delivered.
const DEVICE_VECTOR: u8 = 0x21;
/// KVM's in-kernel IOAPIC (identity-mapped): an index register and a data window.
const IOAPIC: u64 = 0xfec0_0000;
const IOAPIC_INDEX: u64 = 0x00;
const IOAPIC_DATA: u64 = 0x10;
/// Redirection entry of pin N: registers `0x10 + 2N` (low half) and `0x11 + 2N` (high).
const IOAPIC_REDIRECTION: u32 = 0x10;
/// IOAPIC pins KVM emulates.
const IOAPIC_PINS: u32 = 24;
const SPURIOUS_VECTOR: u8 = 0x2f;
/// IDT entries: up to the highest vector we use.
const VECTORS: usize = SPURIOUS_VECTOR as usize + 1;
/// Type byte of a present, ring-0, 64-bit interrupt gate.
const INTERRUPT_GATE: u64 = 0x8e;

/// Timer interrupts taken since [`Ticker::start`] (in this VM or the one it was restored
/// from); only the timer handler writes it.
static TICKS: AtomicU64 = AtomicU64::new(0);

// The handlers: count and EOI for the timer, nothing for a spurious interrupt (which takes no
// EOI). `lock inc` is the atomic add `TICKS` is read against. `mov eax, imm32` zero-extends,
// so rax holds the EOI register's address below 4 GiB.
global_asm!(
    r#"
    .section .text.probe_ticker, "ax"
    .global probe_timer_interrupt
probe_timer_interrupt:
    lock inc qword ptr [rip + {ticks}]
    push rax
    mov eax, {eoi}
    mov dword ptr [rax], 0
    pop rax
    iretq
    .global probe_device_interrupt
probe_device_interrupt:
    push rax
    mov eax, {eoi}
    mov dword ptr [rax], 0
    pop rax
    iretq
    .global probe_spurious_interrupt
probe_spurious_interrupt:
    iretq
"#,
    eoi = const LAPIC + REG_EOI,
    ticks = sym TICKS,
);

unsafe extern "C" {
    fn probe_timer_interrupt();
    fn probe_device_interrupt();
    fn probe_spurious_interrupt();
}

/// Two 8-byte halves per gate; vectors above [`VECTORS`] are beyond the limit (a fault).
static mut IDT: [u64; 2 * VECTORS] = [0; 2 * VECTORS];

/// The operand of `lidt`.
#[repr(C, packed)]
struct IdtPointer {
    limit: u16,
    base: u64,
}

fn lapic_write(reg: u64, value: u32) {
    // SAFETY: the LAPIC page is identity-mapped MMIO that holds no Rust object; the aligned
    // 32-bit write goes to KVM's in-kernel LAPIC.
    unsafe { core::ptr::write_volatile((LAPIC + reg) as *mut u32, value) };
}

fn ioapic_write(index: u32, value: u32) {
    // SAFETY: the IOAPIC page is identity-mapped MMIO that holds no Rust object; an aligned
    // 32-bit write of the index register goes to KVM's in-kernel IOAPIC. Only this loop's
    // thread programs it, with interrupts off, so index and data stay paired.
    unsafe { core::ptr::write_volatile((IOAPIC + IOAPIC_INDEX) as *mut u32, index) };
    // SAFETY: as above, the data window of the register just selected.
    unsafe { core::ptr::write_volatile((IOAPIC + IOAPIC_DATA) as *mut u32, value) };
}

/// An interrupt gate to `handler` in code segment `cs`.
fn gate(handler: unsafe extern "C" fn(), cs: u16) -> [u64; 2] {
    let at = handler as usize as u64;
    let low = (at & 0xffff)
        | (u64::from(cs) << 16)
        | (INTERRUPT_GATE << 40)
        | ((at >> 16) & 0xffff) << 48;
    [low, at >> 32]
}

/// The running timer.
#[derive(Debug)]
pub struct Ticker(());

impl Ticker {
    /// Loads the IDT and starts the timer firing every `period_ms` milliseconds.
    pub fn start(period_ms: u32) -> Ticker {
        let cs: u16;
        // SAFETY: reads the code segment selector; no memory or flags change.
        unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
        let idt = &raw mut IDT;
        // SAFETY: the IDT is only written here, once, before any interrupt can be taken
        // (interrupts are off until `wait`), so nothing reads it meanwhile.
        let entries = unsafe { &mut *idt };
        for (vector, handler) in [
            (
                TIMER_VECTOR,
                probe_timer_interrupt as unsafe extern "C" fn(),
            ),
            (DEVICE_VECTOR, probe_device_interrupt),
            (SPURIOUS_VECTOR, probe_spurious_interrupt),
        ] {
            let at = 2 * usize::from(vector);
            entries[at..at + 2].copy_from_slice(&gate(handler, cs));
        }
        let pointer = IdtPointer {
            limit: (size_of::<[u64; 2 * VECTORS]>() - 1) as u16,
            base: idt as u64,
        };
        // SAFETY: the IDT is static and its gates point at the handlers above, which return
        // with `iretq` leaving every register as it was.
        unsafe { asm!("lidt [{0}]", in(reg) &raw const pointer, options(readonly, nostack)) };
        // Enable the LAPIC first: while it is software-disabled every LVT stays masked.
        lapic_write(
            REG_SPURIOUS,
            APIC_SOFTWARE_ENABLE | u32::from(SPURIOUS_VECTOR),
        );
        lapic_write(REG_LVT_LINT0, LVT_MASKED);
        lapic_write(REG_TIMER_DIVIDE, DIVIDE_BY_16);
        lapic_write(REG_LVT_TIMER, LVT_TIMER_PERIODIC | u32::from(TIMER_VECTOR));
        let count = TIMER_HZ * u64::from(period_ms) / 1000;
        lapic_write(
            REG_TIMER_INITIAL,
            count.clamp(1, u64::from(u32::MAX)) as u32,
        );
        Ticker(())
    }

    /// Timer ticks taken so far. Ticks that fall due while interrupts are off (the loop is
    /// busy for more than a period) are taken as one when it next waits.
    pub fn count(&self) -> u64 {
        TICKS.load(Ordering::Relaxed)
    }

    /// Lets IOAPIC pin `gsi` (a virtio device's line) end [`Ticker::wait`]: edge-triggered
    /// (KVM's irqfd pulses the line), active high, fixed delivery to the boot CPU (APIC id 0).
    /// Pins KVM does not have are ignored.
    pub fn wake_on(&self, gsi: u32) {
        if gsi >= IOAPIC_PINS {
            return;
        }
        let entry = IOAPIC_REDIRECTION + 2 * gsi;
        ioapic_write(entry + 1, 0);
        ioapic_write(entry, u32::from(DEVICE_VECTOR));
    }

    /// Halts until the next interrupt (at the latest the next tick).
    pub fn wait(&self) {
        // SAFETY: `sti` takes effect after `hlt` has begun, so no tick is missed between
        // them; the handlers change nothing the compiler knows about.
        unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    }
}
