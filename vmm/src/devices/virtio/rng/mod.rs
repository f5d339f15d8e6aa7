//! virtio-rng (device type 4): one queue of device-writable buffers, each filled from the
//! host's `getrandom`, at most [`MAX_BYTES_PER_REQUEST`] bytes a request.
//!
//! A request whose chain cannot be trusted (a loop or a chain longer than the queue, a
//! device-readable descriptor, a buffer outside guest memory) is completed with 0 bytes and
//! nothing is written; a broken queue (an avail index that jumps past the queue size, a used
//! ring that cannot be written) is reported to the transport, which sets
//! `DEVICE_NEEDS_RESET`. Either way the VMM goes on.

#[cfg(test)]
mod tests;

use std::sync::Arc;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{
    InterruptSignal, Queue, QueueFault, QueueT, VIRTIO_F_VERSION_1, VirtioDevice, VirtioError,
    complete_each, device_type,
};
use crate::logging::RateLimit;

/// Entries in the request queue.
pub const RNG_QUEUE_SIZE: u16 = 256;
/// Most bytes one request gets, however large its buffers.
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;

/// Why a request was completed with 0 bytes.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    #[error("descriptor chain loops, is longer than the queue or has a bad index")]
    BadChain,
    #[error("device-readable descriptor at {0:#x} in an entropy request")]
    ReadOnly(u64),
    #[error("buffer at {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("cannot read host entropy")]
    Entropy(#[source] std::io::Error),
    #[error("cannot write guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
}

struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    irq: Arc<dyn InterruptSignal>,
}

/// The entropy device.
pub struct Rng {
    active: Option<Active>,
    buf: Vec<u8>,
    log: RateLimit,
}

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rng")
            .field("active", &self.active.is_some())
            .finish()
    }
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

impl Rng {
    /// An inactive entropy device.
    pub fn new() -> Self {
        Self {
            active: None,
            buf: Vec::new(),
            log: RateLimit::new(5),
        }
    }
}

/// The writable buffers of `chain`, after checking the whole chain.
fn writable_buffers(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<Vec<(GuestAddress, u32)>, RngError> {
    let mut bufs = Vec::new();
    let mut ends = false;
    for desc in chain {
        if !desc.is_write_only() {
            return Err(RngError::ReadOnly(desc.addr().0));
        }
        if !GuestMemoryBackend::check_range(mem, desc.addr(), desc.len() as usize) {
            let (addr, len) = (desc.addr().0, desc.len());
            return Err(RngError::OutsideMemory { addr, len });
        }
        bufs.push((desc.addr(), desc.len()));
        ends = !desc.has_next();
    }
    // The chain iterator stops quietly after `queue size` descriptors, at a bad index or an
    // unreadable descriptor; only a last descriptor without NEXT means the chain really ended.
    if !ends {
        return Err(RngError::BadChain);
    }
    Ok(bufs)
}

/// Fills the chain's buffers (up to the cap) with host entropy; returns the bytes written.
fn fill_request(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    buf: &mut Vec<u8>,
) -> Result<u32, RngError> {
    let bufs = writable_buffers(mem, chain)?;
    let mut total = 0usize;
    for (addr, len) in bufs {
        let n = (len as usize).min(MAX_BYTES_PER_REQUEST - total);
        if n == 0 {
            break;
        }
        buf.resize(n, 0);
        crate::sys::random::fill(buf).map_err(RngError::Entropy)?;
        mem.write_slice(buf, addr).map_err(RngError::Memory)?;
        total += n;
    }
    Ok(total as u32)
}

impl Active {
    /// Completes every available request; returns whether any was.
    fn drain(&mut self, buf: &mut Vec<u8>, log: &RateLimit) -> Result<bool, QueueFault> {
        let mem = &self.mem;
        complete_each(&mut self.queue, mem, |chain| {
            fill_request(mem, chain, buf).unwrap_or_else(|e| {
                if log.allow() {
                    tracing::warn!(device = "virtio-rng", "request gets 0 bytes: {e}");
                }
                0
            })
        })
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[RNG_QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        _acked_features: u64,
        irq: Arc<dyn InterruptSignal>,
    ) -> Result<(), VirtioError> {
        let got = queues.len();
        let queue = queues
            .into_iter()
            .next()
            .filter(|_| got == 1)
            .ok_or(VirtioError::QueueCount { expected: 1, got })?;
        self.active = Some(Active { mem, queue, irq });
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<(), VirtioError> {
        let active = match self.active.as_mut() {
            Some(a) if index == 0 && a.queue.ready() => a,
            _ => return Err(VirtioError::NoSuchQueue(index)),
        };
        let used = active
            .drain(&mut self.buf, &self.log)
            .map_err(|source| VirtioError::Queue { index, source })?;
        if used {
            active.irq.signal_used_queue();
        }
        Ok(())
    }

    fn queue_states(&self) -> Vec<super::QueueState> {
        self.active.iter().map(|a| a.queue.state()).collect()
    }

    fn reset(&mut self) {
        self.active = None;
    }
}
