//! Devices the guest talks to. `legacy/` holds the PC devices a microVM still needs; virtio
//! devices arrive with their own directories.

pub mod legacy;
