//! Feeds virtio-net's chain handling both ways (`Net::process_queue` on the transmit then the
//! receive queue: checking chains, gathering frames, scattering received ones, rewriting the
//! `virtio_net_hdr_v1` for the negotiated offloads) with queues a hostile driver built, over a
//! fake backend. Input: the receive and transmit [`QueueSpec`]s, the backend's `TUN_F_*`
//! offloads, the acked feature bits 0-15, up to four frames (with their header) the backend
//! offers the guest, then the guest's data bytes.
//!
//! Must hold: no panic; every frame handed to the backend is a whole header plus at most
//! `MAX_FRAME_LEN` bytes, and its header asks for no offload the guest did not negotiate (a
//! checksum request only with CSUM, segmentation only of a negotiated kind, reserved parts
//! zero).
#![no_main]

use std::io;
use std::os::fd::RawFd;

use herd_fuzz::bytes::Reader;
use herd_fuzz::virtq::{QueueSpec, memory, no_irq};
use herd_vmm::devices::virtio::net::offload::{
    GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP, HDR_F_NEEDS_CSUM, Negotiated,
    offered_features,
};
use herd_vmm::devices::virtio::net::{Backend, MAX_FRAME_LEN, Net, NetSettings, VNET_HDR_LEN};
use herd_vmm::devices::virtio::{VIRTIO_F_VERSION_1, VirtioDevice};
use herd_vmm::sys::tap::{TUN_F_ALL, TUN_F_CSUM, TUN_F_TSO_ECN, TUN_F_TSO4, TUN_F_TSO6, TUN_F_UFO};
use libfuzzer_sys::fuzz_target;

const RX: usize = 0;
const TX: usize = 1;
/// Most frames the backend offers in one run.
const MAX_FRAMES: u8 = 4;

/// Offers its frames to the guest, then nothing; checks every frame the guest sends.
struct FakeBackend {
    to_guest: Vec<Vec<u8>>,
    offloads: u32,
    /// What the guest may ask of the host in frames it sends.
    from_guest: u32,
}

impl Backend for FakeBackend {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let frame = self.to_guest.pop().ok_or(io::ErrorKind::WouldBlock)?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok(n)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        check_sent(frame, self.from_guest);
        Ok(())
    }

    fn ready_fd(&self) -> Option<RawFd> {
        None
    }

    fn offloads(&self) -> u32 {
        self.offloads
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let (rx, tx) = (QueueSpec::decode(&mut r), QueueSpec::decode(&mut r));
    let offloads = u32::from(r.u8()) & TUN_F_ALL;
    let acked = (1 << VIRTIO_F_VERSION_1) | u64::from(r.u16());
    let frames = (0..r.u8() % (MAX_FRAMES + 1))
        .map(|_| r.blob().to_vec())
        .collect();
    let mem = memory(r.rest());
    let queues = vec![rx.place(&mem, 0), tx.place(&mem, 1)];
    let backend = FakeBackend {
        to_guest: frames,
        offloads,
        from_guest: Negotiated::new(acked & offered_features(offloads)).from_guest,
    };
    let settings = NetSettings {
        mac: Some([2, 0, 0, 0, 0, 1]),
        mtu: None,
    };
    let mut net = Net::new(Box::new(backend), settings);
    net.activate(mem, queues, acked, no_irq())
        .expect("a network device with two queues activates");
    let _ = net.process_queue(TX);
    let _ = net.process_queue(RX);
});

fn check_sent(frame: &[u8], from_guest: u32) {
    assert!((VNET_HDR_LEN..=MAX_FRAME_LEN).contains(&frame.len()));
    let hdr = &frame[..VNET_HDR_LEN];
    let csum_allowed = from_guest & TUN_F_CSUM != 0;
    assert!(hdr[0] == 0 || (hdr[0] == HDR_F_NEEDS_CSUM && csum_allowed));
    assert!(gso_negotiated(hdr[1], from_guest), "gso type {:#x}", hdr[1]);
    assert_eq!(&hdr[10..], &[0, 0], "num_buffers is zero towards the host");
}

/// Whether `gso_type` only asks for offloads in `allowed`.
fn gso_negotiated(gso_type: u8, allowed: u32) -> bool {
    let need = match gso_type & !GSO_ECN {
        GSO_NONE if gso_type == GSO_NONE => return true,
        GSO_TCPV4 => TUN_F_TSO4,
        GSO_TCPV6 => TUN_F_TSO6,
        GSO_UDP => TUN_F_UFO,
        _ => return false,
    };
    let ecn = if gso_type & GSO_ECN != 0 {
        TUN_F_TSO_ECN
    } else {
        0
    };
    allowed & (need | ecn) == need | ecn
}
