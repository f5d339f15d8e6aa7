//! The interrupt side of a virtio-mmio device: the `InterruptStatus` bits the guest reads and
//! acknowledges, and the irqfd that raises the device's IOAPIC line. Shared between the vCPU
//! (register access) and the event loop (device work), so the bits are atomic.

use std::sync::atomic::{AtomicU32, Ordering};

use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::{InterruptSignal, interrupt};
use crate::logging::RateLimit;

/// Interrupt status plus the eventfd registered as the device's irqfd.
#[derive(Debug)]
pub struct MmioInterrupt {
    status: AtomicU32,
    irqfd: EventFd,
    log: RateLimit,
}

impl MmioInterrupt {
    /// Raises interrupts by writing `irqfd` (registered with KVM for the device's GSI).
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irqfd,
            log: RateLimit::new(1),
        }
    }

    /// The `InterruptStatus` register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// The guest acknowledged `bits` (`InterruptACK`).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    /// Takes over a saved `InterruptStatus`, raising the line again if a bit is set: the
    /// irqfd write that raised it went to the VM the status was saved from.
    pub fn restore(&self, status: u32) {
        self.status.store(status, Ordering::Release);
        if status != 0 {
            self.raise(0);
        }
    }

    /// Clears every bit (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::Release);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::AcqRel);
        if let Err(e) = self.irqfd.write(1)
            && self.log.allow()
        {
            tracing::warn!(device = "virtio-mmio", "cannot raise interrupt: {e}");
        }
    }
}

impl InterruptSignal for MmioInterrupt {
    fn signal_used_queue(&self) {
        self.raise(interrupt::USED_RING);
    }

    fn signal_config_change(&self) {
        self.raise(interrupt::CONFIG_CHANGE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn signals_set_bits_and_write_the_irqfd_and_ack_clears() {
        let irq = MmioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
        irq.signal_used_queue();
        irq.signal_config_change();
        assert_eq!(irq.status(), 3);
        assert_eq!(irq.irqfd.read().unwrap(), 2);
        irq.ack(interrupt::USED_RING);
        assert_eq!(irq.status(), interrupt::CONFIG_CHANGE);
        irq.clear();
        assert_eq!(irq.status(), 0);
    }
}
