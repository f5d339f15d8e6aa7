//! virtio-net (device type 1): a receive queue (0) and a transmit queue (1), frames moved to
//! and from a [`Backend`] (a TAP in production, a fake in tests). Features: `VERSION_1`, `MAC`
//! when a MAC address is configured and `MTU` when an MTU is, and the checksum and
//! segmentation offloads the backend supports (`CSUM`, `GUEST_CSUM`, `GUEST_TSO4/TSO6/ECN/UFO`,
//! `HOST_TSO4/TSO6/ECN/UFO`; see [`offload`]). When the guest activates the device, the TAP is
//! told which offloads frames to the guest may carry (its acked `GUEST_*` features); a reset
//! turns them off again. Not implemented: mergeable receive buffers (`MRG_RXBUF`: a guest that
//! takes segmentation jobs posts 64 KiB "big packet" chains instead), the control queue (so no
//! runtime offload changes, promiscuous or VLAN filtering), multiqueue.
//!
//! Receive: a frame is only read from the backend when the guest has posted a buffer, so
//! frames wait in the TAP's kernel queue (and the kernel drops them when it overflows) while
//! the guest is slow. The backend fd is watched edge-triggered: after a readiness event the
//! device reads until the backend would block or the guest runs out of buffers, and a receive
//! queue notification (new buffers) resumes it. A frame too large for the guest's buffers, or
//! carrying an offload the guest did not negotiate, is dropped and counted; the buffers stay
//! available for the next frame. Frames are at most [`MAX_FRAME_LEN`] both ways (a 64 KiB
//! segmentation job).
//!
//! Hostile guests: a chain that loops, is longer than the queue, points outside guest memory
//! or has a descriptor of the wrong direction is completed with 0 bytes and counted (on
//! receive the frame is kept for the next chain); an oversized transmit chain is dropped
//! unread, and one asking for segmentation the guest did not negotiate is dropped; a broken
//! queue is reported to the transport (`DEVICE_NEEDS_RESET`). The VMM goes on.

mod chain;
pub mod offload;
#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;

use virtio_queue::QueueOwnedT;
use vm_memory::GuestMemoryMmap;

use super::{
    InterruptSignal, Queue, QueueFault, QueueT, VIRTIO_F_VERSION_1, VirtioDevice, VirtioError,
    device_type, read_config_bytes,
};
use crate::logging::RateLimit;
use crate::sys::tap::Tap;
pub use chain::{MAX_FRAME_LEN, VNET_HDR_LEN};
use offload::Negotiated;

/// Entries in each queue.
pub const NET_QUEUE_SIZE: u16 = 256;
/// Feature bit: the device reports its maximum MTU in configuration space.
pub const VIRTIO_NET_F_MTU: u32 = 3;
/// Feature bit: the device has a MAC address in configuration space.
pub const VIRTIO_NET_F_MAC: u32 = 5;
const RX: usize = 0;
const TX: usize = 1;

/// Why a frame or chain was dropped.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("descriptor chain loops, is longer than the queue or has a bad index")]
    BadChain,
    #[error("descriptor at {0:#x} has the wrong direction for its queue")]
    WrongDirection(u64),
    #[error("buffer at {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("transmit chain of at least {0} bytes is over the {MAX_FRAME_LEN}-byte limit")]
    TooBig(usize),
    #[error("{0} bytes cannot hold a virtio-net header")]
    NoHeader(usize),
    #[error("a {frame}-byte frame does not fit the guest's {room}-byte buffers")]
    TooSmall { frame: usize, room: usize },
    #[error("segmentation type {0:#x} was not negotiated")]
    GsoNotNegotiated(u8),
    #[error("checksum at {start}+{offset} is outside the {len}-byte frame")]
    ChecksumOffsets {
        start: usize,
        offset: usize,
        len: usize,
    },
    #[error("cannot access guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
    #[error("backend")]
    Backend(#[source] io::Error),
}

/// Where frames go to and come from. Frames carry the 12-byte `virtio_net_hdr_v1` in front.
pub trait Backend: Send {
    /// Reads one frame into `buf`; `WouldBlock` when none is waiting.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Sends one frame.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()>;
    /// The fd to watch for readable frames (edge-triggered), if any.
    fn ready_fd(&self) -> Option<RawFd>;
    /// The offloads (`TUN_F_*` flags) frames read from the backend can be set to carry; none
    /// unless the backend says so, and then no offload feature is offered.
    fn offloads(&self) -> u32 {
        0
    }
    /// Sets which of [`Backend::offloads`] frames read from now on may carry (0: none).
    fn set_offloads(&mut self, _flags: u32) -> io::Result<()> {
        Ok(())
    }
}

impl Backend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Tap::read_frame(self, buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        Tap::write_frame(self, frame).map(|_| ())
    }

    fn ready_fd(&self) -> Option<RawFd> {
        Some(self.as_fd().as_raw_fd())
    }

    fn offloads(&self) -> u32 {
        Tap::offloads(self)
    }

    fn set_offloads(&mut self, flags: u32) -> io::Result<()> {
        Tap::set_offloads(self, flags)
    }
}

/// Frame counters (what a metrics endpoint would show).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub rx_frames: u64,
    /// Frames dropped: too large for the guest's buffers, without a header, or with an
    /// offload the guest cannot take.
    pub rx_dropped: u64,
    /// Receive chains completed with 0 bytes because they were hostile.
    pub rx_bad_chains: u64,
    pub tx_frames: u64,
    /// Transmit chains dropped: hostile, oversized, without a header or asking for an
    /// offload that was not negotiated.
    pub tx_dropped: u64,
    /// Frames the backend refused.
    pub tx_errors: u64,
}

/// Device configuration: what the guest sees in configuration space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetSettings {
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u16>,
}

struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    irq: Arc<dyn InterruptSignal>,
}

/// Backend-side state, apart from the queues so both can be borrowed at once.
struct Io {
    backend: Box<dyn Backend>,
    frame: Vec<u8>,
    /// Length of a frame in `frame` read but not yet delivered.
    pending: Option<usize>,
    /// The backend may have frames (no `WouldBlock` since its last readiness event).
    readable: bool,
    tx_buf: Vec<u8>,
    /// What the guest's acked features allow; nothing while inactive.
    offloads: Negotiated,
    stats: NetStats,
    log: RateLimit,
}

/// The network device.
pub struct Net {
    settings: NetSettings,
    /// Offload feature bits offered (what the backend supports).
    offload_features: u64,
    active: Option<Active>,
    io: Io,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("settings", &self.settings)
            .field("active", &self.active.is_some())
            .field("stats", &self.io.stats)
            .finish()
    }
}

impl Net {
    /// An inactive network device over `backend`.
    pub fn new(backend: Box<dyn Backend>, settings: NetSettings) -> Self {
        Self {
            settings,
            offload_features: offload::offered_features(backend.offloads()),
            active: None,
            io: Io {
                backend,
                frame: vec![0; MAX_FRAME_LEN],
                pending: None,
                readable: true,
                tx_buf: Vec::new(),
                offloads: Negotiated::default(),
                stats: NetStats::default(),
                log: RateLimit::new(5),
            },
        }
    }

    /// The frame counters.
    pub fn stats(&self) -> NetStats {
        self.io.stats
    }

    fn config_bytes(&self) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[..6].copy_from_slice(&self.settings.mac.unwrap_or_default());
        c[10..].copy_from_slice(&self.settings.mtu.unwrap_or(0).to_le_bytes());
        c
    }
}

impl Io {
    fn warn(&self, what: &str, e: &NetError) {
        if self.log.allow() {
            tracing::warn!(device = "virtio-net", "{what}: {e}");
        }
    }

    /// Applies newly negotiated offloads, setting the backend's receive offloads when they
    /// change. If the backend refuses, frames just keep arriving finished (which any guest
    /// takes); the failure is logged.
    fn set_offloads(&mut self, offloads: Negotiated) {
        if offloads.to_guest != self.offloads.to_guest
            && let Err(e) = self.backend.set_offloads(offloads.to_guest)
        {
            self.warn("cannot set the backend's offloads", &NetError::Backend(e));
        }
        self.offloads = offloads;
    }

    /// The frame to deliver next, reading one if none is pending; `None` when the backend
    /// has nothing (or failed, which is logged).
    fn next_frame(&mut self) -> Option<usize> {
        if self.pending.is_none() {
            match self.backend.read_frame(&mut self.frame) {
                Ok(n) => self.pending = Some(n),
                Err(e) => {
                    self.readable = false;
                    if e.kind() != io::ErrorKind::WouldBlock {
                        self.warn("cannot read a frame", &NetError::Backend(e));
                    }
                }
            }
        }
        self.pending
    }

    /// Delivers frames while the backend has some and the guest has buffers.
    fn receive(&mut self, a: &mut Active) -> Result<bool, QueueFault> {
        let mut used = false;
        while self.pending.is_some() || self.readable {
            let Some(chain) = a.rx.iter(&a.mem).map_err(QueueFault)?.next() else {
                break;
            };
            let head = chain.head_index();
            let bufs = match chain::checked_buffers(&a.mem, chain, true, usize::MAX) {
                Ok(bufs) => bufs,
                Err(e) => {
                    self.warn("receive chain gets 0 bytes", &e);
                    self.stats.rx_bad_chains += 1;
                    a.rx.add_used(&a.mem, head, 0).map_err(QueueFault)?;
                    used = true;
                    continue;
                }
            };
            let Some(len) = self.next_frame() else {
                a.rx.go_to_previous_position();
                break;
            };
            let frame = &mut self.frame[..len];
            let written = offload::rx_header(frame, self.offloads.to_guest)
                .and_then(|()| chain::scatter_rx(&a.mem, &bufs, frame));
            match written {
                Ok(n) => {
                    self.stats.rx_frames += 1;
                    a.rx.add_used(&a.mem, head, n).map_err(QueueFault)?;
                    used = true;
                }
                Err(e) => {
                    self.warn("received frame dropped", &e);
                    self.stats.rx_dropped += 1;
                    a.rx.go_to_previous_position();
                }
            }
            self.pending = None;
        }
        Ok(used)
    }

    /// Sends every available transmit chain.
    fn transmit(&mut self, a: &mut Active) -> Result<bool, QueueFault> {
        let mut used = false;
        loop {
            let Some(chain) = a.tx.iter(&a.mem).map_err(QueueFault)?.next() else {
                return Ok(used);
            };
            let head = chain.head_index();
            let frame = chain::gather_tx(&a.mem, chain, &mut self.tx_buf).and_then(|len| {
                offload::tx_header(&mut self.tx_buf, self.offloads.from_guest).map(|()| len)
            });
            match frame {
                Ok(len) => match self.backend.write_frame(&self.tx_buf[..len]) {
                    Ok(()) => self.stats.tx_frames += 1,
                    Err(e) => {
                        self.stats.tx_errors += 1;
                        self.warn("cannot send a frame", &NetError::Backend(e));
                    }
                },
                Err(e) => {
                    self.stats.tx_dropped += 1;
                    self.warn("transmit chain dropped", &e);
                }
            }
            a.tx.add_used(&a.mem, head, 0).map_err(QueueFault)?;
            used = true;
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[NET_QUEUE_SIZE, NET_QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = 1 << VIRTIO_F_VERSION_1;
        if self.settings.mac.is_some() {
            f |= 1 << VIRTIO_NET_F_MAC;
        }
        if self.settings.mtu.is_some() {
            f |= 1 << VIRTIO_NET_F_MTU;
        }
        f | self.offload_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        acked_features: u64,
        irq: Arc<dyn InterruptSignal>,
    ) -> Result<(), VirtioError> {
        let got = queues.len();
        let [rx, tx]: [Queue; 2] = queues
            .try_into()
            .map_err(|_| VirtioError::QueueCount { expected: 2, got })?;
        self.active = Some(Active { mem, rx, tx, irq });
        self.io.readable = true;
        self.io
            .set_offloads(Negotiated::new(acked_features & self.offload_features));
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<(), VirtioError> {
        let active = match self.active.as_mut() {
            Some(a) if index == RX && a.rx.ready() => a,
            Some(a) if index == TX && a.tx.ready() => a,
            _ => return Err(VirtioError::NoSuchQueue(index)),
        };
        let used = match index {
            RX => self.io.receive(active),
            _ => self.io.transmit(active),
        }
        .map_err(|source| VirtioError::Queue { index, source })?;
        if used {
            active.irq.signal_used_queue();
        }
        Ok(())
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        self.io.backend.ready_fd().into_iter().collect()
    }

    fn process_backend(&mut self, _index: usize) -> Result<(), VirtioError> {
        self.io.readable = true;
        match self.active.as_ref() {
            Some(a) if a.rx.ready() => self.process_queue(RX),
            // Not live yet: the frames wait until the guest posts buffers.
            _ => Ok(()),
        }
    }

    fn queue_states(&self) -> Vec<super::QueueState> {
        self.active
            .iter()
            .flat_map(|a| [a.rx.state(), a.tx.state()])
            .collect()
    }

    fn reset(&mut self) {
        self.active = None;
        self.io.pending = None;
        self.io.set_offloads(Negotiated::default());
    }
}
