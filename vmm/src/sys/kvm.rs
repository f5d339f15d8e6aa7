//! The KVM calls whose safety depends on us: registering guest memory, writing XSAVE state.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryRegion, GuestRegionMmap};

/// Maps `region` into the guest as memory slot `slot`.
pub fn register_memory_region(
    vm: &VmFd,
    slot: u32,
    region: &GuestRegionMmap,
) -> Result<(), kvm_ioctls::Error> {
    let mem = kvm_userspace_memory_region {
        slot,
        flags: 0,
        guest_phys_addr: region.start_addr().0,
        memory_size: region.len(),
        userspace_addr: region.as_ptr() as u64,
    };
    // SAFETY: the host range is a live mapping of exactly `memory_size` bytes owned by the
    // guest memory object, which the VMM keeps alive until the process exits (after the VM
    // stops running); no other slot covers the same guest range.
    unsafe { vm.set_user_memory_region(mem) }
}

/// Writes a vCPU's XSAVE area (the legacy 4 KiB `KVM_SET_XSAVE`).
pub fn set_xsave(
    vcpu: &kvm_ioctls::VcpuFd,
    xsave: &kvm_bindings::kvm_xsave,
) -> Result<(), kvm_ioctls::Error> {
    // SAFETY: `xsave` is a whole 4 KiB `kvm_xsave`, the size KVM_SET_XSAVE reads; the area
    // was read by KVM_GET_XSAVE of the same size, so no dynamically enabled feature (AMX)
    // state lies beyond it that KVM would read past the struct.
    unsafe { vcpu.set_xsave(xsave) }
}
