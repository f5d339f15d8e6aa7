//! virtio-net against virtio-queue's driver-side mock and a fake backend: frames both ways,
//! header rewriting, a guest without buffers, oversized frames and every hostile chain, offload
//! negotiation (what is offered, what the backend is set to) and 64 KiB segmentation jobs.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::offload::*;
use super::*;
use crate::sys::tap::{TUN_F_ALL, TUN_F_CSUM, TUN_F_TSO4};

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const MEM_SIZE: usize = 0x40_0000;

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

/// Frames waiting to be received, and frames sent.
#[derive(Default)]
struct Wire {
    inbound: VecDeque<Vec<u8>>,
    sent: Vec<Vec<u8>>,
    reads: u32,
    /// The offloads the fake claims to support, and every `set_offloads` call.
    supported: u32,
    offload_sets: Vec<u32>,
}

struct FakeBackend(Arc<Mutex<Wire>>);

impl Backend for FakeBackend {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut w = self.0.lock().unwrap();
        w.reads += 1;
        let f = w.inbound.pop_front().ok_or(io::ErrorKind::WouldBlock)?;
        buf[..f.len()].copy_from_slice(&f);
        Ok(f.len())
    }
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.0.lock().unwrap().sent.push(frame.to_vec());
        Ok(())
    }
    fn ready_fd(&self) -> Option<RawFd> {
        None
    }
    fn offloads(&self) -> u32 {
        self.0.lock().unwrap().supported
    }
    fn set_offloads(&mut self, flags: u32) -> io::Result<()> {
        self.0.lock().unwrap().offload_sets.push(flags);
        Ok(())
    }
}

struct Rig {
    mem: GuestMemoryMmap,
    rxq: MockSplitQueue<'static, GuestMemoryMmap>,
    txq: MockSplitQueue<'static, GuestMemoryMmap>,
    net: Net,
    wire: Arc<Mutex<Wire>>,
    irq: Arc<Irq>,
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// A live device with both queues (16 entries each) in fresh memory, no offloads.
fn rig() -> Rig {
    rig_with(16, 0, 0)
}

/// A live device with `size`-entry queues over a backend supporting the `supported` offloads,
/// activated with `VERSION_1` and the `acked` features.
fn rig_with(size: u16, supported: u32, acked: u64) -> Rig {
    let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
    ));
    let rxq = MockSplitQueue::create(mem, GuestAddress(0), size);
    let txq = MockSplitQueue::create(mem, GuestAddress(0x1_0000), size);
    let wire = Arc::new(Mutex::new(Wire {
        supported,
        ..Wire::default()
    }));
    let settings = NetSettings {
        mac: Some([2, 0, 0, 0, 0, 1]),
        mtu: None,
    };
    let mut net = Net::new(Box::new(FakeBackend(wire.clone())), settings);
    let irq = Arc::new(Irq::default());
    let queues = vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()];
    let acked = acked | 1 << VIRTIO_F_VERSION_1;
    net.activate(mem.clone(), queues, acked, irq.clone())
        .unwrap();
    Rig {
        mem: mem.clone(),
        rxq,
        txq,
        net,
        wire,
        irq,
    }
}

fn used(mem: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>, i: u64) -> (u32, u32) {
    let at = q.used_addr().unchecked_add(4 + 8 * i);
    (
        mem.read_obj(at).unwrap(),
        mem.read_obj(at.unchecked_add(4)).unwrap(),
    )
}

fn used_idx(mem: &GuestMemoryMmap, q: &MockSplitQueue<GuestMemoryMmap>) -> u16 {
    mem.read_obj(q.used_addr().unchecked_add(2)).unwrap()
}

/// A frame as it comes from the TAP: a header with `DATA_VALID` and junk in the fields that
/// mean nothing without offloads, then `len` payload bytes.
fn inbound(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0xee; VNET_HDR_LEN];
    f[..2].copy_from_slice(&[HDR_F_DATA_VALID, GSO_NONE]);
    f.extend((0..len).map(|i| seed.wrapping_add(i as u8)));
    f
}

#[test]
fn a_transmit_chain_is_sent_whole_with_a_cleared_header() {
    let mut r = rig();
    let mut hdr = [0u8; VNET_HDR_LEN];
    hdr[0] = 1; // NEEDS_CSUM, which was not negotiated
    r.mem.write_slice(&hdr, GuestAddress(0x10_0000)).unwrap();
    let payload: Vec<u8> = (0..60).collect();
    r.mem
        .write_slice(&payload, GuestAddress(0x20_0000))
        .unwrap();
    r.txq
        .add_desc_chains(
            &[desc(0x10_0000, 12, NEXT, 1), desc(0x20_0000, 60, 0, 0)],
            0,
        )
        .unwrap();
    r.net.process_queue(1).unwrap();
    let w = r.wire.lock().unwrap();
    assert_eq!(w.sent.len(), 1);
    assert_eq!(&w.sent[0][..12], &[0; 12]);
    assert_eq!(&w.sent[0][12..], &payload[..]);
    assert_eq!(used(&r.mem, &r.txq, 0), (0, 0));
    assert_eq!(r.irq.used.load(Ordering::SeqCst), 1);
    assert_eq!(r.net.stats().tx_frames, 1);
}

/// Runs one hostile transmit chain: dropped, nothing sent, chain completed, device usable.
fn assert_tx_dropped(descs: &[RawDescriptor]) {
    let mut r = rig();
    r.txq.add_desc_chains(descs, 0).unwrap();
    r.net.process_queue(1).unwrap();
    assert!(r.wire.lock().unwrap().sent.is_empty());
    assert_eq!(used_idx(&r.mem, &r.txq), 1);
    assert_eq!(r.net.stats().tx_dropped, 1);
    r.txq
        .add_desc_chains(&[desc(0x30_0000, 64, 0, 0)], 8)
        .unwrap();
    r.net.process_queue(1).unwrap();
    assert_eq!(r.wire.lock().unwrap().sent.len(), 1, "good frame after");
}

#[test]
fn hostile_transmit_chains_are_dropped_and_the_device_goes_on() {
    // Wrong direction: a device-writable buffer in a transmit chain.
    assert_tx_dropped(&[desc(0x10_0000, 64, NEXT, 1), desc(0x20_0000, 64, WRITE, 0)]);
    // Outside guest memory, and straddling its end.
    assert_tx_dropped(&[desc(0x10_0000, 64, NEXT, 1), desc(0xd000_0000, 64, 0, 0)]);
    assert_tx_dropped(&[desc(MEM_SIZE as u64 - 8, 64, 0, 0)]);
    // A loop, a chain longer than the queue, a bad next index.
    assert_tx_dropped(&[desc(0x10_0000, 64, NEXT, 1), desc(0x20_0000, 64, NEXT, 0)]);
    let long: Vec<_> = (0..16u16)
        .map(|i| desc(0x10_0000 + 64 * u64::from(i), 64, NEXT, i + 1))
        .collect();
    assert_tx_dropped(&long);
    assert_tx_dropped(&[desc(0x10_0000, 64, NEXT, 500)]);
    // Oversized, in one buffer or several; shorter than a header.
    assert_tx_dropped(&[desc(0x10_0000, MAX_FRAME_LEN as u32 + 1, 0, 0)]);
    assert_tx_dropped(&[
        desc(0x10_0000, 40_000, NEXT, 1),
        desc(0x20_0000, 40_000, 0, 0),
    ]);
    assert_tx_dropped(&[desc(0x10_0000, 11, 0, 0)]);
}

#[test]
fn a_received_frame_fills_the_buffers_with_a_clean_header() {
    let mut r = rig();
    r.wire.lock().unwrap().inbound.push_back(inbound(100, 7));
    r.rxq
        .add_desc_chains(
            &[
                desc(0x10_0000, 50, WRITE | NEXT, 1),
                desc(0x20_0000, 1526, WRITE, 0),
            ],
            0,
        )
        .unwrap();
    r.net.process_queue(0).unwrap();
    assert_eq!(used(&r.mem, &r.rxq, 0), (0, 112));
    let mut got = vec![0u8; 112];
    r.mem
        .read_slice(&mut got[..50], GuestAddress(0x10_0000))
        .unwrap();
    r.mem
        .read_slice(&mut got[50..], GuestAddress(0x20_0000))
        .unwrap();
    let mut want = inbound(100, 7);
    want[..12].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    assert_eq!(got, want);
    assert_eq!(r.irq.used.load(Ordering::SeqCst), 1);
    assert_eq!(r.net.stats().rx_frames, 1);
}

#[test]
fn without_guest_buffers_frames_wait_in_the_backend() {
    let mut r = rig();
    r.wire.lock().unwrap().inbound.push_back(inbound(60, 1));
    r.net.process_backend(0).unwrap();
    assert_eq!(
        r.wire.lock().unwrap().reads,
        0,
        "nothing read without buffers"
    );
    assert_eq!(used_idx(&r.mem, &r.rxq), 0);
    r.rxq
        .add_desc_chains(&[desc(0x10_0000, 1526, WRITE, 0)], 0)
        .unwrap();
    r.net.process_queue(0).unwrap();
    assert_eq!(used(&r.mem, &r.rxq, 0), (0, 72));
    // Nothing left: the next buffer waits, and the backend said WouldBlock once.
    r.rxq
        .add_desc_chains(&[desc(0x20_0000, 1526, WRITE, 0)], 1)
        .unwrap();
    r.net.process_queue(0).unwrap();
    assert_eq!(used_idx(&r.mem, &r.rxq), 1);
    r.wire.lock().unwrap().inbound.push_back(inbound(60, 2));
    r.net.process_backend(0).unwrap();
    assert_eq!(used(&r.mem, &r.rxq, 1), (1, 72));
}

#[test]
fn a_frame_too_large_for_the_buffers_is_dropped_and_the_buffers_reused() {
    let mut r = rig();
    {
        let mut w = r.wire.lock().unwrap();
        w.inbound.push_back(inbound(2000, 1));
        w.inbound.push_back(inbound(60, 2));
    }
    r.rxq
        .add_desc_chains(&[desc(0x10_0000, 1526, WRITE, 0)], 0)
        .unwrap();
    r.net.process_queue(0).unwrap();
    assert_eq!(used_idx(&r.mem, &r.rxq), 1);
    assert_eq!(used(&r.mem, &r.rxq, 0), (0, 72));
    let s = r.net.stats();
    assert_eq!((s.rx_dropped, s.rx_frames), (1, 1));
}

#[test]
fn hostile_receive_chains_get_zero_bytes_and_the_frame_waits() {
    let cases: Vec<Vec<RawDescriptor>> = vec![
        vec![desc(0x10_0000, 1526, 0, 0)],
        vec![desc(0xd000_0000, 1526, WRITE, 0)],
        vec![
            desc(0x10_0000, 64, WRITE | NEXT, 1),
            desc(0x20_0000, 64, WRITE | NEXT, 0),
        ],
    ];
    for hostile in cases {
        let mut r = rig();
        r.wire.lock().unwrap().inbound.push_back(inbound(60, 3));
        r.rxq.add_desc_chains(&hostile, 0).unwrap();
        r.net.process_queue(0).unwrap();
        assert_eq!(used(&r.mem, &r.rxq, 0), (0, 0));
        let v: u64 = r.mem.read_obj(GuestAddress(0x10_0000)).unwrap();
        assert_eq!(v, 0, "hostile chain written");
        r.rxq
            .add_desc_chains(&[desc(0x30_0000, 1526, WRITE, 0)], 8)
            .unwrap();
        r.net.process_queue(0).unwrap();
        assert_eq!(used(&r.mem, &r.rxq, 1), (8, 72));
        assert_eq!(r.net.stats().rx_bad_chains, 1);
    }
}

#[test]
fn an_avail_index_past_the_queue_size_is_a_queue_fault() {
    let mut r = rig();
    r.mem
        .write_obj(100u16, r.txq.avail_addr().unchecked_add(2))
        .unwrap();
    let err = r.net.process_queue(1).unwrap_err();
    assert!(matches!(err, VirtioError::Queue { index: 1, .. }), "{err}");
    assert!(r.net.process_queue(2).is_err());
}

#[test]
fn config_space_holds_mac_and_mtu_with_their_features() {
    let wire = Arc::new(Mutex::new(Wire::default()));
    let plain = Net::new(Box::new(FakeBackend(wire.clone())), NetSettings::default());
    assert_eq!(plain.features(), 1 << VIRTIO_F_VERSION_1);
    let settings = NetSettings {
        mac: Some([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]),
        mtu: Some(1400),
    };
    let net = Net::new(Box::new(FakeBackend(wire)), settings);
    assert_eq!(net.features(), (1 << 32) | (1 << 5) | (1 << 3));
    let mut c = [0u8; 12];
    net.read_config(0, &mut c);
    assert_eq!(&c[..6], &[0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]);
    assert_eq!(u16::from_le_bytes([c[10], c[11]]), 1400);
    let mut tail = [9u8; 4];
    net.read_config(4, &mut tail);
    assert_eq!(tail, [0xee, 0xff, 0, 0]);
    net.read_config(u64::MAX, &mut tail);
    assert_eq!(tail, [0; 4]);
    assert_eq!(net.device_type(), 1);
    assert_eq!(net.queue_max_sizes(), &[NET_QUEUE_SIZE, NET_QUEUE_SIZE]);
}

#[test]
fn activation_wants_two_queues_and_reset_deactivates() {
    let wire = Arc::new(Mutex::new(Wire::default()));
    let mut net = Net::new(Box::new(FakeBackend(wire)), NetSettings::default());
    let irq: Arc<dyn InterruptSignal> = Arc::new(Irq::default());
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let err = net.activate(mem, vec![], 0, irq).unwrap_err();
    assert!(matches!(
        err,
        VirtioError::QueueCount {
            expected: 2,
            got: 0
        }
    ));
    let mut r = rig();
    r.net.reset();
    assert!(r.net.process_queue(0).is_err());
    r.net.process_backend(0).unwrap();
}

const fn feature(bit: u32) -> u64 {
    1 << bit
}

#[test]
fn offload_features_are_offered_only_as_far_as_the_backend_supports_them() {
    let features = |supported| {
        let wire = Arc::new(Mutex::new(Wire {
            supported,
            ..Wire::default()
        }));
        Net::new(Box::new(FakeBackend(wire)), NetSettings::default()).features()
    };
    let v1 = feature(VIRTIO_F_VERSION_1);
    assert_eq!(features(0), v1);
    let csum = feature(VIRTIO_NET_F_CSUM) | feature(VIRTIO_NET_F_GUEST_CSUM);
    assert_eq!(features(TUN_F_CSUM), v1 | csum);
    let all = [
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_ECN,
        VIRTIO_NET_F_GUEST_UFO,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_HOST_ECN,
        VIRTIO_NET_F_HOST_UFO,
    ];
    assert_eq!(
        features(TUN_F_ALL),
        all.iter().fold(v1, |f, &b| f | feature(b))
    );
}

#[test]
fn activation_sets_the_backend_offloads_from_the_acked_guest_features_and_reset_clears_them() {
    let acked = feature(VIRTIO_NET_F_GUEST_CSUM)
        | feature(VIRTIO_NET_F_GUEST_TSO4)
        | feature(VIRTIO_NET_F_CSUM)
        | feature(VIRTIO_NET_F_HOST_TSO6);
    let mut r = rig_with(16, TUN_F_ALL, acked);
    assert_eq!(
        r.wire.lock().unwrap().offload_sets,
        [TUN_F_CSUM | TUN_F_TSO4]
    );
    r.net.reset();
    r.net.reset();
    assert_eq!(
        r.wire.lock().unwrap().offload_sets,
        [TUN_F_CSUM | TUN_F_TSO4, 0]
    );
    // Only host-side offloads acked: the backend's receive offloads stay off, untouched.
    let r = rig_with(16, TUN_F_ALL, feature(VIRTIO_NET_F_CSUM));
    assert!(r.wire.lock().unwrap().offload_sets.is_empty());
}

/// A 64 KiB TCP/IPv4 segmentation job as the TAP hands it over: the largest frame there is.
fn segmentation_job() -> Vec<u8> {
    let mut f = inbound(MAX_FRAME_LEN - VNET_HDR_LEN, 5);
    f[..VNET_HDR_LEN].copy_from_slice(&[NEEDS_CSUM, GSO_TCPV4, 66, 0, 0xa8, 5, 34, 0, 16, 0, 0, 0]);
    f
}

const NEEDS_CSUM: u8 = HDR_F_NEEDS_CSUM;

/// Posts a Linux-style "big packet" chain: a header buffer, then 17 pages (69644 bytes).
fn post_big_packet_chain(r: &Rig, first: u16) {
    let mut chain = vec![desc(
        0x10_0000,
        VNET_HDR_LEN as u32,
        WRITE | NEXT,
        first + 1,
    )];
    for i in 0..17u16 {
        let flags = if i < 16 { WRITE | NEXT } else { WRITE };
        let addr = 0x20_0000 + 0x1000 * u64::from(i);
        chain.push(desc(addr, 0x1000, flags, first + i + 2));
    }
    r.rxq.add_desc_chains(&chain, first).unwrap();
}

#[test]
fn a_64k_segmentation_job_fills_a_big_packet_chain_with_its_header() {
    let acked = feature(VIRTIO_NET_F_GUEST_CSUM) | feature(VIRTIO_NET_F_GUEST_TSO4);
    let mut r = rig_with(32, TUN_F_ALL, acked);
    let job = segmentation_job();
    r.wire.lock().unwrap().inbound.push_back(job.clone());
    post_big_packet_chain(&r, 0);
    r.net.process_queue(0).unwrap();
    assert_eq!(used(&r.mem, &r.rxq, 0), (0, MAX_FRAME_LEN as u32));
    let mut got = vec![0u8; MAX_FRAME_LEN];
    r.mem
        .read_slice(&mut got[..VNET_HDR_LEN], GuestAddress(0x10_0000))
        .unwrap();
    r.mem
        .read_slice(&mut got[VNET_HDR_LEN..], GuestAddress(0x20_0000))
        .unwrap();
    let mut want = job;
    want[10] = 1; // num_buffers
    assert!(got == want, "the frame arrived changed");
    assert_eq!(r.net.stats().rx_frames, 1);
}

#[test]
fn a_segmentation_job_the_guest_did_not_negotiate_is_dropped() {
    let mut r = rig_with(32, TUN_F_ALL, feature(VIRTIO_NET_F_GUEST_CSUM));
    {
        let mut w = r.wire.lock().unwrap();
        w.inbound.push_back(segmentation_job());
        w.inbound.push_back(inbound(60, 2));
    }
    post_big_packet_chain(&r, 0);
    r.net.process_queue(0).unwrap();
    assert_eq!(used(&r.mem, &r.rxq, 0), (0, 72));
    let s = r.net.stats();
    assert_eq!((s.rx_dropped, s.rx_frames), (1, 1));
}

/// Puts a transmit chain of `len` bytes (header first, with `hdr`) in two descriptors.
fn transmit_chain(r: &Rig, hdr: [u8; VNET_HDR_LEN], len: u32) {
    r.mem.write_slice(&hdr, GuestAddress(0x10_0000)).unwrap();
    let first = 40_000;
    r.txq
        .add_desc_chains(
            &[
                desc(0x10_0000, first, NEXT, 1),
                desc(0x20_0000, len - first, 0, 0),
            ],
            0,
        )
        .unwrap();
}

#[test]
fn a_transmitted_64k_segmentation_job_keeps_its_header_when_negotiated() {
    let hdr = [NEEDS_CSUM, GSO_TCPV4, 66, 0, 0xa8, 5, 34, 0, 16, 0, 0, 0];
    let acked = feature(VIRTIO_NET_F_CSUM) | feature(VIRTIO_NET_F_HOST_TSO4);
    let mut r = rig_with(16, TUN_F_ALL, acked);
    transmit_chain(&r, hdr, MAX_FRAME_LEN as u32);
    r.net.process_queue(1).unwrap();
    {
        let w = r.wire.lock().unwrap();
        assert_eq!(w.sent.len(), 1);
        assert_eq!(w.sent[0].len(), MAX_FRAME_LEN);
        assert_eq!(w.sent[0][..VNET_HDR_LEN], hdr);
    }
    // One byte more is over the limit, negotiated or not.
    let mut r = rig_with(16, TUN_F_ALL, acked);
    transmit_chain(&r, hdr, MAX_FRAME_LEN as u32 + 1);
    r.net.process_queue(1).unwrap();
    assert!(r.wire.lock().unwrap().sent.is_empty());
    assert_eq!(r.net.stats().tx_dropped, 1);
}

#[test]
fn a_transmitted_segmentation_job_without_host_tso_is_dropped() {
    let hdr = [NEEDS_CSUM, GSO_TCPV4, 66, 0, 0xa8, 5, 34, 0, 16, 0, 0, 0];
    let mut r = rig_with(16, TUN_F_ALL, feature(VIRTIO_NET_F_CSUM));
    transmit_chain(&r, hdr, 50_000);
    r.net.process_queue(1).unwrap();
    assert!(r.wire.lock().unwrap().sent.is_empty());
    assert_eq!(used_idx(&r.mem, &r.txq), 1);
    assert_eq!(r.net.stats().tx_dropped, 1);
}

#[test]
fn with_csum_a_checksum_request_reaches_the_backend() {
    let hdr = [NEEDS_CSUM, GSO_NONE, 0, 0, 0, 0, 34, 0, 6, 0, 0, 0];
    let mut r = rig_with(16, TUN_F_ALL, feature(VIRTIO_NET_F_CSUM));
    transmit_chain(&r, hdr, 41_000);
    r.net.process_queue(1).unwrap();
    assert_eq!(r.wire.lock().unwrap().sent[0][..VNET_HDR_LEN], hdr);
}

#[test]
fn with_guest_csum_received_checksum_flags_reach_the_guest() {
    let mut r = rig_with(16, TUN_F_ALL, feature(VIRTIO_NET_F_GUEST_CSUM));
    let mut frame = inbound(100, 9);
    frame[..VNET_HDR_LEN].copy_from_slice(&[NEEDS_CSUM, 0, 0, 0, 0, 0, 34, 0, 6, 0, 0, 0]);
    r.wire.lock().unwrap().inbound.push_back(frame);
    r.rxq
        .add_desc_chains(&[desc(0x10_0000, 1526, WRITE, 0)], 0)
        .unwrap();
    r.net.process_queue(0).unwrap();
    let mut hdr = [0u8; VNET_HDR_LEN];
    r.mem.read_slice(&mut hdr, GuestAddress(0x10_0000)).unwrap();
    assert_eq!(hdr, [NEEDS_CSUM, 0, 0, 0, 0, 0, 34, 0, 6, 0, 1, 0]);
}
