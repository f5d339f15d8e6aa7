//! Starting one instance: its directory, configuration archive, network interface and the
//! herd-vmm command line, from the service's spec and the image it resolved to. Everything an
//! instance needs lives in its directory, so herd-vmm never depends on the agent after start.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use herd_proto::{InstanceConfig, NetworkConfig};

use crate::agent::cgroup::{CgroupError, Cgroups, Limits};
use crate::agent::network::{self, Bridge, NetworkError};
use crate::fleet::{NetworkMode, ServiceState};
use crate::run::{BootPlan, PVM_CMDLINE, RunError, instance_archive, with_rootfs};
use crate::store::ResolvedImage;

/// Errors preparing an instance.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot create {0}")]
    Dir(PathBuf, #[source] std::io::Error),
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("cannot build the instance configuration")]
    Archive(#[source] RunError),
    #[error("the service wants a network but the agent runs without one (--bridge none)")]
    NoBridge,
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("all {0} jail uids are in use")]
    UidsExhausted(u32),
    #[error("cannot hand {0} to the jail's user")]
    Chown(PathBuf, #[source] std::io::Error),
    #[error("cannot create the instance's cgroup")]
    Cgroup(#[from] CgroupError),
}

/// What the agent passes to every launch.
#[derive(Clone, Debug)]
pub struct LaunchSettings {
    /// Instance directories are created under this.
    pub instances_dir: PathBuf,
    pub bridge: Option<Bridge>,
    /// Per-file cap of the console log (herd-vmm rotates to `console.log.1`).
    pub console_log_max_bytes: u64,
    /// Add the kernel words a stock Linux guest needs on a PVM host.
    pub pvm: bool,
    /// herd-vmm's `--cpuid-cache`: KVM's supported CPUID is asked once per host boot.
    pub cpuid_cache: PathBuf,
    /// Jail each instance's herd-vmm (`None`: `--no-jail`).
    pub jail: Option<JailSettings>,
}

/// How instances are jailed: each gets its own unprivileged uid (and the same gid), its
/// directory as `/`, and a cgroup with its limits.
#[derive(Clone, Debug)]
pub struct JailSettings {
    /// Instances get uids `uid_base ..uid_base + uid_count`, one per live instance.
    pub uid_base: u32,
    pub uid_count: u32,
    pub cgroups: Cgroups,
    /// Memory allowed beyond the guest's, for herd-vmm and the kernel's memory for the VM.
    pub memory_overhead_mib: u32,
}

impl JailSettings {
    /// The lowest uid of the range that no instance in `used` holds.
    fn allocate_uid(&self, used: &BTreeSet<u32>) -> Result<u32, LaunchError> {
        (self.uid_base..self.uid_base.saturating_add(self.uid_count))
            .find(|uid| !used.contains(uid))
            .ok_or(LaunchError::UidsExhausted(self.uid_count))
    }
}

/// What live instances hold that a new one must not share.
#[derive(Debug, Default)]
pub struct InUse {
    pub addresses: BTreeSet<Ipv4Addr>,
    pub uids: BTreeSet<u32>,
}

/// Files of one instance.
#[derive(Clone, Debug)]
pub struct InstanceFiles {
    pub dir: PathBuf,
}

impl InstanceFiles {
    pub fn new(instances_dir: &Path, id: &str) -> Self {
        Self {
            dir: instances_dir.join(id),
        }
    }
    pub fn archive(&self) -> PathBuf {
        self.dir.join("instance.cpio")
    }
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    pub fn vmm_log(&self) -> PathBuf {
        self.dir.join("vmm.log")
    }
    pub fn vsock(&self) -> PathBuf {
        self.dir.join("vsock.sock")
    }

    /// Removes what only a running instance needs (the logs stay for `herd logs`).
    pub fn remove_runtime_files(&self) {
        let _ = std::fs::remove_file(self.archive());
        let _ = std::fs::remove_file(self.vsock());
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            // Guest-initiated vsock connections listen on `vsock.sock_<port>`.
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("vsock.sock_") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// A prepared instance: what to run and what was set up for it.
#[derive(Debug)]
pub struct Prepared {
    pub args: Vec<std::ffi::OsString>,
    pub address: Option<String>,
    pub tap: Option<String>,
    /// The uid (and gid) the instance's herd-vmm is jailed as.
    pub jail_uid: Option<u32>,
}

/// Creates the instance's directory, archive, TAP and (jailed) cgroup, and herd-vmm's
/// arguments. On error nothing is left behind but the directory and, if made, the cgroup
/// (removed with the instance's other leftovers).
pub fn prepare(
    settings: &LaunchSettings,
    service: &ServiceState,
    image: &ResolvedImage,
    id: &str,
    used: &InUse,
) -> Result<Prepared, LaunchError> {
    let (used, used_uids) = (&used.addresses, &used.uids);
    let files = InstanceFiles::new(&settings.instances_dir, id);
    std::fs::create_dir_all(&files.dir).map_err(|e| LaunchError::Dir(files.dir.clone(), e))?;
    let network = match service.spec.network {
        NetworkMode::None => None,
        NetworkMode::Bridge => {
            let bridge = settings.bridge.as_ref().ok_or(LaunchError::NoBridge)?;
            let addr = bridge
                .subnet
                .allocate(used)
                .ok_or_else(|| NetworkError::Exhausted(bridge.subnet.to_string()))?;
            Some((bridge, addr))
        }
    };
    let config = InstanceConfig {
        instance_id: id.to_owned(),
        hostname: id.to_owned(),
        env: service.spec.env.clone(),
        args: service.spec.args.clone(),
        network: network.map(|(bridge, addr)| NetworkConfig {
            address: format!("{addr}/{}", bridge.subnet.prefix),
            gateway: Some(bridge.subnet.gateway().to_string()),
            dns: Vec::new(),
        }),
    };
    let archive = instance_archive(&config).map_err(LaunchError::Archive)?;
    std::fs::write(files.archive(), archive).map_err(|e| LaunchError::Write(files.archive(), e))?;
    let tap = match network {
        Some((bridge, _)) => {
            let name = network::tap_name(id);
            bridge.add_tap(&name)?;
            Some(name)
        }
        None => None,
    };
    let plan = boot_plan(settings, service, image, &files, tap.clone());
    let mut args = plan.vmm_args();
    args.extend([
        "--console-log".into(),
        files.console_log().into(),
        "--console-log-max-bytes".into(),
        settings.console_log_max_bytes.to_string().into(),
        "--cpuid-cache".into(),
        settings.cpuid_cache.clone().into(),
        // The boot-time line the agent reads is logged at info.
        "--log-level".into(),
        "info".into(),
    ]);
    let jail_uid = match &settings.jail {
        Some(jail) => Some(jail_args(jail, &plan, &files, id, used_uids, &mut args)?),
        None => None,
    };
    Ok(Prepared {
        args,
        address: config.network.map(|n| n.address),
        tap,
        jail_uid,
    })
}

/// Hands the instance's directory (which becomes its `/`) to a fresh uid, makes its cgroup,
/// and adds the `--jail` flags; returns the uid.
fn jail_args(
    jail: &JailSettings,
    plan: &BootPlan,
    files: &InstanceFiles,
    id: &str,
    used: &BTreeSet<u32>,
    args: &mut Vec<std::ffi::OsString>,
) -> Result<u32, LaunchError> {
    let uid = jail.allocate_uid(used)?;
    std::os::unix::fs::chown(&files.dir, Some(uid), Some(uid))
        .and_then(|()| {
            let mode = std::os::unix::fs::PermissionsExt::from_mode(0o700);
            std::fs::set_permissions(&files.dir, mode)
        })
        .map_err(|e| LaunchError::Chown(files.dir.clone(), e))?;
    let limits = Limits::for_vm(plan.vcpus, plan.memory_mib, jail.memory_overhead_mib);
    let cgroups = jail.cgroups.create(id, &limits)?;
    args.extend(["--jail".into(), files.dir.clone().into()]);
    for (flag, value) in [("--jail-uid", uid), ("--jail-gid", uid)] {
        args.extend([flag.into(), value.to_string().into()]);
    }
    for dir in cgroups {
        args.extend(["--jail-cgroup".into(), dir.into()]);
    }
    Ok(uid)
}

fn boot_plan(
    settings: &LaunchSettings,
    service: &ServiceState,
    image: &ResolvedImage,
    files: &InstanceFiles,
    tap: Option<String>,
) -> BootPlan {
    let mut cmdline = image.config.kernel.cmdline.clone();
    if settings.pvm {
        cmdline = format!("{cmdline} {PVM_CMDLINE}");
    }
    let mut vsock = std::ffi::OsString::from("3,");
    vsock.push(files.vsock());
    BootPlan {
        kernel: image.kernel.clone(),
        initramfs: image.initramfs.clone(),
        instance_archive: files.archive(),
        cmdline,
        vcpus: service.spec.vcpus.unwrap_or(image.config.vcpus),
        memory_mib: service.spec.memory_mib.unwrap_or(image.config.memory_mib),
        stop_grace_ms: service.spec.stop_timeout_ms,
        disks: with_rootfs(image.rootfs.as_ref().map(|(_, p)| p.as_path()), Vec::new()),
        taps: tap.into_iter().collect(),
        vsock: Some(vsock),
    }
}

/// How much of herd-vmm's log is searched for the boot-time line (it comes early).
const BOOT_LINE_WITHIN: u64 = 64 * 1024;

/// Milliseconds from herd-vmm's start to the guest's boot-complete signal, from the line
/// herd-vmm logs (`Guest-boot-time = N us ...`). The log lies in a directory the jailed
/// process owns, so it is opened confined beneath it, must be a regular file, and only its
/// start is read: a name swapped for a link out or a device file is not followed.
pub fn boot_time_ms(vmm_log: &Path) -> Option<u64> {
    let (dir, name) = (vmm_log.parent()?, vmm_log.file_name()?);
    let file = crate::confine::open_beneath(dir, Path::new(name)).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, BOOT_LINE_WITHIN), &mut text)
        .ok()?;
    let rest = text.split("Guest-boot-time = ").nth(1)?;
    let us: u64 = rest.split_whitespace().next()?.parse().ok()?;
    Some(us / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_time_comes_from_the_vmm_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("vmm.log");
        std::fs::write(
            &log,
            "x\nINFO Guest-boot-time = 12345 us 12 ms, 26 CPU us\n",
        )
        .unwrap();
        assert_eq!(boot_time_ms(&log), Some(12));
        std::fs::write(&log, "nothing yet\n").unwrap();
        assert_eq!(boot_time_ms(&log), None);
        // Swapped for a link out of the directory, or for a directory: not followed.
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("elsewhere.log");
        std::fs::write(&target, "INFO Guest-boot-time = 5000 us\n").unwrap();
        std::fs::remove_file(&log).unwrap();
        std::os::unix::fs::symlink(&target, &log).unwrap();
        assert_eq!(boot_time_ms(&log), None);
        std::fs::remove_file(&log).unwrap();
        std::fs::create_dir(&log).unwrap();
        assert_eq!(boot_time_ms(&log), None);
    }
}
