//! IPv4/UDP frames for the network tests and benchmark: building the datagram the probe sends
//! (its checksum complete, left to the device with `NEEDS_CSUM` as Linux drivers do, or
//! absent) and recognising and checking the ones it receives, finishing a partial checksum the
//! way a driver's stack would. Addresses are fixed: the probe is [`OWN_IP`], its peer (the
//! host side of the TAP) [`PEER_IP`]; both ports are the one the command line names. Frames go
//! to the Ethernet broadcast address, so the probe needs no ARP. The payload is the same in
//! every datagram, so a stream of them is built (and checksummed) once: every instruction
//! counts where the probe is emulated.

/// The probe's IPv4 address.
pub const OWN_IP: [u8; 4] = [10, 0, 0, 2];
/// The peer's IPv4 address (the host side of the TAP).
pub const PEER_IP: [u8; 4] = [10, 0, 0, 1];
/// Bytes of the `virtio_net_hdr_v1` in front of a frame.
const HDR: usize = 12;
/// Where the UDP header starts in an Ethernet frame (no IP options), and where its checksum
/// field is within it: the `csum_start`/`csum_offset` of a partial checksum.
pub const CSUM_START: u16 = 14 + 20;
pub const CSUM_OFFSET: u16 = 6;
/// Header flag: the checksum is partial (`VIRTIO_NET_HDR_F_NEEDS_CSUM`).
pub const NEEDS_CSUM: u8 = 1;
/// The start of every payload (the rest is a byte ramp).
pub const PAYLOAD: &[u8] = b"herd udp";
/// Smallest and largest frame we build (Ethernet header on, no FCS).
pub const MIN_LEN: usize = 60;
pub const MAX_LEN: usize = 1514;
const PROTO_UDP: u8 = 17;

/// How a sent datagram's UDP checksum is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Csum {
    /// Computed by the probe.
    Full,
    /// Left to the device: `NEEDS_CSUM`, the field holding only the pseudo-header sum.
    Partial,
    /// Zero: "no checksum" (allowed for UDP over IPv4).
    None,
}

/// What a received datagram's checksum turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It holds (after finishing it, if it was partial).
    Ok,
    /// It does not.
    Bad,
    /// The sender sent none (field 0).
    Absent,
}

/// A received datagram for our port: its virtio-net header's checksum fields and verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub flags: u8,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub verdict: Verdict,
}

fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

/// Adds `bytes` as big-endian 16-bit words to `acc` (an odd last byte padded with zero);
/// fold with [`fold`]. `bytes` is at most 64 KiB, so `acc` cannot overflow.
pub fn add_words(acc: u32, bytes: &[u8]) -> u32 {
    let mut words = bytes.chunks_exact(2);
    let mut acc = words
        .by_ref()
        .fold(acc, |a, w| a + u32::from(u16::from_be_bytes([w[0], w[1]])));
    if let [last] = words.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

/// The 16-bit ones'-complement sum `acc` stands for.
pub fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The (unfolded) sum of the UDP pseudo-header for `udp_len` bytes from `src` to `dst`.
fn pseudo_header(src: &[u8], dst: &[u8], udp_len: u16) -> u32 {
    let acc = add_words(add_words(0, src), dst);
    acc + u32::from(PROTO_UDP) + u32::from(udp_len)
}

/// Writes our datagram for `port` as a `len`-byte frame from `mac` (clamped to 60-1514) into
/// `buf`, with the virtio-net header in front; returns the bytes used (header included).
pub fn build(
    buf: &mut [u8; HDR + MAX_LEN],
    mac: &[u8; 6],
    port: u16,
    len: usize,
    csum: Csum,
) -> usize {
    let len = len.clamp(MIN_LEN, MAX_LEN);
    buf.fill(0);
    let (hdr, f) = buf.split_at_mut(HDR);
    f[..6].fill(0xff);
    f[6..12].copy_from_slice(mac);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(len as u16 - 14).to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = PROTO_UDP;
    ip[12..16].copy_from_slice(&OWN_IP);
    ip[16..20].copy_from_slice(&PEER_IP);
    let ip_sum = !fold(add_words(0, ip));
    ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let udp_len = len as u16 - CSUM_START;
    let udp = &mut f[usize::from(CSUM_START)..len];
    udp[0..2].copy_from_slice(&port.to_be_bytes());
    udp[2..4].copy_from_slice(&port.to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    udp[8..8 + PAYLOAD.len()].copy_from_slice(PAYLOAD);
    for (i, b) in udp[8 + PAYLOAD.len()..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let pseudo = pseudo_header(&OWN_IP, &PEER_IP, udp_len);
    let field = match csum {
        Csum::Full => match !fold(add_words(pseudo, udp)) {
            0 => 0xffff,
            c => c,
        },
        Csum::Partial => fold(pseudo),
        Csum::None => 0,
    };
    udp[6..8].copy_from_slice(&field.to_be_bytes());
    if csum == Csum::Partial {
        hdr[0] = NEEDS_CSUM;
        hdr[6..8].copy_from_slice(&CSUM_START.to_le_bytes());
        hdr[8..10].copy_from_slice(&CSUM_OFFSET.to_le_bytes());
    }
    HDR + len
}

/// If `frame` (virtio-net header included) is an IPv4 UDP datagram to `port`: its header's
/// checksum fields and, when `verify`, its checksum verdict (a partial checksum is finished in
/// `frame` first, as the driver's stack would; without `verify` the verdict says `Ok`).
pub fn receive(frame: &mut [u8], port: u16, verify: bool) -> Option<Received> {
    let (hdr, f) = frame.split_at_mut_checked(HDR)?;
    let ipv4 = f.len() >= 34 && be16(f, 12) == 0x0800 && f[14] >> 4 == 4 && f[14] & 15 >= 5;
    if !ipv4 || f[23] != PROTO_UDP {
        return None;
    }
    let udp_at = 14 + usize::from(f[14] & 15) * 4;
    if f.len() < udp_at + 8 || be16(f, udp_at + 2) != port {
        return None;
    }
    let got = Received {
        flags: hdr[0],
        csum_start: u16::from_le_bytes([hdr[6], hdr[7]]),
        csum_offset: u16::from_le_bytes([hdr[8], hdr[9]]),
        verdict: Verdict::Ok,
    };
    if !verify {
        return Some(got);
    }
    let verdict = check(f, udp_at, &got);
    Some(Received { verdict, ..got })
}

/// The checksum verdict of the UDP datagram at `udp_at` in `f`, finishing a partial one.
fn check(f: &mut [u8], udp_at: usize, got: &Received) -> Verdict {
    let udp_len = usize::from(be16(f, udp_at + 4));
    if udp_len < 8 || udp_at + udp_len > f.len() {
        return Verdict::Bad;
    }
    if got.flags & NEEDS_CSUM != 0 {
        let (start, at) = (
            usize::from(got.csum_start),
            usize::from(got.csum_start) + usize::from(got.csum_offset),
        );
        if at + 2 > f.len() {
            return Verdict::Bad;
        }
        let sum = match !fold(add_words(0, &f[start..])) {
            0 => 0xffff,
            c => c,
        };
        f[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    } else if be16(f, udp_at + 6) == 0 {
        return Verdict::Absent;
    }
    let pseudo = pseudo_header(&f[26..30], &f[30..34], udp_len as u16);
    match fold(add_words(pseudo, &f[udp_at..udp_at + udp_len])) {
        0xffff => Verdict::Ok,
        _ => Verdict::Bad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn frame(len: usize, csum: Csum) -> ([u8; HDR + MAX_LEN], usize) {
        let mut buf = [0u8; HDR + MAX_LEN];
        let n = build(&mut buf, &MAC, 5000, len, csum);
        (buf, n)
    }

    #[test]
    fn built_datagrams_have_valid_ip_and_udp_headers() {
        let (mut b, n) = frame(1514, Csum::Full);
        assert_eq!(n, HDR + 1514);
        assert_eq!(&b[..HDR], &[0; HDR]);
        let f = &b[HDR..n];
        assert_eq!(&f[..6], &[0xff; 6]);
        assert_eq!(&f[6..14], &[2, 0, 0, 0, 0, 1, 8, 0]);
        assert_eq!(fold(add_words(0, &f[14..34])), 0xffff, "IP header checksum");
        assert_eq!((be16(f, 16), be16(f, 38)), (1500, 1480));
        assert_eq!(&f[42..50], PAYLOAD);
        let got = receive(&mut b[..n], 5000, true).unwrap();
        assert_eq!((got.flags, got.verdict), (0, Verdict::Ok));
        assert_eq!(receive(&mut b[..n], 5001, true), None);
        // Short lengths are clamped to the Ethernet minimum.
        assert_eq!(frame(10, Csum::Full).1, HDR + MIN_LEN);
    }

    #[test]
    fn a_partial_checksum_holds_the_pseudo_header_sum_and_finishes_correctly() {
        let (mut b, n) = frame(100, Csum::Partial);
        assert_eq!(&b[..10], &[NEEDS_CSUM, 0, 0, 0, 0, 0, 34, 0, 6, 0]);
        let udp_len = 100 - 34;
        let pseudo = fold(pseudo_header(&OWN_IP, &PEER_IP, udp_len));
        assert_eq!(be16(&b[HDR..], 40), pseudo);
        let (full, _) = frame(100, Csum::Full);
        assert_ne!(&b[..n], &full[..n]);
        let got = receive(&mut b[..n], 5000, true).unwrap();
        assert_eq!(got.verdict, Verdict::Ok);
        assert_eq!((got.csum_start, got.csum_offset), (34, 6));
        assert_eq!(&b[HDR..n], &full[HDR..n], "finished like the probe's own");
    }

    #[test]
    fn received_checksums_are_judged() {
        let (mut b, n) = frame(200, Csum::None);
        assert_eq!(
            receive(&mut b[..n], 5000, true).unwrap().verdict,
            Verdict::Absent
        );
        let (mut b, n) = frame(200, Csum::Full);
        b[HDR + 100] ^= 1;
        assert_eq!(
            receive(&mut b[..n], 5000, true).unwrap().verdict,
            Verdict::Bad
        );
        assert_eq!(
            receive(&mut b[..n], 5000, false).unwrap().verdict,
            Verdict::Ok
        );
        // A partial checksum pointing past the frame, and frames that are not ours.
        let (mut b, n) = frame(200, Csum::Partial);
        b[6] = 0xff;
        assert_eq!(
            receive(&mut b[..n], 5000, true).unwrap().verdict,
            Verdict::Bad
        );
        let (mut b, n) = frame(200, Csum::Full);
        b[HDR + 23] = 6;
        assert_eq!(receive(&mut b[..n], 5000, true), None);
        assert_eq!(receive(&mut b[..40], 5000, true), None);
        assert_eq!(receive(&mut b[..5], 5000, true), None);
    }

    #[test]
    fn ones_complement_sums() {
        assert_eq!(fold(add_words(0, &[0x12, 0x34, 0x56])), 0x6834);
        assert_eq!(fold(add_words(0, &[0xff, 0xff, 0, 2])), 2);
        assert_eq!(fold(add_words(0, &[])), 0);
    }
}
