//! The only home of raw system calls (`unsafe`): process clocks, signal delivery into the
//! event loop, KVM memory-slot registration, and the host's entropy (`getrandom`).
//! Everything above uses these safe wrappers.

pub mod kvm;
pub mod memory;
pub mod random;
pub mod signal;
pub mod time;
