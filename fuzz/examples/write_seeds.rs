//! Writes the committed seeds of the binary fuzz targets into `fuzz/seeds/<target>/`: a few
//! requests an honest driver makes (so the fuzzer starts past the checks every input must
//! pass) and one hostile variant each, encoded with the same code the targets decode with.
//! The text targets' seeds (`vmm_config`, `agent_api_bodies`) are written by hand.
//!
//! Run from `fuzz/` when the input format changes: `cargo run --example write_seeds`.

use std::fs;
use std::path::Path;

use herd_fuzz::bytes::Writer;
use herd_fuzz::virtq::{DATA_BASE, Desc, F_NEXT, F_WRITE, QueueSpec};
use herd_vmm::devices::virtio::block::feature;
use herd_vmm::devices::virtio::block::request::kind;
use herd_vmm::devices::virtio::mmio::reg;
use herd_vmm::devices::virtio::status;
use herd_vmm::devices::virtio::vsock::packet::{HOST_CID, Header, Op, TYPE_STREAM};
use herd_vmm::sys::tap::TUN_F_ALL;

/// A guest data region being laid out: bytes at offsets from `DATA_BASE`.
#[derive(Default)]
struct Data(Vec<u8>);

impl Data {
    /// Puts `bytes` at offset `at`; returns their guest address.
    fn put(&mut self, at: usize, bytes: &[u8]) -> u64 {
        if self.0.len() < at + bytes.len() {
            self.0.resize(at + bytes.len(), 0);
        }
        self.0[at..at + bytes.len()].copy_from_slice(bytes);
        DATA_BASE + at as u64
    }

    /// The address of offset `at`, for a buffer the device fills (guest memory past the
    /// data bytes is zero, so nothing needs writing).
    fn room(&self, at: usize) -> u64 {
        DATA_BASE + at as u64
    }
}

/// A buffer of a chain: guest address, length, device-writable.
type Buf = (u64, u32, bool);

fn slices(chains: &[Vec<Buf>]) -> Vec<&[Buf]> {
    chains.iter().map(Vec::as_slice).collect()
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    fs::create_dir_all(&dir).expect("creating the seed directory");
    fs::write(dir.join(name), bytes).expect("writing a seed");
}

fn main() {
    rng_seeds();
    blk_seeds();
    net_seeds();
    vsock_seeds();
    mmio_seeds();
}

fn rng_seeds() {
    let d = Data::default();
    let (a, b) = (d.room(0), d.room(0x100));
    let honest = QueueSpec::honest(4, &[&[(a, 64, true)], &[(a, 16, true), (b, 4096, true)]]);
    let mut w = Writer::default();
    honest.encode(&mut w);
    write("virtio_rng", "two-requests", &w.bytes(&d.0).finish());
    // A device-readable buffer, then a descriptor that chains to itself.
    let mut hostile = QueueSpec::honest(4, &[&[(a, 64, false)], &[(b, 8, true)]]);
    hostile.descs[1].flags |= F_NEXT;
    hostile.descs[1].next = 1;
    hostile.encode(&mut w);
    write("virtio_rng", "read-only-and-loop", &w.bytes(&d.0).finish());
}

/// A virtio-blk request header.
fn blk_header(type_: u32, sector: u64) -> Vec<u8> {
    let mut h = type_.to_le_bytes().to_vec();
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

fn blk_seeds() {
    let mut d = Data::default();
    let mut chain = |i: usize, type_: u32, sector: u64, data: Option<(&[u8], bool)>| {
        let base = i * 0x400;
        let hdr = d.put(base, &blk_header(type_, sector));
        let status = d.room(base + 0x3f0);
        let mut descs = vec![(hdr, 16, false)];
        if let Some((bytes, writable)) = data {
            let buf = d.put(base + 0x20, bytes);
            descs.push((buf, bytes.len() as u32, writable));
        }
        descs.push((status, 1, true));
        descs
    };
    // A DISCARD/WRITE_ZEROES range: sectors 8-15, flags (UNMAP only for WRITE_ZEROES).
    let range = |unmap: u32| {
        [
            8u64.to_le_bytes(),
            (8u64 | u64::from(unmap) << 32).to_le_bytes(),
        ]
    };
    let chains = [
        chain(0, kind::IN, 1, Some((&[0; 512], true))),
        chain(1, kind::OUT, 2, Some((&[0xab; 512], false))),
        chain(2, kind::FLUSH, 0, None),
        chain(3, kind::GET_ID, 0, Some((&[0; 20], true))),
        chain(4, kind::DISCARD, 0, Some((&range(0).concat(), false))),
        chain(5, kind::WRITE_ZEROES, 0, Some((&range(1).concat(), false))),
    ];
    let acked = (1 << feature::FLUSH) | (1 << feature::DISCARD) | (1 << feature::WRITE_ZEROES);
    let encode = |spec: &QueueSpec, read_only: bool| {
        let mut w = Writer::default();
        spec.encode(&mut w);
        w.u8(2 | u8::from(read_only)).u16(acked).u64(128);
        w.bytes(&d.0).finish()
    };
    let honest = QueueSpec::honest(4, &slices(&chains));
    write("virtio_blk", "every-request-type", &encode(&honest, false));
    write("virtio_blk", "read-only-disk", &encode(&honest, true));
    // The read's data buffer runs past the end of guest memory; the write reads past the disk.
    let mut hostile = honest.clone();
    hostile.descs[1].len = u32::MAX;
    hostile.descs[4].len = 0x1_0000;
    write("virtio_blk", "outside-memory", &encode(&hostile, false));
}

fn net_seeds() {
    let mut d = Data::default();
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x00]);
    frame.resize(12 + 60, 0x45);
    let tx_buf = d.put(0, &frame);
    let rx_buf = d.room(0x1000);
    let rx = QueueSpec::honest(4, &[&[(rx_buf, 2048, true)]]);
    let tx = QueueSpec::honest(4, &[&[(tx_buf, 12, false), (tx_buf + 12, 60, false)]]);
    let seed = net_input(&rx, &tx, &[&frame], &d);
    write("virtio_net", "one-frame-each-way", &seed);
    // The guest asks for a checksum and TCP segmentation; a frame arrives with a partial one.
    let mut offload = frame.clone();
    offload[..10].copy_from_slice(&[1, 1, 14, 0, 0xb4, 5, 34, 0, 16, 0]);
    d.put(0, &offload);
    write(
        "virtio_net",
        "offloads",
        &net_input(&rx, &tx, &[&offload], &d),
    );
    // A receive buffer the device may not write, and a transmit chain without a whole header.
    let bad_rx = QueueSpec::honest(4, &[&[(rx_buf, 2048, false)]]);
    let bad_tx = QueueSpec::honest(4, &[&[(tx_buf, 6, false)]]);
    let seed = net_input(&bad_rx, &bad_tx, &[&frame], &d);
    write("virtio_net", "wrong-direction", &seed);
}

/// A `virtio_net` input: a backend with every offload, a guest that acked CSUM, GUEST_CSUM,
/// GUEST_TSO4 and HOST_TSO4, and `frames` waiting for the guest.
fn net_input(rx: &QueueSpec, tx: &QueueSpec, frames: &[&[u8]], d: &Data) -> Vec<u8> {
    let acked: u16 = 1 | 1 << 1 | 1 << 7 | 1 << 11;
    let mut w = Writer::default();
    rx.encode(&mut w);
    tx.encode(&mut w);
    w.u8(TUN_F_ALL as u8).u16(acked).u8(frames.len() as u8);
    for f in frames {
        w.blob(f);
    }
    w.bytes(&d.0).finish()
}

/// A guest-to-host vsock packet from guest port 1024 to host port 5000.
fn vsock_packet(op: Op, flags: u32, payload: &[u8]) -> Vec<u8> {
    let hdr = Header {
        src_cid: 3,
        dst_cid: HOST_CID,
        src_port: 1024,
        dst_port: 5000,
        len: payload.len() as u32,
        type_: TYPE_STREAM,
        op: op as u16,
        flags,
        buf_alloc: 64 * 1024,
        fwd_cnt: 0,
    };
    let mut p = hdr.to_bytes().to_vec();
    p.extend_from_slice(payload);
    p
}

fn vsock_seeds() {
    let mut d = Data::default();
    let packets = [
        vsock_packet(Op::Request, 0, b""),
        vsock_packet(Op::Rw, 0, b"hello\n"),
        vsock_packet(Op::CreditRequest, 0, b""),
        vsock_packet(Op::Shutdown, 3, b""),
        vsock_packet(Op::Rst, 0, b""),
    ];
    // The first packet at offset 0, so the data region fed to `parse_packet` starts with it.
    let tx_chains: Vec<Vec<Buf>> = packets
        .iter()
        .enumerate()
        .map(|(i, p)| vec![(d.put(i * 0x100, p), p.len() as u32, false)])
        .collect();
    let rx_chains: Vec<Vec<Buf>> = (0..4)
        .map(|i| vec![(d.room(0x1000 + i * 0x400), 0x400, true)])
        .collect();
    let rx = QueueSpec::honest(4, &slices(&rx_chains));
    let tx = QueueSpec::honest(4, &slices(&tx_chains));
    let encode = |rx: &QueueSpec, tx: &QueueSpec, line: &[u8]| {
        let mut w = Writer::default();
        rx.encode(&mut w);
        tx.encode(&mut w);
        w.blob(line).bytes(&d.0).finish()
    };
    write(
        "virtio_vsock",
        "stream-to-port-5000",
        &encode(&rx, &tx, b"CONNECT 5000\n"),
    );
    // A payload longer than its chain, and a receive chain too small for a header.
    let mut hostile_tx = tx.clone();
    hostile_tx.descs[1].len = 44;
    let mut hostile_rx = rx.clone();
    hostile_rx.descs[0].len = 43;
    let seed = encode(&hostile_rx, &hostile_tx, b"CONNECT 99999999999\r\n");
    write("virtio_vsock", "short-chains", &seed);
}

/// A register write: operation byte 1 (a 4-byte write).
fn mmio_write(w: &mut Writer, offset: u64, value: u32) {
    w.u8(1).u16(offset as u16).u32(value);
}

fn mmio_seeds() {
    // The rings of a 16-entry queue and one 64-byte writable buffer, as a driver lays them
    // out; guest memory holds the data bytes from DATA_BASE.
    let mut d = Data::default();
    let buf = d.room(0x1000);
    let desc = Desc {
        addr: buf,
        len: 64,
        flags: F_WRITE,
        next: 0,
    };
    let mut table = desc.addr.to_le_bytes().to_vec();
    table.extend_from_slice(&desc.len.to_le_bytes());
    table.extend_from_slice(&desc.flags.to_le_bytes());
    table.extend_from_slice(&desc.next.to_le_bytes());
    let (desc_at, avail_at, used_at) = (
        d.put(0, &table),
        d.put(0x100, &[0, 0, 1, 0, 0, 0]),
        d.room(0x200),
    );
    let ack = status::ACKNOWLEDGE;
    let driver = ack | status::DRIVER;
    let features_ok = driver | status::FEATURES_OK;
    let mut w = Writer::default();
    let set_up: Vec<(u64, u32)> = vec![
        (reg::STATUS, ack),
        (reg::STATUS, driver),
        (reg::DRIVER_FEATURES_SEL, 1),
        (reg::DRIVER_FEATURES, 1),
        (reg::STATUS, features_ok),
        (reg::QUEUE_SEL, 0),
        (reg::QUEUE_NUM, 16),
        (reg::QUEUE_DESC_LOW, desc_at as u32),
        (reg::QUEUE_DRIVER_LOW, avail_at as u32),
        (reg::QUEUE_DEVICE_LOW, used_at as u32),
        (reg::QUEUE_READY, 1),
        (reg::STATUS, features_ok | status::DRIVER_OK),
        (reg::QUEUE_NOTIFY, 0),
        (reg::INTERRUPT_ACK, 1),
        (reg::STATUS, 0),
    ];
    w.u8(set_up.len() as u8);
    for &(offset, value) in &set_up {
        mmio_write(&mut w, offset, value);
    }
    write(
        "virtio_mmio",
        "set-up-notify-reset",
        &w.bytes(&d.0).finish(),
    );
}
