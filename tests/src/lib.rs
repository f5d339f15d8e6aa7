//! herd-tests: end-to-end tests of herd-vmm (in `tests/`), and the guest images they boot.
//!
//! `build.rs` builds the probe guest (`resources/probe`); [`probe`] says where its images are,
//! [`image`] is the ELF/bzImage plumbing that made them.

pub mod guest_kernel;
pub mod image;
pub mod netns;
pub mod probe;
pub mod vm;
