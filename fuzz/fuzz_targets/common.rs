//! What the virtio fuzz targets share: an interrupt sink that does nothing, 64 KiB of guest
//! memory filled from the input, and a split queue whose size and ring addresses come from
//! input bytes.

use herd_vmm::devices::virtio::InterruptSignal;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory size of every target.
pub const MEM: usize = 64 * 1024;

/// Interrupts go nowhere.
pub struct NoIrq;

impl InterruptSignal for NoIrq {
    fn signal_used_queue(&self) {}
    fn signal_config_change(&self) {}
}

/// Guest memory holding `body` (as much as fits) from address 0.
pub fn memory(body: &[u8]) -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    mem.write_slice(&body[..body.len().min(MEM)], GuestAddress(0))
        .unwrap();
    mem
}

/// A ready queue of 2^(size_bits % 9) entries with its rings at the given 256-byte slots.
pub fn queue(size_bits: u8, desc: u8, avail: u8, used: u8) -> Option<Queue> {
    let mut q = Queue::new(256).ok()?;
    q.set_size(1 << (size_bits % 9));
    let addr = |b: u8| Some(u32::from(b) * 0x100);
    q.set_desc_table_address(addr(desc), Some(0));
    q.set_avail_ring_address(addr(avail), Some(0));
    q.set_used_ring_address(addr(used), Some(0));
    q.set_ready(true);
    Some(q)
}
