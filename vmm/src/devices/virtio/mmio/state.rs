//! A virtio-mmio device in a snapshot: the transport registers, every queue (the device's
//! live copies once it is active) and the interrupt status; and the way back, which checks
//! the saved state against the device rebuilt for the restore before anything runs.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

use super::{MmioInterrupt, MmioTransport, TransportState};
use crate::devices::virtio::{Queue, QueueState, VirtioDevice, VirtioError};
use crate::logging::RateLimit;

/// Errors putting a saved device back.
#[derive(Debug, thiserror::Error)]
pub enum TransportRestoreError {
    #[error("the snapshot has a device of type {saved}, this one is of type {device}")]
    DeviceType { saved: u32, device: u32 },
    #[error("the snapshot's device has {saved} queues, this one {device}")]
    QueueCount { saved: usize, device: usize },
    #[error("queue {0} of the snapshot is not valid for this device")]
    Queue(usize),
    #[error("the guest acked features {acked:#x}, this device offers only {offered:#x}")]
    Features { acked: u64, offered: u64 },
    #[error("cannot re-activate the device")]
    Activate(#[source] VirtioError),
}

/// One queue as saved (virtio-queue's `QueueState`, which is not serialisable itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedQueue {
    pub max_size: u16,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx_enabled: bool,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

impl From<QueueState> for SavedQueue {
    fn from(q: QueueState) -> Self {
        Self {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl From<SavedQueue> for QueueState {
    fn from(q: SavedQueue) -> Self {
        Self {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

/// A virtio-mmio device as a snapshot holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedTransport {
    pub device_type: u32,
    pub registers: TransportState,
    pub queues: Vec<SavedQueue>,
    pub interrupt_status: u32,
}

impl MmioTransport {
    /// The device's state; its queues are only consistent while the vCPUs are paused and
    /// the event loop is not inside the device.
    pub fn save(&self) -> SavedTransport {
        let live = self.device.queue_states();
        let queues = if self.state.activated && live.len() == self.queues.len() {
            live
        } else {
            self.queues.iter().map(|q| q.state()).collect()
        };
        SavedTransport {
            device_type: self.device.device_type(),
            registers: self.state.clone(),
            queues: queues.into_iter().map(SavedQueue::from).collect(),
            interrupt_status: self.interrupt.status(),
        }
    }

    /// Puts `device` behind a register window in the state `saved`, re-activating it if it
    /// was active (then telling it it was restored).
    pub fn restore(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<MmioInterrupt>,
        saved: &SavedTransport,
    ) -> Result<Self, TransportRestoreError> {
        let queues = restored_queues(device.as_ref(), saved)?;
        let offered = device.features();
        let acked = saved.registers.acked_features;
        if acked & !offered != 0 {
            return Err(TransportRestoreError::Features { acked, offered });
        }
        let mut transport = Self {
            device,
            mem,
            interrupt,
            queues,
            state: saved.registers.clone(),
            log: RateLimit::new(5),
        };
        if transport.state.activated {
            let queues = transport.queues.iter().map(|q| q.state()).collect();
            let queues = rebuild(queues)?;
            let irq = transport.interrupt.clone();
            transport
                .device
                .activate(transport.mem.clone(), queues, acked, irq)
                .map_err(TransportRestoreError::Activate)?;
            transport.device.restored();
        }
        transport.interrupt.restore(saved.interrupt_status);
        Ok(transport)
    }

    /// Serves every queue once after a restore: notifications the guest sent just before
    /// the snapshot were eventfd counts in the old process, gone now.
    pub fn kick_restored(&mut self) {
        if self.state.activated {
            for index in 0..self.queues.len() as u32 {
                self.process_queue_notification(index);
            }
        }
    }
}

fn restored_queues(
    device: &dyn VirtioDevice,
    saved: &SavedTransport,
) -> Result<Vec<Queue>, TransportRestoreError> {
    if saved.device_type != device.device_type() {
        return Err(TransportRestoreError::DeviceType {
            saved: saved.device_type,
            device: device.device_type(),
        });
    }
    let maxes = device.queue_max_sizes();
    if saved.queues.len() != maxes.len() {
        return Err(TransportRestoreError::QueueCount {
            saved: saved.queues.len(),
            device: maxes.len(),
        });
    }
    for (i, (q, max)) in saved.queues.iter().zip(maxes).enumerate() {
        if q.max_size != *max {
            return Err(TransportRestoreError::Queue(i));
        }
    }
    rebuild(saved.queues.iter().map(|&q| q.into()).collect())
}

fn rebuild(states: Vec<QueueState>) -> Result<Vec<Queue>, TransportRestoreError> {
    states
        .into_iter()
        .enumerate()
        .map(|(i, q)| Queue::try_from(q).map_err(|_| TransportRestoreError::Queue(i)))
        .collect()
}
