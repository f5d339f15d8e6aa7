//! Fuzzes the virtio-vsock packet parser (header, validation against the guest's CID and the
//! chain's payload room) and the host-side `CONNECT <port>` line parser. No panic; an accepted
//! packet's payload is exactly `len` bytes from the input and its header round-trips.
#![no_main]

use herd_vmm::devices::virtio::vsock::conn::parse_connect_line;
use herd_vmm::devices::virtio::vsock::packet::{HDR_LEN, Header, MAX_PAYLOAD, parse_packet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cid = data.first().map_or(3, |&b| u64::from(b));
    if let Ok((hdr, _op, payload)) = parse_packet(data, cid) {
        assert_eq!(payload.len(), hdr.len as usize);
        assert!(payload.len() <= MAX_PAYLOAD);
        assert_eq!(&hdr.to_bytes()[..], &data[..HDR_LEN]);
        assert_eq!(Header::parse(&hdr.to_bytes()).ok(), Some(hdr));
    }
    let _ = parse_connect_line(data);
});
