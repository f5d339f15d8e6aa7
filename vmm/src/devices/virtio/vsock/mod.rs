//! virtio-vsock (device type 19): stream sockets between the guest and host processes, with
//! Firecracker's host-side convention (see [`muxer`]). Queues: receive (0, packets to the
//! guest), transmit (1, packets from the guest) and event (2: after a restore from a snapshot
//! the guest is sent a transport reset, since its connections' host ends are gone).
//! Configuration space: the guest's CID (`u64`).
//!
//! Hostile guests: a transmit chain that loops, is longer than the queue, points outside
//! guest memory, has a writable descriptor or is over the size cap is dropped and counted;
//! a header that does not parse or names the wrong CIDs is dropped, one with an unknown type
//! or operation gets a `RST`; a stream whose guest overruns its credit is reset. A receive
//! chain too small for a header or otherwise hostile is completed with 0 bytes. Replies the
//! guest does not take wait in a bounded queue, and the transmit queue waits while it is
//! full. A broken queue is reported to the transport (`DEVICE_NEEDS_RESET`).

mod chain;
pub mod conn;
pub mod muxer;
pub mod packet;
#[cfg(test)]
mod tests;

use std::os::fd::RawFd;
use std::path::Path;
use std::sync::Arc;

use virtio_queue::QueueOwnedT;
use vm_memory::GuestMemoryMmap;

use super::{
    InterruptSignal, Queue, QueueFault, QueueT, VIRTIO_F_VERSION_1, VirtioDevice, VirtioError,
    device_type, read_config_bytes,
};
use crate::logging::RateLimit;
pub use muxer::{Muxer, MuxerError};
pub use packet::{HDR_LEN, Header, MAX_PAYLOAD, Op, PacketError};

/// Entries in each queue.
pub const VSOCK_QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
const EVENT: usize = 2;

/// Why a chain was dropped.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("descriptor chain loops, is longer than the queue or has a bad index")]
    BadChain,
    #[error("descriptor at {0:#x} has the wrong direction for its queue")]
    WrongDirection(u64),
    #[error("buffer at {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("chain of at least {0} bytes is over the limit")]
    TooBig(usize),
    #[error("bad packet")]
    Packet(#[source] PacketError),
    #[error("cannot access guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
}

/// Packet counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsockStats {
    pub rx_packets: u64,
    /// Receive chains completed with 0 bytes because they were hostile.
    pub rx_bad_chains: u64,
    pub tx_packets: u64,
    /// Transmit chains or packets dropped (hostile chain or bad header).
    pub tx_dropped: u64,
}

struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    event: Queue,
    irq: Arc<dyn InterruptSignal>,
}

/// The vsock device.
pub struct Vsock {
    cid: u64,
    muxer: Muxer,
    active: Option<Active>,
    buf: Vec<u8>,
    stats: VsockStats,
    log: RateLimit,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("cid", &self.cid)
            .field("muxer", &self.muxer)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Vsock {
    /// A device for the guest with CID `cid`, listening for host clients on `uds_path`.
    pub fn new(cid: u64, uds_path: &Path) -> Result<Self, MuxerError> {
        Ok(Self {
            cid,
            muxer: Muxer::new(cid, uds_path)?,
            active: None,
            buf: vec![0; HDR_LEN + MAX_PAYLOAD],
            stats: VsockStats::default(),
            log: RateLimit::new(5),
        })
    }

    /// The packet counters.
    pub fn stats(&self) -> VsockStats {
        self.stats
    }

    /// Streams open now.
    pub fn conn_count(&self) -> usize {
        self.muxer.conn_count()
    }

    /// Takes every transmit chain (while replies have room); returns whether any was used.
    fn transmit(&mut self) -> Result<bool, QueueFault> {
        let mut used = false;
        let Some(a) = self.active.as_mut() else {
            return Ok(false);
        };
        while !self.muxer.backed_up() {
            let Some(chain) = a.tx.iter(&a.mem).map_err(QueueFault)?.next() else {
                break;
            };
            let head = chain.head_index();
            let cid = self.cid;
            let parsed = chain::gather(&a.mem, chain, &mut self.buf).and_then(|n| {
                packet::parse_packet(&self.buf[..n], cid).map_err(VsockError::Packet)
            });
            match parsed {
                Ok((hdr, op, payload)) => {
                    self.stats.tx_packets += 1;
                    self.muxer.from_guest(&hdr, op, payload);
                }
                Err(e) => {
                    self.stats.tx_dropped += 1;
                    if let VsockError::Packet(p) = &e
                        && p.wants_reset()
                        && let Ok(h) = Header::parse(&self.buf)
                    {
                        self.muxer.refuse(&h);
                    }
                    if self.log.allow() {
                        tracing::warn!(device = "virtio-vsock", "packet dropped: {e}");
                    }
                }
            }
            a.tx.add_used(&a.mem, head, 0).map_err(QueueFault)?;
            used = true;
        }
        Ok(used)
    }

    /// Fills receive chains with replies and stream data; returns whether any was used.
    fn receive(&mut self) -> Result<bool, QueueFault> {
        let mut used = false;
        let Some(a) = self.active.as_mut() else {
            return Ok(false);
        };
        while let Some(chain) = a.rx.iter(&a.mem).map_err(QueueFault)?.next() {
            let head = chain.head_index();
            let bufs = match chain::checked(&a.mem, chain, true, usize::MAX) {
                Ok(b) if chain::room(&b) >= HDR_LEN => b,
                Ok(_) | Err(_) => {
                    self.stats.rx_bad_chains += 1;
                    a.rx.add_used(&a.mem, head, 0).map_err(QueueFault)?;
                    used = true;
                    continue;
                }
            };
            let max = (chain::room(&bufs) - HDR_LEN).min(MAX_PAYLOAD);
            let Some(hdr) = self
                .muxer
                .next_packet(&mut self.buf[HDR_LEN..HDR_LEN + max])
            else {
                a.rx.go_to_previous_position();
                break;
            };
            self.buf[..HDR_LEN].copy_from_slice(&hdr.to_bytes());
            let n = HDR_LEN + hdr.len as usize;
            let written = chain::scatter(&a.mem, &bufs, &self.buf[..n]).unwrap_or(0);
            self.stats.rx_packets += 1;
            a.rx.add_used(&a.mem, head, written).map_err(QueueFault)?;
            used = true;
        }
        Ok(used)
    }

    /// Puts a `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` in the guest's first event buffer (a driver
    /// that posted none gets nothing) and interrupts it.
    fn send_transport_reset(&mut self) -> Result<(), QueueFault> {
        const TRANSPORT_RESET: u32 = 0;
        let Some(a) = self.active.as_mut().filter(|a| a.event.ready()) else {
            return Ok(());
        };
        let Some(chain) = a.event.iter(&a.mem).map_err(QueueFault)?.next() else {
            return Ok(());
        };
        let head = chain.head_index();
        // A hostile event chain is completed with 0 bytes, like a hostile receive chain.
        let written = chain::checked(&a.mem, chain, true, usize::MAX)
            .and_then(|b| chain::scatter(&a.mem, &b, &TRANSPORT_RESET.to_le_bytes()))
            .unwrap_or(0);
        a.event
            .add_used(&a.mem, head, written)
            .map_err(QueueFault)?;
        a.irq.signal_used_queue();
        Ok(())
    }

    /// Moves everything that can move both ways, then interrupts the guest if it got work.
    fn pump(&mut self) -> Result<(), VirtioError> {
        let mut used = false;
        loop {
            let tx = self
                .transmit()
                .map_err(|source| VirtioError::Queue { index: TX, source })?;
            let rx = self
                .receive()
                .map_err(|source| VirtioError::Queue { index: RX, source })?;
            used |= tx || rx;
            // Transmit waited for room in the reply queue that receive just made.
            if !tx || self.muxer.backed_up() {
                break;
            }
        }
        if used && let Some(a) = &self.active {
            a.irq.signal_used_queue();
        }
        Ok(())
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[VSOCK_QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        _acked_features: u64,
        irq: Arc<dyn InterruptSignal>,
    ) -> Result<(), VirtioError> {
        let got = queues.len();
        let [rx, tx, event]: [Queue; 3] = queues
            .try_into()
            .map_err(|_| VirtioError::QueueCount { expected: 3, got })?;
        self.active = Some(Active {
            mem,
            rx,
            tx,
            event,
            irq,
        });
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<(), VirtioError> {
        match self.active.as_ref() {
            Some(a) if index == RX && a.rx.ready() => {}
            Some(a) if index == TX && a.tx.ready() => {}
            Some(_) if index == EVENT => return Ok(()),
            _ => return Err(VirtioError::NoSuchQueue(index)),
        }
        self.pump()
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        vec![self.muxer.fd()]
    }

    fn process_backend(&mut self, _index: usize) -> Result<(), VirtioError> {
        self.muxer.process_host_events();
        match self.active.as_ref() {
            Some(a) if a.rx.ready() && a.tx.ready() => self.pump(),
            // Not live yet: replies and data wait for the guest.
            _ => Ok(()),
        }
    }

    fn queue_states(&self) -> Vec<super::QueueState> {
        self.active
            .iter()
            .flat_map(|a| [a.rx.state(), a.tx.state(), a.event.state()])
            .collect()
    }

    fn restored(&mut self) {
        self.muxer.skip_stale_ports();
        if let Err(e) = self.send_transport_reset()
            && self.log.allow()
        {
            tracing::warn!(
                device = "virtio-vsock",
                "cannot send the transport reset: {e}"
            );
        }
    }

    fn reset(&mut self) {
        self.active = None;
        self.muxer.reset();
    }
}
