//! herd: builds bootable-app images and runs them as disposable microVMs.
//!
//! `image` turns an app into an immutable OCI image and keeps the local store; `run` boots one
//! instance of an image in `herd-vmm` with its configuration appended at boot. The agent
//! daemon comes with its own issue. This crate never links the VMM: it spawns `herd-vmm`.

#![forbid(unsafe_code)]

pub mod agent;
pub mod confine;
pub mod cpio;
pub mod embedded;
pub mod fleet;
pub mod image;
pub mod run;
pub mod store;
