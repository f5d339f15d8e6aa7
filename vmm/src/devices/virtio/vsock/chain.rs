//! Descriptor chains of the vsock queues, checked before use: all buffers in guest memory,
//! all in the queue's direction, the chain properly ended, a size cap. Transmit chains are
//! gathered into one buffer (header then payload), packets scattered into receive chains.

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::VsockError;
use super::packet::{HDR_LEN, MAX_PAYLOAD};

/// The buffers of a whole chain, checked (`writable` for the receive queue); stops with
/// [`VsockError::TooBig`] once the total passes `cap`.
pub fn checked(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    writable: bool,
    cap: usize,
) -> Result<Vec<(GuestAddress, u32)>, VsockError> {
    let mut bufs = Vec::new();
    let mut total = 0usize;
    let mut ends = false;
    for desc in chain {
        if desc.is_write_only() != writable {
            return Err(VsockError::WrongDirection(desc.addr().0));
        }
        if !GuestMemoryBackend::check_range(mem, desc.addr(), desc.len() as usize) {
            let (addr, len) = (desc.addr().0, desc.len());
            return Err(VsockError::OutsideMemory { addr, len });
        }
        total = total.saturating_add(desc.len() as usize);
        if total > cap {
            return Err(VsockError::TooBig(total));
        }
        bufs.push((desc.addr(), desc.len()));
        ends = !desc.has_next();
    }
    // The iterator stops quietly at a loop, a bad index or after `queue size` descriptors;
    // only a last descriptor without NEXT means the chain really ended.
    if !ends {
        return Err(VsockError::BadChain);
    }
    Ok(bufs)
}

/// Total bytes of checked buffers.
pub fn room(bufs: &[(GuestAddress, u32)]) -> usize {
    bufs.iter().map(|&(_, len)| len as usize).sum()
}

/// Copies a transmit chain (at most a header and [`MAX_PAYLOAD`]) into `buf`; returns its
/// length.
pub fn gather(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    buf: &mut [u8],
) -> Result<usize, VsockError> {
    let bufs = checked(mem, chain, false, (HDR_LEN + MAX_PAYLOAD).min(buf.len()))?;
    let mut at = 0;
    for (addr, len) in bufs {
        let part = &mut buf[at..at + len as usize];
        mem.read_slice(part, addr).map_err(VsockError::Memory)?;
        at += len as usize;
    }
    Ok(at)
}

/// Writes `packet` into checked receive buffers that hold it; returns the bytes written.
pub fn scatter(
    mem: &GuestMemoryMmap,
    bufs: &[(GuestAddress, u32)],
    packet: &[u8],
) -> Result<u32, VsockError> {
    let mut rest = packet;
    for &(addr, len) in bufs {
        if rest.is_empty() {
            break;
        }
        let n = rest.len().min(len as usize);
        mem.write_slice(&rest[..n], addr)
            .map_err(VsockError::Memory)?;
        rest = &rest[n..];
    }
    Ok((packet.len() - rest.len()) as u32)
}
