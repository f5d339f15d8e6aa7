//! KVM state: the VM (memory slots, in-kernel irqchip and PIT) and its vCPUs.

pub mod cpuid_cache;
pub mod vcpu;
pub mod vm;
