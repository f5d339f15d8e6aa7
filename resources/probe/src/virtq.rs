//! A split virtqueue driven from the guest side, in memory the probe owns (identity-mapped, so
//! a pointer is a guest-physical address). Device-independent: blk, net and vsock drivers put
//! their chains here too. One request is in flight at a time, so every chain starts at
//! descriptor 0; this keeps the instruction count tiny. Receive queues that keep several
//! one-descriptor buffers posted put buffer i at descriptor i ([`Virtq::submit_at`]).

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{Ordering, compiler_fence};

/// Entries in the probe's queues.
pub const QUEUE_SIZE: usize = 8;
/// Descriptor flag: the chain continues at `next`.
pub const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer.
pub const DESC_F_WRITE: u16 = 2;

/// One descriptor, as the device reads it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl Desc {
    /// A buffer the device fills.
    pub fn writable(addr: u64, len: u32) -> Self {
        Desc {
            addr,
            len,
            flags: DESC_F_WRITE,
            next: 0,
        }
    }

    /// A buffer the device reads.
    pub fn readable(addr: u64, len: u32) -> Self {
        Desc {
            addr,
            len,
            flags: 0,
            next: 0,
        }
    }
}

#[repr(C)]
#[derive(Debug, Default)]
struct Avail {
    flags: u16,
    idx: u16,
    ring: [u16; QUEUE_SIZE],
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct UsedElem {
    id: u32,
    len: u32,
}

#[repr(C)]
#[derive(Debug, Default)]
struct Used {
    flags: u16,
    idx: u16,
    ring: [UsedElem; QUEUE_SIZE],
}

/// The rings (descriptor table 16-byte aligned, used ring 4-byte aligned) plus our indices.
#[repr(C, align(16))]
#[derive(Debug, Default)]
pub struct Virtq {
    desc: [Desc; QUEUE_SIZE],
    avail: Avail,
    used: Used,
    last_used: u16,
}

impl Virtq {
    /// Guest-physical addresses of the descriptor table, available and used rings.
    pub fn addresses(&self) -> (u64, u64, u64) {
        (
            addr_of!(self.desc) as u64,
            addr_of!(self.avail) as u64,
            addr_of!(self.used) as u64,
        )
    }

    /// Publishes `descs` as one chain, exactly as given (flags and `next` included, so tests
    /// can build hostile chains); returns false if it does not fit.
    pub fn submit_raw(&mut self, descs: &[Desc]) -> bool {
        if descs.is_empty() || descs.len() > QUEUE_SIZE {
            return false;
        }
        self.desc[..descs.len()].copy_from_slice(descs);
        self.publish(0);
        true
    }

    /// Publishes the one-descriptor chain `desc` at descriptor `head`, leaving the others
    /// alone (so several buffers can be posted at once); false if `head` is out of range.
    pub fn submit_at(&mut self, head: u16, desc: Desc) -> bool {
        let Some(slot) = self.desc.get_mut(usize::from(head)) else {
            return false;
        };
        *slot = Desc { next: 0, ..desc };
        slot.flags &= !DESC_F_NEXT;
        self.publish(head);
        true
    }

    /// Puts the chain starting at `head` in the available ring.
    fn publish(&mut self, head: u16) {
        let idx = self.avail.idx;
        self.avail.ring[usize::from(idx) % QUEUE_SIZE] = head;
        // The device must see the descriptors and ring entry before the new index.
        compiler_fence(Ordering::SeqCst);
        // SAFETY: a plain aligned field of `self`; volatile because the device reads it.
        unsafe { write_volatile(addr_of_mut!(self.avail.idx), idx.wrapping_add(1)) };
    }

    /// Publishes `descs` chained in order (NEXT set on all but the last).
    pub fn submit(&mut self, descs: &[Desc]) -> bool {
        let mut chain = [Desc::default(); QUEUE_SIZE];
        let Some(chain) = chain.get_mut(..descs.len()) else {
            return false;
        };
        for (i, (c, d)) in chain.iter_mut().zip(descs).enumerate() {
            *c = *d;
            if i + 1 < descs.len() {
                c.flags |= DESC_F_NEXT;
                c.next = i as u16 + 1;
            }
        }
        self.submit_raw(chain)
    }

    /// The next used entry (head id, bytes written), if the device has returned one.
    pub fn take_used(&mut self) -> Option<(u32, u32)> {
        // SAFETY: a plain aligned field of `self`; volatile because the device writes it.
        let idx = unsafe { read_volatile(addr_of!(self.used.idx)) };
        if idx == self.last_used {
            return None;
        }
        compiler_fence(Ordering::SeqCst);
        let slot = usize::from(self.last_used) % QUEUE_SIZE;
        // SAFETY: as above.
        let elem = unsafe { read_volatile(addr_of!(self.used.ring[slot])) };
        self.last_used = self.last_used.wrapping_add(1);
        Some((elem.id, elem.len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_split_ring_format() {
        let q = Virtq::default();
        let (d, a, u) = q.addresses();
        assert_eq!(d % 16, 0);
        assert_eq!(a - d, 16 * QUEUE_SIZE as u64);
        assert_eq!(u - a, 4 + 2 * QUEUE_SIZE as u64);
        assert_eq!(u % 4, 0);
    }

    #[test]
    fn submit_chains_descriptors_and_publishes_the_head() {
        let mut q = Virtq::default();
        assert!(q.submit(&[Desc::readable(0x1000, 16), Desc::writable(0x2000, 8)]));
        assert_eq!(q.desc[0].flags, DESC_F_NEXT);
        assert_eq!((q.desc[0].next, q.desc[1].flags), (1, DESC_F_WRITE));
        assert_eq!((q.avail.idx, q.avail.ring[0]), (1, 0));
        assert!(q.submit(&[Desc::writable(0x3000, 4)]));
        assert_eq!(q.avail.idx, 2);
        assert!(!q.submit(&[]));
        assert!(!q.submit(&[Desc::default(); QUEUE_SIZE + 1]));
    }

    #[test]
    fn buffers_posted_at_their_own_descriptor_leave_the_others_alone() {
        let mut q = Virtq::default();
        assert!(q.submit_at(0, Desc::writable(0x1000, 16)));
        let mut chained = Desc::writable(0x2000, 8);
        chained.flags |= DESC_F_NEXT;
        chained.next = 5;
        assert!(q.submit_at(3, chained));
        assert_eq!(q.desc[0], Desc::writable(0x1000, 16));
        assert_eq!(q.desc[3], Desc::writable(0x2000, 8), "a chain of one");
        assert_eq!((q.avail.idx, q.avail.ring[0], q.avail.ring[1]), (2, 0, 3));
        assert!(!q.submit_at(QUEUE_SIZE as u16, Desc::writable(0x3000, 4)));
        assert_eq!(q.avail.idx, 2);
    }

    #[test]
    fn used_entries_are_taken_once_in_order() {
        let mut q = Virtq::default();
        assert_eq!(q.take_used(), None);
        q.used.ring[0] = UsedElem { id: 0, len: 42 };
        q.used.ring[1] = UsedElem { id: 3, len: 7 };
        q.used.idx = 2;
        assert_eq!(q.take_used(), Some((0, 42)));
        assert_eq!(q.take_used(), Some((3, 7)));
        assert_eq!(q.take_used(), None);
    }
}
