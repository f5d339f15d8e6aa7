//! Feeds virtio-vsock with queues a hostile driver built: `Vsock::process_queue` gathers each
//! transmit chain, parses it as a packet (`packet::parse_packet`), hands it to the muxer (which
//! connects a `REQUEST` for port 5000 to a host service that reads and discards, so streams
//! get established and carry data), and fills receive chains with the replies. Input: the
//! receive and transmit [`QueueSpec`]s, a host-side handshake line (`parse_connect_line`, fed
//! directly), then the guest's data bytes, which are also fed directly to `parse_packet`.
//!
//! Must hold: no panic; an accepted packet's payload is exactly its header's `len` bytes, at
//! most `MAX_PAYLOAD`, and its header round-trips through `to_bytes`.
#![no_main]

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use herd_fuzz::bytes::Reader;
use herd_fuzz::virtq::{QueueSpec, memory, no_irq};
use herd_vmm::devices::virtio::vsock::Vsock;
use herd_vmm::devices::virtio::vsock::conn::parse_connect_line;
use herd_vmm::devices::virtio::vsock::packet::{HDR_LEN, Header, MAX_PAYLOAD, parse_packet};
use herd_vmm::devices::virtio::{VIRTIO_F_VERSION_1, VirtioDevice};
use libfuzzer_sys::fuzz_target;

/// The guest's CID.
const CID: u64 = 3;
/// The host port with a service listening (`<uds>_5000`).
const SERVICE_PORT: u32 = 5000;
const RX: usize = 0;
const TX: usize = 1;

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let (rx, tx) = (QueueSpec::decode(&mut r), QueueSpec::decode(&mut r));
    let _ = parse_connect_line(r.blob());
    let guest_bytes = r.rest();
    check_packet(guest_bytes);
    let mem = memory(guest_bytes);
    // The event queue is never used (no transport resets); an empty one fills its slot.
    let event = QueueSpec::default();
    let queues = vec![rx.place(&mem, 0), tx.place(&mem, 1), event.place(&mem, 2)];
    let mut vsock = Vsock::new(CID, uds_path()).expect("binding the device's socket");
    vsock
        .activate(mem, queues, 1 << VIRTIO_F_VERSION_1, no_irq())
        .expect("a vsock device with three queues activates");
    let _ = vsock.process_queue(TX);
    let _ = vsock.process_queue(RX);
});

fn check_packet(bytes: &[u8]) {
    if let Ok((hdr, _op, payload)) = parse_packet(bytes, CID) {
        assert_eq!(payload.len(), hdr.len as usize);
        assert!(payload.len() <= MAX_PAYLOAD);
        assert_eq!(&hdr.to_bytes()[..], &bytes[..HDR_LEN]);
        assert_eq!(Header::parse(&hdr.to_bytes()).ok(), Some(hdr));
    }
}

/// The device's socket path, in a directory of this process's that also holds the service on
/// port 5000. Each run's device binds it again (the previous one closed it).
fn uds_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory").keep();
        let uds = dir.join("v.sock");
        let service = dir.join(format!("v.sock_{SERVICE_PORT}"));
        let listener = UnixListener::bind(service).expect("binding the host service");
        std::thread::spawn(move || serve(listener));
        uds
    })
}

/// Reads each stream to its end (when the run's device drops it), one thread each so a run
/// with many streams never waits for the backlog (the muxer's connect blocks).
fn serve(listener: UnixListener) {
    for mut stream in listener.incoming().flatten() {
        std::thread::spawn(move || std::io::copy(&mut stream, &mut std::io::sink()));
    }
}
