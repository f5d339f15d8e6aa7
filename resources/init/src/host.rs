//! The seams between init's logic and the kernel: [`Host`] for the privileged effects on the
//! machine (mounts, hostname, loopback, network, random number generator, boot timer, ending
//! the VM) and [`Os`] for the ordinary process calls (signals, spawning, reaping, files, the
//! control port). Also the fixed data those effects use: which filesystems go where
//! ([`MOUNTS`]), which `/dev` links exist ([`DEV_LINKS`]), where the control port is
//! ([`CONTROL_PORT`]).
//!
//! Keeping every effect behind these two traits lets [`crate::boot`] be unit-tested with a
//! recording fake, lets `herd-init-testhost` swap only the effects that would touch the real
//! machine, and keeps all `unsafe` in [`crate::sys`], which implements both.

use std::io;

use herd_proto::{Launch, MacAddr, Network, Rootfs};

use crate::identity::ENTROPY_BYTES;

/// A process id.
pub type Pid = i32;

/// Failure of one privileged effect, naming what was attempted.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot mount {fstype} on {target}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot link {link} to {target}")]
    Link {
        link: &'static str,
        target: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot open /dev/console for standard input and output")]
    Console(#[source] io::Error),
    #[error("cannot set the hostname to {0:?}")]
    Hostname(String, #[source] io::Error),
    #[error("cannot bring up the loopback interface lo")]
    Loopback(#[source] io::Error),
    #[error("no network interface besides lo to configure")]
    NoInterface(#[source] io::Error),
    #[error("cannot configure network interface {iface}: cannot {step}")]
    Network {
        iface: String,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot write /etc/resolv.conf")]
    ResolvConf(#[source] io::Error),
    #[error("cannot reseed the kernel's random number generator: cannot {step}")]
    Rng {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot switch root to {fstype} {device}: cannot {step}")]
    SwitchRoot {
        device: String,
        fstype: &'static str,
        step: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot signal the boot timer (byte 123 at guest-physical 0xc0000000 via /dev/mem)")]
    BootTimer(#[source] io::Error),
}

/// Mount options init uses (each maps to one `MS_*` flag).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MountFlags {
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
}

/// One filesystem init mounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Filesystem type, also used as the mount source.
    pub fstype: &'static str,
    pub target: &'static str,
    pub flags: MountFlags,
    /// Filesystem-specific options (`mode=...`).
    pub data: Option<&'static str>,
    /// Create the target directory first (it lives inside an earlier mount).
    pub create: bool,
    /// `EBUSY` means it is already there (the kernel's devtmpfs automount): not an error.
    pub busy_is_mounted: bool,
}

const NOSUID: MountFlags = MountFlags {
    nosuid: true,
    nodev: false,
    noexec: false,
};
const NOSUID_NODEV: MountFlags = MountFlags {
    nosuid: true,
    nodev: true,
    noexec: false,
};
const NOSUID_NODEV_NOEXEC: MountFlags = MountFlags {
    nosuid: true,
    nodev: true,
    noexec: true,
};

/// What init mounts, in order. `/dev` comes first so that a missing console can be opened.
pub const MOUNTS: [Mount; 6] = [
    mount("devtmpfs", "/dev", NOSUID, Some("mode=0755"), false, true),
    mount("proc", "/proc", NOSUID_NODEV_NOEXEC, None, false, false),
    mount("sysfs", "/sys", NOSUID_NODEV_NOEXEC, None, false, false),
    mount(
        "tmpfs",
        "/tmp",
        NOSUID_NODEV,
        Some("mode=1777"),
        false,
        false,
    ),
    mount(
        "tmpfs",
        "/run",
        NOSUID_NODEV,
        Some("mode=0755"),
        false,
        false,
    ),
    mount(
        "tmpfs",
        "/dev/shm",
        NOSUID_NODEV,
        Some("mode=1777"),
        true,
        false,
    ),
];

const fn mount(
    fstype: &'static str,
    target: &'static str,
    flags: MountFlags,
    data: Option<&'static str>,
    create: bool,
    busy_is_mounted: bool,
) -> Mount {
    Mount {
        fstype,
        target,
        flags,
        data,
        create,
        busy_is_mounted,
    }
}

/// `/dev` entries that programs expect and devtmpfs does not create: `(link, target)`.
pub const DEV_LINKS: [(&str, &str); 4] = [
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
];

/// Where [`Host::switch_root`] mounts the root filesystem image.
pub const NEWROOT: &str = "/newroot";
/// The mounts [`Host::switch_root`] moves into the new root (`/dev/shm` goes with `/dev`).
pub const SWITCHED_MOUNTS: [&str; 5] = ["/dev", "/proc", "/sys", "/run", "/tmp"];
/// How long [`Host::switch_root`] waits for the device node to appear.
pub const DEVICE_WAIT_MS: u64 = 2000;

/// herd-vmm's control port in the guest (COM2): host requests, see [`crate::control`].
pub const CONTROL_PORT: &str = "/dev/ttyS1";

/// Signals init handles. Everything else sent to PID 1 is discarded by the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Term,
    Int,
    Child,
}

/// What [`Os::wait_event`] woke up for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// One of the blocked signals arrived.
    Signal(Signal),
    /// This many bytes were read from the control port into the caller's buffer.
    Control(usize),
    /// The control port reached end of file (or failed); it is no longer watched.
    ControlClosed,
}

/// Privileged effects on the machine. Implemented by [`crate::sys::RealHost`].
pub trait Host {
    /// Mounts one filesystem (see [`Mount::busy_is_mounted`], [`Mount::create`]).
    fn mount(&mut self, mount: &Mount) -> Result<(), HostError>;
    /// Creates a symbolic link; an existing entry is left alone.
    fn symlink(&mut self, link: &'static str, target: &'static str) -> Result<(), HostError>;
    /// Makes sure file descriptors 0, 1 and 2 are open, on `/dev/console` if they were not.
    fn ensure_console(&mut self) -> Result<(), HostError>;
    fn set_hostname(&mut self, name: &str) -> Result<(), HostError>;
    /// Sets `IFF_UP` on `lo` (Linux then answers on 127.0.0.1).
    fn loopback_up(&mut self) -> Result<(), HostError>;
    /// Gives the first interface other than `lo` the instance's address and netmask, brings
    /// it up and adds the default route; returns the interface's name.
    fn configure_network(&mut self, network: &Network) -> Result<String, HostError>;
    /// Moves the interface [`Host::configure_network`] configured to `network` after a
    /// restore: the old default route goes, the address is replaced (the old one is removed),
    /// and the new default route, if any, is added. Returns the interface's name.
    fn replace_network(&mut self, network: &Network) -> Result<String, HostError>;
    /// Gives the interface [`Host::configure_network`] configures (`eth0`) the Ethernet
    /// address `mac`, keeping it up (see `docs/snapshots.md`). Returns the interface's name.
    fn set_mac(&mut self, mac: MacAddr) -> Result<String, HostError>;
    /// Mixes `entropy` into the kernel's random pool, credits it, and makes the kernel reseed
    /// its generator from the pool at once (so no output after this derives from the state a
    /// snapshot captured).
    fn reseed_rng(&mut self, entropy: &[u8; ENTROPY_BYTES]) -> Result<(), HostError>;
    /// Makes `text` the content of `/etc/resolv.conf` (see `docs/image-format.md`).
    fn write_resolv_conf(&mut self, text: &str) -> Result<(), HostError>;
    /// Mounts the image's root filesystem read-only at [`NEWROOT`] (waiting briefly for the
    /// device node), moves [`SWITCHED_MOUNTS`] into it and makes it the root (as
    /// `switch_root` does: `MS_MOVE` onto `/`, then `chroot`). The initramfs stays in memory.
    fn switch_root(&mut self, rootfs: &Rootfs) -> Result<(), HostError>;
    /// Tells herd-vmm that boot is done: the app starts next.
    fn signal_boot_timer(&mut self) -> Result<(), HostError>;
    /// Ends the VM with `status` (herd-vmm's exit status). Never returns.
    fn end_vm(&mut self, status: u8) -> !;
}

/// Ordinary process and file calls. Implemented by [`crate::sys::RealOs`].
pub trait Os {
    /// Blocks [`Signal`]s so that they queue until [`Os::wait_event`] takes them.
    fn block_signals(&mut self) -> io::Result<()>;
    /// Reads a UTF-8 file; `Ok(None)` if it does not exist.
    fn read_file(&mut self, path: &str) -> io::Result<Option<String>>;
    /// Makes `text` the content of `path` (mode 0644) atomically: written under a temporary
    /// name in the same directory, then renamed over `path`, so a reader sees the old
    /// content or the new, never a mix. Creates the directory if missing.
    fn replace_file(&mut self, path: &str, text: &str) -> io::Result<()>;
    /// Whether `path` names an existing file (following symbolic links).
    fn exists(&mut self, path: &str) -> bool;
    /// Changes init's working directory (the app inherits it).
    fn chdir(&mut self, dir: &str) -> io::Result<()>;
    /// Starts the app with exactly `launch`'s argv and env, init's stdio, default signal
    /// dispositions and an empty mask. Returns once the app is executing; an `exec` failure
    /// is returned as its error.
    fn spawn(&mut self, launch: &Launch) -> io::Result<Pid>;
    /// Opens the control port at `path` for reading; [`Os::wait_event`] watches it from then on.
    fn open_control(&mut self, path: &str) -> io::Result<()>;
    /// Waits until a blocked signal arrives or the control port has bytes (read into `buf`).
    fn wait_event(&mut self, buf: &mut [u8]) -> io::Result<Event>;
    /// Collects one exited child without blocking: its pid and raw wait status.
    fn reap(&mut self) -> io::Result<Option<(Pid, i32)>>;
    /// Sends `signal` to `pid`; a process that is already gone is not an error.
    fn kill(&mut self, pid: Pid, signal: Signal) -> io::Result<()>;
}
