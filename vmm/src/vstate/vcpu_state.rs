//! One vCPU's architectural state as KVM keeps it, read from a paused vCPU and written into a
//! fresh one on restore: registers, special registers, XSAVE (FPU and vector state), XCRs,
//! debug registers, the LAPIC, every MSR KVM saves, pending events, the multiprocessing
//! state and the CPUID the guest saw. Plain serialisable data, so it goes into a snapshot.

use kvm_bindings::{
    CpuId, Msrs, kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

/// Errors saving or restoring a vCPU's state.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    #[error("cannot read the vCPU's {0}")]
    Get(&'static str, #[source] kvm_ioctls::Error),
    #[error("cannot write the vCPU's {0}")]
    Set(&'static str, #[source] kvm_ioctls::Error),
    #[error("KVM took {written} of the {total} saved MSRs (the first refused: {index:#x})")]
    Msrs {
        written: usize,
        total: usize,
        index: u32,
    },
    #[error("the saved CPUID has {0} entries, more than KVM allows")]
    CpuidTooLong(usize),
}

/// Everything KVM holds for one vCPU.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuState {
    pub id: u8,
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debug_regs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<kvm_msr_entry>,
    pub events: kvm_vcpu_events,
    pub mp_state: kvm_mp_state,
    /// The guest's TSC frequency, when KVM reports it: a restore on a host whose TSC runs at
    /// another rate asks KVM to scale it.
    pub tsc_khz: Option<u32>,
}

/// Most CPUID entries KVM accepts for one vCPU.
const MAX_CPUID_ENTRIES: usize = kvm_bindings::KVM_MAX_CPUID_ENTRIES;
/// `get_msrs` takes this many at a time (KVM's own limit per call is larger).
const MSR_BATCH: usize = 64;

/// The MSRs worth saving: every one KVM lists as saveable (`KVM_GET_MSR_INDEX_LIST`).
pub fn saveable_msrs(kvm: &Kvm) -> Result<Vec<u32>, VcpuStateError> {
    kvm.get_msr_index_list()
        .map(|list| list.as_slice().to_vec())
        .map_err(|e| VcpuStateError::Get("MSR list", e))
}

/// Reads the state of the (paused) vCPU `id`; `msr_indices` from [`saveable_msrs`].
pub fn save(fd: &VcpuFd, id: u8, msr_indices: &[u32]) -> Result<VcpuState, VcpuStateError> {
    let get = |what| move |e| VcpuStateError::Get(what, e);
    // The multiprocessing state first: reading it makes KVM settle pending INIT/SIPI, as
    // the API documentation asks before the other registers are read.
    let mp_state = fd.get_mp_state().map_err(get("multiprocessing state"))?;
    Ok(VcpuState {
        id,
        cpuid: fd
            .get_cpuid2(MAX_CPUID_ENTRIES)
            .map_err(get("CPUID"))?
            .as_slice()
            .to_vec(),
        regs: fd.get_regs().map_err(get("registers"))?,
        sregs: fd.get_sregs().map_err(get("special registers"))?,
        xsave: fd.get_xsave().map_err(get("XSAVE area"))?,
        xcrs: fd.get_xcrs().map_err(get("XCRs"))?,
        debug_regs: fd.get_debug_regs().map_err(get("debug registers"))?,
        lapic: fd.get_lapic().map_err(get("LAPIC"))?,
        msrs: read_msrs(fd, msr_indices)?,
        events: fd.get_vcpu_events().map_err(get("pending events"))?,
        mp_state,
        tsc_khz: fd.get_tsc_khz().ok(),
    })
}

/// Reads every MSR of `indices` that KVM will read, skipping the ones it refuses (a list
/// from KVM can name MSRs this vCPU's CPUID does not offer).
fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let batch = &rest[..rest.len().min(MSR_BATCH)];
        let entries: Vec<_> = batch
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).expect("a batch fits");
        let read = fd
            .get_msrs(&mut msrs)
            .map_err(|e| VcpuStateError::Get("MSRs", e))?;
        out.extend_from_slice(&msrs.as_slice()[..read]);
        // KVM stops at the first MSR it refuses: skip that one and go on after it.
        let consumed = if read < batch.len() { read + 1 } else { read };
        rest = &rest[consumed..];
    }
    Ok(out)
}

/// Writes `state` into a freshly created vCPU, in the order KVM needs: CPUID before anything
/// that depends on the features it offers, the LAPIC before MSRs (the TSC deadline MSR needs
/// the LAPIC's mode), events last.
pub fn restore(fd: &VcpuFd, state: &VcpuState) -> Result<(), VcpuStateError> {
    let set = |what| move |e| VcpuStateError::Set(what, e);
    if state.cpuid.len() > MAX_CPUID_ENTRIES {
        return Err(VcpuStateError::CpuidTooLong(state.cpuid.len()));
    }
    let cpuid = CpuId::from_entries(&state.cpuid)
        .map_err(|_| VcpuStateError::CpuidTooLong(state.cpuid.len()))?;
    fd.set_cpuid2(&cpuid).map_err(set("CPUID"))?;
    if let Some(khz) = state.tsc_khz
        && fd.get_tsc_khz().ok() != Some(khz)
    {
        fd.set_tsc_khz(khz).map_err(set("TSC frequency"))?;
    }
    fd.set_mp_state(state.mp_state)
        .map_err(set("multiprocessing state"))?;
    fd.set_regs(&state.regs).map_err(set("registers"))?;
    fd.set_sregs(&state.sregs)
        .map_err(set("special registers"))?;
    crate::sys::kvm::set_xsave(fd, &state.xsave).map_err(set("XSAVE area"))?;
    fd.set_xcrs(&state.xcrs).map_err(set("XCRs"))?;
    fd.set_debug_regs(&state.debug_regs)
        .map_err(set("debug registers"))?;
    fd.set_lapic(&state.lapic).map_err(set("LAPIC"))?;
    write_msrs(fd, &state.msrs)?;
    fd.set_vcpu_events(&state.events)
        .map_err(set("pending events"))?;
    Ok(())
}

fn write_msrs(fd: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<(), VcpuStateError> {
    for batch in entries.chunks(MSR_BATCH) {
        let msrs = Msrs::from_entries(batch).expect("a batch fits");
        let written = fd
            .set_msrs(&msrs)
            .map_err(|e| VcpuStateError::Set("MSRs", e))?;
        if written != batch.len() {
            return Err(VcpuStateError::Msrs {
                written,
                total: batch.len(),
                index: batch[written].index,
            });
        }
    }
    Ok(())
}
