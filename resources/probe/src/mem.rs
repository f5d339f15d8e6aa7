//! Read access to guest-physical memory, behind a trait so the parsers that follow pointers
//! (start info, zero page, MP table) run on the host against plain buffers in tests.

use crate::bootinfo::MemMap;

/// Guest-physical memory the probe may read.
pub trait PhysMem {
    /// The `len` bytes at `addr`, or `None` if any of them may not be read.
    fn slice(&self, addr: u64, len: usize) -> Option<&[u8]>;
}

/// Restricts another [`PhysMem`] to ranges that the memory map covers, so following a bad
/// pointer never touches unbacked guest-physical space (an MMIO exit to the VMM).
#[derive(Debug, Clone, Copy)]
pub struct MapChecked<'a, M> {
    mem: &'a M,
    map: MemMap<'a>,
}

impl<'a, M: PhysMem> MapChecked<'a, M> {
    /// Wraps `mem`, allowing only ranges inside one entry of `map` (of any type).
    pub fn new(mem: &'a M, map: MemMap<'a>) -> Self {
        MapChecked { mem, map }
    }

    /// The longest readable prefix, at most `max` bytes, of the range at `addr`.
    pub fn slice_upto(&self, addr: u64, max: usize) -> &[u8] {
        let len = self.map.covered_len(addr, max as u64) as usize;
        self.slice(addr, len).unwrap_or(&[])
    }
}

impl<M: PhysMem> PhysMem for MapChecked<'_, M> {
    fn slice(&self, addr: u64, len: usize) -> Option<&[u8]> {
        if self.map.covered_len(addr, len as u64) != len as u64 {
            return None;
        }
        self.mem.slice(addr, len)
    }
}

/// A flat buffer standing for guest memory from `base` on (host tests only).
#[cfg(test)]
#[derive(Debug)]
pub struct Flat {
    /// Guest-physical address of `data[0]`.
    pub base: u64,
    /// The memory contents.
    pub data: std::vec::Vec<u8>,
}

#[cfg(test)]
impl Flat {
    /// `size` zero bytes at `base`.
    pub fn new(base: u64, size: usize) -> Self {
        Flat {
            base,
            data: std::vec![0; size],
        }
    }

    /// Copies `bytes` to guest address `addr`.
    pub fn put(&mut self, addr: u64, bytes: &[u8]) {
        let off = (addr - self.base) as usize;
        self.data[off..off + bytes.len()].copy_from_slice(bytes);
    }
}

#[cfg(test)]
impl PhysMem for Flat {
    fn slice(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let off = usize::try_from(addr.checked_sub(self.base)?).ok()?;
        self.data.get(off..off.checked_add(len)?)
    }
}
