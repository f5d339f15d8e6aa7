//! Virtio devices (virtio 1.x): what a device implements ([`VirtioDevice`]), how it raises
//! interrupts ([`InterruptSignal`]), and the transport that puts it on the guest's MMIO bus
//! (`mmio`, virtio-mmio version 2).
//!
//! Devices hold no file descriptors or threads: the transport turns queue notifications
//! (ioeventfds watched on the event loop) into [`VirtioDevice::process_queue`] calls and
//! interrupts into irqfd writes, so device logic is tested with plain memory and queues.

pub mod block;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod vsock;

use std::os::fd::RawFd;
use std::sync::Arc;

use virtio_queue::{DescriptorChain, QueueOwnedT};
use vm_memory::GuestMemoryMmap;

pub use virtio_queue::{Queue, QueueState, QueueT};

/// Answers a read of a device's configuration space laid out as `config`: bytes past its end
/// read as zero, as the spec asks of fields a device does not offer.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    if let Some(src) = usize::try_from(offset).ok().and_then(|o| config.get(o..)) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// Completes every chain the guest made available on `queue`, one by one: `serve` handles a
/// chain and returns how many bytes it wrote into it. Returns whether any chain was used; a
/// fault of the queue itself stops at once.
pub fn complete_each(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    mut serve: impl FnMut(DescriptorChain<&GuestMemoryMmap>) -> u32,
) -> Result<bool, QueueFault> {
    let mut used = false;
    loop {
        let Some(chain) = queue.iter(mem).map_err(QueueFault)?.next() else {
            return Ok(used);
        };
        let head = chain.head_index();
        let len = serve(chain);
        queue.add_used(mem, head, len).map_err(QueueFault)?;
        used = true;
    }
}

/// Feature bit: the device speaks virtio 1.x (required; we offer no legacy interface).
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// Device status bits (virtio 1.x §2.1).
pub mod status {
    /// The guest has noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest knows how to drive the device.
    pub const DRIVER: u32 = 2;
    /// The driver is set up and ready to drive the device.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The guest gave up on the device.
    pub const FAILED: u32 = 128;
}

/// Interrupt status bits (virtio-mmio `InterruptStatus`).
pub mod interrupt {
    /// The device used a buffer in at least one queue.
    pub const USED_RING: u32 = 1;
    /// The configuration (or the status, e.g. `DEVICE_NEEDS_RESET`) changed.
    pub const CONFIG_CHANGE: u32 = 2;
}

/// Device type ids (virtio 1.x §5).
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Socket device (vsock).
    pub const VSOCK: u32 = 19;
}

/// How a device tells the guest about its work; implemented by the transport.
pub trait InterruptSignal: Send + Sync {
    /// The device put buffers in a used ring.
    fn signal_used_queue(&self);
    /// The device's configuration or status changed.
    fn signal_config_change(&self);
}

/// Errors of a virtio device that the transport reports to the guest as `DEVICE_NEEDS_RESET`.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error("expected {expected} queues, got {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("queue {0} is not valid in guest memory")]
    InvalidQueue(usize),
    #[error("queue {0} does not exist or is not active")]
    NoSuchQueue(usize),
    #[error("queue {index}: {source:?}")]
    Queue {
        index: usize,
        #[source]
        source: QueueFault,
    },
}

/// A failure of the queue itself (not of one request), wrapped so it has `Error`.
#[derive(Debug, thiserror::Error)]
#[error("{0:?}")]
pub struct QueueFault(pub virtio_queue::Error);

/// What a virtio device implements; the transport owns the registers and the status machine.
pub trait VirtioDevice: Send {
    /// The device type id (e.g. 4 for an entropy source).
    fn device_type(&self) -> u32;
    /// The most entries each of the device's queues may have (powers of two).
    fn queue_max_sizes(&self) -> &[u16];
    /// The feature bits the device offers (including `VIRTIO_F_VERSION_1`).
    fn features(&self) -> u64;
    /// Reads device configuration space at `offset` (unknown bytes read as zero).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device configuration space at `offset` (read-only fields ignore writes).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device: the guest set `DRIVER_OK` with these queues and features.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        acked_features: u64,
        irq: Arc<dyn InterruptSignal>,
    ) -> Result<(), VirtioError>;
    /// The guest notified queue `index`: process what it made available.
    fn process_queue(&mut self, index: usize) -> Result<(), VirtioError>;
    /// Host-side fds the device waits on (e.g. a TAP), watched edge-triggered on the event
    /// loop: after [`VirtioDevice::process_backend`] the device must have consumed until the fd
    /// would block, or remember that more may be waiting.
    fn backend_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// Backend fd `index` of [`VirtioDevice::backend_fds`] became ready.
    fn process_backend(&mut self, _index: usize) -> Result<(), VirtioError> {
        Ok(())
    }
    /// Forgets queues, memory and negotiated state (the guest wrote 0 to the status).
    fn reset(&mut self);
    /// The live queues' states while the device is active, in queue order (a snapshot saves
    /// these: the transport's copies stop at activation); empty while inactive.
    fn queue_states(&self) -> Vec<QueueState>;
    /// A restore re-activated the device from a snapshot: nothing host-side (connections,
    /// frames in flight) survived, and the device may tell the guest so.
    fn restored(&mut self) {}
}
