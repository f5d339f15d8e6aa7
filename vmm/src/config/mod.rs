//! The validated description of one microVM, and the two ways to get one: command-line flags and
//! a Firecracker-compatible config file.
//!
//! Everything downstream (`Vmm::build`) takes a [`VmConfig`] and can rely on its invariants: vCPU
//! count and memory size are in range, the command line fits the guest's buffer. Whether the
//! files exist and are kernels is checked when they are opened, where the error can name them.

pub mod drive;
mod firecracker;
pub mod jail;
mod net;
mod vsock;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::console_log::MIN_MAX_BYTES;
use crate::seccomp::SeccompMode;

pub use drive::{DriveConfig, DriveError};
pub use firecracker::parse_firecracker_config;
pub use jail::{JailConfig, JailConfigError, RawJailConfig};
pub use net::{MacAddr, NetConfig, NetConfigError, RawNetConfig, parse_net_flag, validate_net};
pub use vsock::{VsockConfig, VsockConfigError, parse_vsock_flag};

/// Fewest vCPUs a microVM can have.
pub const MIN_VCPUS: u8 = 1;
/// Most vCPUs a microVM can have (the MP table and our APIC id scheme cover this many).
pub const MAX_VCPUS: u8 = 32;
/// Smallest guest memory we accept: a Linux guest with an initramfs needs about this much.
pub const MIN_MEMORY_MIB: u32 = 32;
/// Largest command line we hand a guest, including the terminating NUL.
pub const MAX_CMDLINE_LEN: usize = 4096;
/// Command line used when none is given: serial console, reset through the i8042 on reboot,
/// reboot at once on panic, and no probing for hardware a microVM does not have.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off nomodule";

/// Errors found while turning user input into a [`VmConfig`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("vcpu count {0} is out of range ({MIN_VCPUS} to {MAX_VCPUS})")]
    VcpuCount(u64),
    #[error("memory size {0} MiB is below the minimum of {MIN_MEMORY_MIB} MiB")]
    MemoryTooSmall(u64),
    #[error("memory size {0} MiB is more than this host has ({1} MiB)")]
    MemoryTooLarge(u64, u64),
    #[error("kernel command line is {0} bytes, more than the {max} the guest accepts", max = MAX_CMDLINE_LEN - 1)]
    CmdlineTooLong(usize),
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("cannot read config file {0}")]
    ReadFile(PathBuf, #[source] std::io::Error),
    #[error("config file {file}: field `{field}`")]
    Field {
        file: PathBuf,
        field: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Net(#[from] NetConfigError),
    #[error(transparent)]
    Drive(#[from] DriveError),
    #[error(transparent)]
    Vsock(#[from] VsockConfigError),
    #[error(transparent)]
    Jail(#[from] JailConfigError),
    #[error("--console-log-max-bytes {0} is below the minimum of {MIN_MAX_BYTES} bytes")]
    ConsoleLogMaxBytes(u64),
    #[error("--console-log-max-bytes needs --console-log")]
    ConsoleLogMaxBytesWithoutLog,
    #[error("config file {file}: field `{field}`: {why}")]
    Unsupported {
        file: PathBuf,
        field: String,
        why: String,
    },
}

/// Where the guest's serial console output goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleOutput {
    /// herd-vmm's standard output.
    Stdout,
    /// A file, created or truncated when the VM starts; with `max_bytes`, rotated to
    /// `PATH.1` instead of growing past it (see [`crate::console_log`]).
    File {
        path: PathBuf,
        max_bytes: Option<u64>,
    },
}

impl ConsoleOutput {
    fn new(path: Option<PathBuf>, max_bytes: Option<u64>) -> Result<Self, ConfigError> {
        match (path, max_bytes) {
            (None, None) => Ok(Self::Stdout),
            (None, Some(_)) => Err(ConfigError::ConsoleLogMaxBytesWithoutLog),
            (Some(_), Some(n)) if n < MIN_MAX_BYTES => Err(ConfigError::ConsoleLogMaxBytes(n)),
            (Some(path), max_bytes) => Ok(Self::File { path, max_bytes }),
        }
    }
}

/// Number of vCPUs, guaranteed to be in `MIN_VCPUS..=MAX_VCPUS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuCount(u8);

impl VcpuCount {
    /// Checks `n` against the supported range.
    pub fn new(n: u64) -> Result<Self, ConfigError> {
        match u8::try_from(n) {
            Ok(n) if (MIN_VCPUS..=MAX_VCPUS).contains(&n) => Ok(Self(n)),
            _ => Err(ConfigError::VcpuCount(n)),
        }
    }

    /// The count.
    pub fn get(self) -> u8 {
        self.0
    }
}

/// Guest memory size in MiB, at least `MIN_MEMORY_MIB` and no more than the host has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemorySize(u64);

impl MemorySize {
    /// Checks `mib` against the minimum and against `host_mib`, the host's physical memory.
    pub fn new(mib: u64, host_mib: u64) -> Result<Self, ConfigError> {
        if mib < u64::from(MIN_MEMORY_MIB) {
            return Err(ConfigError::MemoryTooSmall(mib));
        }
        if mib > host_mib {
            return Err(ConfigError::MemoryTooLarge(mib, host_mib));
        }
        Ok(Self(mib))
    }

    /// The size in MiB.
    pub fn mib(self) -> u64 {
        self.0
    }

    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0 << 20
    }
}

/// A kernel command line that fits the guest's buffer and holds no NUL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelCmdline(String);

impl KernelCmdline {
    /// Checks length and content.
    pub fn new(s: &str) -> Result<Self, ConfigError> {
        if s.contains('\0') {
            return Err(ConfigError::CmdlineNul);
        }
        if s.len() >= MAX_CMDLINE_LEN {
            return Err(ConfigError::CmdlineTooLong(s.len()));
        }
        Ok(Self(s.to_owned()))
    }

    /// This command line with `words` appended (device announcements), checked again.
    pub fn with_words(&self, words: &str) -> Result<Self, ConfigError> {
        match (self.0.is_empty(), words.is_empty()) {
            (_, true) => Ok(self.clone()),
            (true, false) => Self::new(words),
            (false, false) => Self::new(&format!("{} {words}", self.0)),
        }
    }

    /// The command line.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KernelCmdline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Everything needed to build and boot one microVM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// ELF vmlinux (PVH or 64-bit entry) or bzImage.
    pub kernel: PathBuf,
    /// Initial ramdisk, possibly in parts that are concatenated in guest memory (e.g. an
    /// image's initramfs followed by an instance's configuration archive).
    pub initrds: Vec<PathBuf>,
    /// The guest kernel's command line.
    pub cmdline: KernelCmdline,
    /// Number of vCPUs.
    pub vcpus: VcpuCount,
    /// Guest memory size.
    pub memory: MemorySize,
    /// Where the serial console goes.
    pub console: ConsoleOutput,
    /// On SIGTERM/SIGINT, how long the guest gets to stop on its own after a stop request on
    /// the control port; `None` stops at once.
    pub stop_grace: Option<Duration>,
    /// A virtio-rng device fed from the host's getrandom.
    pub entropy: bool,
    /// virtio-net devices, each on an existing host TAP.
    pub net: Vec<NetConfig>,
    /// virtio-blk devices, the root device (if any) first.
    pub drives: Vec<DriveConfig>,
    /// A virtio-vsock device.
    pub vsock: Option<VsockConfig>,
    /// Map the kernel's and the first initrd's pages from the page cache (private,
    /// copy-on-write) instead of copying them, so instances booting the same files share
    /// those pages. Only for files nobody rewrites while the VM runs.
    pub map_boot_files: bool,
    /// Where the host's supported CPUID is cached between VMs (see `vstate::cpuid_cache`).
    pub cpuid_cache: Option<PathBuf>,
    /// Confine herd-vmm before it builds the VM. The console log and vsock paths above are
    /// then the names they have inside the jail.
    pub jail: Option<JailConfig>,
    /// What a thread's seccomp filter does to a call outside its list.
    pub seccomp: SeccompMode,
    /// Where herd-vmm answers pause, resume and snapshot requests (`docs/snapshots.md`).
    pub api_socket: Option<PathBuf>,
    /// Resume a snapshot instead of booting: the machine, devices and memory come from it.
    pub restore: Option<RestoreSource>,
}

/// The snapshot a VM is restored from, and what the guest is told about its new identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreSource {
    /// The snapshot directory (`state` and `memory`).
    pub dir: PathBuf,
    /// A JSON object of identity members for the guest's `restored` line.
    pub identity: Option<PathBuf>,
}

/// Unvalidated values as they come from flags or a config file.
#[derive(Clone, Debug, Default)]
pub struct RawVmConfig {
    pub kernel: PathBuf,
    pub initrds: Vec<PathBuf>,
    pub cmdline: Option<String>,
    pub vcpus: Option<u64>,
    pub memory_mib: Option<u64>,
    pub console_log: Option<PathBuf>,
    pub console_log_max_bytes: Option<u64>,
    pub stop_grace_ms: Option<u64>,
    pub entropy: bool,
    pub net: Vec<RawNetConfig>,
    pub drives: Vec<DriveConfig>,
    pub vsock: Option<VsockConfig>,
    pub map_boot_files: bool,
    pub cpuid_cache: Option<PathBuf>,
    pub jail: Option<RawJailConfig>,
    pub seccomp: SeccompMode,
    pub api_socket: Option<PathBuf>,
    pub restore: Option<RestoreSource>,
}

/// vCPUs when none are asked for.
pub const DEFAULT_VCPUS: u64 = 1;
/// Memory when none is asked for (Firecracker's default too).
pub const DEFAULT_MEMORY_MIB: u64 = 128;

impl RawVmConfig {
    /// Validates every field; `host_mib` is the host's physical memory.
    pub fn validate(self, host_mib: u64) -> Result<VmConfig, ConfigError> {
        let cmdline = self.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE);
        let jail = self.jail.map(RawJailConfig::validate).transpose()?;
        let mut console = ConsoleOutput::new(self.console_log, self.console_log_max_bytes)?;
        let mut vsock = self.vsock.map(VsockConfig::validate).transpose()?;
        let mut api_socket = self.api_socket;
        if let Some(jail) = &jail {
            if let Some(path) = &mut api_socket {
                *path = jail.inside("API socket", path)?;
            }
            if let ConsoleOutput::File { path, .. } = &mut console {
                *path = jail.inside("console log", path)?;
            }
            if let Some(v) = &mut vsock {
                v.uds_path = jail.inside("vsock socket", &v.uds_path)?;
            }
        }
        Ok(VmConfig {
            kernel: self.kernel,
            initrds: self.initrds,
            cmdline: KernelCmdline::new(cmdline)?,
            vcpus: VcpuCount::new(self.vcpus.unwrap_or(DEFAULT_VCPUS))?,
            memory: MemorySize::new(self.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB), host_mib)?,
            console,
            stop_grace: self.stop_grace_ms.map(Duration::from_millis),
            entropy: self.entropy,
            net: validate_net(self.net)?,
            drives: drive::validate(self.drives)?,
            vsock,
            map_boot_files: self.map_boot_files,
            cpuid_cache: self.cpuid_cache,
            jail,
            seccomp: self.seccomp,
            api_socket,
            restore: self.restore,
        })
    }
}

/// Reads a config file and parses it as Firecracker's schema.
pub fn read_config_file(path: &Path) -> Result<RawVmConfig, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::ReadFile(path.to_owned(), e))?;
    parse_firecracker_config(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: u64 = 24 * 1024;

    fn raw() -> RawVmConfig {
        RawVmConfig {
            kernel: "vmlinux".into(),
            ..RawVmConfig::default()
        }
    }

    #[test]
    fn defaults_give_one_vcpu_128_mib_and_serial_console_cmdline() {
        let cfg = raw().validate(HOST).unwrap();
        assert_eq!(cfg.vcpus.get(), 1);
        assert_eq!(cfg.memory.mib(), 128);
        assert_eq!(cfg.cmdline.as_str(), DEFAULT_CMDLINE);
        assert_eq!(cfg.console, ConsoleOutput::Stdout);
    }

    #[test]
    fn console_log_cap_needs_a_log_and_at_least_4096_bytes() {
        let with = |path: Option<&str>, max: Option<u64>| {
            RawVmConfig {
                console_log: path.map(PathBuf::from),
                console_log_max_bytes: max,
                ..raw()
            }
            .validate(HOST)
        };
        let err = with(Some("c.log"), Some(4095)).unwrap_err();
        assert!(
            matches!(err, ConfigError::ConsoleLogMaxBytes(4095)),
            "{err}"
        );
        assert!(err.to_string().contains("--console-log-max-bytes"), "{err}");
        let err = with(None, Some(4096)).unwrap_err();
        assert!(
            matches!(err, ConfigError::ConsoleLogMaxBytesWithoutLog),
            "{err}"
        );
        let want = ConsoleOutput::File {
            path: "c.log".into(),
            max_bytes: Some(4096),
        };
        assert_eq!(with(Some("c.log"), Some(4096)).unwrap().console, want);
        let uncapped = with(Some("c.log"), None).unwrap().console;
        assert!(matches!(
            uncapped,
            ConsoleOutput::File {
                max_bytes: None,
                ..
            }
        ));
    }

    #[test]
    fn vcpu_count_outside_1_to_32_is_rejected() {
        for bad in [0, 33, 256, u64::MAX] {
            let err = RawVmConfig {
                vcpus: Some(bad),
                ..raw()
            }
            .validate(HOST)
            .unwrap_err();
            assert!(
                matches!(err, ConfigError::VcpuCount(n) if n == bad),
                "{err}"
            );
        }
        for good in [1, 4, 32] {
            assert!(
                RawVmConfig {
                    vcpus: Some(good),
                    ..raw()
                }
                .validate(HOST)
                .is_ok()
            );
        }
    }

    #[test]
    fn memory_below_minimum_or_above_host_is_rejected() {
        let small = RawVmConfig {
            memory_mib: Some(31),
            ..raw()
        }
        .validate(HOST);
        assert!(matches!(small, Err(ConfigError::MemoryTooSmall(31))));
        let big = RawVmConfig {
            memory_mib: Some(HOST + 1),
            ..raw()
        }
        .validate(HOST);
        assert!(matches!(big, Err(ConfigError::MemoryTooLarge(_, HOST))));
        let ok = RawVmConfig {
            memory_mib: Some(32),
            ..raw()
        }
        .validate(HOST)
        .unwrap();
        assert_eq!(ok.memory.bytes(), 32 << 20);
    }

    #[test]
    fn cmdline_longer_than_guest_buffer_or_with_nul_is_rejected() {
        let long = "a".repeat(MAX_CMDLINE_LEN);
        let err = RawVmConfig {
            cmdline: Some(long),
            ..raw()
        }
        .validate(HOST)
        .unwrap_err();
        assert!(matches!(err, ConfigError::CmdlineTooLong(4096)));
        let nul = RawVmConfig {
            cmdline: Some("a\0b".into()),
            ..raw()
        }
        .validate(HOST);
        assert!(matches!(nul, Err(ConfigError::CmdlineNul)));
    }

    #[test]
    fn device_words_are_appended_and_length_checked_again() {
        let line = KernelCmdline::new("console=ttyS0").unwrap();
        let dev = "virtio_mmio.device=4K@0xc0001000:5";
        let want = format!("console=ttyS0 {dev}");
        assert_eq!(line.with_words(dev).unwrap().as_str(), want);
        assert_eq!(line.with_words("").unwrap(), line);
        let empty = KernelCmdline::new("").unwrap();
        assert_eq!(empty.with_words(dev).unwrap().as_str(), dev);
        let long = KernelCmdline::new(&"a".repeat(MAX_CMDLINE_LEN - 10)).unwrap();
        assert!(matches!(
            long.with_words(dev),
            Err(ConfigError::CmdlineTooLong(_))
        ));
    }
}
