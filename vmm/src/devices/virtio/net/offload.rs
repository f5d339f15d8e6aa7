//! Checksum and segmentation offloads, as pure functions: which virtio-net features to offer
//! over a TAP that accepts given `TUN_F_*` offload flags, what the guest's acked features allow
//! in each direction ([`Negotiated`], whose receive half is what the TAP is set to), and the
//! `virtio_net_hdr_v1` rules both ways.
//!
//! `GUEST_*` features cover frames the device hands the guest: the TAP's offload flags let the
//! host kernel leave checksums and segmentation to the guest. `CSUM` and `HOST_*` cover frames
//! the guest sends: the host kernel finishes what the header asks. The header moves through
//! with the frame (one copy), so each direction keeps only what was negotiated: a guest gets
//! no host work it did not negotiate (an unnegotiated checksum request is cleared, as before
//! offloads existed; an unnegotiated segmentation request is dropped, since the frame would be
//! oversized), and a guest is never handed offload state it did not ask for (a partial
//! checksum is finished here, a segmentation job is dropped; both can only come from frames
//! queued in the TAP before a reset changed the offloads).

use super::{NetError, VNET_HDR_LEN};
use crate::sys::tap::{TUN_F_CSUM, TUN_F_TSO_ECN, TUN_F_TSO4, TUN_F_TSO6, TUN_F_UFO};

/// Feature bit: the device takes frames with a partial checksum (`NEEDS_CSUM`).
pub const VIRTIO_NET_F_CSUM: u32 = 0;
/// Feature bit: the driver takes frames with a partial checksum (`NEEDS_CSUM`, `DATA_VALID`).
pub const VIRTIO_NET_F_GUEST_CSUM: u32 = 1;
/// Feature bit: the driver takes TCP/IPv4 segmentation jobs.
pub const VIRTIO_NET_F_GUEST_TSO4: u32 = 7;
/// Feature bit: the driver takes TCP/IPv6 segmentation jobs.
pub const VIRTIO_NET_F_GUEST_TSO6: u32 = 8;
/// Feature bit: the driver takes segmentation jobs with ECN.
pub const VIRTIO_NET_F_GUEST_ECN: u32 = 9;
/// Feature bit: the driver takes UDP fragmentation jobs.
pub const VIRTIO_NET_F_GUEST_UFO: u32 = 10;
/// Feature bit: the device takes TCP/IPv4 segmentation jobs.
pub const VIRTIO_NET_F_HOST_TSO4: u32 = 11;
/// Feature bit: the device takes TCP/IPv6 segmentation jobs.
pub const VIRTIO_NET_F_HOST_TSO6: u32 = 12;
/// Feature bit: the device takes segmentation jobs with ECN.
pub const VIRTIO_NET_F_HOST_ECN: u32 = 13;
/// Feature bit: the device takes UDP fragmentation jobs.
pub const VIRTIO_NET_F_HOST_UFO: u32 = 14;

/// Header flag: checksum `data[csum_start..]` into `csum_start + csum_offset`.
pub const HDR_F_NEEDS_CSUM: u8 = 1;
/// Header flag (to the guest): the checksum was already verified.
pub const HDR_F_DATA_VALID: u8 = 2;
/// `gso_type` values, and the ECN bit that may be or-ed into the segmenting ones.
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_ECN: u8 = 0x80;

/// Each TAP offload flag with the guest-side and the host-side feature it stands for.
const FLAGS: [(u32, u32, u32); 5] = [
    (TUN_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_CSUM),
    (TUN_F_TSO4, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_HOST_TSO4),
    (TUN_F_TSO6, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_TSO6),
    (TUN_F_TSO_ECN, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_HOST_ECN),
    (TUN_F_UFO, VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_UFO),
];

/// `flags` without those whose prerequisite is missing (virtio 1.2 §5.1.3.1): nothing without
/// checksumming, ECN only with TCP segmentation. The kernel's `TUNSETOFFLOAD` has the same rules.
fn consistent(mut flags: u32) -> u32 {
    if flags & TUN_F_CSUM == 0 {
        return 0;
    }
    if flags & (TUN_F_TSO4 | TUN_F_TSO6) == 0 {
        flags &= !TUN_F_TSO_ECN;
    }
    flags
}

/// The offload feature bits to offer over a TAP that accepts the `tun` offload flags: both
/// directions of each, with the spec's dependencies.
pub fn offered_features(tun: u32) -> u64 {
    let tun = consistent(tun);
    FLAGS
        .iter()
        .filter(|&&(flag, ..)| tun & flag != 0)
        .fold(0, |f, &(_, guest, host)| f | 1 << guest | 1 << host)
}

/// What the acked features allow, per direction, as `TUN_F_*` flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// Offloads frames to the guest may carry: what the TAP is set to.
    pub to_guest: u32,
    /// Offloads the guest may ask of the host in frames it sends.
    pub from_guest: u32,
}

impl Negotiated {
    /// Maps acked feature bits to offloads; a feature acked without its prerequisite (which a
    /// driver must not do) counts as not acked.
    pub fn new(acked: u64) -> Self {
        let side = |pick: fn(&(u32, u32, u32)) -> u32| {
            let flags = FLAGS
                .iter()
                .filter(|f| acked & (1 << pick(f)) != 0)
                .fold(0, |t, f| t | f.0);
            consistent(flags)
        };
        Self {
            to_guest: side(|f| f.1),
            from_guest: side(|f| f.2),
        }
    }
}

/// Whether a header's `gso_type` asks for no more than the `allowed` offloads.
fn gso_allowed(gso_type: u8, allowed: u32) -> bool {
    if gso_type == GSO_NONE {
        return true;
    }
    let need = match gso_type & !GSO_ECN {
        GSO_TCPV4 => TUN_F_TSO4,
        GSO_TCPV6 => TUN_F_TSO6,
        GSO_UDP => TUN_F_UFO,
        _ => return false,
    };
    let need = need
        | if gso_type & GSO_ECN != 0 {
            TUN_F_TSO_ECN
        } else {
            0
        };
    allowed & need == need
}

/// Rewrites the header of a frame the guest sent for the `from_guest` offloads: a checksum
/// request survives only with `CSUM`, no other flag does, unused fields and `num_buffers` are
/// zeroed. A segmentation request the guest did not negotiate is refused.
pub fn tx_header(hdr: &mut [u8], from_guest: u32) -> Result<(), NetError> {
    let hdr = &mut hdr[..VNET_HDR_LEN];
    let gso = hdr[1];
    if !gso_allowed(gso, from_guest) {
        return Err(NetError::GsoNotNegotiated(gso));
    }
    let csum = from_guest & TUN_F_CSUM != 0 && hdr[0] & HDR_F_NEEDS_CSUM != 0;
    hdr[0] = if csum { HDR_F_NEEDS_CSUM } else { 0 };
    if gso == GSO_NONE {
        hdr[2..6].fill(0);
    }
    if !csum {
        hdr[6..10].fill(0);
    }
    hdr[10..].fill(0);
    Ok(())
}

/// Rewrites the header of `frame` (header included), read from the TAP, for a guest that
/// negotiated the `to_guest` offloads: checksum flags pass only with `GUEST_CSUM` (without, a
/// partial checksum is finished here), `num_buffers` is 1. A segmentation job the guest did not
/// negotiate is refused.
pub fn rx_header(frame: &mut [u8], to_guest: u32) -> Result<(), NetError> {
    if frame.len() < VNET_HDR_LEN {
        return Err(NetError::NoHeader(frame.len()));
    }
    let (hdr, data) = frame.split_at_mut(VNET_HDR_LEN);
    if !gso_allowed(hdr[1], to_guest) {
        return Err(NetError::GsoNotNegotiated(hdr[1]));
    }
    if to_guest & TUN_F_CSUM != 0 {
        hdr[0] &= HDR_F_NEEDS_CSUM | HDR_F_DATA_VALID;
    } else {
        if hdr[0] & HDR_F_NEEDS_CSUM != 0 {
            let start = u16::from_le_bytes([hdr[6], hdr[7]]);
            let offset = u16::from_le_bytes([hdr[8], hdr[9]]);
            finish_checksum(data, start.into(), offset.into())?;
        }
        // Nothing left to say: no flags and (see above) no segmentation.
        hdr[..10].fill(0);
    }
    hdr[10..].copy_from_slice(&1u16.to_le_bytes());
    Ok(())
}

/// Finishes a partial checksum as the guest's stack would have: the checksum field holds the
/// pseudo-header sum, so the complemented ones'-complement sum of `data[start..]` goes at
/// `start + offset` (big-endian; a zero result is written as `0xffff`, which UDP needs).
pub fn finish_checksum(data: &mut [u8], start: usize, offset: usize) -> Result<(), NetError> {
    let at = start + offset;
    if at + 2 > data.len() {
        let len = data.len();
        return Err(NetError::ChecksumOffsets { start, offset, len });
    }
    let folded = !ones_complement_sum(&data[start..]);
    let field = if folded == 0 { 0xffff } else { folded };
    data[at..at + 2].copy_from_slice(&field.to_be_bytes());
    Ok(())
}

/// The 16-bit ones'-complement sum of `bytes` as big-endian words (an odd last byte padded).
pub fn ones_complement_sum(bytes: &[u8]) -> u16 {
    let mut words = bytes.chunks_exact(2);
    let mut sum: u64 = words
        .by_ref()
        .map(|w| u64::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::tap::TUN_F_ALL;

    const fn bits(features: &[u32]) -> u64 {
        let mut f = 0;
        let mut i = 0;
        while i < features.len() {
            f |= 1 << features[i];
            i += 1;
        }
        f
    }

    const GUEST_ALL: u64 = bits(&[
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_ECN,
        VIRTIO_NET_F_GUEST_UFO,
    ]);

    #[test]
    fn offered_features_follow_the_tap_and_the_spec_dependencies() {
        assert_eq!(offered_features(0), 0);
        assert_eq!(offered_features(TUN_F_ALL), 0x7f83);
        let csum = bits(&[VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM]);
        assert_eq!(offered_features(TUN_F_CSUM), csum);
        // Segmentation without checksumming, ECN without segmentation: not offered.
        assert_eq!(offered_features(TUN_F_TSO4 | TUN_F_UFO), 0);
        assert_eq!(offered_features(TUN_F_CSUM | TUN_F_TSO_ECN), csum);
    }

    #[test]
    fn acked_guest_features_map_to_tap_offloads() {
        assert_eq!(Negotiated::new(0), Negotiated::default());
        assert_eq!(Negotiated::new(GUEST_ALL).to_guest, TUN_F_ALL);
        assert_eq!(Negotiated::new(GUEST_ALL).from_guest, 0);
        let csum_tso4 = bits(&[VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4]);
        assert_eq!(Negotiated::new(csum_tso4).to_guest, TUN_F_CSUM | TUN_F_TSO4);
        // Acked without their prerequisites (a broken driver): not turned on.
        assert_eq!(Negotiated::new(GUEST_ALL & !2).to_guest, 0);
        let ecn_alone = bits(&[VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN]);
        assert_eq!(Negotiated::new(ecn_alone).to_guest, TUN_F_CSUM);
        let host = bits(&[
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_HOST_UFO,
        ]);
        let n = Negotiated::new(host);
        assert_eq!(
            (n.to_guest, n.from_guest),
            (0, TUN_F_CSUM | TUN_F_TSO6 | TUN_F_UFO)
        );
    }

    #[test]
    fn segmentation_types_need_their_offload() {
        assert!(gso_allowed(GSO_NONE, 0));
        assert!(!gso_allowed(GSO_TCPV4, TUN_F_CSUM | TUN_F_TSO6));
        assert!(gso_allowed(GSO_TCPV4, TUN_F_CSUM | TUN_F_TSO4));
        assert!(!gso_allowed(GSO_TCPV4 | GSO_ECN, TUN_F_CSUM | TUN_F_TSO4));
        assert!(gso_allowed(GSO_TCPV6 | GSO_ECN, TUN_F_ALL));
        assert!(gso_allowed(GSO_UDP, TUN_F_CSUM | TUN_F_UFO));
        // Unknown types (UDP_L4 = 5 included) and ECN alone never pass.
        for odd in [2, 5, 0x7f, GSO_ECN] {
            assert!(!gso_allowed(odd, TUN_F_ALL), "{odd:#x}");
        }
    }

    #[test]
    fn transmit_headers_keep_only_negotiated_requests() {
        let partial = [1, 0, 0, 0, 0, 0, 34, 0, 6, 0, 9, 9];
        let mut h = partial;
        tx_header(&mut h, TUN_F_CSUM).unwrap();
        assert_eq!(h, [1, 0, 0, 0, 0, 0, 34, 0, 6, 0, 0, 0]);
        let mut h = partial;
        tx_header(&mut h, 0).unwrap();
        assert_eq!(h, [0; 12]);
        let mut dv = [HDR_F_DATA_VALID | 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        tx_header(&mut dv, TUN_F_ALL).unwrap();
        assert_eq!(dv, [0; 12]);
        let tso = [1, GSO_TCPV4, 54, 0, 0xa8, 5, 34, 0, 16, 0, 0, 0];
        let mut h = tso;
        tx_header(&mut h, TUN_F_CSUM | TUN_F_TSO4).unwrap();
        assert_eq!(h, tso);
        let mut h = tso;
        let err = tx_header(&mut h, TUN_F_CSUM).unwrap_err();
        assert!(
            matches!(err, NetError::GsoNotNegotiated(GSO_TCPV4)),
            "{err}"
        );
    }

    /// An Ethernet + IPv4 + UDP frame 10.0.0.1:7 -> 10.0.0.2:9 with payload `herd!`, its UDP
    /// checksum field holding the pseudo-header sum (as Linux leaves it for offload).
    fn partial_udp() -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[14 + 9] = 17;
        f[14 + 12..14 + 20].copy_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        f[34..40].copy_from_slice(&[0, 7, 0, 9, 0, 13]);
        f.extend(b"herd!");
        let pseudo = [10, 0, 0, 1, 10, 0, 0, 2, 0, 17, 0, 13];
        let sum = ones_complement_sum(&pseudo);
        f[40..42].copy_from_slice(&sum.to_be_bytes());
        f
    }

    fn udp_checksum_ok(f: &[u8]) -> bool {
        let mut pseudo = f[26..34].to_vec();
        pseudo.extend([0, 17, 0, (f.len() - 34) as u8]);
        pseudo.extend(&f[34..]);
        ones_complement_sum(&pseudo) == 0xffff
    }

    #[test]
    fn a_partial_checksum_is_finished_for_a_guest_without_guest_csum() {
        let mut frame = vec![NEEDS, 0, 0, 0, 0, 0, 34, 0, 6, 0, 0, 0];
        frame.extend(partial_udp());
        assert!(!udp_checksum_ok(&frame[12..]));
        let mut with_offload = frame.clone();
        rx_header(&mut with_offload, TUN_F_CSUM).unwrap();
        assert_eq!(&with_offload[..12], &[1, 0, 0, 0, 0, 0, 34, 0, 6, 0, 1, 0]);
        assert_eq!(&with_offload[12..], &frame[12..]);
        rx_header(&mut frame, 0).unwrap();
        assert_eq!(&frame[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert!(udp_checksum_ok(&frame[12..]));
    }

    const NEEDS: u8 = HDR_F_NEEDS_CSUM;

    #[test]
    fn received_headers_lose_what_the_guest_did_not_negotiate() {
        let mut dv = [HDR_F_DATA_VALID | 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 7, 0xaa];
        rx_header(&mut dv, TUN_F_CSUM).unwrap();
        assert_eq!(
            &dv[..12],
            &[HDR_F_DATA_VALID, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]
        );
        rx_header(&mut dv, 0).unwrap();
        assert_eq!(&dv[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        let mut tso = [NEEDS, GSO_TCPV6, 74, 0, 0xa0, 5, 54, 0, 16, 0, 0, 0, 0];
        let err = rx_header(&mut tso, TUN_F_CSUM | TUN_F_TSO4).unwrap_err();
        assert!(
            matches!(err, NetError::GsoNotNegotiated(GSO_TCPV6)),
            "{err}"
        );
        rx_header(&mut tso, TUN_F_CSUM | TUN_F_TSO6).unwrap();
        // Checksum offsets past the frame (never from a sane kernel): refused, not a panic.
        let mut bad = [NEEDS, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 1, 2];
        let err = rx_header(&mut bad, 0).unwrap_err();
        assert!(matches!(err, NetError::ChecksumOffsets { .. }), "{err}");
        assert!(matches!(
            rx_header(&mut [0; 11], 0),
            Err(NetError::NoHeader(11))
        ));
    }

    #[test]
    fn ones_complement_sums() {
        assert_eq!(ones_complement_sum(&[]), 0);
        assert_eq!(ones_complement_sum(&[0x12, 0x34, 0x56]), 0x6834);
        assert_eq!(ones_complement_sum(&[0xff, 0xff, 0x00, 0x02]), 0x0002);
        assert_eq!(ones_complement_sum(&vec![0xff; 65_536]), 0xffff);
        let mut zero_sum = [0, 0, 0xff, 0xff];
        finish_checksum(&mut zero_sum, 0, 0).unwrap();
        assert_eq!(zero_sum, [0xff, 0xff, 0xff, 0xff]);
    }
}
