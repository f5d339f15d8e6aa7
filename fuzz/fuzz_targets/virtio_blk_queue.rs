//! Fuzzes virtio-blk's request parsing and I/O with a guest that controls guest memory (headers,
//! buffers, descriptor table, rings), the queue size and ring addresses, and which of feature
//! bits 8-15 the driver acks (FLUSH, DISCARD and WRITE_ZEROES among them, so DISCARD and
//! WRITE_ZEROES requests and their ranges are reached). The disk is a 64 KiB temporary file:
//! no panic, no access outside guest memory or beyond the file.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::Arc;

use common::{NoIrq, memory, queue};
use herd_vmm::devices::virtio::VirtioDevice;
use herd_vmm::devices::virtio::block::{Block, CacheMode, Disk};
use libfuzzer_sys::fuzz_target;

const DISK_SECTORS: u64 = 128;

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let (head, body) = data.split_at(6);
    let mem = memory(body);
    let Some(queue) = queue(head[0], head[1], head[2], head[3]) else {
        return;
    };
    let file = tempfile::tempfile().unwrap();
    file.set_len(DISK_SECTORS * 512).unwrap();
    let read_only = head[4] & 1 == 1;
    let cache = if head[4] & 2 == 2 {
        CacheMode::Writeback
    } else {
        CacheMode::Unsafe
    };
    let mut blk = Block::new(Disk::new(file, DISK_SECTORS, read_only, cache, "fuzz"));
    // VERSION_1 plus bits 8-15: FLUSH (9), DISCARD (13), WRITE_ZEROES (14) and unoffered ones.
    let features = (1u64 << 32) | u64::from(head[5]) << 8;
    if blk
        .activate(mem, vec![queue], features, Arc::new(NoIrq))
        .is_ok()
    {
        let _ = blk.process_queue(0);
    }
});
