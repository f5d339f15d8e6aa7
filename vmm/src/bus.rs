//! Address-range dispatch for port I/O and MMIO: which device owns a guest access.
//!
//! Devices are registered under a name for a fixed range; overlapping ranges are refused at
//! build time. An access is handed to the owning device with its offset into the range.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device the guest reaches through port I/O or MMIO. Implementations hold only register
/// state and the small effect handles they need, so they are tested without KVM.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset` into the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset` into the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors registering a device.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("device {name} at {base:#x}+{len:#x} overlaps {other}")]
    Overlap {
        name: &'static str,
        base: u64,
        len: u64,
        other: &'static str,
    },
    #[error("device {name} has an empty or wrapping range at {base:#x}+{len:#x}")]
    BadRange {
        name: &'static str,
        base: u64,
        len: u64,
    },
}

/// A device shared between the vCPU threads and the event loop.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

struct Slot {
    name: &'static str,
    len: u64,
    device: SharedDevice,
}

/// One address space (ports or MMIO).
#[derive(Default)]
pub struct Bus {
    slots: BTreeMap<u64, Slot>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self
            .slots
            .iter()
            .map(|(b, s)| (s.name, *b, s.len))
            .collect();
        f.debug_struct("Bus").field("slots", &names).finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `device` for `[base, base + len)`.
    pub fn insert(
        &mut self,
        name: &'static str,
        base: u64,
        len: u64,
        device: SharedDevice,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { name, base, len })?;
        let overlapping = self
            .slots
            .range(..end)
            .next_back()
            .filter(|(b, s)| **b + s.len > base);
        if let Some((_, other)) = overlapping {
            return Err(BusError::Overlap {
                name,
                base,
                len,
                other: other.name,
            });
        }
        self.slots.insert(base, Slot { name, len, device });
        Ok(())
    }

    fn find(&self, addr: u64, len: usize) -> Option<(u64, &Slot)> {
        let (base, slot) = self.slots.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset + len as u64 <= slot.len).then_some((offset, slot))
    }

    /// Dispatches a read; returns false if no device covers the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, slot)) => {
                lock(&slot.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false if no device covers the whole access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, slot)) => {
                lock(&slot.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device even if a thread panicked while holding it: device state is plain
/// registers, and a VMM that stops serving I/O would hang the guest instead.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The two buses a vCPU dispatches to.
#[derive(Debug, Default)]
pub struct IoBuses {
    pub pio: Bus,
    pub mmio: Bus,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Records accesses and answers reads with a fixed byte.
    #[derive(Default)]
    pub struct Recorder {
        pub writes: Vec<(u64, Vec<u8>)>,
        pub reads: Vec<u64>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            self.reads.push(offset);
            data.fill(0xab);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn access_reaches_the_device_with_its_offset() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert("rec", 0x3f8, 8, dev.clone()).unwrap();
        assert!(bus.write(0x3f9, &[1]));
        let mut b = [0u8; 1];
        assert!(bus.read(0x3ff, &mut b));
        assert_eq!(b, [0xab]);
        assert_eq!(dev.lock().unwrap().writes, vec![(1, vec![1])]);
        assert_eq!(dev.lock().unwrap().reads, vec![7]);
    }

    #[test]
    fn access_outside_or_straddling_a_range_is_unclaimed() {
        let mut bus = Bus::new();
        bus.insert("rec", 0x100, 4, Arc::new(Mutex::new(Recorder::default())))
            .unwrap();
        assert!(!bus.write(0xff, &[0]));
        assert!(!bus.write(0x104, &[0]));
        assert!(!bus.read(0x102, &mut [0u8; 4]));
    }

    #[test]
    fn overlapping_or_empty_ranges_are_refused() {
        let mut bus = Bus::new();
        let dev = || -> SharedDevice { Arc::new(Mutex::new(Recorder::default())) };
        bus.insert("a", 0x100, 0x10, dev()).unwrap();
        assert!(matches!(
            bus.insert("b", 0x10f, 1, dev()),
            Err(BusError::Overlap { other: "a", .. })
        ));
        assert!(matches!(
            bus.insert("c", 0xf0, 0x11, dev()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert("d", 0x200, 0, dev()),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            bus.insert("e", u64::MAX, 2, dev()),
            Err(BusError::BadRange { .. })
        ));
        bus.insert("f", 0x110, 1, dev()).unwrap();
        bus.insert("g", 0xff, 1, dev()).unwrap();
    }
}
