//! The only home of raw system calls (`unsafe`): process clocks, signal delivery into the
//! event loop, kicking vCPUs out of `KVM_RUN`, KVM memory-slot registration and XSAVE, the
//! host's entropy (`getrandom`), TAP devices, and the jail's namespaces, mounts, credentials
//! and limits.
//! Everything above uses these safe wrappers.

pub mod jail;
pub mod kick;
pub mod kvm;
pub mod memory;
pub mod random;
pub mod signal;
pub mod tap;
pub mod time;
