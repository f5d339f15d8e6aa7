//! The virtio-net protocol, as small as it can be: negotiate `MAC`, set up the receive (0) and
//! transmit (1) queues, read the MAC, send recognisable test frames (broadcast, ethertype
//! 0x88b5 "local experimental", payload `herd` and a big-endian counter, padded to 60 bytes)
//! and receive frames one buffer at a time, skipping frames of other ethertypes (a host
//! kernel may send its own). Each frame carries the 12-byte `virtio_net_hdr_v1` in front.

use super::{Device, Regs};
use crate::out::Sink;
use crate::virtq::{Desc, Virtq};

/// Device type id of a network card.
pub const DEVICE_NET: u32 = 1;
/// VIRTIO_NET_F_MAC, in the low feature word.
const F_MAC: u32 = 1 << 5;
/// `virtio_net_hdr_v1` bytes in front of every frame.
pub const HDR: usize = 12;
/// The test frames' ethertype.
pub const ETHERTYPE: u16 = 0x88b5;
/// Bytes of a test frame (the Ethernet minimum without FCS).
pub const FRAME_LEN: usize = 60;
/// A receive buffer: header plus a 1514-byte frame (what a device without offloads needs).
pub const RX_BUF: usize = HDR + 1514;
/// Frames of other ethertypes skipped before giving up.
pub const MAX_OTHER: u32 = 64;

/// Negotiates, sets up both queues, sets DRIVER_OK; returns the MAC in config space.
pub fn start<R: Regs>(dev: &Device<R>, rx: &Virtq, tx: &Virtq) -> Result<[u8; 6], &'static str> {
    dev.negotiate_features(F_MAC)?;
    dev.setup_queue(0, rx)?;
    dev.setup_queue(1, tx)?;
    dev.driver_ok()?;
    let lo = dev.config(0).to_le_bytes();
    let hi = dev.config(4).to_le_bytes();
    Ok([lo[0], lo[1], lo[2], lo[3], hi[0], hi[1]])
}

/// Writes test frame `n` from `mac` (header included) into `buf`.
pub fn test_frame(mac: &[u8; 6], n: u32, buf: &mut [u8; HDR + FRAME_LEN]) {
    buf.fill(0);
    let f = &mut buf[HDR..];
    f[..6].fill(0xff);
    f[6..12].copy_from_slice(mac);
    f[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    f[14..18].copy_from_slice(b"herd");
    f[18..22].copy_from_slice(&n.to_be_bytes());
}

/// Sends the `len` bytes at `addr` (header included) and waits until the device is done.
pub fn send<R: Regs>(
    dev: &Device<R>,
    tx: &mut Virtq,
    addr: u64,
    len: u32,
) -> Result<(), &'static str> {
    if !tx.submit(&[Desc::readable(addr, len)]) {
        return Err("submit");
    }
    dev.kick_and_wait(1)?;
    tx.take_used().map(|_| ()).ok_or("no-used-entry")
}

/// Posts the `len` bytes at `addr` for one frame and waits for it; returns the bytes written.
pub fn receive<R: Regs>(
    dev: &Device<R>,
    rx: &mut Virtq,
    addr: u64,
    len: u32,
) -> Result<u32, &'static str> {
    if !rx.submit(&[Desc::writable(addr, len)]) {
        return Err("submit");
    }
    dev.kick_and_wait(0)?;
    match rx.take_used() {
        Some((0, n)) if n as usize > HDR && n <= len => Ok(n),
        Some(_) => Err("bad-used-entry"),
        None => Err("no-used-entry"),
    }
}

/// Whether `frame` (header included) is one of ours by ethertype.
pub fn is_test_frame(frame: &[u8]) -> bool {
    frame.len() >= HDR + 14 && frame[HDR + 12..HDR + 14] == ETHERTYPE.to_be_bytes()
}

/// The byte sum the report prints for a frame.
pub fn sum(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(0u32, |a, &b| a.wrapping_add(u32::from(b)))
}

fn put_octet(s: &mut impl Sink, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    s.put(HEX[usize::from(b >> 4)]);
    s.put(HEX[usize::from(b & 15)]);
}

/// `probe: net mac=aa:bb:cc:dd:ee:ff`.
pub fn report_mac(s: &mut impl Sink, mac: &[u8; 6]) {
    s.put_bytes(b"probe: net mac=");
    for (i, &b) in mac.iter().enumerate() {
        if i > 0 {
            s.put(b':');
        }
        put_octet(s, b);
    }
    s.put(b'\n');
}

/// `probe: net tx=N` (frames sent).
pub fn report_tx(s: &mut impl Sink, n: u32) {
    s.put_bytes(b"probe: net tx=");
    s.put_dec(u64::from(n));
    s.put(b'\n');
}

/// `probe: net rx len=L sum=S` for a received frame (without its header).
pub fn report_rx(s: &mut impl Sink, frame: &[u8]) {
    s.put_bytes(b"probe: net rx len=");
    s.put_dec(frame.len() as u64);
    s.put_bytes(b" sum=");
    s.put_dec(u64::from(sum(frame)));
    s.put(b'\n');
}

/// `probe: net error <why>`.
pub fn report_error(s: &mut impl Sink, why: &str) {
    s.put_bytes(b"probe: net error ");
    s.put_bytes(why.as_bytes());
    s.put(b'\n');
}

#[cfg(test)]
mod tests {
    use std::vec::Vec;

    use super::*;

    fn text(f: impl FnOnce(&mut Vec<u8>)) -> std::string::String {
        let mut v = Vec::new();
        f(&mut v);
        std::string::String::from_utf8(v).unwrap()
    }

    #[test]
    fn test_frames_are_recognisable_and_counted() {
        let mut buf = [0u8; HDR + FRAME_LEN];
        test_frame(&[2, 0, 0, 0, 0, 1], 7, &mut buf);
        assert_eq!(&buf[..HDR], &[0; HDR]);
        assert_eq!(&buf[HDR..HDR + 6], &[0xff; 6]);
        assert_eq!(&buf[HDR + 12..HDR + 22], b"\x88\xb5herd\0\0\0\x07");
        assert!(is_test_frame(&buf));
        buf[HDR + 12] = 0x08;
        assert!(!is_test_frame(&buf));
        assert!(!is_test_frame(&buf[..HDR + 13]));
        assert_eq!(sum(&[1, 2, 255]), 258);
    }

    #[test]
    fn report_lines() {
        let mac = [0xaa, 0xbb, 0x0c, 0xdd, 0xee, 0x01];
        assert_eq!(
            text(|s| report_mac(s, &mac)),
            "probe: net mac=aa:bb:0c:dd:ee:01\n"
        );
        assert_eq!(text(|s| report_tx(s, 3)), "probe: net tx=3\n");
        assert_eq!(
            text(|s| report_rx(s, &[1, 2, 3])),
            "probe: net rx len=3 sum=6\n"
        );
        assert_eq!(
            text(|s| report_error(s, "timeout")),
            "probe: net error timeout\n"
        );
    }
}
