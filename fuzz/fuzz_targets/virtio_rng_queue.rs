//! Fuzzes virtio-rng's request handling with a guest that controls everything: guest memory
//! (descriptor table, avail ring, buffers) comes from the fuzzer input, and so do the queue
//! size and ring addresses. The device must complete or reject every chain without panicking
//! and without touching memory outside the guest's.
#![no_main]

use std::sync::Arc;

use herd_vmm::devices::virtio::rng::Rng;
use herd_vmm::devices::virtio::{InterruptSignal, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: usize = 64 * 1024;

struct NoIrq;
impl InterruptSignal for NoIrq {
    fn signal_used_queue(&self) {}
    fn signal_config_change(&self) {}
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (head, body) = data.split_at(8);
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    mem.write_slice(&body[..body.len().min(MEM)], GuestAddress(0))
        .unwrap();
    let Ok(mut queue) = Queue::new(256) else {
        return;
    };
    queue.set_size(1 << (head[0] % 9));
    let addr = |b: u8| u64::from(b) * 0x100;
    queue.set_desc_table_address(Some(addr(head[1]) as u32), Some(0));
    queue.set_avail_ring_address(Some(addr(head[2]) as u32), Some(0));
    queue.set_used_ring_address(Some(addr(head[3]) as u32), Some(0));
    queue.set_ready(true);
    let mut rng = Rng::new();
    let features = 1u64 << 32;
    if rng
        .activate(mem, vec![queue], features, Arc::new(NoIrq))
        .is_ok()
    {
        let _ = rng.process_queue(0);
    }
});
