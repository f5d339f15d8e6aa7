//! A minimal virtio-mmio version 2 driver: finding devices from `virtio_mmio.device=` words,
//! probing a window, feature negotiation (VERSION_1 only), queue set-up and notification
//! ([`Device`]), apart from any device protocol; then the entropy protocol ([`read_entropy`]).
//! Every register access is a VM exit, so the sequence is as short as the spec allows; we
//! poll `InterruptStatus` instead of taking interrupts.

use crate::virtq::{Desc, QUEUE_SIZE, Virtq};

/// Register offsets (virtio 1.x §4.2.2).
mod reg {
    pub const MAGIC: u32 = 0x000;
    pub const VERSION: u32 = 0x004;
    pub const DEVICE_ID: u32 = 0x008;
    pub const DEVICE_FEATURES: u32 = 0x010;
    pub const DEVICE_FEATURES_SEL: u32 = 0x014;
    pub const DRIVER_FEATURES: u32 = 0x020;
    pub const DRIVER_FEATURES_SEL: u32 = 0x024;
    pub const QUEUE_SEL: u32 = 0x030;
    pub const QUEUE_NUM_MAX: u32 = 0x034;
    pub const QUEUE_NUM: u32 = 0x038;
    pub const QUEUE_READY: u32 = 0x044;
    pub const QUEUE_NOTIFY: u32 = 0x050;
    pub const INTERRUPT_STATUS: u32 = 0x060;
    pub const INTERRUPT_ACK: u32 = 0x064;
    pub const STATUS: u32 = 0x070;
    pub const QUEUE_DESC_LOW: u32 = 0x080;
    pub const QUEUE_DRIVER_LOW: u32 = 0x090;
    pub const QUEUE_DEVICE_LOW: u32 = 0x0a0;
}

const MAGIC: u32 = 0x7472_6976;
const ACKNOWLEDGE: u32 = 1;
const DRIVER: u32 = 2;
const DRIVER_OK: u32 = 4;
const FEATURES_OK: u32 = 8;
const NEEDS_RESET: u32 = 64;
/// VIRTIO_F_VERSION_1 is bit 32: bit 0 of the second feature word.
const VERSION_1_HIGH: u32 = 1;
/// Device type id of an entropy source.
pub const DEVICE_RNG: u32 = 4;
/// `InterruptStatus` polls before giving up (each a VM exit, some microseconds).
pub const POLLS: u32 = 1_000_000;
/// Most devices the probe remembers from its command line.
pub const MAX_DEVICES: usize = 4;

/// 32-bit register access to one device window (MMIO in the guest, a fake in tests).
pub trait Regs {
    /// Reads the register at `offset`.
    fn read(&self, offset: u32) -> u32;
    /// Writes the register at `offset`.
    fn write(&self, offset: u32, value: u32);
}

/// The base address in a `virtio_mmio.device=<size>@<base>:<irq>` value.
pub fn parse_device(value: &[u8]) -> Option<u64> {
    let at = value.iter().position(|&b| b == b'@')?;
    let rest = &value[at + 1..];
    let colon = rest.iter().position(|&b| b == b':').unwrap_or(rest.len());
    let hex = rest[..colon].strip_prefix(b"0x")?;
    if hex.is_empty() || hex.len() > 16 {
        return None;
    }
    let mut n: u64 = 0;
    for &c in hex {
        n = (n << 4) | u64::from((c as char).to_digit(16)?);
    }
    Some(n)
}

/// The interrupt line of a `virtio_mmio.device=` value (`4K@0x..:N`), if it names one.
pub fn parse_device_irq(value: &[u8]) -> Option<u32> {
    let colon = value.iter().rposition(|&b| b == b':')?;
    let digits = &value[colon + 1..];
    if digits.is_empty() || digits.len() > 4 {
        return None;
    }
    digits
        .iter()
        .try_fold(0u32, |n, &c| Some(n * 10 + (c as char).to_digit(10)?))
}

/// A device after probing: its window and type.
#[derive(Debug)]
pub struct Device<R> {
    regs: R,
    /// The device type id.
    pub id: u32,
}

impl<R: Regs> Device<R> {
    /// Checks magic and version 2; a device id of 0 means an empty window.
    pub fn probe(regs: R) -> Result<Self, &'static str> {
        if regs.read(reg::MAGIC) != MAGIC {
            return Err("bad-magic");
        }
        if regs.read(reg::VERSION) != 2 {
            return Err("not-version-2");
        }
        let id = regs.read(reg::DEVICE_ID);
        if id == 0 {
            return Err("no-device");
        }
        Ok(Device { regs, id })
    }

    /// Resets the device and negotiates VERSION_1 and no other feature.
    pub fn negotiate(&self) -> Result<(), &'static str> {
        self.negotiate_features(0).map(|_| ())
    }

    /// Resets the device and negotiates VERSION_1 plus those of `low` (feature bits 0-31)
    /// the device offers; returns the low feature word acked.
    pub fn negotiate_features(&self, low: u32) -> Result<u32, &'static str> {
        let r = &self.regs;
        r.write(reg::STATUS, 0);
        r.write(reg::STATUS, ACKNOWLEDGE | DRIVER);
        r.write(reg::DEVICE_FEATURES_SEL, 1);
        if r.read(reg::DEVICE_FEATURES) & VERSION_1_HIGH == 0 {
            return Err("no-version-1");
        }
        let low = if low == 0 {
            0
        } else {
            r.write(reg::DEVICE_FEATURES_SEL, 0);
            r.read(reg::DEVICE_FEATURES) & low
        };
        r.write(reg::DRIVER_FEATURES_SEL, 0);
        r.write(reg::DRIVER_FEATURES, low);
        r.write(reg::DRIVER_FEATURES_SEL, 1);
        r.write(reg::DRIVER_FEATURES, VERSION_1_HIGH);
        r.write(reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        if r.read(reg::STATUS) & FEATURES_OK == 0 {
            return Err("features-refused");
        }
        Ok(low)
    }

    /// Gives queue `index` the rings of `q` and marks it ready.
    pub fn setup_queue(&self, index: u32, q: &Virtq) -> Result<(), &'static str> {
        let r = &self.regs;
        r.write(reg::QUEUE_SEL, index);
        if (r.read(reg::QUEUE_NUM_MAX) as usize) < QUEUE_SIZE {
            return Err("queue-too-small");
        }
        r.write(reg::QUEUE_NUM, QUEUE_SIZE as u32);
        let (d, a, u) = q.addresses();
        for (low, value) in [
            (reg::QUEUE_DESC_LOW, d),
            (reg::QUEUE_DRIVER_LOW, a),
            (reg::QUEUE_DEVICE_LOW, u),
        ] {
            r.write(low, value as u32);
            r.write(low + 4, (value >> 32) as u32); // the HIGH register
        }
        r.write(reg::QUEUE_READY, 1);
        Ok(())
    }

    /// The 32-bit word at `offset` in the device's configuration space.
    pub fn config(&self, offset: u32) -> u32 {
        self.regs.read(0x100 + offset)
    }

    /// Sets DRIVER_OK: the device is live.
    pub fn driver_ok(&self) -> Result<(), &'static str> {
        let s = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;
        self.regs.write(reg::STATUS, s);
        match self.regs.read(reg::STATUS) {
            v if v & NEEDS_RESET != 0 => Err("device-needs-reset"),
            v if v != s => Err("driver-ok-refused"),
            _ => Ok(()),
        }
    }

    /// Notifies queue `index` without waiting.
    pub fn notify(&self, index: u32) {
        self.regs.write(reg::QUEUE_NOTIFY, index);
    }

    /// Reads and acks the interrupt status (one poll of a wait loop); fails if the device
    /// needs a reset.
    pub fn poll(&self) -> Result<(), &'static str> {
        let isr = self.regs.read(reg::INTERRUPT_STATUS);
        if isr != 0 {
            self.regs.write(reg::INTERRUPT_ACK, isr);
            if self.regs.read(reg::STATUS) & NEEDS_RESET != 0 {
                return Err("device-needs-reset");
            }
        }
        Ok(())
    }

    /// Notifies queue `index` and waits for the device's interrupt status (then acks it).
    pub fn kick_and_wait(&self, index: u32) -> Result<(), &'static str> {
        self.regs.write(reg::QUEUE_NOTIFY, index);
        for _ in 0..POLLS {
            let isr = self.regs.read(reg::INTERRUPT_STATUS);
            if isr != 0 {
                self.regs.write(reg::INTERRUPT_ACK, isr);
                if self.regs.read(reg::STATUS) & NEEDS_RESET != 0 {
                    return Err("device-needs-reset");
                }
                return Ok(());
            }
        }
        Err("timeout")
    }
}

/// How the entropy request is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// A proper request: one writable buffer.
    No,
    /// The buffer lies outside guest memory (in the MMIO hole).
    Outside,
    /// Two descriptors that point at each other.
    Loop,
}

/// An address no guest RAM covers: in the MMIO hole, past any virtio window.
pub const OUTSIDE_MEMORY: u64 = 0xd000_0000;

/// Sets up the rng's queue, asks for `buf.len()` bytes into `buf` (at guest address
/// `buf_addr`), returns how many the device wrote.
pub fn read_entropy<R: Regs>(
    dev: &Device<R>,
    q: &mut Virtq,
    buf_addr: u64,
    len: u32,
    hostile: Hostile,
) -> Result<u32, &'static str> {
    dev.negotiate()?;
    dev.setup_queue(0, q)?;
    dev.driver_ok()?;
    let ok = match hostile {
        Hostile::No => q.submit(&[Desc::writable(buf_addr, len)]),
        Hostile::Outside => q.submit(&[Desc::writable(OUTSIDE_MEMORY, len)]),
        Hostile::Loop => {
            let mut a = Desc::writable(buf_addr, len);
            a.flags |= crate::virtq::DESC_F_NEXT;
            let mut b = a;
            a.next = 1;
            b.next = 0;
            q.submit_raw(&[a, b])
        }
    };
    if !ok {
        return Err("submit");
    }
    dev.kick_and_wait(0)?;
    match q.take_used() {
        Some((0, n)) if n <= len => Ok(n),
        Some(_) => Err("bad-used-entry"),
        None => Err("no-used-entry"),
    }
}

/// How many distinct byte values `bytes` holds.
pub fn distinct(bytes: &[u8]) -> u32 {
    let mut seen = [false; 256];
    for &b in bytes {
        seen[usize::from(b)] = true;
    }
    seen.iter().filter(|&&s| s).count() as u32
}

pub mod blk;
pub mod net;
#[cfg(test)]
mod tests;
pub mod vsock;
