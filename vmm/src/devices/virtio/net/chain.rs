//! The pure frame/queue half of virtio-net: checking a descriptor chain, gathering a transmit
//! chain into one frame (with a size cap) and scattering a received frame into a receive
//! chain. No file descriptors here.
//!
//! Frames carry the 12-byte `virtio_net_hdr_v1` in front, both in the guest's buffers and on
//! the TAP (`IFF_VNET_HDR`), so a frame moves with one copy; the header is rewritten in place
//! for what was negotiated (see `offload`) before it goes either way.

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::NetError;
pub use crate::sys::tap::VNET_HDR_LEN;

/// Largest frame either way, header included: a segmentation job of up to 64 KiB at the IP
/// layer (the kernel's default GSO limit for a TAP, and IPv4's total-length limit) plus its
/// 14-byte Ethernet header; the same limit as Firecracker's. Larger transmit chains are dropped
/// unread; the receive path reads frames into a buffer this large.
pub const MAX_FRAME_LEN: usize = VNET_HDR_LEN + 14 + 65_536;

/// The buffers of a whole chain, checked: all in guest memory, all in the direction the queue
/// needs (`writable` for receive), the chain properly ended (no loop, not longer than the
/// queue, no bad index). Stops early with [`NetError::TooBig`] once the total passes `cap`.
pub fn checked_buffers(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    writable: bool,
    cap: usize,
) -> Result<Vec<(GuestAddress, u32)>, NetError> {
    let mut bufs = Vec::new();
    let mut total = 0usize;
    let mut ends = false;
    for desc in chain {
        if desc.is_write_only() != writable {
            return Err(NetError::WrongDirection(desc.addr().0));
        }
        if !GuestMemoryBackend::check_range(mem, desc.addr(), desc.len() as usize) {
            let (addr, len) = (desc.addr().0, desc.len());
            return Err(NetError::OutsideMemory { addr, len });
        }
        total += desc.len() as usize;
        if total > cap {
            return Err(NetError::TooBig(total));
        }
        bufs.push((desc.addr(), desc.len()));
        ends = !desc.has_next();
    }
    // The chain iterator stops quietly after `queue size` descriptors, at a bad index or an
    // unreadable descriptor; only a last descriptor without NEXT means the chain really ended.
    if !ends {
        return Err(NetError::BadChain);
    }
    Ok(bufs)
}

/// Copies a transmit chain into `buf` (header included, as the guest wrote it); returns the
/// frame's length. Chains over [`MAX_FRAME_LEN`] or without a whole header are refused.
pub fn gather_tx(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    buf: &mut Vec<u8>,
) -> Result<usize, NetError> {
    let bufs = checked_buffers(mem, chain, false, MAX_FRAME_LEN)?;
    let total: usize = bufs.iter().map(|&(_, len)| len as usize).sum();
    if total < VNET_HDR_LEN {
        return Err(NetError::NoHeader(total));
    }
    buf.resize(total, 0);
    let mut at = 0;
    for (addr, len) in bufs {
        let part = &mut buf[at..at + len as usize];
        mem.read_slice(part, addr).map_err(NetError::Memory)?;
        at += len as usize;
    }
    Ok(total)
}

/// Total bytes the checked buffers of a receive chain hold.
pub fn room(bufs: &[(GuestAddress, u32)]) -> usize {
    bufs.iter().map(|&(_, len)| len as usize).sum()
}

/// Writes `frame` (header included, already rewritten for the guest) into `bufs`; returns the
/// bytes written. A frame larger than the buffers hold ([`room`]) is refused.
pub fn scatter_rx(
    mem: &GuestMemoryMmap,
    bufs: &[(GuestAddress, u32)],
    frame: &[u8],
) -> Result<u32, NetError> {
    if frame.len() < VNET_HDR_LEN {
        return Err(NetError::NoHeader(frame.len()));
    }
    if frame.len() > room(bufs) {
        let (frame, room) = (frame.len(), room(bufs));
        return Err(NetError::TooSmall { frame, room });
    }
    let mut rest = frame;
    for &(addr, len) in bufs {
        if rest.is_empty() {
            break;
        }
        let n = rest.len().min(len as usize);
        mem.write_slice(&rest[..n], addr)
            .map_err(NetError::Memory)?;
        rest = &rest[n..];
    }
    Ok(frame.len() as u32)
}
