//! Feeds the virtio-mmio transport's register state machine (`MmioTransport` as a
//! `BusDevice`: status transitions, feature negotiation, queue set-up, activation, queue
//! notifications) with a virtio-rng device behind it, so a driver that gets through set-up
//! reaches the device with queues wherever it put them. Input: a count of register accesses,
//! each an operation byte (read, write, ioeventfd notification or backend event, and the
//! access width), a `u16` offset and a `u32` value; then the guest's data bytes (from
//! `DATA_BASE` in memory, where a driver would put its rings and buffers).
//!
//! Must hold: no panic in any order of accesses; the identification registers never change;
//! the device is only live with `DRIVER_OK` set, and features are only `FEATURES_OK` when they
//! are a subset of what the device offers and include `VERSION_1`.
#![no_main]

use std::sync::Arc;

use herd_fuzz::bytes::Reader;
use herd_fuzz::virtq::memory;
use herd_vmm::bus::BusDevice;
use herd_vmm::devices::virtio::mmio::{
    MMIO_MAGIC, MMIO_VERSION, MmioInterrupt, MmioTransport, reg,
};
use herd_vmm::devices::virtio::rng::Rng;
use herd_vmm::devices::virtio::{VIRTIO_F_VERSION_1, status};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Access widths an operation byte picks from (bits 2-3); the guest can issue any of them.
const WIDTHS: [usize; 4] = [4, 1, 2, 8];

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let ops: Vec<(u8, u16, u32)> = (0..r.u8()).map(|_| (r.u8(), r.u16(), r.u32())).collect();
    let mem = memory(r.rest());
    let irqfd = EventFd::new(EFD_NONBLOCK).expect("an eventfd for the interrupt");
    let interrupt = Arc::new(MmioInterrupt::new(irqfd));
    let mut t = MmioTransport::new(Box::new(Rng::new()), mem, interrupt);
    for (op, offset, value) in ops {
        apply(&mut t, op, offset.into(), value);
        check(&mut t);
    }
});

fn apply(t: &mut MmioTransport, op: u8, offset: u64, value: u32) {
    let width = WIDTHS[usize::from(op >> 2) & 3];
    let bytes = u64::from(value).to_le_bytes();
    match op & 3 {
        0 => t.read(offset, &mut [0u8; 8][..width]),
        1 => t.write(offset, &bytes[..width]),
        2 => t.process_queue_notification(value),
        _ => t.process_backend_event(value as usize % 4),
    }
}

fn read32(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn check(t: &mut MmioTransport) {
    assert_eq!(read32(t, reg::MAGIC), MMIO_MAGIC);
    assert_eq!(read32(t, reg::VERSION), MMIO_VERSION);
    let state = t.state().clone();
    assert_eq!(read32(t, reg::STATUS), state.status);
    if state.activated {
        assert_ne!(state.status & status::DRIVER_OK, 0);
    }
    if state.status & status::FEATURES_OK != 0 {
        // virtio-rng offers VERSION_1 and nothing else.
        assert_eq!(state.acked_features, 1 << VIRTIO_F_VERSION_1);
    }
}
