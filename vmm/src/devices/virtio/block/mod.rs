//! virtio-blk (device type 2): one queue of requests against a file-backed [`Disk`].
//!
//! Each request is checked in full first (`request`: header, directions, memory, sector
//! bounds, size, read-only), then served by the disk (`disk`). A refused request gets
//! `IOERR` (or `UNSUPP` for an unknown type) in its status byte; a chain without a usable
//! status descriptor (a loop, a chain longer than the queue, a status outside guest memory or
//! device-readable) is completed with 0 bytes and nothing is written. A broken queue is
//! reported to the transport, which sets `DEVICE_NEEDS_RESET`. Either way the VMM goes on.
//!
//! Features: `VERSION_1`, `SIZE_MAX` and `SEG_MAX` (the request limits), `BLK_SIZE` (512),
//! `RO` for a read-only disk, `FLUSH` with the writeback cache mode, and `DISCARD` and
//! `WRITE_ZEROES` (with their limits in configuration space) on a read-write disk; requests of
//! a type that was not negotiated get `UNSUPP`.

pub mod disk;
pub mod ranges;
pub mod request;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemoryMmap};

use super::{
    InterruptSignal, Queue, QueueFault, QueueT, VIRTIO_F_VERSION_1, VirtioDevice, VirtioError,
    complete_each, device_type, read_config_bytes,
};
use crate::logging::RateLimit;
pub use disk::{CacheMode, Disk, DiskError};
use ranges::{
    DISCARD_ALIGNMENT_SECTORS, MAX_DISCARD_RANGES, MAX_DISCARD_SECTORS, MAX_WRITE_ZEROES_RANGES,
    MAX_WRITE_ZEROES_SECTORS,
};
use request::{Limits, MAX_SEGMENT_BYTES, MAX_SEGMENTS, Rejected, SECTOR_SIZE, status};

/// Entries in the request queue.
pub const BLOCK_QUEUE_SIZE: u16 = 256;

/// Feature bits (virtio 1.x §5.2.3).
pub mod feature {
    pub const SIZE_MAX: u32 = 1;
    pub const SEG_MAX: u32 = 2;
    pub const RO: u32 = 5;
    pub const BLK_SIZE: u32 = 6;
    pub const FLUSH: u32 = 9;
    pub const DISCARD: u32 = 13;
    pub const WRITE_ZEROES: u32 = 14;
}

/// Bytes of configuration space we lay out: capacity, size_max, seg_max, geometry, blk_size,
/// topology, writeback, num_queues (those three zero: not offered), then the discard and
/// write-zeroes limits and `write_zeroes_may_unmap` (virtio 1.2 §5.2.4), padded to a word.
pub const CONFIG_LEN: usize = 60;

/// Configuration-space offsets of the discard and write-zeroes fields.
pub mod config {
    pub const MAX_DISCARD_SECTORS: usize = 36;
    pub const MAX_DISCARD_SEG: usize = 40;
    pub const DISCARD_SECTOR_ALIGNMENT: usize = 44;
    pub const MAX_WRITE_ZEROES_SECTORS: usize = 48;
    pub const MAX_WRITE_ZEROES_SEG: usize = 52;
    pub const WRITE_ZEROES_MAY_UNMAP: usize = 56;
}

struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    irq: Arc<dyn InterruptSignal>,
    write_through: bool,
    /// The features the driver acked (and we offered).
    features: u64,
}

/// The block device.
pub struct Block {
    disk: Disk,
    active: Option<Active>,
    log: RateLimit,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("disk", &self.disk)
            .field("active", &self.active.is_some())
            .finish()
    }
}

impl Block {
    /// An inactive block device over `disk`.
    pub fn new(disk: Disk) -> Self {
        Self {
            disk,
            active: None,
            log: RateLimit::new(5),
        }
    }

    fn config_space(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[0..8].copy_from_slice(&self.disk.sectors().to_le_bytes());
        c[8..12].copy_from_slice(&MAX_SEGMENT_BYTES.to_le_bytes());
        c[12..16].copy_from_slice(&(MAX_SEGMENTS as u32).to_le_bytes());
        // 16..20: geometry, not offered.
        c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        if !self.disk.read_only() {
            for (at, value) in [
                (config::MAX_DISCARD_SECTORS, MAX_DISCARD_SECTORS),
                (config::MAX_DISCARD_SEG, MAX_DISCARD_RANGES),
                (config::DISCARD_SECTOR_ALIGNMENT, DISCARD_ALIGNMENT_SECTORS),
                (config::MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SECTORS),
                (config::MAX_WRITE_ZEROES_SEG, MAX_WRITE_ZEROES_RANGES),
            ] {
                c[at..at + 4].copy_from_slice(&value.to_le_bytes());
            }
            c[config::WRITE_ZEROES_MAY_UNMAP] = 1;
        }
        c
    }

    fn limits(&self) -> Limits {
        let acked = self.active.as_ref().map_or(0, |a| a.features);
        Limits {
            sectors: self.disk.sectors(),
            read_only: self.disk.read_only(),
            discard: acked & (1 << feature::DISCARD) != 0,
            write_zeroes: acked & (1 << feature::WRITE_ZEROES) != 0,
        }
    }
}

/// Serves one chain; returns the used length (bytes written to guest memory).
fn serve(
    disk: &mut Disk,
    limits: Limits,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    write_through: bool,
    log: &RateLimit,
) -> u32 {
    let warn = |what: &dyn std::fmt::Display| {
        if log.allow() {
            tracing::warn!(device = "virtio-blk", "{what}");
        }
    };
    let (status_addr, code, written) = match request::parse(mem, chain, limits) {
        Ok(req) => match disk.execute(mem, &req, write_through) {
            Ok(n) => (req.status, status::OK, n),
            Err(e) => {
                warn(&format_args!("request failed: {e}"));
                (req.status, status::IOERR, 0)
            }
        },
        Err(Rejected {
            status: Some(at),
            error,
        }) => {
            warn(&format_args!("request refused: {error}"));
            (at, error.status(), 0)
        }
        Err(Rejected {
            status: None,
            error,
        }) => {
            warn(&format_args!("request dropped: {error}"));
            return 0;
        }
    };
    match mem.write_obj(code, status_addr) {
        Ok(()) => written + 1,
        Err(_) => 0,
    }
}

impl Active {
    /// Serves every available request; returns whether any was.
    fn drain(
        &mut self,
        disk: &mut Disk,
        limits: Limits,
        log: &RateLimit,
    ) -> Result<bool, QueueFault> {
        let (mem, write_through) = (&self.mem, self.write_through);
        complete_each(&mut self.queue, mem, |chain| {
            serve(disk, limits, mem, chain, write_through, log)
        })
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[BLOCK_QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = (1 << VIRTIO_F_VERSION_1)
            | (1 << feature::SIZE_MAX)
            | (1 << feature::SEG_MAX)
            | (1 << feature::BLK_SIZE);
        if self.disk.read_only() {
            f |= 1 << feature::RO;
        } else {
            f |= (1 << feature::DISCARD) | (1 << feature::WRITE_ZEROES);
        }
        if self.disk.cache() == CacheMode::Writeback {
            f |= 1 << feature::FLUSH;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        acked_features: u64,
        irq: Arc<dyn InterruptSignal>,
    ) -> Result<(), VirtioError> {
        let got = queues.len();
        let queue = queues
            .into_iter()
            .next()
            .filter(|_| got == 1)
            .ok_or(VirtioError::QueueCount { expected: 1, got })?;
        let write_through = self.disk.cache() == CacheMode::Writeback
            && acked_features & (1 << feature::FLUSH) == 0;
        self.active = Some(Active {
            mem,
            queue,
            irq,
            write_through,
            features: acked_features & self.features(),
        });
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<(), VirtioError> {
        let limits = self.limits();
        let active = match self.active.as_mut() {
            Some(a) if index == 0 && a.queue.ready() => a,
            _ => return Err(VirtioError::NoSuchQueue(index)),
        };
        let used = active
            .drain(&mut self.disk, limits, &self.log)
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
