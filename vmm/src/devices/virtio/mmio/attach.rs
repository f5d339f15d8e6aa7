//! Puts virtio devices on a VM: each gets the next 4 KiB window from `0xc000_1000` and the
//! next IOAPIC line from 5, an irqfd for that line, one ioeventfd per queue on its
//! `QueueNotify` register (the queue index as datamatch), and a word on the kernel command
//! line (`virtio_mmio.device=4K@0xc0001000:5`, as Firecracker announces them).

use std::io;
use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::notify::QueueNotifier;
use super::state::SavedTransport;
use super::{MmioInterrupt, MmioTransport, reg};
use crate::arch::x86_64::layout::{
    VIRTIO_FIRST_GSI, VIRTIO_LAST_GSI, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START,
};
use crate::bus::{Bus, BusError};
use crate::devices::virtio::VirtioDevice;

/// Errors attaching a virtio device.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("{0} virtio devices asked, at most {max} fit", max = VIRTIO_LAST_GSI - VIRTIO_FIRST_GSI + 1)]
    TooMany(usize),
    #[error("cannot create an eventfd for {0}")]
    EventFd(&'static str, #[source] io::Error),
    #[error("cannot route interrupt {0} into the guest")]
    Irqfd(u32, #[source] kvm_ioctls::Error),
    #[error("cannot register the queue notification at {0:#x}")]
    Ioevent(u64, #[source] kvm_ioctls::Error),
    #[error("cannot place the device")]
    Bus(#[from] BusError),
    #[error("cannot restore the device's saved state")]
    Restore(#[source] super::state::TransportRestoreError),
}

/// Where one virtio device lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioSlot {
    /// Guest-physical base of its register window.
    pub base: u64,
    /// Its IOAPIC line.
    pub gsi: u32,
}

/// The slots of `count` devices, in order.
pub fn slots(count: usize) -> Result<Vec<VirtioSlot>, AttachError> {
    if count > (VIRTIO_LAST_GSI - VIRTIO_FIRST_GSI + 1) as usize {
        return Err(AttachError::TooMany(count));
    }
    Ok((0..count)
        .map(|i| VirtioSlot {
            base: VIRTIO_MMIO_START + i as u64 * VIRTIO_MMIO_SIZE,
            gsi: VIRTIO_FIRST_GSI + i as u32,
        })
        .collect())
}

/// The kernel command-line words that announce `slots` to the guest.
pub fn cmdline_words(slots: &[VirtioSlot]) -> String {
    slots
        .iter()
        .map(|s| format!("virtio_mmio.device=4K@{:#x}:{}", s.base, s.gsi))
        .collect::<Vec<_>>()
        .join(" ")
}

fn eventfd(what: &'static str) -> Result<EventFd, AttachError> {
    EventFd::new(EFD_NONBLOCK).map_err(|e| AttachError::EventFd(what, e))
}

/// Attaches `device` at `slot`: bus window, irqfd, ioeventfds; in the state `saved` when
/// restoring a snapshot. Returns the event-loop subscriber that delivers its queue
/// notifications.
pub fn attach(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    bus: &mut Bus,
    slot: VirtioSlot,
    (name, device): (&'static str, Box<dyn VirtioDevice>),
    saved: Option<&SavedTransport>,
) -> Result<QueueNotifier, AttachError> {
    let irqfd = eventfd("a virtio interrupt")?;
    vm.register_irqfd(&irqfd, slot.gsi)
        .map_err(|e| AttachError::Irqfd(slot.gsi, e))?;
    let interrupt = Arc::new(MmioInterrupt::new(irqfd));
    let transport = match saved {
        None => MmioTransport::new(device, mem.clone(), interrupt),
        Some(saved) => MmioTransport::restore(device, mem.clone(), interrupt, saved)
            .map_err(AttachError::Restore)?,
    };
    let notify_addr = slot.base + reg::QUEUE_NOTIFY;
    let mut queue_events = Vec::with_capacity(transport.queue_count());
    for index in 0..transport.queue_count() as u32 {
        let evt = eventfd("a virtio queue notification")?;
        vm.register_ioevent(&evt, &IoEventAddress::Mmio(notify_addr), index)
            .map_err(|e| AttachError::Ioevent(notify_addr, e))?;
        queue_events.push(evt);
    }
    let transport = Arc::new(Mutex::new(transport));
    bus.insert(name, slot.base, VIRTIO_MMIO_SIZE, transport.clone())?;
    Ok(QueueNotifier::new(transport, queue_events))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_consecutive_windows_and_lines_announced_like_firecracker() {
        let s = slots(2).unwrap();
        assert_eq!(
            s[0],
            VirtioSlot {
                base: 0xc000_1000,
                gsi: 5
            }
        );
        assert_eq!(
            s[1],
            VirtioSlot {
                base: 0xc000_2000,
                gsi: 6
            }
        );
        assert_eq!(
            cmdline_words(&s),
            "virtio_mmio.device=4K@0xc0001000:5 virtio_mmio.device=4K@0xc0002000:6"
        );
        assert_eq!(cmdline_words(&[]), "");
        assert_eq!(slots(19).unwrap().last().unwrap().gsi, 23);
        assert!(matches!(slots(20), Err(AttachError::TooMany(20))));
    }
}
