//! Snapshots: what a paused VM is made of, as data ([`Snapshot`]), and the directory that
//! holds it (`state` and `memory`, see `docs/snapshots.md`). Saving writes both files under a
//! temporary directory name and renames it into place, so a snapshot is complete or absent;
//! loading refuses a snapshot this herd-vmm cannot resume faithfully (another format version,
//! another CPU model, a truncated or altered file) before anything is built.

pub mod file;
pub mod identity;
pub mod memory;

use serde::{Deserialize, Serialize};

use crate::devices::legacy::serial::SerialSnapshot;
use crate::devices::virtio::mmio::state::SavedTransport;
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm_state::VmState;

pub use file::{SnapshotError, read_state, write};

/// The version of the state file's layout; any change to the types below bumps it.
pub const FORMAT_VERSION: u32 = 1;
/// The state file's name inside a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The memory file's name inside a snapshot directory.
pub const MEMORY_FILE: &str = "memory";

/// A paused VM.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// The herd-vmm that wrote it (for people; compatibility is the format version).
    pub written_by: String,
    pub machine: Machine,
    /// The host CPU it ran on: its vCPUs' saved CPUID and registers assume that CPU.
    pub cpu: CpuModel,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub console: SerialSnapshot,
    pub control: SerialSnapshot,
    /// The virtio devices in slot order.
    pub devices: Vec<SavedDevice>,
}

/// The shape of the VM: fixed for its life, so a restore takes it from the snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    pub vcpus: u8,
    pub memory_mib: u64,
    /// The command line it booted with (before the device announcements).
    pub cmdline: String,
}

/// A virtio device: what it is (so the restore can rebuild the same one on new host
/// resources) and its transport state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedDevice {
    pub kind: DeviceKind,
    pub transport: SavedTransport,
}

/// The guest-visible identity of a virtio device: what a restore must reproduce.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", tag = "type")]
pub enum DeviceKind {
    Block {
        id: String,
        read_only: bool,
    },
    Rng,
    Net {
        mac: Option<[u8; 6]>,
        mtu: Option<u16>,
    },
    Vsock {
        cid: u64,
    },
}

impl DeviceKind {
    /// How the device is named in errors and on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            DeviceKind::Block { .. } => "virtio-blk",
            DeviceKind::Rng => "virtio-rng",
            DeviceKind::Net { .. } => "virtio-net",
            DeviceKind::Vsock { .. } => "virtio-vsock",
        }
    }
}

/// A host CPU model, from the CPUID KVM reports (vendor, leaf 0; signature, leaf 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuModel {
    pub vendor: String,
    pub family: u32,
    pub model: u32,
    pub stepping: u32,
}

impl std::fmt::Display for CpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} family {:#x} model {:#x} stepping {}",
            self.vendor, self.family, self.model, self.stepping
        )
    }
}

impl CpuModel {
    /// The model KVM's supported CPUID describes (the host's own vendor and signature).
    pub fn from_cpuid(entries: &[kvm_bindings::kvm_cpuid_entry2]) -> Self {
        let leaf = |f: u32| entries.iter().find(|e| e.function == f && e.index == 0);
        let vendor = leaf(0).map_or_else(String::new, |e| {
            let bytes: Vec<u8> = [e.ebx, e.edx, e.ecx]
                .iter()
                .flat_map(|r| r.to_le_bytes())
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        });
        let eax = leaf(1).map_or(0, |e| e.eax);
        let base_family = (eax >> 8) & 0xf;
        let family = match base_family {
            0xf => base_family + ((eax >> 20) & 0xff),
            f => f,
        };
        let model = match base_family {
            0x6 | 0xf => ((eax >> 12) & 0xf0) | ((eax >> 4) & 0xf),
            _ => (eax >> 4) & 0xf,
        };
        Self {
            vendor,
            family,
            model,
            stepping: eax & 0xf,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn cpu_model_decodes_vendor_and_the_extended_signature() {
        let vendor = kvm_cpuid_entry2 {
            function: 0,
            ebx: u32::from_le_bytes(*b"Genu"),
            edx: u32::from_le_bytes(*b"ineI"),
            ecx: u32::from_le_bytes(*b"ntel"),
            ..Default::default()
        };
        // Family 6, extended model 0x5, model 0x5, stepping 7: a Cascade Lake.
        let signature = kvm_cpuid_entry2 {
            function: 1,
            eax: 0x0005_0657,
            ..Default::default()
        };
        let m = CpuModel::from_cpuid(&[vendor, signature]);
        assert_eq!(m.vendor, "GenuineIntel");
        assert_eq!((m.family, m.model, m.stepping), (6, 0x55, 7));
        // AMD: base family 0xf plus extended family 0x8 is 0x17.
        let amd = kvm_cpuid_entry2 {
            function: 1,
            eax: 0x0083_0f10,
            ..Default::default()
        };
        let m = CpuModel::from_cpuid(&[amd]);
        assert_eq!((m.family, m.model, m.stepping), (0x17, 0x31, 0));
    }
}
