//! A hostile driver's split virtqueues in guest memory. The descriptor table, the avail ring
//! and the avail index are exactly what the input says, written with virtio-queue's
//! driver-side mock ([`MockSplitQueue`]): addresses outside memory, lengths past its end, the
//! wrong direction, `next` indices that loop or point past the table, indirect tables, chains
//! longer than the queue and an avail index that jumps past the ring are all expressible.
//!
//! Layout: queue `slot`'s table and rings at `slot * QUEUE_SLOT`, the input's data bytes (the
//! buffers an honest driver would point at) from [`DATA_BASE`].

use std::sync::Arc;

use herd_vmm::devices::virtio::{InterruptSignal, Queue};
use virtio_queue::desc::{RawDescriptor, split::Descriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::bytes::{Reader, Writer};

/// Guest memory size of every virtio target.
pub const MEM_LEN: usize = 0x2_0000;
/// Where the input's data bytes go.
pub const DATA_BASE: u64 = 0x1_0000;
/// Room for one queue's table and rings at the largest size we build (256 entries: 4 KiB of
/// descriptors, then the avail and used rings).
const QUEUE_SLOT: u64 = 0x2000;
/// Queue sizes are `1 << (size_log2 % QUEUE_SIZES)`: 1 to 256 entries.
const QUEUE_SIZES: u8 = 9;

/// Descriptor flags (virtio 1.x §2.7.5).
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

/// One descriptor as the driver writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

/// One queue as the driver leaves it before notifying.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueSpec {
    /// The queue has `1 << (size_log2 % 9)` entries.
    pub size_log2: u8,
    /// The descriptor table from index 0 (entries past the queue size are not written).
    pub descs: Vec<Desc>,
    /// The avail ring from slot 0 (entries past the queue size are not written).
    pub heads: Vec<u16>,
    /// The avail index published; an honest driver publishes `heads.len()`.
    pub avail_idx: u16,
}

impl QueueSpec {
    /// An honest queue of 2^`size_log2` entries offering `chains` in order, each a list of
    /// (address, length, device-writable) buffers chained through consecutive descriptors.
    pub fn honest(size_log2: u8, chains: &[&[(u64, u32, bool)]]) -> Self {
        let mut spec = Self {
            size_log2,
            ..Self::default()
        };
        for chain in chains {
            spec.heads.push(spec.descs.len() as u16);
            for (i, &(addr, len, writable)) in chain.iter().enumerate() {
                let last = i + 1 == chain.len();
                let flags = if writable { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
                let next = if last { 0 } else { spec.descs.len() as u16 + 1 };
                spec.descs.push(Desc {
                    addr,
                    len,
                    flags,
                    next,
                });
            }
        }
        spec.avail_idx = spec.heads.len() as u16;
        spec
    }

    /// Entries in the queue.
    pub fn size(&self) -> u16 {
        1 << (self.size_log2 % QUEUE_SIZES)
    }

    pub fn decode(r: &mut Reader) -> Self {
        let size_log2 = r.u8();
        let (n_descs, n_heads, avail_idx) = (r.u8(), r.u8(), r.u16());
        let descs = (0..n_descs)
            .map(|_| Desc {
                addr: r.u64(),
                len: r.u32(),
                flags: r.u16(),
                next: r.u16(),
            })
            .collect();
        let heads = (0..n_heads).map(|_| r.u16()).collect();
        Self {
            size_log2,
            descs,
            heads,
            avail_idx,
        }
    }

    /// Encodes for [`QueueSpec::decode`]; at most 255 descriptors and heads.
    pub fn encode(&self, w: &mut Writer) {
        let count = |n: usize| u8::try_from(n).expect("at most 255 descriptors and heads");
        w.u8(self.size_log2)
            .u8(count(self.descs.len()))
            .u8(count(self.heads.len()))
            .u16(self.avail_idx);
        for d in &self.descs {
            w.u64(d.addr).u32(d.len).u16(d.flags).u16(d.next);
        }
        for &h in &self.heads {
            w.u16(h);
        }
    }

    /// Writes this queue into slot `slot` of `mem` and returns the device's side of it, ready.
    pub fn place(&self, mem: &GuestMemoryMmap, slot: u8) -> Queue {
        let size = self.size();
        let start = GuestAddress(u64::from(slot) * QUEUE_SLOT);
        let mock = MockSplitQueue::create(mem, start, size);
        // `take(size)` keeps every index inside the table and ring: the mock only fails
        // (and these `expect`s only fire) for an index past them.
        for (i, d) in self.descs.iter().take(size.into()).enumerate() {
            let raw = RawDescriptor::from(Descriptor::new(d.addr, d.len, d.flags, d.next));
            mock.desc_table()
                .store(i as u16, raw)
                .expect("descriptor index inside the table");
        }
        for (i, &head) in self.heads.iter().take(size.into()).enumerate() {
            let slot = mock.avail().ring().ref_at(i);
            slot.expect("avail slot inside the ring").store(head);
        }
        mock.avail().idx().store(self.avail_idx);
        mock.create_queue()
            .expect("a power-of-two size up to 256 makes a valid queue")
    }
}

/// Guest memory of [`MEM_LEN`] bytes with `data` (as much as fits) from [`DATA_BASE`].
pub fn memory(data: &[u8]) -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_LEN)])
        .expect("mapping 128 KiB of anonymous memory");
    let room = MEM_LEN - DATA_BASE as usize;
    mem.write_slice(&data[..data.len().min(room)], GuestAddress(DATA_BASE))
        .expect("the data region lies inside guest memory");
    mem
}

/// Interrupts go nowhere: the targets look at results, not at the guest being told.
#[derive(Debug)]
pub struct NoIrq;

impl InterruptSignal for NoIrq {
    fn signal_used_queue(&self) {}
    fn signal_config_change(&self) {}
}

/// A [`NoIrq`] as devices take it.
pub fn no_irq() -> Arc<dyn InterruptSignal> {
    Arc::new(NoIrq)
}

#[cfg(test)]
mod tests {
    use virtio_queue::QueueOwnedT;

    use super::*;

    #[test]
    fn an_honest_queue_round_trips_and_the_device_sees_its_chains() {
        let chains: [&[(u64, u32, bool)]; 2] = [
            &[(DATA_BASE, 16, false), (DATA_BASE + 0x100, 512, true)],
            &[(DATA_BASE + 0x400, 1, true)],
        ];
        let spec = QueueSpec::honest(4, &chains);
        let mut w = Writer::default();
        spec.encode(&mut w);
        let bytes = w.finish();
        assert_eq!(QueueSpec::decode(&mut Reader::new(&bytes)), spec);

        let mem = memory(&[]);
        let mut queue = spec.place(&mem, 1);
        let seen: Vec<Vec<(u64, u32, bool)>> = queue
            .iter(&mem)
            .unwrap()
            .map(|chain| {
                chain
                    .map(|d| (d.addr().0, d.len(), d.is_write_only()))
                    .collect()
            })
            .collect();
        assert_eq!(seen, chains.map(<[_]>::to_vec));
    }
}
