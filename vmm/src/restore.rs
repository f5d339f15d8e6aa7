//! Restoring a snapshot: the checks that decide whether this host and these host-side
//! devices can resume it ([`apply_snapshot`] before the config is validated, [`check_host`]
//! before anything is built), and the steps that put the saved state into a fresh VM.
//! Everything guest-visible comes from the snapshot; the caller only supplies host-side
//! names (TAPs, disk files, the vsock socket), which may differ from the original's.

use kvm_bindings::CpuId;

use crate::config::{MacAddr, RawVmConfig};
use crate::snapshot::identity::IdentityError;
use crate::snapshot::memory::MemoryFileError;
use crate::snapshot::{CpuModel, DeviceKind, Snapshot};
use crate::vstate::vm_state::VmStateError;

/// Why a snapshot cannot be restored here, as given.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("the snapshot was taken on a {saved} CPU; this host has a {host} CPU")]
    CpuModel { saved: CpuModel, host: CpuModel },
    #[error("the snapshot holds {states} vCPU states for {vcpus} vCPUs")]
    VcpuStates { states: usize, vcpus: u8 },
    #[error("the snapshot has {saved} {kind} device(s); {given} given")]
    DeviceCount {
        kind: &'static str,
        saved: usize,
        given: usize,
    },
    #[error("{what}: {given} given, the snapshot's is {saved}")]
    Mismatch {
        what: String,
        given: String,
        saved: String,
    },
    #[error("the snapshot's devices are [{saved}]; this restore would build [{given}]")]
    Devices { saved: String, given: String },
    #[error("cannot map the snapshot's memory file {0}")]
    Memory(std::path::PathBuf, #[source] MemoryFileError),
    #[error("cannot restore the VM's interrupt controllers and clocks")]
    VmState(#[source] VmStateError),
    #[error("cannot make the guest's new identity")]
    Identity(#[source] IdentityError),
}

fn saved_of<'a>(s: &'a Snapshot, name: &str) -> Vec<&'a DeviceKind> {
    s.devices
        .iter()
        .map(|d| &d.kind)
        .filter(|k| k.name() == name)
        .collect()
}

fn count_check(kind: &'static str, saved: usize, given: usize) -> Result<(), RestoreError> {
    if saved == given {
        return Ok(());
    }
    Err(RestoreError::DeviceCount { kind, saved, given })
}

fn mismatch(what: String, given: impl ToString, saved: impl ToString) -> RestoreError {
    RestoreError::Mismatch {
        what,
        given: given.to_string(),
        saved: saved.to_string(),
    }
}

/// Fills `raw` (host-side devices from flags) with the snapshot's machine and guest-visible
/// device settings, refusing host-side devices that do not match it.
pub fn apply_snapshot(raw: &mut RawVmConfig, s: &Snapshot) -> Result<(), RestoreError> {
    raw.vcpus = Some(u64::from(s.machine.vcpus));
    raw.memory_mib = Some(s.machine.memory_mib);
    raw.cmdline = Some(s.machine.cmdline.clone());
    raw.entropy = !saved_of(s, "virtio-rng").is_empty();
    let nets = saved_of(s, "virtio-net");
    count_check("virtio-net", nets.len(), raw.net.len())?;
    for (net, saved) in raw.net.iter_mut().zip(nets) {
        let DeviceKind::Net { mac, mtu } = saved else {
            continue;
        };
        let saved_mac = mac.map(|m| MacAddr(m).to_string());
        match (&net.guest_mac, &saved_mac) {
            (Some(given), Some(saved)) if given.eq_ignore_ascii_case(saved) => {}
            (Some(given), saved) => {
                let saved = saved.as_deref().unwrap_or("none");
                return Err(mismatch(format!("{} MAC", net.iface_id), given, saved));
            }
            (None, _) => net.guest_mac = saved_mac,
        }
        net.mtu = *mtu;
    }
    let blocks = saved_of(s, "virtio-blk");
    count_check("virtio-blk", blocks.len(), raw.drives.len())?;
    for (drive, saved) in raw.drives.iter_mut().zip(blocks) {
        let DeviceKind::Block { id, read_only } = saved else {
            continue;
        };
        if drive.read_only != *read_only {
            let ro = |r: bool| if r { "read-only" } else { "read-write" };
            let what = format!("disk {} ({})", id, drive.path.display());
            return Err(mismatch(what, ro(drive.read_only), ro(*read_only)));
        }
        drive.id = id.clone();
    }
    let vsocks = saved_of(s, "virtio-vsock");
    count_check(
        "virtio-vsock",
        vsocks.len(),
        usize::from(raw.vsock.is_some()),
    )?;
    if let (Some(v), Some(DeviceKind::Vsock { cid })) = (&raw.vsock, vsocks.first())
        && v.guest_cid != *cid
    {
        return Err(mismatch("vsock guest CID".into(), v.guest_cid, cid));
    }
    Ok(())
}

/// Checks the snapshot against this host's CPU and the devices about to be built.
pub fn check_host(
    s: &Snapshot,
    host_cpuid: &CpuId,
    kinds: &[DeviceKind],
) -> Result<(), RestoreError> {
    let host = CpuModel::from_cpuid(host_cpuid.as_slice());
    if host != s.cpu {
        return Err(RestoreError::CpuModel {
            saved: s.cpu.clone(),
            host,
        });
    }
    if s.vcpus.len() != usize::from(s.machine.vcpus) {
        return Err(RestoreError::VcpuStates {
            states: s.vcpus.len(),
            vcpus: s.machine.vcpus,
        });
    }
    let saved: Vec<&DeviceKind> = s.devices.iter().map(|d| &d.kind).collect();
    if saved.iter().copied().ne(kinds.iter()) {
        let names = |k: &mut dyn Iterator<Item = &DeviceKind>| {
            k.map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", ")
        };
        return Err(RestoreError::Devices {
            saved: names(&mut saved.into_iter()),
            given: names(&mut kinds.iter()),
        });
    }
    Ok(())
}
