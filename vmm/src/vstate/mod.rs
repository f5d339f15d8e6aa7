//! KVM state: the VM (memory slots, in-kernel irqchip and PIT) and its vCPUs, and the
//! serialisable state of both that snapshots carry.

pub mod cpuid_cache;
pub mod vcpu;
pub mod vcpu_state;
pub mod vm;
pub mod vm_state;
