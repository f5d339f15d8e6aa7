//! The virtio-net protocol, as small as it can be: negotiate `MAC` (and with
//! `probe.net.offload` the checksum offloads `CSUM` and `GUEST_CSUM`, when offered), set up the
//! receive (0) and transmit (1) queues, read the MAC, send frames and receive frames one buffer
//! at a time, skipping frames that are not ours (a host kernel may send its own). Each frame
//! carries the 12-byte `virtio_net_hdr_v1` in front.
//!
//! Our frames are test frames (broadcast, ethertype 0x88b5 "local experimental", payload
//! `herd` and a big-endian counter, zero-padded to `probe.net.len`, default 60 bytes) or, with
//! `probe.net.udp=PORT`, IPv4 UDP datagrams to and from that port (see [`crate::udp`]), sent
//! with the checksum `probe.net.udp.csum` asks for. Each received frame of ours gets a line
//! with its header's flags (unless `probe.net.quiet`, for benchmarks), and the count a line at
//! the end.

use super::{Device, Regs};
use crate::cmdline::parse_u32;
use crate::out::Sink;
use crate::udp::{self, Csum, Received, Verdict};
use crate::virtq::{Desc, Virtq};

/// Device type id of a network card.
pub const DEVICE_NET: u32 = 1;
/// VIRTIO_NET_F_MAC, in the low feature word.
const F_MAC: u32 = 1 << 5;
/// VIRTIO_NET_F_CSUM and VIRTIO_NET_F_GUEST_CSUM: partial checksums both ways.
pub const F_CSUMS: u32 = 1 | 1 << 1;
/// `virtio_net_hdr_v1` bytes in front of every frame.
pub const HDR: usize = 12;
/// The test frames' ethertype.
pub const ETHERTYPE: u16 = 0x88b5;
/// Bytes of a test frame (the Ethernet minimum without FCS).
pub const FRAME_LEN: usize = 60;
/// A receive buffer: header plus a 1514-byte frame (what a device needs that sends no
/// segmentation jobs, which the probe never negotiates).
pub const RX_BUF: usize = HDR + udp::MAX_LEN;
/// A transmit buffer: the same.
pub const TX_BUF: usize = HDR + udp::MAX_LEN;
/// Frames not ours skipped before giving up.
pub const MAX_OTHER: u32 = 64;

/// What the command line asks of the network card (`probe.net.<key>=<value>` words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetOptions {
    /// Frames to send (`tx=N`).
    pub tx: u32,
    /// Frames of ours to wait for (`rx=N`).
    pub rx: u32,
    /// Negotiate `CSUM` and `GUEST_CSUM` when offered (`offload`).
    pub offload: bool,
    /// Send and count UDP datagrams for this port instead of test frames (`udp=PORT`).
    pub udp: Option<u16>,
    /// How a sent datagram's checksum is filled (`udp.csum=full|partial|none`).
    pub csum: Csum,
    /// Bytes of each sent frame, 60-1514 (`len=L`).
    pub len: usize,
    /// No line per received frame (`quiet`).
    pub quiet: bool,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            tx: 0,
            rx: 0,
            offload: false,
            udp: None,
            csum: Csum::Full,
            len: FRAME_LEN,
            quiet: false,
        }
    }
}

impl NetOptions {
    /// Whether anything is asked.
    pub fn any(&self) -> bool {
        self.tx > 0 || self.rx > 0
    }

    /// Takes a `probe.net.<key>=<value>` word (`value` empty for a bare flag word).
    pub fn word(&mut self, key: &[u8], value: &[u8]) {
        let n = parse_u32(value);
        match key {
            b"tx" => self.tx = n.unwrap_or(self.tx),
            b"rx" => self.rx = n.unwrap_or(self.rx),
            b"offload" => self.offload = true,
            b"quiet" => self.quiet = true,
            b"udp" => {
                if let Some(port) = n.and_then(|p| u16::try_from(p).ok()) {
                    self.udp = Some(port);
                }
            }
            b"len" => {
                if let Some(len) = n {
                    self.len = (len as usize).clamp(udp::MIN_LEN, udp::MAX_LEN);
                }
            }
            b"udp.csum" => {
                self.csum = match value {
                    b"partial" => Csum::Partial,
                    b"none" => Csum::None,
                    _ => Csum::Full,
                }
            }
            _ => {}
        }
    }
}

/// Negotiates (`MAC`, plus [`F_CSUMS`] if `offload`), sets up both queues, sets DRIVER_OK;
/// returns the MAC in config space and the low feature word acked.
pub fn start<R: Regs>(
    dev: &Device<R>,
    rx: &Virtq,
    tx: &Virtq,
    offload: bool,
) -> Result<([u8; 6], u32), &'static str> {
    let features = dev.negotiate_features(F_MAC | if offload { F_CSUMS } else { 0 })?;
    dev.setup_queue(0, rx)?;
    dev.setup_queue(1, tx)?;
    dev.driver_ok()?;
    let lo = dev.config(0).to_le_bytes();
    let hi = dev.config(4).to_le_bytes();
    Ok(([lo[0], lo[1], lo[2], lo[3], hi[0], hi[1]], features))
}

/// Writes the frame `opts` asks for (the `n`-th) from `mac` into `buf`, header included;
/// returns its length. A UDP datagram is the same every time, so it is only built for `n` 0.
pub fn frame(opts: &NetOptions, mac: &[u8; 6], n: u32, buf: &mut [u8; TX_BUF]) -> usize {
    match opts.udp {
        Some(port) if n == 0 => udp::build(buf, mac, port, opts.len, opts.csum),
        Some(_) => HDR + opts.len,
        None => {
            test_frame(mac, n, &mut buf[..HDR + opts.len]);
            HDR + opts.len
        }
    }
}

/// Writes test frame `n` from `mac` (header included) into `buf`, zero-padded to its length.
pub fn test_frame(mac: &[u8; 6], n: u32, buf: &mut [u8]) {
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

/// Whether `frame` (header included) is one of ours; if so it gets its line (unless quiet).
pub fn take(s: &mut impl Sink, opts: &NetOptions, frame: &mut [u8]) -> bool {
    match opts.udp {
        None if is_test_frame(frame) => {
            if !opts.quiet {
                report_rx(s, frame[0], &frame[HDR..]);
            }
            true
        }
        None => false,
        Some(port) => match udp::receive(frame, port, !opts.quiet) {
            Some(got) if !opts.quiet => {
                report_udp(s, frame.len() - HDR, &got);
                true
            }
            Some(_) => true,
            None => false,
        },
    }
}

/// `probe: net features=0x..` (the low feature word acked).
pub fn report_features(s: &mut impl Sink, features: u32) {
    s.put_bytes(b"probe: net features=");
    s.put_hex(u64::from(features));
    s.put(b'\n');
}

/// `probe: net udp len=L flags=F start=S offset=O csum=ok|bad|none` for a received datagram
/// (`len` without the header; start and offset are the header's `csum_start`/`csum_offset`).
pub fn report_udp(s: &mut impl Sink, len: usize, got: &Received) {
    s.put_bytes(b"probe: net udp len=");
    s.put_dec(len as u64);
    s.put_bytes(b" flags=");
    s.put_dec(u64::from(got.flags));
    s.put_bytes(b" start=");
    s.put_dec(u64::from(got.csum_start));
    s.put_bytes(b" offset=");
    s.put_dec(u64::from(got.csum_offset));
    s.put_bytes(match got.verdict {
        Verdict::Ok => b" csum=ok\n",
        Verdict::Bad => b" csum=bad\n",
        Verdict::Absent => b" csum=none\n",
    });
}

/// `probe: net rx=N` (frames of ours received).
pub fn report_rx_count(s: &mut impl Sink, n: u32) {
    s.put_bytes(b"probe: net rx=");
    s.put_dec(u64::from(n));
    s.put(b'\n');
}

/// `probe: net tx=N` (frames sent).
pub fn report_tx(s: &mut impl Sink, n: u32) {
    s.put_bytes(b"probe: net tx=");
    s.put_dec(u64::from(n));
    s.put(b'\n');
}

/// `probe: net rx len=L sum=S flags=F` for a received frame (without its header, whose
/// `flags` byte is F).
pub fn report_rx(s: &mut impl Sink, flags: u8, frame: &[u8]) {
    s.put_bytes(b"probe: net rx len=");
    s.put_dec(frame.len() as u64);
    s.put_bytes(b" sum=");
    s.put_dec(u64::from(sum(frame)));
    s.put_bytes(b" flags=");
    s.put_dec(u64::from(flags));
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
    fn net_words() {
        let mut o = NetOptions::default();
        assert!(!o.any());
        for (k, v) in [
            (&b"tx"[..], &b"3"[..]),
            (b"rx", b"2"),
            (b"offload", b""),
            (b"udp", b"5000"),
            (b"udp.csum", b"partial"),
            (b"len", b"9000"),
            (b"quiet", b""),
            (b"bogus", b"1"),
        ] {
            o.word(k, v);
        }
        let want = NetOptions {
            tx: 3,
            rx: 2,
            offload: true,
            udp: Some(5000),
            csum: Csum::Partial,
            len: 1514,
            quiet: true,
        };
        assert_eq!(o, want);
        assert!(o.any());
        o.word(b"udp", b"65536");
        o.word(b"len", b"1");
        o.word(b"udp.csum", b"none");
        assert_eq!((o.udp, o.len, o.csum), (Some(5000), 60, Csum::None));
    }

    #[test]
    fn frames_of_ours_are_taken_and_reported_others_skipped() {
        let mac = [2, 0, 0, 0, 0, 1];
        let mut o = NetOptions::default();
        let mut buf = [0u8; TX_BUF];
        let n = frame(&o, &mac, 7, &mut buf);
        assert_eq!(n, HDR + FRAME_LEN);
        let out = text(|s| assert!(take(s, &o, &mut buf[..n])));
        assert!(out.starts_with("probe: net rx len=60 sum="), "{out}");
        o.udp = Some(5000);
        assert_eq!(text(|s| assert!(!take(s, &o, &mut buf[..n]))), "");
        o.len = 100;
        let n = frame(&o, &mac, 0, &mut buf);
        assert_eq!(frame(&o, &mac, 1, &mut buf), n);
        let out = text(|s| assert!(take(s, &o, &mut buf[..n])));
        assert_eq!(
            out,
            "probe: net udp len=100 flags=0 start=0 offset=0 csum=ok\n"
        );
        o.quiet = true;
        assert_eq!(text(|s| assert!(take(s, &o, &mut buf[..n]))), "");
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
            text(|s| report_rx(s, 2, &[1, 2, 3])),
            "probe: net rx len=3 sum=6 flags=2\n"
        );
        assert_eq!(text(|s| report_rx_count(s, 4)), "probe: net rx=4\n");
        assert_eq!(
            text(|s| report_features(s, 0x23)),
            "probe: net features=0x23\n"
        );
        let got = Received {
            flags: 1,
            csum_start: 34,
            csum_offset: 6,
            verdict: Verdict::Ok,
        };
        assert_eq!(
            text(|s| report_udp(s, 60, &got)),
            "probe: net udp len=60 flags=1 start=34 offset=6 csum=ok\n"
        );
        assert_eq!(
            text(|s| report_error(s, "timeout")),
            "probe: net error timeout\n"
        );
    }
}
