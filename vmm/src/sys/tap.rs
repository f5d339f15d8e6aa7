//! TAP devices: attaching to an existing TAP interface through `/dev/net/tun` with a
//! `virtio_net_hdr_v1` in front of every frame (`IFF_VNET_HDR`, header size 12), and
//! non-blocking frame reads and writes. We never create an interface: if the name is not an
//! existing TAP the kernel would make one, so its absence is checked first in sysfs.
//!
//! Offloads (`TUNSETOFFLOAD`) say which checksum and segmentation work frames *read* from the
//! TAP may leave to the reader (the guest). At open we find out which the kernel accepts
//! ([`probe_offloads`]: everything at once, else one flag at a time) and then turn them all
//! off: until a guest driver acks the matching virtio features, the host kernel must hand us
//! finished frames. Frames *written* with a header asking for checksum or segmentation are
//! always accepted by a TAP with `IFF_VNET_HDR`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::Ioctl = 0x4004_54ca;
/// `_IOW('T', 216, int)`.
pub const TUNSETVNETHDRSZ: libc::Ioctl = 0x4004_54d8;
/// `_IOW('T', 208, unsigned int)`.
pub const TUNSETOFFLOAD: libc::Ioctl = 0x4004_54d0;
/// Offload flag: frames may carry a partial checksum (`VIRTIO_NET_HDR_F_NEEDS_CSUM`).
pub const TUN_F_CSUM: u32 = 0x01;
/// Offload flag: frames may be TCP/IPv4 segmentation jobs (needs `TUN_F_CSUM`).
pub const TUN_F_TSO4: u32 = 0x02;
/// Offload flag: frames may be TCP/IPv6 segmentation jobs (needs `TUN_F_CSUM`).
pub const TUN_F_TSO6: u32 = 0x04;
/// Offload flag: segmentation jobs may have the ECN bit (needs `TUN_F_TSO4` or `TUN_F_TSO6`).
pub const TUN_F_TSO_ECN: u32 = 0x08;
/// Offload flag: frames may be UDP fragmentation jobs (needs `TUN_F_CSUM`).
pub const TUN_F_UFO: u32 = 0x10;
/// Every offload flag we ask for.
pub const TUN_F_ALL: u32 = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_UFO;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// Bytes of `virtio_net_hdr_v1` (with `num_buffers`) in front of every frame.
pub const VNET_HDR_LEN: usize = 12;
/// Longest interface name, without the NUL.
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// Why a TAP cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("invalid interface name (1 to {MAX_NAME_LEN} bytes, no '/', ':' or whitespace)")]
    BadName,
    #[error("no such network interface (herd attaches to an existing TAP; create it first)")]
    Missing,
    #[error("the interface is not a TAP device")]
    NotTap,
    #[error("cannot open /dev/net/tun")]
    OpenTun(#[source] io::Error),
    #[error("the TAP is busy (another process is attached to it)")]
    Busy(#[source] io::Error),
    #[error("cannot attach to the TAP (TUNSETIFF)")]
    SetIff(#[source] io::Error),
    #[error("cannot set the virtio-net header size (TUNSETVNETHDRSZ)")]
    VnetHdr(#[source] io::Error),
    #[error("cannot turn the TAP's offloads off (TUNSETOFFLOAD)")]
    Offload(#[source] io::Error),
}

/// The `struct ifreq` layout TUNSETIFF reads: name, flags, padding to 40 bytes.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An attached TAP queue; reads and writes whole frames, never blocking.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    /// The `TUN_F_*` flags the kernel accepted for this TAP.
    offloads: u32,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

impl Tap {
    /// Attaches to the existing TAP interface `name` (non-blocking, close-on-exec).
    pub fn open(name: &str) -> Result<Self, TapError> {
        if !valid_name(name) {
            return Err(TapError::BadName);
        }
        let sys = Path::new("/sys/class/net").join(name);
        if !sys.exists() {
            return Err(TapError::Missing);
        }
        // Only tun/tap devices have `tun_flags`; TUNSETIFF on another kind fails vaguely.
        if !sys.join("tun_flags").exists() {
            return Err(TapError::NotTap);
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads (and may write back) one `struct ifreq`; `req` is a live,
        // writable value of exactly that layout, NUL-terminated name included.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EBUSY) => TapError::Busy(e),
                Some(libc::EINVAL) => TapError::NotTap,
                _ => TapError::SetIff(e),
            });
        }
        let size = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which points at `size`.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &size as *const _) };
        if rc < 0 {
            return Err(TapError::VnetHdr(io::Error::last_os_error()));
        }
        let mut tap = Self {
            file,
            name: name.to_owned(),
            offloads: 0,
        };
        let accepted = probe_offloads(|flags| tap.set_offloads(flags).is_ok());
        tap.offloads = accepted;
        tap.set_offloads(0).map_err(TapError::Offload)?;
        Ok(tap)
    }

    /// The `TUN_F_*` offload flags this TAP accepts.
    pub fn offloads(&self) -> u32 {
        self.offloads
    }

    /// Sets the offloads frames read from the TAP may carry (`TUN_F_*`; 0 for none).
    pub fn set_offloads(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned int), no pointer.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame (header included); `WouldBlock` when none is queued.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is a valid, writable buffer of `buf.len()` bytes; read writes at most
        // that many.
        let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one frame (header included).
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: `frame` is a valid buffer of `frame.len()` readable bytes.
        let n = unsafe { libc::write(self.file.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// Which of [`TUN_F_ALL`] a TAP accepts, given `try_set` (a `TUNSETOFFLOAD` that reports
/// success): all at once in the common case, else checksum alone and then each extra with it
/// (ECN together with the segmentation flags found, the only way the kernel takes it). A kernel
/// refuses flags it does not know with `EINVAL`, which is what makes this work.
pub fn probe_offloads(mut try_set: impl FnMut(u32) -> bool) -> u32 {
    if try_set(TUN_F_ALL) {
        return TUN_F_ALL;
    }
    if !try_set(TUN_F_CSUM) {
        return 0;
    }
    let mut ok = TUN_F_CSUM;
    for extra in [TUN_F_TSO4, TUN_F_TSO6, TUN_F_UFO] {
        if try_set(TUN_F_CSUM | extra) {
            ok |= extra;
        }
    }
    let tso = ok & (TUN_F_TSO4 | TUN_F_TSO6);
    if tso != 0 && try_set(TUN_F_CSUM | tso | TUN_F_TSO_ECN) {
        ok |= TUN_F_TSO_ECN;
    }
    ok
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_anything_is_opened() {
        for bad in ["", "a/b", "a b", "0123456789abcdef", ".", "x:1"] {
            assert!(matches!(Tap::open(bad), Err(TapError::BadName)), "{bad:?}");
        }
        assert!(matches!(Tap::open("herd-no-such0"), Err(TapError::Missing)));
        // `lo` exists everywhere and is not a TAP.
        assert!(matches!(Tap::open("lo"), Err(TapError::NotTap)));
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }

    #[test]
    fn offload_probing_keeps_what_the_kernel_accepts() {
        assert_eq!(probe_offloads(|_| true), TUN_F_ALL);
        assert_eq!(probe_offloads(|_| false), 0);
        // A kernel without UFO: the full set fails, the rest is found one by one.
        let mut tried = Vec::new();
        let no_ufo = probe_offloads(|f| {
            tried.push(f);
            f & TUN_F_UFO == 0
        });
        assert_eq!(no_ufo, TUN_F_ALL & !TUN_F_UFO);
        assert_eq!(tried.last(), Some(&(TUN_F_ALL & !TUN_F_UFO)));
        // Checksum only: ECN is never tried without a segmentation flag.
        let csum_only = probe_offloads(|f| {
            assert_ne!(f, TUN_F_CSUM | TUN_F_TSO_ECN);
            f == TUN_F_CSUM
        });
        assert_eq!(csum_only, TUN_F_CSUM);
    }
}
