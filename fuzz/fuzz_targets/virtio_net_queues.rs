//! Fuzzes virtio-net's transmit and receive chain handling with a guest that controls guest
//! memory, queue sizes, ring addresses and the offload features acked; the backend is a fake
//! that supports every offload, accepts every frame and offers a fuzzer-chosen frame (header
//! included) to receive. No panic, no access outside guest memory.
#![no_main]

#[path = "common.rs"]
mod common;

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use common::{NoIrq, memory, queue};
use herd_vmm::devices::virtio::VirtioDevice;
use herd_vmm::devices::virtio::net::{Backend, Net, NetSettings};
use herd_vmm::sys::tap::TUN_F_ALL;
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
    fn offloads(&self) -> u32 {
        TUN_F_ALL
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let (head, body) = data.split_at(12);
    let mem = memory(body);
    let (Some(rx), Some(tx)) = (
        queue(head[0], head[1], head[2], head[3]),
        queue(head[4], head[5], head[6], head[7]),
    ) else {
        return;
    };
    let frame_len = usize::from(u16::from_le_bytes([head[8], head[9]]));
    let frame = body.iter().copied().cycle().take(frame_len).collect();
    // Any subset of the offered offload features (bits 0-14; the rest are not offered).
    let acked = 1u64 << 32 | u64::from(u16::from_le_bytes([head[10], head[11]]) & 0x7f83);
    let mut net = Net::new(
        Box::new(FakeBackend(Some(frame))),
        NetSettings {
            mac: None,
            mtu: None,
        },
    );
    if net
        .activate(mem, vec![rx, tx], acked, Arc::new(NoIrq))
        .is_ok()
    {
        let _ = net.process_queue(1);
        let _ = net.process_queue(0);
        let _ = net.process_backend(0);
    }
});
