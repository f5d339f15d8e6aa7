//! Devices the guest talks to. `legacy/` holds the PC devices a microVM still needs;
//! `virtio/` the virtio-mmio transport and the virtio devices behind it.

pub mod legacy;
pub mod virtio;
