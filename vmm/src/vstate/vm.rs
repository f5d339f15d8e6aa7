//! Opens KVM and creates the VM: guest memory (mapped lazily), memory slots, the in-kernel
//! irqchip and PIT. Memory slots are registered before the irqchip exists, which on our hosts
//! makes the first slot registration about 30 times cheaper.

use std::io;

use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR};
use crate::arch::x86_64::memory_map::ram_ranges;
use crate::sys::kvm::register_memory_region;
use crate::sys::memory::name_guest_ram;

/// Errors creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("/dev/kvm does not exist: this host has no KVM (load kvm_intel, kvm_amd or kvm_pvm)")]
    KvmMissing(#[source] io::Error),
    #[error("/dev/kvm is not accessible to this user (add it to the kvm group or run as root)")]
    KvmAccess(#[source] io::Error),
    #[error("cannot open /dev/kvm")]
    KvmOpen(#[source] io::Error),
    #[error("KVM lacks a capability herd-vmm needs: {0}")]
    MissingCap(&'static str),
    #[error("KVM supports at most {max} vCPUs, {asked} asked")]
    TooManyVcpus { max: usize, asked: u8 },
    #[error("cannot create the VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("cannot allocate {0} MiB of guest memory")]
    Memory(u64, #[source] vm_memory::mmap::FromRangesError),
    #[error("cannot register guest memory slot {0} with KVM")]
    MemorySlot(u32, #[source] kvm_ioctls::Error),
    #[error("cannot set up {0}")]
    Setup(&'static str, #[source] kvm_ioctls::Error),
}

/// The capabilities herd-vmm relies on, with what each is for.
const REQUIRED_CAPS: [(Cap, &str); 6] = [
    (Cap::Irqchip, "in-kernel irqchip"),
    (Cap::Irqfd, "irqfd"),
    (Cap::Ioeventfd, "ioeventfd"),
    (Cap::Pit2, "in-kernel PIT"),
    (Cap::UserMemory, "user memory slots"),
    (Cap::ExtCpuid, "CPUID configuration"),
];

/// A VM with its memory and interrupt controllers.
#[derive(Debug)]
pub struct Vm {
    pub kvm: Kvm,
    pub fd: VmFd,
    pub memory: GuestMemoryMmap,
}

/// Opens /dev/kvm, naming why it cannot be used.
pub fn open_kvm() -> Result<Kvm, VmError> {
    Kvm::new().map_err(|e| {
        let e = io::Error::from_raw_os_error(e.errno());
        match e.kind() {
            io::ErrorKind::NotFound => VmError::KvmMissing(e),
            io::ErrorKind::PermissionDenied => VmError::KvmAccess(e),
            _ => VmError::KvmOpen(e),
        }
    })
}

impl Vm {
    /// Creates a VM with `mem_bytes` of RAM for `vcpus` vCPUs.
    pub fn new(kvm: Kvm, mem_bytes: u64, vcpus: u8) -> Result<Self, VmError> {
        if let Some((_, what)) = REQUIRED_CAPS
            .iter()
            .find(|(cap, _)| !kvm.check_extension(*cap))
        {
            return Err(VmError::MissingCap(what));
        }
        let max = kvm.get_max_vcpus();
        if usize::from(vcpus) > max {
            return Err(VmError::TooManyVcpus { max, asked: vcpus });
        }
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        let ranges: Vec<_> = ram_ranges(mem_bytes)
            .into_iter()
            .map(|(s, l)| (GuestAddress(s), l as usize))
            .collect();
        let memory = GuestMemoryMmap::from_ranges(&ranges)
            .map_err(|e| VmError::Memory(mem_bytes >> 20, e))?;
        for (slot, region) in memory.iter().enumerate() {
            if let Err(e) = name_guest_ram(region.as_ptr(), region.len() as usize) {
                tracing::debug!("guest RAM stays unnamed in smaps: {e}");
            }
            register_memory_region(&fd, slot as u32, region)
                .map_err(|e| VmError::MemorySlot(slot as u32, e))?;
        }
        fd.set_tss_address(KVM_TSS_ADDR as usize)
            .map_err(|e| VmError::Setup("the TSS address", e))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
            .map_err(|e| VmError::Setup("the identity map", e))?;
        fd.create_irq_chip()
            .map_err(|e| VmError::Setup("the in-kernel irqchip", e))?;
        // The dummy speaker port lets the kernel PIT answer port 0x61 too, which Linux polls
        // while calibrating; otherwise every poll would be an exit to us.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit)
            .map_err(|e| VmError::Setup("the in-kernel PIT", e))?;
        Ok(Self { kvm, fd, memory })
    }
}

/// Whether this host's KVM is PVM (software virtualization; guest kernel code is emulated).
pub fn host_is_pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}
