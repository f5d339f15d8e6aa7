//! Fuzzes virtio-net's transmit and receive chain handling with a guest that controls guest
//! memory, queue sizes and ring addresses; the backend is a fake that accepts every frame and
//! offers a fuzzer-chosen frame to receive. No panic, no access outside guest memory.
#![no_main]

#[path = "common.rs"]
mod common;

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use common::{NoIrq, memory, queue};
use herd_vmm::devices::virtio::VirtioDevice;
use herd_vmm::devices::virtio::net::{Backend, Net, NetSettings};
use libfuzzer_sys::fuzz_target;

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

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        return;
    }
    let (head, body) = data.split_at(10);
    let mem = memory(body);
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
