//! Fuzzes virtio-blk's request parsing and I/O with a guest that controls guest memory (headers,
//! buffers, descriptor table, rings), the queue size and ring addresses. The disk is a 64 KiB
//! temporary file: no panic, no access outside guest memory or beyond the file.
#![no_main]

use std::sync::Arc;

use herd_vmm::devices::virtio::block::{Block, CacheMode, Disk};
use herd_vmm::devices::virtio::{InterruptSignal, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: usize = 64 * 1024;
const DISK_SECTORS: u64 = 128;

struct NoIrq;
impl InterruptSignal for NoIrq {
    fn signal_used_queue(&self) {}
    fn signal_config_change(&self) {}
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let (head, body) = data.split_at(6);
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    mem.write_slice(&body[..body.len().min(MEM)], GuestAddress(0))
        .unwrap();
    let Ok(mut queue) = Queue::new(256) else {
        return;
    };
    queue.set_size(1 << (head[0] % 9));
    let addr = |b: u8| Some(u32::from(b) * 0x100);
    queue.set_desc_table_address(addr(head[1]), Some(0));
    queue.set_avail_ring_address(addr(head[2]), Some(0));
    queue.set_used_ring_address(addr(head[3]), Some(0));
    queue.set_ready(true);
    let file = tempfile::tempfile().unwrap();
    file.set_len(DISK_SECTORS * 512).unwrap();
    let read_only = head[4] & 1 == 1;
    let cache = if head[4] & 2 == 2 {
        CacheMode::Writeback
    } else {
        CacheMode::Unsafe
    };
    let mut blk = Block::new(Disk::new(file, DISK_SECTORS, read_only, cache, "fuzz"));
    let features = (1u64 << 32) | u64::from(head[5]) << 8;
    if blk
        .activate(mem, vec![queue], features, Arc::new(NoIrq))
        .is_ok()
    {
        let _ = blk.process_queue(0);
    }
});
