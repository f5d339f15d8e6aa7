//! The virtio-mmio transport, version 2 (virtio 1.x §4.2.2): the register window the guest
//! drives a device through, as a state machine over plain data. It owns the device status
//! and its transitions, feature negotiation, queue configuration (handed to the device on
//! `DRIVER_OK`), interrupt status, and delegates configuration space to the device.
//!
//! A guest can write anything in any order: a write that is not allowed in the current
//! status is ignored (with a rate-limited log line), a device or queue failure sets
//! `DEVICE_NEEDS_RESET`; nothing panics. Queue notifications normally arrive through an
//! ioeventfd on the event loop ([`notify::QueueNotifier`]); a `QueueNotify` write that reaches
//! the bus (it did not match the ioeventfd) is handled the same way.

pub mod attach;
pub mod interrupt;
pub mod notify;
pub mod state;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use super::{Queue, QueueT, VIRTIO_F_VERSION_1, VirtioDevice, status};
use crate::bus::BusDevice;
use crate::logging::RateLimit;
pub use interrupt::MmioInterrupt;

/// `MagicValue`: "virt" in little-endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// The transport version we implement (virtio 1.x, no legacy).
pub const MMIO_VERSION: u32 = 2;
/// Our `VendorID`: "herd" in little-endian.
pub const VENDOR_ID: u32 = 0x6472_6568;

/// Register offsets in the window.
pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// The transport's own registers as plain data (a snapshot saves them with the queues).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportState {
    pub status: u32,
    pub device_features_select: u32,
    pub driver_features_select: u32,
    pub acked_features: u64,
    pub queue_select: u32,
    pub config_generation: u32,
    pub activated: bool,
}

/// One virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<MmioInterrupt>,
    queues: Vec<Queue>,
    state: TransportState,
    log: RateLimit,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("state", &self.state)
            .finish()
    }
}

fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
    device
        .queue_max_sizes()
        .iter()
        .filter_map(|&max| Queue::new(max).ok())
        .collect()
}

impl MmioTransport {
    /// Puts `device` behind a register window; `mem` is handed to it on activation.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<MmioInterrupt>,
    ) -> Self {
        let queues = fresh_queues(device.as_ref());
        Self {
            device,
            mem,
            interrupt,
            queues,
            state: TransportState::default(),
            log: RateLimit::new(5),
        }
    }

    /// The transport registers.
    pub fn state(&self) -> &TransportState {
        &self.state
    }

    /// How many queues the device has (one ioeventfd each).
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// The device type id.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    fn refuse(&self, what: &str) {
        if self.log.allow() {
            tracing::warn!(
                device = self.device.device_type(),
                status = self.state.status,
                "virtio-mmio: guest {what}; ignored"
            );
        }
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.state.queue_select as usize)
    }

    fn device_features_word(&self) -> u32 {
        match self.state.device_features_select {
            0 => self.device.features() as u32,
            1 => (self.device.features() >> 32) as u32,
            _ => 0,
        }
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let queue = self.selected_queue();
        match offset {
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => self.device_features_word(),
            reg::QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.state.status,
            reg::CONFIG_GENERATION => self.state.config_generation,
            _ => {
                self.refuse("read an unknown or write-only register");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.state.device_features_select = v,
            reg::DRIVER_FEATURES_SEL => self.state.driver_features_select = v,
            reg::DRIVER_FEATURES => self.write_driver_features(v),
            reg::QUEUE_SEL => self.state.queue_select = v,
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => self.write_queue(offset, v),
            reg::QUEUE_NOTIFY => self.process_queue_notification(v),
            reg::INTERRUPT_ACK => self.interrupt.ack(v),
            reg::STATUS => self.write_status(v),
            _ => self.refuse("wrote an unknown or read-only register"),
        }
    }

    fn has(&self, bits: u32) -> bool {
        self.state.status & bits == bits
    }

    fn write_driver_features(&mut self, v: u32) {
        if !self.has(status::DRIVER) || self.has(status::FEATURES_OK) {
            return self.refuse("wrote driver features outside negotiation");
        }
        let f = &mut self.state.acked_features;
        match self.state.driver_features_select {
            0 => *f = (*f & !0xffff_ffff) | u64::from(v),
            1 => *f = (*f & 0xffff_ffff) | (u64::from(v) << 32),
            _ if v != 0 => self.refuse("acked features beyond bit 63"),
            _ => {}
        }
    }

    fn write_queue(&mut self, offset: u64, v: u32) {
        if !self.has(status::FEATURES_OK) || self.has(status::DRIVER_OK) {
            return self.refuse("configured a queue outside set-up");
        }
        let index = self.state.queue_select as usize;
        let Some(q) = self.queues.get_mut(index) else {
            return self.refuse("configured a queue that does not exist");
        };
        let ok = match offset {
            reg::QUEUE_NUM => u16::try_from(v)
                .ok()
                .is_some_and(|n| q.try_set_size(n).is_ok()),
            reg::QUEUE_READY => {
                q.set_ready(v == 1);
                v <= 1
            }
            reg::QUEUE_DESC_LOW => set_low_high(q, Part::Desc, Some(v), None),
            reg::QUEUE_DESC_HIGH => set_low_high(q, Part::Desc, None, Some(v)),
            reg::QUEUE_DRIVER_LOW => set_low_high(q, Part::Avail, Some(v), None),
            reg::QUEUE_DRIVER_HIGH => set_low_high(q, Part::Avail, None, Some(v)),
            reg::QUEUE_DEVICE_LOW => set_low_high(q, Part::Used, Some(v), None),
            _ => set_low_high(q, Part::Used, None, Some(v)),
        };
        if !ok {
            self.refuse("wrote an invalid queue size, address or ready value");
        }
    }

    fn features_acceptable(&self) -> bool {
        let acked = self.state.acked_features;
        acked & !self.device.features() == 0 && acked & (1 << VIRTIO_F_VERSION_1) != 0
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            return self.reset();
        }
        let old = self.state.status;
        if v & old != old {
            return self.refuse("cleared status bits without a reset");
        }
        let added = v & !old;
        let needs = |bit: u32, before: u32| added & bit != 0 && v & before != before;
        if added & status::DEVICE_NEEDS_RESET != 0
            || needs(status::DRIVER, status::ACKNOWLEDGE)
            || needs(status::FEATURES_OK, status::DRIVER)
            || needs(status::DRIVER_OK, status::FEATURES_OK)
        {
            return self.refuse("set status bits out of order");
        }
        let mut v = v;
        if added & status::FEATURES_OK != 0 && !self.features_acceptable() {
            self.refuse("acked features the device does not offer or not VERSION_1");
            v &= !status::FEATURES_OK;
            if v & status::DRIVER_OK != 0 {
                return;
            }
        }
        self.state.status = v;
        if added & status::DRIVER_OK != 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter().enumerate() {
            if q.ready() && !q.is_valid(&self.mem) {
                self.refuse("made a queue ready outside guest memory");
                return self.needs_reset(&format!("queue {i} invalid"));
            }
            // A state taken from a valid queue always converts back.
            match Queue::try_from(q.state()) {
                Ok(q) => queues.push(q),
                Err(e) => return self.needs_reset(&format!("queue {i}: {e:?}")),
            }
        }
        let irq = self.interrupt.clone();
        let features = self.state.acked_features;
        match self
            .device
            .activate(self.mem.clone(), queues, features, irq)
        {
            Ok(()) => self.state.activated = true,
            Err(e) => self.needs_reset(&e.to_string()),
        }
    }

    /// Marks the device as needing a reset and tells the guest (config-change interrupt).
    fn needs_reset(&mut self, why: &str) {
        if self.log.allow() {
            tracing::warn!(
                device = self.device.device_type(),
                "virtio device needs reset: {why}"
            );
        }
        self.state.status |= status::DEVICE_NEEDS_RESET;
        if self.has(status::DRIVER_OK) {
            use super::InterruptSignal;
            self.interrupt.signal_config_change();
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        self.queues = fresh_queues(self.device.as_ref());
        self.interrupt.clear();
        let generation = self.state.config_generation;
        self.state = TransportState {
            config_generation: generation,
            ..TransportState::default()
        };
    }

    /// The device's backend fds (see [`VirtioDevice::backend_fds`]).
    pub fn backend_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.device.backend_fds()
    }

    /// Backend fd `index` is ready; ignored until the device is live (the device picks up
    /// what waits when the guest first notifies).
    pub fn process_backend_event(&mut self, index: usize) {
        if !self.state.activated || self.has(status::DEVICE_NEEDS_RESET) {
            return;
        }
        if let Err(e) = self.device.process_backend(index) {
            self.needs_reset(&e.to_string());
        }
    }

    /// The guest notified queue `index` (ioeventfd or a `QueueNotify` write).
    pub fn process_queue_notification(&mut self, index: u32) {
        if !self.state.activated || self.has(status::DEVICE_NEEDS_RESET) {
            return self.refuse("notified a queue of an inactive device");
        }
        if let Err(e) = self.device.process_queue(index as usize) {
            self.needs_reset(&e.to_string());
        }
    }
}

#[derive(Clone, Copy)]
enum Part {
    Desc,
    Avail,
    Used,
}

/// Sets half of a queue address, keeping the other half; false if the queue refused it.
fn set_low_high(q: &mut Queue, part: Part, low: Option<u32>, high: Option<u32>) -> bool {
    let state = q.state();
    let current = match part {
        Part::Desc => state.desc_table,
        Part::Avail => state.avail_ring,
        Part::Used => state.used_ring,
    };
    let low = low.map_or(current & 0xffff_ffff, u64::from);
    let high = high.map_or(current >> 32, u64::from);
    let addr = vm_memory::GuestAddress((high << 32) | low);
    match part {
        Part::Desc => q.try_set_desc_table_address(addr),
        Part::Avail => q.try_set_avail_ring_address(addr),
        Part::Used => q.try_set_used_ring_address(addr),
    }
    .is_ok()
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            return self.device.read_config(offset - reg::CONFIG, data);
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return self.refuse("read a register with a width other than 4 bytes");
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            if !self.has(status::DRIVER) {
                return self.refuse("wrote device configuration before DRIVER");
            }
            return self.device.write_config(offset - reg::CONFIG, data);
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return self.refuse("wrote a register with a width other than 4 bytes");
        };
        if !offset.is_multiple_of(4) {
            return self.refuse("wrote an unaligned register");
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}
