//! Fuzzes virtio-net's transmit and receive chain handling with a guest that controls guest
//! memory, queue sizes and ring addresses; the backend is a fake that accepts every frame and
//! offers a fuzzer-chosen frame to receive. No panic, no access outside guest memory.
#![no_main]

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use herd_vmm::devices::virtio::net::{Backend, Net, NetSettings};
use herd_vmm::devices::virtio::{InterruptSignal, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: usize = 64 * 1024;

struct NoIrq;
impl InterruptSignal for NoIrq {
    fn signal_used_queue(&self) {}
    fn signal_config_change(&self) {}
}

/// Accepts whatever the guest sends; offers one frame to receive, then nothing.
struct FakeBackend(Option<Vec<u8>>);
impl Backend for FakeBackend {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let frame = self.0.take().ok_or(io::ErrorKind::WouldBlock)?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok(n)
    }
    fn write_frame(&mut self, _frame: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn ready_fd(&self) -> Option<RawFd> {
        None
    }
}

fn queue(size_bits: u8, desc: u8, avail: u8, used: u8) -> Option<Queue> {
    let mut q = Queue::new(256).ok()?;
    q.set_size(1 << (size_bits % 9));
    let addr = |b: u8| Some(u32::from(b) * 0x100);
    q.set_desc_table_address(addr(desc), Some(0));
    q.set_avail_ring_address(addr(avail), Some(0));
    q.set_used_ring_address(addr(used), Some(0));
    q.set_ready(true);
    Some(q)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        return;
    }
    let (head, body) = data.split_at(10);
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    mem.write_slice(&body[..body.len().min(MEM)], GuestAddress(0))
        .unwrap();
    let (Some(rx), Some(tx)) = (
        queue(head[0], head[1], head[2], head[3]),
        queue(head[4], head[5], head[6], head[7]),
    ) else {
        return;
    };
    let frame_len = usize::from(u16::from_le_bytes([head[8], head[9]]));
    let frame = body.iter().copied().cycle().take(frame_len).collect();
    let mut net = Net::new(
        Box::new(FakeBackend(Some(frame))),
        NetSettings {
            mac: None,
            mtu: None,
        },
    );
    if net
        .activate(mem, vec![rx, tx], 1u64 << 32, Arc::new(NoIrq))
        .is_ok()
    {
        let _ = net.process_queue(1);
        let _ = net.process_queue(0);
        let _ = net.process_backend(0);
    }
});
