//! Registers guest memory with KVM: the one KVM call whose safety depends on us.

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
