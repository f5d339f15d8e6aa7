//! What herd-vmm takes from the host to build a VM, all opened up front: KVM and its CPUID,
//! the kernel and initrd files (or a snapshot's memory file and the new identity), the disks, the TAP devices, and the route from stop signals
//! to the event loop. Opening them first means a jailed herd-vmm ([`crate::jail`]) can lose
//! sight of the host before it builds anything, and a missing file is reported before any
//! work is done.

use std::fs::File;
use std::path::Path;

use kvm_bindings::CpuId;
use kvm_ioctls::Kvm;
use vmm_sys_util::eventfd::EventFd;

use crate::config::{RestoreSource, VmConfig};
use crate::devices::virtio::block::Disk;
use crate::snapshot::MEMORY_FILE;
use crate::snapshot::identity::{IdentityMembers, read_identity};
use crate::sys::signal::forward_stop_signals;
use crate::sys::tap::Tap;
use crate::vmm::{VmmError, eventfd};
use crate::vstate::vcpu::supported_cpuid;
use crate::vstate::vm::open_kvm;

/// The host resources one VM is built from.
#[derive(Debug)]
pub struct HostInputs {
    pub kvm: Kvm,
    /// What KVM supports (from `--cpuid-cache` when it holds it).
    pub cpuid: CpuId,
    /// The kernel to boot (none when restoring).
    pub kernel: Option<File>,
    pub initrds: Vec<File>,
    /// When restoring: the snapshot's memory file and the identity to tell the guest.
    pub restore: Option<RestoreInputs>,
    /// One per drive, in the config's order.
    pub disks: Vec<Disk>,
    /// One per network interface, in the config's order.
    pub taps: Vec<Tap>,
    /// Written by the SIGTERM/SIGINT handler, which is installed from here on.
    pub stop_signals: EventFd,
}

/// What a restore reads from the host besides the snapshot's state.
#[derive(Debug)]
pub struct RestoreInputs {
    pub memory: File,
    pub identity: Option<IdentityMembers>,
}

impl HostInputs {
    /// Opens everything `config` names on the host; the first failure names its culprit.
    pub fn open(config: &VmConfig) -> Result<Self, VmmError> {
        let stop_signals = eventfd("signal")?;
        forward_stop_signals(&stop_signals).map_err(VmmError::Signals)?;
        let (kernel, restore) = match &config.restore {
            None => (Some(open_input("kernel", &config.kernel)?), None),
            Some(source) => (None, Some(open_restore(source)?)),
        };
        let initrds = (config.initrds.iter())
            .map(|p| open_input("initrd", p))
            .collect::<Result<Vec<_>, _>>()?;
        let disks = (config.drives.iter())
            .map(|d| {
                Disk::open(&d.path, d.read_only, d.cache, &d.id).map_err(|source| VmmError::Drive {
                    id: d.id.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let taps = (config.net.iter())
            .map(|net| {
                Tap::open(&net.host_dev_name).map_err(|source| VmmError::Tap {
                    iface: net.iface_id.clone(),
                    tap: net.host_dev_name.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let kvm = open_kvm()?;
        let cpuid = supported_cpuid(&kvm, config.cpuid_cache.as_deref())?;
        Ok(Self {
            kvm,
            cpuid,
            kernel,
            initrds,
            restore,
            disks,
            taps,
            stop_signals,
        })
    }
}

fn open_restore(source: &RestoreSource) -> Result<RestoreInputs, VmmError> {
    let memory = open_input("snapshot memory", &source.dir.join(MEMORY_FILE))?;
    let identity = (source.identity.as_deref())
        .map(read_identity)
        .transpose()
        .map_err(VmmError::Identity)?;
    Ok(RestoreInputs { memory, identity })
}

fn open_input(what: &'static str, path: &Path) -> Result<File, VmmError> {
    let file = File::open(path).map_err(|source| VmmError::OpenFile {
        what,
        path: path.to_owned(),
        source,
    })?;
    let is_file = file.metadata().map(|m| m.is_file()).unwrap_or(false);
    if !is_file {
        return Err(VmmError::NotAFile {
            what,
            path: path.to_owned(),
        });
    }
    Ok(file)
}
