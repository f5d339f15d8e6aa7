//! virtio-rng against virtio-queue's driver-side mock: good requests, the cap, and every
//! hostile chain we know of.

use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const MEM_SIZE: usize = 0x40_0000;

#[derive(Default)]
struct Irq {
    used: AtomicU32,
    config: AtomicU32,
}

impl InterruptSignal for Irq {
    fn signal_used_queue(&self) {
        self.used.fetch_add(1, Ordering::SeqCst);
    }
    fn signal_config_change(&self) {
        self.config.fetch_add(1, Ordering::SeqCst);
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// Activates an rng on `mock`'s queue; returns it with its interrupt counter.
fn active_rng(mem: &GuestMemoryMmap, mock: &MockSplitQueue<GuestMemoryMmap>) -> (Rng, Arc<Irq>) {
    let mut rng = Rng::new();
    let irq = Arc::new(Irq::default());
    let queue: Queue = mock.create_queue().unwrap();
    rng.activate(
        mem.clone(),
        vec![queue],
        1 << VIRTIO_F_VERSION_1,
        irq.clone(),
    )
    .unwrap();
    (rng, irq)
}

/// The (id, len) of used-ring entry `i`.
fn used(mem: &GuestMemoryMmap, mock: &MockSplitQueue<GuestMemoryMmap>, i: u64) -> (u32, u32) {
    let at = mock.used_addr().unchecked_add(4 + 8 * i);
    let id: u32 = mem.read_obj(at).unwrap();
    let len: u32 = mem.read_obj(at.unchecked_add(4)).unwrap();
    (id, len)
}

fn used_idx(mem: &GuestMemoryMmap, mock: &MockSplitQueue<GuestMemoryMmap>) -> u16 {
    mem.read_obj(mock.used_addr().unchecked_add(2)).unwrap()
}

fn distinct(bytes: &[u8]) -> usize {
    let mut seen = [false; 256];
    bytes.iter().for_each(|&b| seen[usize::from(b)] = true);
    seen.iter().filter(|&&s| s).count()
}

#[test]
fn writable_buffers_are_filled_and_the_guest_is_interrupted() {
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, 16);
    mock.add_desc_chains(
        &[
            desc(0x10_0000, 1000, WRITE | NEXT, 1),
            desc(0x20_0000, 3096, WRITE, 0),
        ],
        0,
    )
    .unwrap();
    let (mut rng, irq) = active_rng(&mem, &mock);
    rng.process_queue(0).unwrap();
    assert_eq!(used_idx(&mem, &mock), 1);
    assert_eq!(used(&mem, &mock, 0), (0, 4096));
    assert_eq!(irq.used.load(Ordering::SeqCst), 1);
    let mut a = vec![0u8; 1000];
    mem.read_slice(&mut a, GuestAddress(0x10_0000)).unwrap();
    assert!(distinct(&a) > 150);
    let mut b = vec![0u8; 3096];
    mem.read_slice(&mut b, GuestAddress(0x20_0000)).unwrap();
    assert!(distinct(&b) > 200);
}

#[test]
fn a_request_gets_at_most_the_cap() {
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, 16);
    let big = 2 * MAX_BYTES_PER_REQUEST as u32;
    mock.add_desc_chains(&[desc(0x10_0000, big, WRITE, 0)], 0)
        .unwrap();
    let (mut rng, _) = active_rng(&mem, &mock);
    rng.process_queue(0).unwrap();
    assert_eq!(used(&mem, &mock, 0).1, MAX_BYTES_PER_REQUEST as u32);
    let past: u64 = mem
        .read_obj(GuestAddress(0x10_0000 + MAX_BYTES_PER_REQUEST as u64))
        .unwrap();
    assert_eq!(past, 0, "nothing written past the cap");
}

/// Runs one hostile chain and checks it got 0 bytes, the VMM-side device stays usable, and
/// guest memory at `untouched` was not written.
fn assert_zero_bytes(descs: &[RawDescriptor], untouched: u64) {
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, 16);
    mock.add_desc_chains(descs, 0).unwrap();
    let (mut rng, irq) = active_rng(&mem, &mock);
    rng.process_queue(0).unwrap();
    assert_eq!(used_idx(&mem, &mock), 1);
    assert_eq!(used(&mem, &mock, 0), (0, 0));
    assert_eq!(irq.used.load(Ordering::SeqCst), 1);
    let v: u64 = mem.read_obj(GuestAddress(untouched)).unwrap();
    assert_eq!(v, 0, "hostile request wrote guest memory");
    // A good request afterwards still works.
    mock.add_desc_chains(&[desc(0x30_0000, 64, WRITE, 0)], 8)
        .unwrap();
    rng.process_queue(0).unwrap();
    assert_eq!(used(&mem, &mock, 1), (8, 64));
}

#[test]
fn a_read_only_descriptor_gets_zero_bytes() {
    assert_zero_bytes(
        &[
            desc(0x10_0000, 64, WRITE | NEXT, 1),
            desc(0x20_0000, 64, 0, 0),
        ],
        0x10_0000,
    );
}

#[test]
fn a_buffer_outside_guest_memory_gets_zero_bytes() {
    assert_zero_bytes(
        &[
            desc(0x10_0000, 64, WRITE | NEXT, 1),
            desc(0xd000_0000, 64, WRITE, 0),
        ],
        0x10_0000,
    );
    // Straddling the end of memory.
    let end = MEM_SIZE as u64 - 8;
    assert_zero_bytes(&[desc(end, 64, WRITE, 0)], end);
}

#[test]
fn a_descriptor_loop_gets_zero_bytes() {
    assert_zero_bytes(
        &[
            desc(0x10_0000, 64, WRITE | NEXT, 1),
            desc(0x20_0000, 64, WRITE | NEXT, 0),
        ],
        0x10_0000,
    );
}

#[test]
fn a_chain_longer_than_the_queue_or_with_a_bad_next_gets_zero_bytes() {
    let long: Vec<_> = (0..16u16)
        .map(|i| desc(0x10_0000 + 64 * u64::from(i), 64, WRITE | NEXT, i + 1))
        .collect();
    assert_zero_bytes(&long, 0x10_0000);
    assert_zero_bytes(&[desc(0x10_0000, 64, WRITE | NEXT, 500)], 0x10_0000);
}

#[test]
fn an_avail_index_past_the_queue_size_is_a_queue_fault() {
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, 16);
    let (mut rng, irq) = active_rng(&mem, &mock);
    mem.write_obj(100u16, mock.avail_addr().unchecked_add(2))
        .unwrap();
    let err = rng.process_queue(0).unwrap_err();
    assert!(matches!(err, VirtioError::Queue { index: 0, .. }), "{err}");
    assert_eq!(irq.used.load(Ordering::SeqCst), 0);
}

#[test]
fn notifications_before_activation_for_other_queues_or_after_reset_are_errors() {
    let mut rng = Rng::new();
    assert!(matches!(
        rng.process_queue(0),
        Err(VirtioError::NoSuchQueue(0))
    ));
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, 16);
    let (mut rng, _) = active_rng(&mem, &mock);
    assert!(rng.process_queue(1).is_err());
    rng.process_queue(0).unwrap();
    rng.reset();
    assert!(rng.process_queue(0).is_err());
}

#[test]
fn activation_wants_exactly_one_queue() {
    let mut rng = Rng::new();
    let irq: Arc<dyn InterruptSignal> = Arc::new(Irq::default());
    let err = rng.activate(memory(), vec![], 0, irq).unwrap_err();
    assert!(matches!(
        err,
        VirtioError::QueueCount {
            expected: 1,
            got: 0
        }
    ));
    assert_eq!(rng.device_type(), 4);
    assert_eq!(rng.queue_max_sizes(), &[RNG_QUEUE_SIZE]);
}
