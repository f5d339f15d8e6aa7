//! [`RealHost`]: the privileged effects on the guest machine, as libc calls (the network's
//! and the random number generator's in `net` and `rng`).

use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::ptr;

use herd_proto::{MacAddr, Network};

use super::{check, cstring, net, rng};
use crate::boot::say;
use crate::host::{Host, HostError, Mount};
use crate::identity::ENTROPY_BYTES;

/// Guest-physical address of herd-vmm's boot timer, and the byte that fires it.
const DEV_MEM: &str = "/dev/mem";
const BOOT_TIMER_ADDR: libc::off_t = 0xc000_0000;
const BOOT_TIMER_MAGIC: u8 = 123;
const PAGE: usize = 4096;
/// herd-vmm's exit-status port: a one-byte write ends the VM with that status.
const EXIT_STATUS_PORT: u16 = 0xf4;

/// The real machine. Holds nothing: every effect is one short sequence of system calls.
#[derive(Debug, Default)]
pub struct RealHost;

impl RealHost {
    pub fn new() -> Self {
        Self
    }
}

impl Host for RealHost {
    fn mount(&mut self, m: &Mount) -> Result<(), HostError> {
        let err = |source| HostError::Mount {
            fstype: m.fstype,
            target: m.target,
            source,
        };
        if m.create {
            match DirBuilder::new().mode(0o755).create(m.target) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(err(e)),
                _ => {}
            }
        }
        match mount(m) {
            Err(e) if m.busy_is_mounted && e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
            result => result.map_err(err),
        }
    }

    fn symlink(&mut self, link: &'static str, target: &'static str) -> Result<(), HostError> {
        match std::os::unix::fs::symlink(target, link) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(HostError::Link {
                link,
                target,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    fn ensure_console(&mut self) -> Result<(), HostError> {
        for fd in 0..3 {
            // SAFETY: F_GETFD only queries the descriptor table; any integer is acceptable.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
                open_console_as(fd).map_err(HostError::Console)?;
            }
        }
        Ok(())
    }

    fn set_hostname(&mut self, name: &str) -> Result<(), HostError> {
        // SAFETY: the pointer and length describe `name`'s bytes, which outlive the call.
        let ret = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
        check(ret)
            .map(drop)
            .map_err(|e| HostError::Hostname(name.to_owned(), e))
    }

    fn loopback_up(&mut self) -> Result<(), HostError> {
        net::loopback_up().map_err(HostError::Loopback)
    }

    fn configure_network(&mut self, network: &Network) -> Result<String, HostError> {
        set_network(network, false)
    }

    fn replace_network(&mut self, network: &Network) -> Result<String, HostError> {
        set_network(network, true)
    }

    fn set_mac(&mut self, mac: MacAddr) -> Result<String, HostError> {
        let iface = instance_interface()?;
        net::set_hardware_address(&iface, mac.octets()).map_err(|source| HostError::Network {
            iface: iface.clone(),
            step: "set its MAC address",
            source,
        })?;
        Ok(iface)
    }

    fn reseed_rng(&mut self, entropy: &[u8; ENTROPY_BYTES]) -> Result<(), HostError> {
        rng::reseed(entropy).map_err(|(step, source)| HostError::Rng { step, source })
    }

    fn write_resolv_conf(&mut self, text: &str) -> Result<(), HostError> {
        net::write_resolv_conf(text).map_err(HostError::ResolvConf)
    }

    fn switch_root(&mut self, rootfs: &herd_proto::Rootfs) -> Result<(), HostError> {
        super::root::switch_root(rootfs)
    }

    fn signal_boot_timer(&mut self) -> Result<(), HostError> {
        write_byte_at(DEV_MEM, BOOT_TIMER_ADDR, BOOT_TIMER_MAGIC).map_err(HostError::BootTimer)
    }

    fn end_vm(&mut self, status: u8) -> ! {
        // SAFETY: sync has no preconditions.
        unsafe { libc::sync() };
        match port_write(EXIT_STATUS_PORT, status) {
            Ok(()) => say(format_args!(
                "warning: the VM did not end at the exit-status port"
            )),
            Err(e) => say(format_args!(
                "warning: exit-status port {EXIT_STATUS_PORT:#x} unavailable ({e}): \
                 rebooting, status {status} is lost"
            )),
        }
        // SAFETY: restarting the machine is what we want; the file systems are synced.
        unsafe { libc::reboot(libc::RB_AUTOBOOT) };
        // Still running: exiting PID 1 panics the kernel, which reboots (panic=-1).
        std::process::exit(i32::from(status))
    }
}

/// The instance's interface gets `network`'s address, netmask and default route; with
/// `replace`, its old default route goes first (`SIOCSIFADDR` replaces the old address).
fn set_network(network: &Network, replace: bool) -> Result<String, HostError> {
    let iface = instance_interface()?;
    let err = |step, source| HostError::Network {
        iface: iface.clone(),
        step,
        source,
    };
    if replace {
        net::delete_default_route(&iface).map_err(|e| err("remove the old default route", e))?;
    }
    net::set_address(&iface, network.address, network.netmask())
        .map_err(|e| err("set its address", e))?;
    if let Some(gw) = network.gateway {
        net::add_default_route(&iface, gw).map_err(|e| err("add the default route", e))?;
    }
    Ok(iface)
}

/// The interface the instance's settings go to ([`net::first_interface`]).
fn instance_interface() -> Result<String, HostError> {
    net::first_interface()
        .map_err(HostError::NoInterface)?
        .ok_or_else(|| HostError::NoInterface(io::ErrorKind::NotFound.into()))
}

fn mount(m: &Mount) -> io::Result<()> {
    let fstype = cstring(m.fstype)?;
    let target = cstring(m.target)?;
    let data = m.data.map(cstring).transpose()?;
    let data_ptr = data.as_ref().map_or(ptr::null(), |d| d.as_ptr().cast());
    let flag = |on, bit| if on { bit } else { 0 };
    let flags = flag(m.flags.nosuid, libc::MS_NOSUID)
        | flag(m.flags.nodev, libc::MS_NODEV)
        | flag(m.flags.noexec, libc::MS_NOEXEC);
    // SAFETY: source, target and type are NUL-terminated strings and data is one or null; all
    // outlive the call and the kernel copies them.
    let ret = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data_ptr,
        )
    };
    check(ret).map(drop)
}

/// Opens `/dev/console` onto descriptor `fd`, inheritable by the app.
fn open_console_as(fd: i32) -> io::Result<()> {
    let console = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/console")?;
    let got = console.into_raw_fd();
    if got == fd {
        // std opened it close-on-exec; the app must inherit it.
        // SAFETY: `got` is the descriptor just opened and now owned by the process table.
        check(unsafe { libc::fcntl(got, libc::F_SETFD, 0) })?;
        return Ok(());
    }
    // SAFETY: `got` was just opened and is owned by nothing else.
    let console = unsafe { OwnedFd::from_raw_fd(got) };
    // SAFETY: both are valid descriptor numbers; dup2 onto the free `fd` clears close-on-exec.
    check(unsafe { libc::dup2(console.as_raw_fd(), fd) }).map(drop)
}

/// Writes one byte at offset `addr` of `path` through a one-page shared mapping: for
/// `/dev/mem`, a guest-physical MMIO address (a `pwrite` would be refused: /dev/mem's
/// read/write path only covers RAM). `O_SYNC` makes the mapping uncached.
fn write_byte_at(path: &str, addr: libc::off_t, value: u8) -> io::Result<()> {
    let mem = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_SYNC)
        .open(path)?;
    // SAFETY: a new shared mapping chosen by the kernel (null hint); it overlaps nothing of ours.
    let page = unsafe {
        libc::mmap(
            ptr::null_mut(),
            PAGE,
            libc::PROT_WRITE,
            libc::MAP_SHARED,
            mem.as_raw_fd(),
            addr,
        )
    };
    if page == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `page` is a live, writable, page-sized mapping; volatile because it is a device
    // register, not memory.
    unsafe { page.cast::<u8>().write_volatile(value) };
    // SAFETY: unmaps exactly the mapping made above; nothing refers into it any more.
    check(unsafe { libc::munmap(page, PAGE) }).map(drop)
}

/// One `out` to an I/O port, after asking the kernel for access to it.
#[cfg(target_arch = "x86_64")]
fn port_write(port: u16, value: u8) -> io::Result<()> {
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    check(unsafe { libc::ioperm(port.into(), 1, 1) })?;
    // SAFETY: ioperm granted access to exactly this port, so `out` cannot fault, and it touches
    // no memory of this process.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags));
    }
    Ok(())
}

#[cfg(not(target_arch = "x86_64"))]
fn port_write(_port: u16, _value: u8) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;

    #[test]
    fn the_boot_timer_byte_lands_at_its_offset_through_the_mapping() {
        // A sparse file as large as the boot timer's address stands in for /dev/mem.
        let file = tempfile::NamedTempFile::new().unwrap();
        let size = BOOT_TIMER_ADDR as u64 + PAGE as u64;
        file.as_file().set_len(size).unwrap();
        let path = file.path().to_str().unwrap();
        write_byte_at(path, BOOT_TIMER_ADDR, BOOT_TIMER_MAGIC).unwrap();
        let mut byte = [0u8; 2];
        file.as_file()
            .read_exact_at(&mut byte, BOOT_TIMER_ADDR as u64)
            .unwrap();
        assert_eq!(byte, [123, 0]);
        assert!(write_byte_at("/nonexistent/mem", BOOT_TIMER_ADDR, 1).is_err());
    }
}
