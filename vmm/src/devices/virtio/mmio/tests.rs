//! The virtio-mmio register state machine, register by register and transition by
//! transition, with a fake device and plain memory (no KVM).

use std::sync::Mutex;

use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::*;
use crate::devices::virtio::{VirtioError, interrupt};

const OFFERED: u64 = (1 << VIRTIO_F_VERSION_1) | 1;
const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;

/// What the fake device saw.
#[derive(Debug, Default)]
struct Seen {
    activated: Vec<(Vec<virtio_queue::QueueState>, u64)>,
    processed: Vec<usize>,
    resets: usize,
    config_writes: Vec<(u64, Vec<u8>)>,
    fail_next: bool,
    restored: usize,
}

struct Fake(Arc<Mutex<Seen>>);

impl VirtioDevice for Fake {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn features(&self) -> u64 {
        OFFERED
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(offset as u8 + 0x10);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.0
            .lock()
            .unwrap()
            .config_writes
            .push((offset, data.to_vec()));
    }
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        acked: u64,
        _irq: Arc<dyn super::super::InterruptSignal>,
    ) -> Result<(), VirtioError> {
        let states = queues.iter().map(|q| q.state()).collect();
        self.0.lock().unwrap().activated.push((states, acked));
        Ok(())
    }
    fn process_queue(&mut self, index: usize) -> Result<(), VirtioError> {
        let mut seen = self.0.lock().unwrap();
        seen.processed.push(index);
        if std::mem::take(&mut seen.fail_next) {
            return Err(VirtioError::NoSuchQueue(index));
        }
        Ok(())
    }
    fn reset(&mut self) {
        self.0.lock().unwrap().resets += 1;
    }
    /// The queues as activated, each having taken one chain per notification since.
    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        let seen = self.0.lock().unwrap();
        let Some((states, _)) = seen.activated.last() else {
            return Vec::new();
        };
        let mut states = states.clone();
        for &i in &seen.processed {
            states[i].next_avail += 1;
        }
        states
    }
    fn restored(&mut self) {
        self.0.lock().unwrap().restored += 1;
    }
}

struct Rig {
    t: MmioTransport,
    seen: Arc<Mutex<Seen>>,
}

impl Rig {
    fn new() -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let irq = Arc::new(MmioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let t = MmioTransport::new(Box::new(Fake(seen.clone())), mem, irq);
        Self { t, seen }
    }

    fn r(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(&mut self, offset: u64, v: u32) {
        self.t.write(offset, &v.to_le_bytes());
    }

    /// ACKNOWLEDGE, DRIVER, VERSION_1 acked, FEATURES_OK.
    fn negotiate(&mut self) {
        self.w(reg::STATUS, status::ACKNOWLEDGE);
        self.w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.w(reg::DRIVER_FEATURES_SEL, 1);
        self.w(reg::DRIVER_FEATURES, 1);
        let s = self.r(reg::STATUS);
        self.w(reg::STATUS, s | status::FEATURES_OK);
        assert_eq!(self.r(reg::STATUS), 0b1011);
    }

    /// Queue `i` of `size` entries with its rings at `base`, ready.
    fn queue(&mut self, i: u32, size: u32, base: u32) {
        self.w(reg::QUEUE_SEL, i);
        self.w(reg::QUEUE_NUM, size);
        self.w(reg::QUEUE_DESC_LOW, base);
        self.w(reg::QUEUE_DRIVER_LOW, base + 0x1000);
        self.w(reg::QUEUE_DEVICE_LOW, base + 0x2000);
        self.w(reg::QUEUE_READY, 1);
    }

    fn driver_ok(&mut self) {
        let s = self.r(reg::STATUS);
        self.w(reg::STATUS, s | status::DRIVER_OK);
    }
}

#[test]
fn identity_registers() {
    let mut rig = Rig::new();
    assert_eq!(rig.r(reg::MAGIC), 0x7472_6976);
    assert_eq!(rig.r(reg::VERSION), 2);
    assert_eq!(rig.r(reg::DEVICE_ID), 42);
    assert_eq!(rig.r(reg::VENDOR_ID), VENDOR_ID);
    assert_eq!(rig.r(reg::CONFIG_GENERATION), 0);
    assert_eq!(rig.r(reg::STATUS), 0);
    assert_eq!(rig.r(0x0f0), 0, "unknown registers read 0");
}

#[test]
fn device_features_are_read_through_the_select_register() {
    let mut rig = Rig::new();
    assert_eq!(rig.r(reg::DEVICE_FEATURES), 1);
    rig.w(reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(rig.r(reg::DEVICE_FEATURES), 1);
    rig.w(reg::DEVICE_FEATURES_SEL, 2);
    assert_eq!(rig.r(reg::DEVICE_FEATURES), 0);
}

#[test]
fn driver_features_are_only_taken_during_negotiation() {
    let mut rig = Rig::new();
    rig.w(reg::DRIVER_FEATURES, 1);
    assert_eq!(rig.t.state().acked_features, 0, "before DRIVER");
    rig.negotiate();
    assert_eq!(rig.t.state().acked_features, VERSION_1);
    rig.w(reg::DRIVER_FEATURES_SEL, 0);
    rig.w(reg::DRIVER_FEATURES, 1);
    assert_eq!(rig.t.state().acked_features, VERSION_1, "after FEATURES_OK");
}

#[test]
fn features_ok_needs_version_1_and_only_offered_bits() {
    for (low, high) in [(0, 0), (0, 3), (2, 1)] {
        let mut rig = Rig::new();
        rig.w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        rig.w(reg::DRIVER_FEATURES, low);
        rig.w(reg::DRIVER_FEATURES_SEL, 1);
        rig.w(reg::DRIVER_FEATURES, high);
        rig.w(reg::STATUS, 0b1011);
        assert_eq!(rig.r(reg::STATUS), 0b0011, "features {high:#x}:{low:#x}");
    }
    let mut rig = Rig::new();
    rig.w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    rig.w(reg::DRIVER_FEATURES, 1);
    rig.w(reg::DRIVER_FEATURES_SEL, 1);
    rig.w(reg::DRIVER_FEATURES, 1);
    rig.w(reg::STATUS, 0b1011);
    assert_eq!(rig.r(reg::STATUS), 0b1011);
    assert_eq!(rig.t.state().acked_features, OFFERED);
}

#[test]
fn status_bits_must_come_in_order_and_cannot_be_cleared() {
    let mut rig = Rig::new();
    rig.w(reg::STATUS, status::DRIVER);
    assert_eq!(rig.r(reg::STATUS), 0, "DRIVER without ACKNOWLEDGE");
    rig.w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    rig.w(reg::STATUS, status::ACKNOWLEDGE);
    assert_eq!(rig.r(reg::STATUS), 0b11, "bits cleared without reset");
    rig.w(reg::STATUS, 0b111);
    assert_eq!(rig.r(reg::STATUS), 0b11, "DRIVER_OK before FEATURES_OK");
    rig.w(reg::STATUS, 0b11 | status::DEVICE_NEEDS_RESET);
    assert_eq!(
        rig.r(reg::STATUS),
        0b11,
        "the driver cannot set NEEDS_RESET"
    );
    rig.w(reg::STATUS, 0b11 | status::FAILED);
    assert_eq!(rig.r(reg::STATUS), 0b11 | status::FAILED);
    assert!(rig.seen.lock().unwrap().activated.is_empty());
}

#[test]
fn queue_registers_configure_the_selected_queue_during_set_up_only() {
    let mut rig = Rig::new();
    rig.w(reg::QUEUE_SEL, 0);
    assert_eq!(rig.r(reg::QUEUE_NUM_MAX), 16);
    rig.w(reg::QUEUE_READY, 1);
    assert_eq!(rig.r(reg::QUEUE_READY), 0, "before FEATURES_OK");
    rig.negotiate();
    rig.w(reg::QUEUE_SEL, 1);
    assert_eq!(rig.r(reg::QUEUE_NUM_MAX), 8);
    rig.w(reg::QUEUE_SEL, 2);
    assert_eq!(rig.r(reg::QUEUE_NUM_MAX), 0, "no third queue");
    rig.w(reg::QUEUE_READY, 1);
    assert_eq!(rig.r(reg::QUEUE_READY), 0);
    rig.w(reg::QUEUE_SEL, 0);
    rig.w(reg::QUEUE_NUM, 12);
    rig.w(reg::QUEUE_NUM, 32);
    rig.w(reg::QUEUE_NUM, 0x1_0008);
    rig.w(reg::QUEUE_DESC_LOW, 0x1001);
    rig.queue(0, 8, 0x4000);
    rig.w(reg::QUEUE_DESC_HIGH, 0);
    assert_eq!(rig.r(reg::QUEUE_READY), 1);
    let q = rig.t.queues[0].state();
    assert_eq!((q.size, q.desc_table), (8, 0x4000));
    assert_eq!((q.avail_ring, q.used_ring), (0x5000, 0x6000));
    rig.w(reg::QUEUE_DEVICE_HIGH, 1);
    assert_eq!(rig.t.queues[0].state().used_ring, 0x1_0000_6000);
}

#[test]
fn driver_ok_activates_the_device_with_the_queues_and_features() {
    let mut rig = Rig::new();
    rig.negotiate();
    rig.queue(0, 16, 0x4000);
    rig.driver_ok();
    assert_eq!(rig.r(reg::STATUS), 0b1111);
    assert!(rig.t.state().activated);
    let seen = rig.seen.lock().unwrap();
    let (queues, acked) = &seen.activated[0];
    assert_eq!(*acked, VERSION_1);
    assert_eq!(queues.len(), 2);
    assert!(queues[0].ready && !queues[1].ready);
    assert_eq!(queues[0].desc_table, 0x4000);
    drop(seen);
    rig.w(reg::QUEUE_SEL, 0);
    rig.w(reg::QUEUE_NUM, 4);
    assert_eq!(
        rig.t.queues[0].state().size,
        16,
        "queues are fixed after DRIVER_OK"
    );
}

#[test]
fn a_ready_queue_outside_guest_memory_sets_needs_reset() {
    let mut rig = Rig::new();
    rig.negotiate();
    rig.queue(0, 16, 0xf_f000);
    rig.driver_ok();
    assert_eq!(rig.r(reg::STATUS) & status::DEVICE_NEEDS_RESET, 64);
    assert_eq!(rig.r(reg::INTERRUPT_STATUS), interrupt::CONFIG_CHANGE);
    assert!(!rig.t.state().activated);
    assert!(rig.seen.lock().unwrap().activated.is_empty());
}

#[test]
fn notifications_reach_an_active_device_and_failures_set_needs_reset() {
    let mut rig = Rig::new();
    rig.w(reg::QUEUE_NOTIFY, 0);
    rig.negotiate();
    rig.queue(0, 16, 0x4000);
    rig.w(reg::QUEUE_NOTIFY, 0);
    assert!(rig.seen.lock().unwrap().processed.is_empty(), "not active");
    rig.driver_ok();
    rig.w(reg::QUEUE_NOTIFY, 0);
    rig.t.process_queue_notification(1);
    assert_eq!(rig.seen.lock().unwrap().processed, vec![0, 1]);
    rig.seen.lock().unwrap().fail_next = true;
    rig.t.process_queue_notification(0);
    assert_eq!(rig.r(reg::STATUS), 0b1111 | status::DEVICE_NEEDS_RESET);
    assert_eq!(rig.r(reg::INTERRUPT_STATUS), interrupt::CONFIG_CHANGE);
    rig.t.process_queue_notification(0);
    assert_eq!(rig.seen.lock().unwrap().processed.len(), 3, "ignored now");
}

#[test]
fn interrupt_status_is_acknowledged_bit_by_bit() {
    let mut rig = Rig::new();
    use crate::devices::virtio::InterruptSignal;
    rig.t.interrupt.signal_used_queue();
    rig.t.interrupt.signal_config_change();
    assert_eq!(rig.r(reg::INTERRUPT_STATUS), 3);
    rig.w(reg::INTERRUPT_ACK, interrupt::USED_RING);
    assert_eq!(rig.r(reg::INTERRUPT_STATUS), 2);
}

#[test]
fn writing_zero_resets_device_queues_status_and_interrupts() {
    let mut rig = Rig::new();
    rig.negotiate();
    rig.queue(0, 8, 0x4000);
    rig.driver_ok();
    use crate::devices::virtio::InterruptSignal;
    rig.t.interrupt.signal_used_queue();
    rig.w(reg::STATUS, 0);
    assert_eq!(rig.r(reg::STATUS), 0);
    assert_eq!(rig.r(reg::INTERRUPT_STATUS), 0);
    assert_eq!(rig.t.state(), &TransportState::default());
    assert_eq!(rig.seen.lock().unwrap().resets, 1);
    let q = rig.t.queues[0].state();
    assert_eq!((q.ready, q.size, q.desc_table), (false, 16, 0));
    rig.negotiate();
    rig.queue(0, 16, 0x8000);
    rig.driver_ok();
    assert_eq!(rig.seen.lock().unwrap().activated.len(), 2);
}

#[test]
fn odd_widths_and_alignment_are_ignored_and_config_goes_to_the_device() {
    let mut rig = Rig::new();
    let mut two = [0xffu8; 2];
    rig.t.read(reg::MAGIC, &mut two);
    assert_eq!(two, [0, 0]);
    rig.t.write(reg::STATUS, &[1]);
    rig.t.write(reg::STATUS + 1, &1u32.to_le_bytes());
    assert_eq!(rig.r(reg::STATUS), 0);
    let mut cfg = [0u8; 3];
    rig.t.read(reg::CONFIG + 2, &mut cfg);
    assert_eq!(cfg, [0x12; 3]);
    rig.t.write(reg::CONFIG, &[9]);
    assert!(
        rig.seen.lock().unwrap().config_writes.is_empty(),
        "before DRIVER"
    );
    rig.w(reg::STATUS, 0b11);
    rig.t.write(reg::CONFIG + 4, &[9, 8]);
    assert_eq!(
        rig.seen.lock().unwrap().config_writes,
        vec![(4, vec![9, 8])]
    );
}

fn live_rig() -> Rig {
    let mut rig = Rig::new();
    rig.negotiate();
    rig.queue(0, 16, 0x1_0000);
    rig.queue(1, 8, 0x2_0000);
    rig.driver_ok();
    rig.t.process_queue_notification(1);
    rig.t.process_queue_notification(1);
    rig
}

fn restore_into(
    saved: &state::SavedTransport,
) -> (
    Result<MmioTransport, state::TransportRestoreError>,
    Arc<Mutex<Seen>>,
) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let irq = Arc::new(MmioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let t = MmioTransport::restore(Box::new(Fake(seen.clone())), mem, irq, saved);
    (t, seen)
}

#[test]
fn a_saved_live_device_comes_back_active_with_its_queues_where_they_were() {
    let rig = live_rig();
    let saved = rig.t.save();
    assert_eq!(
        saved.queues[1].next_avail, 2,
        "the device's live queue, not the set-up copy"
    );
    assert_eq!(saved.queues[0].size, 16);
    let (restored, seen) = restore_into(&saved);
    let mut restored = restored.unwrap();
    assert_eq!(restored.state(), rig.t.state());
    {
        let seen = seen.lock().unwrap();
        let (queues, acked) = seen.activated.last().unwrap();
        assert_eq!(*acked, VERSION_1);
        assert_eq!(queues[1].next_avail, 2);
        assert_eq!(queues[0].desc_table, 0x1_0000);
        assert_eq!(seen.restored, 1);
    }
    restored.kick_restored();
    assert_eq!(
        seen.lock().unwrap().processed,
        vec![0, 1],
        "every queue served once"
    );
}

#[test]
fn a_device_still_being_set_up_comes_back_inactive() {
    let mut rig = Rig::new();
    rig.negotiate();
    rig.queue(0, 16, 0x1_0000);
    let saved = rig.t.save();
    let (restored, seen) = restore_into(&saved);
    let mut restored = restored.unwrap();
    assert!(seen.lock().unwrap().activated.is_empty());
    restored.kick_restored();
    assert!(seen.lock().unwrap().processed.is_empty());
    let ok = saved.registers.status | status::DRIVER_OK;
    restored.write(reg::STATUS, &ok.to_le_bytes());
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.activated.len(),
        1,
        "the guest finishes set-up after the restore"
    );
    assert_eq!(seen.activated[0].0[0].size, 16);
}

#[test]
fn saved_state_of_another_device_or_with_unoffered_features_is_refused() {
    let saved = live_rig().t.save();
    let mut other = saved.clone();
    other.device_type = 7;
    assert!(matches!(
        restore_into(&other).0,
        Err(state::TransportRestoreError::DeviceType {
            saved: 7,
            device: 42
        })
    ));
    let mut fewer = saved.clone();
    fewer.queues.pop();
    assert!(matches!(
        restore_into(&fewer).0,
        Err(state::TransportRestoreError::QueueCount { .. })
    ));
    let mut bigger = saved.clone();
    bigger.queues[0].max_size = 1024;
    assert!(matches!(
        restore_into(&bigger).0,
        Err(state::TransportRestoreError::Queue(0))
    ));
    let mut features = saved.clone();
    features.registers.acked_features |= 1 << 40;
    assert!(matches!(
        restore_into(&features).0,
        Err(state::TransportRestoreError::Features { .. })
    ));
}
