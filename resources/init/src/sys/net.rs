//! The instance's network, with the classic `SIOC*` ioctls on an `AF_INET` datagram socket:
//! address (`SIOCSIFADDR`, which replaces the interface's address if it has one), netmask
//! (`SIOCSIFNETMASK`), `IFF_UP` (`SIOCSIFFLAGS`), the default route (`SIOCADDRT`, and
//! `SIOCDELRT` when a restore moves it) and, on a restore, the MAC address (`SIOCSIFHWADDR`),
//! plus `/etc/resolv.conf`. Ioctls rather than netlink:
//! a few fixed-size requests, no message parsing in PID 1.

use std::ffi::{CStr, CString, c_short};
use std::fs::DirBuilder;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;

use super::{check, cstring};

/// Where `/etc/resolv.conf` goes when `/etc` is read-only (a filesystem-image root): written
/// on the `/run` tmpfs and bind-mounted over the image's (empty) `/etc/resolv.conf`.
const RUN_RESOLV_CONF: &str = "/run/herd/resolv.conf";
const ETC_RESOLV_CONF: &str = "/etc/resolv.conf";

/// An `AF_INET` datagram socket: the handle the interface ioctls need.
fn inet_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket has no memory preconditions.
    let raw =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `raw` is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// An `ifreq` naming `name` (at most 15 bytes), the rest zero.
fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain data (a byte array and a union of integers, arrays and a raw
    // pointer); all zeroes is a valid value of it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

/// `ip` as a `sockaddr` (`AF_INET`, port 0).
fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16-byte plain-data structs; the kernel reads
    // a sockaddr with family AF_INET as a sockaddr_in.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// The interface the instance's settings go to: `eth0` (the first virtio-net device in a herd
/// guest) if there is one, else the first interface in index order other than `lo`.
pub fn first_interface() -> io::Result<Option<String>> {
    let names = interface_names()?;
    if names.iter().any(|n| n == "eth0") {
        return Ok(Some("eth0".into()));
    }
    Ok(names.into_iter().find(|n| n != "lo"))
}

/// Every interface's name, in index order.
fn interface_names() -> io::Result<Vec<String>> {
    // SAFETY: if_nameindex has no preconditions; it returns null or an array we free below.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut names = Vec::new();
    let mut entry = list;
    loop {
        // SAFETY: `entry` points into the array, which ends with an all-zero entry that the
        // loop stops at.
        let current = unsafe { &*entry };
        if current.if_index == 0 || current.if_name.is_null() {
            break;
        }
        // SAFETY: names are NUL-terminated strings that live until if_freenameindex.
        let name = unsafe { CStr::from_ptr(current.if_name) };
        names.push(name.to_string_lossy().into_owned());
        // SAFETY: the terminating entry has not been reached, so the next one exists.
        entry = unsafe { entry.add(1) };
    }
    // SAFETY: `list` came from if_nameindex and is freed once; no pointer into it survives.
    unsafe { libc::if_freenameindex(list) };
    Ok(names)
}

/// Sets `name`'s address and netmask and brings it up.
pub fn set_address(name: &str, addr: Ipv4Addr, mask: Ipv4Addr) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr(addr);
    // SAFETY: SIOCSIFADDR reads the name and address from `req`, valid across the call.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFADDR as _, &req) })?;
    req.ifr_ifru.ifru_netmask = sockaddr(mask);
    // SAFETY: as above, with the netmask member.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFNETMASK as _, &req) })?;
    set_up(&sock, name)
}

/// Sets `IFF_UP` on `name`, keeping its other flags.
pub fn set_up(sock: &OwnedFd, name: &str) -> io::Result<()> {
    set_up_flag(sock, name, true)
}

/// Sets or clears `IFF_UP` on `name`, keeping its other flags.
fn set_up_flag(sock: &OwnedFd, name: &str, up: bool) -> io::Result<()> {
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFFLAGS reads the NUL-terminated name from and writes the flags into `req`,
    // a valid ifreq that lives across the call.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) })?;
    // SAFETY: SIOCGIFFLAGS succeeded, so the kernel initialised the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    let bit = libc::IFF_UP as c_short;
    req.ifr_ifru.ifru_flags = if up { flags | bit } else { flags & !bit };
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) }).map(drop)
}

/// Gives `name` the Ethernet address `mac`. Tried with the interface up first: drivers that
/// can change it live (`IFF_LIVE_ADDR_CHANGE`: virtio_net, veth) keep their routes and queued
/// traffic. One that refuses while running (`EBUSY`) gets it with the interface briefly down,
/// which also drops the routes through it (a restore's new network adds its default route
/// after this).
pub fn set_hardware_address(name: &str, mac: [u8; 6]) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_hwaddr = hardware_sockaddr(mac);
    retry_down_if_busy(
        // SAFETY: SIOCSIFHWADDR reads the name and address from `req`, valid across the call.
        || check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFHWADDR as _, &req) }),
        || set_up_flag(&sock, name, false),
        || set_up_flag(&sock, name, true),
    )
}

/// Runs `change`; if the interface was busy, runs it again between `down` and `up`. The
/// interface comes back up even when the second try fails (it was up: that is why it was
/// busy); the second try's error is then the one returned.
fn retry_down_if_busy<T>(
    mut change: impl FnMut() -> io::Result<T>,
    down: impl FnOnce() -> io::Result<()>,
    up: impl FnOnce() -> io::Result<()>,
) -> io::Result<()> {
    match change() {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
        result => return result.map(drop),
    }
    down()?;
    let changed = change().map(drop);
    let upped = up();
    changed.and(upped)
}

/// `mac` as the `sockaddr` `SIOCSIFHWADDR` takes: family `ARPHRD_ETHER`, the octets first.
fn hardware_sockaddr(mac: [u8; 6]) -> libc::sockaddr {
    let mut sa_data = [0 as libc::c_char; 14];
    for (dst, src) in sa_data.iter_mut().zip(mac) {
        *dst = src as libc::c_char;
    }
    libc::sockaddr {
        sa_family: libc::ARPHRD_ETHER,
        sa_data,
    }
}

/// Brings up `lo`.
pub fn loopback_up() -> io::Result<()> {
    set_up(&inet_socket()?, "lo")
}

/// Adds the default route through `gateway` on `name`.
pub fn add_default_route(name: &str, gateway: Ipv4Addr) -> io::Result<()> {
    let dev = cstring(name)?;
    let mut route = default_route(&dev);
    route.rt_gateway = sockaddr(gateway);
    route.rt_flags |= libc::RTF_GATEWAY;
    let sock = inet_socket()?;
    // SAFETY: SIOCADDRT reads `route` and the device name it points to; both outlive the call
    // and the kernel does not write through rt_dev.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT as _, &route) }).map(drop)
}

/// Removes the default route on `name`, whatever its gateway; none there is not an error.
pub fn delete_default_route(name: &str) -> io::Result<()> {
    let dev = cstring(name)?;
    let route = default_route(&dev);
    let sock = inet_socket()?;
    // SAFETY: SIOCDELRT reads `route` and the device name it points to; both outlive the call
    // and the kernel does not write through rt_dev. No gateway: any default route on `dev`.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCDELRT as _, &route) };
    match check(ret) {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        result => result.map(drop),
    }
}

/// A route to 0.0.0.0/0 on the device named `dev`, up, without a gateway yet.
fn default_route(dev: &CString) -> libc::rtentry {
    // SAFETY: rtentry is plain data (integers, sockaddrs and a raw pointer); all zeroes is a
    // valid value of it.
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_flags = libc::RTF_UP;
    route.rt_dev = dev.as_ptr().cast_mut();
    route
}

/// Writes `/etc/resolv.conf`; if `/etc` is read-only, writes it under `/run` and bind-mounts
/// it over the image's `/etc/resolv.conf` (which must exist).
pub fn write_resolv_conf(text: &str) -> io::Result<()> {
    match DirBuilder::new().mode(0o755).create("/etc") {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists && !read_only(&e) => return Err(e),
        _ => {}
    }
    match std::fs::write(ETC_RESOLV_CONF, text) {
        Err(e) if read_only(&e) => {}
        result => return result,
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create("/run/herd")?;
    std::fs::write(RUN_RESOLV_CONF, text)?;
    bind(RUN_RESOLV_CONF, ETC_RESOLV_CONF)
}

fn read_only(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EROFS)
}

/// Bind-mounts `source` onto `target`.
fn bind(source: &str, target: &str) -> io::Result<()> {
    let (source, target) = (cstring(source)?, cstring(target)?);
    // SAFETY: both are NUL-terminated strings that outlive the call; a bind mount reads no
    // filesystem type or data.
    let ret = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    check(ret).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddrs_carry_the_address_in_network_order() {
        let sa = sockaddr(Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(sa.sa_family, libc::AF_INET as libc::sa_family_t);
        let bytes: Vec<u8> = sa.sa_data.iter().map(|b| *b as u8).collect();
        assert_eq!(&bytes[..6], [0, 0, 10, 0, 0, 2]);
        assert!(ifreq("eth0").is_ok());
        assert!(ifreq("a-name-of-16-chr").is_err());
    }

    #[test]
    fn lo_is_listed_but_never_chosen() {
        // Runs in whatever network namespace the test has; only checks the call works.
        assert!(interface_names().unwrap().contains(&"lo".to_string()));
        assert_ne!(first_interface().unwrap().as_deref(), Some("lo"));
    }

    #[test]
    fn hardware_addresses_are_ethernet_sockaddrs_with_the_octets_first() {
        let sa = hardware_sockaddr([0x02, 0xab, 0, 0, 0x10, 0xff]);
        assert_eq!(sa.sa_family, libc::ARPHRD_ETHER);
        let bytes: Vec<u8> = sa.sa_data.iter().map(|b| *b as u8).collect();
        assert_eq!(bytes[..6], [0x02, 0xab, 0, 0, 0x10, 0xff]);
        assert!(bytes[6..].iter().all(|b| *b == 0));
    }

    /// Runs [`retry_down_if_busy`] with `changes` as the successive results of the change,
    /// and returns its result and the calls made.
    fn retried(changes: &[Option<i32>], up_fails: bool) -> (io::Result<()>, Vec<&'static str>) {
        let calls = std::cell::RefCell::new(Vec::new());
        let mut results = changes.iter();
        let result = retry_down_if_busy(
            || {
                calls.borrow_mut().push("change");
                match results.next().expect("no more changes scripted") {
                    Some(errno) => Err(io::Error::from_raw_os_error(*errno)),
                    None => Ok(()),
                }
            },
            || {
                calls.borrow_mut().push("down");
                Ok(())
            },
            || {
                calls.borrow_mut().push("up");
                if up_fails {
                    return Err(io::Error::from_raw_os_error(libc::ENODEV));
                }
                Ok(())
            },
        );
        (result, calls.into_inner())
    }

    #[test]
    fn a_live_change_is_tried_first_and_only_a_busy_interface_goes_down() {
        let (result, calls) = retried(&[None], false);
        assert!(result.is_ok());
        assert_eq!(calls, ["change"], "a live change needs nothing else");
        let (result, calls) = retried(&[Some(libc::EBUSY), None], false);
        assert!(result.is_ok());
        assert_eq!(calls, ["change", "down", "change", "up"]);
        let (result, calls) = retried(&[Some(libc::EADDRNOTAVAIL)], false);
        assert_eq!(
            result.unwrap_err().raw_os_error(),
            Some(libc::EADDRNOTAVAIL)
        );
        assert_eq!(calls, ["change"], "only EBUSY is worth a second try");
    }

    #[test]
    fn a_busy_interface_comes_back_up_even_if_the_second_try_fails() {
        let (result, calls) = retried(&[Some(libc::EBUSY), Some(libc::EPERM)], false);
        assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::EPERM));
        assert_eq!(calls, ["change", "down", "change", "up"]);
        let (result, _) = retried(&[Some(libc::EBUSY), None], true);
        assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::ENODEV));
    }
}
