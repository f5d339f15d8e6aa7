//! `herd run`: boots one instance of an image in herd-vmm, attached to its console, with the
//! instance's configuration (env, args, hostname, instance id) appended at boot as a second
//! initramfs archive (docs/image-format.md). The image's files are booted in place and never
//! change.
//!
//! Devices (`devices`): `--disk` files, `--net` TAP interfaces and `--vsock-socket` go to
//! herd-vmm; a virtio-rng device is always attached (apps need entropy early); `--ip`,
//! `--gateway` and `--dns` go into the instance configuration.
//!
//! Stopping: Ctrl-C in the terminal reaches herd-vmm directly (same process group), SIGTERM to
//! `herd run` is forwarded to it; herd-vmm then asks the guest to stop on its control port and
//! powers it off after the grace period (a second signal stops at once).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use herd_proto::{INSTANCE_CONFIG_PATH, InstanceConfig, valid_env_name};

pub mod devices;

pub use devices::{DeviceError, Disk, Net, Nic};

use crate::cpio::{Archive, CpioError};
use crate::image::exit;
use crate::store::{Store, StoreError};

/// Options of `herd run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Image: `name:version`, `name` (newest), or a digest prefix.
    pub image: String,
    /// Environment variable for the app, `KEY=VALUE` (repeatable; wins over --env-file).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// File of `KEY=VALUE` lines (repeatable; later files win; `#` comments, blank lines).
    #[arg(long = "env-file", value_name = "PATH")]
    pub env_files: Vec<PathBuf>,
    /// vCPUs (default: the image's).
    #[arg(long)]
    pub vcpus: Option<u8>,
    /// Memory in MiB (default: the image's).
    #[arg(long)]
    pub memory: Option<u32>,
    /// Attach a disk (file or block device), `ro` for read-only; appears as /dev/vda, vdb, ...
    /// in order (repeatable).
    #[arg(long, value_name = "PATH[,ro]")]
    pub disk: Vec<String>,
    /// Attach a network interface on the existing host TAP interface `TAP`, or on one herd
    /// creates for this instance and removes afterwards (`auto`; it gets the --gateway address).
    #[arg(long, value_name = "TAP|auto")]
    pub net: Vec<String>,
    /// The instance's address and prefix length on its first interface, e.g. `10.0.0.2/24`.
    #[arg(long, value_name = "ADDR/PREFIX")]
    pub ip: Option<String>,
    /// Default route through this router (inside the --ip subnet).
    #[arg(long, value_name = "ADDR")]
    pub gateway: Option<String>,
    /// Name server for the instance's /etc/resolv.conf (repeatable, at most 3).
    #[arg(long, value_name = "ADDR")]
    pub dns: Vec<String>,
    /// Attach a virtio-vsock device (guest CID 3) whose host side is this Unix socket.
    #[arg(long, value_name = "PATH")]
    pub vsock_socket: Option<PathBuf>,
    /// Seconds the app gets to exit after Ctrl-C or SIGTERM before the VM is powered off.
    #[arg(long, default_value_t = 10)]
    pub stop_timeout: u64,
    /// Arguments for the app, replacing the image's default args.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// Errors of `herd run`.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot read env file {0}")]
    EnvFile(PathBuf, #[source] std::io::Error),
    #[error("{file}:{line}: expected KEY=VALUE, got {text:?}")]
    EnvFileLine {
        file: PathBuf,
        line: usize,
        text: String,
    },
    #[error("--env {0:?}: expected KEY=VALUE with KEY made of letters, digits and _")]
    EnvArg(String),
    #[error("cannot build the instance configuration archive")]
    Archive(#[from] CpioError),
    #[error("cannot write the instance configuration archive")]
    WriteArchive(#[source] std::io::Error),
    #[error("cannot find herd-vmm (set HERD_VMM, or install it next to herd or on PATH)")]
    NoVmm,
    #[error("cannot start {0}")]
    Spawn(PathBuf, #[source] std::io::Error),
    #[error("cannot watch signals")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    Image(#[from] StoreError),
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// One `KEY=VALUE`, validated.
fn parse_assignment(text: &str) -> Option<(String, String)> {
    let (k, v) = text.split_once('=')?;
    (valid_env_name(k) && !v.contains('\0')).then(|| (k.to_owned(), v.to_owned()))
}

/// Reads an env file: `KEY=VALUE` lines, `#` comments and blank lines ignored, values taken
/// verbatim (no quoting rules to get wrong).
pub fn read_env_file(path: &Path) -> Result<Vec<(String, String)>, RunError> {
    let file = std::fs::File::open(path).map_err(|e| RunError::EnvFile(path.to_owned(), e))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| RunError::EnvFile(path.to_owned(), e))?;
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let kv = parse_assignment(trimmed).ok_or_else(|| RunError::EnvFileLine {
            file: path.to_owned(),
            line: i + 1,
            text: line.clone(),
        })?;
        out.push(kv);
    }
    Ok(out)
}

/// The instance environment: env files in order, then `--env` flags.
pub fn instance_env(
    files: &[PathBuf],
    flags: &[String],
) -> Result<BTreeMap<String, String>, RunError> {
    let mut env = BTreeMap::new();
    for f in files {
        env.extend(read_env_file(f)?);
    }
    for flag in flags {
        let (k, v) = parse_assignment(flag).ok_or_else(|| RunError::EnvArg(flag.clone()))?;
        env.insert(k, v);
    }
    Ok(env)
}

/// A fresh instance id: the image name and 8 random hex digits.
pub fn new_instance_id(image_name: &str) -> String {
    let mut bytes = [0u8; 4];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        // Uniqueness then rests on the pid and clock; still distinct per run on one host.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        bytes = (t.subsec_nanos() ^ std::process::id()).to_le_bytes();
    }
    format!("{image_name}-{}", hex::encode(bytes))
}

/// The appended archive: `/herd/instance.json` and nothing else.
pub fn instance_archive(config: &InstanceConfig) -> Result<Vec<u8>, RunError> {
    let mut archive = Archive::new();
    archive.file(
        INSTANCE_CONFIG_PATH,
        0o644,
        config.to_canonical_json().into_bytes(),
    )?;
    Ok(archive.to_bytes())
}

/// herd-vmm: `$HERD_VMM`, next to this executable, or on PATH.
pub fn find_vmm() -> Result<PathBuf, RunError> {
    if let Some(p) = std::env::var_os("HERD_VMM") {
        return Ok(PathBuf::from(p));
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.join("herd-vmm")));
    if let Some(p) = beside.filter(|p| p.is_file()) {
        return Ok(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("herd-vmm"))
        .find(|p| p.is_file())
        .ok_or(RunError::NoVmm)
}

/// Kernel command-line words a PVM host needs for a stock Linux guest (CPU features its
/// instruction emulator cannot run); harmless for other guests, which ignore unknown words.
pub const PVM_CMDLINE: &str = "clearcpuid=141,151,295,308 noxsave";

/// What to boot: everything herd-vmm is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootPlan {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub instance_archive: PathBuf,
    pub cmdline: String,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub stop_grace_ms: u64,
    /// Disks in guest order (`/dev/vda` first).
    pub disks: Vec<Disk>,
    /// Network interfaces, one virtio-net device each.
    pub nics: Vec<Nic>,
    /// herd-vmm's `--vsock` value, if any.
    pub vsock: Option<std::ffi::OsString>,
}

impl BootPlan {
    /// herd-vmm's arguments for this plan.
    pub fn vmm_args(&self) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec!["--kernel".into(), self.kernel.clone().into()];
        for initrd in [&self.initramfs, &self.instance_archive] {
            a.extend(["--initrd".into(), initrd.clone().into()]);
        }
        for (flag, value) in [
            ("--cmdline", self.cmdline.clone()),
            ("--vcpus", self.vcpus.to_string()),
            ("--memory", self.memory_mib.to_string()),
            ("--stop-grace", self.stop_grace_ms.to_string()),
        ] {
            a.extend([flag.into(), value.into()]);
        }
        a.push("--entropy".into());
        // Store blobs are written once and never rewritten: instances of one image can
        // share its kernel and initramfs pages through the page cache.
        a.push("--map-boot-files".into());
        for disk in &self.disks {
            a.extend(["--disk".into(), disk.vmm_flag()]);
        }
        for nic in &self.nics {
            a.extend(["--net".into(), nic.vmm_flag()]);
        }
        if let Some(vsock) = &self.vsock {
            a.extend(["--vsock".into(), vsock.clone()]);
        }
        a
    }
}

/// Boots `plan` in herd-vmm with the console attached; returns herd-vmm's exit status.
pub fn boot(vmm: &Path, plan: &BootPlan) -> Result<ExitStatus, RunError> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(RunError::Signals)?;
    let handle = signals.handle();
    let child = Command::new(vmm)
        .args(plan.vmm_args())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| RunError::Spawn(vmm.to_owned(), e))?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let forwarder = std::thread::spawn(move || {
        for sig in signals.forever() {
            // Ctrl-C already reached herd-vmm through the terminal; SIGTERM was meant for us.
            if sig == signal_hook::consts::SIGTERM {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            }
        }
    });
    let mut child = child;
    let status = child.wait().map_err(|e| RunError::Spawn(vmm.to_owned(), e));
    handle.close();
    let _ = forwarder.join();
    status
}

/// The devices asked for on the command line, validated.
#[derive(Debug)]
struct Devices {
    disks: Vec<Disk>,
    taps: Vec<String>,
    auto_taps: usize,
    vsock: Option<std::ffi::OsString>,
    network: Option<herd_proto::NetworkConfig>,
}

impl Devices {
    fn from_args(args: &RunArgs) -> Result<Self, RunError> {
        let disks = args
            .disk
            .iter()
            .map(|d| Disk::parse(d))
            .collect::<Result<_, _>>()?;
        let (mut taps, mut auto_taps) = (Vec::new(), 0);
        for flag in &args.net {
            match Net::parse(flag)? {
                Net::Tap(name) => taps.push(name),
                Net::Auto => auto_taps += 1,
            }
        }
        let network =
            devices::network_config(args.ip.as_deref(), args.gateway.as_deref(), &args.dns)?;
        let vsock = args
            .vsock_socket
            .as_deref()
            .map(devices::vsock_flag)
            .transpose()?;
        Ok(Self {
            disks,
            taps,
            auto_taps,
            vsock,
            network,
        })
    }

    /// Creates the `--net auto` TAPs, named after the instance id's random part.
    fn create_auto_taps(&self, instance_id: &str) -> Result<Vec<devices::AutoTap>, RunError> {
        let suffix = instance_id.rsplit('-').next().unwrap_or_default();
        let host = devices::host_address(self.network.as_ref());
        let mut taps = Vec::new();
        for i in 0..self.auto_taps {
            let name = format!("herd{i}{}", &suffix[..suffix.len().min(8)]);
            // Only the first interface carries the instance's network settings.
            let address = if i == 0 { host.as_deref() } else { None };
            taps.push(devices::AutoTap::create(&name, address)?);
        }
        Ok(taps)
    }
}

/// The disks in guest order: the image's root filesystem first, read-only (it is
/// `/dev/vda`, where `/herd/image.json` says it is), then the user's `--disk`s.
pub fn with_rootfs(rootfs: Option<&Path>, user: Vec<Disk>) -> Vec<Disk> {
    let rootfs = rootfs.map(|path| Disk {
        path: path.to_owned(),
        read_only: true,
    });
    rootfs.into_iter().chain(user).collect()
}

/// Runs `herd run` against the store in `home`; returns the status herd should exit with.
pub fn execute(args: RunArgs, home: &Path) -> Result<i32, RunError> {
    // Validate what the user typed before touching the store or booting anything.
    let env = instance_env(&args.env_files, &args.env)?;
    let devices = Devices::from_args(&args)?;
    let vmm = find_vmm()?;
    let image = Store::open(home).and_then(|s| s.resolve(&args.image))?;
    let instance_id = new_instance_id(&image.config.name);
    let instance = InstanceConfig {
        hostname: instance_id.clone(),
        instance_id,
        env,
        args: (!args.args.is_empty()).then_some(args.args),
        network: devices.network.clone(),
    };
    let archive = write_archive(&instance_archive(&instance)?)?;
    let mut cmdline = image.config.kernel.cmdline.clone();
    if Path::new("/sys/module/kvm_pvm").exists() {
        cmdline = format!("{cmdline} {PVM_CMDLINE}");
    }
    let auto_taps = devices.create_auto_taps(&instance.instance_id)?;
    let mut taps = devices.taps;
    taps.extend(auto_taps.iter().map(|t| t.name.clone()));
    let plan = BootPlan {
        kernel: image.kernel,
        initramfs: image.initramfs,
        instance_archive: archive.path().to_owned(),
        cmdline,
        vcpus: args.vcpus.unwrap_or(image.config.vcpus),
        memory_mib: args.memory.unwrap_or(image.config.memory_mib),
        stop_grace_ms: args.stop_timeout.saturating_mul(1000),
        disks: with_rootfs(
            image.rootfs.as_ref().map(|(_, p)| p.as_path()),
            devices.disks,
        ),
        nics: taps.into_iter().map(|tap| Nic { tap, mac: None }).collect(),
        vsock: devices.vsock,
    };
    let status = boot(&vmm, &plan)?;
    drop(archive);
    drop(auto_taps);
    Ok(exit_code(status))
}

impl RunError {
    /// herd's exit status for this failure (see `herd --help`).
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::EnvFileLine { .. } | RunError::EnvArg(_) => exit::USAGE,
            RunError::Device(DeviceError::Tap { .. }) => exit::SOFTWARE,
            RunError::Device(_) => exit::USAGE,
            RunError::EnvFile(_, e) => exit::io_input(e),
            RunError::Image(e) => e.exit_code(),
            RunError::NoVmm => exit::NO_INPUT,
            _ => exit::SOFTWARE,
        }
    }
}

/// Writes the instance archive to a temporary file that lives as long as the returned handle.
pub fn write_archive(bytes: &[u8]) -> Result<tempfile::NamedTempFile, RunError> {
    let mut f = tempfile::Builder::new()
        .prefix("herd-instance-")
        .suffix(".cpio")
        .tempfile()
        .map_err(RunError::WriteArchive)?;
    f.write_all(bytes).map_err(RunError::WriteArchive)?;
    f.flush().map_err(RunError::WriteArchive)?;
    Ok(f)
}

/// The exit status `herd run` reports: herd-vmm's, or 128 + N if it died of signal N.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_then_flags_later_wins() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.env"), dir.path().join("b.env"));
        std::fs::write(&a, "# staging\nA=1\nB=from a\n\n  C=x=y\n").unwrap();
        std::fs::write(&b, "B=from b\n").unwrap();
        let env = instance_env(&[a, b], &["A=flag".into()]).unwrap();
        assert_eq!(env["A"], "flag");
        assert_eq!(env["B"], "from b");
        assert_eq!(env["C"], "x=y");
    }

    #[test]
    fn malformed_env_lines_and_flags_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bad.env");
        std::fs::write(&f, "OK=1\nnot an assignment\n").unwrap();
        let err = instance_env(std::slice::from_ref(&f), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.env:2") && err.contains("not an assignment"),
            "{err}"
        );
        assert!(matches!(
            instance_env(&[], &["1X=2".into()]),
            Err(RunError::EnvArg(_))
        ));
        assert!(matches!(
            instance_env(&[], &["NOEQUALS".into()]),
            Err(RunError::EnvArg(_))
        ));
        assert!(matches!(
            instance_env(&[dir.path().join("missing")], &[]),
            Err(RunError::EnvFile(..))
        ));
    }

    #[test]
    fn instance_ids_are_named_after_the_image_and_differ() {
        let (a, b) = (new_instance_id("hello"), new_instance_id("hello"));
        assert!(a.starts_with("hello-") && a.len() == "hello-".len() + 8);
        assert_ne!(a, b);
    }

    #[test]
    fn archive_holds_only_the_instance_config() {
        let cfg = InstanceConfig {
            instance_id: "i".into(),
            hostname: "h".into(),
            ..Default::default()
        };
        let bytes = instance_archive(&cfg).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("herd/instance.json") && text.contains(r#"{"instance_id":"i""#));
        assert!(text.contains("TRAILER!!!"));
    }

    #[test]
    fn the_rootfs_is_the_first_disk_and_read_only() {
        let user = vec![Disk::parse("data").unwrap()];
        let disks = with_rootfs(Some(Path::new("/store/blob")), user.clone());
        assert_eq!(disks[0].vmm_flag(), "/store/blob,ro");
        assert_eq!(disks[1..], user);
        assert_eq!(with_rootfs(None, user.clone()), user);
    }

    #[test]
    fn vmm_args_boot_the_image_with_the_archive_appended() {
        let plan = BootPlan {
            kernel: "k".into(),
            initramfs: "i".into(),
            instance_archive: "a".into(),
            cmdline: "console=ttyS0".into(),
            vcpus: 2,
            memory_mib: 256,
            stop_grace_ms: 5000,
            disks: vec![
                Disk::parse("root.ext4,ro").unwrap(),
                Disk::parse("data").unwrap(),
            ],
            nics: vec![
                Nic {
                    tap: "tap0".into(),
                    mac: None,
                },
                Nic {
                    tap: "tap1".into(),
                    mac: Some("02:00:00:00:00:01".parse().unwrap()),
                },
            ],
            vsock: Some("3,/v.sock".into()),
        };
        let args: Vec<String> = plan
            .vmm_args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--kernel",
                "k",
                "--initrd",
                "i",
                "--initrd",
                "a",
                "--cmdline",
                "console=ttyS0",
                "--vcpus",
                "2",
                "--memory",
                "256",
                "--stop-grace",
                "5000",
                "--entropy",
                "--map-boot-files",
                "--disk",
                "root.ext4,ro",
                "--disk",
                "data",
                "--net",
                "tap0",
                "--net",
                "tap1,mac=02:00:00:00:00:01",
                "--vsock",
                "3,/v.sock"
            ]
        );
    }
}
