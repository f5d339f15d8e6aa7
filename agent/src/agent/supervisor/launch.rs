//! Starting one instance: its directory, configuration archive (or, restored from a
//! snapshot, its identity file), network interface (a TAP on the bridge and the instance's
//! own MAC address, [`network::instance_mac`]) and the herd-vmm command line, from the
//! service's spec and the image it resolved to. Everything an instance needs lives in its
//! directory (a snapshot it is restored from is opened before herd-vmm jails itself), so
//! herd-vmm never depends on the agent after start.
//!
//! What a VM is ([`machine`]) is computed in one place for booting and for the snapshot key
//! ([`snapshot_key`]), so a snapshot is only ever restored as the VM it was taken of.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use herd_proto::{InstanceConfig, MacAddr, NetworkConfig};

use crate::agent::cgroup::{CgroupError, Cgroups, Limits};
use crate::agent::network::{self, Bridge, NetworkError};
use crate::agent::vmsnap::restore::{Identity, RestorePlan};
use crate::agent::vmsnap::{GUEST_CID, Inherited, SnapshotKey};
use crate::fleet::{NetworkMode, ServiceState};
use crate::run::{BootPlan, Disk, Nic, PVM_CMDLINE, RunError, instance_archive, with_rootfs};
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
    /// herd-vmm's control socket (`--api-socket`).
    pub fn api_socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }
    /// Who a restored instance is (`--identity`).
    pub fn identity(&self) -> PathBuf {
        self.dir.join("identity.json")
    }

    /// Removes what only a running instance needs (the logs stay for `herd logs`).
    pub fn remove_runtime_files(&self) {
        let _ = std::fs::remove_file(self.archive());
        let _ = std::fs::remove_file(self.identity());
        let _ = std::fs::remove_file(self.vsock());
        let _ = std::fs::remove_file(self.api_socket());
        // A snapshot interrupted by the end of the instance.
        let _ = std::fs::remove_dir_all(self.dir.join(crate::agent::vmsnap::TAKEN_DIR));
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

/// How an instance starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start<'a> {
    /// Boot the image.
    Boot,
    /// Restore the installed snapshot in this directory.
    Restore(&'a Path),
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

/// Creates the instance's directory, configuration (archive or identity), TAP and (jailed)
/// cgroup, and herd-vmm's arguments. On error nothing is left behind but the directory and,
/// if made, the cgroup (removed with the instance's other leftovers).
pub fn prepare(
    settings: &LaunchSettings,
    service: &ServiceState,
    image: &ResolvedImage,
    id: &str,
    used: &InUse,
    start: Start<'_>,
) -> Result<Prepared, LaunchError> {
    let files = InstanceFiles::new(&settings.instances_dir, id);
    std::fs::create_dir_all(&files.dir).map_err(|e| LaunchError::Dir(files.dir.clone(), e))?;
    let network = match service.spec.network {
        NetworkMode::None => None,
        NetworkMode::Bridge => {
            let bridge = settings.bridge.as_ref().ok_or(LaunchError::NoBridge)?;
            let addr = bridge
                .subnet
                .allocate(&used.addresses)
                .ok_or_else(|| NetworkError::Exhausted(bridge.subnet.to_string()))?;
            Some((bridge, addr))
        }
    };
    let net_config = network.map(|(bridge, addr)| NetworkConfig {
        address: format!("{addr}/{}", bridge.subnet.prefix),
        gateway: Some(bridge.subnet.gateway().to_string()),
        dns: Vec::new(),
    });
    let mac = network.map(|_| network::instance_mac(id));
    write_config(service, id, &files, net_config.as_ref(), mac, start)?;
    let tap = match network {
        Some((bridge, _)) => {
            let name = network::tap_name(id);
            bridge.add_tap(&name)?;
            Some(name)
        }
        None => None,
    };
    let nic = tap.clone().map(|tap| Nic { tap, mac });
    let vm = machine(settings, service, image);
    let mut args = vmm_args(settings, service, &vm, &files, nic, start);
    let jail_uid = match &settings.jail {
        Some(jail) => Some(jail_args(jail, &vm, &files, id, &used.uids, &mut args)?),
        None => None,
    };
    Ok(Prepared {
        args,
        address: net_config.map(|n| n.address),
        tap,
        jail_uid,
    })
}

/// Writes what the guest learns about itself: the instance configuration archive a boot
/// appends (its MAC address comes from the device), or the identity file a restore hands
/// over (with the MAC address: the device keeps the snapshot's).
fn write_config(
    service: &ServiceState,
    id: &str,
    files: &InstanceFiles,
    network: Option<&NetworkConfig>,
    mac: Option<MacAddr>,
    start: Start<'_>,
) -> Result<(), LaunchError> {
    let (path, bytes) = match start {
        Start::Boot => {
            let config = InstanceConfig {
                instance_id: id.to_owned(),
                hostname: id.to_owned(),
                env: service.spec.env.clone(),
                args: service.spec.args.clone(),
                network: network.cloned(),
            };
            let archive = instance_archive(&config).map_err(LaunchError::Archive)?;
            (files.archive(), archive)
        }
        Start::Restore(_) => {
            let identity = Identity {
                instance_id: id,
                hostname: id,
                network,
                mac,
            };
            (files.identity(), identity.to_json())
        }
    };
    std::fs::write(&path, bytes).map_err(|e| LaunchError::Write(path, e))
}

/// herd-vmm's arguments apart from the jail's.
fn vmm_args(
    settings: &LaunchSettings,
    service: &ServiceState,
    vm: &Machine,
    files: &InstanceFiles,
    nic: Option<Nic>,
    start: Start<'_>,
) -> Vec<std::ffi::OsString> {
    let mut vsock = std::ffi::OsString::from(format!("{GUEST_CID},"));
    vsock.push(files.vsock());
    let mut args = match start {
        Start::Boot => BootPlan {
            kernel: vm.kernel.clone(),
            initramfs: vm.initramfs.clone(),
            instance_archive: files.archive(),
            cmdline: vm.cmdline.clone(),
            vcpus: vm.vcpus,
            memory_mib: vm.memory_mib,
            stop_grace_ms: service.spec.stop_timeout_ms,
            disks: vm.disks.clone(),
            nics: nic.into_iter().collect(),
            vsock: Some(vsock),
        }
        .vmm_args(),
        Start::Restore(snapshot) => RestorePlan {
            snapshot: snapshot.to_owned(),
            identity: files.identity(),
            stop_grace_ms: service.spec.stop_timeout_ms,
            disks: vm.disks.clone(),
            // The snapshot's MAC address stays the device's (see `vmsnap::restore`).
            taps: nic.into_iter().map(|nic| nic.tap).collect(),
            vsock,
        }
        .vmm_args(),
    };
    args.extend([
        // A restore needs the host's CPUID too: to check the snapshot's CPU model.
        "--cpuid-cache".into(),
        settings.cpuid_cache.clone().into(),
        "--api-socket".into(),
        files.api_socket().into(),
        "--console-log".into(),
        files.console_log().into(),
        "--console-log-max-bytes".into(),
        settings.console_log_max_bytes.to_string().into(),
        // The boot-time line the agent reads is logged at info.
        "--log-level".into(),
        "info".into(),
    ]);
    args
}

/// Hands the instance's directory (which becomes its `/`) to a fresh uid, makes its cgroup,
/// and adds the `--jail` flags; returns the uid.
fn jail_args(
    jail: &JailSettings,
    vm: &Machine,
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
    let limits = Limits::for_vm(vm.vcpus, vm.memory_mib, jail.memory_overhead_mib);
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

/// What a VM of a service is, however it starts: booted from these, or restored from a
/// snapshot of a VM booted from them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub cmdline: String,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// Disks in guest order: the image's root filesystem, if it has one.
    pub disks: Vec<Disk>,
}

/// The VM instances of `service` run, from its spec and image.
pub fn machine(
    settings: &LaunchSettings,
    service: &ServiceState,
    image: &ResolvedImage,
) -> Machine {
    let mut cmdline = image.config.kernel.cmdline.clone();
    if settings.pvm {
        cmdline = format!("{cmdline} {PVM_CMDLINE}");
    }
    Machine {
        kernel: image.kernel.clone(),
        initramfs: image.initramfs.clone(),
        cmdline,
        vcpus: service.spec.vcpus.unwrap_or(image.config.vcpus),
        memory_mib: service.spec.memory_mib.unwrap_or(image.config.memory_mib),
        disks: with_rootfs(image.rootfs.as_ref().map(|(_, p)| p.as_path()), Vec::new()),
    }
}

/// The key of snapshots instances of `service` can start from: its image, its [`machine`]
/// and everything else a restored VM keeps (environment, arguments, devices).
pub fn snapshot_key(
    settings: &LaunchSettings,
    service: &ServiceState,
    image: &ResolvedImage,
) -> SnapshotKey {
    let vm = machine(settings, service, image);
    let inherited = Inherited {
        cmdline: &vm.cmdline,
        env: &service.spec.env,
        args: service.spec.args.as_deref(),
        network_interfaces: network_interfaces(service),
        disks_read_only: vm.disks.iter().map(|d| d.read_only).collect(),
        vsock_cid: GUEST_CID,
    };
    SnapshotKey::new(&image.digest, vm.vcpus, vm.memory_mib, &inherited)
}

/// virtio-net devices instances of `service` have.
pub fn network_interfaces(service: &ServiceState) -> u8 {
    match service.spec.network {
        NetworkMode::Bridge => 1,
        NetworkMode::None => 0,
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

    fn settings(dir: &Path) -> LaunchSettings {
        LaunchSettings {
            instances_dir: dir.join("instances"),
            bridge: None,
            console_log_max_bytes: 4096,
            pvm: false,
            cpuid_cache: dir.to_owned(),
            jail: None,
        }
    }

    fn service(json: serde_json::Value) -> ServiceState {
        ServiceState::new(serde_json::from_value(json).unwrap(), image().digest)
    }

    fn image() -> ResolvedImage {
        let config = br#"{"name":"app","version":"1","entrypoint":["/app"],"memory_mib":64,
            "kernel":{"format":"elf","cmdline":"console=ttyS0"}}"#;
        ResolvedImage {
            digest: format!("sha256:{}", "ab".repeat(32)),
            config: crate::image::config::ImageConfig::from_json(config).unwrap(),
            kernel: "/store/kernel".into(),
            initramfs: "/store/initramfs".into(),
            rootfs: None,
            refs: vec![],
            manifest: vec![],
        }
    }

    fn words(args: &[std::ffi::OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_restore_gets_an_identity_and_the_snapshot_instead_of_the_boot_files() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path());
        let web = service(
            serde_json::json!({"name": "web", "image": "app:1", "network": "none",
            "env": {"A": "1"}, "stop_timeout_ms": 300}),
        );
        let snapshot = dir.path().join("snapshots/ab/1x64-0123456789abcdef");
        let id = "web-0000abcd";
        let used = InUse::default();
        let restore = prepare(
            &settings,
            &web,
            &image(),
            id,
            &used,
            Start::Restore(&snapshot),
        );
        let args = words(&restore.unwrap().args);
        let files = InstanceFiles::new(&settings.instances_dir, id);
        let identity = std::fs::read_to_string(files.identity()).unwrap();
        assert_eq!(
            identity,
            r#"{"instance_id":"web-0000abcd","hostname":"web-0000abcd"}"#
        );
        assert!(!files.archive().exists());
        let at = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .map(|i| args[i + 1].clone())
        };
        assert_eq!(at("--restore"), Some(snapshot.display().to_string()));
        assert_eq!(
            at("--api-socket"),
            Some(files.api_socket().display().to_string())
        );
        assert_eq!(
            at("--vsock"),
            Some(format!("3,{}", files.vsock().display()))
        );
        assert_eq!(at("--stop-grace").as_deref(), Some("300"));
        for booting in [
            "--kernel",
            "--initrd",
            "--memory",
            "--map-boot-files",
            "--net",
        ] {
            assert_eq!(at(booting), None, "{booting}");
        }
        // Booting the same service: the archive, the image's files, the same control socket.
        let boot = words(
            &prepare(&settings, &web, &image(), id, &used, Start::Boot)
                .unwrap()
                .args,
        );
        let at = |flag: &str| {
            boot.iter()
                .position(|a| a == flag)
                .map(|i| boot[i + 1].clone())
        };
        assert_eq!(at("--kernel").as_deref(), Some("/store/kernel"));
        assert_eq!(at("--memory").as_deref(), Some("64"));
        assert_eq!(
            at("--api-socket"),
            Some(files.api_socket().display().to_string())
        );
        assert!(files.archive().exists());
    }

    #[test]
    fn a_boot_offers_the_instances_mac_and_a_restore_names_it_in_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path());
        let web = service(serde_json::json!({"name": "web", "image": "app:1"}));
        let (id, vm) = ("web-0000abcd", machine(&settings, &web, &image()));
        let files = InstanceFiles::new(&settings.instances_dir, id);
        std::fs::create_dir_all(&files.dir).unwrap();
        let mac = network::instance_mac(id);
        let nic = Nic {
            tap: network::tap_name(id),
            mac: Some(mac),
        };
        let net_of = |start| {
            let args = words(&vmm_args(
                &settings,
                &web,
                &vm,
                &files,
                Some(nic.clone()),
                start,
            ));
            let at = args.iter().position(|a| a == "--net").expect("a --net");
            args[at + 1].clone()
        };
        assert_eq!(net_of(Start::Boot), format!("hd0000abcd,mac={mac}"));
        let snapshot = dir.path().join("snapshots/ab/1x64-0123456789abcdef");
        assert_eq!(
            net_of(Start::Restore(&snapshot)),
            "hd0000abcd",
            "the device keeps the snapshot's"
        );
        let net = NetworkConfig {
            address: "172.31.0.7/24".into(),
            gateway: Some("172.31.0.1".into()),
            dns: vec![],
        };
        write_config(
            &web,
            id,
            &files,
            Some(&net),
            Some(mac),
            Start::Restore(&snapshot),
        )
        .unwrap();
        let identity: serde_json::Value =
            serde_json::from_slice(&std::fs::read(files.identity()).unwrap()).unwrap();
        assert_eq!(identity["mac"], mac.to_string(), "{identity}");
        assert_eq!(identity["network"]["address"], "172.31.0.7/24");
    }

    #[test]
    fn the_snapshot_key_follows_what_the_vm_inherits_not_what_it_is_told_later() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path());
        let key = |json| snapshot_key(&settings, &service(json), &image());
        let base = key(serde_json::json!({"name": "web", "image": "app:1"}));
        assert_eq!(
            (base.vcpus, base.memory_mib),
            (1, 64),
            "the image's defaults"
        );
        // Replicas, checks, policies and the service's name are not part of the VM.
        let same = key(
            serde_json::json!({"name": "api", "image": "app:1", "replicas": 5,
            "stop_timeout_ms": 1, "snapshot_starts": true,
            "health_check": {"vsock": {"port": 5000}}}),
        );
        assert_eq!(same, base);
        for other in [
            serde_json::json!({"name": "web", "image": "app:1", "memory_mib": 128}),
            serde_json::json!({"name": "web", "image": "app:1", "env": {"A": "1"}}),
            serde_json::json!({"name": "web", "image": "app:1", "args": []}),
            serde_json::json!({"name": "web", "image": "app:1", "network": "none"}),
        ] {
            assert_ne!(key(other.clone()), base, "{other}");
        }
        let pvm = LaunchSettings {
            pvm: true,
            ..settings.clone()
        };
        let on_pvm = snapshot_key(
            &pvm,
            &service(serde_json::json!({"name": "web", "image": "app:1"})),
            &image(),
        );
        assert_ne!(on_pvm, base, "another kernel command line");
    }

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
