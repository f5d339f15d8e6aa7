//! virtio-vsock against virtio-queue's driver-side mock and real Unix sockets in a temporary
//! directory: both connection directions, credit, shutdown, many streams, hostile packets.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::conn::{BUF_ALLOC, Conn, ConnError, State, parse_connect_line};
use super::packet::{HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::*;

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const MEM_SIZE: usize = 0x80_0000;
const QSIZE: u16 = 64;
const CID: u64 = 3;

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

struct Rig {
    mem: GuestMemoryMmap,
    rxq: MockSplitQueue<'static, GuestMemoryMmap>,
    txq: MockSplitQueue<'static, GuestMemoryMmap>,
    dev: Vsock,
    dir: tempfile::TempDir,
    tx_slot: u16,
    rx_slot: u16,
    rx_seen: u16,
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

fn rig() -> Rig {
    let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
    ));
    let rxq = MockSplitQueue::create(mem, GuestAddress(0), QSIZE);
    let txq = MockSplitQueue::create(mem, GuestAddress(0x1_0000), QSIZE);
    let evq = MockSplitQueue::create(mem, GuestAddress(0x2_0000), QSIZE);
    let dir = tempfile::tempdir().unwrap();
    let mut dev = Vsock::new(CID, &dir.path().join("v.sock")).unwrap();
    let queues = vec![
        rxq.create_queue().unwrap(),
        txq.create_queue().unwrap(),
        evq.create_queue().unwrap(),
    ];
    let irq = Arc::new(Irq::default());
    dev.activate(mem.clone(), queues, 1 << VIRTIO_F_VERSION_1, irq)
        .unwrap();
    Rig {
        mem: mem.clone(),
        rxq,
        txq,
        dev,
        dir,
        tx_slot: 0,
        rx_slot: 0,
        rx_seen: 0,
    }
}

fn hdr(op: Op, src_port: u32, dst_port: u32, len: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len,
        type_: TYPE_STREAM,
        op: op as u16,
        flags: 0,
        buf_alloc: 64 * 1024,
        fwd_cnt: 0,
    }
}

impl Rig {
    fn uds(&self) -> std::path::PathBuf {
        self.dir.path().join("v.sock")
    }

    /// Sends raw packet bytes as a one-descriptor transmit chain.
    fn send_raw(&mut self, bytes: &[u8]) {
        let slot = self.tx_slot % QSIZE;
        let addr = 0x10_0000 + u64::from(slot) * 0x1000;
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
        let d = desc(addr, bytes.len() as u32, 0, 0);
        self.txq.add_desc_chains(&[d], slot).unwrap();
        self.tx_slot += 1;
        self.dev.process_queue(TX).unwrap();
    }

    fn send(&mut self, h: Header, payload: &[u8]) {
        let mut b = h.to_bytes().to_vec();
        b.extend_from_slice(payload);
        self.send_raw(&b);
    }

    /// Posts `n` receive buffers of 4 KiB.
    fn post_rx(&mut self, n: u16) {
        for _ in 0..n {
            let slot = self.rx_slot % QSIZE;
            let addr = 0x50_0000 + u64::from(slot) * 0x1000;
            self.rxq
                .add_desc_chains(&[desc(addr, 0x1000, WRITE, 0)], slot)
                .unwrap();
            self.rx_slot += 1;
        }
        self.dev.process_queue(RX).unwrap();
    }

    /// The packets the device put in the receive queue since the last call.
    fn received(&mut self) -> Vec<(Header, Vec<u8>)> {
        let used = self.rxq.used_addr();
        let idx: u16 = self.mem.read_obj(used.unchecked_add(2)).unwrap();
        let mut out = Vec::new();
        while self.rx_seen != idx {
            let at = used.unchecked_add(4 + 8 * u64::from(self.rx_seen % QSIZE));
            let id: u32 = self.mem.read_obj(at).unwrap();
            let len: u32 = self.mem.read_obj(at.unchecked_add(4)).unwrap();
            let mut b = vec![0u8; len as usize];
            let addr = 0x50_0000 + u64::from(id) * 0x1000;
            self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
            let h = Header::parse(&b).unwrap();
            out.push((h, b[HDR_LEN..].to_vec()));
            self.rx_seen = self.rx_seen.wrapping_add(1);
        }
        out
    }

    /// Lets the sockets' events through (as the event loop would).
    fn host_events(&mut self) {
        std::thread::sleep(Duration::from_millis(20));
        self.dev.process_backend(0).unwrap();
    }

    fn ops(&mut self) -> Vec<u16> {
        self.received().iter().map(|(h, _)| h.op).collect()
    }
}

fn read_some(s: &mut UnixStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut b = [0u8; 256];
    let n = s.read(&mut b).unwrap();
    b[..n].to_vec()
}

#[test]
fn config_space_holds_the_cid_and_three_queues() {
    let r = rig();
    assert_eq!(r.dev.device_type(), 19);
    assert_eq!(r.dev.queue_max_sizes().len(), 3);
    let mut c = [0xffu8; 8];
    r.dev.read_config(0, &mut c);
    assert_eq!(u64::from_le_bytes(c), CID);
    let mut c = [0xffu8; 4];
    r.dev.read_config(8, &mut c);
    assert_eq!(c, [0; 4]);
}

#[test]
fn guest_connects_to_a_host_listener_and_data_flows_both_ways() {
    let mut r = rig();
    let l = UnixListener::bind(format!("{}_5000", r.uds().display())).unwrap();
    r.post_rx(8);
    r.send(hdr(Op::Request, 1025, 5000, 0), &[]);
    let (mut host, _) = l.accept().unwrap();
    let got = r.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.op, Op::Response as u16);
    assert_eq!(
        (got[0].0.src_port, got[0].0.dst_port, got[0].0.dst_cid),
        (5000, 1025, CID)
    );
    r.send(hdr(Op::Rw, 1025, 5000, 5), b"hello");
    assert_eq!(read_some(&mut host), b"hello");
    host.write_all(b"back").unwrap();
    r.host_events();
    let got = r.received();
    assert_eq!(got[0].0.op, Op::Rw as u16);
    assert_eq!(got[0].1, b"back");
    assert_eq!(got[0].0.buf_alloc, BUF_ALLOC);
    assert_eq!(got[0].0.fwd_cnt, 5);
}

#[test]
fn a_guest_connect_nobody_listens_for_gets_a_reset() {
    let mut r = rig();
    r.post_rx(2);
    r.send(hdr(Op::Request, 1025, 7777, 0), &[]);
    assert_eq!(r.ops(), [Op::Rst as u16]);
    // Data for a stream that does not exist is reset too; a reset for one is ignored.
    r.send(hdr(Op::Rw, 1025, 7777, 1), b"x");
    r.send(hdr(Op::Rst, 1025, 7777, 0), &[]);
    assert_eq!(r.ops(), [Op::Rst as u16]);
    assert_eq!(r.dev.conn_count(), 0);
}

/// A host client that connected and sent `CONNECT <port>`; returns it and the REQUEST.
fn host_connect(r: &mut Rig, port: u32) -> (UnixStream, Header) {
    let mut c = UnixStream::connect(r.uds()).unwrap();
    c.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    r.host_events();
    let got = r.received();
    assert_eq!(got.len(), 1, "one REQUEST");
    assert_eq!(got[0].0.op, Op::Request as u16);
    assert_eq!(got[0].0.dst_port, port);
    (c, got[0].0)
}

#[test]
fn host_connects_with_the_firecracker_handshake_and_many_streams_live_at_once() {
    let mut r = rig();
    r.post_rx(16);
    let mut streams = Vec::new();
    for _ in 0..4 {
        let (mut c, req) = host_connect(&mut r, 1234);
        r.send(hdr(Op::Response, 1234, req.src_port, 0), &[]);
        let ok = read_some(&mut c);
        assert_eq!(ok, format!("OK {}\n", req.src_port).as_bytes());
        streams.push((c, req.src_port));
    }
    assert_eq!(r.dev.conn_count(), 4);
    for (i, (c, _)) in streams.iter_mut().enumerate() {
        c.write_all(format!("m{i}").as_bytes()).unwrap();
    }
    r.host_events();
    let mut got: Vec<_> = r
        .received()
        .into_iter()
        .map(|(h, p)| (h.src_port, p))
        .collect();
    got.sort();
    let want: Vec<_> = (0..4)
        .map(|i| (streams[i].1, format!("m{i}").into_bytes()))
        .collect();
    assert_eq!(got, want);
    for (i, (c, port)) in streams.iter_mut().enumerate() {
        let msg = format!("echo:m{i}");
        r.send(hdr(Op::Rw, 1234, *port, msg.len() as u32), msg.as_bytes());
        assert_eq!(read_some(c), msg.as_bytes());
    }
}

#[test]
fn a_refused_host_connect_closes_the_client_and_bad_lines_are_dropped() {
    let mut r = rig();
    r.post_rx(4);
    let (mut c, req) = host_connect(&mut r, 99);
    r.send(hdr(Op::Rst, 99, req.src_port, 0), &[]);
    assert!(read_some(&mut c).is_empty(), "closed");
    let mut bad = UnixStream::connect(r.uds()).unwrap();
    bad.write_all(b"HELLO there\n").unwrap();
    r.host_events();
    assert!(read_some(&mut bad).is_empty());
    assert!(r.received().is_empty());
    assert_eq!(r.dev.conn_count(), 0);
    assert_eq!(parse_connect_line(b"CONNECT 52\r\n").unwrap(), 52);
    assert!(parse_connect_line(b"CONNECT x\n").is_err());
}

#[test]
fn host_data_respects_the_guest_credit() {
    let mut r = rig();
    let l = UnixListener::bind(format!("{}_5000", r.uds().display())).unwrap();
    r.post_rx(8);
    let mut h = hdr(Op::Request, 1025, 5000, 0);
    h.buf_alloc = 4;
    r.send(h, &[]);
    let (mut host, _) = l.accept().unwrap();
    r.received();
    host.write_all(b"0123456789").unwrap();
    r.host_events();
    let got = r.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, b"0123");
    // The guest consumed the 4 bytes: 4 more.
    let mut h = hdr(Op::CreditUpdate, 1025, 5000, 0);
    h.buf_alloc = 4;
    h.fwd_cnt = 4;
    r.send(h, &[]);
    assert_eq!(r.received()[0].1, b"4567");
    // A credit request is answered.
    r.send(hdr(Op::CreditRequest, 1025, 5000, 0), &[]);
    let got = r.received();
    assert!(got.iter().any(|(h, _)| h.op == Op::CreditUpdate as u16));
}

#[test]
fn shutdowns_both_ways_end_the_stream() {
    let mut r = rig();
    r.post_rx(8);
    let (mut c, req) = host_connect(&mut r, 1234);
    r.send(hdr(Op::Response, 1234, req.src_port, 0), &[]);
    read_some(&mut c);
    c.shutdown(std::net::Shutdown::Write).unwrap();
    r.host_events();
    let got = r.received();
    assert_eq!(got[0].0.op, Op::Shutdown as u16);
    assert_eq!(got[0].0.flags, SHUTDOWN_SEND);
    let mut h = hdr(Op::Shutdown, 1234, req.src_port, 0);
    h.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    r.send(h, &[]);
    assert_eq!(r.ops(), [Op::Rst as u16]);
    assert!(read_some(&mut c).is_empty());
    assert_eq!(r.dev.conn_count(), 0);
}

#[test]
fn a_clean_guest_close_reaches_the_host_with_every_byte_before_the_reset() {
    let mut r = rig();
    let l = UnixListener::bind(format!("{}_5000", r.uds().display())).unwrap();
    r.post_rx(8);
    r.send(hdr(Op::Request, 1025, 5000, 0), &[]);
    let (mut host, _) = l.accept().unwrap();
    assert_eq!(r.ops(), [Op::Response as u16]);
    // Send as a driver would, within the device's credit, until it runs out: nobody reads
    // the host socket, so it is full and herd-vmm holds the rest, whatever the socket size.
    let (mut data, mut fwd_cnt) = (Vec::new(), 0u32);
    while data.len() as u32 - fwd_cnt + MAX_PAYLOAD as u32 <= BUF_ALLOC {
        let at = data.len();
        let chunk: Vec<u8> = (at..at + MAX_PAYLOAD).map(|i| (i % 251) as u8).collect();
        r.send(hdr(Op::Rw, 1025, 5000, chunk.len() as u32), &chunk);
        data.extend_from_slice(&chunk);
        let updates = r.received();
        fwd_cnt = updates
            .iter()
            .map(|(h, _)| h.fwd_cnt)
            .max()
            .unwrap_or(fwd_cnt);
        r.post_rx(updates.len() as u16);
        assert!(data.len() < 64 << 20, "the host socket never filled");
    }
    let mut h = hdr(Op::Shutdown, 1025, 5000, 0);
    h.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    r.send(h, &[]);
    assert!(
        !r.ops().contains(&(Op::Rst as u16)),
        "no reset while data waits"
    );
    assert_eq!(r.dev.conn_count(), 1);
    host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = host.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        r.host_events();
    }
    assert!(
        got == data,
        "{} of {} bytes arrived intact",
        got.len(),
        data.len()
    );
    assert_eq!(r.ops().last(), Some(&(Op::Rst as u16)), "then the reset");
    assert_eq!(r.dev.conn_count(), 0);
}

/// Fills `s` (non-blocking) until the socket takes no more; returns how many bytes.
fn fill(s: &mut UnixStream) -> usize {
    s.set_nonblocking(true).unwrap();
    let chunk = [b'a'; 4096];
    let mut total = 0;
    while let Ok(n) = s.write(&chunk) {
        total += n;
    }
    total
}

#[test]
fn a_busy_stream_does_not_starve_another_that_gets_data_later() {
    let mut r = rig();
    r.post_rx(4);
    let mut streams = Vec::new();
    for _ in 0..2 {
        let (mut c, req) = host_connect(&mut r, 1234);
        r.send(hdr(Op::Response, 1234, req.src_port, 0), &[]);
        read_some(&mut c);
        streams.push((c, req.src_port));
    }
    assert!(fill(&mut streams[0].0) > 16 * 4096);
    r.host_events();
    let busy = streams[0].1;
    assert!(r.received().iter().all(|(h, _)| h.src_port == busy));
    // The quiet stream gets a byte while the busy one still has plenty waiting.
    streams[1].0.write_all(b"q").unwrap();
    r.host_events();
    r.post_rx(4);
    let got = r.received();
    assert!(
        got.iter()
            .any(|(h, p)| h.src_port == streams[1].1 && p == b"q"),
        "served only {:?}",
        got.iter().map(|(h, _)| h.src_port).collect::<Vec<_>>()
    );
}

#[test]
fn hostile_packets_are_dropped_or_reset_and_the_device_goes_on() {
    let mut r = rig();
    r.post_rx(8);
    let mut h = hdr(Op::Request, 1, 5000, 0);
    h.src_cid = 9;
    r.send(h, &[]);
    h = hdr(Op::Request, 1, 5000, 0);
    h.dst_cid = 77;
    r.send(h, &[]);
    r.send(hdr(Op::Rw, 1, 5000, 100), b"short");
    r.send_raw(&[0u8; 20]);
    assert!(r.received().is_empty(), "dropped silently");
    h = hdr(Op::Request, 1, 5000, 0);
    h.op = 42;
    r.send(h, &[]);
    h.op = Op::Request as u16;
    h.type_ = 2;
    r.send(h, &[]);
    assert_eq!(r.ops(), [Op::Rst as u16; 2]);
    assert_eq!(r.dev.stats().tx_dropped, 6);
    // Hostile chains: outside memory, wrong direction, a loop.
    for descs in [
        vec![desc(0xd000_0000, 64, 0, 0)],
        vec![desc(0x10_0000, 64, WRITE, 0)],
        vec![desc(0x10_0000, 44, NEXT, 1), desc(0x10_0000, 4, NEXT, 0)],
    ] {
        r.txq.add_desc_chains(&descs, 60).unwrap();
        r.dev.process_queue(TX).unwrap();
    }
    assert_eq!(r.dev.stats().tx_dropped, 9);
    r.send(hdr(Op::Request, 1, 5000, 0), &[]);
    assert_eq!(r.ops(), [Op::Rst as u16], "still serving");
}

#[test]
fn hostile_receive_chains_get_zero_bytes() {
    let mut r = rig();
    r.rxq
        .add_desc_chains(&[desc(0x50_0000, 10, WRITE, 0)], 0)
        .unwrap();
    r.rxq
        .add_desc_chains(&[desc(0x50_0000, 64, 0, 0)], 1)
        .unwrap();
    r.rx_slot = 2;
    r.send(hdr(Op::Request, 1, 5000, 0), &[]);
    assert_eq!(r.dev.stats().rx_bad_chains, 2);
    r.rx_seen = 2;
    r.post_rx(1);
    assert_eq!(r.ops(), [Op::Rst as u16], "the reply waited");
}

#[test]
fn a_guest_overrunning_its_credit_is_refused() {
    let (a, _b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let mut c = Conn::new(a, State::Established, 1, 2);
    let chunk = vec![7u8; 64 * 1024];
    let err = (0..64).find_map(|_| c.send_to_host(&chunk).err());
    assert!(matches!(err, Some(ConnError::CreditOverrun { .. })));
}

#[test]
fn the_socket_file_is_refused_when_taken_and_removed_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(Vsock::new(3, &path), Err(MuxerError::Exists(_))));
    std::fs::remove_file(&path).unwrap();
    // A stale socket (nobody listens) is replaced.
    drop(UnixListener::bind(&path).unwrap());
    let dev = Vsock::new(3, &path).unwrap();
    assert!(matches!(Vsock::new(3, &path), Err(MuxerError::Exists(_))));
    drop(dev);
    assert!(!path.exists());
    let missing = dir.path().join("nope/s");
    assert!(matches!(Vsock::new(3, &missing), Err(MuxerError::Bind(..))));
}

#[test]
fn a_restored_device_sends_the_guest_one_transport_reset_per_restore() {
    let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap(),
    ));
    let rxq = MockSplitQueue::create(mem, GuestAddress(0), QSIZE);
    let txq = MockSplitQueue::create(mem, GuestAddress(0x1_0000), QSIZE);
    let evq = MockSplitQueue::create(mem, GuestAddress(0x2_0000), QSIZE);
    evq.add_desc_chains(&[desc(0x50_0000, 4, WRITE, 0)], 0)
        .unwrap();
    mem.write_obj(0xffff_ffffu32, GuestAddress(0x50_0000))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut dev = Vsock::new(CID, &dir.path().join("v.sock")).unwrap();
    let queues = [&rxq, &txq, &evq].map(|q| q.create_queue().unwrap());
    let irq = Arc::new(Irq::default());
    dev.activate(
        mem.clone(),
        queues.into(),
        1 << VIRTIO_F_VERSION_1,
        irq.clone(),
    )
    .unwrap();
    dev.restored();
    assert_eq!(evq.used().idx().load(), 1, "one event buffer used");
    let used = evq.used().ring().ref_at(0).unwrap().load();
    assert_eq!(used.len(), 4);
    let id: u32 = mem.read_obj(GuestAddress(0x50_0000)).unwrap();
    assert_eq!(id, 0, "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET");
    assert_eq!(irq.used.load(Ordering::SeqCst), 1);
    // No buffer left: nothing more is sent, and the device keeps working.
    dev.restored();
    assert_eq!(evq.used().idx().load(), 1);
    assert_eq!(dev.queue_states().len(), 3);
}
