//! The only home of raw system calls (`unsafe`): process clocks, signal delivery into the
//! event loop, and KVM memory-slot registration. Everything above uses these safe wrappers.

pub mod kvm;
pub mod memory;
pub mod signal;
pub mod time;
