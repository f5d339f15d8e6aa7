//! virtio-blk against virtio-queue's driver-side mock and a temporary backing file: every
//! request type, and every hostile chain we know of, checking the status byte, the used
//! length, guest memory and the file.

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::request::{ID_LEN, kind};
use super::*;

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const MEM_SIZE: usize = 0x40_0000;
/// Sectors in the test disk.
const SECTORS: u64 = 256;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;

#[derive(Default)]
struct Irq {
    used: AtomicU32,
}

impl InterruptSignal for Irq {
    fn signal_used_queue(&self) {
        self.used.fetch_add(1, Ordering::SeqCst);
    }
    fn signal_config_change(&self) {}
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// A test rig: memory, a 16-entry mock queue, an active device and its backing file.
struct Rig {
    mem: GuestMemoryMmap,
    mock: MockSplitQueue<'static, GuestMemoryMmap>,
    blk: Block,
    irq: Arc<Irq>,
    file: tempfile::NamedTempFile,
}

fn rig_with(read_only: bool, cache: CacheMode, features: u64) -> Rig {
    let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
    ));
    let mock = MockSplitQueue::new(mem, 16);
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let content: Vec<u8> = (0..SECTORS * 512).map(|i| (i / 512) as u8).collect();
    file.write_all(&content).unwrap();
    let disk = Disk::open(file.path(), read_only, cache, "disk-under-test").unwrap();
    let mut blk = Block::new(disk);
    let irq = Arc::new(Irq::default());
    let queue: Queue = mock.create_queue().unwrap();
    blk.activate(mem.clone(), vec![queue], features, irq.clone())
        .unwrap();
    Rig {
        mem: mem.clone(),
        mock,
        blk,
        irq,
        file,
    }
}

fn rig() -> Rig {
    let f = (1 << VIRTIO_F_VERSION_1) | (1 << feature::FLUSH);
    rig_with(false, CacheMode::Writeback, f)
}

impl Rig {
    fn header(&self, type_: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&type_.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    /// Submits `descs` (from descriptor 0: earlier chains are done) as the next chain and
    /// processes the queue; returns (used len, status). At most 16 chains per rig.
    fn run(&mut self, descs: &[RawDescriptor]) -> (u32, u8) {
        let i = u64::from(self.mock.used().idx().load());
        self.mock.add_desc_chains(descs, 0).unwrap();
        self.blk.process_queue(0).unwrap();
        let at = self.mock.used_addr().unchecked_add(4 + 8 * i);
        let len: u32 = self.mem.read_obj(at.unchecked_add(4)).unwrap();
        let status: u8 = self.mem.read_obj(GuestAddress(STATUS)).unwrap();
        (len, status)
    }

    /// A request with the header, one data buffer of `len` bytes (`flags`), and the status.
    fn request(&mut self, type_: u32, sector: u64, len: u32, flags: u16) -> (u32, u8) {
        self.header(type_, sector);
        self.run(&[
            desc(HDR, 16, NEXT, 1),
            desc(DATA, len, flags | NEXT, 2),
            desc(STATUS, 1, WRITE, 0),
        ])
    }

    fn file_bytes(&self) -> Vec<u8> {
        std::fs::read(self.file.path()).unwrap()
    }

    fn guest(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

#[test]
fn read_copies_sectors_into_guest_memory() {
    let mut r = rig();
    assert_eq!(r.request(kind::IN, 3, 1024, WRITE), (1025, status::OK));
    let got = r.guest(DATA, 1024);
    assert!(got[..512].iter().all(|&b| b == 3) && got[512..].iter().all(|&b| b == 4));
    assert_eq!(r.irq.used.load(Ordering::SeqCst), 1);
}

#[test]
fn write_then_flush_lands_in_the_file() {
    let mut r = rig();
    r.mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(r.request(kind::OUT, 10, 512, 0), (1, status::OK));
    r.header(kind::FLUSH, 0);
    let (len, st) = r.run(&[desc(HDR, 16, NEXT, 1), desc(STATUS, 1, WRITE, 0)]);
    assert_eq!((len, st), (1, status::OK));
    let file = r.file_bytes();
    assert!(file[10 * 512..11 * 512].iter().all(|&b| b == 0xab));
    assert!(file[9 * 512..10 * 512].iter().all(|&b| b == 9));
    assert!(file[11 * 512..12 * 512].iter().all(|&b| b == 11));
}

#[test]
fn data_split_over_descriptors_and_larger_than_a_chunk_is_copied_in_order() {
    let mut r = rig();
    r.header(kind::IN, 0);
    let (len, st) = r.run(&[
        desc(HDR, 16, NEXT, 1),
        desc(DATA, 512, WRITE | NEXT, 2),
        desc(DATA + 0x1000, 32 * 1024 * 3, WRITE | NEXT, 3),
        desc(STATUS, 1, WRITE, 0),
    ]);
    assert_eq!((len, st), (512 + 96 * 1024 + 1, status::OK));
    assert_eq!(r.guest(DATA, 1), vec![0]);
    let second = r.guest(DATA + 0x1000, 96 * 1024);
    assert_eq!((second[0], second[96 * 1024 - 1]), (1, 192));
}

#[test]
fn get_id_returns_the_padded_id() {
    let mut r = rig();
    assert_eq!(r.request(kind::GET_ID, 0, 32, WRITE), (21, status::OK));
    let id = r.guest(DATA, ID_LEN);
    assert_eq!(&id[..15], b"disk-under-test");
    assert!(id[15..].iter().all(|&b| b == 0));
    // Ids longer than 20 bytes are cut.
    let disk = Disk::new(
        tempfile::tempfile().unwrap(),
        1,
        false,
        CacheMode::Unsafe,
        &"x".repeat(30),
    );
    assert_eq!(disk.sectors(), 1);
}

#[test]
fn unknown_types_get_unsupp() {
    let mut r = rig();
    for t in [2, 11, 13, 99, u32::MAX] {
        assert_eq!(r.request(t, 0, 512, WRITE), (1, status::UNSUPP), "type {t}");
    }
}

#[test]
fn out_of_range_and_overflowing_sectors_get_ioerr_and_touch_nothing() {
    let mut r = rig();
    let before = r.file_bytes();
    for (t, sector) in [
        (kind::IN, SECTORS),
        (kind::IN, SECTORS - 1 + 1),
        (kind::OUT, SECTORS - 1 + 1),
        (kind::IN, u64::MAX),
        (kind::OUT, u64::MAX / 512),
        (kind::OUT, u64::MAX - 1),
    ] {
        r.mem
            .write_slice(&[0x5a; 1024], GuestAddress(DATA))
            .unwrap();
        assert_eq!(
            r.request(t, sector, 1024, if t == kind::IN { WRITE } else { 0 }),
            (1, status::IOERR)
        );
        assert_eq!(
            r.guest(DATA, 1024),
            vec![0x5a; 1024],
            "guest memory written"
        );
    }
    // The last sector itself is fine; one more is not.
    assert_eq!(
        r.request(kind::IN, SECTORS - 1, 512, WRITE),
        (513, status::OK)
    );
    assert_eq!(
        r.request(kind::IN, SECTORS - 1, 1024, WRITE),
        (1, status::IOERR)
    );
    assert_eq!(r.file_bytes(), before);
}

#[test]
fn partial_sectors_too_many_segments_and_oversized_segments_get_ioerr() {
    let mut r = rig();
    assert_eq!(r.request(kind::IN, 0, 100, WRITE), (1, status::IOERR));
    let big = request::MAX_SEGMENT_BYTES + 512;
    assert_eq!(r.request(kind::IN, 0, big, WRITE), (1, status::IOERR));
    let too_many = rig_many_segments(request::MAX_SEGMENTS + 1);
    assert_eq!(too_many, (1, status::IOERR));
    assert_eq!(rig_many_segments(4), (4 * 512 + 1, status::OK));
}

/// A read over `n` one-sector segments on a queue big enough to hold them.
fn rig_many_segments(n: usize) -> (u32, u8) {
    let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
    ));
    let mock = MockSplitQueue::new(mem, 256);
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(SECTORS * 512).unwrap();
    let disk = Disk::open(file.path(), false, CacheMode::Unsafe, "d").unwrap();
    let mut blk = Block::new(disk);
    blk.activate(
        mem.clone(),
        vec![mock.create_queue().unwrap()],
        0,
        Arc::new(Irq::default()),
    )
    .unwrap();
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind::IN.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    let mut descs = vec![desc(HDR, 16, NEXT, 1)];
    for i in 0..n as u16 {
        descs.push(desc(DATA + 512 * u64::from(i), 512, WRITE | NEXT, i + 2));
    }
    descs.push(desc(STATUS, 1, WRITE, 0));
    mock.add_desc_chains(&descs, 0).unwrap();
    blk.process_queue(0).unwrap();
    let len: u32 = mem.read_obj(mock.used_addr().unchecked_add(8)).unwrap();
    (len, mem.read_obj(GuestAddress(STATUS)).unwrap())
}

#[test]
fn wrong_data_directions_get_ioerr() {
    let mut r = rig();
    let before = r.file_bytes();
    // A read whose buffer the device may not write, a write whose buffer is device-writable.
    assert_eq!(r.request(kind::IN, 0, 512, 0), (1, status::IOERR));
    assert_eq!(r.request(kind::OUT, 0, 512, WRITE), (1, status::IOERR));
    assert_eq!(r.request(kind::GET_ID, 0, 20, 0), (1, status::IOERR));
    assert_eq!(r.file_bytes(), before);
}

#[test]
fn a_bad_header_gets_ioerr() {
    let mut r = rig();
    r.header(kind::IN, 0);
    let cases = [
        [desc(HDR, 16, WRITE | NEXT, 1), desc(STATUS, 1, WRITE, 0)],
        [desc(HDR, 8, NEXT, 1), desc(STATUS, 1, WRITE, 0)],
        [desc(0xd000_0000, 16, NEXT, 1), desc(STATUS, 1, WRITE, 0)],
    ];
    for descs in cases {
        r.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        assert_eq!(r.run(&descs), (1, status::IOERR));
    }
}

#[test]
fn buffers_outside_guest_memory_get_ioerr() {
    let mut r = rig();
    let before = r.file_bytes();
    r.header(kind::OUT, 0);
    let end = MEM_SIZE as u64 - 256;
    for addr in [0xd000_0000, end] {
        let descs = [
            desc(HDR, 16, NEXT, 1),
            desc(addr, 512, NEXT, 2),
            desc(STATUS, 1, WRITE, 0),
        ];
        assert_eq!(r.run(&descs), (1, status::IOERR));
    }
    assert_eq!(r.file_bytes(), before);
}

#[test]
fn read_only_disks_offer_ro_and_refuse_writes() {
    let mut r = rig_with(true, CacheMode::Unsafe, 1 << VIRTIO_F_VERSION_1);
    assert_ne!(r.blk.features() & (1 << feature::RO), 0);
    assert_eq!(r.blk.features() & (1 << feature::FLUSH), 0);
    let before = r.file_bytes();
    assert_eq!(r.request(kind::OUT, 0, 512, 0), (1, status::IOERR));
    assert_eq!(r.file_bytes(), before);
    assert_eq!(r.request(kind::IN, 0, 512, WRITE), (513, status::OK));
}

/// Runs a chain that has no usable status and checks it is completed with 0 bytes, nothing
/// is written, and the device still serves a good request afterwards.
fn assert_dropped(descs: &[RawDescriptor]) {
    let mut r = rig();
    r.header(kind::IN, 0);
    r.mem.write_slice(&[0x77; 512], GuestAddress(DATA)).unwrap();
    let (len, st) = r.run(descs);
    assert_eq!((len, st), (0, 0xff));
    assert_eq!(r.guest(DATA, 512), vec![0x77; 512], "data written");
    assert_eq!(r.request(kind::IN, 1, 512, WRITE), (513, status::OK));
}

#[test]
fn chains_without_a_usable_status_are_dropped() {
    // Status device-readable, outside memory, missing, and a lone header.
    assert_dropped(&[
        desc(HDR, 16, NEXT, 1),
        desc(DATA, 512, WRITE | NEXT, 2),
        desc(STATUS, 1, 0, 0),
    ]);
    assert_dropped(&[
        desc(HDR, 16, NEXT, 1),
        desc(DATA, 512, WRITE | NEXT, 2),
        desc(0xd000_0000, 1, WRITE, 0),
    ]);
    assert_dropped(&[desc(HDR, 16, NEXT, 1), desc(STATUS, 0, WRITE, 0)]);
    assert_dropped(&[desc(HDR, 16, 0, 0)]);
}

#[test]
fn loops_long_chains_and_bad_indices_are_dropped() {
    assert_dropped(&[desc(HDR, 16, NEXT, 1), desc(DATA, 512, WRITE | NEXT, 0)]);
    let mut long = vec![desc(HDR, 16, NEXT, 1)];
    long.extend((1..16u16).map(|i| desc(DATA + 512 * u64::from(i), 512, WRITE | NEXT, i + 1)));
    assert_dropped(&long);
    assert_dropped(&[desc(HDR, 16, NEXT, 500)]);
}

#[test]
fn an_avail_index_past_the_queue_size_is_a_queue_fault() {
    let mut r = rig();
    r.mem
        .write_obj(100u16, r.mock.avail_addr().unchecked_add(2))
        .unwrap();
    let err = r.blk.process_queue(0).unwrap_err();
    assert!(matches!(err, VirtioError::Queue { index: 0, .. }), "{err}");
    assert_eq!(r.irq.used.load(Ordering::SeqCst), 0);
}

#[test]
fn config_space_features_and_activation() {
    let r = rig();
    let mut cap = [0u8; 8];
    r.blk.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), SECTORS);
    let mut word = [0u8; 4];
    r.blk.read_config(12, &mut word);
    assert_eq!(u32::from_le_bytes(word), request::MAX_SEGMENTS as u32);
    r.blk.read_config(20, &mut word);
    assert_eq!(u32::from_le_bytes(word), 512);
    r.blk.read_config(22, &mut word);
    assert_eq!(word, [0, 0, 0, 0]);
    r.blk.read_config(u64::MAX, &mut word);
    assert_eq!(word, [0; 4]);
    assert_eq!(r.blk.device_type(), 2);
    let f = r.blk.features();
    assert_ne!(f & (1 << feature::FLUSH), 0);
    assert_eq!(f & (1 << feature::RO), 0);
    let mut blk = Block::new(Disk::new(
        tempfile::tempfile().unwrap(),
        1,
        false,
        CacheMode::Unsafe,
        "d",
    ));
    assert!(blk.process_queue(0).is_err());
    let irq: Arc<dyn InterruptSignal> = Arc::new(Irq::default());
    let err = blk.activate(r.mem.clone(), vec![], 0, irq).unwrap_err();
    assert!(matches!(
        err,
        VirtioError::QueueCount {
            expected: 1,
            got: 0
        }
    ));
}

#[test]
fn writes_are_write_through_when_flush_is_not_acked() {
    let mut r = rig_with(false, CacheMode::Writeback, 1 << VIRTIO_F_VERSION_1);
    assert!(r.blk.active.as_ref().unwrap().write_through);
    assert_eq!(r.request(kind::OUT, 0, 512, 0), (1, status::OK));
    assert!(!rig().blk.active.as_ref().unwrap().write_through);
}

#[test]
fn opening_reports_missing_read_only_and_non_disk_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = Disk::open(&missing, true, CacheMode::Unsafe, "d").unwrap_err();
    assert!(matches!(err, DiskError::Open(..)), "{err}");
    let err = Disk::open(dir.path(), true, CacheMode::Unsafe, "d").unwrap_err();
    assert!(matches!(err, DiskError::NotADisk(..)), "{err}");
    // A partial last sector is not part of the disk.
    let f = dir.path().join("odd");
    std::fs::write(&f, vec![0u8; 1000]).unwrap();
    assert_eq!(
        Disk::open(&f, true, CacheMode::Unsafe, "d")
            .unwrap()
            .sectors(),
        1
    );
}

/// Features a driver that uses discard and write zeroes acks.
const RANGE_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << feature::FLUSH)
    | (1 << feature::DISCARD)
    | (1 << feature::WRITE_ZEROES);

/// One `virtio_blk_discard_write_zeroes` entry.
fn range(sector: u64, sectors: u32, flags: u32) -> [u8; 16] {
    let mut e = [0u8; 16];
    e[0..8].copy_from_slice(&sector.to_le_bytes());
    e[8..12].copy_from_slice(&sectors.to_le_bytes());
    e[12..16].copy_from_slice(&flags.to_le_bytes());
    e
}

/// A read-write rig whose driver acked discard and write zeroes, its file synced so that its
/// blocks are allocated.
fn rig_ranges() -> Rig {
    let r = rig_with(false, CacheMode::Writeback, RANGE_FEATURES);
    r.file.as_file().sync_all().unwrap();
    r
}

impl Rig {
    /// A DISCARD or WRITE_ZEROES request whose data is `entries`, in one descriptor.
    fn ranges(&mut self, type_: u32, entries: &[[u8; 16]]) -> (u32, u8) {
        let bytes = entries.concat();
        self.mem.write_slice(&bytes, GuestAddress(DATA)).unwrap();
        self.request(type_, 0, bytes.len() as u32, 0)
    }

    /// 512-byte blocks the backing file occupies.
    fn blocks(&self) -> u64 {
        std::os::unix::fs::MetadataExt::blocks(&self.file.as_file().metadata().unwrap())
    }

    /// Checks that sectors `[from, to)` read as zeroes and every other byte is as `before`.
    fn assert_zeroed(&self, before: &[u8], from: usize, to: usize) {
        let after = self.file_bytes();
        assert_eq!(after.len(), before.len(), "file size changed");
        assert!(after[from * 512..to * 512].iter().all(|&b| b == 0));
        assert_eq!(after[..from * 512], before[..from * 512]);
        assert_eq!(after[to * 512..], before[to * 512..]);
    }
}

#[test]
fn discard_punches_a_hole_and_leaves_the_rest() {
    let mut r = rig_ranges();
    let (before, blocks) = (r.file_bytes(), r.blocks());
    assert_eq!(r.ranges(kind::DISCARD, &[range(8, 32, 0)]), (1, status::OK));
    r.assert_zeroed(&before, 8, 40);
    assert!(r.blocks() + 32 <= blocks, "{} -> {}", blocks, r.blocks());
    // Also when every change is synced (the driver did not ack FLUSH).
    let mut r = rig_with(
        false,
        CacheMode::Writeback,
        RANGE_FEATURES ^ 1 << feature::FLUSH,
    );
    let before = r.file_bytes();
    assert_eq!(r.ranges(kind::DISCARD, &[range(16, 8, 0)]), (1, status::OK));
    r.assert_zeroed(&before, 16, 24);
}

#[test]
fn write_zeroes_zeroes_in_place_or_by_a_hole_when_unmap_is_allowed() {
    let mut r = rig_ranges();
    let before = r.file_bytes();
    assert_eq!(
        r.ranges(kind::WRITE_ZEROES, &[range(16, 8, 0)]),
        (1, status::OK)
    );
    r.assert_zeroed(&before, 16, 24);
    let (before, blocks) = (r.file_bytes(), r.blocks());
    let unmap = ranges::FLAG_UNMAP;
    assert_eq!(
        r.ranges(kind::WRITE_ZEROES, &[range(64, 16, unmap)]),
        (1, status::OK)
    );
    r.assert_zeroed(&before, 64, 80);
    assert!(r.blocks() + 16 <= blocks, "{} -> {}", blocks, r.blocks());
}

#[test]
fn several_ranges_split_across_descriptors_are_all_served() {
    let mut r = rig_ranges();
    let before = r.file_bytes();
    let bytes = [range(8, 8, 0), range(24, 8, 0), range(100, 1, 0)].concat();
    // 20 + 28 bytes: the second entry straddles the two descriptors.
    r.mem.write_slice(&bytes[..20], GuestAddress(DATA)).unwrap();
    r.mem
        .write_slice(&bytes[20..], GuestAddress(DATA + 0x1000))
        .unwrap();
    r.header(kind::DISCARD, 0);
    let descs = [
        desc(HDR, 16, NEXT, 1),
        desc(DATA, 20, NEXT, 2),
        desc(DATA + 0x1000, 28, NEXT, 3),
        desc(STATUS, 1, WRITE, 0),
    ];
    assert_eq!(r.run(&descs), (1, status::OK));
    let after = r.file_bytes();
    for (from, to) in [(8, 16), (24, 32), (100, 101)] {
        assert!(
            after[from * 512..to * 512].iter().all(|&b| b == 0),
            "{from}"
        );
    }
    assert_eq!(after[16 * 512..24 * 512], before[16 * 512..24 * 512]);
    assert_eq!(after[101 * 512..], before[101 * 512..]);
}

#[test]
fn without_fallocate_discard_does_nothing_and_write_zeroes_writes_zeroes() {
    let mut r = rig_ranges();
    let disk = Disk::open(r.file.path(), false, CacheMode::Writeback, "d").unwrap();
    r.blk = Block::new(disk.without_fallocate());
    let queue = r.mock.create_queue().unwrap();
    r.blk
        .activate(r.mem.clone(), vec![queue], RANGE_FEATURES, r.irq.clone())
        .unwrap();
    let before = r.file_bytes();
    assert_eq!(r.ranges(kind::DISCARD, &[range(8, 8, 0)]), (1, status::OK));
    assert_eq!(
        r.file_bytes(),
        before,
        "an unsupported discard changed data"
    );
    for (sector, flags) in [(32, 0), (48, ranges::FLAG_UNMAP)] {
        let before = r.file_bytes();
        let entry = range(sector, 8, flags);
        assert_eq!(r.ranges(kind::WRITE_ZEROES, &[entry]), (1, status::OK));
        r.assert_zeroed(&before, sector as usize, sector as usize + 8);
    }
}

#[test]
fn bad_ranges_are_refused_and_touch_nothing() {
    use ranges::{FLAG_UNMAP, MAX_DISCARD_RANGES, MAX_DISCARD_SECTORS, MAX_WRITE_ZEROES_SECTORS};
    let (discard, zeroes) = (kind::DISCARD, kind::WRITE_ZEROES);
    let (ioerr, unsupp) = (status::IOERR, status::UNSUPP);
    let too_many = vec![range(8, 1, 0); MAX_DISCARD_RANGES as usize + 1];
    let cases: [(u32, Vec<[u8; 16]>, u8); 12] = [
        (discard, vec![range(SECTORS, 1, 0)], ioerr),
        (discard, vec![range(SECTORS - 4, 8, 0)], ioerr),
        (discard, vec![range(u64::MAX - 1, 8, 0)], ioerr),
        (zeroes, vec![range(u64::MAX - 2, 8, 0)], ioerr),
        (discard, vec![range(0, MAX_DISCARD_SECTORS + 1, 0)], ioerr),
        (
            zeroes,
            vec![range(0, MAX_WRITE_ZEROES_SECTORS + 1, 0)],
            ioerr,
        ),
        (discard, too_many, ioerr),
        (zeroes, vec![range(8, 1, 0); 2], ioerr),
        (discard, vec![range(8, 8, FLAG_UNMAP)], unsupp),
        (discard, vec![range(8, 8, 2)], unsupp),
        (zeroes, vec![range(8, 8, 1 << 31 | FLAG_UNMAP)], unsupp),
        // A good range before a bad one is not served either.
        (discard, vec![range(8, 8, 0), range(SECTORS, 8, 0)], ioerr),
    ];
    let mut r = rig_ranges();
    let before = r.file_bytes();
    for (i, (t, entries, want)) in cases.iter().enumerate() {
        assert_eq!(r.ranges(*t, entries), (1, *want), "case {i}");
        assert_eq!(r.file_bytes(), before, "case {i} changed the file");
    }
    // Data that is not whole entries, no data at all, and device-writable data.
    r.mem
        .write_slice(&range(8, 8, 0), GuestAddress(DATA))
        .unwrap();
    assert_eq!(r.request(discard, 0, 24, 0), (1, ioerr));
    r.header(zeroes, 0);
    let no_data = [desc(HDR, 16, NEXT, 1), desc(STATUS, 1, WRITE, 0)];
    assert_eq!(r.run(&no_data), (1, ioerr));
    assert_eq!(r.request(discard, 0, 16, WRITE), (1, ioerr));
    assert_eq!(r.file_bytes(), before);
}

/// Reads the little-endian word at `offset` of the device's configuration space.
fn config_word(blk: &Block, offset: usize) -> u32 {
    let mut word = [0u8; 4];
    blk.read_config(offset as u64, &mut word);
    u32::from_le_bytes(word)
}

#[test]
fn discard_and_write_zeroes_are_offered_with_limits_on_writable_disks_only() {
    let r = rig_ranges();
    let both = (1 << feature::DISCARD) | (1 << feature::WRITE_ZEROES);
    assert_eq!(r.blk.features() & both, both);
    let want = [
        (config::MAX_DISCARD_SECTORS, ranges::MAX_DISCARD_SECTORS),
        (config::MAX_DISCARD_SEG, ranges::MAX_DISCARD_RANGES),
        (config::DISCARD_SECTOR_ALIGNMENT, 8),
        (config::MAX_WRITE_ZEROES_SECTORS, 1 << 16),
        (config::MAX_WRITE_ZEROES_SEG, 1),
        (config::WRITE_ZEROES_MAY_UNMAP, 1),
    ];
    for (offset, value) in want {
        assert_eq!(config_word(&r.blk, offset), value, "offset {offset}");
    }
    // Read-only: not offered, no limits, refused even if a hostile driver acks them anyway.
    let mut r = rig_with(true, CacheMode::Unsafe, RANGE_FEATURES);
    assert_eq!(r.blk.features() & both, 0);
    for (offset, _) in want {
        assert_eq!(config_word(&r.blk, offset), 0, "offset {offset}");
    }
    let before = r.file_bytes();
    assert_eq!(
        r.ranges(kind::DISCARD, &[range(8, 8, 0)]),
        (1, status::UNSUPP)
    );
    assert_eq!(r.file_bytes(), before);
    // Read-write but not acked by the driver.
    let mut r = rig();
    for t in [kind::DISCARD, kind::WRITE_ZEROES] {
        assert_eq!(r.ranges(t, &[range(8, 8, 0)]), (1, status::UNSUPP));
    }
    assert_eq!(r.file_bytes(), before);
}
