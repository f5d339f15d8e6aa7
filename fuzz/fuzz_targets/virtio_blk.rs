//! Feeds virtio-blk's request parser (`block::request::parse`, with the DISCARD and
//! WRITE_ZEROES ranges it reads) and then the whole device (`Block::process_queue`, which also
//! does the I/O against a 64 KiB file in /dev/shm) with a queue a hostile driver built. Input:
//! a [`QueueSpec`], a flags byte (read-only disk, writeback cache), the acked feature bits 0-15,
//! the disk size in sectors the parser is checked against, then the guest's data bytes.
//!
//! Must hold: no panic; a request the parser accepts only touches guest memory and sectors
//! inside the disk (every buffer and the status byte in memory, data a whole number of sectors
//! inside the disk, every range inside it), and writes nothing to a read-only disk.
#![no_main]

use std::fs::File;
use std::sync::OnceLock;

use herd_fuzz::bytes::Reader;
use herd_fuzz::virtq::{QueueSpec, memory, no_irq};
use herd_vmm::devices::virtio::block::request::{self, Limits, Request, RequestType, SECTOR_SIZE};
use herd_vmm::devices::virtio::block::{Block, CacheMode, Disk, feature};
use herd_vmm::devices::virtio::{Queue, VIRTIO_F_VERSION_1, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueOwnedT;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};

/// Sectors of the file behind the device.
const DISK_SECTORS: u64 = 128;

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let spec = QueueSpec::decode(&mut r);
    let (flags, acked, sectors) = (r.u8(), r.u16(), r.u64());
    let read_only = flags & 1 != 0;
    let mem = memory(r.rest());
    let queue = spec.place(&mem, 0);
    let twin = Queue::try_from(queue.state()).expect("a queue's own state converts back");
    // A disk's size comes from a file's byte length, so its sector count times 512 fits a u64.
    let limits = Limits {
        sectors: sectors % (u64::MAX / SECTOR_SIZE),
        read_only,
        discard: acked & (1 << feature::DISCARD) != 0,
        write_zeroes: acked & (1 << feature::WRITE_ZEROES) != 0,
    };
    check_parser(&mem, twin, limits);
    let cache = if flags & 2 != 0 {
        CacheMode::Writeback
    } else {
        CacheMode::Unsafe
    };
    let mut blk = Block::new(Disk::new(
        disk_file(),
        DISK_SECTORS,
        read_only,
        cache,
        "fuzz",
    ));
    let features = (1 << VIRTIO_F_VERSION_1) | u64::from(acked);
    blk.activate(mem, vec![queue], features, no_irq())
        .expect("a block device with one queue activates");
    let _ = blk.process_queue(0);
});

/// Parses every chain the queue offers and checks what is accepted.
fn check_parser(mem: &GuestMemoryMmap, mut queue: Queue, limits: Limits) {
    let Ok(chains) = queue.iter(mem) else {
        return;
    };
    for chain in chains {
        if let Ok(req) = request::parse(mem, chain, limits) {
            check_request(mem, &req, limits);
        }
    }
}

fn check_request(mem: &GuestMemoryMmap, req: &Request, limits: Limits) {
    assert!(mem.check_range(req.status, 1));
    for &(addr, len) in &req.data {
        assert!(mem.check_range(addr, len as usize));
    }
    assert_eq!(
        req.len,
        req.data.iter().map(|&(_, n)| u64::from(n)).sum::<u64>()
    );
    let writes = matches!(
        req.kind,
        RequestType::Out | RequestType::Discard | RequestType::WriteZeroes
    );
    assert!(!(writes && limits.read_only));
    if matches!(req.kind, RequestType::In | RequestType::Out) {
        assert_eq!(req.len % SECTOR_SIZE, 0);
        let end = req.sector.checked_add(req.len / SECTOR_SIZE);
        assert!(end.is_some_and(|end| end <= limits.sectors));
    }
    for range in &req.ranges {
        let end = range.sector.checked_add(u64::from(range.sectors));
        assert!(end.is_some_and(|end| end <= limits.sectors));
    }
}

/// A dup of one 64 KiB file per process: on tmpfs when there is one, so flushes cost nothing.
fn disk_file() -> File {
    static FILE: OnceLock<File> = OnceLock::new();
    let file = FILE.get_or_init(|| {
        let file = tempfile::tempfile_in("/dev/shm")
            .or_else(|_| tempfile::tempfile())
            .expect("a temporary file for the disk");
        file.set_len(DISK_SECTORS * SECTOR_SIZE)
            .expect("sizing the disk file");
        file
    });
    file.try_clone()
        .expect("duplicating the disk file's descriptor")
}
