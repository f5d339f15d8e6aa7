//! Fuzzes virtio-rng's request handling with a guest that controls everything: guest memory
//! (descriptor table, avail ring, buffers) comes from the fuzzer input, and so do the queue
//! size and ring addresses. The device must complete or reject every chain without panicking
//! and without touching memory outside the guest's.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::Arc;

use common::{NoIrq, memory, queue};
use herd_vmm::devices::virtio::VirtioDevice;
use herd_vmm::devices::virtio::rng::Rng;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (head, body) = data.split_at(8);
    let mem = memory(body);
    let Some(queue) = queue(head[0], head[1], head[2], head[3]) else {
        return;
    };
    let mut rng = Rng::new();
    let features = 1u64 << 32;
    if rng
        .activate(mem, vec![queue], features, Arc::new(NoIrq))
        .is_ok()
    {
        let _ = rng.process_queue(0);
    }
});
