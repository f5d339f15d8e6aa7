//! Feeds virtio-rng's request handling (`Rng::process_queue`: checking each chain, filling its
//! buffers with host entropy) with a queue a hostile driver built: the input is a
//! [`QueueSpec`] followed by the guest's data bytes (see `herd_fuzz::virtq`).
//!
//! Must hold: no panic, whatever the descriptors say; a broken queue is an error, not a crash.
#![no_main]

use herd_fuzz::bytes::Reader;
use herd_fuzz::virtq::{QueueSpec, memory, no_irq};
use herd_vmm::devices::virtio::rng::Rng;
use herd_vmm::devices::virtio::{VIRTIO_F_VERSION_1, VirtioDevice};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let spec = QueueSpec::decode(&mut r);
    let mem = memory(r.rest());
    let queue = spec.place(&mem, 0);
    let mut rng = Rng::new();
    rng.activate(mem, vec![queue], 1 << VIRTIO_F_VERSION_1, no_irq())
        .expect("an rng with one queue activates");
    // A hostile queue may make this fail (the transport then sets DEVICE_NEEDS_RESET).
    let _ = rng.process_queue(0);
});
