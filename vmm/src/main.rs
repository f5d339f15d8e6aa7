//! `herd-vmm`: boots one microVM from flags or a Firecracker config file and exits with the
//! guest's status. Errors print as one line with their whole cause chain.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use herd_vmm::config::{
    ConfigError, DriveConfig, RawJailConfig, RawVmConfig, RestoreSource, VmConfig, parse_net_flag,
    parse_vsock_flag, read_config_file,
};
use herd_vmm::devices::legacy::BootClock;
use herd_vmm::jail::{self, JailError, Side};
use herd_vmm::restore::{self, RestoreError};
use herd_vmm::seccomp::SeccompMode;
use herd_vmm::snapshot::{self, Snapshot, SnapshotError};
use herd_vmm::stop::StopReason;
use herd_vmm::vmm::{HostInputs, Vmm, exit_code};
use herd_vmm::{host, logging, vstate};
use vmm_sys_util::terminal::Terminal;

/// Boot a microVM on KVM: an ELF vmlinux (PVH) or a bzImage, with an optional initrd.
#[derive(Debug, Parser)]
#[command(name = "herd-vmm", version, about, after_help = AFTER_HELP)]
struct Cli {
    /// Guest kernel: ELF vmlinux (PVH note or 64-bit entry) or bzImage.
    #[arg(long, value_name = "PATH", required_unless_present_any = ["config_file", "restore"])]
    kernel: Option<PathBuf>,
    /// Initial ramdisk (e.g. a newc cpio archive); repeat to append more parts, which the
    /// guest sees concatenated (4-byte aligned) as one initrd.
    #[arg(long, value_name = "PATH", conflicts_with = "config_file")]
    initrd: Vec<PathBuf>,
    /// Kernel command line [default: console=ttyS0 reboot=k panic=-1 pci=off nomodule].
    #[arg(long, value_name = "STR", conflicts_with = "config_file")]
    cmdline: Option<String>,
    /// Number of vCPUs, 1 to 32 [default: 1].
    #[arg(long, value_name = "N", conflicts_with = "config_file")]
    vcpus: Option<u64>,
    /// Guest memory in MiB, at least 32 [default: 128].
    #[arg(long, value_name = "MIB", conflicts_with = "config_file")]
    memory: Option<u64>,
    /// Firecracker-style JSON config (`boot-source`, `machine-config`, `drives`, `entropy`,
    /// `network-interfaces`, `vsock`).
    #[arg(long, value_name = "PATH", conflicts_with = "kernel")]
    config_file: Option<PathBuf>,
    /// Give the guest a virtio-rng device (virtio-mmio, announced on its command line) fed
    /// from the host's getrandom.
    #[arg(long, conflicts_with = "config_file")]
    entropy: bool,
    /// Give the guest a virtio-net device on the existing host TAP interface `TAP` (herd-vmm
    /// attaches, it does not create one), optionally with this MAC; repeat for more.
    #[arg(long, value_name = "TAP[,mac=MAC]", conflicts_with = "config_file")]
    net: Vec<String>,
    /// Give the guest a virtio-blk device backed by this file or block device; `ro` makes it
    /// read-only, `root` adds `root=/dev/vda rw|ro` to the command line, `id=` names it
    /// [default: disk0, disk1, ...]. Guest flushes sync the file. Repeat for more disks.
    #[arg(
        long,
        value_name = "PATH[,ro][,root][,id=NAME]",
        conflicts_with = "config_file"
    )]
    disk: Vec<String>,
    /// Give the guest a virtio-vsock device with guest CID `CID` (at least 3); host clients
    /// connect to the Unix socket `PATH` and write `CONNECT <port>\n`, guest connections to
    /// host port P go to `PATH_P` (Firecracker's convention). `PATH` is removed on exit.
    #[arg(long, value_name = "CID,PATH", conflicts_with = "config_file")]
    vsock: Option<String>,
    /// Write the guest console to this file instead of stdout (created or truncated at start).
    #[arg(long, value_name = "PATH")]
    console_log: Option<PathBuf>,
    /// Keep the console log under N bytes (at least 4096): when the guest's output would take
    /// PATH past N, herd-vmm renames it to PATH.1 (replacing an older one) and starts a fresh
    /// PATH, so PATH.1 then PATH hold the latest output, at most about 2N bytes. A PATH.1 left
    /// by an earlier run is removed at start [default: no cap].
    #[arg(long, value_name = "N", requires = "console_log")]
    console_log_max_bytes: Option<u64>,
    /// On SIGTERM/SIGINT, send the guest a stop request on the control port (COM2) and give
    /// it this many milliseconds to end the VM itself before powering off; a second signal
    /// stops at once [default: stop at once].
    #[arg(long, value_name = "MS")]
    stop_grace: Option<u64>,
    /// Map the kernel's and the first initrd's pages into guest memory from the page cache
    /// (private, copy-on-write) instead of copying them, so VMs booting the same files share
    /// those pages. Only for files that are not rewritten while the VM runs (the agent's
    /// image store); a truncated file would fault the guest.
    #[arg(long)]
    map_boot_files: bool,
    /// Keep KVM's supported CPUID in a file in DIR (named by kernel release, boot id and when
    /// /dev/kvm appeared), so only the first VM after a host boot or KVM module load asks KVM
    /// for it; the agent passes its state directory.
    #[arg(long, value_name = "DIR")]
    cpuid_cache: Option<PathBuf>,
    /// Confine herd-vmm before it builds the VM: everything it needs from the host is opened
    /// first, then it joins the --jail-cgroup groups, enters new mount, PID, IPC, UTS and
    /// network namespaces, makes DIR its root (pivot_root), limits open files and drops to
    /// --jail-uid/--jail-gid with no_new_privs. The console log and vsock socket must lie
    /// inside DIR. A parent process stays outside, relays SIGTERM/SIGINT and exits with the
    /// jailed process's status. Needs root.
    #[arg(long, value_name = "DIR", requires_all = ["jail_uid", "jail_gid"])]
    jail: Option<PathBuf>,
    /// The unprivileged user id the jailed herd-vmm runs as.
    #[arg(long, value_name = "UID", requires = "jail")]
    jail_uid: Option<u32>,
    /// The unprivileged group id the jailed herd-vmm runs as.
    #[arg(long, value_name = "GID", requires = "jail")]
    jail_gid: Option<u32>,
    /// A cgroup directory (v2, or one per controller for v1) to join before anything is
    /// allocated, so its memory, CPU and pids limits bind the VM; repeat for more.
    #[arg(long, value_name = "DIR", requires = "jail")]
    jail_cgroup: Vec<PathBuf>,
    /// The jailed herd-vmm's limit on open files [default: 4096].
    #[arg(long, value_name = "N", requires = "jail")]
    jail_max_open_files: Option<u64>,
    /// Run without seccomp filters (debugging only): by default each thread may make only
    /// the system calls it needs, and any other call kills the process.
    #[arg(long)]
    no_seccomp: bool,
    /// Let calls outside the seccomp allow-lists through and have the kernel log them
    /// (audit type 1326), to find what a new code path needs.
    #[arg(long, conflicts_with = "no_seccomp")]
    seccomp_audit: bool,
    /// Answer pause, resume, status and snapshot requests (one JSON line each) on this Unix
    /// socket; see docs/snapshots.md. Removed on exit.
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// Resume the snapshot in DIR (written by a `snapshot` request) instead of booting: the
    /// machine, the devices' guest-visible settings and the memory (mapped copy-on-write,
    /// not copied) come from it; give --net, --disk and --vsock again for its devices, with
    /// new host-side names if you like. The guest is told its new identity on the control
    /// port.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with_all = ["kernel", "config_file", "initrd", "cmdline", "vcpus", "memory", "entropy", "map_boot_files"]
    )]
    restore: Option<PathBuf>,
    /// With --restore: a JSON object (at most 3 KiB) whose members are added to the
    /// guest's `restored` line (e.g. instance_id, hostname, network).
    #[arg(long, value_name = "FILE", requires = "restore")]
    identity: Option<PathBuf>,
    /// Log level for herd-vmm's own messages (error, warn, info, debug, trace).
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: String,
}

const AFTER_HELP: &str = "\
Exit status: the byte the guest wrote to port 0xf4; 0 after a guest reset; 130/143 after
SIGINT/SIGTERM; 64 bad usage, 65 unusable input file, 66 missing file, 69 no usable KVM,
70 internal error, 77 permission denied, 80 guest crashed (see docs/guest-interface.md).";

/// What `main` needs to start: the config, and the snapshot when restoring.
struct Start {
    config: VmConfig,
    snapshot: Option<Snapshot>,
}

/// Reads the snapshot's state for `--restore` and fills the config from it.
fn resolve_start(cli: Cli) -> Result<Start, StartError> {
    let Some(dir) = cli.restore.clone() else {
        return Ok(Start {
            config: resolve_config(cli, None)?,
            snapshot: None,
        });
    };
    let snapshot = snapshot::read_state(&dir)?;
    let config = resolve_config(cli, Some(&snapshot))?;
    Ok(Start {
        config,
        snapshot: Some(snapshot),
    })
}

/// Errors before anything is opened.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("cannot restore snapshot {0}")]
    Restore(PathBuf, #[source] RestoreError),
}

fn resolve_config(cli: Cli, snapshot: Option<&Snapshot>) -> Result<VmConfig, StartError> {
    let drives = cli
        .disk
        .iter()
        .enumerate()
        .map(|(i, d)| DriveConfig::from_flag(d, i))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ConfigError::from)?;
    let mut raw = match &cli.config_file {
        Some(path) => read_config_file(path)?,
        None => RawVmConfig {
            kernel: cli.kernel.unwrap_or_default(),
            initrds: cli.initrd,
            cmdline: cli.cmdline,
            vcpus: cli.vcpus,
            memory_mib: cli.memory,
            console_log: None,
            console_log_max_bytes: None,
            stop_grace_ms: None,
            entropy: cli.entropy,
            net: cli
                .net
                .iter()
                .enumerate()
                .map(|(i, spec)| parse_net_flag(i, spec))
                .collect::<Result<_, _>>()
                .map_err(ConfigError::from)?,
            drives,
            vsock: (cli.vsock.as_deref().map(parse_vsock_flag).transpose())
                .map_err(ConfigError::from)?,
            ..RawVmConfig::default()
        },
    };
    raw.console_log = cli.console_log;
    raw.console_log_max_bytes = cli.console_log_max_bytes;
    raw.stop_grace_ms = cli.stop_grace;
    raw.map_boot_files = cli.map_boot_files;
    raw.cpuid_cache = cli.cpuid_cache;
    raw.jail = cli.jail.map(|root| RawJailConfig {
        root,
        uid: cli.jail_uid.unwrap_or_default(),
        gid: cli.jail_gid.unwrap_or_default(),
        cgroups: cli.jail_cgroup,
        max_open_files: cli.jail_max_open_files,
    });
    raw.seccomp = match (cli.no_seccomp, cli.seccomp_audit) {
        (true, _) => SeccompMode::Off,
        (_, true) => SeccompMode::Audit,
        _ => SeccompMode::Kill,
    };
    raw.api_socket = cli.api_socket;
    if let (Some(s), Some(dir)) = (snapshot, cli.restore) {
        restore::apply_snapshot(&mut raw, s).map_err(|e| StartError::Restore(dir.clone(), e))?;
        raw.restore = Some(RestoreSource {
            dir,
            identity: cli.identity,
        });
    }
    Ok(raw.validate(host::memory_mib())?)
}

fn start_exit_code(err: &StartError) -> i32 {
    let io_code = |e: &std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => exit_code::NO_INPUT,
        std::io::ErrorKind::PermissionDenied => exit_code::NO_PERM,
        _ => exit_code::DATA,
    };
    match err {
        StartError::Config(ConfigError::ReadFile(_, e)) => match io_code(e) {
            exit_code::DATA => exit_code::USAGE,
            code => code,
        },
        StartError::Config(_) => exit_code::USAGE,
        StartError::Snapshot(SnapshotError::Read(_, e)) => io_code(e),
        StartError::Snapshot(_) => exit_code::DATA,
        StartError::Restore(..) => exit_code::USAGE,
    }
}

fn report(err: &dyn std::error::Error) {
    let mut line = format!("herd-vmm: error: {err}");
    let mut cause = err.source();
    while let Some(c) = cause {
        line.push_str(&format!(": {c}"));
        cause = c.source();
    }
    eprintln!("{line}");
}

fn status_for(reason: &StopReason) -> i32 {
    match reason {
        StopReason::GuestExitStatus(n) => i32::from(*n),
        StopReason::GuestReset => 0,
        StopReason::Signal(sig) => 128 + sig,
        StopReason::Fault(fault) => {
            report(fault);
            exit_code::GUEST_FAULT
        }
    }
}

/// Opens the host inputs and, with `--jail`, confines the process; `Err` is the status to
/// exit with (the jail's parent side ends here too, with its child's status).
fn prepare(config: &VmConfig) -> Result<HostInputs, i32> {
    let inputs = HostInputs::open(config).map_err(|e| {
        report(&e);
        e.exit_code()
    })?;
    let Some(jail) = &config.jail else {
        return Ok(inputs);
    };
    let failed = |e: JailError| {
        report(&e);
        if e.is_permission() {
            exit_code::NO_PERM
        } else {
            exit_code::SOFTWARE
        }
    };
    match jail::enter(jail).map_err(failed)? {
        Side::Jailed => Ok(inputs),
        Side::Parent(child) => {
            drop(inputs);
            Err(jail::wait_for_child(child).unwrap_or_else(failed))
        }
    }
}

fn run(config: &VmConfig, snapshot: Option<&Snapshot>) -> i32 {
    let clock = BootClock::now();
    let inputs = match prepare(config) {
        Ok(inputs) => inputs,
        Err(status) => return status,
    };
    let built = match snapshot {
        None => Vmm::build(config, clock, inputs),
        Some(s) => Vmm::restore(config, clock, inputs, s),
    };
    let vmm = match built {
        Ok(vmm) => vmm,
        Err(e) => {
            report(&e);
            return e.exit_code();
        }
    };
    // Raw mode lets keystrokes (Ctrl-C included) reach the guest; only for a real terminal.
    let stdin = std::io::stdin();
    let raw_tty = stdin.is_terminal() && stdin.lock().set_raw_mode().is_ok();
    let result = vmm.run();
    if raw_tty {
        let _ = stdin.lock().set_canon_mode();
    }
    match result {
        Ok(reason) => {
            tracing::debug!(?reason, "VM stopped");
            status_for(&reason)
        }
        Err(e) => {
            report(&e);
            e.exit_code()
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(exit_code::USAGE as u8);
        }
    };
    logging::init(&cli.log_level);
    let start = match resolve_start(cli) {
        Ok(start) => start,
        Err(e) => {
            report(&e);
            return ExitCode::from(start_exit_code(&e) as u8);
        }
    };
    if vstate::vm::host_is_pvm() {
        tracing::warn!(
            "/dev/kvm is PVM (software virtualization): guest kernel code runs emulated, so stock Linux guests boot slowly and cannot start user space"
        );
    }
    let status = run(&start.config, start.snapshot.as_ref());
    ExitCode::from(status as u8)
}
